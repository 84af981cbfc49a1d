"""Models: a small zoo of classic networks, each a plain ``nnjax.Layer`` built from nnjax layers.

    ResNet20, ResNet18, ResNet, BasicBlock     images (batch, H, W, C) -> logits      (resnet)
    ViT                                        images (batch, H, W, C) -> logits      (Vision Transformer)
    GPT, generate, gpt_prefill, gpt_decode_step, gpt_init_cache
                                               tokens (batch, T) -> logits (batch, T, vocab); KV-cache decoding
    MLP, LeNet5                                the teaching path: the 8x8 digits, MNIST

Every model has readable params (``jax.tree.map(jnp.shape, params)`` explains it), works with ``summary``,
``make_train_step`` and ``fit``, and keeps BatchNorm statistics in ``state``.
"""

from nnjax._src.models.gpt import (
    GPT,
    GPTConfig,
    GPTModel,
    KVCache,
    generate,
    gpt_decode_step,
    gpt_init_cache,
    gpt_prefill,
)
from nnjax._src.models.mlp import MLP, LeNet5
from nnjax._src.models.resnet import BasicBlock, ResNet, ResNet18, ResNet20
from nnjax._src.models.vit import ViT

__all__ = [
    "GPT",
    "MLP",
    "BasicBlock",
    "GPTConfig",
    "GPTModel",
    "KVCache",
    "LeNet5",
    "ResNet",
    "ResNet18",
    "ResNet20",
    "ViT",
    "generate",
    "gpt_decode_step",
    "gpt_init_cache",
    "gpt_prefill",
]
