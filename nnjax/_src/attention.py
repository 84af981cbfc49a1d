"""Multi-head attention and pre-norm Transformer blocks.

Inputs: a plain array ``x: (batch, T, features)`` means self-attention without a mask. Anything more is
passed as a dict, so it travels through ``serial`` with the sequence:

    {"x": (batch, T, d_model),            # queries (and keys/values in self-attention)
     "context": (batch, S, d_context),    # optional: keys/values of cross-attention (e.g. an encoder's output)
     "mask": bool (batch, S) or (batch, T, S)}   # optional: True = may attend; (batch, S) masks padded keys

``MultiHeadAttention`` returns the attended array; the blocks return their input with ``"x"`` replaced, so
``serial(block, block, ...)`` chains them and every block sees the same masks and context.

Attention runs on ``jax.nn.dot_product_attention`` (fused cuDNN kernels on GPUs), except in training with
attention dropout and for float64 inputs (that function computes its softmax in float32): those use
``reference_attention``, the explicit ``softmax(q k^T / sqrt(head_dim)) v``.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from nnjax._src import initializers
from nnjax._src.core import LOCATED_ERRORS, Layer
from nnjax._src.embedding import apply_rope
from nnjax._src.errors import LayerError, check_float_input, is_concrete, with_location
from nnjax._src.types import Array, Params, PRNGKey, Shape

IMPLEMENTATIONS = (None, "xla", "cudnn", "reference")


def reference_attention(
    query: Array,
    key: Array,
    value: Array,
    mask: Array | None = None,
    *,
    dropout_rate: float = 0.0,
    dropout_key: PRNGKey | None = None,
) -> Array:
    """Scaled dot-product attention written out: ``softmax(q k^T / sqrt(head_dim), masked) v``.

    Args:
      query: ``(batch, T, heads, head_dim)``.
      key, value: ``(batch, S, heads, head_dim)``.
      mask: boolean, broadcastable to ``(batch, heads, T, S)``; True = may attend. A row with no allowed key
        gets uniform weights (as ``jax.nn.dot_product_attention``), not NaN.
      dropout_rate: probability of dropping each attention weight (the rest are scaled by ``1/(1 - rate)``).
      dropout_key: needed when ``dropout_rate > 0``.

    Returns:
      ``(batch, T, heads, head_dim)`` in ``value``'s dtype (the logits and softmax are computed in at least
      float32).

    Example:
      >>> q = k = v = jnp.ones((2, 3, 2, 4))  # (batch, T, heads, head_dim)
      >>> nnjax.reference_attention(q, k, v).shape
      (2, 3, 2, 4)
      >>> zeros, values = jnp.zeros((1, 3, 1, 1)), jnp.arange(3.0).reshape(1, 3, 1, 1)
      >>> causal = jnp.tril(jnp.ones((3, 3), bool))  # equal logits: each query averages the values it may see
      >>> out = nnjax.reference_attention(zeros, zeros, values, causal)
      >>> [round(float(o), 4) for o in out[0, :, 0, 0]]
      [0.0, 0.5, 1.0]
    """
    logits_dtype = jnp.promote_types(query.dtype, jnp.float32)  # softmax in >= float32
    logits = jnp.einsum("btnh,bsnh->bnts", query, key).astype(logits_dtype) / math.sqrt(query.shape[-1])
    if mask is not None:
        logits = jnp.where(mask, logits, jnp.finfo(logits_dtype).min)
    weights = jax.nn.softmax(logits, axis=-1).astype(value.dtype)  # (B, N, T, S)
    if dropout_rate > 0.0:
        keep = jax.random.bernoulli(dropout_key, 1.0 - dropout_rate, weights.shape)
        weights = jnp.where(keep, weights / (1.0 - dropout_rate), jnp.zeros_like(weights))
    return jnp.einsum("bnts,bsnh->btnh", weights, value)


# ---- inputs -------------------------------------------------------------------------------------------


def _unpack(name: str, x: Any, allowed: tuple[str, ...]) -> dict[str, Any]:
    """``x`` as a dict with at least ``"x"``; a plain array becomes ``{"x": x}``."""
    if not isinstance(x, dict):
        return {"x": x}
    unknown = sorted(set(x) - set(allowed))
    if "x" not in x or unknown:
        raise LayerError(
            f"{name}: argument `x` expected an array or a dict with key 'x' and optional keys "
            f"{[k for k in allowed if k != 'x']}, given a dict with keys {sorted(x)}."
        )
    return dict(x)


def _sequence_shape(name: str, argument: str, shape: Any) -> tuple[int, int]:
    if not (isinstance(shape, tuple) and len(shape) == 2):
        raise LayerError(f"{name}: argument `{argument}` expected (T, features) for one example, given {shape}.")
    return shape


def _check_sequence(name: str, x: Any, argument: str, features: int) -> None:
    check_float_input(name, x, argument)
    if jnp.ndim(x) != 3 or x.shape[-1] != features:
        raise LayerError(
            f"{name}: argument `{argument}` expected shape (batch, T, {features}), given {tuple(jnp.shape(x))}. "
            f"Hint: the layer was initialized for {features} features; an Embedding turns tokens into vectors."
        )


def _attention_mask(name: str, mask: Any, batch: int, t: int, s: int) -> Array | None:
    """A boolean mask ``(batch or 1, 1, T, S)`` from a ``(batch, S)`` or ``(batch, T, S)`` mask, or None."""
    if mask is None:
        return None
    shape = tuple(jnp.shape(mask))
    if shape not in ((batch, s), (batch, t, s), (1, s), (1, t, s)):
        raise LayerError(
            f"{name}: argument `mask` expected shape ({batch}, {s}) (padding of keys) or ({batch}, {t}, {s}), "
            f"given {shape}."
        )
    if jnp.result_type(mask) != jnp.bool_:
        if is_concrete(mask) and not np.isin(np.asarray(mask), (0, 1)).all():
            raise LayerError(
                f"{name}: argument `mask` expected booleans (True = may attend) or 0/1 values, given values "
                f"outside {{0, 1}}, e.g. an additive -inf mask. Hint: pass `additive_mask == 0`."
            )
        mask = mask != 0
    return mask.reshape((shape[0], 1, t if len(shape) == 3 else 1, s))  # (B, 1, T or 1, S)


# ---- MultiHeadAttention -------------------------------------------------------------------------------


def _projection_init(key: PRNGKey, in_features: int, out_shape: tuple[int, ...], dtype, use_bias: bool) -> Params:
    """Glorot-uniform ``w: (in_features, *out_shape)`` (fans of the flattened matrix), zero ``b: out_shape``."""
    w = initializers.glorot_uniform()(key, (in_features, math.prod(out_shape)), dtype)
    params = {"w": w.reshape((in_features, *out_shape))}
    if use_bias:
        params["b"] = jnp.zeros(out_shape, dtype)
    return params


def _check_attention_args(
    name: str, num_heads: Any, head_dim: Any, out_features: Any, dropout_rate: Any, implementation: Any,
    use_rope: bool,
) -> None:
    """``MultiHeadAttention``'s constructor arguments, checked when it is built (ValueError otherwise)."""
    for argument, value in (("num_heads", num_heads), ("head_dim", head_dim), ("out_features", out_features)):
        if (value is not None or argument == "num_heads") and (not isinstance(value, int) or value < 1):
            raise ValueError(f"{name}: argument `{argument}` expected a positive int, given {value!r}.")
    if not 0.0 <= dropout_rate < 1.0:
        raise ValueError(
            f"{name}: argument `dropout_rate` expected a drop probability in [0, 1), given {dropout_rate!r}."
        )
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(
            f"{name}: argument `implementation` expected one of {IMPLEMENTATIONS}, given {implementation!r}."
        )
    if use_rope and head_dim is not None and head_dim % 2:
        raise ValueError(f"{name}: argument `head_dim` expected an even size for use_rope=True, given {head_dim}.")


