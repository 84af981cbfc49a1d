"""Builds the notebooks of this folder from the cells written below (outputs stripped).

    python notebooks/build.py            # rewrite every notebook
    python notebooks/build.py --check    # exit 1 if a notebook differs from what this file builds

Edit this file, not the ``.ipynb`` files, so changes stay reviewable. Every notebook opens with an
"Open in Colab" badge, an install cell that runs only in Colab, and a ``jax.devices()`` check; sizes
shrink when ``NNJAX_SMOKE=1`` (CI executes every notebook that way, see tests/test_notebooks.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent
REPO = "nnjax/nnjax"
INSTALL = "nnjax[plots] @ git+https://github.com/nnjax/nnjax"


def badge(name: str) -> str:
    url = f"https://colab.research.google.com/github/{REPO}/blob/main/notebooks/{name}.ipynb"
    return f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({url})"


SETUP = f'''import os
import sys

if "google.colab" in sys.modules:  # in Colab only: install nnjax (keeps Colab's jax)
    import subprocess

    package = "{INSTALL}"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", package], check=True)

SMOKE = os.environ.get("NNJAX_SMOKE") == "1"  # set in CI: small sizes, few epochs'''

DEVICES = """import jax
import jax.numpy as jnp
import numpy as np
import optax

import nnjax as nn

# Compiled programs are kept on disk: a rerun loads them instead of compiling (Colab
# wipes its disk with each session, so there it helps reruns within one session).
# Set before the first computation.
nn.config.compilation_cache()
print("jax", jax.__version__, "| devices:", jax.devices())
if jax.default_backend() == "cpu":
    # for this kernel: XLA's CPU temporaries reuse freed memory (faster conv steps)
    nn.keep_freed_memory()"""


def notebook(name: str, title: str, intro: str, cells: list[tuple[str, str]]) -> nbformat.NotebookNode:
    nb = new_notebook()
    nb.metadata = {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
        "colab": {"provenance": []},
        "accelerator": "GPU",
    }
    nb.cells = [
        new_markdown_cell(f"# {title}\n\n{badge(name)}\n\n{intro.strip()}"),
        # the install cell runs, but the docs site hides it (myst-nb's remove-cell tag): Colab only
        new_code_cell(SETUP, metadata={"tags": ["remove-cell"]}),
        new_code_cell(DEVICES),
    ]
    for kind, source, *tags in cells:
        source = source.strip("\n")
        if kind == "md":
            nb.cells.append(new_markdown_cell(source))
        else:
            nb.cells.append(new_code_cell(source, metadata={"tags": tags[0]} if tags else {}))
    for i, cell in enumerate(nb.cells):  # stable ids keep rebuilds byte-identical
        cell["id"] = f"{name[:2]}-{i:02d}"
    return nb


def md(text: str) -> tuple[str, str]:
    return "md", text


def code(text: str) -> tuple[str, str]:
    return "code", text


def scrolled(text: str) -> tuple[str, str, list[str]]:
    """A code cell with a long log (a progress line per epoch): its output scrolls on the docs site."""
    return "code", text, ["scroll-output"]


# --- 01: neurons and activations -----------------------------------------------------------------------

NEURONS = [
    md("""
## One neuron

A neuron multiplies each input signal by the weight of its connection (its synapse), adds the products
and a bias, and passes the sum through an activation function. The source texts' example: inputs 0.5 and
0.6, weights 0.5 and 0.7, bias 0, and a **step** activation that fires 1 when the sum reaches the
threshold 0.5."""),
    code("""
x = jnp.array([0.5, 0.6])  # two input signals
w = jnp.array([0.5, 0.7])  # the weights of their synapses
b = 0.0  # the bias
z = x @ w + b  # the weighted sum: 0.25 + 0.42 = 0.67
fired = nn.activations.step(z, threshold=0.5)
print(f"weighted sum {float(z):.2f} -> output {float(fired):.0f}")"""),
    md("""
