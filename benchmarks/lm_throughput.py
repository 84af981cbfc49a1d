#!/usr/bin/env python
"""Training throughput of a small decoder-only Transformer LM: tokens/s and MFU against a measured matmul peak.

The GPU section of the anchor benchmark (issue 4): nnjax layers (Embedding, LearnedPositionalEmbedding,
TransformerDecoderBlock, LayerNorm, Dense) trained with ``make_train_step`` and AdamW, computing in
``--dtype`` (bfloat16 by default on GPU/TPU, float32 on CPU) through ``nnjax.with_policy`` with float32
parameters. Synthetic tokens, already on the device.

MFU = model FLOPs per second / the peak measured in this run: the median of ``jit(jnp.dot)`` on two
``--peak-n`` square matrices of ``--dtype``, at the start and the end, best of the two. Model FLOPs per
token (forward, then x3 for a training step: forward, input and weight gradients), per layer
``8 d^2`` (query, key, value, output projections) + ``4 d m`` (MLP) + ``4 T d`` (scores and weighted
values over the whole sequence: causal masking skips no work), plus ``2 d V`` for the output layer;
the embedding lookup counts none. XLA's own count for the compiled step is printed next to it.

Run:
  python benchmarks/lm_throughput.py                    # --size small on GPU/TPU, tiny on CPU
  python benchmarks/lm_throughput.py --size small --steps 20 --out benchmarks/results-gpu-lm.md
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import optax

import nnjax

SIZES = {
    # GPT-2-small-like: 12 layers, d_model 768, 12 heads, sequences of 1024.
    "small": {"vocab": 32768, "seq": 1024, "batch": 16, "d_model": 768, "heads": 12, "layers": 12, "mlp": 3072},
    "tiny": {"vocab": 512, "seq": 128, "batch": 8, "d_model": 128, "heads": 4, "layers": 2, "mlp": 512},
}


def model_flops_per_token(*, vocab: int, seq: int, d_model: int, layers: int, mlp: int, **_) -> int:
    """Training FLOPs per token (3x the forward matmuls; see the module docstring)."""
    per_layer = 8 * d_model**2 + 4 * d_model * mlp + 4 * seq * d_model
    return 3 * (layers * per_layer + 2 * d_model * vocab)


def language_model(*, vocab: int, seq: int, d_model: int, heads: int, layers: int, mlp: int, **_) -> nnjax.Layer:
    """Tokens ``(batch, seq)`` -> next-token logits ``(batch, seq, vocab)``."""
    blocks = [nnjax.TransformerDecoderBlock(heads, mlp) for _ in range(layers)]
    return nnjax.serial(
        nnjax.Embedding(vocab, d_model),
        nnjax.LearnedPositionalEmbedding(seq),
        *blocks,
        nnjax.LayerNorm(),
        nnjax.Dense(vocab),
    )


def matmul_peak(n: int, dtype, repeats: int = 5) -> float:
    """Median FLOP/s of ``jit(jnp.dot)`` on two ``(n, n)`` matrices of ``dtype``."""
    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), dtype)
    dot = jax.jit(jnp.dot)
    jax.block_until_ready(dot(a, b))
    calls = max(1, int(0.2 / _seconds(lambda: dot(a, b))))
    times = [_seconds(lambda: dot(a, b), calls) for _ in range(repeats)]
    return 2 * n**3 / statistics.median(times)


def _seconds(fn, calls: int = 1) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        out = fn()
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / calls


def run(size: str = "tiny", *, dtype: str | None = None, steps: int = 10, repeats: int = 5, peak_n: int | None = None):
    """Measures one configuration; returns a dict of the figures (also used by the smoke test)."""
    config = dict(SIZES[size])
    backend = jax.default_backend()
    dtype = dtype or ("float32" if backend == "cpu" else "bfloat16")
    compute = jnp.dtype(dtype)
    peak_n = peak_n or (2048 if backend == "cpu" else 8192)
    peaks = [matmul_peak(peak_n, compute)]

    model = language_model(**config)
    if compute != jnp.float32:
        model = nnjax.with_policy(model, nnjax.Policy(compute_dtype=compute))
    tx = optax.adamw(3e-4, weight_decay=0.1)
    train_state = nnjax.init_train_state(model, tx, jax.random.key(0), (config["seq"],))
    step = nnjax.make_train_step(model, nnjax.losses.softmax_cross_entropy, tx)
    tokens = jax.random.randint(jax.random.key(1), (config["batch"], config["seq"] + 1), 0, config["vocab"])
    batch = (tokens[:, :-1], tokens[:, 1:])

    # XLA's FLOP count, from the same step compiled as one plain nnjax.jit program.
    plain_step = nnjax.jit(nnjax.make_train_step(model, nnjax.losses.softmax_cross_entropy, tx, jit=False))
    cost = plain_step.lower(train_state, batch).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    xla_flops = float((cost or {}).get("flops", float("nan")))

    start = time.perf_counter()
    train_state, metrics = step(train_state, batch)
    jax.block_until_ready(train_state)
    first_call_s = time.perf_counter() - start
    for _ in range(2):
        train_state, metrics = step(train_state, batch)
    jax.block_until_ready(train_state)

    box = [train_state]

    def steps_once():
        for _ in range(steps):
            box[0], _ = step(box[0], batch)
        return box[0]

    step_s = statistics.median(_seconds(steps_once) / steps for _ in range(repeats))
    peaks.append(matmul_peak(peak_n, compute))

    tokens_per_step = config["batch"] * config["seq"]
    flops_per_step = model_flops_per_token(**config) * tokens_per_step
    params = sum(x.size for x in jax.tree.leaves(train_state.params))
    return {
        "size": size,
        "config": config,
        "backend": backend,
        "device": str(jax.devices()[0].device_kind),
        "dtype": dtype,
        "params": int(params),
        "step_ms": step_s * 1e3,
        "tokens_per_s": tokens_per_step / step_s,
        "model_tflops_per_step": flops_per_step / 1e12,
        "xla_tflops_per_step": xla_flops / 1e12,
        "model_tflops_per_s": flops_per_step / step_s / 1e12,
        "peak_tflops_per_s": max(peaks) / 1e12,
        "mfu": flops_per_step / step_s / max(peaks),
        "first_call_s": first_call_s,
        "peak_n": peak_n,
        "loss": float(metrics["loss"]),
    }


def markdown(r: dict) -> str:
    c = r["config"]
    return "\n".join(
        [
            f"### Transformer LM training throughput ({r['size']}), {r['device']} ({r['backend']}), "
            f"{r['dtype']} compute",
            "",
            f"- model: {c['layers']} decoder blocks, d_model {c['d_model']}, {c['heads']} heads, MLP {c['mlp']}, "
            f"vocab {c['vocab']}, sequence {c['seq']}, batch {c['batch']}; {r['params'] / 1e6:.1f}M parameters "
            "(float32), AdamW, `make_train_step`",
            f"- jax {jax.__version__}, nnjax {nnjax.__version__}, python {platform.python_version()}; "
            f"peak: `jit(jnp.dot)` of two {r['peak_n']}x{r['peak_n']} {r['dtype']} matrices, best of start and end",
            "",
            "| step ms | tokens/s | model TFLOP/step | XLA TFLOP/step | model TFLOP/s | matmul peak TFLOP/s | MFU |",
            "|---:|---:|---:|---:|---:|---:|---:|",
            f"| {r['step_ms']:.2f} | {r['tokens_per_s']:,.0f} | {r['model_tflops_per_step']:.4f} | "
            f"{r['xla_tflops_per_step']:.4f} | {r['model_tflops_per_s']:.3f} | {r['peak_tflops_per_s']:.3f} | "
            f"{100 * r['mfu']:.1f}% |",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default=None, help="default: small on GPU/TPU, tiny on CPU")
    parser.add_argument("--dtype", default=None, help="compute dtype (default: bfloat16 on GPU/TPU, float32 on CPU)")
    parser.add_argument("--steps", type=int, default=10, help="steps per measurement")
    parser.add_argument("--repeats", type=int, default=5, help="measurements (median reported)")
    parser.add_argument("--peak-n", type=int, default=None, help="matmul size for the peak (default 8192; CPU 2048)")
    parser.add_argument("--out", default=None, help="also write the markdown here")
    args = parser.parse_args(argv)
    size = args.size or ("tiny" if jax.default_backend() == "cpu" else "small")
    result = run(size, dtype=args.dtype, steps=args.steps, repeats=args.repeats, peak_n=args.peak_n)
    text = markdown(result)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    return result


if __name__ == "__main__":
    main()
