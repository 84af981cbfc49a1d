#!/usr/bin/env python
"""What each CPU kernel form gains over its generic form, on the anchor training steps, in one run.

Workloads (as ../shared/bench/anchors.py): the anchor CNN (28x28x1, batch 128, conv 32 3x3 -> relu ->
maxpool 2 -> conv 64 3x3 -> relu -> maxpool 2 -> dense 128 -> dense 10, Adam) and the anchor LSTM
(embedding 96 -> 64, LSTM 256, 64 steps, batch 32, next-token cross-entropy, Adam). The CNN runs as one
jitted step per call (``step``) and as ``--scan-steps`` steps fused in a ``lax.scan`` (``scan``, as a
``fit`` epoch does).

Rows per workload, all interleaved in one process (A B C ... A B C), medians of ``--repeats``:
  cpu              every CPU form (``nnjax.config.kernels("cpu")``)
  generic          every generic form (``kernels("generic")``): what GPUs and TPUs run
  cpu - <kernel>   the CPU forms but that one (``kernels("cpu", generic=(<kernel>,))``)

A form's gain is ``(cpu - <kernel>) / cpu``: the time without it over the time with it. nnjax keeps a
CPU form when that ratio is at least 1.10 on a training step of a workload it touches.

Run: python benchmarks/kernels.py [--repeats 5] [--steps 5] [--scan-steps 4] [--only cnn,lstm]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

import nnjax

WORKLOADS = {  # workload -> the kernels its layers use
    "cnn": ("conv", "max_pool", "compiler_options"),
    "lstm": ("rnn_input", "rnn_layout"),
}


def cnn(pool: Callable[[int], nnjax.Layer]) -> nnjax.Layer:
    """The anchor CNN with ``pool`` (``nnjax.MaxPool``; ``nnjax.AvgPool`` measured the removed ``avg_pool`` form)."""
    return nnjax.serial(
        nnjax.Conv(32, (3, 3)), nnjax.Relu(), pool(2), nnjax.Conv(64, (3, 3)), nnjax.Relu(), pool(2),
        nnjax.Flatten(), nnjax.Dense(128), nnjax.Relu(), nnjax.Dense(10),
    )


def lstm() -> nnjax.Layer:
    return nnjax.serial(nnjax.Embedding(96, 64), nnjax.LSTM(256), nnjax.Dense(96))


def workload(name: str, scan_steps: int) -> tuple[nnjax.Layer, tuple, list, bool]:
    """(model, input_shape, batches, fused?) of a workload."""
    rs = np.random.RandomState(2)
    if name == "lstm":
        tokens = rs.randint(0, 96, (4, 32, 65)).astype(np.int32)
        return lstm(), (64,), [(jnp.asarray(t[:, :-1]), jnp.asarray(t[:, 1:])) for t in tokens], False
    x = rs.standard_normal((4, 128, 28, 28, 1)).astype(np.float32)
    y = rs.randint(0, 10, (4, 128)).astype(np.int32)
    batches = [(jnp.asarray(a), jnp.asarray(b)) for a, b in zip(x, y, strict=True)]
    return cnn(nnjax.MaxPool), (28, 28, 1), batches, scan_steps > 0


def runner(model, input_shape, batches, mode: str, generic: tuple[str, ...], scan_steps: int) -> Callable[[int], None]:
    """``run(n)``: n training steps (or n scans of ``scan_steps``) under the given kernels, built and traced
    inside them (the compiler options are read when the step is built, the kernels when it traces)."""
    optimizer = optax.adam(1e-3)
    loss = nnjax.losses.softmax_cross_entropy
    with nnjax.config.kernels(mode, generic=generic):
        ts = nnjax.init_train_state(model, optimizer, jax.random.key(0), input_shape)
        if scan_steps:
            pure = nnjax.make_train_step(model, loss, optimizer, jit=False)
            xs = jnp.stack([b[0] for b in batches] * scan_steps)[:scan_steps]
            ys = jnp.stack([b[1] for b in batches] * scan_steps)[:scan_steps]
            scanned = nnjax.jit(lambda ts: jax.lax.scan(pure, ts, (xs, ys)), donate_argnums=0)
            step = None
        else:
            step = nnjax.make_train_step(model, loss, optimizer)
    state = [ts]

    def run(n: int) -> None:
        with nnjax.config.kernels(mode, generic=generic):
            ts = state[0]
            for i in range(n):
                ts, _ = scanned(ts) if step is None else step(ts, batches[i % len(batches)])
            jax.block_until_ready(ts)
            state[0] = ts

    return run


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="interleaved measurements per row")
    parser.add_argument("--steps", type=int, default=5, help="training steps per measurement (at least one scan)")
    parser.add_argument("--scan-steps", type=int, default=4, help="steps per fused scan for the CNNs (0: none)")
    parser.add_argument("--only", default=",".join(WORKLOADS), help="comma-separated workloads")
    args = parser.parse_args(argv)
    nnjax.keep_freed_memory()  # as the example trainers do on CPU
    print(f"backend {jax.default_backend()}, jax {jax.__version__}; auto picks {nnjax.config.active_kernels()!r}")
    results: dict[str, dict[str, float]] = {}
    for name in args.only.split(","):
        model, input_shape, batches, fused = workload(name, args.scan_steps)
        variants = [("step", 0)] + ([("scan", args.scan_steps)] if fused else [])
        for how, scan_steps in variants:
            rows = {"cpu": ("cpu", ()), "generic": ("generic", ())}
            rows.update({f"cpu - {k}": ("cpu", (k,)) for k in WORKLOADS[name]})
            runs = {row: runner(model, input_shape, batches, mode, generic, scan_steps) for row, (mode, generic) in
                    rows.items()}
            for run in runs.values():
                run(1)  # compile and warm up
            calls = max(1, args.steps // scan_steps) if scan_steps else args.steps
            times: dict[str, list[float]] = {row: [] for row in runs}
            for _ in range(args.repeats):
                for row, run in runs.items():
                    start = time.perf_counter()
                    run(calls)
                    times[row].append((time.perf_counter() - start) / (calls * max(scan_steps, 1)) * 1e3)
            medians = {row: statistics.median(t) for row, t in times.items()}
            results[f"{name} {how}"] = medians
            base = medians["cpu"]
            print(f"\n{name} {how}: ms per training step, median of {args.repeats}")
            for row, value in medians.items():
                print(f"  {row:<26}{value:9.2f}  {value / base:6.2f}x of cpu   (min {min(times[row]):.2f})")
    return results


if __name__ == "__main__":
    main()
