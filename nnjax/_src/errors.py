"""nnjax's own errors and the trace-time checks that raise them.

Every check here looks only at shapes and dtypes (static under ``jax.jit``), so it runs once
while tracing and costs nothing in the compiled program. Values are checked only where data
enters eagerly (``fit``, datasets, losses called outside ``jit``).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from nnjax._src.checks import check


class LayerError(ValueError):
    """A layer got input it cannot use. The message names the layer and its position."""


class LayerTypeError(TypeError):
    """A layer got input of the wrong dtype. The message names the layer and its position."""


class ForwardModeError(LayerTypeError):
    """Forward-mode differentiation reached a kernel form that has none (a custom VJP); the message
    names the layer and how to switch to the generic form (``nnjax.config.kernels``)."""


def with_location(error: Exception, where: str) -> Exception:
    """Returns ``error`` with ``where`` (e.g. ``"serial[2] Dense(10)"``) prepended to its message."""
    return type(error)(f"{where} > {error}")


def is_concrete(x: Any) -> bool:
    """True when ``x`` holds values known now (not a tracer inside ``jit``/``grad``/``vmap``)."""
    return not isinstance(x, jax.core.Tracer)


def check_float_input(layer: str, x: Any, argument: str = "x") -> None:
    """Raises LayerTypeError when ``x`` is not floating point (e.g. uint8 pixels)."""
    dtype = jnp.result_type(x)
    if not jnp.issubdtype(dtype, jnp.inexact):
        raise LayerTypeError(
            f"{layer}: argument `{argument}` expected a floating-point array, given dtype {dtype} "
            f"with shape {tuple(jnp.shape(x))}. Hint: scale integer inputs first, e.g. "
            f"`x.astype(jnp.float32) / 255.0` for 8-bit pixels."
        )


def check_rank(layer: str, x: Any, min_rank: int, what: str, argument: str = "x") -> None:
    """Raises LayerError when ``x`` has fewer than ``min_rank`` dimensions."""
    if jnp.ndim(x) < min_rank:
        raise LayerError(
            f"{layer}: argument `{argument}` expected {what} (rank >= {min_rank}), "
            f"given shape {tuple(jnp.shape(x))}."
        )


def check_integer_labels(where: str, labels: Any, num_classes: int | None = None) -> None:
    """Checks integer class labels: dtype at trace time, value range when values are concrete.

    Raises:
      TypeError: labels are not integers (float or one-hot labels given to an integer-label loss).
      ValueError: a concrete label lies outside ``[0, num_classes)``.
    """
    dtype = jnp.result_type(labels)
    if not jnp.issubdtype(dtype, jnp.integer):
        raise TypeError(
            f"{where}: argument `labels` expected integer class indices, given dtype {dtype} with shape "
            f"{tuple(jnp.shape(labels))}. Hint: for one-hot or soft labels use "
            f"`softmax_cross_entropy_soft`; otherwise convert with `labels.astype(jnp.int32)`."
        )
    if num_classes is not None and not is_concrete(labels) and np.size(labels) > 0:  # the checked mode only
        check(jnp.all((labels >= 0) & (labels < num_classes)),
              f"{where}: argument `labels` expected values in [0, {num_classes}) for {num_classes} classes, given "
              f"values in [{{low}}, {{high}}].", low=jnp.min(labels), high=jnp.max(labels))
    if num_classes is not None and is_concrete(labels) and np.size(labels) > 0:
        values = np.asarray(labels)
        low, high = int(values.min()), int(values.max())
        if low < 0 or high >= num_classes:
            bad = values[(values < 0) | (values >= num_classes)]
            raise ValueError(
                f"{where}: argument `labels` expected values in [0, {num_classes}) for {num_classes} "
                f"classes, given values in [{low}, {high}] ({bad.size} out of range, e.g. {int(bad[0])})."
            )


def check_same_leading(where: str, **arrays: Any) -> None:
    """Raises ValueError when the arrays' leading (batch) dimensions differ."""
    sizes = {name: jnp.shape(a)[0] if jnp.ndim(a) else None for name, a in arrays.items()}
    if len(set(sizes.values())) > 1:
        given = ", ".join(f"`{n}` {tuple(jnp.shape(a))}" for n, a in arrays.items())
        raise ValueError(f"{where}: expected the same number of examples in each argument, given {given}.")


def leaf_path(path: Any) -> str:
    """A pytree key path as ``"params/dense_0/w"`` (the names used in checkpoint and non-finite errors)."""
    return jax.tree_util.keystr(path, simple=True, separator="/")


class CheckpointError(ValueError):
    """A checkpoint cannot be saved or restored. The message names the directory and the step."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The checkpoint directory holds no complete checkpoint (or not the step asked for)."""


