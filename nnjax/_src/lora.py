"""Low-rank adapters (LoRA): a layer's weight matrices plus a trainable low-rank change.

    W_eff = W + (alpha / rank) * (A @ B)            # A: (fan_in, rank), B: (rank, fan_out), B starts at zero

``nnjax.lora(layer, rank)`` wraps any layer whose params hold weight matrices ``"w"`` (``Dense``, ``Conv``,
the query/key/value/out projections of ``MultiHeadAttention``, whole transformer blocks); the wrapped
layer keeps the base layer's kind, so it sits at the same key in ``serial`` and ``nnjax.merge_lora``
gives back params the unwrapped model takes.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from nnjax._src.core import Layer
from nnjax._src.errors import LayerError
from nnjax._src.types import Params

ADAPTER_KEYS = ("lora_a", "lora_b", "lora_scale")
PROJECTIONS = ("query", "key", "value")  # attention projections: w is (d_model, heads, head_dim)


def fan_in_axes(path: tuple[str, ...], w: Any) -> int:
    """How many leading axes of ``w`` are its inputs: 1 for an attention query/key/value projection
    ``(d_model, heads, head_dim)``, else all but the last (Dense ``(in, out)``, Conv ``(kh, kw, cin, cout)``,
    the attention out projection ``(heads, head_dim, out)``)."""
    if w.ndim == 3 and path and path[-1] in PROJECTIONS:
        return 1
    return w.ndim - 1


def lora(layer: Layer, rank: int, alpha: float | None = None, *, train_base: bool = False) -> Layer:
    """``layer`` with a low-rank adapter on each of its weight matrices (LoRA, Hu et al. 2021).

    Every ``"w"`` of two or more axes in ``layer``'s params (at any depth) gains, beside it, ``"lora_a"``
    ``(fan_in, rank)`` (normal, standard deviation ``1/sqrt(fan_in)``), ``"lora_b"`` ``(rank, fan_out)``
    (zeros, so the wrapped layer starts equal to the base) and ``"lora_scale"`` (``alpha / rank``, a
    constant: its gradient is stopped). ``apply`` runs the base layer with ``w + lora_scale * (lora_a @
    lora_b)`` (reshaped to ``w``'s shape). The base params are initialized as ``layer.init`` would with
    the same key.

    By default only the adapters train: the base params pass through ``jax.lax.stop_gradient``, so their
    gradients are zero and not computed. (An optimizer with weight decay still decays them; freeze them
    too: ``nnjax.freeze(opt, params, lambda path: "lora_" not in path)``.)

    Args:
      layer: the layer to adapt (``Dense``, ``Conv``, ``MultiHeadAttention``, a transformer block, a
        ``serial`` of them).
      rank: the adapters' rank (a positive int, usually much smaller than the matrices' sides).
      alpha: the adapters' scale numerator: the change is ``(alpha / rank) * A @ B`` (default ``rank``: a
        scale of 1).
      train_base: also train the base params (their gradients are then computed).

    Returns:
      A ``Layer`` of the same kind as ``layer`` (its name is ``layer``'s plus ``lora_rank``, e.g.
      ``"Dense(10, lora_rank=4)"``, so it keeps its key in ``serial``), taking the same inputs.

    Raises:
      ValueError: ``rank`` is not a positive int.
      LayerError: (at init) ``layer`` has no weight matrix to adapt.

    Example:
      >>> base = nnjax.Dense(3)
      >>> adapted = nnjax.lora(base, rank=2)
      >>> params, state = adapted.init(jax.random.key(0), (5,))
      >>> jax.tree.map(jnp.shape, params)
      {'b': (3,), 'lora_a': (5, 2), 'lora_b': (2, 3), 'lora_scale': (), 'w': (5, 3)}
      >>> x = jnp.ones((4, 5))
      >>> bool(jnp.allclose(adapted.apply(params, state, x)[0], base.apply(nnjax.merge_lora(params), {}, x)[0]))
      True
    """
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"lora: argument `rank` expected a positive int, given {rank!r}.")
    scale = float(rank if alpha is None else alpha) / rank
    base_name, paren, args = layer.name.partition("(")
    name = f"{base_name}({args[:-1]}, lora_rank={rank})" if paren and args[:-1] else f"{base_name}(lora_rank={rank})"

    def add_adapters(key, params, path=()):
        if not isinstance(params, dict):
            return params, 0
        out, count = {}, 0
        for k, v in params.items():
            out[k], n = add_adapters(jax.random.fold_in(key, len(out)), v, (*path, k))
            count += n
        w = params.get("w")
        if w is not None and hasattr(w, "ndim") and w.ndim >= 2:
            split = fan_in_axes(path, w)
            fan_in, fan_out = math.prod(w.shape[:split]), math.prod(w.shape[split:])
            a_key = jax.random.fold_in(key, 1_000_003)
            out["lora_a"] = jax.random.normal(a_key, (fan_in, rank), w.dtype) / jnp.sqrt(fan_in).astype(w.dtype)
            out["lora_b"] = jnp.zeros((rank, fan_out), w.dtype)
            out["lora_scale"] = jnp.asarray(scale, w.dtype)
            count += 1
        return out, count

    def init(key, input_shape, dtype=jnp.float32):
        params, state = layer.init(key, input_shape, dtype)
        params, count = add_adapters(jax.random.fold_in(key, 0x10A), params)
        if count == 0:
            raise LayerError(
                f"lora: {layer.name} has no weight matrix `w` (of two or more axes) to adapt; its params are "
                f"{jax.tree.map(jnp.shape, params)}. Hint: wrap a Dense, Conv or attention layer."
            )
        return params, state

    def apply(params, state, x, *, key=None, train=False):
        return layer.apply(merged(params, stop_base=not train_base), state, x, key=key, train=train)

    return Layer(init, apply, name, layer.input_dtype, layer.input_range)


def merged(params: Params, *, stop_base: bool = False, path: tuple[str, ...] = ()) -> Params:
    """``params`` with each adapter folded into its ``w`` (``w + scale * A @ B``) and the adapter keys
    dropped; ``stop_base`` stops the gradient of every base leaf (the adapters keep theirs)."""
    if not isinstance(params, dict):
        return jax.lax.stop_gradient(params) if stop_base else params
    out = {k: merged(v, stop_base=stop_base, path=(*path, k)) for k, v in params.items() if k not in ADAPTER_KEYS}
    present = [k for k in ADAPTER_KEYS if k in params]
    if present and (len(present) < len(ADAPTER_KEYS) or "w" not in params):
        where = "/".join(path) or "the top level"
        raise ValueError(
            f"merge_lora: at {where}, expected `w` with all of {list(ADAPTER_KEYS)}, given keys {sorted(params)}."
        )
    if present:
        w = out["w"]
        delta = jax.lax.stop_gradient(params["lora_scale"]) * (params["lora_a"] @ params["lora_b"])
        out["w"] = w + delta.reshape(w.shape).astype(w.dtype)
    return out


def merge_lora(params: Params) -> Params:
    """Folds LoRA adapters into plain weights: the params the unwrapped model takes.

    Each ``{"w", "lora_a", "lora_b", "lora_scale", ...}`` becomes ``{"w": w + lora_scale * (lora_a @ lora_b)
    (reshaped to w's shape), ...}``; everything else is kept as it is. The result fits the model built
    without ``nnjax.lora`` (same keys, shapes, dtypes), so ``nnjax.interop.to_torch_state_dict`` and
    checkpoints take it.

    Args:
      params: params of a model holding ``nnjax.lora`` layers (or none: then returned unchanged).

    Returns:
      The merged params (new arrays; ``params`` is not changed).

    Raises:
      ValueError: a dict holds some adapter keys but not all of them, or no ``w``.

    Example:
      >>> model = nnjax.serial(nnjax.lora(nnjax.Dense(4), rank=2), nnjax.Relu(), nnjax.Dense(1))
      >>> params, _ = model.init(jax.random.key(0), (3,))
      >>> sorted(params["dense_0"]), sorted(nnjax.merge_lora(params)["dense_0"])
      (['b', 'lora_a', 'lora_b', 'lora_scale', 'w'], ['b', 'w'])
    """
    return merged(params)
