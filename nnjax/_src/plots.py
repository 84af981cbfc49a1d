"""Plots of training and of models: curves, activations, the network from its weights, boundaries, images.

matplotlib is an optional dependency (``pip install 'nnjax[plots]'``), imported when a plot is drawn.
Every function returns a ``matplotlib.figure.Figure`` and, given ``path=``, saves it as a PNG. Figures are
built without ``pyplot``, so nothing accumulates in a global figure list and any backend works (Agg in
tests and on servers); in Jupyter a returned figure displays itself.
"""

from __future__ import annotations

import io
import math
import os
import reprlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from nnjax._src import activations as act
from nnjax._src.core import Layer
from nnjax._src.summary import child_keys, children

POSITIVE, NEGATIVE = "#1f77b4", "#d62728"  # matplotlib's tab:blue and tab:red


_FIGURE_CLASS: Any = None


def _figure(**kwargs: Any) -> Any:
    """A matplotlib Figure outside pyplot's global state that Jupyter displays as a PNG when returned."""
    global _FIGURE_CLASS
    try:
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError(
            "nnjax plots need matplotlib: pip install 'nnjax[plots]' (or pip install matplotlib)."
        ) from error
    if _FIGURE_CLASS is None:

        class NotebookFigure(Figure):
            """A Figure with ``_repr_png_``, so IPython shows it even when pyplot was never imported."""

            def _repr_png_(self) -> bytes:
                buffer = io.BytesIO()
                self.savefig(buffer, format="png", dpi=90)
                return buffer.getvalue()

        _FIGURE_CLASS = NotebookFigure
    return _FIGURE_CLASS(**kwargs)


def _finish(fig: Any, path: str | os.PathLike | None, dpi: int = 110) -> Any:
    if path is not None:
        path = os.fspath(path)
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        fig.savefig(path, dpi=dpi, format=os.path.splitext(path)[1][1:] or "png")
    return fig


# --- training curves --------------------------------------------------------------------------------


