"""Plots run headless (Agg), write non-empty PNGs, and draw what the weights say."""

from types import SimpleNamespace

import jax
import numpy as np
import optax
import pytest

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
from matplotlib.image import imread  # noqa: E402

import nnjax as nn  # noqa: E402
from nnjax._src import plots  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n"


def pixels(path):
    data = path.read_bytes()
    assert data.startswith(PNG) and len(data) > 2000
    image = imread(path)
    assert image.std() > 0.01  # not a blank canvas
    return image


def differ(a, b):
    return a.shape != b.shape or not np.array_equal(a, b)


def dense_net(seed):
    model = nn.serial(nn.Dense(5), nn.Relu(), nn.Dense(1))
    params, _ = model.init(jax.random.key(seed), (4,))
    return model, params


def test_plot_network_depends_on_weights(tmp_path):
    model, p0 = dense_net(0)
    _, p1 = dense_net(1)
    plots.plot_network(model, p0, (4,), path=tmp_path / "a.png")
    a = pixels(tmp_path / "a.png")
    plots.plot_network(model, p1, (4,), path=tmp_path / "b.png")
    b = pixels(tmp_path / "b.png")
    plots.plot_network(model, p0, (4,), path=tmp_path / "c.png")
    again = pixels(tmp_path / "c.png")
    assert differ(a, b)
    assert not differ(a, again)  # same weights, same picture


def test_plot_network_lines_follow_weights():
    model, params = dense_net(3)
    w1, w2 = params["dense_0"]["w"], params["dense_2"]["w"]
    weights = np.concatenate([np.ravel(w1), np.ravel(w2)])
    ax = plots.plot_network(model, params, (4,)).axes[0]
    assert len(ax.lines) == weights.size == 4 * 5 + 5 * 1
    widths = np.array([line.get_linewidth() for line in ax.lines])
    colours = [line.get_color() for line in ax.lines]
    order = np.argsort(np.abs(weights))  # lines are drawn layer by layer in weight order (row-major)
    assert np.all(np.diff(widths[order]) >= -1e-9)  # wider for larger |w|
    assert widths[np.argmax(np.abs(weights))] == pytest.approx(5.0)
    assert [c == plots.POSITIVE for c in colours] == list(weights > 0)

    positive = plots.plot_network(model, params, (4,), only_positive=True).axes[0]
    assert len(positive.lines) == int((weights > 0).sum())
    assert all(line.get_color() == plots.POSITIVE for line in positive.lines)
    threshold = float(np.median(np.abs(weights)))
    strong = plots.plot_network(model, params, (4,), hide_below=threshold).axes[0]
    assert len(strong.lines) == int((np.abs(weights) >= threshold).sum())


def test_plot_network_neuron_of_the_source_texts(tmp_path):
    """The 0.67 neuron: two inputs, weights 0.5 and 0.7, a step at 0.5; weights are written on the lines."""
    model = nn.serial(nn.Dense(1), nn.Step(0.5))
    params = {"dense_0": {"w": np.array([[0.5], [0.7]], np.float32), "b": np.zeros(1, np.float32)}, "step_1": {}}
    _, state = model.init(jax.random.key(0), (2,))
    y, _ = model.apply(params, state, np.array([[0.5, 0.6]], np.float32))
    assert float(y[0, 0]) == 1.0
    fig = plots.plot_network(model, params, (2,), input_names=["x1", "x2"], path=tmp_path / "n.png")
    texts = {t.get_text() for t in fig.axes[0].texts}
    assert {"0.50", "0.70", "x1", "x2", "b=0.00"} <= texts
    assert any("Step(0.5)" in t for t in texts)
    pixels(tmp_path / "n.png")


