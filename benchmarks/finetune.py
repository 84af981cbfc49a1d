#!/usr/bin/env python
"""Fine-tuning a head: step time of full training vs a frozen backbone (``nnjax.freeze``).

An MLP 784-512-512-512 backbone under a 512-10 head, batch 128, Adam(1e-3), one jitted train step per
call (``make_train_step``). Three rows:

- ``full``: every parameter trains.
- ``freeze``: ``nnjax.freeze(adam, params, "backbone")``: the step stops the backbone's gradients, so only
  the head's backward pass is computed.
- ``multi_transform``: the same update by hand (``optax.multi_transform`` with ``optax.set_to_zero`` on the
  backbone) through the plain step, which still differentiates the backbone (what users wrote before).
  XLA removes the backbone's gradient as dead code when nothing reads it, so this row is as fast as
  ``freeze``; the two ``nonfinite='skip'`` rows repeat both with the step's non-finite guard, which reads
  every gradient: there only ``freeze`` skips the backbone's backward pass.

Protocol as ``ensemble_step.py``: compile and warm up each, calibrate the steps per measurement to about
``--target-s`` seconds, then ``--repeats`` interleaved measurements with the garbage collector off;
medians of the per-step time and their ratio to ``full``.

  python benchmarks/finetune.py                    # ~15 s on 2 cores
"""

from __future__ import annotations

import argparse
import gc
import platform
import statistics
import time

import jax
import numpy as np
import optax

import nnjax

B = 128


def model():
    backbone = nnjax.serial(
        nnjax.Dense(512), nnjax.Relu(), nnjax.Dense(512), nnjax.Relu(), nnjax.Dense(512), nnjax.Relu()
    )
    return nnjax.serial(("backbone", backbone), head=nnjax.Dense(10))


def build(optimizer_for, nonfinite=None):
    net = model()
    params, _ = net.init(jax.random.key(0), (784,))
    optimizer = optimizer_for(params)
    step = nnjax.make_train_step(net, nnjax.losses.softmax_cross_entropy, optimizer, nonfinite=nonfinite)
    rs = np.random.RandomState(0)
    batch = (jax.numpy.asarray(rs.randn(B, 784).astype(np.float32)), jax.numpy.asarray(rs.randint(0, 10, B)))
    holder = [nnjax.init_train_state(net, optimizer, jax.random.key(0), (784,), params=params)]

    def run(n):
        ts = holder[0]
        for _ in range(n):
            ts, _ = step(ts, batch)
        jax.block_until_ready(ts.params)
        holder[0] = ts

    return run


def by_hand(params):
    labels = {"backbone": jax.tree.map(lambda _: "frozen", params["backbone"]), "head": {"w": "train", "b": "train"}}
    return optax.multi_transform({"train": optax.adam(1e-3), "frozen": optax.set_to_zero()}, labels)


ROWS = {
    "full": (lambda params: optax.adam(1e-3), None),
    "freeze": (lambda params: nnjax.freeze(optax.adam(1e-3), params, "backbone"), None),
    "multi_transform": (by_hand, None),
    "freeze, nonfinite='skip'": (lambda params: nnjax.freeze(optax.adam(1e-3), params, "backbone"), "skip"),
    "multi_transform, nonfinite='skip'": (by_hand, "skip"),
}


def timed(run, n):
    gc.disable()
    try:
        start = time.perf_counter()
        run(n)
        return (time.perf_counter() - start) / n
    finally:
        gc.enable()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--target-s", type=float, default=0.4)
    args = parser.parse_args(argv)
    runs = {name: build(*row) for name, row in ROWS.items()}
    steps = {}
    for name, run in runs.items():
        run(3)  # compile and warm up
        per_step = timed(run, 5)
        steps[name] = max(1, int(args.target_s / per_step))
    times = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, run in runs.items():
            times[name].append(timed(run, steps[name]))
    full = statistics.median(times["full"])
    print(
        f"fine-tuning step, MLP 784-512x3 backbone + 10-way head, batch {B}, Adam; {platform.processor() or ''}"
        f" {jax.devices()[0].device_kind}, jax {jax.__version__}"
    )
    print("| row | median ms/step | min-max | vs full |")
    print("|---|---|---|---|")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"| {name} | {med * 1e3:.3f} | {min(ts) * 1e3:.3f}-{max(ts) * 1e3:.3f} | {med / full:.2f}x |")
    return times


if __name__ == "__main__":
    main()
