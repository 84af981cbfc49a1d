"""Type aliases shared by every nnjax module."""

from __future__ import annotations

from typing import Any

import jax

Array = jax.Array
PRNGKey = jax.Array  # a typed key from jax.random.key(seed)
Shape = tuple[Any, ...]  # a tuple of ints, or a pytree of such tuples for multi-input layers
DType = Any
Params = Any  # a pytree of arrays: nested dicts with readable names
State = Any  # a pytree of arrays (e.g. BatchNorm running statistics); {} when stateless
PyTree = Any
