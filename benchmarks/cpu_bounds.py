#!/usr/bin/env python
"""What bounds the anchor MLP and LSTM steps: their kernels timed alone, in one process.

Issue 4 asks the fused MLP `fit` for >= 75% of the matmul peak and the LSTM step for PyTorch's
speed. This script times the pieces those steps cannot avoid, so that a missed target can be told
apart from slow glue code:

  peak          jit(jnp.dot) of 2048x2048 float32 matrices: GFLOP/s (anchors.py's peak)
  mlp_dots      the 8 dots of one 784-512-512-10 step at batch 128 (3 forward, 3 weight
                gradients, 2 input gradients), in one program
  mlp_adam      optax.adam's update of the same parameters (donated), alone
  lstm_*        the anchor LSTM's recurrent matmuls (batch 32, hidden 256, 4 gates), each in a
                lax.scan of 64 dependent steps: forward h @ W, input gradient dz @ W^T, and the
                transposed-state forms W^T @ h^T and W @ dz^T (the input-gradient rows include a
                tile of the (32, 256) result back to (32, 1024), in PyTorch too)
  torch_*       the same matmuls through torch.mm (PyTorch eager, 2 threads), when torch imports

Each row is the median of ``--repeats`` interleaved measurements (A B C A B C ...).

Run: python benchmarks/cpu_bounds.py [--repeats 15] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

import nnjax

MLP_SIZES, MLP_BATCH = (784, 512, 512, 10), 128
LSTM_BATCH, LSTM_HIDDEN, LSTM_STEPS = 32, 256, 64


def mlp_dot_flops(sizes=MLP_SIZES, batch=MLP_BATCH) -> int:
    """FLOPs of one step's dots: forward and weight gradient per layer, input gradient past the first."""
    layers = list(zip(sizes[:-1], sizes[1:], strict=True))
    per_layer = [2 * batch * n_in * n_out for n_in, n_out in layers]
    return 2 * sum(per_layer) + sum(per_layer[1:])


def mlp_parameters(sizes=MLP_SIZES) -> int:
    return sum(n_in * n_out + n_out for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True))


def time_call(fn: Callable[[], object], inner: int) -> float:
    """Seconds per call of ``fn`` over ``inner`` calls, ending with ``jax.block_until_ready``."""
    start = time.perf_counter()
    for _ in range(inner):
        out = fn()
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / inner


def peak_case(n: int) -> tuple[Callable[[], object], int]:
    a = jax.random.normal(jax.random.key(0), (n, n))
    b = jax.random.normal(jax.random.key(1), (n, n))
    dot = jax.jit(jnp.dot)
    return (lambda: dot(a, b)), 2 * n**3


def mlp_dots_case(sizes=MLP_SIZES, batch=MLP_BATCH) -> Callable[[], object]:
    """The step's dots with random operands of the right shapes; every result is returned (none is dead)."""
    keys = iter(jax.random.split(jax.random.key(2), 16))
    layers = list(zip(sizes[:-1], sizes[1:], strict=True))
    xs = [jax.random.normal(next(keys), (batch, n_in)) for n_in, _ in layers]  # each layer's input
    ws = [jax.random.normal(next(keys), (n_in, n_out)) * 0.05 for n_in, n_out in layers]
    gs = [jax.random.normal(next(keys), (batch, n_out)) for _, n_out in layers]  # each layer's output gradient

    def dots(xs, ws, gs):
        forward = [x @ w for x, w in zip(xs, ws, strict=True)]
        weight_grads = [x.T @ g for x, g in zip(xs, gs, strict=True)]
        input_grads = [g @ w.T for g, w in zip(gs[1:], ws[1:], strict=True)]
        return forward, weight_grads, input_grads

    dots = jax.jit(dots)
    return lambda: dots(xs, ws, gs)


def mlp_adam_case(sizes=MLP_SIZES) -> Callable[[], object]:
    keys = iter(jax.random.split(jax.random.key(3), 8))
    params = [
        (jax.random.normal(next(keys), (n_in, n_out)) * 0.05, jnp.zeros((n_out,)))
        for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True)
    ]
    grads = jax.tree.map(lambda p: p * 0.1 + 0.01, params)
    tx = optax.adam(1e-3)

    def update(params, opt_state, grads):
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    update = jax.jit(update, donate_argnums=(0, 1))
    box = [params, tx.init(params)]

    def run():
        box[0], box[1] = update(box[0], box[1], grads)
        return box

    return run