The same neuron as an nnjax layer: a `Dense(1)` followed by `Step(0.5)`. Its parameters are a plain dict,
so we can set the weights by hand, and draw the neuron from them."""),
    code("""
neuron = nn.serial(nn.Dense(1), nn.Step(0.5))
_, state = neuron.init(jax.random.key(0), (2,))
params = {"dense_0": {"w": w.reshape(2, 1), "b": jnp.zeros(1)}, "step_1": {}}
y, _ = neuron.apply(params, state, x[None])  # a batch of one example
print("output:", y)
nn.plots.plot_network(neuron, params, (2,), input_names=["x1 = 0.5", "x2 = 0.6"],
                      output_names=["fires"])"""),
    md("""
Another text does the same with a weighted sum of 0.7 against a threshold of 0.5, to predict that a
traveller buys travel insurance:"""),
    code("""
print("buys insurance:", bool(nn.activations.step(jnp.array(0.7), threshold=0.5)))"""),
    md("""
## Activation functions

The step is the oldest activation, but its derivative is zero everywhere (and undefined at the
threshold), so gradient descent cannot learn through it. Smooth activations have useful derivatives;
the dashed curves are computed by `jax.grad`."""),
    code("""
nn.plots.plot_activations()"""),
    md("""
## Loss as distance

A loss measures how far a prediction is from its label: 0.92 against a label of 1 is off by 0.08,
0.35 by 0.65. Training lowers the average loss. For regression the texts use half the squared error."""),
    code("""
predictions, labels = jnp.array([0.92, 0.35]), jnp.array([1.0, 1.0])
print("distance:", labels - predictions)
print("half squared error:", nn.losses.half_mse(predictions[:, None], labels[:, None]))"""),
    md("""
## A perceptron

A single neuron with a step is a perceptron. Trained with a straight-through gradient (step forward,
identity backward), it learns AND, which a straight line separates, but not XOR, which no line
separates. Two layers solve XOR."""),
    code("""
inputs = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], np.float32)
gates = {"AND": np.array([0, 0, 0, 1]), "XOR": np.array([0, 1, 1, 0])}
perceptron = nn.serial(nn.Dense(1), nn.StraightThroughStep(0.0))
for gate, targets in gates.items():
    labels = targets[:, None].astype(np.float32)
    result = nn.fit(perceptron, nn.losses.mse, optax.sgd(0.1), inputs, labels,
                    epochs=50 if SMOKE else 200, batch_size=4, progress=False)
    out = nn.predict(perceptron, result.train_state, inputs)
    print(f"{gate}: outputs {out.ravel()}  targets {targets}")"""),
    code("""
mlp = nn.serial(nn.Dense(8), nn.Tanh(), nn.Dense(2))
xor = nn.fit(mlp, nn.losses.softmax_cross_entropy, optax.adam(0.05), inputs,
             gates["XOR"], epochs=100 if SMOKE else 300, batch_size=4, progress=False)
print("MLP on XOR:", nn.predict(mlp, xor.train_state, inputs).argmax(axis=1))"""),
    md("""
In the run on this page the perceptron reproduces AND (outputs 0, 0, 0, 1) and answers 0 to all four
XOR inputs, while the two-layer MLP gets XOR right: 0, 1, 1, 0.

On a noisier problem, two interleaving half moons, one neuron draws a straight boundary; a hidden
layer bends it."""),
    code("""
import matplotlib.pyplot as plt

x, y = nn.data.make_moons(200 if SMOKE else 500, noise=0.15)
linear = nn.Dense(2)
deep = nn.serial(nn.Dense(16), nn.Tanh(), nn.Dense(16), nn.Tanh(), nn.Dense(2))
fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), layout="constrained")
models = {"one neuron per class": linear, "two hidden layers": deep}
for ax, (name, model) in zip(axes, models.items()):
    result = nn.fit(model, nn.losses.softmax_cross_entropy, optax.adam(0.03), x, y,
                    epochs=20 if SMOKE else 100, batch_size=50, progress=False,
                    metrics={"accuracy": nn.metrics.accuracy})
    accuracy = result.history["accuracy"][-1]
    nn.plots.plot_decision_boundary(model, result.train_state, x, y, ax=ax,
                                    title=f"{name}: accuracy {accuracy:.0%}")
