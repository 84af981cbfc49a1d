"""What the checked mode (``nnjax.config.checks(True)``) costs: ``fit`` on the embedded digits, off and on.

The same MLP (64-256-256-10, Adam, batch 32, all 1,797 digits: 56 steps an epoch) is trained with the
checks off and on, interleaved over ``--repeats`` runs in one process. Reported: the median epoch time past
the first epoch (compilation excluded) of each, their ratio, and each first epoch (mostly compilation). The
two runs must reach the same final loss (checked): the checks observe, they do not change the numbers.

Run: python benchmarks/checked_mode.py [--repeats 3] [--epochs 6]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import time

import numpy as np
import optax

import nnjax


def run(x, y, epochs: int, checked: bool) -> tuple[list[float], float]:
    model = nnjax.serial(nnjax.Dense(256), nnjax.Relu(), nnjax.Dense(256), nnjax.Relu(), nnjax.Dense(10))
    start = time.perf_counter()
    ends = []
    callback = lambda epoch, train_state, logs: ends.append(time.perf_counter())  # noqa: E731
    with nnjax.config.checks(checked), contextlib.redirect_stdout(io.StringIO()):
        result = nnjax.fit(
            model,
            nnjax.losses.softmax_cross_entropy,
            optax.adam(1e-3),
            x,
            y,
            epochs=epochs,
            batch_size=32,
            progress=False,
            callbacks=[callback],
        )
    times = list(np.diff([start, *ends]))
    return times, result.history["loss"][-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=6)
    args = parser.parse_args()
    nnjax.config.compilation_cache()
    images, y = nnjax.data.load_digits()
    x = images.reshape(len(images), -1).astype(np.float32) / 16.0
    later = {False: [], True: []}
    first = {False: [], True: []}
    losses = {}
    for _ in range(args.repeats):
        for checked in (False, True):
            times, losses[checked] = run(x, y, args.epochs, checked)
            first[checked].append(times[0])
            later[checked].extend(times[1:])
    assert np.isclose(losses[False], losses[True], rtol=1e-5), losses
    off, on = statistics.median(later[False]), statistics.median(later[True])
    print("| checks | first epoch (s) | later epochs, median (s) |")
    print("|---|---|---|")
    print(f"| off | {statistics.median(first[False]):.3f} | {off:.4f} |")
    print(f"| on | {statistics.median(first[True]):.3f} | {on:.4f} |")
    print(f"\nchecked / unchecked, later epochs: {on / off:.2f}x (final loss {losses[True]:.4f} both)")


if __name__ == "__main__":
    main()
