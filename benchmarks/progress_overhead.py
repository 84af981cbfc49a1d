"""What the progress bar costs a fused epoch: ``fit(fused="epoch")`` with the bar on and off, in one process.

With the bar on, an epoch runs as compiled chunks of steps, about 0.25 s each, with one dispatch and one
host sync between chunks (no host callback inside the program); with it off, an epoch is one chunk. The
two runs train the same model on the same data and must end bit-identical (checked). Reported: the
median epoch time past the first epoch (compilation excluded) of each, interleaved over ``--repeats``
runs, and the overhead ratio.

Workload: an MLP 784-512-512-10 on 12,800 random 28x28 "images" (batch 32: 400 steps an epoch, about
1-2 s on a 2-core CPU), Adam.

Run: python benchmarks/progress_overhead.py [--repeats 3] [--epochs 4]
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
    with contextlib.redirect_stderr(io.StringIO()):  # the bar itself, not what it costs to show it
        result = nnjax.fit(model, nnjax.losses.softmax_cross_entropy, optax.adam(1e-3), x, y, epochs=epochs,
                           batch_size=32, progress=progress, callbacks=[callback])
    return list(np.diff(ends)), result.train_state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(12_800, 784)).astype(np.float32)
    y = rng.integers(0, 10, 12_800).astype(np.int32)
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


if __name__ == "__main__":
    main()