plt.show()"""),
    md("""
Here (500 points, 100 epochs) one neuron per class reaches 88% and its boundary is a straight line;
the network with two hidden layers bends its boundary between the moons and reaches 99%.

## The network drawn from its real weights

The texts predict a house price from four inputs (square footage, bedrooms, distance to the city
centre, age) with one hidden layer of five neurons, and draw a line only where a weight is positive.
Here is such a network, trained on nnjax's synthetic house prices (inputs and price standardized);
`only_positive=True` draws it the texts' way."""),
    scrolled("""
features = ["square feet", "bedrooms", "distance", "age"]
x, y = nn.data.make_house_prices(400 if SMOKE else 2000)
x_train, y_train, x_test, y_test = nn.data.train_test_split(x, y[:, None])
sx, sy = nn.data.standardizer(x_train), nn.data.standardizer(y_train)
house = nn.serial(nn.Dense(5), nn.Relu(), nn.Dense(1))
nn.summary(house, (4,))
validation = (sx.transform(x_test), sy.transform(y_test))
result = nn.fit(house, nn.losses.half_mse, optax.adam(1e-2), sx.transform(x_train),
                sy.transform(y_train), epochs=5 if SMOKE else 100, batch_size=32,
                validation_data=validation)"""),
    code("""
nn.plots.plot_history(result.history, logy=True)"""),
    code("""
nn.plots.plot_network(house, result.train_state.params, (4,), only_positive=True,
                      input_names=features, output_names=["price"])"""),
    md("""
After 100 epochs the validation loss (half the squared error, on the standardized price) is about
0.009, down from 0.09 after the first epoch (the log above scrolls).

All weights, blue positive and red negative, line width following |w|; `hide_below` hides the weak
ones:"""),
    code("""
nn.plots.plot_network(house, result.train_state.params, (4,), hide_below=0.1,
                      input_names=features, output_names=["price"])"""),
]

# --- 02: an MLP on digits, optimizers compared ------------------------------------------------------------

