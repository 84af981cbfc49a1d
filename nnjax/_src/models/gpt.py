"""A GPT-style decoder-only language model, with a key/value cache for fast generation.

    tokens (batch, T) int32 --token + position embedding--> (batch, T, hidden)
      --depth x pre-norm causal block--> LayerNorm --tied embedding (embedding_attend)--> logits (batch, T, vocab)

    block:  h = x + Attention(LayerNorm_1(x)),  y = h + MLP(LayerNorm_2(h))     # causal self-attention, GELU MLP

The blocks are one ``nnjax.stack`` by default (``params["blocks"]["layers"]``: every array with a leading
``depth`` axis, run by a ``lax.scan`` that compiles one block whatever the depth); ``scan_layers=False`` keeps
the unrolled form (``params["block_0"]``, ``params["block_1"]``, ...), which older checkpoints hold.

Generation (``generate``) runs the prompt once through the model, keeping every block's keys and values in
a ``KVCache`` (``gpt_prefill``), then decodes one token per step (``gpt_decode_step``): each step computes
the new token's query, key and value only and attends over the cached ones, so the prefix is never
recomputed. Shapes are static (the cache is allocated for the whole sequence), so all of it compiles once.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from nnjax._src import initializers
from nnjax._src.attention import MultiHeadAttention, reference_attention
from nnjax._src.core import Layer
from nnjax._src.embedding import Embedding, check_token_ids, embedding_attend
from nnjax._src.errors import LayerError, check_number, is_concrete
from nnjax._src.models import drop_rate, positive_int
from nnjax._src.models import run as run_part
from nnjax._src.normalization import LayerNorm
from nnjax._src.stack import STACKED, stack
from nnjax._src.stack import remat as remat_layer
from nnjax._src.types import Array, DType, Params, PRNGKey, Shape

LN_EPSILON = 1e-5  # GPT-2's layer_norm_epsilon
INIT_STD = 0.02  # GPT-2's initializer_range


class GPTConfig(NamedTuple):
    """The hyperparameters of a ``GPT`` model (``model.config``).

    Attributes:
      vocab_size: number of token ids. max_len: the longest sequence (size of the position table).
      hidden: width of the token vectors. depth: number of blocks. num_heads: attention heads per block.
      mlp_dim: hidden size of each block's MLP. dropout_rate: the dropout probability in training.
      scan_layers: the blocks are one ``nnjax.stack`` (True) or unrolled (False). remat: the blocks'
      rematerialization policy (``nnjax.remat``), or None. norm_epsilon: the LayerNorms' epsilon.

    Example:
      >>> config = nnjax.models.GPT(vocab_size=50, max_len=16, hidden=32, depth=1, num_heads=4, mlp_dim=64).config
      >>> config.head_dim, config.depth
      (8, 1)
    """

    vocab_size: int
    max_len: int
    hidden: int
    depth: int
    num_heads: int
    mlp_dim: int
    dropout_rate: float = 0.0
    scan_layers: bool = True
    remat: Any = None
    norm_epsilon: float = LN_EPSILON

    @property
    def head_dim(self) -> int:
        """Features per attention head, ``hidden // num_heads``."""
        return self.hidden // self.num_heads


class GPTModel(Layer):
    """The ``Layer`` that ``GPT`` returns: a plain layer (``init``, ``apply``, ``name``) plus its ``config``.

    Example:
      >>> model = nnjax.models.GPT(vocab_size=50, max_len=16, hidden=32, depth=1, num_heads=4, mlp_dim=64)
      >>> isinstance(model, nnjax.Layer), model.config.max_len
      (True, 16)
    """

    @property
    def config(self) -> GPTConfig:
        """The model's ``GPTConfig``."""
        return self.__dict__["config"]


class KVCache(NamedTuple):
    """The keys and values of every block for the positions decoded so far (a pytree: jit/scan carry it).

    Attributes:
      keys: the stacked model's (``scan_layers=True``): ONE ``(depth, batch, max_len, num_heads, head_dim)``
        array; the unrolled model's: a tuple of one ``(batch, max_len, num_heads, head_dim)`` array per block.
        Either way ``keys[i]`` is block ``i``'s and ``len(keys)`` is the depth.
      values: the same, for the values.

    Positions at or after the next one to decode hold zeros or stale entries; attention masks them out.

    Example:
      >>> model = nnjax.models.GPT(vocab_size=50, max_len=16, hidden=32, depth=1, num_heads=4, mlp_dim=64)
      >>> cache = nnjax.models.gpt_init_cache(model, batch=3)
      >>> len(cache.keys), cache.keys[0].shape   # one block
      (1, (3, 16, 4, 8))
    """

    keys: tuple[Array, ...]
    values: tuple[Array, ...]


