"""Weight initializers: ``init(key, shape, dtype) -> array``, taken from ``jax.nn.initializers``.

Layers accept an initializer function or its name: ``Dense(10, w_init="he_normal")``.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
from jax.nn import initializers as jinit

Initializer = Callable[..., object]

glorot_normal = jinit.glorot_normal
glorot_uniform = jinit.glorot_uniform
he_normal = jinit.he_normal
he_uniform = jinit.he_uniform
lecun_normal = jinit.lecun_normal
lecun_uniform = jinit.lecun_uniform
orthogonal = jinit.orthogonal
normal = jinit.normal  # normal(stddev=0.01)
uniform = jinit.uniform  # uniform(scale=0.01): U[0, scale)
zeros = jinit.zeros
ones = jinit.ones
constant = jinit.constant

_BY_NAME: dict[str, Callable[[], Initializer]] = {
    "glorot_normal": glorot_normal,
    "glorot_uniform": glorot_uniform,
    "xavier_normal": glorot_normal,
    "xavier_uniform": glorot_uniform,
    "he_normal": he_normal,
    "he_uniform": he_uniform,
    "kaiming_normal": he_normal,
    "kaiming_uniform": he_uniform,
    "lecun_normal": lecun_normal,
    "lecun_uniform": lecun_uniform,
    "orthogonal": orthogonal,
    "normal": normal,
    "uniform": uniform,
}
_PLAIN = {"zeros": zeros, "ones": ones}


def get(initializer: str | Initializer, where: str = "initializer") -> Initializer:
    """Resolves an initializer given by name (``"he_normal"``) or as a function.

    Names are those of ``nnjax.initializers`` but ``constant`` (``"glorot_uniform"``, ``"he_normal"``,
    ``"orthogonal"``, ``"zeros"``, ...) plus the aliases ``"xavier_*"`` (Glorot) and ``"kaiming_*"`` (He); a
    named initializer gets its default configuration (``"normal"``: std 0.01; ``"uniform"``: ``U[0, 0.01)``).

    Args:
      initializer: a name, or an initializer function ``init(key, shape, dtype) -> array`` (returned as is).
      where: what the initializer is for, used in the error message (e.g. ``"Dense(10) w_init"``).

    Returns:
      The initializer function ``init(key, shape, dtype=float32) -> array`` of that ``shape``.

    Raises:
      ValueError: unknown name; the message lists the known ones.

    Example:
      >>> init = nnjax.initializers.get("he_normal")
      >>> init(jax.random.key(0), (3, 4), jnp.float32).shape
      (3, 4)
      >>> nnjax.initializers.get("zeros")(jax.random.key(0), (2,), jnp.float32).tolist()
      [0.0, 0.0]
      >>> nnjax.initializers.get("he_nromal")
      Traceback (most recent call last):
      ...
      ValueError: initializer: unknown initializer 'he_nromal'; expected a function or one of: glorot_normal, ...
    """
    if callable(initializer):
        return initializer
    if initializer in _PLAIN:
        return _PLAIN[initializer]
    if initializer in _BY_NAME:
        return _BY_NAME[initializer]()
    known = ", ".join(sorted([*_BY_NAME, *_PLAIN]))
    raise ValueError(f"{where}: unknown initializer {initializer!r}; expected a function or one of: {known}.")


KEYLESS: tuple[Initializer, ...] = (zeros, ones)  # initializers that draw no random numbers


def weight_and_bias(
    key: jax.Array, w_fn: Initializer, w_shape: tuple[int, ...], b_fn: Initializer, b_shape: tuple[int, ...],
    dtype: object, use_bias: bool,
) -> dict[str, jax.Array]:
    """``{"w": (*w_shape), "b": (*b_shape)}`` (no ``"b"`` without ``use_bias``) for ``Dense`` and ``Conv``.

    ``key`` is split in two, one half each, only when both initializers draw random numbers (``zeros``
    and ``ones`` draw none); otherwise both get ``key`` itself. Every split is a threefry hash in the
    initialization program, about ten XLA:CPU kernels (~0.03 s) once compiled.
    """
    if not use_bias:
        return {"w": w_fn(key, w_shape, dtype)}
    w_key, b_key = (key, key) if w_fn in KEYLESS or b_fn in KEYLESS else jax.random.split(key)
    return {"w": w_fn(w_key, w_shape, dtype), "b": b_fn(b_key, b_shape, dtype)}