def _attend(
    q: Array, k: Array, v: Array, mask: Array | None, causal: bool, implementation: str | None,
    dropout_rate: float, dropout_key: PRNGKey | None,
) -> Array:
    """The heads ``(B, T, N, H)`` of projected ``q: (B, T, N, H)``, ``k, v: (B, S, N, H)``: JAX's
    ``dot_product_attention``, or ``reference_attention`` when asked for, with dropout, or in float64."""
    if implementation != "reference" and dropout_rate == 0.0 and q.dtype != jnp.float64:
        return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=causal, implementation=implementation)
    if causal:
        t, s = q.shape[1], k.shape[1]
        causal_mask = jnp.tril(jnp.ones((t, s), bool))[None, None]  # (1, 1, T, S)
        mask = causal_mask if mask is None else mask & causal_mask
    return reference_attention(q, k, v, mask, dropout_rate=dropout_rate, dropout_key=dropout_key)


def MultiHeadAttention(  # noqa: N802 - layer constructors are CamelCase, as in stax
    num_heads: int,
    head_dim: int | None = None,
    *,
    out_features: int | None = None,
    dropout_rate: float = 0.0,
    causal: bool = False,
    use_rope: bool = False,
    use_bias: bool = True,
    implementation: str | None = None,
) -> Layer:
    """Multi-head scaled dot-product attention (self- or cross-attention).

    For each head ``n``: ``softmax(q_n k_n^T / sqrt(head_dim)) v_n`` with ``q = x Wq``, ``k = c Wk``,
    ``v = c Wv`` (``c = x`` in self-attention, ``c = context`` in cross-attention); the heads are joined
    by ``Wo``.

    Params: ``{"query": {"w": (d_model, heads, head_dim), "b": (heads, head_dim)}, "key": {"w": (d_context,
    heads, head_dim), ...}, "value": {...}, "out": {"w": (heads, head_dim, out_features), "b": (out_features,)}}``.

    Args:
      num_heads: number of heads.
      head_dim: size of each head; default ``d_model // num_heads`` (``d_model`` must then divide evenly).
      out_features: output size; default ``d_model``.
      dropout_rate: probability of dropping an attention weight in training (needs ``key``).
      causal: position ``t`` attends only to positions ``<= t`` (self-attention only).
      use_rope: rotate queries and keys by their positions (``apply_rope``, positions ``0..T-1``); needs an
        even ``head_dim``. Without it attention ignores order: add positions to the input.
      use_bias: biases in the four projections.
      implementation: ``None``/``"xla"``/``"cudnn"`` are passed to ``jax.nn.dot_product_attention``;
        ``"reference"`` always uses ``reference_attention``.

    Returns:
      A ``Layer`` whose ``apply`` maps ``x: (batch, T, d_model)`` float, or a dict ``{"x", "context": (batch, S,
      d_context), "mask": (batch, S) or (batch, T, S) bool}`` (module docstring), to
      ``y: (batch, T, out_features)``. ``input_shape`` is ``(T, d_model)`` or the same dict of per-example
      shapes (``{"x": (T, d_model), "context": (S, d_context)}``).

    Raises:
      ValueError: (when built) ``num_heads``, ``head_dim`` or ``out_features`` is not a positive int,
        ``dropout_rate`` is outside ``[0, 1)``, an unknown ``implementation``, or an odd ``head_dim`` with
        ``use_rope``.
      LayerError: (at init) ``d_model`` not divisible by ``num_heads`` (without ``head_dim``), an odd derived
        head size with ``use_rope``, ``causal=True`` with a ``"context"``, shapes that are not ``(T, features)``;
        (at apply) wrong ranks, feature sizes, batch sizes, dict keys, mask shapes or non-0/1 mask values, or a
        missing ``key`` with dropout in training.
      LayerTypeError: (at apply) ``x`` or ``context`` is not floating point.

    Example:
      >>> attention = nnjax.MultiHeadAttention(2, causal=True)
      >>> params, state = attention.init(jax.random.key(0), (4, 8))  # T=4 tokens of d_model=8
      >>> params["query"]["w"].shape, params["out"]["w"].shape  # (d_model, heads, head_dim), (heads, head_dim, out)
      ((8, 2, 4), (2, 4, 8))
      >>> mask = nnjax.sequence_mask(jnp.array([4, 3]), 4)  # (batch, S): the second sequence has 3 tokens
      >>> y, _ = jax.jit(attention.apply)(params, state, {"x": jnp.ones((2, 4, 8)), "mask": mask})
      >>> y.shape
      (2, 4, 8)
    """
    name = f"MultiHeadAttention({num_heads})"
    _check_attention_args(name, num_heads, head_dim, out_features, dropout_rate, implementation, use_rope)
    allowed = ("x", "context", "mask")

    def init(key, input_shape: Shape, dtype=jnp.float32):
        shapes = _unpack(name, input_shape, allowed)
        _, d_model = _sequence_shape(name, "input_shape", shapes["x"])
        _, d_context = _sequence_shape(name, "input_shape['context']", shapes.get("context", shapes["x"]))
        if causal and "context" in shapes:
            raise LayerError(f"{name}: causal=True is for self-attention; given a 'context' for cross-attention.")
        if head_dim is None and d_model % num_heads:
            raise LayerError(
                f"{name}: the model width d_model (={d_model}) must be divisible by num_heads (={num_heads}). "
                f"Hint: change one of them, or pass head_dim explicitly."
            )
        size = head_dim or d_model // num_heads
        if use_rope and size % 2:
            raise LayerError(
                f"{name}: use_rope=True needs an even head_dim, given d_model {d_model} // {num_heads} heads = {size}."
            )
        q_key, k_key, v_key, o_key = jax.random.split(key, 4)
        heads = (num_heads, size)
        params = {
            "query": _projection_init(q_key, d_model, heads, dtype, use_bias),
            "key": _projection_init(k_key, d_context, heads, dtype, use_bias),
            "value": _projection_init(v_key, d_context, heads, dtype, use_bias),
        }
        out = _projection_init(o_key, num_heads * size, (out_features or d_model,), dtype, use_bias)
        params["out"] = {**out, "w": out["w"].reshape((num_heads, size, -1))}
        return params, {}

    def project(p, x):
        y = jnp.einsum("btd,dnh->btnh", x, p["w"])  # (B, T, N, H)
        return y + p["b"][None, None] if use_bias else y

    def apply(params, state, x, *, key=None, train=False):
        inputs = _unpack(name, x, allowed)
        queries = inputs["x"]
        _check_sequence(name, queries, "x", params["query"]["w"].shape[0])
        context = inputs.get("context", queries)
        if causal and "context" in inputs:
            raise LayerError(f"{name}: causal=True is for self-attention; given a 'context' for cross-attention.")
        _check_sequence(name, context, "x['context']", params["key"]["w"].shape[0])
        (batch, t, _), s = queries.shape, context.shape[1]
        if context.shape[0] != batch:
            raise LayerError(
                f"{name}: `x` and `context` expected the same batch size, given {batch} and {context.shape[0]}."
            )
        mask = _attention_mask(name, inputs.get("mask"), batch, t, s)  # (B, 1, T|1, S) or None
        dropout = train and dropout_rate > 0.0
        if dropout and key is None:
            raise LayerError(
                f"{name}: argument `key` is required when train=True with dropout_rate={dropout_rate}; given None. "
                f"Hint: apply(params, state, x, key=jax.random.key(seed), train=True)."
            )

        q, k, v = project(params["query"], queries), project(params["key"], context), project(params["value"], context)
        if use_rope:
            q, k = apply_rope(q, jnp.arange(t)), apply_rope(k, jnp.arange(s))
        heads = _attend(q, k, v, mask, causal, implementation, dropout_rate if dropout else 0.0, key)
        y = jnp.einsum("btnh,nhd->btd", heads, params["out"]["w"])  # (B, T, out_features)
        return (y + params["out"]["b"][None, None] if use_bias else y), state

    return Layer(init, apply, name)