# ---- the blocks ---------------------------------------------------------------------------------------

_NORM = LayerNorm(epsilon=LN_EPSILON)


def _norm(params: Params, x: Array, epsilon: float = LN_EPSILON) -> Array:
    return (_NORM if epsilon == LN_EPSILON else LayerNorm(epsilon=epsilon)).apply(params, {}, x)[0]


def _mlp(params: Params, x: Array) -> Array:
    h = jax.nn.gelu(x @ params["hidden"]["w"] + params["hidden"]["b"], approximate=True)  # GPT-2's "gelu_new"
    return h @ params["out"]["w"] + params["out"]["b"]


def _dropout(x: Array, rate: float, key: PRNGKey | None) -> Array:
    if key is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


def _block_init(key: PRNGKey, config: GPTConfig, dtype: DType) -> Params:
    """One block's params, GPT-2's initialization: normal(0.02), residual outputs normal(0.02 / sqrt(2 depth))."""
    d, n, h, m = config.hidden, config.num_heads, config.head_dim, config.mlp_dim
    kq, kk, kv, ko, kh, km = jax.random.split(key, 6)
    out_std = INIT_STD / math.sqrt(2 * config.depth)

    def normal(k, shape, std=INIT_STD):
        return std * jax.random.normal(k, shape, dtype)

    def norm():
        return {"scale": jnp.ones((d,), dtype), "bias": jnp.zeros((d,), dtype)}

    return {
        "norm_1": norm(),
        "attention": {
            "query": {"w": normal(kq, (d, n, h)), "b": jnp.zeros((n, h), dtype)},
            "key": {"w": normal(kk, (d, n, h)), "b": jnp.zeros((n, h), dtype)},
            "value": {"w": normal(kv, (d, n, h)), "b": jnp.zeros((n, h), dtype)},
            "out": {"w": normal(ko, (n, h, d), out_std), "b": jnp.zeros((d,), dtype)},
        },
        "norm_2": norm(),
        "mlp": {
            "hidden": {"w": normal(kh, (d, m)), "b": jnp.zeros((m,), dtype)},
            "out": {"w": normal(km, (m, d), out_std), "b": jnp.zeros((d,), dtype)},
        },
    }


def _is_stacked(params: Params) -> bool:
    return "blocks" in params


def _depth(params: Params) -> int:
    if _is_stacked(params):
        return int(params["blocks"][STACKED]["attention"]["key"]["w"].shape[0])
    return sum(1 for name in params if name.startswith("block_"))


def _key_weight_shape(params: Params) -> tuple[int, ...]:
    """One block's ``attention/key/w`` shape, ``(hidden, num_heads, head_dim)``."""
    if _is_stacked(params):
        return tuple(params["blocks"][STACKED]["attention"]["key"]["w"].shape[1:])
    return tuple(params["block_0"]["attention"]["key"]["w"].shape)


def _block(config: GPTConfig, attention: Layer) -> Layer:
    """One pre-norm causal block as a layer: ``(batch, T, hidden) -> (batch, T, hidden)``, params ``_block_init``'s.

    ``key`` (only when dropout is on) splits in three: attention weights, attention branch, MLP branch.
    """
    name = "GPTBlock"
    rate = config.dropout_rate

    def init(key, input_shape, dtype=jnp.float32):
        return _block_init(key, config, dtype), {}

    def apply(params, state, h, *, key=None, train=False):
        k_attention, k_1, k_2 = (None, None, None) if key is None else jax.random.split(key, 3)
        x_1 = _norm(params["norm_1"], h, config.norm_epsilon)
        a, _ = run_part(name, "attention", attention, params["attention"], {}, x_1, key=k_attention, train=train)
        h = h + _dropout(a, rate, k_1)
        h = h + _dropout(_mlp(params["mlp"], _norm(params["norm_2"], h, config.norm_epsilon)), rate, k_2)
        return h, state

    return Layer(init, apply, name)


def _check_tokens(where: str, tokens: Any, rank: int, vocab_size: int, argument: str = "tokens") -> None:
    check_token_ids(where, tokens, vocab_size, argument)
    if jnp.ndim(tokens) != rank:
        expected = "(batch,) (one token per sequence)" if rank == 1 else "(batch, T)"
        hint = f" Hint: a single sequence is `{argument}[None]`." if jnp.ndim(tokens) == rank - 1 else ""
        raise LayerError(
            f"{where}: argument `{argument}` expected token ids of shape {expected}, given {jnp.shape(tokens)}.{hint}"
        )


