"""What the progress bar costs a fused epoch: ``fit(fused="epoch")`` with the bar on and off, in one process.

With the bar on, an epoch runs as compiled chunks of steps, about 0.25 s each, with one dispatch and one
host sync between chunks (no host callback inside the program); with it off, an epoch is one chunk. The
two runs train the same model on the same data and must end bit-identical (checked). Reported: the
median epoch time past the first epoch (compilation excluded) of each, interleaved over ``--repeats``
runs, and the overhead ratio.

Workload: an MLP 784-512-512-10 on 64,000 random 28x28 "images" (batch 32: 2,000 steps an epoch, about
2 s on a 2-core CPU, so about 4-8 chunks an epoch with the bar), Adam.

Whole-epoch times on a shared 2-core machine vary by several percent from epoch to epoch, more than the
bar costs, so the cost of a chunk boundary is also measured directly: the compiled epoch program run as
one chunk of ``--steps`` steps and as 8 chunks of ``--steps / 8``, interleaved ``--boundary-repeats``
times; (8 chunks - 1 chunk) / 7 is the cost of one boundary (a dispatch and a host sync), reported as a
fraction of a 0.25 s chunk (the smallest the bar makes, ``engine.Chunks``).

Run: python benchmarks/progress_overhead.py [--repeats 3] [--epochs 4] [--boundary-repeats 15]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import time

import jax
import numpy as np
import optax

import nnjax


def run(x, y, epochs: int, progress: bool) -> tuple[list[float], object]:
    model = nnjax.serial(nnjax.Dense(512), nnjax.Relu(), nnjax.Dense(512), nnjax.Relu(), nnjax.Dense(10))
    ends = []
    callback = lambda epoch, train_state, logs: ends.append(time.perf_counter())  # noqa: E731
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):  # bar and lines
        result = nnjax.fit(model, nnjax.losses.softmax_cross_entropy, optax.adam(1e-3), x, y, epochs=epochs,
                           batch_size=32, progress=progress, callbacks=[callback])
    return list(np.diff(ends)), result.train_state


def boundary_cost(x, y, steps: int, repeats: int) -> tuple[float, float]:
    """Median seconds of ``steps`` steps run as one compiled chunk and as 8 chunks, interleaved."""
    from nnjax._src import engine
    from nnjax._src.training_data import epoch_order

    model = nnjax.serial(nnjax.Dense(512), nnjax.Relu(), nnjax.Dense(512), nnjax.Relu(), nnjax.Dense(10))
    opt = optax.adam(1e-3)
    train_state = nnjax.init_train_state(model, opt, jax.random.key(0), (784,))
    n = steps * 32
    plan = engine.Plan(nnjax.make_train_step(model, nnjax.losses.softmax_cross_entropy, opt, jit=False),
                       data=(jax.numpy.asarray(x[:n]), jax.numpy.asarray(y[:n])), steps=steps,
                       order=lambda ts, epoch: epoch_order(ts.key, epoch, n, 32))
    step = engine.carried_step(plan)
    program = engine.epoch_program(step)
    order = jax.eval_shape(plan.order, train_state, 0)
    carry = engine.EpochCarry(train_state, engine.no_halt(train_state), plan.order(train_state, 0),
                              engine.empty_per_step(plan, step, train_state, order, plan.data))
    times: dict[int, list[float]] = {1: [], 8: []}
    for repeat in range(repeats + 1):
        for chunks in (1, 8):
            began = time.perf_counter()
            for start in range(0, steps, steps // chunks):
                carry = program(carry, plan.data, np.int32(start), np.int32(start + steps // chunks))
                np.asarray(carry.halted)  # the sync the engine does after each chunk when a bar is shown
            if repeat:  # the first round compiles and warms up
                times[chunks].append(time.perf_counter() - began)
    return statistics.median(times[1]), statistics.median(times[8])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--boundary-repeats", type=int, default=15)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64_000, 784)).astype(np.float32)
    y = rng.integers(0, 10, 64_000).astype(np.int32)
    times: dict[bool, list[float]] = {False: [], True: []}
    states = {}
    for _ in range(args.repeats):
        for progress in (False, True):
            epoch_times, states[progress] = run(x, y, args.epochs, progress)
            times[progress] += epoch_times
    same = jax.tree.all(jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), states[False], states[True]))
    off, on = statistics.median(times[False]), statistics.median(times[True])
    print(f"device: {jax.devices()[0].device_kind}; {args.repeats} runs x {args.epochs - 1} timed epochs each")
    print("| bar | median epoch (s) | min-max (s) |")
    print("|---|---|---|")
    for progress, label in ((False, "off (one chunk an epoch)"), (True, "on (chunks of ~0.25 s)")):
        print(f"| {label} | {statistics.median(times[progress]):.4f} | "
              f"{min(times[progress]):.4f}-{max(times[progress]):.4f} |")
    print(f"overhead of the bar: {100 * (on / off - 1):+.2f}% of an epoch; final states bit-identical: {same}")
    one, eight = boundary_cost(x, y, args.steps, args.boundary_repeats)
    per_boundary = (eight - one) / 7
    print(f"{args.steps} steps as 1 chunk: {one:.4f} s, as 8 chunks: {eight:.4f} s "
          f"(medians of {args.boundary_repeats}); one chunk boundary: {1e3 * per_boundary:.3f} ms = "
          f"{100 * per_boundary / 0.25:.2f}% of a 0.25 s chunk")


if __name__ == "__main__":
    main()