# ---- Transformer blocks -------------------------------------------------------------------------------


def _layer_norm_init(features: int, dtype) -> Params:
    return {"scale": jnp.ones((features,), dtype), "bias": jnp.zeros((features,), dtype)}


def _layer_norm(params: Params, x: Array, eps: float = 1e-6) -> Array:
    """Normalizes the last axis to zero mean and unit variance, then scales and shifts."""
    mean = jnp.mean(x, axis=-1, keepdims=True)
    variance = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(variance + eps) * params["scale"] + params["bias"]


def _mlp_init(key: PRNGKey, features: int, mlp_dim: int, dtype) -> Params:
    hidden_key, out_key = jax.random.split(key)
    return {
        "hidden": _projection_init(hidden_key, features, (mlp_dim,), dtype, True),
        "out": _projection_init(out_key, mlp_dim, (features,), dtype, True),
    }


def _mlp(params: Params, x: Array) -> Array:
    h = jax.nn.gelu(x @ params["hidden"]["w"] + params["hidden"]["b"])
    return h @ params["out"]["w"] + params["out"]["b"]


def _dropout(x: Array, rate: float, key: PRNGKey | None, train: bool) -> Array:
    if not train or rate == 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


def _check_block_args(name: str, num_heads: int, mlp_dim: int, dropout_rate: float) -> None:
    for argument, value in (("num_heads", num_heads), ("mlp_dim", mlp_dim)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: argument `{argument}` expected a positive int, given {value!r}.")
    if not 0.0 <= dropout_rate < 1.0:
        raise ValueError(
            f"{name}: argument `dropout_rate` expected a drop probability in [0, 1), given {dropout_rate!r}."
        )


def _block_keys(name: str, key: PRNGKey | None, train: bool, dropout_rate: float, n: int) -> list[PRNGKey | None]:
    if not train or dropout_rate == 0.0:
        return [None] * n
    if key is None:
        raise LayerError(
            f"{name}: argument `key` is required when train=True with dropout_rate={dropout_rate}; given None. "
            f"Hint: apply(params, state, x, key=jax.random.key(seed), train=True), or train=False to evaluate."
        )
    return list(jax.random.split(key, n))


def _run(name: str, part: str, layer: Layer, params: Params, x: Any, key: PRNGKey | None, train: bool) -> Array:
    try:
        return layer.apply(params, {}, x, key=key, train=train)[0]
    except LOCATED_ERRORS as error:
        raise with_location(error, f"{name}[{part}]") from None


def _init(name: str, part: str, layer: Layer, key: PRNGKey, input_shape: Any, dtype) -> Params:
    try:
        return layer.init(key, input_shape, dtype)[0]
    except LOCATED_ERRORS as error:
        raise with_location(error, f"{name}[{part}]") from None


def _with_x(x: Any, y: Array) -> Any:
    """The block's output: ``y`` for an array input, else the input dict with ``"x"`` replaced by ``y``."""
    return {**x, "x": y} if isinstance(x, dict) else y


def TransformerEncoderBlock(  # noqa: N802
    num_heads: int,
    mlp_dim: int,
    dropout_rate: float = 0.0,
    *,
    head_dim: int | None = None,
    use_rope: bool = False,
    implementation: str | None = None,
    epsilon: float = 1e-6,
) -> Layer:
    """A pre-norm Transformer encoder block: bidirectional self-attention, then an MLP, each residual.

        h = x + Dropout(MultiHeadAttention(LayerNorm(x), mask))
        y = h + Dropout(Dense(d_model)(gelu(Dense(mlp_dim)(LayerNorm(h)))))

    ``dropout_rate`` applies to the attention weights and to both residual branches (training needs ``key``).

    Params: ``{"attention_norm": {"scale", "bias"}, "attention": <MultiHeadAttention>, "mlp_norm": {...},
    "mlp": {"hidden": {"w": (d_model, mlp_dim), "b"}, "out": {"w": (mlp_dim, d_model), "b"}}}``.

    Shapes: ``x: (batch, T, d_model)`` or ``{"x": ..., "mask": (batch, T) or (batch, T, T) bool}``; the output
    has the same structure (the dict with ``"x"`` replaced), so blocks chain in ``serial``.

    Args:
      num_heads: attention heads.
      mlp_dim: hidden size of the MLP.
      dropout_rate: drop probability of the attention weights and of the residual branches, in ``[0, 1)``.
      head_dim: size of each head; default ``d_model // num_heads``.
      use_rope: rotary position embeddings in the attention (see ``MultiHeadAttention``).
      implementation: the attention implementation (see ``MultiHeadAttention``).
      epsilon: the LayerNorms' epsilon (added to the variance).

    Returns:
      A ``Layer`` whose ``apply`` maps ``x: (batch, T, d_model)`` float to ``(batch, T, d_model)``, or the dict
      ``{"x", "mask"}`` to the same dict with a new ``"x"``; ``input_shape`` is ``(T, d_model)`` (or
      ``{"x": (T, d_model), ...}``).

    Raises:
      ValueError: (when built) ``num_heads`` or ``mlp_dim`` not a positive int, ``dropout_rate`` outside
        ``[0, 1)``, or a bad ``head_dim``/``implementation`` (as ``MultiHeadAttention``).
      LayerError: (at init) ``input_shape`` not ``(T, d_model)`` or ``d_model`` not divisible by ``num_heads``;
        (at apply) a wrong shape, dict key or mask, or no ``key`` in training with dropout. Errors of the
        attention come prefixed with ``TransformerEncoderBlock(...)[attention]``.
      LayerTypeError: (at apply) ``x`` is not floating point.

    Example:
      >>> encoder = nnjax.serial(nnjax.TransformerEncoderBlock(2, 8), nnjax.TransformerEncoderBlock(2, 8))
      >>> params, state = encoder.init(jax.random.key(0), (4, 8))  # T=4 tokens of d_model=8
      >>> sorted(params["transformer_encoder_block_0"])
      ['attention', 'attention_norm', 'mlp', 'mlp_norm']
      >>> jax.jit(encoder.apply)(params, state, jnp.ones((2, 4, 8)))[0].shape
      (2, 4, 8)
    """
    name = f"TransformerEncoderBlock({num_heads}, {mlp_dim})"
    _check_block_args(name, num_heads, mlp_dim, dropout_rate)
    attention = MultiHeadAttention(
        num_heads, head_dim, dropout_rate=dropout_rate, use_rope=use_rope, implementation=implementation
    )
    allowed = ("x", "mask")

    def init(key, input_shape, dtype=jnp.float32):
        shapes = _unpack(name, input_shape, allowed)
        _, d_model = _sequence_shape(name, "input_shape", shapes["x"])
        attention_key, mlp_key = jax.random.split(key)
        params = {
            "attention_norm": _layer_norm_init(d_model, dtype),
            "attention": _init(name, "attention", attention, attention_key, shapes["x"], dtype),
            "mlp_norm": _layer_norm_init(d_model, dtype),
            "mlp": _mlp_init(mlp_key, d_model, mlp_dim, dtype),
        }
        return params, {}

    def apply(params, state, x, *, key=None, train=False):
        inputs = _unpack(name, x, allowed)
        attention_key, drop_1, drop_2 = _block_keys(name, key, train, dropout_rate, 3)
        h = inputs["x"]
        _check_sequence(name, h, "x", params["mlp_norm"]["scale"].shape[0])
        a = _run(
            name,
            "attention",
            attention,
            params["attention"],
            {**inputs, "x": _layer_norm(params["attention_norm"], h, epsilon)},
            attention_key,
            train,
        )
        h = h + _dropout(a, dropout_rate, drop_1, train)
        h = h + _dropout(_mlp(params["mlp"], _layer_norm(params["mlp_norm"], h, epsilon)), dropout_rate, drop_2, train)
        return _with_x(x, h), state

    return Layer(init, apply, name)


def TransformerDecoderBlock(  # noqa: N802
    num_heads: int,
    mlp_dim: int,
    dropout_rate: float = 0.0,
    *,
    cross_attention: bool = False,
    head_dim: int | None = None,
    use_rope: bool = False,
    implementation: str | None = None,
    epsilon: float = 1e-6,
) -> Layer:
    """A pre-norm Transformer decoder block: causal self-attention, [cross-attention,] MLP, each residual.

        h = x + Dropout(MultiHeadAttention(causal=True)(LayerNorm(x), mask))
        h = h + Dropout(MultiHeadAttention(LayerNorm(h), context, context_mask))   # cross_attention=True
        y = h + Dropout(MLP(LayerNorm(h)))

    Without cross-attention this is the block of a decoder-only (GPT-style) language model.

    Params: ``{"self_attention_norm", "self_attention", ["cross_attention_norm", "cross_attention",]
    "mlp_norm", "mlp"}`` (as ``TransformerEncoderBlock``).

    Shapes: ``x: (batch, T, d_model)`` or a dict ``{"x", "mask": (batch, T) or (batch, T, T),
    "context": (batch, S, d_context), "context_mask": (batch, S) or (batch, T, S)}``; ``"context"`` is
    required exactly when ``cross_attention=True``. The output has the input's structure.

    Args:
      num_heads: attention heads.
      mlp_dim: hidden size of the MLP.
      cross_attention: add cross-attention to ``x["context"]`` (an encoder's output) after self-attention.
      dropout_rate: drop probability of the attention weights and of the residual branches, in ``[0, 1)``.
      head_dim: size of each head; default ``d_model // num_heads``.
      use_rope: rotary position embeddings in the attention (see ``MultiHeadAttention``).
      implementation: the attention implementation (see ``MultiHeadAttention``).
      epsilon: the LayerNorms' epsilon (added to the variance).

    Returns:
      A ``Layer`` whose ``apply`` maps ``x: (batch, T, d_model)`` float, or the dict above, to the same
      structure with ``"x"`` replaced by the block's ``(batch, T, d_model)`` output; ``input_shape`` is
      ``(T, d_model)`` or ``{"x": (T, d_model), "context": (S, d_context)}``.

    Raises:
      ValueError: (when built) bad ``num_heads``, ``mlp_dim``, ``dropout_rate``, ``head_dim`` or
        ``implementation``, as ``TransformerEncoderBlock``.
      LayerError: (at init or apply) a ``"context"`` missing with ``cross_attention=True`` or given without it,
        wrong shapes, dict keys or masks, or no ``key`` in training with dropout. Errors of an attention come
        prefixed with ``TransformerDecoderBlock(...)[self_attention]`` or ``[cross_attention]``.
      LayerTypeError: (at apply) ``x`` or the context is not floating point.

    Example:
      >>> block = nnjax.TransformerDecoderBlock(2, 8, cross_attention=True)
      >>> params, state = block.init(jax.random.key(0), {"x": (4, 8), "context": (3, 8)})
      >>> sorted(params)
      ['cross_attention', 'cross_attention_norm', 'mlp', 'mlp_norm', 'self_attention', 'self_attention_norm']
      >>> out, _ = jax.jit(block.apply)(params, state, {"x": jnp.ones((2, 4, 8)), "context": jnp.ones((2, 3, 8))})
      >>> sorted(out), out["x"].shape
      (['context', 'x'], (2, 4, 8))
    """
    name = f"TransformerDecoderBlock({num_heads}, {mlp_dim})"
    _check_block_args(name, num_heads, mlp_dim, dropout_rate)
    common = dict(dropout_rate=dropout_rate, use_rope=use_rope, implementation=implementation)
    self_attention = MultiHeadAttention(num_heads, head_dim, causal=True, **common)
    cross = MultiHeadAttention(num_heads, head_dim, **common)
    allowed = ("x", "mask", "context", "context_mask")

    def check_context(inputs, argument):
        if cross_attention and "context" not in inputs:
            raise LayerError(
                f"{name}: cross_attention=True expects argument `{argument}` to be a dict with a 'context', given none."
            )
        if not cross_attention and ("context" in inputs or "context_mask" in inputs):
            raise LayerError(
                f"{name}: argument `{argument}` has a 'context' but the block was built without cross-attention. "
                f"Hint: TransformerDecoderBlock(..., cross_attention=True)."
            )

    def init(key, input_shape, dtype=jnp.float32):
        shapes = _unpack(name, input_shape, allowed)
        check_context(shapes, "input_shape")
        _, d_model = _sequence_shape(name, "input_shape", shapes["x"])
        self_key, cross_key, mlp_key = jax.random.split(key, 3)
        params = {
            "self_attention_norm": _layer_norm_init(d_model, dtype),
            "self_attention": _init(name, "self_attention", self_attention, self_key, shapes["x"], dtype),
        }
        if cross_attention:
            params["cross_attention_norm"] = _layer_norm_init(d_model, dtype)
            cross_shape = {"x": shapes["x"], "context": shapes["context"]}
            params["cross_attention"] = _init(name, "cross_attention", cross, cross_key, cross_shape, dtype)
        params["mlp_norm"] = _layer_norm_init(d_model, dtype)
        params["mlp"] = _mlp_init(mlp_key, d_model, mlp_dim, dtype)
        return params, {}

    def apply(params, state, x, *, key=None, train=False):
        inputs = _unpack(name, x, allowed)
        check_context(inputs, "x")
        keys = _block_keys(name, key, train, dropout_rate, 5)
        h = inputs["x"]
        _check_sequence(name, h, "x", params["mlp_norm"]["scale"].shape[0])
        self_inputs = {"x": _layer_norm(params["self_attention_norm"], h, epsilon)}
        if "mask" in inputs:
            self_inputs["mask"] = inputs["mask"]
        a = _run(name, "self_attention", self_attention, params["self_attention"], self_inputs, keys[0], train)
        h = h + _dropout(a, dropout_rate, keys[1], train)
        if cross_attention:
            cross_inputs = {"x": _layer_norm(params["cross_attention_norm"], h, epsilon), "context": inputs["context"]}
            if "context_mask" in inputs:
                cross_inputs["mask"] = inputs["context_mask"]
            a = _run(name, "cross_attention", cross, params["cross_attention"], cross_inputs, keys[2], train)
            h = h + _dropout(a, dropout_rate, keys[3], train)
        h = h + _dropout(_mlp(params["mlp"], _layer_norm(params["mlp_norm"], h, epsilon)), dropout_rate, keys[4], train)
        return _with_x(x, h), state

    return Layer(init, apply, name)
