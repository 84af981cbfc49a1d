"""nnjax: neural networks, end to end, as pure functions.

The whole contract — every layer is a ``Layer(init, apply, name)`` of two pure functions (plus an
optional ``input_dtype``, ``int32`` for token inputs such as ``Embedding``):

    params, state = layer.init(key, input_shape, dtype=jnp.float32)   # input_shape: ONE example, no batch axis
    y, new_state  = layer.apply(params, state, x, key=None, train=False)  # x: (batch, *input_shape)

``params``/``state`` are pytrees of arrays (nested dicts with readable names, ``{}`` when empty); keys are
explicit; nothing is hidden. Combinators (``serial``, ``parallel``, ``residual``, ``fanout``,
``concatenate``, ``add``, ``named``) build layers from layers. A loss is ``loss(predictions, targets) ->
scalar``, the short form of a general ``nnjax.objective`` ``(params, state, batch, *, key, train) -> (loss,
(new_state, aux))``; ``make_train_step`` turns model + objective + any Optax optimizer into the pure,
jittable, vmappable step ``(train_state, batch) -> (train_state, metrics)``; ``fit`` runs it over epochs.

Example:
  >>> import jax, jax.numpy as jnp, nnjax
  >>> model = nnjax.serial(nnjax.Dense(32), nnjax.Relu(), nnjax.Dense(10))
  >>> params, state = model.init(jax.random.key(0), (64,))
  >>> jax.tree.map(jnp.shape, params)["dense_0"]
  {'b': (32,), 'w': (64, 32)}
"""

from nnjax import (
    activations,
    callbacks,
    config,
    data,
    ensemble,
    initializers,
    interop,
    losses,
    metrics,
    models,
    per_example,
    plots,
    precision,
    sharding,
)
from nnjax._src.activations import (
    Elu,
    Gelu,
    LeakyRelu,
    LogSoftmax,
    Relu,
    Sigmoid,
    Silu,
    Softmax,
    Softplus,
    Step,
    StraightThroughStep,
    Tanh,
)
from nnjax._src.allocator import keep_freed_memory
from nnjax._src.attention import (
    MultiHeadAttention,
    TransformerDecoderBlock,
    TransformerEncoderBlock,
    reference_attention,
)
from nnjax._src.basic import Dense, Dropout, Flatten, Identity, Reshape
from nnjax._src.checkpoint import (
    abstract_train_state,
    checkpoint_lock,
    checkpoint_steps,
    latest_step,
    restore_checkpoint,
    save_checkpoint,
)
from nnjax._src.compile import default_compiler_options, jit
from nnjax._src.conv import Conv, ConvTranspose
from nnjax._src.core import Layer, Named, add, concatenate, fanout, named, parallel, residual, serial, stateless
from nnjax._src.embedding import (
    Embedding,
    LearnedPositionalEmbedding,
    SinusoidalPositionalEncoding,
    apply_rope,
    embedding_attend,
    sinusoidal_positions,
)
from nnjax._src.ensemble import ManyResult, fit_many
from nnjax._src.errors import (
    CheckpointCorruptError,
    CheckpointDiskFullError,
    CheckpointError,
    CheckpointLockedError,
    CheckpointMismatchError,
    CheckpointNotFoundError,
    CheckpointPermissionError,
    CheckpointWriteError,
    ForwardModeError,
    LayerError,
    LayerTypeError,
    NonFiniteError,
)
from nnjax._src.fit import FitResult, fit
from nnjax._src.freeze import FrozenOptimizer, freeze
from nnjax._src.inference import evaluate, predict
from nnjax._src.lora import lora, merge_lora
from nnjax._src.normalization import BatchNorm, GroupNorm, LayerNorm, RMSNorm
from nnjax._src.objective import Objective, objective
from nnjax._src.per_example import per_example_grads
from nnjax._src.pooling import AvgPool, GlobalAvgPool, GlobalMaxPool, MaxPool
from nnjax._src.precision import Policy, with_policy
from nnjax._src.recurrent import (
    GRU,
    LSTM,
    RNN,
    Bidirectional,
    GRUCell,
    LSTMCell,
    SimpleRNN,
    SimpleRNNCell,
    sequence_mask,
)
from nnjax._src.stack import Stacked, remat, stack
from nnjax._src.step_stats import StepStats
from nnjax._src.stream import fit_stream, prefetch_to_device
from nnjax._src.summary import summarize, summary
from nnjax._src.train import TrainState, eval_key, init_train_state, make_eval_step, make_train_step, step_key
from nnjax._src.training_run import training_run

__version__ = "0.1.0"

__all__ = [
    "AvgPool",
    "BatchNorm",
    "Bidirectional",
    "CheckpointCorruptError",
    "CheckpointDiskFullError",
    "CheckpointError",
    "CheckpointLockedError",
    "CheckpointMismatchError",
    "CheckpointNotFoundError",
    "CheckpointPermissionError",
    "CheckpointWriteError",
    "Conv",
    "ConvTranspose",
    "Dense",
    "Dropout",
    "Elu",
    "Embedding",
    "FitResult",
    "FrozenOptimizer",
    "ForwardModeError",
    "Flatten",
    "GRU",
    "GRUCell",
    "Gelu",
    "GlobalAvgPool",
    "GlobalMaxPool",
    "GroupNorm",
    "Identity",
    "LSTM",
    "LSTMCell",
    "Layer",
    "LayerError",
    "LayerNorm",
    "LayerTypeError",
    "LeakyRelu",
    "LearnedPositionalEmbedding",
    "LogSoftmax",
    "ManyResult",
    "MaxPool",
    "MultiHeadAttention",
    "Named",
    "NonFiniteError",
    "Objective",
    "Policy",
    "RMSNorm",
    "RNN",
    "Relu",
    "Reshape",
    "Sigmoid",
    "Silu",
    "SimpleRNN",
    "SimpleRNNCell",
    "SinusoidalPositionalEncoding",
    "Softmax",
    "Softplus",
    "Step",
    "Stacked",
    "StepStats",
    "StraightThroughStep",
    "Tanh",
    "TrainState",
    "TransformerDecoderBlock",
    "TransformerEncoderBlock",
    "abstract_train_state",
    "activations",
    "add",
    "apply_rope",
    "callbacks",
    "checkpoint_lock",
    "checkpoint_steps",
    "concatenate",
    "config",
    "data",
    "default_compiler_options",
    "embedding_attend",
    "ensemble",
    "eval_key",
    "evaluate",
    "fanout",
    "fit",
    "fit_many",
    "fit_stream",
    "freeze",
    "init_train_state",
    "initializers",
    "interop",
    "jit",
    "keep_freed_memory",
    "latest_step",
    "lora",
    "losses",
    "make_eval_step",
    "make_train_step",
    "merge_lora",
    "metrics",
    "models",
    "named",
    "objective",
    "parallel",
    "per_example",
    "per_example_grads",
    "plots",
    "precision",
    "predict",
    "prefetch_to_device",
    "reference_attention",
    "remat",
    "residual",
    "restore_checkpoint",
    "save_checkpoint",
    "sequence_mask",
    "serial",
    "sharding",
    "sinusoidal_positions",
    "stack",
    "stateless",
    "step_key",
    "summarize",
    "summary",
    "training_run",
    "with_policy",
]
