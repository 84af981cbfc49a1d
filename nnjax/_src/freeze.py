"""Freezing parameters by path: an optimizer that leaves them alone, and a train step that skips their gradients.

    optimizer = nnjax.freeze(optax.adam(1e-3), params, "backbone/*")     # or a predicate on the path

A parameter's path joins its params keys with ``/`` (``"backbone/dense_0/w"``), as ``nnjax.summary`` shows
them. The result is an ``optax.multi_transform`` that sends frozen leaves to ``optax.set_to_zero()`` and the
rest to the given optimizer; it also carries which paths are frozen, and the train step (``make_train_step``,
``fit``, ``fit_many``, ``fit_stream``) applies ``jax.lax.stop_gradient`` to those leaves inside the
objective, so JAX does not compute their gradients at all (a frozen backbone under a trainable head costs
the head's backward pass, not the whole network's).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Sequence
from typing import Any

import jax
import optax

from nnjax._src.errors import leaf_path
from nnjax._src.objective import Objective
from nnjax._src.types import Params

Where = str | Sequence[str] | Callable[[str], bool]  # path patterns, or a predicate on a leaf's path


def path_matcher(where: Where, *, what: str = "freeze") -> Callable[[str], bool]:
    """``where`` as a predicate on a path string.

    A pattern (``fnmatch``: ``*`` matches across ``/``) selects the leaves whose path, or the path of one
    of their ancestors, it matches: ``"backbone"``, ``"backbone/*"`` and ``"*/w"`` all work.
    """
    if callable(where):
        return where
    patterns = [where] if isinstance(where, str) else list(where) if isinstance(where, (list, tuple)) else None
    if not patterns or not all(isinstance(p, str) for p in patterns):
        raise TypeError(
            f"{what}: argument `where` expected a path pattern such as 'backbone/*', a list of them, or a "
            f"predicate on the path, given {where!r}."
        )

    def matches(path: str) -> bool:
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        return any(fnmatch.fnmatchcase(prefix, p) for p in patterns for prefix in prefixes)

    return matches


def leaf_paths(params: Params) -> list[str]:
    """The ``/``-joined path of every array leaf of ``params``."""
    return [leaf_path(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)]


class FrozenOptimizer(optax.GradientTransformation):
    """An optimizer that does not update the frozen parameters (what ``nnjax.freeze`` returns).

    An ``optax.GradientTransformation`` (``init``/``update``: the ``optax.multi_transform``'s; frozen leaves
    get zero updates) that also carries ``frozen``, the predicate on a leaf's path that the train step
    reads to skip the frozen leaves' gradients. Everything that takes an Optax optimizer takes it.

    Example:
      >>> params = {"backbone": {"w": jnp.ones((2, 2))}, "head": {"w": jnp.ones((2, 1))}}
      >>> opt = nnjax.freeze(optax.adam(1e-3), params, "backbone")
      >>> isinstance(opt, optax.GradientTransformation), opt.frozen("backbone/w"), opt.frozen("head/w")
      (True, True, False)
    """

    @property
    def frozen(self) -> Callable[[str], bool]:
        """``path -> bool``: True for a frozen leaf (``"backbone/dense_0/w"``)."""
        return self.__dict__["frozen"]


def freeze(optimizer: optax.GradientTransformation, params: Params, where: Where) -> FrozenOptimizer:
    """``optimizer`` on the parameters ``where`` does not select; the selected ones stay as they are.

    Built on ``optax.multi_transform`` (frozen leaves go to ``optax.set_to_zero()``). Train steps built with
    the result also stop the frozen leaves' gradients (``jax.lax.stop_gradient`` in the objective), so their
    backward pass is not computed. Give it to the train step as it is (not inside ``optax.chain``; chain
    inside it instead: ``nnjax.freeze(optax.chain(clip, adam), params, ...)``).

    Args:
      optimizer: any ``optax.GradientTransformation``, for the trainable parameters.
      params: the model's params (arrays or ``jax.ShapeDtypeStruct`` values), to label each leaf by its path.
      where: what to freeze: a path pattern (``"backbone/*"``, ``"backbone"``, ``"*/b"``; ``fnmatch``
        rules, matched against each leaf's path and its ancestors' paths), a list of them, or a predicate
        ``path -> bool`` on a leaf's ``/``-joined path (``"backbone/dense_0/w"``).

    Returns:
      A ``FrozenOptimizer``: an ``optax.GradientTransformation`` with ``frozen``, the predicate on paths.

    Raises:
      ValueError: the patterns select no parameter (naming the paths there are), or select all of them.
      TypeError: ``where`` is not a pattern, a list of patterns or a callable.

    Example:
      >>> model = nnjax.serial(("backbone", nnjax.Dense(8)), nnjax.Relu(), head=nnjax.Dense(2))
      >>> params, _ = model.init(jax.random.key(0), (4,))
      >>> opt = nnjax.freeze(optax.sgd(0.1), params, "backbone")
      >>> [p for p in ("backbone/w", "head/w") if opt.frozen(p)]
      ['backbone/w']
      >>> updates, _ = opt.update(jax.tree.map(jnp.ones_like, params), opt.init(params), params)
      >>> float(abs(updates["backbone"]["w"]).max()), round(float(updates["head"]["w"].max()), 6)
      (0.0, -0.1)
    """
    frozen = path_matcher(where)
    paths = leaf_paths(params)
    chosen = [p for p in paths if frozen(p)]
    if not chosen:
        raise ValueError(
            f"freeze: argument `where` ({where!r}) selects no parameter; the params' paths are "
            f"{paths[:8]}{' ...' if len(paths) > 8 else ''}."
        )
    if len(chosen) == len(paths):
        raise ValueError(f"freeze: argument `where` ({where!r}) selects every parameter; nothing would train.")

    def labels(tree: Params) -> Params:
        return jax.tree_util.tree_map_with_path(
            lambda path, _: "frozen" if frozen(leaf_path(path)) else "trainable", tree
        )

    tx = optax.multi_transform({"trainable": optimizer, "frozen": optax.set_to_zero()}, labels)
    result = FrozenOptimizer(tx.init, tx.update)
    result.__dict__["frozen"] = frozen
    return result


def frozen_predicate(optimizer: Any) -> Callable[[str], bool] | None:
    """The frozen-path predicate of a ``FrozenOptimizer`` (None for any other optimizer)."""
    return getattr(optimizer, "frozen", None) if isinstance(optimizer, FrozenOptimizer) else None


def stop_frozen_gradients(objective_fn: Objective, frozen: Callable[[str], bool]) -> Objective:
    """``objective_fn`` with ``jax.lax.stop_gradient`` on the frozen leaves of ``params``: their gradient is
    zero and JAX computes none of the backward pass that only they need."""

    def fn(params, state, batch, *, key, train):
        params = jax.tree_util.tree_map_with_path(
            lambda path, p: jax.lax.stop_gradient(p) if frozen(leaf_path(path)) else p, params
        )
        return objective_fn(params, state, batch, key=key, train=train)

    return Objective(fn)


def count_frozen(params: Params, where: Where | FrozenOptimizer) -> tuple[int, int]:
    """``(trainable, frozen)`` numbers of parameter elements under ``where`` (or a ``FrozenOptimizer``)."""
    frozen = where.frozen if isinstance(where, FrozenOptimizer) else path_matcher(where, what="summary")
    counts = [0, 0]
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        size = 1
        for d in leaf.shape:
            size *= int(d)
        counts[bool(frozen(leaf_path(path)))] += size
    return counts[0], counts[1]
