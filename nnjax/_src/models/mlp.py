"""Teaching models: a multilayer perceptron and LeNet-5 (LeCun et al., 1998), for the digits and MNIST."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax.numpy as jnp

from nnjax._src.activations import Relu
from nnjax._src.basic import Dense, Flatten
from nnjax._src.conv import Conv
from nnjax._src.core import Layer, serial
from nnjax._src.errors import LayerError
from nnjax._src.models import positive_int, renamed
from nnjax._src.pooling import AvgPool
from nnjax._src.types import Shape


def _activation_layer(model: str, activation: Callable[[], Layer] | Layer) -> Callable[[], Layer]:
    """A factory of activation layers from a constructor (``nnjax.Relu``) or a layer (``nnjax.LeakyRelu(0.1)``)."""
    if isinstance(activation, Layer):
        return lambda: activation
    if callable(activation):
        layer = activation()
        if isinstance(layer, Layer):
            return activation
    raise TypeError(
        f"{model}: argument `activation` expected a Layer (e.g. nnjax.Tanh()) or a constructor of one (e.g. "
        f"nnjax.Relu), given {activation!r}."
    )


def MLP(  # noqa: N802 - layer constructors are CamelCase
    features: Sequence[int] = (128, 64),
    num_classes: int = 10,
    *,
    activation: Callable[[], Layer] | Layer = Relu,
) -> Layer:
    """A multilayer perceptron classifier: flatten, hidden Dense layers with an activation, a Dense output.

        Flatten -> Dense(features[0]) -> activation -> ... -> Dense(features[-1]) -> activation -> Dense(num_classes)

    Params (from ``serial``): ``{"flatten_0": {}, "dense_1": {"w": (in_features, features[0]), "b"}, "relu_2": {},
    ..., "dense_{2k+1}": {"w": (features[-1], num_classes), "b"}}`` (the activation's key follows its name).

    Args:
      features: sizes of the hidden layers, e.g. ``(128, 64)``; ``()`` gives logistic regression.
      num_classes: outputs (logits).
      activation: the hidden layers' activation: a layer constructor (``nnjax.Relu``, ``nnjax.Tanh``) or a layer
        (``nnjax.LeakyRelu(0.1)``).

    Returns:
      The network, a ``Layer``: ``x: (batch, *input_shape)`` floats (flattened first, so images work as they
      are) ``-> (batch, num_classes)`` logits.

    Raises:
      TypeError, ValueError: ``features`` is not a sequence of positive ints, ``num_classes`` is not a positive
        int, or ``activation`` is neither a layer nor a constructor of one.

    Example:
      >>> model = nnjax.models.MLP((32,), num_classes=10)
      >>> params, state = model.init(jax.random.key(0), (8, 8, 1))   # the 8x8 digits
      >>> jax.tree.map(jnp.shape, params)["dense_1"]
      {'b': (32,), 'w': (64, 32)}
      >>> model.output_shape((8, 8, 1))
      (10,)
    """
    if isinstance(features, (str, bytes)) or not isinstance(features, Sequence):
        raise TypeError(f"MLP: argument `features` expected a sequence of positive ints, given {features!r}.")
    for size in features:
        positive_int("MLP", "features", size)
    positive_int("MLP", "num_classes", num_classes)
    make = _activation_layer("MLP", activation)
    hidden = [layer for size in features for layer in (Dense(size), make())]
    return renamed(serial(Flatten(), *hidden, Dense(num_classes)), f"MLP({tuple(features)}, {num_classes})")


PADDINGS = ("VALID", "SAME")


def LeNet5(  # noqa: N802
    num_classes: int = 10, *, padding: str = "VALID", activation: Callable[[], Layer] | Layer = Relu
) -> Layer:
    """LeNet-5: two 5x5 convolutions with 2x2 average pooling, then three Dense layers (120, 84, num_classes).

        Conv(6, 5, "SAME") -> act -> AvgPool(2) -> Conv(16, 5, padding) -> act -> AvgPool(2) -> Flatten
          -> Dense(120) -> act -> Dense(84) -> act -> Dense(num_classes)

    On 28x28 MNIST images (the first convolution padded by 2, as usual for MNIST) with the default
    ``padding="VALID"`` this is the classic network: 16 maps of 5x5 reach the first Dense layer, 61,706 params
    for 10 classes. The 8x8 digits (``nnjax.data.load_digits``) are too small for an unpadded second 5x5
    convolution (the pooled map is 4x4): use ``padding="SAME"``, which keeps the size (16 maps of 2x2 reach
    the Dense layers; 21,386 params). The original's tanh/sigmoid and trainable subsampling are ReLU and
    plain average pooling here, as in modern re-implementations.

    Params (from ``serial``): ``{"conv_0": {"w": (5, 5, channels, 6), "b"}, "relu_1": {}, "avg_pool_2": {},
    "conv_3": {"w": (5, 5, 6, 16), "b"}, ..., "dense_7": {"w": (16 * h * w, 120), "b"}, ..., "dense_11": ...}``.

    Args:
      num_classes: outputs (logits).
      padding: padding of the second convolution: ``"VALID"`` (classic; images of at least 10x10) or ``"SAME"``
        (any image of at least 4x4, e.g. the 8x8 digits).
      activation: the activation after each convolution and hidden Dense layer: a layer constructor
        (``nnjax.Relu``, ``nnjax.Tanh``) or a layer.

    Returns:
      The network, a ``Layer``: ``x: (batch, H, W, channels)`` float images ``-> (batch, num_classes)`` logits;
      ``input_shape`` is e.g. ``(28, 28, 1)`` or ``(8, 8, 1)``.

    Raises:
      TypeError, ValueError: ``num_classes`` is not a positive int, ``padding`` is not ``"VALID"``/``"SAME"``, or
        ``activation`` is neither a layer nor a constructor of one.
      LayerError: (at ``init``) ``input_shape`` is not one image, or too small for ``padding``.

    Example:
      >>> model = nnjax.models.LeNet5()
      >>> params, state = jax.eval_shape(lambda key: model.init(key, (28, 28, 1)), jax.random.key(0))
      >>> sum(p.size for p in jax.tree.leaves(params))
      61706
      >>> digits = nnjax.models.LeNet5(padding="SAME")   # for the 8x8 digits
      >>> digits.output_shape((8, 8, 1))
      (10,)
    """
    positive_int("LeNet5", "num_classes", num_classes)
    if not isinstance(padding, str) or padding.upper() not in PADDINGS:
        raise ValueError(f"LeNet5: argument `padding` expected one of {list(PADDINGS)}, given {padding!r}.")
    padding = padding.upper()
    make = _activation_layer("LeNet5", activation)
    network = serial(
        Conv(6, 5, padding="SAME"),
        make(),
        AvgPool(2),
        Conv(16, 5, padding=padding),
        make(),
        AvgPool(2),
        Flatten(),
        Dense(120),
        make(),
        Dense(84),
        make(),
        Dense(num_classes),
    )
    name = f"LeNet5({num_classes})" if padding == "VALID" else f"LeNet5({num_classes}, padding='SAME')"
    smallest = 10 if padding == "VALID" else 4

    def init(key, input_shape: Shape, dtype=jnp.float32):
        if not (isinstance(input_shape, tuple) and len(input_shape) == 3):
            raise LayerError(
                f"{name}: argument `input_shape` expected one image (height, width, channels), e.g. (28, 28, 1), "
                f"given {input_shape!r}. Hint: the 8x8 digits are (8, 8, 1): `images[..., None]`."
            )
        if min(input_shape[:2]) < smallest:
            hint = (
                " Hint: LeNet5(padding='SAME') for small images such as the 8x8 digits." if padding == "VALID" else ""
            )
            raise LayerError(
                f"{name}: argument `input_shape` expected images of at least {smallest}x{smallest} with "
                f"padding={padding!r}, given {input_shape[0]}x{input_shape[1]}.{hint}"
            )
        return network.init(key, input_shape, dtype)

    return Layer(init, network.apply, name)