DIGITS = [
    md("""
## Data

The embedded UCI digits (1,797 images of 8x8 pixels, no download). Set `NNJAX_MNIST=1` (or run in
Colab) to use MNIST's 70,000 images of 28x28 instead: `nn.data.load_mnist()` downloads the four
files once, checks their SHA-256, and caches them in `~/.cache/nnjax/mnist`."""),
    code("""
IN_COLAB = "google.colab" in sys.modules
USE_MNIST = os.environ.get("NNJAX_MNIST") == "1" or (IN_COLAB and not SMOKE)
if USE_MNIST:
    x_train, y_train, x_test, y_test = nn.data.load_mnist()
    # pixels 0..255 -> 0..1
    x_train = x_train.reshape(len(x_train), -1).astype(np.float32) / 255
    x_test = x_test.reshape(len(x_test), -1).astype(np.float32) / 255
else:
    images, labels = nn.data.load_digits()
    x = images.reshape(len(images), -1).astype(np.float32) / 16  # pixels 0..16 -> 0..1
    x_train, y_train, x_test, y_test = nn.data.train_test_split(
        x, labels, test_fraction=0.25, stratify=True)
if SMOKE:
    x_train, y_train = x_train[:512], y_train[:512]
print("train", x_train.shape, "test", x_test.shape)
nn.plots.plot_images(x_train[:32], y_train[:32], ncols=16)"""),
    md("""
## The model

Each image is flattened to a vector of pixels; one hidden layer of 64 ReLU neurons; ten outputs, one
per digit (softmax is inside the loss). `nn.summary` lists shapes, parameters and FLOPs."""),
    code("""
model = nn.serial(nn.Dense(64), nn.Relu(), nn.Dense(10))
table = nn.summary(model, x_train.shape[1:])  # prints the table and returns it"""),
    md("""
## Training with a progress bar and callbacks

`fit` shows a progress bar (fed from inside the compiled epoch) and one line per epoch. Callbacks write
every epoch's metrics to CSV, keep the best model, and stop when validation stops improving."""),
    scrolled("""
import tempfile

EPOCHS = 3 if SMOKE else 40
log_dir = tempfile.mkdtemp()
best = nn.callbacks.BestModel(monitor="val_accuracy", mode="max")
callbacks = [nn.callbacks.CSVLogger(f"{log_dir}/digits.csv"), best,
             nn.callbacks.EarlyStopping(patience=5)]
result = nn.fit(model, nn.losses.softmax_cross_entropy, optax.adam(1e-3), x_train,
                y_train, epochs=EPOCHS, batch_size=32,
                metrics={"accuracy": nn.metrics.accuracy},
                validation_data=(x_test, y_test), callbacks=callbacks)
print(f"best val_accuracy {best.best:.3f} at epoch {best.best_epoch + 1}")
print(open(f"{log_dir}/digits.csv").read()[:400])"""),
    md("""
At full size (1,347 training images, 40 epochs) the best validation accuracy is 96.2% (epoch 36);
the last epoch ends at 95.6%. `examples/digits_mlp.py`, the landing page's command, trains a
larger network (two hidden layers of 128) and states 96.9% (see the gallery).

## Optimizers compared

The same network and initialization, trained by plain SGD, SGD with momentum, AdaGrad, RMSProp and
Adam (all from Optax)."""),
    code("""
optimizers = {
    "sgd": optax.sgd(0.05),
    "momentum": optax.sgd(0.05, momentum=0.9),
    "adagrad": optax.adagrad(0.05),
    "rmsprop": optax.rmsprop(1e-3),
    "adam": optax.adam(1e-3),
}
histories = {}
for name, optimizer in optimizers.items():
    run = nn.fit(model, nn.losses.softmax_cross_entropy, optimizer, x_train, y_train,
                 epochs=EPOCHS, batch_size=32,
                 metrics={"accuracy": nn.metrics.accuracy},
                 validation_data=(x_test, y_test), progress=False)
    histories[name] = run.history
    print(f"{name:>9}: val_accuracy {run.history['val_accuracy'][-1]:.3f}")
nn.plots.plot_history(histories, metrics=["loss", "accuracy"])"""),
    md("""
After 40 epochs each: SGD 95.3%, momentum 96.2%, AdaGrad 96.0%, RMSProp 96.2%, Adam 95.6%
validation accuracy. Plain SGD starts slowest (the left panel).

## What the best model gets wrong

Rows are the true digits, columns the predictions."""),
    code("""
logits = nn.predict(model, best.train_state, x_test)
matrix = nn.metrics.confusion_matrix(logits, jnp.asarray(y_test))
nn.plots.plot_confusion_matrix(matrix)"""),
    code("""
predicted = np.asarray(logits.argmax(axis=1))
wrong = np.flatnonzero(predicted != y_test)[:16]
if len(wrong):
    display(nn.plots.plot_images(x_test[wrong], y_test[wrong],
                                 predictions=predicted[wrong], ncols=8,
                                 title="predicted (true)"))"""),
    md("""
The diagonal holds almost all of the 450 test digits (the best model: 96.2%); the digits it gets
wrong are shown below the matrix, with their true labels.

## A learning-rate schedule, logged

`optax.inject_hyperparams` keeps the learning rate in the optimizer state, where
`LearningRateLogger` reads it after each epoch."""),
    code("""
steps_per_epoch = len(x_train) // 32
schedule = optax.cosine_decay_schedule(3e-3, decay_steps=EPOCHS * steps_per_epoch)
lr = nn.callbacks.LearningRateLogger()
optimizer = optax.inject_hyperparams(optax.adam)(learning_rate=schedule)
nn.fit(model, nn.losses.softmax_cross_entropy, optimizer, x_train, y_train,
       epochs=EPOCHS, batch_size=32, progress=False, callbacks=[lr])
print([f"{v:.2e}" for v in lr.values])"""),
]

