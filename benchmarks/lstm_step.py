#!/usr/bin/env python
"""LSTM training-step time: nnjax's LSTM layer against a hand-written JAX LSTM (and PyTorch, if installed).

The anchor workload of /work/shared/bench/anchors.py: embedding 96 -> 64, one LSTM of 256 units,
sequences of 64 steps, batch 32, next-token cross-entropy at every position, Adam(1e-3).

Rows (all measured in one process, interleaved A B C A B C, median of ``--repeats`` measurements):
  jax            hand-written: both matmuls inside the lax.scan body (as anchors.py)
  nnjax          nnjax.LSTM with its kernel defaults (``kernels.hoist_rnn_input()``, ``kernels.feature_major_rnn()``)
  nnjax_batch_major  input projection inside the scan, batch-major state (``feature_major=False``)
  nnjax_hoisted  input projection hoisted out of the scan as one big matmul
  nnjax_inside   input projection inside the scan, feature-major state (explicit)
  nnjax_unroll2  inside, feature-major, ``unroll=2``
  torch          nn.LSTM eager, 2 threads (only when ``import torch`` works)

Run: python benchmarks/lstm_step.py [--repeats 5] [--steps 6] [--keep-freed-memory]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import nnjax
from nnjax._src.kernels import feature_major_rnn, hoist_rnn_input
from nnjax._src.recurrent import LSTM

VOCAB, EMB, HID, SEQ, BATCH = 96, 64, 256, 64, 32


def embedding(vocab: int, features: int) -> nnjax.Layer:
    """A minimal token embedding (int ids -> vectors), kept local so the benchmark stands alone."""

    def init(key, input_shape, dtype=jnp.float32):
        return {"table": jax.random.normal(key, (vocab, features), dtype)}, {}

    def apply(params, state, x, *, key=None, train=False):
        return params["table"][x], state

    return nnjax.Layer(init, apply, f"Embed({vocab})", jnp.int32)


def build_nnjax(tokens, labels, **lstm_options):
    model = nnjax.serial(embedding(VOCAB, EMB), LSTM(HID, **lstm_options), nnjax.Dense(VOCAB))
    tx = optax.adam(1e-3)
    train_state = nnjax.init_train_state(model, tx, jax.random.key(0), (SEQ,))
    step = nnjax.make_train_step(model, nnjax.losses.softmax_cross_entropy, tx)
    box = [train_state]

    def run(n):
        for _ in range(n):
            box[0], metrics = step(box[0], (tokens, labels))
        jax.block_until_ready(box[0])

    return run


def build_jax(tokens, labels):
    k = jax.random.split(jax.random.key(0), 4)
    s = 1.0 / math.sqrt(HID)
    u = lambda key, shape: jax.random.uniform(key, shape, jnp.float32, -s, s)  # noqa: E731
    params = {
        "embed": jax.random.normal(k[0], (VOCAB, EMB)),
        "w_ih": u(k[1], (EMB, 4 * HID)),
        "w_hh": u(k[2], (HID, 4 * HID)),
        "b": jnp.zeros((4 * HID,)),
        "w_out": u(k[3], (HID, VOCAB)),
        "b_out": jnp.zeros((VOCAB,)),
    }

    def loss(p, tokens, labels):
        e = p["embed"][tokens.T]  # (T, B, E)

        def cell(carry, x_t):
            h, c = carry
            i, f, g, o = jnp.split(x_t @ p["w_ih"] + h @ p["w_hh"] + p["b"], 4, axis=-1)
            c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
            h = jax.nn.sigmoid(o) * jnp.tanh(c)
            return (h, c), h

        h0 = jnp.zeros((tokens.shape[0], HID))
        _, hs = jax.lax.scan(cell, (h0, h0), e)  # (T, B, H)
        logits = jnp.swapaxes(hs, 0, 1) @ p["w_out"] + p["b_out"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    tx = optax.adam(1e-3)

    def step(p, opt_state, tokens, labels):
        value, grads = jax.value_and_grad(loss)(p, tokens, labels)
        updates, opt_state = tx.update(grads, opt_state, p)
        return optax.apply_updates(p, updates), opt_state, value

    step = jax.jit(step, donate_argnums=(0, 1))
    box = [params, tx.init(params)]

    def run(n):
        for _ in range(n):
            box[0], box[1], value = step(box[0], box[1], tokens, labels)
        jax.block_until_ready(box)

    return run


def build_torch(tokens, labels):
    import torch  # noqa: PLC0415 - optional

    torch.set_num_threads(2)
    embed, lstm, out = (
        torch.nn.Embedding(VOCAB, EMB),
        torch.nn.LSTM(EMB, HID, batch_first=True),
        torch.nn.Linear(HID, VOCAB),
    )
    params = [*embed.parameters(), *lstm.parameters(), *out.parameters()]
    opt = torch.optim.Adam(params, lr=1e-3)
    x, y = torch.as_tensor(np.asarray(tokens), dtype=torch.long), torch.as_tensor(np.asarray(labels), dtype=torch.long)

    def run(n):
        for _ in range(n):
            opt.zero_grad()
            logits = out(lstm(embed(x))[0])
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), y.reshape(-1))
            loss.backward()
            opt.step()

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="interleaved measurements per row")
    parser.add_argument("--steps", type=int, default=6, help="training steps per measurement")
    parser.add_argument("--keep-freed-memory", action="store_true", help="nnjax.keep_freed_memory() first")
    args = parser.parse_args()
    if args.keep_freed_memory:
        nnjax.keep_freed_memory()

    data = np.random.RandomState(3).randint(0, VOCAB, size=(BATCH, SEQ + 1)).astype(np.int32)
    tokens, labels = jnp.asarray(data[:, :-1]), jnp.asarray(data[:, 1:])
    builders = {
        "jax": lambda: build_jax(tokens, labels),
        "nnjax": lambda: build_nnjax(tokens, labels),
        "nnjax_hoisted": lambda: build_nnjax(tokens, labels, hoist_input=True),
        "nnjax_batch_major": lambda: build_nnjax(tokens, labels, hoist_input=False, feature_major=False),
        "nnjax_inside": lambda: build_nnjax(tokens, labels, hoist_input=False, feature_major=True),
        "nnjax_unroll2": lambda: build_nnjax(tokens, labels, hoist_input=False, feature_major=True, unroll=2),
    }
    try:
        import torch  # noqa: F401, PLC0415

        builders["torch"] = lambda: build_torch(tokens, labels)
    except ImportError:
        print("(torch not installed: no PyTorch row)")
    runs, times = {}, {}
    for name, build in builders.items():
        runs[name] = build()
        runs[name](2)  # compile and warm up
        times[name] = []
    for _ in range(args.repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run(args.steps)
            times[name].append((time.perf_counter() - start) / args.steps * 1e3)
    base = statistics.median(times["jax"])
    print(
        f"backend {jax.default_backend()}; nnjax defaults hoist_input={hoist_rnn_input()}, "
        f"feature_major={feature_major_rnn()}"
    )
    print(f"LSTM {HID}, seq {SEQ}, batch {BATCH}, Adam; median of {args.repeats} x {args.steps} steps")
    print(f"{'row':<19}{'median ms':>10}{'min ms':>9}{'vs jax':>8}")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:<19}{med:>10.1f}{min(ts):>9.1f}{med / base:>7.2f}x")


if __name__ == "__main__":
    main()