def _runs(history: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """``{run: history}``: a single history becomes one unnamed run."""
    if not history:
        raise ValueError("plot_history: argument `history` is empty; train for at least one epoch first.")
    values = list(history.values())
    if all(isinstance(v, Mapping) for v in values):
        return dict(history)
    if any(isinstance(v, Mapping) for v in values):
        raise TypeError(
            "plot_history: argument `history` mixes metrics and runs; pass {metric: values} or {run: history}."
        )
    return {"": history}


_MAX_LABELLED = 10  # plot_history labels the first 10 models of a fit_many history in the legend


def _config_label(config: Mapping[str, Any]) -> str:
    """``"seed=0, learning_rate=0.01"``: floats compactly (``:g``), other values as they print."""
    return ", ".join(f"{k}={v:g}" if isinstance(v, float | np.floating) else f"{k}={v}" for k, v in config.items())


def _series(run: str, history: Mapping[str, Any], configs: Sequence[Any] | None) -> tuple[dict, list[str] | None]:
    """Each non-empty entry as a ``(models, points)`` float array, and the models' labels (None: one model).

    All entries are 1-D (one model: ``fit``) or all 2-D with the same number of rows (``fit_many``).
    """
    where = f"history[{run!r}]" if run else "history"
    arrays: dict[str, np.ndarray] = {}
    for key, value in history.items():
        try:
            a = np.asarray(value)
        except ValueError:  # ragged
            a = np.asarray(None)
        if a.dtype.kind not in "biuf":
            raise TypeError(
                f"plot_history: {where}[{key!r}] expected numbers (a list of floats, or a (models, epochs) array "
                f"from fit_many); given {type(value).__name__} {reprlib.repr(value)}."
            )
        if a.ndim not in (1, 2):
            raise ValueError(
                f"plot_history: {where}[{key!r}] expected a 1-D sequence (fit: one value per epoch or step) or a 2-D "
                f"(models, epochs) array (fit_many); given an array of shape {a.shape}."
            )
        if a.size:
            arrays[key] = a.astype(np.float64)
    if not arrays:
        return {}, None
    first, ref = next(iter(arrays.items()))
    for key, a in arrays.items():
        if a.ndim != ref.ndim:
            raise ValueError(
                f"plot_history: {where}[{key!r}] has shape {a.shape} but {where}[{first!r}] has shape {ref.shape}; "
                "expected every entry 1-D (a fit history) or every entry 2-D (a fit_many history, (models, epochs))."
            )
        if a.ndim == 2 and len(a) != len(ref):
            raise ValueError(
                f"plot_history: {where}[{key!r}] has {len(a)} models (shape {a.shape}) but {where}[{first!r}] has "
                f"{len(ref)} (shape {ref.shape}); expected one row per model in every entry of a fit_many history."
            )
    models = len(ref) if ref.ndim == 2 else None
    if configs is not None and len(configs) != models:
        raise ValueError(
            f"plot_history: the result has len(configs) = {len(configs)} but history[{first!r}] has shape {ref.shape}; "
            "expected (models, epochs) arrays with one row per config."
        )
    labels = None if models is None else [f"model {k}" for k in range(models)]
    if configs is not None:
        labels = [_config_label(c) for c in configs]
    return {k: np.atleast_2d(a) for k, a in arrays.items()}, labels


def _panel(key: str) -> str:
    """The panel a history key is drawn in: ``val_x`` in ``x``'s, ``step/x/layer`` in ``step/x/*``."""
    if not key.startswith("step/"):
        return key.removeprefix("val_")
    kind, _, layer = key.removeprefix("step/").partition("/")
    return f"step/{kind}/*" if layer else key


def _unwrap_history(history: Any) -> tuple[Mapping[str, Any], Sequence[Any] | None]:
    """``(history, configs)`` of a history, runs or a fit / fit_many result (configs None unless fit_many)."""
    if isinstance(history, Mapping):
        return history, None
    if not isinstance(getattr(history, "history", None), Mapping):
        raise TypeError(
            "plot_history: argument `history` expected a history ({name: values}), runs ({run: history}) "
            f"or a fit / fit_many result; given {type(history).__name__}."
        )
    return history.history, getattr(history, "configs", None)


def _panel_names(histories: Mapping[str, Mapping[str, Any]], metrics: Sequence[str] | None) -> list[str]:
    """The panels to draw: ``metrics`` (checked) or all, per-epoch ones first."""
    names = list(dict.fromkeys(_panel(key) for h in histories.values() for key in h))
    names.sort(key=lambda n: n.startswith("step/"))  # per-epoch panels first (a stable sort)
    if metrics is not None:
        missing = [m for m in metrics if m not in names]
        if missing:
            raise KeyError(f"plot_history: metrics {missing} are not in the history; available: {names}.")
        names = list(metrics)
    return names


def _plot_layers(ax: Any, name: str, kind: str, run: str, series: dict, layer: int) -> int:
    """One curve per layer of panel ``name`` (the mean over models); returns the next layer's colour index."""
    for key in (k for k in series if _panel(k) == name):
        label = key.removeprefix(f"step/{kind}/")
        y = series[key].mean(axis=0)
        ax.plot(np.arange(1, len(y) + 1), y, color=f"C{layer}", label=f"{run}: {label}" if run else label)
        layer += 1
    return layer


def _plot_run(
    ax: Any,
    name: str,
    colour: int,
    run: str,
    series: dict,
    labels: list[str] | None,
    model_lines: dict[int, Any] | None,
) -> bool:
    """A run's training (solid) and validation (dashed) curves of panel ``name``, one per model.

    Records each model's first labelled line in ``model_lines`` (None: no figure legend of models). Returns
    whether a validation line went unlabelled, so the panel's legend needs a train / val style key.
    """
    val_unlabelled = False
    parts = [(name, "-", "train")] + ([] if name.startswith("step/") else [(f"val_{name}", "--", "val")])
    for key, style, part in parts:
        if key not in series:
            continue
        values = series[key]
        for k, row in enumerate(values):
            if run:  # several runs: the run's name on its first training line (style legend below)
                label = run if part == "train" and k == 0 else "_nolegend_"
            elif labels is None:
                label = part
            else:  # one fit_many history: each model's label on its training line
                label = labels[k] if part == "train" and k < _MAX_LABELLED else "_nolegend_"
            val_unlabelled |= part == "val" and label == "_nolegend_"
            (line,) = ax.plot(
                np.arange(1, len(row) + 1),
                row,
                style,
                color=f"C{colour}" if run else f"C{k}",
                label=label,
                marker="o" if len(row) <= 30 else None,
                markersize=3,
                linewidth=1.6 if len(values) == 1 else 1.0,
            )
            if model_lines is not None and label != "_nolegend_":
                model_lines.setdefault(k, line)
    return val_unlabelled


def _style_panel(ax: Any, name: str, models: list[str], logy: bool | Sequence[str], val_unlabelled: bool) -> None:
    """A panel's title, axis labels and scale, grid, integer x ticks and legend (less the models' labels)."""
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    kind = name.removeprefix("step/").removesuffix("/*")
    per_step, per_layer = name.startswith("step/"), name.endswith("/*")
    ax.set_title(f"{kind} per layer" if per_layer else f"{kind} per step" if per_step else name)
    ax.set_xlabel("step" if per_step else "epoch")
    ax.set_ylabel(f"{kind} (mean over models)" if per_layer and models else kind)
    if logy is True or (not isinstance(logy, bool) and name in logy):
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    handles = [h for h in ax.get_legend_handles_labels()[0] if h.get_label() not in models]
    if val_unlabelled:
        handles += [Line2D([], [], color="0.3", label="train"), Line2D([], [], color="0.3", ls="--", label="val")]
    if handles:
        ax.legend(handles=handles, fontsize=8 if len(handles) <= 12 else 6)


def _draw_panel(
    ax: Any,
    name: str,
    runs: dict[str, tuple[dict, list[str] | None]],
    models: list[str],
    model_lines: dict[int, Any],
    logy: bool | Sequence[str],
) -> None:
    """Panel ``name``: every run's curves, then the panel's labels and legend."""
    kind = name.removeprefix("step/").removesuffix("/*")
    val_unlabelled, layer = False, 0
    for i, (run, (series, labels)) in enumerate(runs.items()):
        if name.endswith("/*"):  # one curve per layer, the mean over models
            layer = _plot_layers(ax, name, kind, run, series, layer)
        else:
            val_unlabelled |= _plot_run(ax, name, i, run, series, labels, model_lines if models else None)
    _style_panel(ax, name, models, logy, val_unlabelled)


def plot_history(
    history: Any,
    *,
    metrics: Sequence[str] | None = None,
    logy: bool | Sequence[str] = False,
    title: str | None = None,
    path: str | os.PathLike | None = None,
) -> Any:
    """Training curves: one panel per metric, training solid and validation (``val_*``) dashed.

    Per-epoch series are drawn against the epoch (x = 1, 2, ...), per-step series (keys ``"step/x"``, one value
    per optimizer step) in panels of their own, titled ``"x per step"``, against the step (x = 1, 2, ...). The
    per-layer series of one kind (``"step/x/<layer>"``) share one panel ``"step/x/*"``, titled ``"x per layer"``,
    one curve per layer (for a fit_many history: the mean over the models).

    Args:
      history: ``fit(...).history`` (``{"loss": [...], "val_loss": [...], ...}``) or the ``FitResult``; a
        ``fit_many`` result (one curve per model, labelled by its config, e.g. ``"seed=0, learning_rate=0.01"``)
        or its history of ``(models, epochs)`` arrays (labelled ``"model 0"``, ``"model 1"``, ...); or several
        runs to compare, ``{"sgd": history, "adam": history}`` (one colour per run). A fit_many history's
        models are named once, in a figure legend right of the panels (the first 10 of them).
      metrics: the panels to draw (default: all, per-epoch ones first, in order; ``val_x`` joins ``x``'s panel),
        by name: ``"loss"``, ``"step/grad_norm"``, ``"step/grad_norm/*"``.
      logy: log-scale y axes (True for all panels, or the panel names to log-scale).
      title: the figure's title. path: save a PNG there.

    Returns:
      The matplotlib Figure: one Axes per panel, up to 3 per row (unused grid cells are hidden).

    Raises:
      ValueError: ``history`` is empty; an entry is not 1-D or 2-D; 1-D and 2-D entries are mixed, or 2-D
        entries differ in their number of models; a result's configs do not match its models.
      TypeError: ``history`` is not a history or a result, mixes metrics and runs, or has a non-numeric entry.
      KeyError: a name in ``metrics`` is not in the history.
      ImportError: matplotlib is not installed.

    Example:
      >>> history = {"loss": [1.0, 0.6, 0.4], "val_loss": [1.1, 0.8, 0.7], "accuracy": [0.5, 0.7, 0.8]}
      >>> fig = nnjax.plots.plot_history(history, logy=["loss"])   # path="curves.png" would also save it
      >>> [ax.get_title() for ax in fig.axes]
      ['loss', 'accuracy']
      >>> fig = nnjax.plots.plot_history({"sgd": history, "adam": history}, metrics=["loss"])   # two runs
      >>> [line.get_label() for line in fig.axes[0].lines]
      ['sgd', '_nolegend_', 'adam', '_nolegend_']
      >>> [line.get_label() for line in fig.axes[0].get_legend().get_lines()]
      ['sgd', 'adam', 'train', 'val']
      >>> many = {"loss": np.array([[1.0, 0.5], [0.9, 0.2]]), "step/grad_norm": np.ones((2, 6))}   # 2 models
      >>> fig = nnjax.plots.plot_history(many)   # given the fit_many result itself, labels are its configs
      >>> [ax.get_title() for ax in fig.axes], [line.get_label() for line in fig.axes[0].lines]
      (['loss', 'grad_norm per step'], ['model 0', 'model 1'])
    """
    history, configs = _unwrap_history(history)
    histories = _runs(history)
    runs = {run: _series(run, h, configs) for run, h in histories.items()}
    names = _panel_names(histories, metrics)
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig = _figure(figsize=(4.6 * cols, 3.4 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).reshape(-1)
    models = runs.get("", ({}, None))[1] or []  # the models' labels of one fit_many history: one figure legend
    model_lines: dict[int, Any] = {}
    for ax, name in zip(axes, names, strict=False):
        _draw_panel(ax, name, runs, models, model_lines, logy)
    if model_lines:  # the models' labels once, beside the panels
        more = f"first {_MAX_LABELLED} of {len(models)} models" if len(models) > _MAX_LABELLED else None
        lines = [model_lines[k] for k in sorted(model_lines)]
        fig.legend(handles=lines, loc="outside right upper", fontsize=8, title=more, title_fontsize=8)
    for ax in axes[len(names) :]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    return _finish(fig, path)


# --- activation functions -----------------------------------------------------------------------------


def _activation_table() -> dict[str, tuple[Callable[[Any], Any], str]]:
    return {
        "step": (lambda x: act.step(x, 0.0), "1 if x ≥ 0 else 0"),
        "sigmoid": (act.sigmoid, "1 / (1 + e^-x)"),
        "tanh": (act.tanh, "tanh(x)"),
        "relu": (act.relu, "max(0, x)"),
        "leaky_relu": (lambda x: act.leaky_relu(x, 0.1), "x if x ≥ 0 else 0.1·x"),
        "elu": (act.elu, "x if x > 0 else e^x - 1"),
        "gelu": (act.gelu, "x·Φ(x) (tanh approx.)"),
        "softplus": (act.softplus, "log(1 + e^x)"),
    }


ACTIVATIONS = tuple(_activation_table())


def plot_activations(
    names: Sequence[str] | None = None,
    *,
    x_range: tuple[float, float] = (-4.0, 4.0),
    derivatives: bool = True,
    ncols: int = 4,
    path: str | os.PathLike | None = None,
) -> Any:
    """A gallery of activation functions (solid) and their derivatives (dashed, by ``jax.grad``).

    Args:
      names: which to draw, from ``ACTIVATIONS`` (step, sigmoid, tanh, relu, leaky_relu, elu, gelu,
        softplus); default all. leaky_relu is drawn with slope 0.1 so the leak is visible.
      x_range: the input interval. derivatives: draw f'(x) too. ncols: panels per row.
      path: save a PNG there.

    Returns:
      The matplotlib Figure: one Axes per activation, titled with its formula.

    Raises:
      ValueError: an unknown activation name.
      ImportError: matplotlib is not installed.

    Example:
      >>> fig = nnjax.plots.plot_activations(["relu", "tanh"], ncols=2)
      >>> [ax.get_title() for ax in fig.axes]
      ['relu: max(0, x)', 'tanh: tanh(x)']
    """
    table = _activation_table()
    names = list(names or table)
    unknown = [n for n in names if n not in table]
    if unknown:
        raise ValueError(f"plot_activations: unknown activations {unknown}; choose from {list(table)}.")
    x = jnp.linspace(*x_range, 801)
    cols = min(ncols, len(names))
    rows = math.ceil(len(names) / cols)
    fig = _figure(figsize=(3.3 * cols, 2.9 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).reshape(-1)
    for ax, name in zip(axes, names, strict=False):
        fn, formula = table[name]
        y = np.asarray(fn(x))
        ax.axhline(0, color="0.75", linewidth=0.8)
        ax.axvline(0, color="0.75", linewidth=0.8)
        if name == "step":  # draw the jump as a jump, not a steep line
            ax.plot(np.asarray(x[x < 0]), y[np.asarray(x < 0)], color="C0", linewidth=2, label="f(x)")
            ax.plot(np.asarray(x[x >= 0]), y[np.asarray(x >= 0)], color="C0", linewidth=2)
            ax.plot([0], [1], "o", color="C0", markersize=4)
            ax.plot([0], [0], "o", color="C0", markersize=4, markerfacecolor="white")
        else:
            ax.plot(np.asarray(x), y, color="C0", linewidth=2, label="f(x)")
        if derivatives:
            dy = np.asarray(jax.vmap(jax.grad(lambda v, fn=fn: fn(v)))(x))
            label = "f'(x) (0 a.e., undefined at 0)" if name == "step" else "f'(x)"
            ax.plot(np.asarray(x), dy, "--", color="C1", linewidth=1.6, label=label)
        ax.set_title(f"{name}: {formula}", fontsize=9)
        ax.set_xlim(*x_range)
        if name == "step":
            ax.set_ylim(-0.15, 1.35)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    for ax in axes[len(names) :]:
        ax.set_visible(False)
    return _finish(fig, path)


# --- the network from its weights ---------------------------------------------------------------------

# dense_stack's result: [(w (in, out), b or None, name, [activation names])]
_Stack = list[tuple[np.ndarray, np.ndarray | None, str, list[str]]]


def dense_stack(model: Layer, params: Any) -> list[tuple[np.ndarray, np.ndarray | None, str, list[str]]]:
    """The dense layers of a small feed-forward net: ``[(w (in, out), b or None, name, [activation names])]``.

    ``model`` is a ``Dense`` or a ``serial`` of Dense and parameter-free layers (activations, Dropout,
    Identity). Raises ValueError for anything else, naming the layer.
    """
    found = children(model)
    if found is None:
        layers, layer_params = [model], [params]
    elif found[0] == "serial":
        layers = list(found[1])
        layer_params = [params[name] for name in child_keys(model, found[1])]
    else:
        raise ValueError(f"plot_network: expected a Dense layer or a serial of dense layers, given a {found[0]}.")
    stack: list[tuple[np.ndarray, np.ndarray | None, str, list[str]]] = []
    for i, (layer, p) in enumerate(zip(layers, layer_params, strict=True)):
        leaves = jax.tree.leaves(p)
        if isinstance(p, Mapping) and "w" in p and np.ndim(p["w"]) == 2:
            b = p.get("b")
            stack.append(
                (np.asarray(p["w"], np.float64), None if b is None else np.asarray(b, np.float64), layer.name, [])
            )
        elif not leaves:
            if stack:
                stack[-1][3].append(layer.name)
        else:
            raise ValueError(
                f"plot_network: serial[{i}] {layer.name} has parameters of shapes "
                f"{[tuple(np.shape(a)) for a in leaves]}; plot_network draws dense networks only (Dense layers "
                f"and parameter-free layers such as activations)."
            )
    if not stack:
        raise ValueError("plot_network: the model has no Dense layer to draw.")
    return stack


_GAP, _RADIUS = 2.6, 0.22  # plot_network: the distance between layers' columns, and a neuron's radius


def _check_network(
    stack: _Stack,
    sizes: list[int],
    input_shape: tuple[int, ...] | None,
    max_neurons: int,
    input_names: Sequence[str] | None,
    output_names: Sequence[str] | None,
) -> None:
    """Raise ValueError unless the dense stack chains, fits ``max_neurons`` and matches the shape and names."""
    if input_shape is not None and tuple(input_shape) != (sizes[0],):
        raise ValueError(
            f"plot_network: argument `input_shape` expected ({sizes[0]},) to match the first layer's weights "
            f"{stack[0][0].shape}, given {tuple(input_shape)}. Hint: plot_network draws nets on feature vectors."
        )
    for (w, *_), (w_next, *_) in zip(stack, stack[1:], strict=False):
        if w.shape[1] != w_next.shape[0]:
            raise ValueError(f"plot_network: consecutive weights {w.shape} and {w_next.shape} do not chain.")
    if max(sizes) > max_neurons:
        raise ValueError(
            f"plot_network: the widest layer has {max(sizes)} neurons, more than max_neurons={max_neurons}; "
            f"layer sizes {sizes}. Hint: draw a smaller net, or raise max_neurons."
        )
    for names, n, what in ((input_names, sizes[0], "input_names"), (output_names, sizes[-1], "output_names")):
        if names is not None and len(names) != n:
            raise ValueError(f"plot_network: argument `{what}` expected {n} names, given {len(names)}.")


def _drawn(w: np.ndarray, hide_below: float, only_positive: bool) -> np.ndarray:
    """Which synapses of weights ``w`` are drawn: ``|w| >= hide_below``, and ``w > 0`` if ``only_positive``."""
    keep = np.abs(w) >= hide_below
    return keep & (w > 0) if only_positive else keep


def _draw_synapses(
    ax: Any, stack: _Stack, visible: list[np.ndarray], ys: list[np.ndarray], scale: float, label_weights: bool
) -> None:
    """The visible synapses as lines, width and opacity by ``|w| / scale``, colour by sign; weights on them."""
    for layer, ((w, _b, _name, _acts), keep) in enumerate(zip(stack, visible, strict=True)):
        x0, x1 = layer * _GAP, (layer + 1) * _GAP
        for i, j in zip(*np.nonzero(keep), strict=True):
            value = w[i, j]
            strength = abs(value) / scale if scale > 0 else 0.0
            colour = POSITIVE if value > 0 else NEGATIVE
            ax.plot(
                [x0 + _RADIUS, x1 - _RADIUS],
                [ys[layer][i], ys[layer + 1][j]],
                color=colour,
                linewidth=0.6 + 4.4 * strength,
                alpha=0.35 + 0.6 * strength,
                solid_capstyle="round",
                zorder=1,
            )
            if label_weights:  # stagger labels along the lines so lines from one neuron don't stack them
                t = 0.22 + 0.5 * (j / max(len(ys[layer + 1]) - 1, 1))
                tx, ty = x0 + t * (x1 - x0), ys[layer][i] + t * (ys[layer + 1][j] - ys[layer][i])
                ax.text(
                    tx,
                    ty,
                    f"{value:.2f}",
                    fontsize=7,
                    ha="center",
                    va="center",
                    color=colour,
                    zorder=4,
                    bbox=dict(boxstyle="round,pad=0.1", fc="white", ec="none", alpha=0.85),
                )


def _draw_neurons(ax: Any, stack: _Stack, sizes: list[int], ys: list[np.ndarray], label_weights: bool) -> None:
    """The neurons as circles, column by column, with their biases and each column's heading."""
    from matplotlib.patches import Circle

    fills = ["#d9f0d3"] + ["#deebf7"] * (len(sizes) - 2) + ["#fdd0a2"]
    for layer, (n, y) in enumerate(zip(sizes, ys, strict=True)):
        x = layer * _GAP
        for k in range(n):
            ax.add_patch(Circle((x, y[k]), _RADIUS, facecolor=fills[layer], edgecolor="0.2", linewidth=1.2, zorder=3))
            if layer > 0 and label_weights and stack[layer - 1][1] is not None:
                ax.text(
                    x,
                    y[k] - _RADIUS - 0.12,
                    f"b={stack[layer - 1][1][k]:.2f}",
                    fontsize=6.5,
                    ha="center",
                    va="top",
                    color="0.3",
                    zorder=4,
                )
        if layer == 0:
            heading = f"input ({n})\n"
        else:
            kind = "output" if layer == len(sizes) - 1 else f"hidden {layer}"
            acts = stack[layer - 1][3]
            heading = f"{kind} ({n})" + (f"\n{', '.join(acts)}" if acts else "\n")
        ax.text(x, max(yy.max() for yy in ys) + 0.75, heading, ha="center", va="bottom", fontsize=9)


def _name_neurons(
    ax: Any,
    sizes: list[int],
    ys: list[np.ndarray],
    input_names: Sequence[str] | None,
    output_names: Sequence[str] | None,
) -> None:
    """The input neurons' names left of them, the output neurons' right (default ``x1, ...`` and ``y1, ...``)."""
    names = list(input_names) if input_names is not None else [f"x{k + 1}" for k in range(sizes[0])]
    for k, name in enumerate(names):
        ax.text(-_RADIUS - 0.15, ys[0][k], name, ha="right", va="center", fontsize=9)
    out_names = list(output_names) if output_names is not None else [f"y{k + 1}" for k in range(sizes[-1])]
    for k, name in enumerate(out_names):
        ax.text((len(sizes) - 1) * _GAP + _RADIUS + 0.15, ys[-1][k], name, ha="left", va="center", fontsize=9)


def _frame_network(fig: Any, ax: Any, sizes: list[int], ys: list[np.ndarray], own_figure: bool) -> None:
    """The Axes' limits around the drawing, equal aspect, no axes; an own figure sized to the drawing."""
    top, bottom = max(y.max() for y in ys) + 1.6, min(y.min() for y in ys) - 0.9
    ax.set_xlim(-1.9, (len(sizes) - 1) * _GAP + 1.9)
    ax.set_ylim(bottom, top)
    ax.set_aspect("equal")
    ax.axis("off")
    if own_figure:  # size the figure to the drawing, about 0.62 inch per unit
        fig.set_size_inches(max(4.0, 0.62 * (ax.get_xlim()[1] - ax.get_xlim()[0]) + 0.6), 0.62 * (top - bottom) + 0.7)


def _network_legend(
    ax: Any, stack: _Stack, n_lines: int, hide_below: float, only_positive: bool, title: str | None
) -> None:
    """The sign legend below the drawing, and the title (default: how many synapses are drawn, and by what rule)."""
    from matplotlib.lines import Line2D

    rule = "w > 0" if only_positive else None
    if hide_below > 0:
        rule = f"w ≥ {hide_below:g}" if only_positive else f"|w| ≥ {hide_below:g}"
    total = int(sum(w.size for w, *_ in stack))
    handles = [Line2D([], [], color=POSITIVE, linewidth=2.5, label="positive weight")]
    if not only_positive:
        handles.append(Line2D([], [], color=NEGATIVE, linewidth=2.5, label="negative weight"))
    ax.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, -0.02), ncol=2, fontsize=8, frameon=False)
    shown = f"{n_lines} of {total} synapses drawn ({rule})" if rule else f"all {total} synapses"
    ax.set_title(title or f"{shown}; line width ∝ |w|", fontsize=10)


def plot_network(
    model: Layer,
    params: Any,
    input_shape: tuple[int, ...] | None = None,
    *,
    hide_below: float = 0.0,
    only_positive: bool = False,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    show_weights: bool | str = "auto",
    max_neurons: int = 32,
    title: str | None = None,
    ax: Any = None,
    path: str | os.PathLike | None = None,
) -> Any:
    """The network drawn from its real weights: neurons as circles by layer, synapses as lines.

    A line's width follows ``|w|`` (relative to the largest weight drawn) and its colour the sign
    (blue positive, red negative). Hidden and output neurons show their activation above the column.

    Args:
      model: a ``Dense`` or a ``serial`` of Dense and parameter-free layers.
      params: its params (or a ``TrainState``, whose ``.params`` is used).
      input_shape: one example's shape, checked against the first layer, e.g. ``(4,)``.
      hide_below: do not draw synapses with ``|w| < hide_below`` (weak ones).
      only_positive: draw a line only where the weight is positive (and ``>= hide_below``), as the
        source texts' house-price figure does.
      input_names, output_names: labels for the input and output neurons.
      show_weights: write each weight on its line, and each bias under its neuron (``"auto"``: when at
        most 12 lines are drawn).
      max_neurons: the widest layer drawable; a larger net raises ValueError.
      title: figure title. ax: draw into this Axes. path: save a PNG there.

    Returns:
      The matplotlib Figure (the one holding ``ax`` when ``ax`` is given), with one Axes for the drawing.

    Raises:
      ValueError: the model is not a small dense net (a layer with other parameters, more than
        ``max_neurons`` neurons in a layer), ``input_shape`` does not match, or ``input_names`` /
        ``output_names`` have the wrong length.
      ImportError: matplotlib is not installed.

    Example:
      >>> model = nnjax.serial(nnjax.Dense(3), nnjax.Tanh(), nnjax.Dense(2))
      >>> params, _ = model.init(jax.random.key(0), (2,))
      >>> fig = nnjax.plots.plot_network(model, params, (2,), input_names=["size", "age"])
      >>> len(fig.axes), fig.axes[0].get_title()
      (1, 'all 12 synapses; line width ∝ |w|')
    """
    params = getattr(params, "params", params)
    stack = dense_stack(model, params)
    sizes = [stack[0][0].shape[0]] + [w.shape[1] for w, *_ in stack]
    _check_network(stack, sizes, input_shape, max_neurons, input_names, output_names)
    visible = [_drawn(w, hide_below, only_positive) for w, *_ in stack]
    n_lines = int(sum(v.sum() for v in visible))
    scale = max((np.abs(w)[v].max() for (w, *_), v in zip(stack, visible, strict=True) if v.any()), default=1.0)
    label_weights = show_weights is True or (show_weights == "auto" and n_lines <= 12)

    ys = [(np.arange(n)[::-1] - (n - 1) / 2) * 1.0 for n in sizes]
    own_figure = ax is None
    if own_figure:
        fig = _figure(layout="constrained")
        ax = fig.add_subplot()
    else:
        fig = ax.figure
    _draw_synapses(ax, stack, visible, ys, scale, label_weights)
    _draw_neurons(ax, stack, sizes, ys, label_weights)
    _name_neurons(ax, sizes, ys, input_names, output_names)
    _frame_network(fig, ax, sizes, ys, own_figure)
    _network_legend(ax, stack, n_lines, hide_below, only_positive, title)
    return _finish(fig, path)


# --- decision boundary ----------------------------------------------------------------------------------


def _params_state(train_state: Any) -> tuple[Any, Any]:
    if hasattr(train_state, "params"):
        return train_state.params, getattr(train_state, "state", {})
    if isinstance(train_state, tuple) and len(train_state) == 2:
        return train_state
    return train_state, {}


def plot_decision_boundary(
    model: Layer,
    train_state: Any,
    x: Any,
    y: Any,
    *,
    resolution: int = 200,
    padding: float = 0.1,
    class_names: Sequence[str] | None = None,
    title: str | None = None,
    ax: Any = None,
    path: str | os.PathLike | None = None,
) -> Any:
    """The regions a 2-D classifier assigns to each class, with the data points on top.

    Args:
      model: a classifier of 2 input features: outputs ``(batch, classes)`` scores, or ``(batch, 1)`` /
        ``(batch,)`` one score (a probability in [0, 1], else a logit) for two classes.
      train_state: a ``TrainState``, a ``(params, state)`` pair, or params alone.
      x: ``(n, 2)`` points; y: ``(n,)`` integer labels.
      resolution: grid points per axis. padding: margin around the data, as a fraction of its range.
      class_names: legend labels. title: axes title. ax: draw into this Axes. path: save a PNG there.

    Returns:
      The matplotlib Figure (the one holding ``ax`` when ``ax`` is given): the regions and points in one
      Axes, plus a colour-bar Axes for a one-score model.

    Raises:
      ValueError: ``x`` is not ``(n, 2)``, or ``y`` has another number of labels.
      ImportError: matplotlib is not installed.

    Example:
      >>> x, y = nnjax.data.make_moons(40)
      >>> model = nnjax.serial(nnjax.Dense(3), nnjax.Tanh(), nnjax.Dense(2))
      >>> params, state = model.init(jax.random.key(0), (2,))
      >>> fig = nnjax.plots.plot_decision_boundary(model, (params, state), x, y, resolution=30)
      >>> len(fig.axes), fig.axes[0].get_xlabel(), fig.axes[0].get_ylabel()
      (1, 'x1', 'x2')
    """
    x, y = np.asarray(x), np.asarray(y).reshape(-1)
    if x.ndim != 2 or x.shape[1] != 2:
        raise ValueError(f"plot_decision_boundary: argument `x` expected shape (n, 2), given {x.shape}.")
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"plot_decision_boundary: `x` has {x.shape[0]} points but `y` has {y.shape[0]} labels.")
    params, state = _params_state(train_state)
    low, high = x.min(axis=0), x.max(axis=0)
    margin = padding * np.maximum(high - low, 1e-6)
    g0, g1 = np.meshgrid(
        np.linspace(low[0] - margin[0], high[0] + margin[0], resolution),
        np.linspace(low[1] - margin[1], high[1] + margin[1], resolution),
    )
    grid = jnp.asarray(np.stack([g0.ravel(), g1.ravel()], axis=1), dtype=jnp.float32)
    out = np.asarray(jax.jit(lambda p, s, g: model.apply(p, s, g, train=False)[0])(params, state, grid), np.float64)
    if ax is None:
        fig = _figure(figsize=(5.6, 4.8), layout="constrained")
        ax = fig.add_subplot()
    else:
        fig = ax.figure
    from matplotlib.colors import ListedColormap

    labels = np.unique(y)
    if out.ndim == 2 and out.shape[1] > 1:
        n_classes = out.shape[1]
        colours = [f"C{k % 10}" for k in range(n_classes)]
        classes = out.argmax(axis=1).reshape(g0.shape)
        ax.contourf(g0, g1, classes, levels=np.arange(n_classes + 1) - 0.5, cmap=ListedColormap(colours), alpha=0.3)
        ax.contour(g0, g1, classes, levels=np.arange(n_classes) + 0.5, colors="0.25", linewidths=0.8)
    else:
        score = out.reshape(-1)
        prob = score if (score.min() >= 0 and score.max() <= 1) else 1.0 / (1.0 + np.exp(-score))
        prob = prob.reshape(g0.shape)
        colours = ["C0", "C1"]
        cs = ax.contourf(g0, g1, prob, levels=np.linspace(0, 1, 11), cmap="RdBu_r", alpha=0.45)
        ax.contour(g0, g1, prob, levels=[0.5], colors="0.15", linewidths=1.5)
        fig.colorbar(cs, ax=ax, label="P(class 1)")
    for k in labels:
        mask = y == k
        name = class_names[int(k)] if class_names is not None else f"class {int(k)}"
        ax.scatter(
            x[mask, 0],
            x[mask, 1],
            s=14,
            color=colours[int(k) % len(colours)],
            edgecolors="black",
            linewidths=0.4,
            label=name,
            zorder=3,
        )
    ax.set_xlabel("x1")
    ax.set_ylabel("x2")
    ax.legend(fontsize=8, loc="best")
    if title:
        ax.set_title(title)
    return _finish(fig, path)