# --- 03: a convolutional network ------------------------------------------------------------------------

CNN = [
    md("""
## Images as images

A convolutional layer slides small kernels (filters) over the image, so a feature is detected wherever
it appears. The digits keep their 8x8 grid, with one channel: shape `(8, 8, 1)`, channels last."""),
    code("""
images, labels = nn.data.load_digits()
x = images[..., None].astype(np.float32) / 16  # (n, 8, 8, 1), pixels in 0..1
x_train, y_train, x_test, y_test = nn.data.train_test_split(
    x, labels, test_fraction=0.25, stratify=True)
if SMOKE:
    x_train, y_train = x_train[:512], y_train[:512]
print("train", x_train.shape, "test", x_test.shape)"""),
    code("""
cnn = nn.serial(
    nn.Conv(16, (3, 3)), nn.Relu(), nn.MaxPool(2),  # (8, 8, 1) -> (4, 4, 16)
    nn.Conv(32, (3, 3)), nn.Relu(), nn.MaxPool(2),  # -> (2, 2, 32)
    nn.Flatten(),
    nn.Dense(64), nn.Relu(), nn.Dropout(0.2),
    nn.Dense(10),
)
table = nn.summary(cnn, (8, 8, 1))  # prints the table and returns it"""),
    scrolled("""
result = nn.fit(cnn, nn.losses.softmax_cross_entropy, optax.adam(2e-3), x_train,
                y_train, epochs=3 if SMOKE else 25, batch_size=32,
                metrics={"accuracy": nn.metrics.accuracy},
                validation_data=(x_test, y_test))"""),
    code("""
nn.plots.plot_history(result.history)"""),
    code("""
logits = nn.predict(cnn, result.train_state, x_test)
nn.plots.plot_confusion_matrix(nn.metrics.confusion_matrix(logits, jnp.asarray(y_test)))"""),
    md("""
After 25 epochs the CNN reaches 98.7% validation accuracy on the same 450 test digits (the MLP:
96.2%), with a third of its mistakes left.

## What the first layer learned

Each 3x3 kernel of the first convolution, and what the 16 kernels make of one digit (the feature maps
after the ReLU)."""),
    code("""
kernels = np.asarray(result.train_state.params["conv_0"]["w"])  # (3, 3, 1, 16)
limit = np.abs(kernels).max()  # a diverging map centred on 0: red >0, blue <0
nn.plots.plot_images(np.moveaxis(kernels[:, :, 0, :], -1, 0), np.arange(16), ncols=8,
                     cmap="RdBu_r", vmin=-limit, vmax=limit,
                     title="first-layer kernels")"""),
    code("""
first = nn.serial(nn.Conv(16, (3, 3)), nn.Relu())
params = {"conv_0": result.train_state.params["conv_0"], "relu_1": {}}
maps, _ = first.apply(params, {"conv_0": {}, "relu_1": {}}, x_test[:1])  # (1, 8, 8, 16)
nn.plots.plot_images(np.moveaxis(np.asarray(maps[0]), -1, 0), ncols=8,
                     title=f"feature maps of a {y_test[0]}")"""),
]

# --- 04: recurrent networks: forecasting and text ------------------------------------------------------------

TEXT = """A neuron receives signals, weighs them, adds them up and passes the sum through an activation.
A network stacks layers of neurons. Training compares the network's predictions with the labels,
measures the error with a loss, and moves every weight a little against the gradient of the loss.
Repeat this over many examples and the network learns to predict what it has not seen before.
"""


def wrapped(text: str, width: int = 72) -> str:
    """``text`` as a parenthesized concatenation of string literals, each line under ``width``."""
    pieces, line = [], ""
    for word in text.split(" "):
        if line and len(line) + len(word) + 1 > width:
            pieces.append(line + " ")
            line = word
        else:
            line = f"{line} {word}" if line else word
    pieces.append(line)
    literals = "\n".join(f"    {piece!r}" for piece in pieces)
    return f"(\n{literals}\n)"