def test_plot_network_rejects_what_it_cannot_draw():
    model, params = dense_net(0)
    with pytest.raises(ValueError, match=r"input_shape.*\(4,\)"):
        plots.plot_network(model, params, (3,))
    wide = nn.serial(nn.Dense(100), nn.Relu(), nn.Dense(1))
    with pytest.raises(ValueError, match="max_neurons"):
        plots.plot_network(wide, wide.init(jax.random.key(0), (4,))[0], (4,))
    res = nn.serial(nn.Dense(4), nn.residual(nn.Dense(4)))
    with pytest.raises(ValueError, match=r"serial\[1\] Residual.*dense networks only"):
        plots.plot_network(res, res.init(jax.random.key(0), (4,))[0], (4,))


def test_plot_history_single_and_compared_runs(tmp_path):
    h1 = {
        "loss": [1.0, 0.5, 0.3],
        "accuracy": [0.5, 0.7, 0.8],
        "val_loss": [1.1, 0.7, 0.6],
        "val_accuracy": [0.4, 0.6, 0.7],
    }
    h2 = {
        "loss": [2.0, 1.5, 0.2],
        "accuracy": [0.1, 0.2, 0.9],
        "val_loss": [2.0, 1.0, 0.9],
        "val_accuracy": [0.1, 0.3, 0.8],
    }
    fig = plots.plot_history(h1, path=tmp_path / "a.png")
    loss_ax = fig.axes[0]
    assert [ax.get_title() for ax in fig.axes if ax.get_visible()] == ["loss", "accuracy"]
    assert [tuple(line.get_ydata()) for line in loss_ax.lines] == [(1.0, 0.5, 0.3), (1.1, 0.7, 0.6)]
    assert loss_ax.lines[1].get_linestyle() == "--"
    a = pixels(tmp_path / "a.png")
    plots.plot_history(h2, path=tmp_path / "b.png")
    b = pixels(tmp_path / "b.png")
    assert differ(a, b)
    both = plots.plot_history({"sgd": h1, "adam": h2}, metrics=["accuracy"])
    assert [line.get_label() for line in both.axes[0].lines] == ["sgd", "_nolegend_", "adam", "_nolegend_"]
    assert [line.get_color() for line in both.axes[0].lines] == ["C0", "C0", "C1", "C1"]
    assert [t.get_text() for t in both.axes[0].get_legend().get_texts()] == ["sgd", "adam", "train", "val"]
    with pytest.raises(KeyError, match="available"):
        plots.plot_history(h1, metrics=["f1"])


def fit_many_history(models=3, epochs=4):
    """A fit_many-shaped history by hand: every entry (models, epochs), row i for model i."""
    rng = np.random.default_rng(0)
    return {
        "loss": rng.uniform(0, 1, (models, epochs)),
        "accuracy": rng.uniform(0, 1, (models, epochs)),
        "val_loss": rng.uniform(0, 1, (models, epochs)),
    }


def solid(ax):
    return [line for line in ax.lines if line.get_linestyle() == "-"]


def test_plot_history_fit_many_result_one_curve_per_model(tmp_path):
    history = fit_many_history()
    configs = [{"seed": s, "learning_rate": lr} for s, lr in [(0, 0.01), (1, 0.01), (0, 0.1)]]
    result = SimpleNamespace(history=history, configs=configs)  # duck-typed ManyResult
    fig = plots.plot_history(result, path=tmp_path / "many.png")
    pixels(tmp_path / "many.png")
    assert [ax.get_title() for ax in fig.axes if ax.get_visible()] == ["loss", "accuracy"]
    labels = ["seed=0, learning_rate=0.01", "seed=1, learning_rate=0.01", "seed=0, learning_rate=0.1"]
    for ax, name in zip(fig.axes, ["loss", "accuracy"], strict=False):
        assert ax.get_xlabel() == "epoch"
        lines = solid(ax)
        assert [line.get_label() for line in lines] == labels
        for i, line in enumerate(lines):  # model i is row i, drawn against epochs 1..4 (not transposed)
            np.testing.assert_array_equal(line.get_xdata(), [1, 2, 3, 4])
            np.testing.assert_array_equal(line.get_ydata(), history[name][i])
    val = [line for line in fig.axes[0].lines if line.get_linestyle() == "--"]
    assert len(val) == 3 and all(line.get_label() == "_nolegend_" for line in val)
    for i, line in enumerate(val):  # dashed, in its model's colour
        np.testing.assert_array_equal(line.get_ydata(), history["val_loss"][i])
        assert line.get_color() == solid(fig.axes[0])[i].get_color() == f"C{i}"
    assert [t.get_text() for t in fig.legends[0].get_texts()] == labels  # the models, once for the figure
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["train", "val"]
    # a FitResult-like object (a .history, no .configs) draws its history
    one = {"loss": [1.0, 0.5, 0.3], "val_loss": [1.1, 0.7, 0.6]}
    fit_like = plots.plot_history(SimpleNamespace(history=one, train_state=None))
    assert [tuple(line.get_ydata()) for line in fit_like.axes[0].lines] == [(1.0, 0.5, 0.3), (1.1, 0.7, 0.6)]