def GPT(  # noqa: N802 - layer constructors are CamelCase
    vocab_size: int,
    max_len: int,
    hidden: int,
    depth: int,
    num_heads: int,
    mlp_dim: int,
    dropout_rate: float = 0.0,
    *,
    scan_layers: bool = True,
    remat: Any = None,
    norm_epsilon: float = LN_EPSILON,
) -> GPTModel:
    """A GPT-2-style decoder-only language model: next-token logits for every position, through the tied embedding.

        h = token_embedding[tokens] + position_embedding[0:T]
        h = h + Attention(LayerNorm_1(h));  h = h + MLP(LayerNorm_2(h))    # per block, causal, GELU (tanh)
        logits = LayerNorm_final(h) @ token_embedding.T                    # embedding_attend

    Params: ``{"token_embedding": {"table": (vocab_size, hidden)}, "position_embedding": {"table": (max_len,
    hidden)}, "blocks": {"layers": BLOCK}, "final_norm": {"scale", "bias"}}`` where ``BLOCK`` is ``{"norm_1":
    {"scale", "bias"}, "attention": {"query": {"w": (hidden, num_heads, head_dim), "b": (num_heads, head_dim)},
    "key": ..., "value": ..., "out": {"w": (num_heads, head_dim, hidden), "b": (hidden,)}}, "norm_2": {...},
    "mlp": {"hidden": {"w": (hidden, mlp_dim), "b"}, "out": {"w": (mlp_dim, hidden), "b"}}}`` with a leading
    ``depth`` axis on every array (``nnjax.stack``: block ``i`` is index ``i``); no state. With
    ``scan_layers=False`` the blocks are ``"block_0"``, ``"block_1"``, ... (``BLOCK`` without the leading axis),
    the layout of checkpoints saved before the blocks were stacked. (``attention`` is
    ``nnjax.MultiHeadAttention``'s layout.) Both forms draw the same values from the same key.

    Porting GPT-2 (Hugging Face names, ``transformer.`` prefix dropped): ``wte``/``wpe`` are the two embedding
    tables; ``h.{i}.ln_1``, ``ln_2``, ``ln_f`` are block ``i``'s ``norm_1``, ``norm_2``, and ``final_norm``
    (``weight`` -> ``scale``); ``h.{i}.attn.c_attn`` (``weight (hidden, 3 hidden)``, ``bias (3 hidden,)``) splits
    in three along its last axis into ``query``, ``key``, ``value``, each reshaped to ``(hidden, num_heads,
    head_dim)`` (bias ``(num_heads, head_dim)``); ``attn.c_proj.weight`` reshapes to ``(num_heads, head_dim,
    hidden)`` as ``attention/out``; ``mlp.c_fc``/``mlp.c_proj`` are ``mlp/hidden``/``mlp/out``. GPT-2's ``Conv1D``
    weights are already ``(in, out)``: nothing is transposed. LayerNorm epsilon is 1e-5, the GELU is the tanh form.

    Args:
      vocab_size: number of token ids.
      max_len: the longest sequence (the position table's size).
      hidden: width of the token vectors; divisible by ``num_heads``.
      depth: number of blocks.
      num_heads: attention heads per block.
      mlp_dim: hidden size of each block's MLP (GPT-2: ``4 * hidden``).
      dropout_rate: dropout on the embeddings, the attention weights and both residual branches of every block,
        in training (``apply(..., key=..., train=True)``).
      scan_layers: run the blocks as one ``nnjax.stack`` (default: compile time does not grow with depth);
        False unrolls them (one traced block per layer, the params layout of older checkpoints).
      remat: a rematerialization policy for every block (``nnjax.remat``'s names, e.g. ``"nothing_saveable"``,
        or a ``jax.checkpoint_policies`` policy), or None: trade a second forward pass for activation memory.
      norm_epsilon: the LayerNorms' epsilon (GPT-2's 1e-5). The cached decoding functions (``gpt_init_cache``,
        ``generate``) take the default only.

    Returns:
      A ``GPTModel`` (a ``Layer`` with ``.config``): ``tokens: (batch, T)`` int32 ids, ``T <= max_len`` ``->
      (batch, T, vocab_size)`` logits, where position ``t`` sees tokens ``0..t`` only. ``input_shape`` is
      ``(T,)``. For generation: ``generate``, or ``gpt_init_cache``, ``gpt_prefill`` and ``gpt_decode_step``.

    Raises:
      TypeError, ValueError: a size is not a positive int, ``hidden`` is not divisible by ``num_heads``, or
        ``dropout_rate`` is outside [0, 1).
      LayerError: ``input_shape`` or ``tokens`` is not ``(T,)``/``(batch, T)`` with ``T <= max_len``, or
        ``train=True`` with dropout and no ``key``. LayerTypeError: float tokens.

    Example:
      >>> model = nnjax.models.GPT(vocab_size=50, max_len=16, hidden=32, depth=1, num_heads=4, mlp_dim=64)
      >>> params, state = model.init(jax.random.key(0), (16,))
      >>> sorted(params["blocks"]["layers"]), params["blocks"]["layers"]["attention"]["query"]["w"].shape
      (['attention', 'mlp', 'norm_1', 'norm_2'], (1, 32, 4, 8))
      >>> model.output_shape((10,))   # logits for each of 10 positions
      (10, 50)
    """
    name = f"GPT(vocab_size={vocab_size}, hidden={hidden}, depth={depth})"
    for argument, value in (
        ("vocab_size", vocab_size),
        ("max_len", max_len),
        ("hidden", hidden),
        ("depth", depth),
        ("num_heads", num_heads),
        ("mlp_dim", mlp_dim),
    ):
        positive_int("GPT", argument, value)
    drop_rate("GPT", dropout_rate)
    if hidden % num_heads:
        raise ValueError(
            f"GPT: argument `num_heads` expected a divisor of hidden={hidden} (each head gets hidden / num_heads "
            f"features), given {num_heads}."
        )
    if not isinstance(scan_layers, bool):
        raise TypeError(f"GPT: argument `scan_layers` expected a bool, given {type(scan_layers).__name__}.")
    config = GPTConfig(vocab_size, max_len, hidden, depth, num_heads, mlp_dim, float(dropout_rate), scan_layers, remat,
                       float(norm_epsilon))
    embedding = Embedding(vocab_size, hidden, table_init=initializers.normal(INIT_STD))
    attention = MultiHeadAttention(num_heads, causal=True, dropout_rate=dropout_rate)
    block = _block(config, attention)
    blocks = stack(block, depth, remat=remat)  # (checks remat, also for the unrolled form)
    if remat is not None:
        block = remat_layer(block, remat)

    def check_length(argument: str, length: Any) -> None:
        if not isinstance(length, int) or not 1 <= length <= max_len:
            raise LayerError(
                f"{name}: argument `{argument}` expected sequences of 1 to max_len={max_len} tokens, given length "
                f"{length!r}. Hint: crop the sequence to its last {max_len} tokens, or build the model with a larger "
                f"max_len."
            )

    def init(key, input_shape: Shape, dtype=jnp.float32):
        if not (isinstance(input_shape, tuple) and len(input_shape) == 1):
            raise LayerError(f"{name}: argument `input_shape` expected (T,) for one sequence, given {input_shape!r}.")
        check_length("input_shape", input_shape[0])
        k_token, k_position, k_blocks = jax.random.split(key, 3)
        params = {
            "token_embedding": embedding.init(k_token, input_shape, dtype)[0],
            "position_embedding": {"table": initializers.normal(INIT_STD)(k_position, (max_len, hidden), dtype)},
        }
        if scan_layers:
            params["blocks"] = blocks.init(k_blocks, (*input_shape, hidden), dtype)[0]
        else:  # block i from split(k_blocks, depth)[i], as nnjax.stack draws it: both forms hold the same values
            for i, k in enumerate(jax.random.split(k_blocks, depth)):
                params[f"block_{i}"] = _block_init(k, config, dtype)
        params["final_norm"] = _NORM.init(None, (hidden,), dtype)[0]
        return params, {}

    def apply(params, state, x, *, key=None, train=False):
        _check_tokens(name, x, 2, vocab_size, "x")
        check_length("x", x.shape[1])
        dropout = train and dropout_rate > 0.0
        if dropout and key is None:
            raise LayerError(
                f"{name}: argument `key` is required when train=True with dropout_rate={dropout_rate}; given None. "
                f"Hint: apply(params, state, x, key=jax.random.key(seed), train=True), or train=False to evaluate."
            )
        _check_form(name, config, params)
        k_embedding, k_blocks = jax.random.split(key) if dropout else (None, None)
        h = run_part(name, "token_embedding", embedding, params["token_embedding"], {}, x)[0]  # (B, T, hidden)
        h = _dropout(h + params["position_embedding"]["table"][None, : x.shape[1]], dropout_rate, k_embedding)
        if scan_layers:
            h, _ = run_part(name, "blocks", blocks, params["blocks"], {STACKED: {}}, h, key=k_blocks, train=train)
        else:  # block i gets split(k_blocks, depth)[i], as in nnjax.stack: both forms draw the same masks
            block_keys = [None] * depth if k_blocks is None else jax.random.split(k_blocks, depth)
            for i in range(depth):
                h, _ = run_part(name, f"block_{i}", block, params[f"block_{i}"], {}, h, key=block_keys[i], train=train)
        return embedding_attend(params["token_embedding"], _norm(params["final_norm"], h, norm_epsilon)), state

    model = GPTModel(init, apply, name, jnp.int32, (0, vocab_size))
    model.__dict__["config"] = config
    return model