RNN = [
    md("""
## Forecasting a time series

Recurrent networks read a sequence one step at a time and carry a state from step to step. An LSTM
(whose gates protect the state from vanishing gradients) forecasts the next value of a noisy seasonal
series, something like a daily temperature, from the previous 30 values."""),
    scrolled("""
rng = np.random.default_rng(0)
days = np.arange(1200 if not SMOKE else 400)
series = (10 + 8 * np.sin(2 * np.pi * days / 365) + 3 * np.sin(2 * np.pi * days / 7)
          + rng.normal(0, 1, days.size)).astype(np.float32)
window = 30
x = np.stack([series[i : i + window] for i in range(len(series) - window)])
x = x[..., None]  # (n, 30, 1)
y = series[window:, None]  # the next day
mean, std = series.mean(), series.std()
split = int(0.8 * len(x))
x_train, y_train = (x[:split] - mean) / std, (y[:split] - mean) / std  # standardized
x_test, y_test = (x[split:] - mean) / std, (y[split:] - mean) / std
forecaster = nn.serial(nn.LSTM(32, return_sequences=False), nn.Dense(1))
nn.summary(forecaster, (window, 1))
result = nn.fit(forecaster, nn.losses.mse, optax.adam(3e-3), x_train, y_train,
                epochs=3 if SMOKE else 30, batch_size=32,
                validation_data=(x_test, y_test))"""),
    code("""
nn.plots.plot_history(result.history, logy=True)"""),
    code("""
import matplotlib.pyplot as plt

forecast = np.asarray(nn.predict(forecaster, result.train_state, x_test))[:, 0]
forecast = forecast * std + mean
fig, ax = plt.subplots(figsize=(10, 3.5), layout="constrained")
test_days = days[window + split :]
ax.plot(test_days, y_test[:, 0] * std + mean, label="actual", linewidth=1)
ax.plot(test_days, forecast, label="LSTM forecast (one day ahead)", linewidth=1.5)
ax.set_xlabel("day")
ax.legend()
plt.show()"""),
    md("""
After 30 epochs the validation MSE on the standardized series is 0.034 (0.17 after the first
epoch); the figure below compares the one-day-ahead forecast with the series.

## An LSTM that reads text

Character by character: each character becomes a vector (an `Embedding`), the LSTM reads the sequence,
and at every step a dense layer predicts the next character."""),
    code(f"""
text = {wrapped(TEXT)}
chars = sorted(set(text))
ids = np.array([chars.index(c) for c in text], np.int32)
T = 32
starts = np.arange(0, len(ids) - T - 1, 2)
x_text = np.stack([ids[s : s + T] for s in starts])  # (n, T) integer ids
# the next character at every step
y_text = np.stack([ids[s + 1 : s + T + 1] for s in starts])
reader = nn.serial(nn.Embedding(len(chars), 16), nn.LSTM(128), nn.Dense(len(chars)))
nn.summary(reader, (T,), show=False)
result = nn.fit(reader, nn.losses.softmax_cross_entropy, optax.adam(1e-2), x_text,
                y_text, epochs=5 if SMOKE else 150, batch_size=32,
                metrics={{"accuracy": nn.metrics.accuracy}}, progress=False)
accuracy, epochs = result.history["accuracy"][-1], len(result.history["loss"])
print(f"next-character accuracy {{accuracy:.0%}} after {{epochs}} epochs")"""),
    md("""
At full size (150 epochs) the LSTM predicts 97% of the next characters of its training text.

To generate, feed the text so far and take the most likely next character, again and again. The window
has a fixed length `T` (right-padded: a left-to-right model ignores what comes after), so one compiled
function serves every step."""),
    code("""
forward = jax.jit(lambda params, state, ids: reader.apply(params, state, ids)[0])


def generate(prompt, n=120):
    out = [chars.index(c) for c in prompt]
    for _ in range(n):
        window = out[-T:]
        ids = np.zeros((1, T), np.int32)
        ids[0, : len(window)] = window
        logits = forward(result.train_state.params, result.train_state.state, ids)
        out.append(int(np.argmax(logits[0, len(window) - 1])))
    return "".join(chars[i] for i in out)


print(generate("A neuron ", n=40 if SMOKE else 160))"""),
    md("""
The full-size run continues the prompt with its training text word for word: a four-sentence text is
easy to memorize, and this is what memorizing looks like."""),
]