def test_plot_history_bare_fit_many_history_labels_models():
    history = fit_many_history()
    fig = plots.plot_history(history, metrics=["accuracy"])
    lines = solid(fig.axes[0])
    assert [line.get_label() for line in lines] == ["model 0", "model 1", "model 2"]
    np.testing.assert_array_equal(np.stack([line.get_ydata() for line in lines]), history["accuracy"])
    many = plots.plot_history(fit_many_history(models=12), metrics=["loss"])  # only the first 10 are named
    assert len(solid(many.axes[0])) == 12
    legend = many.legends[0]
    assert [t.get_text() for t in legend.get_texts()] == [f"model {i}" for i in range(10)]
    assert legend.get_title().get_text() == "first 10 of 12 models"


def test_plot_history_step_series_get_panels_of_their_own():
    steps = 6
    history = {
        "loss": [1.0, 0.5],
        "step/loss": list(np.linspace(1, 0.4, steps)),
        "step/grad_norm": [3.0, 2.0, 2.5, 1.0, 0.5, 0.4],
        "step/grad_norm/dense_0": [1.0] * steps,
        "step/grad_norm/dense_2": [2.0] * steps,
        "step/param_norm/dense_0": [4.0] * steps,
        "step/learning_rate": [0.1] * steps,
    }
    fig = plots.plot_history(history)
    axes = {ax.get_title(): ax for ax in fig.axes if ax.get_visible()}
    assert list(axes) == [
        "loss",
        "loss per step",
        "grad_norm per step",
        "grad_norm per layer",
        "param_norm per layer",
        "learning_rate per step",
    ]
    assert axes["loss"].get_xlabel() == "epoch"
    for title in list(axes)[1:]:
        ax = axes[title]
        assert ax.get_xlabel() == "step"
        for line in ax.lines:  # steps are numbered 1..steps, as epochs are
            np.testing.assert_array_equal(line.get_xdata(), np.arange(1, steps + 1))
    np.testing.assert_array_equal(axes["grad_norm per step"].lines[0].get_ydata(), history["step/grad_norm"])
    layers = axes["grad_norm per layer"]  # the per-layer series of one kind share one panel
    assert [line.get_label() for line in layers.lines] == ["dense_0", "dense_2"]
    assert [t.get_text() for t in layers.get_legend().get_texts()] == ["dense_0", "dense_2"]
    np.testing.assert_array_equal(layers.lines[1].get_ydata(), [2.0] * steps)
    chosen = plots.plot_history(history, metrics=["step/grad_norm", "step/param_norm/*"], logy=["step/grad_norm"])
    assert [ax.get_title() for ax in chosen.axes] == ["grad_norm per step", "param_norm per layer"]
    assert chosen.axes[0].get_yscale() == "log"
    # fit_many: one curve per model in a step panel, the mean over the models per layer
    k = 3
    many = {
        "loss": np.ones((k, 2)),
        "step/loss": np.arange(k * steps, dtype=float).reshape(k, steps),
        "step/grad_norm/dense_0": np.arange(k * steps, dtype=float).reshape(k, steps),
    }
    fig = plots.plot_history(many, metrics=["step/loss", "step/grad_norm/*"])
    assert [line.get_label() for line in fig.axes[0].lines] == ["model 0", "model 1", "model 2"]
    np.testing.assert_array_equal(fig.axes[0].lines[2].get_ydata(), many["step/loss"][2])
    (mean,) = fig.axes[1].lines
    np.testing.assert_array_equal(mean.get_ydata(), many["step/grad_norm/dense_0"].mean(axis=0))
    assert mean.get_label() == "dense_0" and "mean over models" in fig.axes[1].get_ylabel()


