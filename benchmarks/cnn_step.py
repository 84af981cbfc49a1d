"""Training-step time of the anchor CNN: nnjax layers vs hand-written JAX (vs PyTorch when installed).

The workload of ../shared/bench/anchors.py: 28x28x1 inputs, batch 128, conv 32 3x3 -> relu -> maxpool 2
-> conv 64 3x3 -> relu -> maxpool 2 -> flatten -> dense 128 -> relu -> dense 10, softmax cross-entropy,
Adam(1e-3), SAME padding. Rows:

  jax          hand-written JAX + optax: lax.conv_general_dilated (NHWC), lax.reduce_window max pooling,
               jax.jit with donated params and optimizer state (the anchors' "raw JAX" row)
  nnjax        nnjax.serial of Conv/MaxPool/Dense + nnjax.make_train_step (backend-chosen formulations),
               compiled with nnjax.jit (nnjax's XLA options for the backend), as make_train_step does
  nnjax_plain  the same with nnjax's CPU choices switched off (reduce_window pooling, JAX's conv VJP)
  torch        PyTorch eager, NCHW, 2 threads (only if `import torch` works)

Each "step" row is one jitted step per Python call; each "scan" row fuses --scan-steps steps in one
lax.scan, as ``nnjax.fit`` does for an epoch. Repeats are interleaved; medians are reported.

Run: python benchmarks/cnn_step.py [--repeats 5] [--steps 10] [--scan-steps 4]
"""

from __future__ import annotations

import argparse
import contextlib
import math
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

import nnjax
from nnjax._src.basic import Dense, Flatten
from nnjax._src.conv import Conv
from nnjax._src.pooling import MaxPool

BATCH = 128


def data(batches: int = 4, seed: int = 2) -> tuple[np.ndarray, np.ndarray]:
    rs = np.random.RandomState(seed)
    return rs.standard_normal((batches, BATCH, 28, 28, 1)).astype(np.float32), rs.randint(
        0, 10, (batches, BATCH)
    ).astype(np.int32)


def ce_loss(logits, y):
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


# ---- hand-written JAX (as in anchors.py) ------------------------------------------------------


def jax_init(key):
    k = jax.random.split(key, 4)

    def conv(key, cin, cout):
        return {"w": jax.random.normal(key, (3, 3, cin, cout)) * math.sqrt(2.0 / (9 * cin)), "b": jnp.zeros((cout,))}

    def dense(key, n_in, n_out):
        return {"w": jax.random.normal(key, (n_in, n_out)) * math.sqrt(2.0 / n_in), "b": jnp.zeros((n_out,))}

    return {
        "c1": conv(k[0], 1, 32),
        "c2": conv(k[1], 32, 64),
        "d1": dense(k[2], 7 * 7 * 64, 128),
        "d2": dense(k[3], 128, 10),
    }