# --- 05: a Transformer language model ------------------------------------------------------------------

TRANSFORMER = [
    md("""
## Attention instead of recurrence

A Transformer reads the whole sequence at once: self-attention lets every position look at every
earlier one (a causal mask hides the future). Here is a small GPT-style character model on the same
text as the LSTM notebook: embedding, positions, two decoder blocks, a final norm and the output layer."""),
    code(f"""
text = {wrapped(TEXT)}
chars = sorted(set(text))
ids = np.array([chars.index(c) for c in text], np.int32)
T = 32
starts = np.arange(0, len(ids) - T - 1, 2)
x_text = np.stack([ids[s : s + T] for s in starts])  # (n, T)
y_text = np.stack([ids[s + 1 : s + T + 1] for s in starts])
d_model = 64
lm = nn.serial(
    nn.Embedding(len(chars), d_model),
    nn.SinusoidalPositionalEncoding(),
    nn.TransformerDecoderBlock(num_heads=4, mlp_dim=4 * d_model),
    nn.TransformerDecoderBlock(num_heads=4, mlp_dim=4 * d_model),
    nn.LayerNorm(),
    nn.Dense(len(chars)),
)
table = nn.summary(lm, (T,))  # prints the table and returns it"""),
    scrolled("""
result = nn.fit(lm, nn.losses.softmax_cross_entropy, optax.adamw(3e-3), x_text, y_text,
                epochs=3 if SMOKE else 150, batch_size=32,
                metrics={"accuracy": nn.metrics.accuracy}, progress=not SMOKE)"""),
    code("""
nn.plots.plot_history(result.history)"""),
    md("""
At full size (150 epochs) the model predicts 96.5% of the next characters (it passes 90% after
about 28 epochs; the log scrolls).

Sampling: the window has a fixed length `T`, right-padded (causal attention never looks ahead), so one
compiled function serves every step; `temperature` below 1 makes the choice greedier."""),
    code("""
forward = jax.jit(lambda params, state, ids: lm.apply(params, state, ids)[0])


def generate(prompt, n=120, temperature=0.5, seed=0):
    key = jax.random.key(seed)
    out = [chars.index(c) for c in prompt]
    for _ in range(n):
        window = out[-T:]
        ids = np.zeros((1, T), np.int32)
        ids[0, : len(window)] = window
        logits = forward(result.train_state.params, result.train_state.state, ids)
        logits = logits[0, len(window) - 1]
        key, sub = jax.random.split(key)
        out.append(int(jax.random.categorical(sub, logits / temperature)))
    return "".join(chars[i] for i in out)


print(generate("Training ", n=40 if SMOKE else 160))"""),
    md("""
Sampled at temperature 0.5, the full-size model continues "Training " with the text's own sentences
("compares the network's predictions with the labels, measures the error with a loss, ...")."""),
]

# --- 06: many models in one program ---------------------------------------------------------------------------

