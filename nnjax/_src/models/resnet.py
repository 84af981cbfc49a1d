"""Residual networks (He et al., 2016): the CIFAR ResNet-20 and the ImageNet ResNet-18, of basic blocks.

    stem -> stage_1 -> ... -> stage_n -> GlobalAvgPool -> Dense(num_classes)
    stage_i = BasicBlock(widths[i], strides=1 if i == 0 else 2), then stage_sizes[i] - 1 BasicBlock(widths[i])

Images are channels-last, ``(batch, height, width, channels)``, as every nnjax convolution. Convolutions
have no bias (BatchNorm follows each) and PyTorch's explicit paddings (1 for 3x3, 3 for the 7x7 stem),
so torchvision weights map one to one; BatchNorm uses ``momentum=0.9`` (PyTorch's ``momentum=0.1``) and
``epsilon=1e-5``, with its running statistics in ``state``.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from nnjax._src.activations import Relu
from nnjax._src.basic import Dense
from nnjax._src.conv import Conv
from nnjax._src.core import Layer, serial
from nnjax._src.errors import LayerError
from nnjax._src.models import init as init_part
from nnjax._src.models import positive_int, renamed
from nnjax._src.models import run as run_part
from nnjax._src.normalization import BatchNorm
from nnjax._src.pooling import GlobalAvgPool, MaxPool
from nnjax._src.types import Shape

STEMS = ("cifar", "imagenet")
BN_MOMENTUM, BN_EPSILON = 0.9, 1e-5


def _conv(features: int, kernel: int, strides: int = 1) -> Layer:
    pad = (kernel - 1) // 2
    return Conv(features, kernel, strides=strides, padding=((pad, pad), (pad, pad)), use_bias=False, w_init="he_normal")


def _norm(momentum: float = BN_MOMENTUM, epsilon: float = BN_EPSILON) -> Layer:
    return BatchNorm(momentum=momentum, epsilon=epsilon)


def BasicBlock(  # noqa: N802 - layer constructors are CamelCase
    features: int, strides: int = 1, *, bn_momentum: float = BN_MOMENTUM, bn_epsilon: float = BN_EPSILON
) -> Layer:
    """The basic residual block of ResNet-18/34 and the CIFAR ResNets: two 3x3 convolutions and a skip.

        h = relu(norm_1(conv_1(x)))              # conv_1: 3x3, stride `strides`
        y = relu(norm_2(conv_2(h)) + shortcut(x))  # shortcut: x, or norm(conv(x)) with a 1x1 stride-`strides` conv

    The projection shortcut is built when the shape changes (``strides != 1`` or ``in_channels != features``,
    seen at ``init``); torchvision calls it ``downsample``.

    Params: ``{"conv_1": {"w": (3, 3, in_channels, features)}, "norm_1": {"scale", "bias"}, "conv_2": {"w": (3, 3,
    features, features)}, "norm_2": {...}[, "shortcut": {"conv": {"w": (1, 1, in_channels, features)}, "norm":
    {...}}]}``. State: the running statistics of each norm, ``{"norm_1": {"mean", "var"}, ...}``.

    Args:
      features: output channels.
      strides: stride of the first convolution (and of the shortcut); 2 halves the height and width.
      bn_momentum: the BatchNorms' running-average momentum (``BatchNorm(momentum=...)``; PyTorch's
        ``momentum`` is ``1 - bn_momentum``). Lower it when an epoch has few steps.
      bn_epsilon: the BatchNorms' epsilon.

    Returns:
      The block, a ``Layer``: ``x: (batch, H, W, in_channels) -> (batch, ceil(H / strides), ceil(W / strides),
      features)``; ``input_shape`` is ``(H, W, in_channels)``. ``train=True`` uses the batch statistics and
      returns updated running averages; ``train=False`` uses the running averages.

    Raises:
      TypeError, ValueError: ``features`` or ``strides`` is not a positive int.
      LayerError: (at ``init``) ``input_shape`` is not ``(H, W, channels)``.

    Example:
      >>> block = nnjax.models.BasicBlock(32, strides=2)
      >>> params, state = jax.eval_shape(lambda key: block.init(key, (16, 16, 16)), jax.random.key(0))  # shapes only
      >>> sorted(params), params["shortcut"]["conv"]["w"].shape
      (['conv_1', 'conv_2', 'norm_1', 'norm_2', 'shortcut'], (1, 1, 16, 32))
      >>> block.output_shape((16, 16, 16))
      (8, 8, 32)
    """
    name = f"BasicBlock({features})" if strides == 1 else f"BasicBlock({features}, strides={strides})"
    positive_int(name, "features", features)
    positive_int(name, "strides", strides)
    conv_1, conv_2, norm = _conv(features, 3, strides), _conv(features, 3), _norm(bn_momentum, bn_epsilon)
    shortcut_conv = Conv(features, 1, strides=strides, padding="VALID", use_bias=False, w_init="he_normal")

    def init(key, input_shape: Shape, dtype=jnp.float32):
        if not (isinstance(input_shape, tuple) and len(input_shape) == 3):
            raise LayerError(
                f"{name}: argument `input_shape` expected one image (height, width, channels), given {input_shape!r}."
            )
        height, width, channels = input_shape
        k1, k2, k3 = jax.random.split(key, 3)
        params, state = {}, {}
        params["conv_1"], _ = init_part(name, "conv_1", conv_1, k1, input_shape, dtype)
        params["norm_1"], state["norm_1"] = norm.init(None, (features,), dtype)
        params["conv_2"], _ = init_part(name, "conv_2", conv_2, k2, (height, width, features), dtype)
        params["norm_2"], state["norm_2"] = norm.init(None, (features,), dtype)
        if strides != 1 or channels != features:
            conv_params, _ = init_part(name, "shortcut", shortcut_conv, k3, input_shape, dtype)
            norm_params, norm_state = norm.init(None, (features,), dtype)
            params["shortcut"] = {"conv": conv_params, "norm": norm_params}
            state["shortcut"] = {"norm": norm_state}
        return params, state

    def apply(params, state, x, *, key=None, train=False):
        new_state = {}
        h, _ = run_part(name, "conv_1", conv_1, params["conv_1"], {}, x)
        h, new_state["norm_1"] = run_part(name, "norm_1", norm, params["norm_1"], state["norm_1"], h, train=train)
        h, _ = run_part(name, "conv_2", conv_2, params["conv_2"], {}, jax.nn.relu(h))
        h, new_state["norm_2"] = run_part(name, "norm_2", norm, params["norm_2"], state["norm_2"], h, train=train)
        skip = x
        if "shortcut" in params:
            p, s = params["shortcut"], state["shortcut"]
            skip, _ = run_part(name, "shortcut", shortcut_conv, p["conv"], {}, x)
            skip, norm_state = run_part(name, "shortcut", norm, p["norm"], s["norm"], skip, train=train)
            new_state["shortcut"] = {"norm": norm_state}
        return jax.nn.relu(h + skip), new_state

    return Layer(init, apply, name)


def _stem(stem: str | Layer, width: int, model: str, norm: Layer) -> Layer:
    if isinstance(stem, Layer):
        return stem
    if stem == "cifar":  # 3x3 conv, no downsampling
        return renamed(serial(_conv(width, 3), norm, Relu()), "Stem")
    if stem == "imagenet":  # 7x7 stride-2 conv, 3x3 stride-2 max pool: H/4
        pool = MaxPool(3, strides=2, padding=((1, 1), (1, 1)))
        return renamed(serial(_conv(width, 7, strides=2), norm, Relu(), pool), "Stem")
    raise ValueError(f"{model}: argument `stem` expected one of {list(STEMS)} or a Layer, given {stem!r}.")


def _int_tuple(model: str, argument: str, values: Sequence[int]) -> tuple[int, ...]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
        raise TypeError(
            f"{model}: argument `{argument}` expected a non-empty sequence of positive ints, given {values!r}."
        )
    for value in values:
        positive_int(model, argument, value)
    return tuple(values)


def ResNet(  # noqa: N802
    stage_sizes: Sequence[int],
    widths: Sequence[int],
    num_classes: int,
    *,
    stem: str | Layer = "cifar",
    name: str | None = None,
    bn_momentum: float = BN_MOMENTUM,
    bn_epsilon: float = BN_EPSILON,
) -> Layer:
    """A residual network of basic blocks: a stem, stages of ``BasicBlock``, global average pooling, a dense head.

    Stage ``i`` has ``stage_sizes[i]`` blocks of ``widths[i]`` channels; every stage but the first starts with
    a stride-2 block (half the height and width) whose shortcut is a 1x1 convolution and BatchNorm.

    Params (from ``serial``): ``{"stem_0": {"conv_0", "batch_norm_1", ...}, "stage_1": {"basic_block_0": <BasicBlock>,
    ...}, ..., "global_avg_pool_{n+1}": {}, "dense_{n+2}": {"w": (widths[-1], num_classes), "b"}}``; torchvision's
    ``conv1``/``bn1`` are in ``stem_0``, ``layer{i}.{j}`` is ``stage_{i}/basic_block_{j}`` (its ``conv1``, ``bn1``,
    ``downsample.0``/``.1`` are ``conv_1``, ``norm_1``, ``shortcut/conv``/``shortcut/norm``), ``fc`` is the dense
    head (PyTorch's conv weights ``(out, in, kh, kw)`` transpose to ``(kh, kw, in, out)``). State: the BatchNorm
    running statistics, in the same tree.

    Args:
      stage_sizes: blocks per stage, e.g. ``(3, 3, 3)`` (ResNet-20) or ``(2, 2, 2, 2)`` (ResNet-18).
      widths: channels per stage, one per stage; the stem outputs ``widths[0]`` channels.
      num_classes: outputs of the head (logits).
      stem: ``"cifar"`` (3x3 conv, BatchNorm, ReLU: full resolution), ``"imagenet"`` (7x7 stride-2 conv,
        BatchNorm, ReLU, 3x3 stride-2 max pool: a quarter of the resolution) or any ``Layer``.
      name: the model's name (default ``"ResNet"``).
      bn_momentum: every BatchNorm's running-average momentum (default 0.9; PyTorch's ``momentum=0.1``).
        With few steps per epoch the running averages lag the weights: lower it (e.g. 0.5).
      bn_epsilon: every BatchNorm's epsilon (default 1e-5).

    Returns:
      The network, a ``Layer``: ``x: (batch, H, W, channels)`` float images ``-> (batch, num_classes)`` logits;
      ``input_shape`` is ``(H, W, channels)``. Train with ``train=True`` (batch statistics; the returned state
      holds the updated running averages), evaluate with ``train=False`` (running averages).

    Raises:
      TypeError, ValueError: ``stage_sizes``/``widths`` are not non-empty sequences of positive ints, their
        lengths differ, ``num_classes`` is not a positive int, or ``stem`` is unknown.

    Example:
      >>> model = nnjax.models.ResNet((1, 1), (8, 16), num_classes=5)
      >>> params, state = jax.eval_shape(lambda key: model.init(key, (16, 16, 3)), jax.random.key(0))  # shapes only
      >>> sorted(params)
      ['dense_4', 'global_avg_pool_3', 'stage_1', 'stage_2', 'stem_0']
      >>> state["stem_0"]["batch_norm_1"]["mean"].shape   # running statistics
      (8,)
      >>> model.output_shape((16, 16, 3))
      (5,)
    """
    model = name or "ResNet"
    stage_sizes = _int_tuple(model, "stage_sizes", stage_sizes)
    widths = _int_tuple(model, "widths", widths)
    if len(stage_sizes) != len(widths):
        raise ValueError(
            f"{model}: arguments `stage_sizes` and `widths` expected one entry per stage each, given "
            f"{len(stage_sizes)} stage sizes {stage_sizes} and {len(widths)} widths {widths}."
        )
    positive_int(model, "num_classes", num_classes)
    stages = []
    for i, (size, width) in enumerate(zip(stage_sizes, widths, strict=True)):
        bn = {"bn_momentum": bn_momentum, "bn_epsilon": bn_epsilon}
        blocks = [BasicBlock(width, strides=1 if i == 0 else 2, **bn)] + [
            BasicBlock(width, **bn) for _ in range(size - 1)
        ]
        stages.append(renamed(serial(*blocks), f"Stage({width})"))
    network = serial(
        _stem(stem, widths[0], model, _norm(bn_momentum, bn_epsilon)), *stages, GlobalAvgPool(), Dense(num_classes)
    )
    return renamed(network, model)


def ResNet20(  # noqa: N802
    num_classes: int = 10, *, bn_momentum: float = BN_MOMENTUM, bn_epsilon: float = BN_EPSILON
) -> Layer:
    """ResNet-20 for 32x32 images (CIFAR-10; He et al. 2016, section 4.2), with projection shortcuts.

    Three stages of three ``BasicBlock`` with 16, 32 and 64 channels after a 3x3 stem; 19 convolutions and
    the dense head. The paper's shortcuts are parameter-free (option A, 0.27M parameters); these are 1x1
    projections where the shape changes (option B): 272,474 parameters for 10 classes.

    Args:
      num_classes: outputs of the head.
      bn_momentum, bn_epsilon: every BatchNorm's momentum and epsilon (as ``ResNet``).

    Returns:
      ``ResNet((3, 3, 3), (16, 32, 64), num_classes, stem="cifar")``: ``x: (batch, 32, 32, 3) -> (batch,
      num_classes)`` logits (any height and width work; the head follows a global average pool).

    Raises:
      TypeError, ValueError: ``num_classes`` is not a positive int.

    Example:
      >>> model = nnjax.models.ResNet20()
      >>> params, state = jax.eval_shape(lambda key: model.init(key, (32, 32, 3)), jax.random.key(0))
      >>> sum(p.size for p in jax.tree.leaves(params))
      272474
    """
    return ResNet(
        (3, 3, 3),
        (16, 32, 64),
        num_classes,
        stem="cifar",
        name="ResNet20",
        bn_momentum=bn_momentum,
        bn_epsilon=bn_epsilon,
    )


def ResNet18(  # noqa: N802
    num_classes: int = 1000, *, bn_momentum: float = BN_MOMENTUM, bn_epsilon: float = BN_EPSILON
) -> Layer:
    """ResNet-18 for ImageNet-sized images, as torchvision's ``resnet18``: 11,689,512 parameters for 1000 classes.

    A 7x7 stride-2 stem and a 3x3 stride-2 max pool, then four stages of two ``BasicBlock`` with 64, 128, 256
    and 512 channels, a global average pool and a dense head.

    Args:
      num_classes: outputs of the head.
      bn_momentum, bn_epsilon: every BatchNorm's momentum and epsilon (as ``ResNet``).

    Returns:
      ``ResNet((2, 2, 2, 2), (64, 128, 256, 512), num_classes, stem="imagenet")``: ``x: (batch, 224, 224, 3) ->
      (batch, num_classes)`` logits (any size of at least 32x32 works: the network downsamples by 32).

    Raises:
      TypeError, ValueError: ``num_classes`` is not a positive int.

    Example:
      >>> model = nnjax.models.ResNet18()
      >>> params, state = jax.eval_shape(lambda key: model.init(key, (224, 224, 3)), jax.random.key(0))
      >>> sum(p.size for p in jax.tree.leaves(params))
      11689512
    """
    return ResNet(
        (2, 2, 2, 2),
        (64, 128, 256, 512),
        num_classes,
        stem="imagenet",
        name="ResNet18",
        bn_momentum=bn_momentum,
        bn_epsilon=bn_epsilon,
    )