# ---- the key/value cache ------------------------------------------------------------------------------


def _config(where: str, model: Any) -> GPTConfig:
    config = model if isinstance(model, GPTConfig) else model.config if isinstance(model, GPTModel) else None
    if config is not None and config.norm_epsilon != LN_EPSILON:
        raise ValueError(
            f"{where}: the cached decoding takes GPT-2's LayerNorm epsilon ({LN_EPSILON}), given a model with "
            f"norm_epsilon={config.norm_epsilon}. Hint: decode with model.apply on the whole sequence."
        )
    if config is not None:
        return config
    raise TypeError(
        f"{where}: argument `model` expected a model built by nnjax.models.GPT, given {type(model).__name__}."
    )


def gpt_init_cache(
    model: GPTModel | GPTConfig, batch: int, max_len: int | None = None, dtype: DType = jnp.float32
) -> KVCache:
    """An empty ``KVCache`` (zeros) for ``batch`` sequences of up to ``max_len`` tokens.

    Args:
      model: the ``GPT`` model, or its ``GPTConfig``.
      batch: number of sequences decoded together.
      max_len: cache length: the longest prompt plus generated tokens (default ``model.config.max_len``; at most it).
      dtype: the cache's dtype (the params' dtype is exact; ``bfloat16`` halves the memory).

    Returns:
      ``KVCache(keys, values)``: for the stacked model (``scan_layers=True``) one ``(depth, batch, max_len,
      num_heads, head_dim)`` array each; for the unrolled model one ``(batch, max_len, num_heads, head_dim)`` array
      per block in each.

    Raises:
      TypeError: ``model`` is not a GPT model or config; ``batch`` or ``max_len`` is not an int.
      ValueError: ``batch`` or ``max_len`` is not positive, or ``max_len`` exceeds the model's.

    Example:
      >>> model = nnjax.models.GPT(vocab_size=50, max_len=16, hidden=32, depth=1, num_heads=4, mlp_dim=64)
      >>> nnjax.models.gpt_init_cache(model, batch=2, max_len=8).values[0].shape
      (2, 8, 4, 8)
    """
    where = "gpt_init_cache"
    config = _config(where, model)
    positive_int(where, "batch", batch)
    max_len = config.max_len if max_len is None else max_len
    what = f"an int in [1, {config.max_len}] (the model's max_len)"
    check_number(where, "max_len", max_len, low=1, high=config.max_len, integer=True, what=what)
    shape = (batch, max_len, config.num_heads, config.head_dim)
    return _zeros_cache(config.depth, shape, dtype, config.scan_layers)