BAD_HISTORIES = {  # what plot_history must refuse rather than draw wrong, and the message naming the key
    "3-D": ({"loss": np.zeros((2, 3, 4))}, ValueError, r"history\['loss'\] expected a 1-D .* given .*\(2, 3, 4\)"),
    "mixed 1-D and 2-D": (
        {"loss": [1.0, 0.5], "val_loss": np.zeros((2, 2))},
        ValueError,
        r"history\['val_loss'\] has shape \(2, 2\) but history\['loss'\] has shape \(2,\); expected every",
    ),
    "models differ": (
        {"loss": np.zeros((3, 4)), "accuracy": np.zeros((2, 4))},
        ValueError,
        r"history\['accuracy'\] has 2 models .* history\['loss'\] has 3",
    ),
    "step models differ": (
        {"loss": np.zeros((3, 4)), "step/loss": np.zeros((2, 9))},
        ValueError,
        r"history\['step/loss'\] has 2 models",
    ),
    "strings": ({"loss": [1.0, "nan?"]}, TypeError, r"history\['loss'\] expected numbers.*given list"),
    "None": ({"loss": [1.0, None]}, TypeError, r"history\['loss'\] expected numbers.*given list"),
    "in a run": (
        {"a": {"loss": [1.0]}, "b": {"loss": np.zeros((1, 1, 1))}},
        ValueError,
        r"history\['b'\]\['loss'\] expected",
    ),
    "configs count": (
        SimpleNamespace(history=fit_many_history(), configs=[{"seed": 0}]),
        ValueError,
        r"the result has len\(configs\) = 1 but history\['loss'\] has shape \(3, 4\); expected",
    ),
    "configs of one model": (
        SimpleNamespace(history={"loss": [1.0, 0.5]}, configs=[{"seed": 0}]),
        ValueError,
        r"the result has len\(configs\) = 1 but history\['loss'\] has shape \(2,\)",
    ),
    "not a history": ([1.0, 0.5], TypeError, r"argument `history` expected .* given list"),
}


@pytest.mark.parametrize("case", list(BAD_HISTORIES))
def test_plot_history_rejects_what_it_would_draw_wrong(case):
    history, error, pattern = BAD_HISTORIES[case]
    with pytest.raises(error, match=f"^plot_history: {pattern}"):
        plots.plot_history(history)


def test_plot_activations_gallery(tmp_path):
    fig = plots.plot_activations(path=tmp_path / "act.png")
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert len(visible) == 8
    titles = [ax.get_title().split(":")[0] for ax in visible]
    assert titles == ["step", "sigmoid", "tanh", "relu", "leaky_relu", "elu", "gelu", "softplus"]
    sigmoid = visible[1]
    x, dy = sigmoid.lines[-1].get_xdata(), sigmoid.lines[-1].get_ydata()  # the derivative, by jax.grad
    s = 1 / (1 + np.exp(-x))
    np.testing.assert_allclose(dy, s * (1 - s), atol=1e-6)
    pixels(tmp_path / "act.png")
    with pytest.raises(ValueError, match="unknown"):
        plots.plot_activations(["swish"])


