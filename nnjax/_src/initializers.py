"""Weight initializers: ``init(key, shape, dtype) -> array``, taken from ``jax.nn.initializers``.

Layers accept an initializer function or its name: ``Dense(10, w_init="he_normal")``.
"""

from __future__ import annotations

from collections.abc import Callable

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

    Raises:
      ValueError: unknown name; the message lists the known ones.
    """
    if callable(initializer):
        return initializer
    if initializer in _PLAIN:
        return _PLAIN[initializer]
    if initializer in _BY_NAME:
        return _BY_NAME[initializer]()
    known = ", ".join(sorted([*_BY_NAME, *_PLAIN]))
    raise ValueError(f"{where}: unknown initializer {initializer!r}; expected a function or one of: {known}.")
