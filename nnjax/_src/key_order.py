"""The insertion order of a pytree's dict keys, read while tracing and restored after.

JAX flattens a dict by its sorted keys, so whatever a transformation returns (``jax.jit``, ``eval_shape``,
``tree.map``) holds its dicts in sorted order. A layer's ``init`` builds them in forward order (the named
parts of ``named(encoder=..., decoder=...)``, a unit's ``w`` before its ``b``): what users print and what
``interop`` pairs with a PyTorch ``state_dict`` in order. ``key_order`` notes that order; ``in_key_order``
puts it back.
"""

from __future__ import annotations

from typing import Any


def key_order(tree: Any) -> Any:
    """The dict structure of ``tree``: each dict's keys in insertion order, ``None`` for every other leaf.

    Example:
      >>> key_order(({"w": 1, "b": {"x": 2}}, [3]))
      ({'w': None, 'b': {'x': None}}, [None])
    """
    if isinstance(tree, (tuple, list)):
        return _rebuilt(tree, [key_order(t) for t in tree])
    return {k: key_order(v) for k, v in tree.items()} if isinstance(tree, dict) else None


def in_key_order(tree: Any, order: Any) -> Any:
    """``tree`` with the dict key order of ``order`` (from ``key_order``): its keys first, in that order,
    then any key ``order`` does not have. Other nodes and leaves are kept as they are.

    Example:
      >>> in_key_order({"b": 1, "w": 2}, {"w": None, "b": None})
      {'w': 2, 'b': 1}
    """
    if isinstance(tree, (tuple, list)) and isinstance(order, (tuple, list)) and len(tree) == len(order):
        return _rebuilt(tree, [in_key_order(t, o) for t, o in zip(tree, order, strict=True)])
    if isinstance(tree, dict) and isinstance(order, dict):
        keys = [k for k in order if k in tree] + [k for k in tree if k not in order]
        return {k: in_key_order(tree[k], order.get(k)) for k in keys}
    return tree


def _rebuilt(node: tuple | list, children: list[Any]) -> tuple | list:
    """A tuple, list or NamedTuple like ``node`` holding ``children``."""
    return type(node)(*children) if hasattr(node, "_fields") else type(node)(children)