def lstm_dot_cases(batch=LSTM_BATCH, hidden=LSTM_HIDDEN, steps=LSTM_STEPS) -> dict[str, Callable[[], object]]:
    """Recurrent matmuls in a scan whose carry feeds the next matmul, so XLA cannot hoist them."""
    gates = 4 * hidden
    k = jax.random.split(jax.random.key(4), 3)
    w = jax.random.normal(k[0], (hidden, gates)) * 0.03  # (H, 4H), as LSTMCell's "w_h"
    w_t = w.T  # (4H, H), materialized outside the scan
    h = jax.random.normal(k[1], (batch, hidden))
    dz = jax.random.normal(k[2], (batch, gates))

    def scan(step):
        return jax.jit(
            lambda carry, w, w_t: jax.lax.scan(lambda c, _: (step(c, w, w_t), None), carry, None, length=steps)[0]
        )

    cases = {
        # (B, H) @ (H, 4H), keep the first H columns as the next h
        "lstm_h@W": (scan(lambda c, w, w_t: (c @ w)[:, :hidden]), h),
        # (B, 4H) @ W^T: the input gradient with W stored (H, 4H), as autodiff computes it
        "lstm_dz@W^T": (scan(lambda c, w, w_t: jnp.tile(c @ w.T, (1, 4))), dz),
        # transposed state: (4H, H) @ (H, B) and (H, 4H) @ (4H, B)
        "lstm_W^T@h^T": (scan(lambda c, w, w_t: (w_t @ c)[:hidden]), h.T),
        "lstm_W@dz^T": (scan(lambda c, w, w_t: jnp.tile(w @ c, (4, 1))), dz.T),
    }
    return {name: (lambda fn=fn, x=x: fn(x, w, w_t)) for name, (fn, x) in cases.items()}


def torch_cases(batch=LSTM_BATCH, hidden=LSTM_HIDDEN, steps=LSTM_STEPS) -> dict[str, Callable[[], object]]:
    try:
        import torch  # noqa: PLC0415 - optional
    except ImportError:
        return {}
    torch.set_num_threads(2)
    w = torch.randn(hidden, 4 * hidden) * 0.03
    h, dz = torch.randn(batch, hidden), torch.randn(batch, 4 * hidden)

    def loop(fn, x):
        def run():
            c = x
            for _ in range(steps):
                c = fn(c)
            return c

        return run

    return {
        "torch_h@W": loop(lambda c: torch.mm(c, w)[:, :hidden], h),
        "torch_dz@W^T": loop(lambda c: torch.mm(c, w.t()).repeat(1, 4), dz),
    }


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15, help="interleaved measurements per row")
    parser.add_argument("--quick", action="store_true", help="small peak matmul and 3 repeats (a smoke run)")
    parser.add_argument("--keep-freed-memory", action="store_true", help="nnjax.keep_freed_memory() first")
    args = parser.parse_args(argv)
    if args.keep_freed_memory:
        nnjax.keep_freed_memory()
    repeats = 3 if args.quick else args.repeats
    peak, peak_flops = peak_case(256 if args.quick else 2048)
    rows: dict[str, tuple[Callable[[], object], int]] = {
        "peak": (peak, 2 if args.quick else 5),
        "mlp_dots": (mlp_dots_case(), 10),
        "mlp_adam": (mlp_adam_case(), 10),
        **{name: (fn, 2) for name, fn in lstm_dot_cases().items()},
        **{name: (fn, 2) for name, fn in torch_cases().items()},
    }
    for fn, _ in rows.values():
        jax.block_until_ready(fn())  # compile and warm up
    samples: dict[str, list[float]] = {name: [] for name in rows}
    for _ in range(repeats):
        for name, (fn, inner) in rows.items():
            samples[name].append(time_call(fn, inner))
    ms = {name: statistics.median(s) * 1e3 for name, s in samples.items()}

    peak_gflops = peak_flops / ms["peak"] / 1e6
    dot_flops = mlp_dot_flops()
    dot_share = dot_flops / ms["mlp_dots"] / 1e6 / peak_gflops
    lines = [
        f"backend {jax.default_backend()}, jax {jax.__version__}; median of {repeats} interleaved repeats",
        "",
        "| row | median ms | note |",
        "|---|---:|---|",
        f"| peak | {ms['peak']:.3f} | {peak_gflops:.1f} GFLOP/s |",
        f"| mlp_dots | {ms['mlp_dots']:.3f} | {dot_flops / 1e6:.0f} MFLOP: {dot_share:.0%} of peak "
        "(a step whose dots run this fast cannot do better) |",
        f"| mlp_adam | {ms['mlp_adam']:.3f} | optax.adam on {mlp_parameters():,} parameters |",
    ]
    matmul_flops = 2 * LSTM_BATCH * LSTM_HIDDEN * 4 * LSTM_HIDDEN
    for name in [n for n in ms if n.startswith(("lstm_", "torch_"))]:
        per_matmul_us = ms[name] / LSTM_STEPS * 1e3
        gflops = matmul_flops / per_matmul_us / 1e3
        lines.append(f"| {name} | {ms[name]:.3f} | {per_matmul_us:.0f} us per matmul, {gflops:.0f} GFLOP/s |")
    text = "\n".join(lines)
    print(text)
    return text


if __name__ == "__main__":
    main()