# --- confusion matrix -----------------------------------------------------------------------------------


def plot_confusion_matrix(
    matrix: Any,
    class_names: Sequence[str] | None = None,
    *,
    normalize: bool = False,
    title: str | None = None,
    cmap: str = "Blues",
    ax: Any = None,
    path: str | os.PathLike | None = None,
) -> Any:
    """A confusion matrix as a heat map: row = true class, column = predicted (``nnjax.metrics.confusion_matrix``).

    Args:
      matrix: ``(classes, classes)`` counts. class_names: tick labels.
      normalize: show each row as fractions of the true class (recall on the diagonal).
      title: default "Confusion matrix (accuracy A)". cmap: colour map. ax: draw into this Axes.
      path: save a PNG there.

    Returns:
      The matplotlib Figure (the one holding ``ax`` when ``ax`` is given): the heat map and its colour bar.

    Raises:
      ValueError: ``matrix`` is not square and 2-D, or ``class_names`` has the wrong length.
      ImportError: matplotlib is not installed.

    Example:
      >>> matrix = np.array([[5, 1], [2, 4]])
      >>> fig = nnjax.plots.plot_confusion_matrix(matrix, ["cat", "dog"], normalize=True)
      >>> len(fig.axes), fig.axes[0].get_title()   # the heat map and its colour bar
      (2, 'Confusion matrix (accuracy 75.0%)')
    """
    counts = np.asarray(matrix, np.float64)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1]:
        raise ValueError(
            f"plot_confusion_matrix: argument `matrix` expected a square 2-D array, given shape {counts.shape}."
        )
    k = counts.shape[0]
    if class_names is not None and len(class_names) != k:
        raise ValueError(f"plot_confusion_matrix: argument `class_names` expected {k} names, given {len(class_names)}.")
    shown = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1) if normalize else counts
    if ax is None:
        size = max(4.0, 0.5 * k + 2.5)
        fig = _figure(figsize=(size + 0.8, size), layout="constrained")
        ax = fig.add_subplot()
    else:
        fig = ax.figure
    image = ax.imshow(shown, cmap=cmap, vmin=0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    names = list(class_names) if class_names is not None else [str(i) for i in range(k)]
    ax.set_xticks(
        range(k),
        names,
        rotation=45 if max(len(n) for n in names) > 3 else 0,
        ha="right" if max(len(n) for n in names) > 3 else "center",
    )
    ax.set_yticks(range(k), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if k <= 20:
        threshold = shown.max() / 2 if shown.max() > 0 else 1
        for i in range(k):
            for j in range(k):
                text = f"{shown[i, j]:.2f}" if normalize else f"{int(counts[i, j])}"
                ax.text(
                    j,
                    i,
                    text,
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if shown[i, j] > threshold else "black",
                )
    accuracy = np.trace(counts) / max(counts.sum(), 1)
    ax.set_title(title or f"Confusion matrix (accuracy {accuracy:.1%})")
    return _finish(fig, path)


# --- image grids ----------------------------------------------------------------------------------------


def _as_images(images: Any) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim == 2:  # flattened square images
        side = math.isqrt(images.shape[1])
        if side * side != images.shape[1]:
            raise ValueError(
                f"plot_images: argument `images` of shape {images.shape} are flat vectors whose length is not a "
                f"square; reshape them to (n, height, width) first."
            )
        images = images.reshape(-1, side, side)
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] not in (3, 4)):
        raise ValueError(
            f"plot_images: argument `images` expected (n, h, w), (n, h, w, 1), (n, h, w, 3) or flat (n, h*w), "
            f"given shape {images.shape}."
        )
    return images