class CheckpointMismatchError(CheckpointError):
    """A checkpoint does not fit the model it is restored into. The message lists every mismatched leaf."""


class CheckpointCorruptError(CheckpointError):
    """A checkpoint's files are unreadable, truncated, or fail their checksums."""


class CheckpointWriteError(CheckpointError, OSError):
    """A checkpoint cannot be written: the disk is full, the directory is not writable, or another I/O error.

    The message names the directory, the step and the cause. The failed save's temporary files are removed
    and the checkpoints saved before it are left as they were, restorable. Also an ``OSError``, so
    ``except OSError`` catches it too.

    Attributes:
      directory: the checkpoint directory (absolute path).
      step: the step being saved; None when no save was under way (``fit``'s check at the call).
      cause: ``"disk full"``, ``"permission denied"``, ``"read-only file system"`` or the error's own words.
      errno: the operating system's error number when one is known (e.g. ``errno.ENOSPC``), else None.
    """

    def __init__(self, message: str, *, directory: str | None = None, step: int | None = None,
                 cause: str | None = None, errno: int | None = None):
        super().__init__(message)
        self.directory, self.step, self.cause, self.errno = directory, step, cause, errno


class CheckpointDiskFullError(CheckpointWriteError):
    """A checkpoint could not be written because the disk (or the quota) is full."""


class CheckpointPermissionError(CheckpointWriteError, PermissionError):
    """A checkpoint could not be written because the directory is not writable (permissions, read-only mount)."""


class CheckpointLockedError(CheckpointError):
    """Another process is writing checkpoints to the same directory; this writer is refused.

    Attributes:
      directory: the checkpoint directory (absolute path).
      step: the step this writer meant to save; None when refused at ``fit``'s call.
      holder: what the other writer recorded in the lock file (``pid``, ``host``, ``since``, ``command``);
        empty when it could not be read.
    """

    def __init__(self, message: str, *, directory: str | None = None, step: int | None = None,
                 holder: dict[str, Any] | None = None):
        super().__init__(message)
        self.directory, self.step, self.holder = directory, step, dict(holder or {})


class NonFiniteError(FloatingPointError):
    """Training produced NaN or Inf. The message names the step and the first non-finite leaf.

    Attributes:
      step: the update (``train_state.step``) whose loss or gradient was not finite; None when unknown.
      leaf: the first non-finite leaf, e.g. ``"params/dense_0/w"`` (``"loss"`` when only the loss is).
      train_state: the last finite train state (when raised by ``fit``), else None.
    """

    def __init__(self, message: str, *, step: int | None = None, leaf: str | None = None, train_state: Any = None):
        super().__init__(message)
        self.step, self.leaf, self.train_state = step, leaf, train_state


def first_nonfinite(tree: Any) -> str | None:
    """The path of the first leaf of ``tree`` holding NaN or Inf (floating leaves only), or None.

    One compiled program per tree's shapes (op by op, each leaf shape compiled two programs of its own), read
    back once: use it outside compiled code (e.g. before saving).
    """
    leaves = [
        (leaf_path(path), leaf)
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
        if hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jnp.inexact)
    ]
    if not leaves:
        return None
    finite = np.asarray(jax.device_get(_leaves_finite([leaf for _, leaf in leaves])))
    bad = np.flatnonzero(~finite)
    return leaves[bad[0]][0] if bad.size else None


@jax.jit
def _leaves_finite(leaves: list[jax.Array]) -> jax.Array:
    """``(len(leaves),)`` bools: whether each leaf holds only finite values."""
    return jnp.stack([jnp.isfinite(leaf).all() for leaf in leaves])


def check_number(
    where: str, argument: str, value: Any, *, low: float | None = None, high: float | None = None,
    integer: bool = False, high_inclusive: bool = True, what: str | None = None,
) -> None:
    """Checks a configuration number (type and range) when a layer is built.

    Raises:
      TypeError: not a number (bools and strings are refused), or not an int when ``integer``.
      ValueError: outside ``[low, high]`` (``[low, high)`` when not ``high_inclusive``).
    """
    kinds = (int,) if integer else (int, float, np.integer, np.floating)
    expected = what or ("an int" if integer else "a number")
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise TypeError(f"{where}: argument `{argument}` expected {expected}, given {value!r} ({type(value).__name__}).")
    below_high = high is None or (value <= high if high_inclusive else value < high)
    if not ((low is None or value >= low) and below_high) or value != value:  # value != value: NaN
        raise ValueError(f"{where}: argument `{argument}` expected {expected}, given {value!r}.")
