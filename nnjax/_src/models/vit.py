"""The Vision Transformer (Dosovitskiy et al., 2021): an image as a sequence of patches, a Transformer encoder.

    image (batch, H, W, C) --patches--> (batch, N, hidden) --[cls] + positions--> (batch, N + 1, hidden)
      --depth x pre-norm TransformerEncoderBlock--> LayerNorm --class token--> Dense(num_classes)

``N = (H / patch_size) * (W / patch_size)``; the position table is sized at ``init`` from the image size. The
encoder blocks are one ``nnjax.stack`` by default (compiled once, whatever the depth); ``scan_layers=False``
unrolls them.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from nnjax._src import initializers
from nnjax._src.attention import TransformerEncoderBlock
from nnjax._src.basic import Dense, Dropout
from nnjax._src.conv import Conv
from nnjax._src.core import Layer, serial, stateless
from nnjax._src.errors import LayerError, check_rank
from nnjax._src.models import drop_rate, positive_int, renamed
from nnjax._src.models import run as run_part
from nnjax._src.normalization import LayerNorm
from nnjax._src.stack import remat as remat_layer
from nnjax._src.stack import stack
from nnjax._src.types import Shape


def _patch_embedding(patch_size: int, hidden: int) -> Layer:
    """Cuts the image into non-overlapping patches and projects each: a ``patch_size``-strided Conv, flattened.

    Params: ``{"w": (patch_size, patch_size, channels, hidden), "b": (hidden,)}``.
    Shapes: ``(batch, H, W, C) -> (batch, (H / patch_size) * (W / patch_size), hidden)``.
    """
    name = f"PatchEmbedding({patch_size}, {hidden})"
    conv = Conv(hidden, patch_size, strides=patch_size, padding="VALID", w_init="lecun_normal")

    def init(key, input_shape: Shape, dtype=jnp.float32):
        if not (isinstance(input_shape, tuple) and len(input_shape) == 3):
            raise LayerError(
                f"{name}: argument `input_shape` expected one image (height, width, channels), given {input_shape!r}."
            )
        height, width, _ = input_shape
        if height % patch_size or width % patch_size:
            raise LayerError(
                f"{name}: argument `input_shape` expected a height and width divisible by patch_size={patch_size}, "
                f"given {height}x{width}. Hint: crop or pad the images, or pick a patch size that divides them."
            )
        return conv.init(key, input_shape, dtype)

    def apply(params, state, x, *, key=None, train=False):
        y, _ = run_part(name, "conv", conv, params, {}, x)  # (B, H/p, W/p, hidden)
        return y.reshape((y.shape[0], -1, y.shape[-1])), state  # (B, N, hidden)

    return Layer(init, apply, name)


def _class_token() -> Layer:
    """Prepends a learned vector: ``(batch, N, hidden) -> (batch, N + 1, hidden)``; params ``{"token": (hidden,)}``."""
    name = "ClassToken"

    def init(key, input_shape: Shape, dtype=jnp.float32):
        return {"token": jnp.zeros((input_shape[-1],), dtype)}, {}

    def apply(params, state, x, *, key=None, train=False):
        check_rank(name, x, 3, "a batch of sequences (batch, N, hidden)")
        token = jnp.broadcast_to(params["token"].astype(x.dtype), (x.shape[0], 1, x.shape[-1]))  # (B, 1, hidden)
        return jnp.concatenate([token, x], axis=1), state

    return Layer(init, apply, name)


def _position_embedding() -> Layer:
    """Adds a learned vector per position; params ``{"table": (T, hidden)}``, ``T`` from ``input_shape`` at init."""
    name = "PositionEmbedding"
    table_init = initializers.normal(0.02)

    def init(key, input_shape: Shape, dtype=jnp.float32):
        return {"table": table_init(key, tuple(input_shape), dtype)}, {}

    def apply(params, state, x, *, key=None, train=False):
        table = params["table"]
        if jnp.ndim(x) != 3 or tuple(x.shape[1:]) != tuple(table.shape):
            raise LayerError(
                f"{name}: argument `x` expected shape (batch, {table.shape[0]}, {table.shape[1]}), given "
                f"{tuple(jnp.shape(x))}. Hint: the ViT was initialized for another image or patch size."
            )
        return x + table[None].astype(x.dtype), state

    return Layer(init, apply, name)


def ViT(  # noqa: N802 - layer constructors are CamelCase
    patch_size: int,
    hidden: int,
    depth: int,
    num_heads: int,
    mlp_dim: int,
    num_classes: int,
    dropout_rate: float = 0.0,
    *,
    scan_layers: bool = True,
    remat: Any = None,
    norm_epsilon: float = 1e-6,
) -> Layer:
    """A Vision Transformer classifier: patch embedding, class token, learned positions, pre-norm encoder.

        patches = Conv(hidden, patch_size, strides=patch_size)(x)   # one vector per patch
        h = concat([class_token, patches]) + positions
        h = TransformerEncoderBlock(num_heads, mlp_dim) applied depth times (pre-norm, GELU MLP)
        logits = Dense(num_classes)(LayerNorm(h)[:, 0])

    Params (from ``serial``): ``{"patch_embedding_0": {"w": (p, p, C, hidden), "b"}, "class_token_1": {"token":
    (hidden,)}, "position_embedding_2": {"table": (N + 1, hidden)}, "dropout_3": {}, "encoder_4":
    {"layers": BLOCK}, "layer_norm_5": {"scale", "bias"}, "class_token_pool_6": {},
    "dense_7": {"w": (hidden, num_classes), "b"}}``. No state. ``BLOCK`` is a ``TransformerEncoderBlock``'s params
    with a leading ``depth`` axis on every array (``nnjax.stack``); with ``scan_layers=False`` the encoder is
    ``{"transformer_encoder_block_0": ..., "transformer_encoder_block_1": ...}`` (a ``serial``), the layout of
    checkpoints saved before the blocks were stacked.

    Args:
      patch_size: side of the square patches; must divide the image's height and width.
      hidden: width of the token vectors (``d_model``); divisible by ``num_heads``.
      depth: number of encoder blocks.
      num_heads: attention heads per block.
      mlp_dim: hidden size of each block's MLP.
      num_classes: outputs of the head (logits).
      dropout_rate: dropout after the position embedding, on the attention weights and on each residual
        branch, in training (``apply(..., key=..., train=True)``).
      scan_layers: run the blocks as one ``nnjax.stack`` (default: compile time does not grow with depth);
        False unrolls them (one traced block per layer).
      remat: a rematerialization policy for every block (``nnjax.remat``'s names or a
        ``jax.checkpoint_policies`` policy), or None.
      norm_epsilon: every LayerNorm's epsilon (the blocks' and the final one; default 1e-6, as the paper's
        JAX code; PyTorch's default is 1e-5).

    Returns:
      The network, a ``Layer``: ``x: (batch, H, W, C)`` float images ``-> (batch, num_classes)`` logits;
      ``input_shape`` is ``(H, W, C)`` and fixes the number of positions.

    Raises:
      TypeError, ValueError: a size is not a positive int, ``hidden`` is not divisible by ``num_heads``, or
        ``dropout_rate`` is outside [0, 1).
      LayerError: (at ``init``) the image's height or width is not divisible by ``patch_size``.

    Example:
      >>> model = nnjax.models.ViT(patch_size=4, hidden=32, depth=2, num_heads=4, mlp_dim=64, num_classes=10)
      >>> params, state = model.init(jax.random.key(0), (32, 32, 3))
      >>> params["position_embedding_2"]["table"].shape   # 64 patches and the class token
      (65, 32)
      >>> model.output_shape((32, 32, 3))
      (10,)
    """
    name = f"ViT(patch_size={patch_size}, hidden={hidden}, depth={depth})"
    for argument, value in (
        ("patch_size", patch_size),
        ("hidden", hidden),
        ("depth", depth),
        ("num_heads", num_heads),
        ("mlp_dim", mlp_dim),
        ("num_classes", num_classes),
    ):
        positive_int("ViT", argument, value)
    drop_rate("ViT", dropout_rate)
    if hidden % num_heads:
        raise ValueError(
            f"ViT: argument `num_heads` expected a divisor of hidden={hidden} (each head gets hidden / num_heads "
            f"features), given {num_heads}."
        )
    if not isinstance(scan_layers, bool):
        raise TypeError(f"ViT: argument `scan_layers` expected a bool, given {type(scan_layers).__name__}.")
    block = TransformerEncoderBlock(num_heads, mlp_dim, dropout_rate, epsilon=norm_epsilon)
    if scan_layers:
        encoder = stack(block, depth, remat=remat)
    else:
        encoder = serial(*[block if remat is None else renamed(remat_layer(block, remat), block.name)] * depth)
    network = serial(
        _patch_embedding(patch_size, hidden),
        _class_token(),
        _position_embedding(),
        Dropout(dropout_rate),
        renamed(encoder, f"Encoder({depth})"),
        LayerNorm(epsilon=norm_epsilon),
        stateless(lambda h: h[:, 0], "ClassTokenPool"),  # (B, N + 1, hidden) -> (B, hidden)
        Dense(num_classes),
    )
    return renamed(network, name)
