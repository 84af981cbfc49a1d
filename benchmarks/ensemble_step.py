#!/usr/bin/env python
"""32-model ensemble, one training step each: nnjax's vmapped step vs hand-written ``jit(vmap(step))``.

The anchor's ensemble workload (../shared/bench/anchors.py, ``workload_ensemble``): 32 MLPs 784-64-10,
Adam(1e-3), each model with its own batch of 128 examples, per-model data ``(32, 128, 784)`` resident on the
device. Protocol as the anchors: build and warm up (compile) each implementation, calibrate the number of
steps per measurement to about ``--target-s`` seconds, then ``--repeats`` measurements interleaved
(A B A B ...), garbage collector off inside a measurement; medians of the per-step time and their ratio.

  python benchmarks/ensemble_step.py                    # ~20 s on 2 cores
  python benchmarks/ensemble_step.py --repeats 11 --target-s 0.5

nnjax's side is ``init_many`` + ``make_many_step`` (what ``fit_many`` runs per step): the train step of
``make_train_step`` (step key derived from the state, metrics dict) vmapped over the stacked train states.
"""

from __future__ import annotations

import argparse
import gc
import math
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import nnjax
from nnjax._src.ensemble import init_many, make_many_step

M, SIZES, B = 32, (784, 64, 10), 128


def data():
    rs = np.random.RandomState(4)
    x = rs.standard_normal((M, B, SIZES[0])).astype(np.float32)
    y = rs.randint(0, SIZES[-1], size=(M, B)).astype(np.int32)
    return jnp.asarray(x), jnp.asarray(y)


def build_hand_written(x, y):
    """The anchor's raw-JAX ensemble: params as a list of dicts, jit(vmap(step)) with donation."""
    tx = optax.adam(1e-3)

    def init(key):
        keys = jax.random.split(key, len(SIZES) - 1)
        return [
            {"w": jax.random.normal(k, (a, b), jnp.float32) * math.sqrt(2.0 / a), "b": jnp.zeros((b,), jnp.float32)}
            for k, a, b in zip(keys, SIZES[:-1], SIZES[1:])
        ]

    def loss_fn(params, x, y):
        for i, layer in enumerate(params):
            x = x @ layer["w"] + layer["b"]
            if i < len(params) - 1:
                x = jax.nn.relu(x)
        return optax.softmax_cross_entropy_with_integer_labels(x, y).mean()

    def step(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    keys = jax.random.split(jax.random.key(0), M)
    params = jax.vmap(init)(keys)
    state = [params, jax.vmap(tx.init)(params)]
    vstep = jax.jit(jax.vmap(step), donate_argnums=(0, 1))

    def run(n):
        p, o = state
        for _ in range(n):
            p, o, _ = vstep(p, o, x, y)
        jax.block_until_ready((p, o))
        state[0], state[1] = p, o

    return run


def build_nnjax(x, y):
    model = nnjax.serial(nnjax.Dense(SIZES[1]), nnjax.Relu(), nnjax.Dense(SIZES[2]))
    opt = optax.adam(1e-3)
    state = [init_many(model, opt, range(M), (SIZES[0],))]
    step = make_many_step(model, nnjax.losses.softmax_cross_entropy, opt)  # jit(vmap(step)), donated

    def run(n):
        ts = state[0]
        for _ in range(n):
            ts, _ = step(ts, (x, y))
        jax.block_until_ready(ts)
        state[0] = ts

    return run


def timed(run, n, clock=time.perf_counter):
    was = gc.isenabled()
    gc.disable()
    try:
        start = clock()
        run(n)
        return clock() - start
    finally:
        if was:
            gc.enable()


def timed_both(run, n):
    """(wall seconds, process CPU seconds) of ``run(n)``; CPU time is steadier on a shared machine."""
    was = gc.isenabled()
    gc.disable()
    try:
        wall, cpu = time.perf_counter(), time.process_time()
        run(n)
        return time.perf_counter() - wall, time.process_time() - cpu
    finally:
        if was:
            gc.enable()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--target-s", type=float, default=0.4)
    parser.add_argument("--pause-s", type=float, default=0.05)
    args = parser.parse_args()

    x, y = data()
    impls = {"hand-written jit(vmap(step))": build_hand_written(x, y), "nnjax make_many_step": build_nnjax(x, y)}
    steps = {}
    for name, run in impls.items():
        start = time.perf_counter()
        run(1)  # compile
        first = time.perf_counter() - start
        run(3)
        per = min(timed(run, 5) / 5 for _ in range(3))
        steps[name] = max(3, int(math.ceil(args.target_s / per)))
        print(f"# {name}: first call {first:.2f} s, ~{per * 1e3:.3f} ms/step, {steps[name]} steps/measurement")
    samples = {name: [] for name in impls}
    cpu = {name: [] for name in impls}
    for _ in range(args.repeats):
        for name, run in impls.items():
            time.sleep(args.pause_s)
            wall, used = timed_both(run, steps[name])
            samples[name].append(wall / steps[name])
            cpu[name].append(used / steps[name])
    medians = {name: statistics.median(s) for name, s in samples.items()}
    cpu_medians = {name: statistics.median(s) for name, s in cpu.items()}
    base = medians["hand-written jit(vmap(step))"]
    cpu_base = cpu_medians["hand-written jit(vmap(step))"]
    machine = platform.processor() or platform.machine()
    print(
        f"\n32-model ensemble (MLP 784-64-10, batch 128 each, Adam), one step each — {machine}, "
        f"jax {jax.__version__}, {jax.devices()[0].platform}, {args.repeats} interleaved repeats\n"
    )
    print("| implementation | median ms/step | min-max ms | ratio | median CPU ms/step | CPU ratio |")
    print("|---|---|---|---|---|---|")
    for name, s in samples.items():
        spread = f"{min(s) * 1e3:.3f}-{max(s) * 1e3:.3f}"
        c = cpu_medians[name]
        print(
            f"| {name} | {medians[name] * 1e3:.3f} | {spread} | {medians[name] / base:.3f}x "
            f"| {c * 1e3:.3f} | {c / cpu_base:.3f}x |"
        )


if __name__ == "__main__":
    main()