def plot_images(
    images: Any,
    labels: Any = None,
    *,
    predictions: Any = None,
    class_names: Sequence[str] | None = None,
    ncols: int = 8,
    max_images: int = 64,
    cmap: str = "gray",
    vmin: float | None = None,
    vmax: float | None = None,
    title: str | None = None,
    path: str | os.PathLike | None = None,
) -> Any:
    """A grid of images (digits, Fashion-MNIST, GAN samples) with optional labels and predictions.

    Grey images share one intensity scale (the data's min and max), so generated samples in [-1, 1]
    and pixels in 0..255 both display as they are.

    Args:
      images: ``(n, h, w)``, ``(n, h, w, 1|3|4)`` or flat square ``(n, h*w)``.
      labels: ``(n,)`` true labels shown above each image. predictions: ``(n,)`` predicted classes; the
        title becomes "pred (true)", green when right and red when wrong.
      class_names: names for label values. ncols: images per row. max_images: draw at most this many.
      cmap: colour map for grey images. vmin, vmax: the intensity range (default the data's; pass
        ``-m, m`` with a diverging map such as ``"RdBu_r"`` to centre zero). title: figure title.
      path: save a PNG there.

    Returns:
      The matplotlib Figure: a grid of ``ncols`` Axes per row (axes off), one per image drawn.

    Raises:
      ValueError: ``images`` is empty or of an unsupported shape (e.g. flat vectors of non-square length).
      ImportError: matplotlib is not installed.

    Example:
      >>> images, labels = np.zeros((6, 8, 8)), np.array([0, 1, 2, 0, 1, 2])
      >>> fig = nnjax.plots.plot_images(images, labels, predictions=[0, 1, 2, 0, 1, 0], ncols=3)
      >>> len(fig.axes), [ax.get_title() for ax in fig.axes[4:]]   # "pred (true)"
      (6, ['1 (1)', '0 (2)'])
    """
    images = _as_images(images)[:max_images]
    n = len(images)
    if n == 0:
        raise ValueError("plot_images: argument `images` is empty.")
    labels = None if labels is None else np.asarray(labels).reshape(-1)[:n]
    predictions = None if predictions is None else np.asarray(predictions).reshape(-1)[:n]
    name = (
        (lambda v: class_names[int(v)])
        if class_names is not None
        else (lambda v: str(v.item() if hasattr(v, "item") else v))
    )
    cols = min(ncols, n)
    rows = math.ceil(n / cols)
    titled = labels is not None or predictions is not None
    fig = _figure(figsize=(1.25 * cols, (1.25 + 0.25 * titled) * rows + (0.4 if title else 0)), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).reshape(-1)
    vmin = float(images.min()) if vmin is None else float(vmin)
    vmax = float(images.max()) if vmax is None else float(vmax)
    if vmax <= vmin:
        vmax = vmin + 1
    for i, ax in enumerate(axes):
        ax.set_axis_off()
        if i >= n:
            continue
        if images.ndim == 3:
            ax.imshow(images[i], cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
        else:
            rgb = images[i].astype(np.float64)
            ax.imshow(np.clip((rgb - vmin) / (vmax - vmin), 0, 1), interpolation="nearest")
        if predictions is not None:
            right = labels is None or predictions[i] == labels[i]
            text = name(predictions[i]) + ("" if labels is None else f" ({name(labels[i])})")
            ax.set_title(text, fontsize=8, color="#2ca02c" if right else "#d62728")
        elif labels is not None:
            ax.set_title(name(labels[i]), fontsize=8)
    if title:
        fig.suptitle(title)
    return _finish(fig, path)


__all__ = [
    "ACTIVATIONS",
    "dense_stack",
    "plot_activations",
    "plot_confusion_matrix",
    "plot_decision_boundary",
    "plot_history",
    "plot_images",
    "plot_network",
]
