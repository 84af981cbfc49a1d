"""``summary``: a table of a model's layers with output shapes, parameter counts and FLOPs.

Nothing is allocated or run: parameter shapes come from ``jax.eval_shape`` of ``init``, output shapes
from ``jax.eval_shape`` of ``apply``, and FLOPs from XLA's cost analysis of each layer compiled for one
example (``jax.jit(apply).lower(...).compile().cost_analysis()``).

The table walks ``serial``, ``parallel``, ``residual`` and ``named`` down to their leaf layers; a ``stack`` is a
group row ``Stack(n=...)`` with the totals of its ``n`` copies, above the rows of ONE copy (per-copy shapes
and counts, under ``<path>/layers``); any other layer (including ones with sub-layers of their own) is one
row holding all its parameters.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from nnjax._src.core import Layer, Named, child_names, input_spec
from nnjax._src.freeze import count_frozen
from nnjax._src.stack import STACKED, Stacked
from nnjax._src.types import DType, Shape


class Row(NamedTuple):
    """One line of the table.

    Attributes:
      path: where the layer's params live, e.g. ``"residual_2/body/dense_0"`` (``""`` for the model).
      name: the layer's name, e.g. ``"Dense(32)"``.
      depth: nesting depth (0 for the model's direct sub-layers).
      output_shape: one example's output shape (a tuple, or a tuple of tuples for multi-output layers).
      params: number of parameter elements; ``param_bytes`` their size in bytes.
      state: number of state elements (e.g. BatchNorm statistics).
      flops: forward FLOPs for one example from XLA's cost analysis (``None`` if unavailable);
        for a container row, the sum over its leaves.
      container: True for ``serial``/``parallel``/``residual`` group rows.
    """

    path: str
    name: str
    depth: int
    output_shape: Any
    params: int
    param_bytes: int
    state: int
    flops: float | None
    container: bool = False


class Summary(NamedTuple):
    """What ``summarize`` returns; ``str(summary)`` is the printed table.

    Attributes:
      rows: the table's rows (leaves, and group rows for nested combinators).
      input_shape, output_shape: one example's shapes. dtype: the parameter dtype.
      total_params, param_bytes: all parameters of ``model.init`` (elements and bytes).
      total_state, state_bytes: all state arrays.
      flops: forward FLOPs of the whole model for one example (XLA cost analysis of the fused
        program; may differ slightly from the sum of the rows), or None.
      frozen_params: parameter elements that ``frozen`` selects (None when no ``frozen`` was given); the
        trainable ones are ``total_params - frozen_params``.
    """

    rows: list[Row]
    input_shape: Shape
    output_shape: Any
    dtype: Any
    total_params: int
    param_bytes: int
    total_state: int
    state_bytes: int
    flops: float | None
    frozen_params: int | None = None

    def __str__(self) -> str:
        return format_summary(self)


def children(layer: Layer) -> tuple[str, tuple[Layer, ...]] | None:
    """``(kind, sub_layers)`` for the combinators ``serial``/``parallel``/``residual``, else None.

    Reads a ``children`` attribute when the layer has one, else the sub-layers the combinator's
    ``apply`` closes over (``layers`` for serial/parallel, ``body`` for residual).
    """
    own = getattr(layer, "children", None)
    if isinstance(own, tuple) and own and all(isinstance(c, Layer) for c in own):
        return layer.name, own
    fn = inspect.unwrap(layer.apply)
    qualname = getattr(fn, "__qualname__", "")
    closure = (
        dict(zip(getattr(fn, "__code__", None).co_freevars, fn.__closure__ or (), strict=True))
        if hasattr(fn, "__code__")
        else {}
    )
    try:
        if qualname == "serial.<locals>.apply" and "layers" in closure:
            return "serial", tuple(closure["layers"].cell_contents)
        if qualname == "parallel.<locals>.apply" and "layers" in closure:
            return "parallel", tuple(closure["layers"].cell_contents)
        if qualname == "residual.<locals>.apply" and "body" in closure:
            body = closure["body"].cell_contents
            inner = children(body)
            return ("residual", inner[1]) if inner else None
    except ValueError:  # an empty cell
        return None
    return None


def child_keys(layer: Layer, subs: tuple[Layer, ...]) -> list[str]:
    """The params keys of ``layer``'s sub-layers ``subs`` (as ``children`` gives them): the names ``serial``
    chose (given names kept), else kind and position."""
    fn = inspect.unwrap(layer.apply)
    code = getattr(fn, "__code__", None)
    closure = dict(zip(code.co_freevars, fn.__closure__ or (), strict=True)) if code is not None else {}
    try:
        qualname = getattr(fn, "__qualname__", "")
        if qualname == "serial.<locals>.apply" and "names" in closure:
            return list(closure["names"].cell_contents)
        if qualname == "residual.<locals>.apply" and "body" in closure:
            return child_keys(closure["body"].cell_contents, subs)
    except ValueError:  # an empty cell
        pass
    return child_names(subs)


def _count(tree: Any) -> tuple[int, int]:
    leaves = jax.tree.leaves(tree)
    return sum(math.prod(a.shape) for a in leaves), sum(math.prod(a.shape) * np.dtype(a.dtype).itemsize for a in leaves)


def _shape_of(spec: Any) -> Any:
    shapes = jax.tree.map(lambda s: tuple(s.shape[1:]), spec)
    return shapes


def _flops(fn, *args) -> float | None:
    try:
        cost = jax.jit(fn).lower(*args).compile().cost_analysis()
    except Exception:  # noqa: BLE001 - cost analysis is best effort on every backend
        return None
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    if cost is None:
        return None
    return max(float(cost.get("flops", 0.0)), 0.0)  # XLA leaves the key out when it counts none


def _leaf(layer: Layer, spec: Any, dtype: DType, path: str, depth: int, flops: bool) -> tuple[list[Row], Any]:
    key = jax.random.key(0)
    param_spec, state_spec = jax.eval_shape(lambda k: layer.init(k, _shape_of(spec), dtype), key)
    apply = lambda p, s, x: layer.apply(p, s, x, train=False)[0]  # noqa: E731
    out = jax.eval_shape(apply, param_spec, state_spec, spec)
    n_params, n_bytes = _count(param_spec)
    n_state, _ = _count(state_spec)
    cost = _flops(apply, param_spec, state_spec, spec) if flops else None
    return [Row(path, layer.name, depth, _shape_of(out), n_params, n_bytes, n_state, cost)], out


def _join(path: str, name: str) -> str:
    return f"{path}/{name}" if path else name


def _walk(layer: Layer, spec: Any, dtype: DType, path: str, depth: int, flops: bool) -> tuple[list[Row], Any]:
    if isinstance(layer, Named):  # each part under its name; a group row when nested
        rows, out = [], {}
        for name, part in layer.parts.items():
            part_rows, out[name] = _walk(part, spec[name], dtype, _join(path, name), depth + bool(path), flops)
            rows += part_rows
        return ([_group(path, "Named", depth, rows, out)] if path else []) + rows, out
    if isinstance(layer, Stacked):  # one copy's rows, below the totals of all n copies
        rows, out = _walk(layer.block, spec, dtype, _join(path, STACKED), depth + 1, flops)
        one = _group(path, "", depth, rows, out)
        total = one._replace(
            name=f"Stack(n={layer.n}) of the copy below",
            params=layer.n * one.params,
            param_bytes=layer.n * one.param_bytes,
            state=layer.n * one.state,
            flops=None if one.flops is None else layer.n * one.flops,
        )
        return [total, *rows], out
    found = children(layer)
    if found is None:
        return _leaf(layer, spec, dtype, path, depth, flops)
    kind, subs = found
    names = child_keys(layer, subs)
    rows: list[Row] = []
    if kind == "serial" and not path:  # the model itself: its layers are the table
        for name, sub in zip(names, subs, strict=True):
            sub_rows, spec = _walk(sub, spec, dtype, _join(path, name), depth, flops)
            rows += sub_rows
        return rows, spec
    if kind == "serial":  # a nested serial (e.g. a branch of parallel): a group row, then its layers
        out = spec
        for name, sub in zip(names, subs, strict=True):
            sub_rows, out = _walk(sub, out, dtype, _join(path, name), depth + 1, flops)
            rows += sub_rows
    elif kind == "parallel":
        outs = []
        for name, sub, sub_spec in zip(names, subs, spec, strict=True):
            sub_rows, out = _walk(sub, sub_spec, dtype, _join(path, name), depth + 1, flops)
            rows += sub_rows
            outs.append(out)
        out = tuple(outs)
    else:  # residual: the body's rows, then the skip connection keeps the shape
        body_path = _join(path, "body")
        out = spec
        for name, sub in zip(names, subs, strict=True):
            sub_rows, out = _walk(sub, out, dtype, _join(body_path, name), depth + 1, flops)
            rows += sub_rows
        out = spec
    return [_group(path, {"parallel": "Parallel", "serial": "Serial"}.get(kind, "Residual"), depth, rows, out), *rows], out


def _group(path: str, name: str, depth: int, rows: list[Row], out: Any) -> Row:
    """The row of a container: its output shape and the totals of its leaf rows."""
    leaves = [r for r in rows if not r.container]
    costs = [r.flops for r in leaves]
    total_flops = None if any(c is None for c in costs) else float(sum(costs))
    return Row(
        path,
        name,
        depth,
        _shape_of(out),
        sum(r.params for r in leaves),
        sum(r.param_bytes for r in leaves),
        sum(r.state for r in leaves),
        total_flops,
        container=True,
    )


def summarize(
    model: Layer, input_shape: Shape, dtype: DType = jnp.float32, *, flops: bool = True, frozen: Any = None
) -> Summary:
    """The data behind ``summary``: per-layer rows and model totals, without allocating parameters.

    Args:
      model: the network.
      input_shape: ONE example's shape, no batch axis (a pytree of shapes for multi-input models).
      dtype: the parameter dtype.
      flops: compile each layer to count FLOPs (set False to skip compilation on large models).
      frozen: an optimizer from ``nnjax.freeze``, or the ``where`` given to it (path patterns or a
        predicate): count the trainable and the frozen parameters.

    Returns:
      A ``Summary``: ``rows`` (one ``Row`` per leaf layer, plus group rows for nested combinators, each with
      ``path``, ``name``, ``output_shape``, ``params``, ``state``, ``flops``) and the model's totals
      (``total_params``, ``param_bytes``, ``total_state``, ``state_bytes``, ``flops``); ``str()`` of it is
      the table that ``summary`` prints.

    Raises:
      LayerError, LayerTypeError: the model does not accept ``input_shape`` (raised by its ``init`` or
        ``apply``, run abstractly).

    Example:
      >>> info = nnjax.summarize(nnjax.serial(nnjax.Dense(32), nnjax.Relu(), nnjax.Dense(10)), (64,), flops=False)
      >>> [(row.path, row.output_shape, row.params) for row in info.rows]
      [('dense_0', (32,), 2080), ('relu_1', (32,), 0), ('dense_2', (10,), 330)]
      >>> info.total_params, info.param_bytes, info.output_shape
      (2410, 9640, (10,))
    """
    input_shape = tuple(input_shape) if all(isinstance(d, int) for d in input_shape) else input_shape
    spec = input_spec(model, input_shape, dtype)
    rows, out = _walk(model, spec, dtype, "", 0, flops)
    param_spec, state_spec = jax.eval_shape(lambda k: model.init(k, input_shape, dtype), jax.random.key(0))
    total_params, param_bytes = _count(param_spec)
    total_state, state_bytes = _count(state_spec)
    apply = lambda p, s, x: model.apply(p, s, x, train=False)[0]  # noqa: E731
    total_flops = _flops(apply, param_spec, state_spec, spec) if flops else None
    frozen_params = None if frozen is None else count_frozen(param_spec, frozen)[1]
    return Summary(
        rows,
        input_shape,
        _shape_of(out),
        np.dtype(dtype).name,
        total_params,
        param_bytes,
        total_state,
        state_bytes,
        total_flops,
        frozen_params,
    )


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,} B" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _number(x: float | None) -> str:
    if x is None:
        return "?"
    x = float(x)
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if x >= scale * 10:
            return f"{x / scale:,.1f}{unit}"
    return f"{int(round(x)):,}"


def _shape_str(shape: Any) -> str:
    if isinstance(shape, tuple) and all(isinstance(d, int) for d in shape):
        return "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"
    if isinstance(shape, (tuple, list)):
        return "[" + ", ".join(_shape_str(s) for s in shape) + "]"
    return str(shape)


def format_summary(s: Summary) -> str:
    """The table as text (what ``summary`` prints)."""
    header = ("Layer", "Output shape", "Params", "FLOPs")
    lines = []
    for r in s.rows:
        label = r.path.rsplit("/", 1)[-1] if r.path else "model"
        if r.container:
            label = f"{label}: {r.name}"
        else:
            label = f"{label}  {r.name}"
        lines.append(("  " * r.depth + label, _shape_str(r.output_shape), f"{r.params:,}", _number(r.flops)))
    widths = [max(len(header[i]), *(len(line[i]) for line in lines)) if lines else len(header[i]) for i in range(4)]
    width = sum(widths) + 3 * 3

    def fmt(cols):
        return "  ".join(
            [
                cols[0].ljust(widths[0]),
                cols[1].ljust(widths[1] + 2),
                cols[2].rjust(widths[2] + 1),
                cols[3].rjust(widths[3]),
            ]
        )

    rule = "─" * width
    out = [
        f"Model summary: input {_shape_str(s.input_shape)} {s.dtype}, output {_shape_str(s.output_shape)}",
        rule,
        fmt(header),
        rule,
    ]
    out += [fmt(line) for line in lines]
    out.append(rule)
    out.append(f"Total params: {s.total_params:,} ({_bytes(s.param_bytes)})")
    if s.frozen_params is not None:
        out.append(f"Trainable params: {s.total_params - s.frozen_params:,}  Frozen params: {s.frozen_params:,}")
    if s.total_state:
        out.append(f"State (non-trainable): {s.total_state:,} ({_bytes(s.state_bytes)})")
    if s.flops is None:
        flops = "not counted"
    else:
        exact = f"{s.flops:,.0f}"
        flops = exact if _number(s.flops) == exact else f"{_number(s.flops)} ({exact})"
    out.append(f"Forward FLOPs per example: {flops}  [XLA cost analysis]")
    return "\n".join(out)


def summary(
    model: Layer,
    input_shape: Shape,
    dtype: DType = jnp.float32,
    *,
    flops: bool = True,
    show: bool = True,
    frozen: Any = None,
) -> str:
    """A table of the model's layers: output shape, parameter count and FLOPs, plus totals and memory.

    Args:
      model: the network.
      input_shape: ONE example's shape, no batch axis (e.g. ``(28, 28, 1)``).
      dtype: the parameter dtype (float32 by default); it sets the memory column.
      flops: count forward FLOPs per example with XLA's cost analysis (compiles each layer once).
      show: print the table (set False to only get the string).
      frozen: an optimizer from ``nnjax.freeze`` (or its ``where``): add a line with the trainable and
        frozen parameter counts.

    Returns:
      The table as a string.

    Raises:
      LayerError, LayerTypeError: the model does not accept ``input_shape`` (as ``summarize``).

    Example:
      >>> text = nnjax.summary(nnjax.serial(nnjax.Dense(32), nnjax.Relu(), nnjax.Dense(10)), (64,), show=False)
      >>> print(text.splitlines()[-1])  # FLOPs come from XLA's cost analysis; flops=False skips compiling
      Forward FLOPs per example: ...  [XLA cost analysis]
      >>> "Total params: 2,410" in text
      True
      >>> print(text.splitlines()[0])
      Model summary: input (64,) float32, output (10,)
    """
    text = str(summarize(model, input_shape, dtype, flops=flops, frozen=frozen))
    if show:
        print(text)
    return text


__all__: Sequence[str] = ["Row", "Summary", "children", "format_summary", "summarize", "summary"]