def jax_apply(p, x):
    def conv(x, c):
        return lax.conv_general_dilated(x, c["w"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")) + c["b"]

    def pool(x):
        return lax.reduce_window(x, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")

    x = pool(jax.nn.relu(conv(x, p["c1"])))
    x = pool(jax.nn.relu(conv(x, p["c2"])))
    x = jax.nn.relu(x.reshape(x.shape[0], -1) @ p["d1"]["w"] + p["d1"]["b"])
    return x @ p["d2"]["w"] + p["d2"]["b"]


def jax_runner(xs, ys, tx, scan_steps: int) -> tuple[Callable[[int], None], Callable[[int], None]]:
    def step(carry, batch):
        params, opt_state = carry
        loss, grads = jax.value_and_grad(lambda p: ce_loss(jax_apply(p, batch[0]), batch[1]))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    params = jax_init(jax.random.key(0))
    return _runners(step, (params, tx.init(params)), xs, ys, scan_steps)


# ---- nnjax -------------------------------------------------------------------------------------


def nnjax_model() -> nnjax.Layer:
    return nnjax.serial(
        Conv(32, (3, 3)), nnjax.Relu(), MaxPool(2),
        Conv(64, (3, 3)), nnjax.Relu(), MaxPool(2),
        Flatten(), Dense(128), nnjax.Relu(), Dense(10),
    )  # fmt: skip


def nnjax_runner(xs, ys, tx, scan_steps: int):
    model = nnjax_model()
    step = nnjax.make_train_step(model, ce_loss, tx, jit=False)
    state = nnjax.init_train_state(model, tx, jax.random.key(0), (28, 28, 1))
    return _runners(step, state, xs, ys, scan_steps, compile_fn=nnjax.jit)


def plain_formulations():
    """nnjax's CPU kernels with the pooling and convolution ones in their generic form (the compiler
    options stay), for the calls of the plain rows: the choice is read when a call traces."""
    return nnjax.config.kernels("cpu", generic=("conv", "max_pool", "avg_pool"))


def within(context: Callable[[], contextlib.AbstractContextManager], run: Callable[[int], None]) -> Callable[[int], None]:
    """``run``, called inside ``context()`` each time."""

    def run_within(n: int) -> None:
        with context():
            run(n)

    return run_within


# ---- shared driver -----------------------------------------------------------------------------


def _runners(step, carry, xs, ys, scan_steps, compile_fn=jax.jit):
    """(run_steps(n), run_scans(n)): n single steps / n fused scans of `scan_steps` steps, compiled by `compile_fn`."""
    xs, ys = jax.device_put(xs), jax.device_put(ys)
    one = compile_fn(step, donate_argnums=0)

    def scan_steps_of(carry, xs, ys):
        idx = jnp.arange(scan_steps) % xs.shape[0]
        return lax.scan(step, carry, (xs[idx], ys[idx]))

    scanned = compile_fn(scan_steps_of)

    state = [carry, jax.tree.map(jnp.copy, carry)]

    def run_steps(n):
        c = state[0]
        for i in range(n):
            c, out = one(c, (xs[i % len(xs)], ys[i % len(ys)]))
        jax.block_until_ready(c)
        state[0] = c

    def run_scans(n):
        c = state[1]
        for _ in range(n):
            c, out = scanned(c, xs, ys)
        jax.block_until_ready(c)
        state[1] = c

    return run_steps, run_scans


def torch_runner(xs, ys):
    import torch
    from torch import nn

    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(7 * 7 * 64, 128), nn.ReLU(), nn.Linear(128, 10),
    )  # fmt: skip
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    tx = [torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))) for x in xs]
    ty = [torch.from_numpy(y.astype(np.int64)) for y in ys]

    def run(n):
        for i in range(n):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(tx[i % len(tx)]), ty[i % len(ty)])
            loss.backward()
            opt.step()

    return run


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repeats (median reported)")
    parser.add_argument("--steps", type=int, default=10, help="single steps per repeat")
    parser.add_argument("--scan-steps", type=int, default=4, help="steps fused in one lax.scan (0: skip the scan rows)")
    parser.add_argument("--no-plain", action="store_true", help="skip the nnjax_plain rows")
    args = parser.parse_args(argv)

    xs, ys = data()
    tx = optax.adam(1e-3)
    rows: dict[str, Callable[[int], None]] = {}
    rows["jax step"], jax_scan = jax_runner(xs, ys, tx, args.scan_steps)
    rows["nnjax step"], nnjax_scan = nnjax_runner(xs, ys, tx, args.scan_steps)
    if not args.no_plain:
        plain_step, plain_scan = (within(plain_formulations, run) for run in nnjax_runner(xs, ys, tx, args.scan_steps))
        rows["nnjax_plain step"] = plain_step
    if args.scan_steps:
        rows["jax scan"], rows["nnjax scan"] = jax_scan, nnjax_scan
        if not args.no_plain:
            rows["nnjax_plain scan"] = plain_scan
    try:
        rows["torch step"] = torch_runner(xs, ys)
    except ImportError:
        print("torch: not installed, skipped")

    units = {name: (args.scan_steps if name.endswith("scan") else 1) for name in rows}
    counts = {name: (1 if name.endswith("scan") else args.steps) for name in rows}
    compile_s = {}
    for name, run in rows.items():
        start = time.perf_counter()
        run(1)  # compile and warm up
        compile_s[name] = time.perf_counter() - start  # nnjax_plain rows: compiled above, not here
    samples: dict[str, list[float]] = {name: [] for name in rows}
    for _ in range(args.repeats):
        for name, run in rows.items():
            start = time.perf_counter()
            run(counts[name])
            samples[name].append((time.perf_counter() - start) / (counts[name] * units[name]) * 1e3)

    print(f"\nanchor CNN train step, batch {BATCH}, backend {jax.default_backend()} ({jax.devices()[0].device_kind}), "
          f"{args.repeats} interleaved repeats; ms per training step")  # fmt: skip
    base = {kind: statistics.median(samples[f"jax {kind}"]) for kind in ("step", "scan") if f"jax {kind}" in samples}
    print(f"{'row':<18} {'median':>9} {'min':>9} {'max':>9} {'vs jax':>8} {'first call s':>13}")
    for name, values in samples.items():
        kind = name.split()[-1]
        ratio = f"{statistics.median(values) / base[kind]:.2f}x" if kind in base else ""
        print(
            f"{name:<18} {statistics.median(values):9.2f} {min(values):9.2f} {max(values):9.2f} {ratio:>8} "
            f"{compile_s[name]:13.2f}"
        )
    return samples


if __name__ == "__main__":
    main()