def _zeros_cache(depth: int, shape: Shape, dtype: DType, stacked: bool) -> KVCache:
    if stacked:
        return KVCache(jnp.zeros((depth, *shape), dtype), jnp.zeros((depth, *shape), dtype))
    return KVCache(
        tuple(jnp.zeros(shape, dtype) for _ in range(depth)), tuple(jnp.zeros(shape, dtype) for _ in range(depth))
    )


def _check_cache(where: str, params: Params, cache: Any, batch: int) -> int:
    """The cache's length, after checking that it fits ``params`` and the batch."""
    depth, stacked = _depth(params), _is_stacked(params)
    if not isinstance(cache, KVCache) or len(cache.keys) != depth or len(cache.values) != depth:
        given = f"a KVCache of {len(cache.keys)} blocks" if isinstance(cache, KVCache) else type(cache).__name__
        raise LayerError(
            f"{where}: argument `cache` expected a KVCache of {depth} blocks (gpt_init_cache), given {given}."
        )
    if isinstance(cache.keys, tuple) == stacked:
        forms = ("one stacked array", "a tuple of arrays") if stacked else ("a tuple of arrays", "one stacked array")
        raise LayerError(
            f"{where}: argument `cache` expected the keys and values as {forms[0]} (the params are of the "
            f"{'stacked' if stacked else 'unrolled'} form), given {forms[1]}. Hint: gpt_init_cache(model) of the "
            f"model whose params these are."
        )
    _, n, h = _key_weight_shape(params)
    shape = tuple(cache.keys[0].shape)
    if len(shape) != 4 or shape[0] != batch or shape[2:] != (n, h):
        raise LayerError(
            f"{where}: argument `cache` expected arrays of shape ({batch}, max_len, {n}, {h}) for a batch of {batch}, "
            f"given {shape}. Hint: gpt_init_cache(model, batch={batch})."
        )
    return shape[1]