ENSEMBLES = [
    md("""
## Ensembles and sweeps, vmapped

The train step is a pure function, so `jax.vmap` trains many models as one compiled program. `fit_many`
trains every combination of seeds and hyperparameters at once (the learning rate is injected into the
optimizer state, so one program serves every value)."""),
    scrolled("""
images, labels = nn.data.load_digits()
x = images.reshape(len(images), -1).astype(np.float32) / 16
x_train, y_train, x_test, y_test = nn.data.train_test_split(
    x, labels, test_fraction=0.25, stratify=True)
if SMOKE:
    x_train, y_train = x_train[:512], y_train[:512]
model = nn.serial(nn.Dense(64), nn.Relu(), nn.Dense(10))
rates = [1e-3, 3e-3, 1e-2]
many = nn.fit_many(model, nn.losses.softmax_cross_entropy, optax.adam, x_train, y_train,
                   seeds=range(2 if SMOKE else 4), hyperparams={"learning_rate": rates},
                   epochs=3 if SMOKE else 30, batch_size=32,
                   metrics={"accuracy": nn.metrics.accuracy},
                   validation_data=(x_test, y_test), select="val_accuracy", mode="max")
shapes = {k: v.shape for k, v in many.history.items()}
print(len(many.configs), "models; history", shapes)
print("best:", many.configs[many.best_index])"""),
    code("""
runs = {}
for rate in rates:  # the mean over seeds, per learning rate
    members = [i for i, c in enumerate(many.configs) if c["learning_rate"] == rate]
    mean = {k: v[members].mean(axis=0).tolist() for k, v in many.history.items()}
    runs[f"lr={rate:g}"] = mean
nn.plots.plot_history(runs, metrics=["loss", "accuracy"])"""),
    md("""
Twelve models (4 seeds x 3 learning rates) trained for 30 epochs; the best is seed 2 with
learning rate 0.01. The faster rates converge first (the curves are the means over seeds).

An ensemble averages its members' predicted probabilities; it usually beats its average member."""),
    code("""
# (models, n, 10)
logits = nn.ensemble.ensemble_predict(model, many.train_states, x_test)
members = np.asarray((logits.argmax(-1) == y_test).mean(axis=1))
ensemble = float((jax.nn.softmax(logits).mean(axis=0).argmax(-1) == y_test).mean())
print(f"members: mean accuracy {members.mean():.3f} (best {members.max():.3f})")
print(f"ensemble: accuracy {ensemble:.3f}")"""),
    md("""
In the full-size run the members reach 96.8% on average (the best 97.8%) and the ensemble 97.3%:
better than the average member, not better than the best one."""),
]

NOTEBOOKS = {
    "01_neurons_and_activations": (
        "Neurons and activation functions",
        "From one neuron to a small network, following the source texts: the 0.67 neuron, the activation "
        "functions and their derivatives, a perceptron, and a network drawn from its real weights.",
        NEURONS,
    ),
    "02_mlp_digits": (
        "An MLP on handwritten digits, optimizers compared",
        "A multi-layer perceptron on the embedded 8x8 digits (or MNIST): progress bar, model summary, "
        "callbacks, five Optax optimizers on one plot, and a confusion matrix.",
        DIGITS,
    ),
    "03_cnn_digits": (
        "A convolutional network on digits",
        "Convolutions and pooling on the 8x8 digits as images: summary, training curves, confusion matrix, "
        "and the learned kernels and feature maps.",
        CNN,
    ),
    "04_rnn_sequences": (
        "Recurrent networks: forecasting and text",
        "An LSTM forecasting a seasonal time series one day ahead, and a character-level LSTM reading text.",
        RNN,
    ),
    "05_transformer_lm": (
        "A small Transformer language model",
        "A GPT-style character model: embeddings, positions, causal self-attention blocks, and sampling.",
        TRANSFORMER,
    ),
    "06_ensembles_sweeps": (
        "Ensembles and hyperparameter sweeps in one program",
        "Seeds times learning rates trained at once with `fit_many` (one vmapped, compiled program), and an "
        "ensemble of them.",
        ENSEMBLES,
    ),
}


def build() -> dict[str, str]:
    """``{file name: notebook JSON}`` for every notebook."""
    out = {}
    for name, (title, intro, cells) in NOTEBOOKS.items():
        nb = notebook(name, title, intro, cells)
        nbformat.validate(nb)
        out[f"{name}.ipynb"] = nbformat.writes(nb) + "\n"
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if a notebook is out of date")
    args = parser.parse_args(argv)
    stale = []
    for file, text in build().items():
        path = HERE / file
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(file)
        else:
            path.write_text(text)
            print("wrote", path.relative_to(HERE.parent))
    if stale:
        print("out of date (run python notebooks/build.py):", ", ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
