"""A character-level LSTM language model, scored in bits per character against a unigram baseline.

The text defaults to the source of a Python standard-library module (``argparse``, read with
``inspect.getsource``, so it is on every machine); ``--text-file PATH`` uses any file. The first 90%
trains, the last 10% validates. Characters are one-hot encoded inside the model
(``jax.nn.one_hot`` in a ``stateless`` layer), then ``LSTM -> Dense(vocab)`` predicts the next
character at every position. Training windows are drawn at random on the device; a whole chunk of
steps runs as one ``jax.lax.scan``. The baseline is the unigram model: character frequencies of the
training text (add-one smoothed), scored on the validation text. Finally a sample is generated one
character at a time with ``LSTMCell.step`` at a chosen temperature.

Run: python examples/char_lstm.py [--steps 1500] [--text-file PATH]
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import nnjax
from nnjax._src.recurrent import LSTM, LSTMCell

DEFAULTS = {
    "module": "argparse",
    "text_file": "",
    "hidden": 128,
    "seq_len": 64,
    "batch_size": 32,
    "steps": 1500,
    "steps_per_call": 100,
    "learning_rate": 3e-3,
    "temperature": 0.7,
    "sample_len": 300,
    "seed": 0,
    "verbose": False,
}


def load_text(config: dict) -> str:
    """The text of ``config["text_file"]`` if set, else the source of the stdlib module ``config["module"]``."""
    if config["text_file"]:
        with open(config["text_file"], encoding="utf-8", errors="replace") as f:
            return f.read()
    return inspect.getsource(importlib.import_module(config["module"]))


def build_model(vocab: int, hidden: int) -> nnjax.Layer:
    """``ids: (batch, T) int -> logits: (batch, T, vocab)``: one-hot, LSTM, Dense."""
    one_hot = nnjax.stateless(lambda ids: jax.nn.one_hot(ids, vocab), f"OneHot({vocab})", input_dtype=jnp.int32)
    return nnjax.serial(one_hot, LSTM(hidden), nnjax.Dense(vocab))


def unigram_bits(train_ids: np.ndarray, val_ids: np.ndarray, vocab: int) -> float:
    """Bits per character of the add-one-smoothed unigram model of ``train_ids`` on ``val_ids``."""
    counts = np.bincount(train_ids, minlength=vocab) + 1.0
    return float(-np.mean(np.log2(counts / counts.sum())[val_ids]))


def sample(params, chars: list[str], hidden: int, prime: str, length: int, temperature: float, key) -> str:
    """Generates ``length`` characters after ``prime``, feeding each sampled one back in."""
    cell, lstm, dense = LSTMCell(hidden), params["lstm_1"], params["dense_2"]
    index = {c: i for i, c in enumerate(chars)}
    vocab = len(chars)

    def advance(carry, char_id):
        carry, h = cell.step(lstm, carry, jax.nn.one_hot(char_id[None], vocab))
        return carry, (h @ dense["w"] + dense["b"])[0]  # logits (vocab,)

    carry, logits = cell.initial_carry(1), None
    for c in prime:
        carry, logits = advance(carry, jnp.asarray(index.get(c, 0)))

    def body(state, key):
        carry, logits = state
        char_id = jax.random.categorical(key, logits / temperature)
        return advance(carry, char_id), char_id

    _, ids = jax.jit(lambda c, lg, k: jax.lax.scan(body, (c, lg), jax.random.split(k, length)))(carry, logits, key)
    return prime + "".join(chars[i] for i in np.asarray(ids))


def train_and_evaluate(config: dict | None = None) -> dict:
    """Trains the model; returns validation bits/char, the unigram baseline, the sample and timings."""
    config = {**DEFAULTS, **(config or {})}
    start = time.perf_counter()
    text = load_text(config)
    chars = sorted(set(text))
    vocab, seq_len, batch = len(chars), config["seq_len"], config["batch_size"]
    index = {c: i for i, c in enumerate(chars)}
    ids = np.array([index[c] for c in text], np.int32)
    split = int(0.9 * len(ids))
    train_ids, val_ids = ids[:split], ids[split:]

    model = build_model(vocab, config["hidden"])
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(config["learning_rate"]))
    train_state = nnjax.init_train_state(model, tx, jax.random.key(config["seed"]), (seq_len,))
    step = nnjax.make_train_step(model, nnjax.losses.softmax_cross_entropy, tx, jit=False)
    train_text = jnp.asarray(train_ids)
    offsets = jnp.arange(seq_len + 1)

    def run_steps(train_state, key):  # steps_per_call updates on random windows, one compiled program
        def body(ts, k):
            starts = jax.random.randint(k, (batch, 1), 0, len(train_ids) - seq_len - 1)
            window = train_text[starts + offsets]  # (batch, seq_len + 1)
            return step(ts, (window[:, :-1], window[:, 1:]))

        train_state, metrics = jax.lax.scan(body, train_state, jax.random.split(key, config["steps_per_call"]))
        return train_state, metrics["loss"].mean()

    run_steps = jax.jit(run_steps, donate_argnums=0)
    n_val = (len(val_ids) - 1) // seq_len
    val_x = jnp.asarray(val_ids[: n_val * seq_len].reshape(n_val, seq_len))
    val_y = jnp.asarray(val_ids[1 : n_val * seq_len + 1].reshape(n_val, seq_len))

    model_state = train_state.state  # {} for each layer: nothing here has state

    @jax.jit
    def val_bits(params):
        logits, _ = model.apply(params, model_state, val_x)
        return nnjax.losses.softmax_cross_entropy(logits, val_y) / math.log(2)

    key = jax.random.key(config["seed"] + 1)
    calls = max(1, config["steps"] // config["steps_per_call"])
    for i in range(calls):
        train_state, loss = run_steps(train_state, jax.random.fold_in(key, i))
        if config["verbose"]:
            bits = float(val_bits(train_state.params))
            print(f"step {(i + 1) * config['steps_per_call']:5d}  train {float(loss) / math.log(2):.3f} bits/char  "
                  f"val {bits:.3f} bits/char  ({time.perf_counter() - start:.0f}s)", flush=True)
    train_seconds = time.perf_counter() - start
    text_sample = sample(train_state.params, chars, config["hidden"], "def ", config["sample_len"],
                         config["temperature"], jax.random.key(config["seed"] + 2))
    return {
        "val_bits_per_char": float(val_bits(train_state.params)),
        "unigram_bits_per_char": unigram_bits(train_ids, val_ids, vocab),
        "vocab": vocab,
        "train_chars": len(train_ids),
        "val_chars": n_val * seq_len,
        "steps": calls * config["steps_per_call"],
        "train_seconds": train_seconds,
        "sample": text_sample,
    }


def main() -> None:
    nnjax.config.compilation_cache()  # a rerun loads its compiled programs instead of compiling them
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, value in DEFAULTS.items():
        if name != "verbose":
            parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    args = parser.parse_args()
    nnjax.keep_freed_memory()  # a process-wide choice: XLA's temporaries reuse freed memory
    results = train_and_evaluate({**vars(args), "verbose": True})
    bits, base = results["val_bits_per_char"], results["unigram_bits_per_char"]
    print(f"text: {results['train_chars']} training / {results['val_chars']} validation characters, vocab {results['vocab']}")
    print(f"validation bits/char: LSTM {bits:.3f}   unigram baseline {base:.3f}   "
          f"({base - bits:.2f} bits lower, {100 * (1 - bits / base):.0f}%)")
    print(f"training: {results['steps']} steps in {results['train_seconds']:.0f}s")
    print(f"sample (temperature {args.temperature}):\n{results['sample']}")


if __name__ == "__main__":
    main()