def _check_params(where: str, config: GPTConfig, params: Any) -> None:
    found = None
    if isinstance(params, dict) and ("block_0" in params or "blocks" in params) and "token_embedding" in params:
        _check_form(where, config, params)
        found = (tuple(params["token_embedding"]["table"].shape), _depth(params), _key_weight_shape(params))
    expected = ((config.vocab_size, config.hidden), config.depth, (config.hidden, config.num_heads, config.head_dim))
    if found != expected:
        raise LayerError(
            f"{where}: argument `params` expected the params of the model (embedding table, blocks, key weights "
            f"{expected}), given {found if found is not None else type(params).__name__}."
        )


def _check_form(where: str, config: GPTConfig, params: Any) -> None:
    """Raises a LayerError naming both forms when the params are stacked and the model unrolled, or back."""
    if not isinstance(params, dict):
        return
    stacked, unrolled = "blocks" in params, "block_0" in params
    if (config.scan_layers and unrolled and not stacked) or (not config.scan_layers and stacked and not unrolled):
        given, built = ("unrolled", "stacked") if unrolled else ("stacked", "unrolled")
        raise LayerError(
            f"{where}: argument `params` expected the {built} form of the blocks "
            f"({'blocks/layers' if built == 'stacked' else 'block_0, block_1, ...'}), given the {given} form "
            f"({'block_0, block_1, ...' if given == 'unrolled' else 'blocks/layers'}). Hint: build the model with "
            f"scan_layers={given == 'stacked'}, the form the params (or checkpoint) were made with."
        )


def _check_position(where: str, position: Any, tokens: int, length: int) -> None:
    if not jnp.issubdtype(jnp.result_type(position), jnp.integer) or jnp.ndim(position) != 0:
        raise LayerError(
            f"{where}: argument `position` expected an integer scalar, given {jnp.result_type(position)} of shape "
            f"{jnp.shape(position)}."
        )
    if is_concrete(position) and not 0 <= int(position) <= length - tokens:
        raise LayerError(
            f"{where}: argument `position` expected a position in [0, {length - tokens}] so that {tokens} token(s) "
            f"fit the cache of {length}, given {int(position)}. Hint: a longer cache, gpt_init_cache(..., max_len=...)."
        )


def _project(params: Params, x: Array) -> Array:
    return jnp.einsum("btd,dnh->btnh", x, params["w"]) + params["b"]  # (B, T, N, H)


def _cached_forward(params: Params, cache: KVCache, tokens: Array, position: Any) -> tuple[Array, KVCache]:
    """Logits ``(B, T, vocab)`` for ``tokens: (B, T)`` at positions ``position .. position + T - 1``, given the
    cached keys and values of the positions before; returns the cache with these positions written."""
    table = params["token_embedding"]["table"]
    t, length = tokens.shape[1], cache.keys[0].shape[1]
    h = Embedding(*table.shape).apply(params["token_embedding"], {}, tokens)[0]  # (B, T, D)
    h = h + lax.dynamic_slice_in_dim(params["position_embedding"]["table"], position, t, axis=0)[None]
    query_positions = position + jnp.arange(t)  # (T,)
    mask = (jnp.arange(length)[None, :] <= query_positions[:, None])[None, None]  # (1, 1, T, L): causal over the cache

    def cached_block(h, block, cached_k, cached_v):
        attention = block["attention"]
        x = _norm(block["norm_1"], h)
        q, k, v = _project(attention["query"], x), _project(attention["key"], x), _project(attention["value"], x)
        all_k = lax.dynamic_update_slice_in_dim(cached_k, k.astype(cached_k.dtype), position, axis=1)
        all_v = lax.dynamic_update_slice_in_dim(cached_v, v.astype(cached_v.dtype), position, axis=1)
        heads = reference_attention(q, all_k.astype(q.dtype), all_v.astype(q.dtype), mask)  # (B, T, N, H)
        h = h + jnp.einsum("btnh,nhd->btd", heads, attention["out"]["w"]) + attention["out"]["b"]
        h = h + _mlp(block["mlp"], _norm(block["norm_2"], h))
        return h, (all_k, all_v)

    if _is_stacked(params):  # one block compiled, scanned over the stacked params and cache: (depth, B, L, N, H)
        h, (keys, values) = lax.scan(
            lambda h, xs: cached_block(h, *xs), h, (params["blocks"][STACKED], cache.keys, cache.values)
        )
        new_cache = KVCache(keys, values)
    else:
        keys, values = [], []
        for i in range(len(cache.keys)):
            h, (all_k, all_v) = cached_block(h, params[f"block_{i}"], cache.keys[i], cache.values[i])
            keys.append(all_k)
            values.append(all_v)
        new_cache = KVCache(tuple(keys), tuple(values))
    logits = embedding_attend(params["token_embedding"], _norm(params["final_norm"], h))
    return logits, new_cache


