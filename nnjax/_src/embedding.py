"""Token embeddings and positional encodings: Embedding (with a tied output), sinusoidal, learned and rotary.

    tokens (batch, T) int  --Embedding-->  (batch, T, features)  --positional-->  (batch, T, features)
    logits = embedding_attend(embedding_params, h)   # (batch, T, vocab_size): the tied output layer

Rotary position embeddings (RoPE) are not added to ``x``: ``apply_rope`` rotates queries and keys inside
attention (``MultiHeadAttention(..., use_rope=True)``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from nnjax._src import initializers
from nnjax._src.checks import check
from nnjax._src.core import Layer
from nnjax._src.errors import LayerError, LayerTypeError, check_float_input, is_concrete
from nnjax._src.types import Array, Params, Shape


def _check_positive_int(name: str, argument: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name}: argument `{argument}` expected a positive int, given {value!r}.")


def default_embedding_init() -> initializers.Initializer:
    """Truncated normal, std ``1/sqrt(features)`` (Flax's choice): tied logits start with std near 1."""
    return jax.nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal", in_axis=-1, out_axis=-2)


def Embedding(  # noqa: N802 - layer constructors are CamelCase, as in stax
    vocab_size: int, features: int, *, table_init: str | initializers.Initializer | None = None
) -> Layer:
    """A lookup table from integer tokens to vectors: ``y[b, t] = table[x[b, t]]``.

    Params: ``{"table": (vocab_size, features)}``. The layer declares ``input_dtype=int32``, so ``serial``
    and ``output_shape`` build integer example inputs. For a tied output layer (logits that reuse the
    table) call ``embedding_attend(params, h)``.

    Args:
      vocab_size: number of distinct tokens; ids must lie in ``[0, vocab_size)``.
      features: size of each embedding vector.
      table_init: initializer function or name; default ``default_embedding_init()`` (std ``1/sqrt(features)``).

    Returns:
      A ``Layer`` (``input_dtype=int32``) whose ``apply`` maps integer ids ``x: (batch, ...)`` to
      ``y: (batch, ..., features)`` in the table's dtype; ``input_shape`` is ``(T,)`` for sequences.

    Raises:
      ValueError: (when built) ``vocab_size`` or ``features`` is not a positive int, or an unknown
        ``table_init`` name.
      LayerTypeError: (at apply) ``x`` is not an integer array.
      LayerError: (at apply) ``x`` is a scalar; or (eagerly, when ``x`` holds concrete values) a token id lies
        outside ``[0, vocab_size)``. Under ``jit`` the values are unknown: an out-of-range id (negative ones
        included) looks up a vector of NaN, so the loss turns NaN instead of silently reading another
        token's row.

    Example:
      >>> embed = nnjax.Embedding(10, 4)
      >>> params, state = embed.init(jax.random.key(0), (3,))  # sequences of 3 tokens
      >>> params["table"].shape
      (10, 4)
      >>> embed.apply(params, state, jnp.array([[1, 2, 3], [0, 0, 9]]))[0].shape
      (2, 3, 4)
    """
    name = f"Embedding({vocab_size}, {features})"
    _check_positive_int(name, "vocab_size", vocab_size)
    _check_positive_int(name, "features", features)
    table_fn = default_embedding_init() if table_init is None else initializers.get(table_init, f"{name} table_init")

    def init(key, input_shape: Shape, dtype=jnp.float32):
        return {"table": table_fn(key, (vocab_size, features), dtype)}, {}

    def apply(params, state, x, *, key=None, train=False):
        check_token_ids(name, x, vocab_size)
        x = jnp.where(x < 0, vocab_size, x)  # negative ids are out of range too, not wrapped around
        return jnp.take(params["table"], x, axis=0, mode="fill", fill_value=jnp.nan), state

    return Layer(init, apply, name, input_dtype=jnp.int32, input_range=(0, vocab_size))


def check_token_ids(layer: str, x: Array, vocab_size: int, argument: str = "x") -> None:
    """Checks integer token ids: dtype at trace time, range ``[0, vocab_size)`` when values are concrete."""
    dtype = jnp.result_type(x)
    if not jnp.issubdtype(dtype, jnp.integer):
        raise LayerTypeError(
            f"{layer}: argument `{argument}` expected integer token ids, given dtype {dtype} with shape "
            f"{tuple(jnp.shape(x))}. Hint: convert with `{argument}.astype(jnp.int32)`; an Embedding takes ids, "
            f"not vectors."
        )
    if jnp.ndim(x) < 1:
        raise LayerError(
            f"{layer}: argument `{argument}` expected a batch of token ids (rank >= 1), given shape "
            f"{tuple(jnp.shape(x))}."
        )
    if not is_concrete(x) and np.size(x) > 0:  # traced: checked in the checked mode only
        expected = f"{layer}: argument `{argument}` expected token ids in [0, {vocab_size}), "
        check(jnp.all((x >= 0) & (x < vocab_size)), expected + "given ids in [{low}, {high}].",
              low=jnp.min(x), high=jnp.max(x))
    if is_concrete(x) and np.size(x) > 0:
        values = np.asarray(x)
        low, high = int(values.min()), int(values.max())
        if low < 0 or high >= vocab_size:
            raise LayerError(
                f"{layer}: argument `{argument}` expected token ids in [0, {vocab_size}), given ids in "
                f"[{low}, {high}]. Hint: make `vocab_size` at least {high + 1}, or check the tokenizer."
            )


def embedding_attend(params: Params, x: Array) -> Array:
    """The tied output layer: logits ``x @ table.T`` scoring every token of an Embedding's table.

    Args:
      params: an ``Embedding``'s params, ``{"table": (vocab_size, features)}``.
      x: ``(batch, ..., features)`` hidden vectors.

    Returns:
      ``(batch, ..., vocab_size)`` logits.

    Raises:
      LayerError: the last axis of ``x`` is not the table's ``features``.
      LayerTypeError: ``x`` is not floating point.

    Example:
      >>> embed = nnjax.Embedding(10, 4)
      >>> params, _ = embed.init(jax.random.key(0), (3,))
      >>> nnjax.embedding_attend(params, jnp.ones((2, 3, 4))).shape  # (batch, T, vocab_size)
      (2, 3, 10)
    """
    table = params["table"]
    check_float_input("embedding_attend", x)
    if jnp.ndim(x) < 1 or x.shape[-1] != table.shape[1]:
        raise LayerError(
            f"embedding_attend: argument `x` expected shape (..., {table.shape[1]}) to match the table "
            f"{tuple(table.shape)}, given {tuple(jnp.shape(x))}."
        )
    return x @ table.T


def sinusoidal_positions(length: int, features: int, max_wavelength: float = 10_000.0, dtype=jnp.float32) -> Array:
    """The sinusoidal position table of "Attention Is All You Need".

    ``pe[p, 2i] = sin(p / max_wavelength**(2i / features))`` and ``pe[p, 2i + 1] = cos(...)`` (same angle).
    Computed in NumPy float64, then cast; an odd ``features`` ends with a sine column.

    Args:
      length: number of positions ``T`` (rows ``0 .. length - 1``).
      features: size of each position vector ``D``.
      max_wavelength: the base of the angles' frequencies, as above (10000 in the paper).
      dtype: the dtype of the result.

    Returns:
      A ``(length, features)`` array of ``dtype``, values in ``[-1, 1]``.

    Example:
      >>> pe = nnjax.sinusoidal_positions(4, 6)
      >>> pe.shape
      (4, 6)
      >>> pe[0].tolist()  # position 0: sin 0 and cos 0
      [0.0, 1.0, 0.0, 1.0, 0.0, 1.0]
      >>> round(float(pe[1, 0]), 4), round(float(pe[1, 1]), 4)  # sin(1), cos(1)
      (0.8415, 0.5403)
    """
    positions = np.arange(length)[:, None]  # (T, 1)
    even = np.arange(0, features, 2)[None, :]  # (1, ceil(D / 2))
    angles = positions / np.power(max_wavelength, even / features)  # (T, ceil(D / 2))
    table = np.zeros((length, features))
    table[:, 0::2] = np.sin(angles)
    table[:, 1::2] = np.cos(angles[:, : features // 2])
    return jnp.asarray(table, dtype)


def _check_sequence(name: str, x: Array) -> None:
    check_float_input(name, x)
    if jnp.ndim(x) != 3:
        raise LayerError(
            f"{name}: argument `x` expected a batch of sequences of shape (batch, T, features), given shape "
            f"{tuple(jnp.shape(x))}. Hint: put an Embedding before it for integer tokens."
        )


def SinusoidalPositionalEncoding(max_wavelength: float = 10_000.0) -> Layer:  # noqa: N802
    """Adds the fixed sinusoidal position table to a sequence: ``y = x + sinusoidal_positions(T, D)``.

    No params. Shapes: ``x: (batch, T, features) -> y: (batch, T, features)``; any ``T``.

    Args:
      max_wavelength: the base of the table's frequencies (see ``sinusoidal_positions``).

    Returns:
      A parameter-free ``Layer`` whose ``apply`` maps ``x: (batch, T, features)`` float to the same shape and
      dtype; ``input_shape`` is ``(T, features)``.

    Raises:
      ValueError: (when built) ``max_wavelength`` is not positive.
      LayerError: (at init) ``input_shape`` is not ``(T, features)``; (at apply) ``x`` is not rank 3.
      LayerTypeError: (at apply) ``x`` is not floating point (token ids need an ``Embedding`` first).

    Example:
      >>> layer = nnjax.SinusoidalPositionalEncoding()
      >>> params, state = layer.init(jax.random.key(0), (5, 8))
      >>> y, _ = layer.apply(params, state, jnp.zeros((2, 5, 8)))
      >>> y.shape, bool(jnp.allclose(y[1], nnjax.sinusoidal_positions(5, 8)))
      ((2, 5, 8), True)
    """
    name = "SinusoidalPositionalEncoding"
    if not max_wavelength > 0:
        raise ValueError(f"{name}: argument `max_wavelength` expected a positive number, given {max_wavelength!r}.")

    def init(key, input_shape, dtype=jnp.float32):
        if len(input_shape) != 2:
            raise LayerError(f"{name}: argument `input_shape` expected (T, features), given {tuple(input_shape)}.")
        return {}, {}

    def apply(params, state, x, *, key=None, train=False):
        _check_sequence(name, x)
        table = sinusoidal_positions(x.shape[1], x.shape[2], max_wavelength, x.dtype)  # (T, D)
        return x + table[None], state

    return Layer(init, apply, name)


def LearnedPositionalEmbedding(  # noqa: N802
    max_len: int, *, table_init: str | initializers.Initializer | None = None
) -> Layer:
    """Adds a learned vector per position: ``y[:, t] = x[:, t] + table[t]``.

    Params: ``{"table": (max_len, features)}`` (``table_init`` default: normal, std 0.02, as GPT-2).
    Shapes: ``x: (batch, T, features) -> y: (batch, T, features)`` with ``T <= max_len``.

    Args:
      max_len: the number of positions with a vector; longer sequences are refused.
      table_init: initializer function or name; default normal with std 0.02.

    Returns:
      A ``Layer`` whose ``apply`` maps ``x: (batch, T, features)`` float to the same shape, for any
      ``T <= max_len``; ``input_shape`` is ``(T, features)``.

    Raises:
      ValueError: (when built) ``max_len`` is not a positive int, or an unknown ``table_init`` name.
      LayerError: (at init) ``input_shape`` is not ``(T, features)`` or ``T > max_len``; (at apply) ``x`` is not
        ``(batch, T <= max_len, features)`` with init's ``features``.
      LayerTypeError: (at apply) ``x`` is not floating point.

    Example:
      >>> model = nnjax.serial(nnjax.Embedding(10, 4), nnjax.LearnedPositionalEmbedding(8))
      >>> params, state = model.init(jax.random.key(0), (3,))
      >>> jax.tree.map(jnp.shape, params)
      {'embedding_0': {'table': (10, 4)}, 'learned_positional_embedding_1': {'table': (8, 4)}}
      >>> model.apply(params, state, jnp.zeros((2, 3), jnp.int32))[0].shape
      (2, 3, 4)
    """
    name = f"LearnedPositionalEmbedding({max_len})"
    _check_positive_int(name, "max_len", max_len)
    table_fn = initializers.normal(0.02) if table_init is None else initializers.get(table_init, f"{name} table_init")

    def init(key, input_shape, dtype=jnp.float32):
        if len(input_shape) != 2:
            raise LayerError(f"{name}: argument `input_shape` expected (T, features), given {tuple(input_shape)}.")
        if input_shape[0] > max_len:
            raise LayerError(
                f"{name}: argument `input_shape` expected T <= max_len={max_len}, given T={input_shape[0]}."
            )
        return {"table": table_fn(key, (max_len, input_shape[1]), dtype)}, {}

    def apply(params, state, x, *, key=None, train=False):
        _check_sequence(name, x)
        table = params["table"]
        if x.shape[1] > max_len or x.shape[2] != table.shape[1]:
            raise LayerError(
                f"{name}: argument `x` expected shape (batch, T <= {max_len}, {table.shape[1]}), "
                f"given {tuple(x.shape)}."
            )
        return x + table[None, : x.shape[1]], state

    return Layer(init, apply, name)


def apply_rope(x: Array, positions: Array, max_wavelength: float = 10_000.0) -> Array:
    """Rotary position embedding (RoPE, Su et al. 2021), "rotate-half" layout (GPT-NeoX, LLaMA).

    Feature pair ``(x[..., i], x[..., i + D/2])`` of the vector at position ``p`` is rotated by the angle
    ``p * max_wavelength**(-2i / D)``. Rotations keep norms, and the dot product of a rotated query at
    ``p`` with a rotated key at ``q`` depends only on ``p - q``: attention sees relative positions.

    Args:
      x: ``(batch, T, heads, head_dim)`` or ``(batch, T, features)``; the last axis must be even.
      positions: ``(T,)`` or ``(batch, T)`` integer or float positions.
      max_wavelength: the base of the frequencies (10000 in the paper).

    Returns:
      An array shaped and typed like ``x``.

    Raises:
      LayerError: ``x`` not of rank 3 or 4, an odd last axis, or ``positions`` does not match ``x``'s
        ``(batch, T)``.

    Example:
      >>> q = jnp.ones((1, 3, 2, 4))  # (batch, T, heads, head_dim)
      >>> rotated = nnjax.apply_rope(q, jnp.arange(3))
      >>> rotated.shape, bool(jnp.allclose(rotated[:, 0], q[:, 0]))  # position 0 is not rotated
      ((1, 3, 2, 4), True)
      >>> bool(jnp.allclose(jnp.linalg.norm(rotated, axis=-1), 2.0))  # norms are kept
      True
    """
    half = x.shape[-1] // 2
    if x.ndim not in (3, 4) or x.shape[-1] % 2:
        raise LayerError(
            f"apply_rope: argument `x` expected shape (batch, T, [heads,] even head_dim), given {tuple(x.shape)}."
        )
    positions = jnp.asarray(positions)
    if positions.shape not in ((x.shape[1],), tuple(x.shape[:2])):
        raise LayerError(
            f"apply_rope: argument `positions` expected shape ({x.shape[1]},) or {tuple(x.shape[:2])}, "
            f"given {tuple(positions.shape)}."
        )
    dtype = jnp.promote_types(x.dtype, jnp.float32)  # angles in at least float32, even for bfloat16 x
    frequencies = max_wavelength ** (-jnp.arange(half, dtype=dtype) * 2.0 / x.shape[-1])  # (D/2,)
    angles = positions.astype(dtype)[..., None] * frequencies  # (T, D/2) or (B, T, D/2)
    angles = angles.reshape((-1, x.shape[1]) + (1,) * (x.ndim - 3) + (half,))  # (B or 1, T, [1,] D/2)
    sin, cos = jnp.sin(angles).astype(x.dtype), jnp.cos(angles).astype(x.dtype)
    first, second = x[..., :half], x[..., half:]
    return jnp.concatenate([first * cos - second * sin, first * sin + second * cos], axis=-1)
