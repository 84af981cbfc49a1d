"""Deep models: ``stack`` (n copies of a block, run by ``jax.lax.scan``) and ``remat`` (``jax.checkpoint``).

``serial(block_0, ..., block_{n-1})`` traces every block: XLA compiles ``n`` copies of the same program, so
compile time and program size grow with depth. ``stack(block, n)`` keeps the ``n`` copies' params (and
state) in ONE pytree whose arrays have a leading axis of size ``n`` and runs the block once per copy in a
``lax.scan``: the block is traced and compiled once, whatever ``n``.

    params, state = stack(block, n).init(key, input_shape)   # {"layers": block params, each array (n, ...)}
    y, new_state  = stack(block, n).apply(params, state, x, key=key, train=True)   # = serial of the n copies

``remat(layer, policy)`` recomputes a layer's activations in the backward pass instead of keeping them
(``jax.checkpoint``): less memory, more compute. ``stack(block, n, remat=policy)`` remats each copy.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from nnjax._src.core import LOCATED_ERRORS, Layer, input_spec, output_spec, spec_shape
from nnjax._src.errors import LayerError, with_location
from nnjax._src.key_order import in_key_order, key_order

STACKED = "layers"  # the key of a stack's params and state: ``{"layers": <block's, each with a leading n axis>}``

POLICIES: dict[str, Callable[..., Any] | None] = {
    "everything_saveable": jax.checkpoint_policies.everything_saveable,
    "nothing_saveable": jax.checkpoint_policies.nothing_saveable,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}
"""The named rematerialization policies of ``remat`` (and ``stack(..., remat=...)``), by what each KEEPS for the
backward pass: ``"nothing_saveable"`` keeps only the block's inputs and recomputes everything (least memory,
one more forward pass); ``"dots_saveable"`` keeps the matmul outputs and recomputes the cheap elementwise ops;
``"dots_with_no_batch_dims_saveable"`` keeps only matmuls without batch dimensions (the projections, not the
attention scores); ``"everything_saveable"`` keeps everything (no saving, no recomputation)."""


def _policy(where: str, policy: Any) -> Callable[..., Any] | None:
    """A ``jax.checkpoint`` policy from a name in ``POLICIES``, a policy function, or ``None`` (nothing saved)."""
    if policy is None or (callable(policy) and not isinstance(policy, str)):
        return policy
    if isinstance(policy, str) and policy in POLICIES:
        return POLICIES[policy]
    raise ValueError(
        f"{where}: argument `policy` expected one of {sorted(POLICIES)}, a `jax.checkpoint_policies` policy or None, "
        f"given {policy!r}."
    )


class Stacked(Layer):
    """The ``Layer`` that ``stack`` returns: a plain layer plus the ``block`` it repeats and the count ``n``.

    Attributes:
      block: the repeated layer. n: the number of copies. init, apply, name, input_dtype: as in ``Layer``.

    Example:
      >>> layer = nnjax.stack(nnjax.Dense(4), 3)
      >>> isinstance(layer, nnjax.Layer), layer.n, layer.block.name
      (True, 3, 'Dense(4)')
    """

    @property
    def block(self) -> Layer:
        """The repeated layer."""
        return self.__dict__["block"]

    @property
    def n(self) -> int:
        """The number of copies."""
        return self.__dict__["n"]


def remat(layer: Layer, policy: Any = "nothing_saveable", *, prevent_cse: bool = True) -> Layer:
    """``layer`` rematerialized: its activations are recomputed in the backward pass instead of stored.

    ``apply`` runs under ``jax.checkpoint`` with the given policy; params, state, outputs and gradients are
    exactly ``layer``'s (the params pytree is the same: adding or removing ``remat`` keeps checkpoints valid).
    It pays one extra forward pass of ``layer`` per backward pass for the memory of the activations the
    policy does not keep.

    Args:
      layer: any layer.
      policy: what to keep for the backward pass: a name (``"nothing_saveable"``, the default: keep only the
        inputs; ``"dots_saveable"``: keep matmul outputs; ``"dots_with_no_batch_dims_saveable"``: keep the
        projections, not the attention scores; ``"everything_saveable"``: keep everything, as without remat),
        any ``jax.checkpoint_policies`` policy, or ``None`` (jax's default, which keeps nothing either).
      prevent_cse: passed to ``jax.checkpoint``; ``False`` is safe (and a little faster) inside ``lax.scan``.

    Returns:
      A ``Layer`` named ``"Remat(<layer's name>)"`` with ``layer``'s params, state and ``input_dtype``.

    Raises:
      TypeError: ``layer`` is not a ``Layer``.
      ValueError: ``policy`` is an unknown name.

    Example:
      >>> mlp = nnjax.serial(nnjax.Dense(8), nnjax.Gelu(), nnjax.Dense(4))
      >>> block = nnjax.remat(mlp, "dots_saveable")
      >>> params, state = block.init(jax.random.key(0), (4,))
      >>> loss = lambda p: block.apply(p, state, jnp.ones((2, 4)))[0].sum()
      >>> sorted(jax.grad(loss)(params)) == sorted(params)   # the same params as mlp's
      True
    """
    if not isinstance(layer, Layer):
        raise TypeError(f"remat: argument `layer` expected a Layer, given {type(layer).__name__}.")
    checkpoint_policy = _policy("remat", policy)
    name = f"Remat({layer.name})"

    def apply(params, state, x, *, key=None, train=False):
        def run(params, state, x, key):
            return layer.apply(params, state, x, key=key, train=train)

        try:
            return jax.checkpoint(run, policy=checkpoint_policy, prevent_cse=prevent_cse)(params, state, x, key)
        except LOCATED_ERRORS as error:
            raise with_location(error, name) from None

    return Layer(layer.init, apply, name, layer.input_dtype, layer.input_range)


_remat = remat  # (``stack``'s argument ``remat`` shadows the function)


def stack(block: Layer, n: int, *, remat: Any = None, unroll: int | bool = 1) -> Stacked:
    """``n`` copies of ``block`` applied one after the other, compiled once: a ``jax.lax.scan`` over stacked params.

    Computes what ``serial(copy_0, ..., copy_{n-1})`` computes, with each copy's params at index ``i`` of the
    leading axis. ``init`` draws the ``n`` copies in one vmapped ``block.init`` with independent keys
    (``jax.random.split(key, n)``); ``apply`` splits its ``key`` (when given) the same way, one key per copy
    (Dropout in the block draws a different mask per copy); state (BatchNorm statistics) is stacked and
    updated per copy. The block must keep its input's shape (as a residual block does).

    Params: ``{"layers": <block's params, every array with a leading axis of size n>}``; state likewise
    (``jax.tree.map(lambda a: a[i], params["layers"])`` is copy ``i``'s params). ``nnjax.sharding``'s rules
    never split an axis under a ``"layers"`` key, and ``nnjax.interop`` pairs copy ``i`` with torch's
    ``<prefix>.i.`` modules (an ``nn.ModuleList``).

    Args:
      block: the repeated layer; it must keep its input's shape and dtype.
      n: the number of copies, a positive int.
      remat: ``None`` (no rematerialization) or a ``remat`` policy (e.g. ``"nothing_saveable"``): each copy
        is rematerialized, so the backward pass keeps only each copy's input (``n`` activations, not
        ``n`` times the block's).
      unroll: passed to ``lax.scan``: copies per loop iteration (``True``: all; faster steps on small
        blocks, longer compiles).

    Returns:
      A ``Stacked`` layer (``.block``, ``.n``) named ``"Stack(n, <block's name>)"``, mapping
      ``x: (batch, *input_shape)`` to the same shape.

    Raises:
      TypeError: ``block`` is not a ``Layer``; ``n`` or ``unroll`` not an int.
      ValueError: ``n`` is not positive, or ``remat`` is an unknown policy name.
      LayerError: (at init or apply) the block changes its input's shape; errors of the block come prefixed
        with ``stack``.

    Example:
      >>> block = nnjax.residual(nnjax.LayerNorm(), nnjax.Dense(16), nnjax.Gelu(), nnjax.Dense(8))
      >>> deep = nnjax.stack(block, 12, remat="dots_saveable")
      >>> params, state = deep.init(jax.random.key(0), (8,))
      >>> params["layers"]["body"]["dense_1"]["w"].shape   # 12 copies of (8, 16)
      (12, 8, 16)
      >>> deep.apply(params, state, jnp.ones((2, 8)))[0].shape
      (2, 8)
    """
    if not isinstance(block, Layer):
        hint = " Did you forget to call it, e.g. `Dense(8)`?" if callable(block) else ""
        raise TypeError(f"stack: argument `block` expected a Layer, given {type(block).__name__}.{hint}")
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"stack: argument `n` expected a positive int, given {type(n).__name__} {n!r}.")
    if n < 1:
        raise ValueError(f"stack: argument `n` expected a positive int, given {n}.")
    if not isinstance(unroll, (int, bool)):
        raise TypeError(f"stack: argument `unroll` expected an int or a bool, given {type(unroll).__name__}.")
    _policy("stack", remat)
    name = f"Stack({n}, {block.name})"
    step = block if remat is None else _remat(block, remat, prevent_cse=False)

    def check_shape(out: Any, expected: Any, where: str) -> None:
        if out != expected:
            raise LayerError(
                f"{name}: the block must keep its input's shape to be repeated; {where} {expected}, block output "
                f"{out}. Hint: a residual block keeps it (nnjax.residual), or make the block's last layer output "
                f"{expected[-1:] if isinstance(expected, tuple) else expected} features."
            )

    def init(key, input_shape, dtype=jnp.float32):
        try:
            order = {}

            def one(k):
                tree = block.init(k, input_shape, dtype)
                order["tree"] = key_order(tree)  # the block's forward order of named parts, for interop and repr
                return tree

            if key is None:  # layers without random init (norms) accept None: the n copies are equal
                tree = jax.tree.map(lambda a: jnp.broadcast_to(a, (n, *jnp.shape(a))), one(None))
            else:  # called on its own, a Layer's init is one compiled program (compile.init_in_one_program)
                tree = jax.vmap(one)(jax.random.split(key, n))
            params, state = in_key_order(tree, order["tree"])
            # one copy's shapes, for the shape check (slicing copy 0 eagerly compiled two programs per leaf shape)
            first_p, first_s = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), (params, state))
            spec = input_spec(block, input_shape, dtype)
            out = output_spec(block, first_p, first_s, spec)
        except LOCATED_ERRORS as error:
            raise with_location(error, "stack") from None
        check_shape(spec_shape(out), spec_shape(spec), "input_shape")
        return {STACKED: params}, {STACKED: state}

    def apply(params, state, x, *, key=None, train=False):
        layers, layer_state = params[STACKED], state[STACKED]
        keys = None if key is None else jax.random.split(key, n)

        def body(h, copy):
            p, s, k = copy
            y, new_s = step.apply(p, s, h, key=k, train=train)
            return y, new_s

        def first(xs):
            return jax.tree.map(lambda a: a[0], xs)

        try:
            xs = (layers, layer_state, keys)
            out = jax.eval_shape(lambda h, xs: body(h, first(xs))[0], x, xs)  # one copy, traced abstractly
            check_shape(tuple(out.shape), tuple(jnp.shape(x)), "x")
            if out.dtype != jnp.result_type(x):  # (e.g. float32 in, bfloat16 out): copy 0 first, the rest scanned
                x, s_0 = body(x, first(xs))
                rest = jax.tree.map(lambda a: a[1:], xs)
                y, s_rest = lax.scan(body, x, rest, unroll=unroll)
                new_state = jax.tree.map(lambda a, b: jnp.concatenate([a[None], b]), s_0, s_rest)
            else:
                y, new_state = lax.scan(body, x, xs, unroll=unroll)
        except LOCATED_ERRORS as error:
            raise with_location(error, "stack") from None
        return y, {STACKED: new_state}

    layer = Stacked(init, apply, name, block.input_dtype, block.input_range)
    layer.__dict__.update(block=block, n=n)
    return layer