# Compiled once per shape (the position is traced), so eager Python loops over positions run compiled steps.
_cached_forward_jit = jax.jit(_cached_forward)


def gpt_prefill(params: Params, cache: KVCache, tokens: Array, position: Any = 0) -> tuple[Array, KVCache]:
    """Runs a chunk of tokens (a prompt) through a GPT at once, writing its keys and values into the cache.

    Args:
      params: the ``GPT`` model's params.
      cache: a ``KVCache`` (``gpt_init_cache``) holding positions ``0 .. position - 1``.
      tokens: ``(batch, T)`` int token ids, at positions ``position .. position + T - 1``.
      position: where the chunk starts (0 for a prompt); an int or an int32 scalar (may be traced).

    Returns:
      ``(logits, cache)``: ``(batch, T, vocab_size)`` logits, equal to ``model.apply``'s at those positions, and
      the cache with the chunk's positions written.

    Raises:
      LayerError: tokens, cache or position of the wrong shape; a concrete position that overflows the cache.
      LayerTypeError: float tokens.

    Example:
      >>> model = nnjax.models.GPT(vocab_size=50, max_len=16, hidden=32, depth=1, num_heads=4, mlp_dim=64)
      >>> params, _ = model.init(jax.random.key(0), (16,))
      >>> cache = nnjax.models.gpt_init_cache(model, batch=2)
      >>> logits, cache = nnjax.models.gpt_prefill(params, cache, jnp.ones((2, 5), jnp.int32))
      >>> logits.shape
      (2, 5, 50)
    """
    where = "gpt_prefill"
    vocab_size = params["token_embedding"]["table"].shape[0]
    _check_tokens(where, tokens, 2, vocab_size)
    length = _check_cache(where, params, cache, tokens.shape[0])
    _check_position(where, position, tokens.shape[1], length)
    return _cached_forward_jit(params, cache, tokens, jnp.asarray(position, jnp.int32))


def gpt_decode_step(params: Params, cache: KVCache, tokens: Array, position: Any) -> tuple[Array, KVCache]:
    """Decodes one token per sequence: its logits from the cached keys and values, and the updated cache.

    Costs one position's projections and MLPs per block plus attention over the cache, however long the
    prefix: nothing before ``position`` is recomputed.

    Args:
      params: the ``GPT`` model's params.
      cache: a ``KVCache`` holding positions ``0 .. position - 1`` (from ``gpt_prefill`` and earlier steps).
      tokens: ``(batch,)`` int token ids, the tokens at ``position``.
      position: the tokens' position; an int or an int32 scalar (traced in a ``lax.scan``).

    Returns:
      ``(logits, cache)``: ``(batch, vocab_size)`` next-token logits (those ``model.apply`` gives at ``position``
      for the whole sequence) and the cache with ``position`` written.

    Raises:
      LayerError: tokens, cache or position of the wrong shape; a concrete position outside the cache.
      LayerTypeError: float tokens.

    Example:
      >>> model = nnjax.models.GPT(vocab_size=50, max_len=16, hidden=32, depth=1, num_heads=4, mlp_dim=64)
      >>> params, _ = model.init(jax.random.key(0), (16,))
      >>> cache = nnjax.models.gpt_init_cache(model, batch=2)
      >>> logits, cache = nnjax.models.gpt_decode_step(params, cache, jnp.array([3, 4]), position=0)
      >>> logits.shape
      (2, 50)
    """
    where = "gpt_decode_step"
    vocab_size = params["token_embedding"]["table"].shape[0]
    _check_tokens(where, tokens, 1, vocab_size)
    length = _check_cache(where, params, cache, tokens.shape[0])
    _check_position(where, position, 1, length)
    logits, cache = _cached_forward_jit(params, cache, tokens[:, None], jnp.asarray(position, jnp.int32))
    return logits[:, 0], cache


# ---- generation ---------------------------------------------------------------------------------------


def _pick(logits: Array, key: PRNGKey | None, temperature: Array, greedy: bool) -> Array:
    if greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    return jax.random.categorical(key, logits.astype(jnp.float32) / temperature, axis=-1).astype(jnp.int32)