def train_moons(seed, epochs):
    x, y = nn.data.make_moons(200, noise=0.15, seed=0)
    model = nn.serial(nn.Dense(16), nn.Tanh(), nn.Dense(2))
    result = nn.fit(
        model,
        nn.losses.softmax_cross_entropy,
        optax.adam(3e-2),
        x,
        y,
        epochs=epochs,
        seed=seed,
        batch_size=50,
        progress=False,
    )
    return model, result.train_state, x, y


def test_plot_decision_boundary_depends_on_model(tmp_path):
    model, s0, x, y = train_moons(0, 30)
    _, s1, _, _ = train_moons(1, 1)
    plots.plot_decision_boundary(model, s0, x, y, path=tmp_path / "a.png")
    a = pixels(tmp_path / "a.png")
    plots.plot_decision_boundary(model, s1, x, y, path=tmp_path / "b.png")
    b = pixels(tmp_path / "b.png")
    assert differ(a, b)
    # a one-logit binary classifier and a (params, state) pair work too
    binary = nn.serial(nn.Dense(8), nn.Tanh(), nn.Dense(1))
    params, state = binary.init(jax.random.key(0), (2,))
    fig = plots.plot_decision_boundary(binary, (params, state), x, y, path=tmp_path / "c.png")
    assert any(ax.get_ylabel() == "P(class 1)" for ax in fig.axes)
    pixels(tmp_path / "c.png")
    with pytest.raises(ValueError, match=r"\(n, 2\)"):
        plots.plot_decision_boundary(model, s0, np.zeros((5, 3)), np.zeros(5, int))


def test_plot_confusion_matrix(tmp_path):
    m1 = np.array([[50, 2, 0], [3, 40, 7], [0, 5, 45]])
    m2 = np.array([[10, 20, 20], [30, 10, 10], [5, 5, 40]])
    fig = plots.plot_confusion_matrix(m1, ["cat", "dog", "elephant"], path=tmp_path / "a.png")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.texts] == [str(v) for v in m1.ravel()]
    assert "accuracy 88.8%" in ax.get_title()  # 135 of 152
    assert [t.get_text() for t in ax.get_yticklabels()] == ["cat", "dog", "elephant"]
    normalized = plots.plot_confusion_matrix(m1, normalize=True).axes[0]
    assert normalized.texts[0].get_text() == f"{50 / 52:.2f}"
    plots.plot_confusion_matrix(m2, ["cat", "dog", "elephant"], path=tmp_path / "b.png")
    b = pixels(tmp_path / "b.png")
    assert differ(pixels(tmp_path / "a.png"), b)
    with pytest.raises(ValueError, match="square"):
        plots.plot_confusion_matrix(np.zeros((2, 3)))


def test_plot_images(tmp_path):
    images, labels = nn.data.load_digits()
    fig = plots.plot_images(images[:10], labels[:10], predictions=labels[:10] * 0 + 1, ncols=5, path=tmp_path / "a.png")
    shown = [ax for ax in fig.axes if ax.images]
    assert len(shown) == 10
    colours = [ax.title.get_color() for ax in shown]
    assert [c == "#2ca02c" for c in colours] == list(labels[:10] == 1)
    np.testing.assert_array_equal(shown[3].images[0].get_array(), images[3])
    a = pixels(tmp_path / "a.png")
    plots.plot_images(images[10:20], labels[10:20], ncols=5, path=tmp_path / "b.png")
    b = pixels(tmp_path / "b.png")
    assert differ(a, b)
    flat = plots.plot_images(images[:4].reshape(4, 64), ncols=4)  # flat square vectors are reshaped
    assert [ax.images[0].get_array().shape for ax in flat.axes if ax.images] == [(8, 8)] * 4
    rgb = plots.plot_images(np.random.default_rng(0).uniform(-1, 1, (3, 6, 6, 3)))  # e.g. GAN samples in [-1, 1]
    assert len([ax for ax in rgb.axes if ax.images]) == 3
    with pytest.raises(ValueError, match="not a square"):
        plots.plot_images(np.zeros((2, 10)))


def test_missing_matplotlib_message(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=r"nnjax\[plots\]"):
        plots.plot_activations()