def _generate(params: Params, prompt: Array, key: PRNGKey | None, temperature: Array, *, steps: int, greedy: bool):
    batch, length = prompt.shape
    _, n, h = _key_weight_shape(params)
    dtype = params["token_embedding"]["table"].dtype
    cache = _zeros_cache(_depth(params), (batch, length + steps, n, h), dtype, _is_stacked(params))
    keys = None if greedy else jax.random.split(key, steps)  # token i is drawn with keys[i]
    logits, cache = _cached_forward(params, cache, prompt, 0)  # prefill: the prompt, once
    first = _pick(logits[:, -1], None if greedy else keys[0], temperature, greedy)

    def step(carry, step_key):
        cache, token, position = carry
        logits, cache = _cached_forward(params, cache, token[:, None], position)  # one position
        following = _pick(logits[:, 0], step_key, temperature, greedy)
        return (cache, following, position + 1), following

    xs = None if greedy else keys[1:]
    _, rest = lax.scan(step, (cache, first, jnp.int32(length)), xs, length=steps - 1)  # rest: (steps - 1, B)
    return jnp.concatenate([prompt.astype(jnp.int32), first[:, None], rest.T], axis=1)


_generate_jit = jax.jit(_generate, static_argnames=("steps", "greedy"))


def generate(
    model: GPTModel,
    params: Params,
    prompt: Array,
    steps: int,
    *,
    key: PRNGKey | None = None,
    temperature: float = 1.0,
) -> Array:
    """Continues each prompt by ``steps`` tokens: one prefill of the prompt, then one cached decode step per token.

    Token ``i`` (``i = 0 .. steps - 1``) is ``argmax(logits)`` when ``temperature == 0`` (greedy), else drawn as
    ``jax.random.categorical(jax.random.split(key, steps)[i], logits / temperature)``. The decode steps run in
    one ``lax.scan`` over a cache of ``prompt_len + steps`` positions; the whole call is compiled once per
    shape (and may itself be called inside ``jit``).

    Args:
      model: the ``GPT`` model.
      params: its params.
      prompt: ``(batch, prompt_len)`` int token ids, ``prompt_len >= 1``.
      steps: number of tokens to generate, ``prompt_len + steps <= model.config.max_len``.
      key: the sampling key; required when ``temperature > 0``.
      temperature: 0 for greedy decoding; otherwise logits are divided by it before sampling.

    Returns:
      ``(batch, prompt_len + steps)`` int32: the prompt followed by the generated tokens.

    Raises:
      TypeError: ``model`` is not a GPT model; ``steps`` or ``temperature`` of the wrong type.
      ValueError: negative ``steps`` or ``temperature``, a sequence longer than ``max_len``, or no ``key``
        for sampling. LayerError: a prompt of the wrong shape; LayerTypeError: float prompt ids.

    Example:
      >>> model = nnjax.models.GPT(vocab_size=50, max_len=16, hidden=32, depth=1, num_heads=4, mlp_dim=64)
      >>> params, _ = model.init(jax.random.key(0), (16,))
      >>> prompt = jnp.array([[1, 2, 3], [4, 5, 6]])
      >>> tokens = nnjax.models.generate(model, params, prompt, 5, key=jax.random.key(1), temperature=0.8)
      >>> tokens.shape, tokens[:, :3].tolist()   # the prompts, then 5 new tokens each
      ((2, 8), [[1, 2, 3], [4, 5, 6]])
    """
    where = "generate"
    config = _config(where, model)
    check_number(where, "steps", steps, low=0, integer=True, what="a non-negative int")
    check_number(where, "temperature", temperature, low=0.0, what="a non-negative number")
    _check_tokens(where, prompt, 2, config.vocab_size, "prompt")
    length = prompt.shape[1]
    if length < 1 or length + steps > config.max_len:
        raise ValueError(
            f"{where}: arguments `prompt` and `steps` expected prompt_len >= 1 and prompt_len + steps <= max_len="
            f"{config.max_len}, given prompt_len={length} and steps={steps}. Hint: crop the prompt to its last "
            f"{max(config.max_len - steps, 1)} tokens or generate fewer."
        )
    greedy = temperature == 0
    if not greedy and key is None:
        raise ValueError(
            f"{where}: argument `key` is required to sample with temperature={temperature}; given None. Hint: "
            f"key=jax.random.key(seed), or temperature=0.0 for greedy decoding."
        )
    if steps == 0:
        return jnp.asarray(prompt, jnp.int32)
    _check_params(where, config, params)
    temperature = jnp.asarray(1.0 if greedy else temperature, jnp.float32)
    return _generate_jit(params, jnp.asarray(prompt), None if greedy else key, temperature, steps=steps, greedy=greedy)
