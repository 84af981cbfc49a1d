"""Weights from and to PyTorch state_dicts, and safetensors files. Neither torch nor safetensors is imported here
until a function needs it (safetensors), or at all (torch: its tensors are read through ``.detach().cpu()``).

    params, state = from_torch_state_dict(model, torch_module.state_dict(), input_shape=(8, 8, 1))
    state_dict = to_torch_state_dict(model, params, state, template=torch_module.state_dict())
    torch_module.load_state_dict({k: torch.from_numpy(v) for k, v in state_dict.items()})

How an nnjax model meets a torch module, in three steps:

1. *Units.* The model's params and state (from ``model.init``) are cut into units, one per parametrized
   layer, in forward order (``serial`` children by position, other dicts in insertion order). A unit's
   kind comes from its params' structure (``{"w_x", "w_h", "b"}`` is a recurrent cell, ``{"query", "key",
   "value", "out"}`` attention, a 2-D ``{"w"}`` a Dense...) and, where structure cannot tell (Conv or
   ConvTranspose; which norm), from its key in ``serial`` (``conv_transpose_3``), the model's own kind, or
   the ``kinds`` argument. An array the table does not know is a unit of its own (kind ``"array"``).
2. *Prefixes.* Each unit is paired with one torch module prefix: the units, in order, with the modules
   of the state_dict, in order (torch lists modules in registration order), so ``serial(Conv, BatchNorm,
   Relu, Flatten, Dense)`` pairs with ``nn.Sequential(Conv2d, BatchNorm2d, ReLU, Flatten, Linear)`` without
   a word. ``mapping={nnjax_path: torch_prefix}`` pins a unit (or every unit below a subtree) to a
   prefix where the orders differ; ``None`` keeps a unit's initial values (a new head).
3. *Layouts.* ``CONVERTERS`` maps each kind to the two functions that turn its params/state into the
   torch module's tensors and back: every transpose, packing and bias split lives in that table.

A mismatch (a missing or unused torch key, a wrong shape) raises ONE ``InteropError`` that lists every
offending key with the expected and the given shape.

Stacked copies (``nnjax.stack``: ``{"layers": <block params, every array with a leading axis of n>}``) are seen
as their ``n`` copies, keyed ``"0"`` .. ``"n-1"`` in place of ``"layers"``: copy ``i`` pairs with the torch modules
of ``<prefix>.i.`` (an ``nn.ModuleList`` or ``nn.Sequential`` of blocks), ``mapping``/``kinds`` name its units as
``"blocks/1/attention"``, and on import the copies are stacked back. Both forms of the zoo's GPT and ViT (stacked,
``scan_layers=False``) import the same state_dict.

What a state_dict does not hold, the nnjax model must match by construction: strides, padding and
dilation, activations (``nn.RNN(nonlinearity="relu")`` has the keys of the tanh one, which nnjax's
``SimpleRNN`` is), epsilons, momentum (``TorchBatchNorm``), ``batch_first=True`` sequences, channels-last
images, torch's flatten order (``TorchFlatten``), exact vs tanh GELU.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from nnjax._src.core import Layer, kind, stateless
from nnjax._src.errors import LayerError, check_rank
from nnjax._src.key_order import in_key_order, key_order
from nnjax._src.normalization import BatchNorm
from nnjax._src.stack import STACKED
from nnjax._src.types import DType, Params, PRNGKey, Shape, State

Arrays = dict[str, np.ndarray]  # torch tensors of one module, by local name ("weight", "out_proj.bias")


class InteropError(LayerError):
    """A state_dict does not fit a model. The message lists every offending key with its shapes.

    Attributes:
      missing: ``(torch_key, expected_shape)`` for each key the model needs and the state_dict lacks.
      unexpected: ``(torch_key, given_shape)`` for each key of the state_dict no unit used.
      mismatched: ``(torch_key, expected_shape, given_shape)`` for each key of the wrong shape.
    """

    def __init__(self, message: str, *, missing=(), unexpected=(), mismatched=()):
        super().__init__(message)
        self.missing, self.unexpected, self.mismatched = list(missing), list(unexpected), list(mismatched)


# ---- the converter table ----------------------------------------------------------------------------------


class Context(NamedTuple):
    """What a converter may know of the torch side of one unit.

    Attributes:
      torch: the torch arrays under the unit's prefix, by local name (``{}`` when exporting without a
        template); converters read only shapes they cannot infer (a ConvTranspose's groups).
      layer: the first torch layer index of a recurrent unit (the ``l1`` of ``weight_ih_l1``).

    Example:
      >>> ctx = nnjax.interop.Context({"self_attn.in_proj_weight": np.zeros((6, 2)), "norm1.weight": np.ones(2)})
      >>> list(ctx.sub("self_attn").torch)
      ['in_proj_weight']
    """

    torch: Mapping[str, np.ndarray]
    layer: int = 0

    def sub(self, prefix: str) -> Context:
        """The context of a part: the arrays under ``prefix.``, renamed without it."""
        start = prefix + "."
        return Context({k[len(start) :]: v for k, v in self.torch.items() if k.startswith(start)})


class Converter(NamedTuple):
    """The two layout functions of one kind of unit.

    Attributes:
      torch: the matching torch module(s), for messages, e.g. ``"nn.Linear"``.
      to_torch: ``(params, state, context) -> {local_name: array}`` (also gives the expected names and shapes).
      to_nnjax: ``(arrays, params, state, context) -> (params, state)``; ``params``/``state`` are the unit's
        initial values (for structure only); ``arrays`` holds every name ``to_torch`` gives, shapes checked.
      optional: local names a state_dict may omit on import (BatchNorm's ``num_batches_tracked``).

    ``CONVERTERS[kind]`` holds one per kind; add one for a layer of your own and name its units with
    ``kinds={path: kind}``.

    Example:
      >>> converter = nnjax.interop.CONVERTERS["dense"]
      >>> params = {"w": jnp.zeros((4, 3)), "b": jnp.zeros(3)}
      >>> {k: v.shape for k, v in converter.to_torch(params, {}, nnjax.interop.Context({})).items()}
      {'weight': (3, 4), 'bias': (3,)}
    """

    torch: str
    to_torch: Callable[[Params, State, Context], Arrays]
    to_nnjax: Callable[[Arrays, Params, State, Context], tuple[Params, State]]
    optional: tuple[str, ...] = ()


def _np(x: Any) -> np.ndarray:
    return np.asarray(x)


def _dense_to_torch(p, s, ctx):
    out = {"weight": _np(p["w"]).T}
    if "b" in p:
        out["bias"] = _np(p["b"])
    return out


def _dense_to_nnjax(t, p, s, ctx):
    params = {"w": t["weight"].T}
    if "b" in p:
        params["b"] = t["bias"]
    return params, s


def _conv_to_torch(p, s, ctx):
    w = _np(p["w"])  # (*k, in / groups, out) -> torch (out, in / groups, *k)
    n = w.ndim - 2
    out = {"weight": w.transpose(n + 1, n, *range(n))}
    if "b" in p:
        out["bias"] = _np(p["b"])
    return out


def _conv_to_nnjax(t, p, s, ctx):
    w = t["weight"]  # (out, in / groups, *k)
    n = w.ndim - 2
    params = {"w": w.transpose(*range(2, n + 2), 1, 0)}
    if "b" in p:
        params["b"] = t["bias"]
    return params, s


def _transpose_groups(w: np.ndarray, torch_weight: np.ndarray | None) -> int:
    """A ConvTranspose's groups: nnjax's ``w`` holds ``in / groups`` inputs, torch's weight all ``in``."""
    per_group = w.shape[-2]
    if torch_weight is not None and torch_weight.ndim == w.ndim and torch_weight.shape[0] % per_group == 0:
        groups = torch_weight.shape[0] // per_group
        if groups >= 1 and w.shape[-1] % groups == 0:
            return groups
    return 1


def _conv_transpose_to_torch(p, s, ctx):
    w = _np(p["w"])  # (*k, C, groups * out_g) -> torch (groups * C, out_g, *k)
    n = w.ndim - 2
    groups = _transpose_groups(w, ctx.torch.get("weight"))
    kernel, c, out_g = w.shape[:n], w.shape[-2], w.shape[-1] // groups
    grouped = w.reshape(*kernel, c, groups, out_g).transpose(n + 1, n, n + 2, *range(n))  # (g, C, out_g, *k)
    out = {"weight": grouped.reshape(groups * c, out_g, *kernel)}
    if "b" in p:
        out["bias"] = _np(p["b"])
    return out


def _conv_transpose_to_nnjax(t, p, s, ctx):
    w = t["weight"]  # (groups * C, out_g, *k)
    n = w.ndim - 2
    c = p["w"].shape[-2]
    groups, out_g, kernel = w.shape[0] // c, w.shape[1], w.shape[2:]
    grouped = w.reshape(groups, c, out_g, *kernel).transpose(*range(3, n + 3), 1, 0, 2)  # (*k, C, g, out_g)
    params = {"w": grouped.reshape(*kernel, c, groups * out_g)}
    if "b" in p:
        params["b"] = t["bias"]
    return params, s


_AFFINE = {"scale": "weight", "bias": "bias"}
_RUNNING = {"mean": "running_mean", "var": "running_var"}


def _norm_to_torch(p, s, ctx):
    return {_AFFINE[k]: _np(v) for k, v in p.items()}


def _norm_to_nnjax(t, p, s, ctx):
    return {k: t[_AFFINE[k]] for k in p}, s


def _batch_norm_to_torch(p, s, ctx):
    out = _norm_to_torch(p, s, ctx)
    out.update({_RUNNING[k]: _np(s[k]) for k in ("mean", "var")})
    # nnjax does not count batches; torch reads the count only with momentum=None. Keep the template's.
    out["num_batches_tracked"] = np.asarray(ctx.torch.get("num_batches_tracked", 0), np.int64)
    return out


def _batch_norm_to_nnjax(t, p, s, ctx):
    return {k: t[_AFFINE[k]] for k in p}, {k: t[_RUNNING[k]] for k in ("mean", "var")}


def _embedding_to_torch(p, s, ctx):
    return {"weight": _np(p["table"])}


def _embedding_to_nnjax(t, p, s, ctx):
    return {"table": t["weight"]}, s


def _array_to_torch(p, s, ctx):
    return {"": _np(p if not isinstance(p, dict) else s)}


def _array_to_nnjax(t, p, s, ctx):
    return (t[""], s) if not isinstance(p, dict) else (p, t[""])


# Recurrent cells: torch keeps (G * hidden, in) weights, gate blocks in the same order as nnjax (i, f, g, o;
# r, z, n), and two biases whose sum is nnjax's ``b``, except GRU's n block of ``b_hh`` (inside the reset
# gate), which is nnjax's ``b_hn``. Exported: ``b_ih = b``, ``b_hh = 0`` (GRU: ``[0, 0, b_hn]``).


def _is_cell(tree: Any) -> bool:
    return isinstance(tree, dict) and {"w_x", "w_h", "b"} <= set(tree) <= {"w_x", "w_h", "b", "b_hn"}


def _cell_kind(cell: Params) -> str | None:
    hidden, width = cell["w_h"].shape
    gates = width // hidden if hidden else 0
    if "b_hn" in cell:
        return "gru" if gates == 3 else None
    return {1: "simple_rnn", 4: "lstm"}.get(gates)


def _cells(p: Params) -> list[tuple[Params, int, str, tuple[str, ...]]]:
    """``(cell params, layer offset, torch suffix, nnjax path)`` of a cell, a stack or a Bidirectional."""
    if _is_cell(p):
        return [(p, 0, "", ())]
    if set(p) == {"forward", "backward"}:
        return [(p["forward"], 0, "", ("forward",)), (p["backward"], 0, "_reverse", ("backward",))]
    return [(p[k], i, "", (k,)) for i, k in enumerate(_ordered(p))]


def _rnn_to_torch(p, s, ctx):
    out = {}
    for cell, i, suffix, _ in _cells(p):
        end = f"_l{ctx.layer + i}{suffix}"
        hidden = cell["w_h"].shape[0]
        out["weight_ih" + end] = _np(cell["w_x"]).T
        out["weight_hh" + end] = _np(cell["w_h"]).T
        out["bias_ih" + end] = _np(cell["b"])
        b_hh = np.zeros_like(_np(cell["b"]))
        if "b_hn" in cell:
            b_hh[2 * hidden :] = _np(cell["b_hn"])
        out["bias_hh" + end] = b_hh
    return out


def _rnn_to_nnjax(t, p, s, ctx):
    params = {}
    for cell, i, suffix, path in _cells(p):
        end = f"_l{ctx.layer + i}{suffix}"
        hidden = cell["w_h"].shape[0]
        b_hh = t["bias_hh" + end].copy()
        new = {"w_x": t["weight_ih" + end].T, "w_h": t["weight_hh" + end].T}
        if "b_hn" in cell:
            new["b_hn"] = b_hh[2 * hidden :].copy()
            b_hh[2 * hidden :] = 0
        new["b"] = t["bias_ih" + end] + b_hh
        new = {k: new[k] for k in cell}  # the cell's own key order
        params = new if not path else {**params, path[0]: new}
    return params, s


# Multi-head attention: torch's in_proj_weight stacks Wq, Wk, Wv as (3 * E, E) rows, head n's features at
# rows n * head_dim ... (n + 1) * head_dim - 1 of each; with kdim/vdim != E they are q/k/v_proj_weight.


def _heads_to_torch(p: Params) -> tuple[np.ndarray, np.ndarray | None]:
    w = _np(p["w"])  # (d_in, N, H) -> (N * H, d_in)
    b = _np(p["b"]).reshape(-1) if "b" in p else None
    return w.reshape(w.shape[0], -1).T, b


def _mha_to_torch(p, s, ctx):
    (wq, bq), (wk, bk), (wv, bv) = (_heads_to_torch(p[k]) for k in ("query", "key", "value"))
    out = {}
    if wq.shape[1] == wk.shape[1]:
        out["in_proj_weight"] = np.concatenate([wq, wk, wv])
    else:
        out.update(q_proj_weight=wq, k_proj_weight=wk, v_proj_weight=wv)
    if bq is not None:
        out["in_proj_bias"] = np.concatenate([bq, bk, bv])
    wo = _np(p["out"]["w"])  # (N, H, out) -> (out, N * H)
    out["out_proj.weight"] = wo.reshape(-1, wo.shape[-1]).T
    if "b" in p["out"]:
        out["out_proj.bias"] = _np(p["out"]["b"])
    return out


def _mha_to_nnjax(t, p, s, ctx):
    if "in_proj_weight" in t:
        ws = np.split(t["in_proj_weight"], 3)
    else:
        ws = [t[f"{k}_proj_weight"] for k in "qkv"]
    bs = np.split(t["in_proj_bias"], 3) if "in_proj_bias" in t else [None] * 3
    params = {}
    for name, w, b in zip(("query", "key", "value"), ws, bs, strict=True):
        heads = p[name]["w"].shape[1:]
        params[name] = {"w": w.T.reshape(w.shape[1], *heads)}
        if b is not None:
            params[name]["b"] = b.reshape(heads)
    wo = t["out_proj.weight"]  # (out, N * H)
    params["out"] = {"w": wo.T.reshape(*p["out"]["w"].shape[:2], wo.shape[0])}
    if "out_proj.bias" in t:
        params["out"]["b"] = t["out_proj.bias"]
    return params, s


def _composite(torch_name: str, parts: Sequence[tuple[tuple[str, ...], str, str]]) -> Converter:
    """A converter for a block made of known units: ``(nnjax path, torch sub-prefix, kind)`` per part."""

    def to_torch(p, s, ctx):
        out = {}
        for path, sub, part in parts:
            arrays = CONVERTERS[part].to_torch(_get(p, path), _get(s, path), ctx.sub(sub))
            out.update({_join(sub, k): v for k, v in arrays.items()})
        return out

    def to_nnjax(t, p, s, ctx):
        params, state = p, s
        for path, sub, part in parts:
            start = sub + "."
            local = {k[len(start) :]: v for k, v in t.items() if k.startswith(start)}
            new_p, new_s = CONVERTERS[part].to_nnjax(local, _get(p, path), _get(s, path), ctx.sub(sub))
            params, state = _put(params, path, new_p), _put(state, path, new_s) if _get(s, path) else state
        return params, state

    return Converter(torch_name, to_torch, to_nnjax)


_ENCODER_PARTS = [
    (("attention",), "self_attn", "multi_head_attention"),
    (("mlp", "hidden"), "linear1", "dense"),
    (("mlp", "out"), "linear2", "dense"),
    (("attention_norm",), "norm1", "norm"),
    (("mlp_norm",), "norm2", "norm"),
]
_DECODER_PARTS = [
    (("self_attention",), "self_attn", "multi_head_attention"),
    (("cross_attention",), "multihead_attn", "multi_head_attention"),
    (("mlp", "hidden"), "linear1", "dense"),
    (("mlp", "out"), "linear2", "dense"),
    (("self_attention_norm",), "norm1", "norm"),
    (("cross_attention_norm",), "norm2", "norm"),
    (("mlp_norm",), "norm3", "norm"),
]

CONVERTERS: dict[str, Converter] = {
    "dense": Converter("nn.Linear", _dense_to_torch, _dense_to_nnjax),
    "conv": Converter("nn.Conv1d/2d/3d", _conv_to_torch, _conv_to_nnjax),
    "conv_transpose": Converter("nn.ConvTranspose1d/2d/3d", _conv_transpose_to_torch, _conv_transpose_to_nnjax),
    "norm": Converter("nn.LayerNorm/GroupNorm/RMSNorm", _norm_to_torch, _norm_to_nnjax),
    "batch_norm": Converter(
        "nn.BatchNorm1d/2d/3d", _batch_norm_to_torch, _batch_norm_to_nnjax, optional=("num_batches_tracked",)
    ),
    "embedding": Converter("nn.Embedding", _embedding_to_torch, _embedding_to_nnjax),
    "simple_rnn": Converter("nn.RNN", _rnn_to_torch, _rnn_to_nnjax),
    "lstm": Converter("nn.LSTM", _rnn_to_torch, _rnn_to_nnjax),
    "gru": Converter("nn.GRU", _rnn_to_torch, _rnn_to_nnjax),
    "multi_head_attention": Converter("nn.MultiheadAttention", _mha_to_torch, _mha_to_nnjax),
    "transformer_encoder_block": _composite("nn.TransformerEncoderLayer(norm_first=True)", _ENCODER_PARTS),
    "transformer_decoder_block": _composite("nn.TransformerDecoderLayer(norm_first=True)", _DECODER_PARTS),
    "array": Converter("a tensor of the same shape", _array_to_torch, _array_to_nnjax),
}
RECURRENT = ("simple_rnn", "lstm", "gru")
# Kinds named by layers (``kind(layer)``, a key in ``serial``) that structure alone cannot tell apart.
_NAMED_KINDS = {
    "conv": "conv",
    "conv_transpose": "conv_transpose",
    "layer_norm": "norm",
    "group_norm": "norm",
    "rms_norm": "norm",
    "batch_norm": "batch_norm",
}


# ---- step 1: units ----------------------------------------------------------------------------------------


class Unit(NamedTuple):
    """One parametrized layer of the model: its path (``"serial_2/conv_0"``, ``""`` for the whole
    model), kind (a key of ``CONVERTERS``), initial params and state, and default torch prefix parts."""

    path: str
    kind: str
    params: Any
    state: Any
    default_parts: tuple[str, ...]  # one torch name per path key: a ``serial`` position's index, else the key

    @property
    def default_prefix(self) -> str:
        return ".".join(self.default_parts)

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(self.path.split("/")) if self.path else ()

    @property
    def label(self) -> str:
        return f"`{self.path or '<model>'}` ({self.kind} <-> {CONVERTERS[self.kind].torch})"


_SERIAL_KEY = re.compile(r"([a-z][a-z0-9_]*?)_(\d+)")


def _serial_style(tree: dict) -> bool:
    """True for ``serial``'s keys: ``kind_i`` with positions ``0 .. n - 1``, each once (not ``conv_1, norm_1``)."""
    matches = [_SERIAL_KEY.fullmatch(k) if isinstance(k, str) else None for k in tree]
    if not matches or not all(matches):
        return False
    return sorted(int(m.group(2)) for m in matches) == list(range(len(matches)))


def _ordered(tree: dict) -> list[str]:
    """A dict's keys in forward order: ``serial``'s ``kind_i`` by position (JAX sorts ``dense_10`` before
    ``dense_2``), others as inserted."""
    keys = list(tree)
    if _serial_style(tree):
        keys.sort(key=lambda k: int(_SERIAL_KEY.fullmatch(k).group(2)))
    return keys


def _is_array(x: Any) -> bool:
    return hasattr(x, "shape") and hasattr(x, "dtype")


def _detect(p: Any, s: Any, hint: str | None) -> str | None:
    """The kind of a subtree, or None when it is a container of units."""
    if not isinstance(p, dict) or not isinstance(s, dict):
        return None
    keys, state_keys = set(p), set(s or {})
    leaves = all(_is_array(v) for v in p.values())
    if _is_cell(p):
        return _cell_kind(p)
    if p and all(_is_cell(v) for v in p.values()) and (set(p) == {"forward", "backward"} or _serial_style(p)):
        kinds = {_cell_kind(v) for v in p.values()}
        return kinds.pop() if len(kinds) == 1 and None not in kinds else None
    if keys == {"query", "key", "value", "out"}:
        return "multi_head_attention"
    if keys == {"attention_norm", "attention", "mlp_norm", "mlp"}:
        return "transformer_encoder_block"
    if keys == {n + m for n in ("self_attention", "cross_attention") for m in ("", "_norm")} | {"mlp", "mlp_norm"}:
        return "transformer_decoder_block"
    if not leaves:
        return None
    if state_keys == {"mean", "var"} and keys <= {"scale", "bias"}:
        return "batch_norm"
    if state_keys:
        return None
    if keys == {"table"} and p["table"].ndim == 2:
        return "embedding"
    if keys and keys <= {"scale", "bias"} and all(v.ndim == 1 for v in p.values()):
        return "norm"
    if "w" in keys and keys <= {"w", "b"}:
        if p["w"].ndim == 2:
            return "dense"
        if 3 <= p["w"].ndim <= 5:
            return "conv_transpose" if hint == "conv_transpose" else "conv"
    return None


def _units(params: Params, state: State, root_kind: str, kinds: Mapping[str, str]) -> list[Unit]:
    units: list[Unit] = []

    def walk(p, s, path, parts, hint):
        given = kinds.get("/".join(path))
        found = given or _detect(p, s, _NAMED_KINDS.get(hint or ""))
        if found is not None:
            if found not in CONVERTERS:
                raise ValueError(
                    f"interop: argument `kinds` expected kinds among {sorted(CONVERTERS)}, given {found!r}."
                )
            units.append(Unit("/".join(path), found, p, s, parts))
            return
        if not isinstance(p, dict) or not isinstance(s, dict):
            if _is_array(p) or _is_array(s):
                units.append(Unit("/".join(path), "array", p if _is_array(p) else {}, s if _is_array(s) else {}, parts))
            return
        keys = _ordered(p) + [k for k in _ordered(s) if k not in p]
        serial_style = _serial_style({k: None for k in keys})
        for k in keys:
            match = _SERIAL_KEY.fullmatch(k) if serial_style else None
            step = match.group(2) if match else k
            walk(p.get(k, {}), s.get(k, {}), (*path, k), (*parts, step), match.group(1) if match else None)

    walk(params, state, (), (), root_kind)
    return units


# ---- step 2: pairing units with torch prefixes -------------------------------------------------------------


def _join(prefix: str, local: str) -> str:
    return f"{prefix}.{local}" if prefix and local else prefix or local


_RNN_KEY = re.compile(r"(?:(.*)\.)?(?:weight|bias)_(?:ih|hh)_l(\d+)(?:_reverse)?")


def _locals(prefix: str, available: Mapping[str, np.ndarray]) -> Arrays:
    if not prefix:
        return dict(available)
    start = prefix + "."
    out = {k[len(start) :]: v for k, v in available.items() if k.startswith(start)}
    if prefix in available:
        out[""] = available[prefix]
    return out


def _context(unit: Unit, prefix: str, available: Mapping[str, np.ndarray]) -> Context:
    local = _locals(prefix, available)
    layer = 0
    if unit.kind in RECURRENT:
        layers = [int(m.group(2)) for k in local if (m := _RNN_KEY.fullmatch(k)) and not m.group(1)]
        layer = min(layers, default=0)
    return Context(local, layer)


def _locate(unit: Unit, key: str) -> str:
    """The prefix of the torch module whose first (unused) key is ``key``, for ``unit``."""
    if unit.kind == "array":
        return key
    if unit.kind in RECURRENT and (m := _RNN_KEY.fullmatch(key)):
        return m.group(1) or ""
    names = sorted(CONVERTERS[unit.kind].to_torch(unit.params, unit.state, Context({})), key=len, reverse=True)
    for name in names:
        if key == name:
            return ""
        if key.endswith("." + name):
            return key[: -len(name) - 1]
    return key.rsplit(".", 1)[0] if "." in key else key  # no name fits: a module of its own, reported


class _Pairing(NamedTuple):
    pairs: list[tuple[Unit, str, Context]]  # unit, torch prefix, context
    missing: list[tuple[str, tuple, str]]  # torch key, expected shape, unit label
    unexpected: list[tuple[str, tuple, str]]  # torch key, given shape, unit label ("" when no unit took it)
    mismatched: list[tuple[str, tuple, tuple, str]]
    orphans: list[tuple[Unit, Arrays]]  # units no torch key was left for


def _covering(path: str, mapping: Mapping[str, Any]) -> str | None:
    """The most specific mapping entry at ``path`` or above it."""
    best = None
    for entry in mapping:
        if entry == "" or path == entry or path.startswith(entry + "/"):
            if best is None or len(entry) > len(best):
                best = entry
    return best


def _pair(
    units: list[Unit], torch_arrays: Mapping[str, np.ndarray], mapping: Mapping[str, str | None], ignore: Sequence[str]
) -> _Pairing:
    result = _Pairing([], [], [], [], [])
    available = {k: v for k, v in torch_arrays.items() if not any(fnmatch.fnmatchcase(k, pat) for pat in ignore)}

    def claim(unit: Unit, prefix: str) -> None:
        ctx = _context(unit, prefix, available)
        converter = CONVERTERS[unit.kind]
        expected = converter.to_torch(unit.params, unit.state, ctx)
        for local, value in expected.items():
            key = _join(prefix, local)
            if local not in ctx.torch:
                if local not in converter.optional:
                    result.missing.append((key, tuple(np.shape(value)), unit.label))
                continue
            given = ctx.torch[local]
            if tuple(given.shape) != tuple(np.shape(value)):
                result.mismatched.append((key, tuple(np.shape(value)), tuple(given.shape), unit.label))
            del available[key]
        if unit.kind not in RECURRENT:  # the module is this unit's alone: whatever else it holds is unused
            for local in ctx.torch:
                key = _join(prefix, local)
                if local not in expected and key in available:
                    result.unexpected.append((key, tuple(available.pop(key).shape), unit.label))
        result.pairs.append((unit, prefix, ctx))

    def in_order(group: list[Unit], scope: str | None) -> None:
        for unit in group:
            keys = [k for k in available if scope is None or scope == "" or k == scope or k.startswith(scope + ".")]
            if not keys:
                expected = CONVERTERS[unit.kind].to_torch(unit.params, unit.state, Context({}))
                result.orphans.append((unit, expected))
                continue
            claim(unit, _locate(unit, keys[0]))

    exact = [u for u in units if u.path in mapping]
    for unit in exact:
        if mapping[unit.path] is not None:
            claim(unit, mapping[unit.path])
    groups: dict[str | None, list[Unit]] = {}
    for unit in units:
        if unit.path not in mapping:
            groups.setdefault(_covering(unit.path, mapping), []).append(unit)
    for entry, group in groups.items():
        if entry is not None and mapping[entry] is not None:
            in_order(group, mapping[entry])
    in_order(groups.get(None, []), None)
    result.unexpected.extend((k, tuple(v.shape), "") for k, v in available.items())
    return result


def _check_mapping(where: str, units: list[Unit], mapping: Mapping[str, Any], kinds: Mapping[str, str]) -> None:
    paths = {u.path for u in units}
    for argument, entries in (("mapping", mapping), ("kinds", kinds)):
        unknown = [e for e in entries if e not in paths and not (e == "" or any(p.startswith(e + "/") for p in paths))]
        if unknown:
            raise ValueError(
                f"{where}: argument `{argument}` names nnjax paths the model does not have: {unknown}. The model's "
                f"units are {sorted(paths)} (paths join keys with '/', e.g. 'serial_1/dense_0')."
            )


def _fmt(shape: tuple) -> str:
    return str(tuple(shape))


def _raise_if_bad(where: str, pairing: _Pairing) -> None:
    lines = []
    for key, shape, label in pairing.missing:
        lines.append(f"  missing     {key!r}: expected {_fmt(shape)}, given nothing (for {label})")
    for key, expected, given, label in pairing.mismatched:
        lines.append(f"  wrong shape {key!r}: expected {_fmt(expected)}, given {_fmt(given)} (for {label})")
    for unit, expected in pairing.orphans:
        names = ", ".join(f"{k or '<tensor>'} {_fmt(np.shape(v))}" for k, v in expected.items())
        lines.append(f"  missing     no torch module left for {unit.label}: expected {names}")
    for key, shape, label in pairing.unexpected:
        owner = f" (under the module of {label})" if label else ""
        lines.append(f"  unused      {key!r}: given {_fmt(shape)}, expected by no unit{owner}")
    if not lines:
        return
    paired = "; ".join(f"{u.path or '<model>'} <- {p or '<root>'!r}" for u, p, _ in pairing.pairs)
    raise InteropError(
        f"{where}: the state_dict does not fit the model ({len(lines)} problem{'s' * (len(lines) != 1)}):\n"
        + "\n".join(lines)
        + f"\nPairing used (nnjax unit <- torch prefix, in order): {paired or 'none'}.\nHint: the units are "
        f"paired with the torch modules in order; where the orders differ pass mapping={{nnjax_path: "
        f"torch_prefix}}, ignore=[pattern] for keys to skip, or fix the model's sizes.",
        missing=[(k, s) for k, s, _ in pairing.missing]
        + [(f"<{u.path or 'model'}>.{k}", np.shape(v)) for u, e in pairing.orphans for k, v in e.items()],
        unexpected=[(k, s) for k, s, _ in pairing.unexpected],
        mismatched=[(k, e, g) for k, e, g, _ in pairing.mismatched],
    )


# ---- trees ------------------------------------------------------------------------------------------------


def _get(tree: Any, path: Sequence[str]) -> Any:
    for k in path:
        tree = tree.get(k, {}) if isinstance(tree, dict) else {}
    return tree


def _put(tree: Any, path: Sequence[str], value: Any) -> Any:
    """A copy of ``tree`` with ``value`` at ``path`` (key order kept)."""
    if not path:
        return value
    return {k: (_put(v, path[1:], value) if k == path[0] else v) for k, v in tree.items()}


def _as_numpy(value: Any, where: str, key: str) -> np.ndarray:
    """A state_dict value as a NumPy array: torch tensors through ``.detach().cpu()`` (torch is not imported)."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        tensor = value.detach().cpu()
        if str(getattr(tensor, "dtype", "")) == "torch.bfloat16":  # NumPy has no bfloat16: go through float32
            return np.asarray(tensor.float()).astype(jnp.bfloat16)
        # A copy: np.asarray shares the tensor's memory, and so may the JAX arrays made from it (on CPU),
        # which would then change with the torch module (BatchNorm's running statistics in training).
        return np.asarray(tensor).copy()
    if _is_array(value) or isinstance(value, (int, float, list, tuple)):
        return np.array(value, copy=True)
    raise TypeError(
        f"{where}: argument `state_dict` expected torch tensors or NumPy arrays, given {type(value).__name__} "
        f"at key {key!r}."
    )


def _state_dict(where: str, state_dict: Any) -> dict[str, np.ndarray]:
    if hasattr(state_dict, "state_dict") and callable(state_dict.state_dict):  # a torch module
        state_dict = state_dict.state_dict()
    if not isinstance(state_dict, Mapping):
        raise TypeError(
            f"{where}: argument `state_dict` expected a mapping of names to tensors (module.state_dict()), "
            f"given {type(state_dict).__name__}."
        )
    return {str(k): _as_numpy(v, where, k) for k, v in state_dict.items()}


def _template(
    model: Layer, input_shape: Shape, dtype: DType, key: PRNGKey | None, values: bool
) -> tuple[Params, State]:
    """``model.init``'s ``(params, state)``: NumPy zeros of the right shapes and dtypes (``jax.eval_shape``:
    no FLOPs), or, with ``values``, the initial values (one compiled init). JAX rebuilds dicts with sorted
    keys, so the insertion order (the forward order of named parts) is read while tracing and restored."""
    order = {}

    def init(k):
        tree = model.init(k, input_shape, dtype)
        order["tree"] = key_order(tree)
        return tree

    key = jax.random.key(0) if key is None else key
    if values:
        tree = jax.tree.map(np.asarray, jax.jit(init)(key))
    else:
        tree = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), jax.eval_shape(init, key))
    params, state = in_key_order(tuple(tree), order["tree"])
    return params, state


def _contiguous(value: Any) -> np.ndarray:
    """A writable C-contiguous copy (a view of a JAX array is read-only; torch.from_numpy warns on those)."""
    return np.array(value, order="C", copy=True)


def _empty(tree: Any) -> bool:
    return isinstance(tree, dict) and not tree


def _cast(new: Any, old: Any) -> Any:
    """``new`` as JAX arrays of ``old``'s dtypes, in ``old``'s key order."""
    if isinstance(old, dict):
        return {k: _cast(new[k], v) for k, v in old.items()}
    return jax.device_put(np.asarray(new).astype(old.dtype, copy=False))  # (jnp.asarray compiles a copy)


# ---- stacked copies (nnjax.stack) ---------------------------------------------------------------------------

Stacks = list[tuple[tuple[str, ...], int]]  # (path in the unstacked view, n), outer stacks first


def _map(fn: Callable[[Any], Any], tree: Any) -> Any:
    """``fn`` on every leaf of a tree of dicts, keeping the dicts' key order (``jax.tree.map`` sorts keys)."""
    return {k: _map(fn, v) for k, v in tree.items()} if isinstance(tree, dict) else fn(tree)


def _copies(tree: Any) -> int | None:
    """``n`` when ``tree`` is a stack's params, ``{"layers": ...}`` with every array ``(n, ...)``; else None."""
    if not (isinstance(tree, dict) and set(tree) == {STACKED} and isinstance(tree[STACKED], dict)):
        return None
    leaves = jax.tree.leaves(tree[STACKED])
    sizes = {np.shape(a)[0] if np.ndim(a) else None for a in leaves}
    return sizes.pop() if leaves and len(sizes) == 1 and None not in sizes else None


def _unstack(params: Params, state: State) -> tuple[Params, State, Stacks]:
    """The view of ``(params, state)`` in which every stack's ``{"layers": stacked}`` is ``{"0": copy_0, ...}``."""
    stacks: Stacks = []

    def split(tree: Any, n: int) -> dict:
        return {str(i): _map(lambda a, i=i: a[i], tree[STACKED]) for i in range(n)}

    def walk(p: Any, s: Any, path: tuple[str, ...]) -> tuple[Any, Any]:
        if not isinstance(p, dict):
            return p, s
        n = _copies(p)
        if n is not None:
            stacks.append((path, n))
            p = split(p, n)
            s = split(s, n) if isinstance(s, dict) and STACKED in s else s
        new_p, new_s = {}, dict(s) if isinstance(s, dict) else s
        for k, v in p.items():
            new_p[k], sub = walk(v, s.get(k, {}) if isinstance(s, dict) else {}, (*path, k))
            if isinstance(s, dict) and k in s:
                new_s[k] = sub
        return new_p, new_s

    view_p, view_s = walk(params, state, ())
    return view_p, view_s, stacks


def _restack(tree: Any, stacks: Stacks) -> Any:
    """The inverse of ``_unstack`` on params or state: each stack's copies back on a leading axis."""
    for path, n in reversed(stacks):  # inner stacks (found later, inside the copies) first
        copies = _get(tree, path)
        if not (isinstance(copies, dict) and set(copies) == {str(i) for i in range(n)}):
            continue  # (state with nothing at a stack's path)

        def join(*leaves):
            return np.stack([np.asarray(a) for a in leaves])

        first = copies["0"]
        stacked = _map_n(join, first, [copies[str(i)] for i in range(n)])
        tree = _put(tree, path, {STACKED: stacked})
    return tree


def _map_n(fn: Callable[..., Any], like: Any, trees: list[Any]) -> Any:
    """``fn`` over the matching leaves of ``trees``, in ``like``'s key order."""
    if isinstance(like, dict):
        return {k: _map_n(fn, v, [t[k] for t in trees]) for k, v in like.items()}
    return fn(*trees)


# ---- public API -------------------------------------------------------------------------------------------


def from_torch_state_dict(
    model: Layer,
    state_dict: Any,
    *,
    input_shape: Shape,
    dtype: DType = jnp.float32,
    mapping: Mapping[str, str | None] | None = None,
    kinds: Mapping[str, str] | None = None,
    ignore: Sequence[str] = (),
    key: PRNGKey | None = None,
) -> tuple[Params, State]:
    """Builds an nnjax model's ``(params, state)`` from a PyTorch ``state_dict``.

    The model is initialized for ``input_shape``, cut into units (one per parametrized layer) that are
    paired in order with the torch modules of the state_dict (see the module docstring), and every unit's
    tensors are converted by its kind's entry of ``CONVERTERS``: ``nn.Linear`` weights are transposed,
    ``nn.ConvNd`` ``(out, in, *k)`` become channels-last ``(*k, in, out)``, ``nn.LSTM``/``nn.GRU`` biases are
    summed, ``nn.MultiheadAttention``'s packed ``in_proj_weight`` is split per head, and ``nn.BatchNormNd``'s
    running statistics fill ``state``. torch is not needed: values may be torch tensors or NumPy arrays.

    Ported models must compute what the torch model computes: channels-last inputs (``x.permute(0, 2, 3,
    1)``), ``TorchFlatten`` where torch flattens ``(C, H, W)`` feature maps, ``TorchBatchNorm`` (PyTorch's
    momentum and unbiased running variance; an already-built ``BatchNorm`` cannot be changed here, and
    its running statistics are taken as they are either way).

    Args:
      model: the nnjax model.
      state_dict: ``torch_module.state_dict()`` (or the module itself), values torch tensors or arrays.
      input_shape: one example's shape for ``model.init``, e.g. ``(28, 28, 1)``.
      dtype: the params' dtype (``jnp.float64`` under ``jax_enable_x64`` for float64 models).
      mapping: ``{nnjax_path: torch_prefix}`` pins units where the two orders differ; a path of a subtree
        pairs the units below it, in order, with the modules below the prefix; ``None`` keeps a unit's
        initial values. Paths join params keys with ``/`` (``"serial_1/dense_0"``; ``""`` is the model).
      kinds: ``{nnjax_path: kind}`` for units whose kind neither structure nor key tells, e.g.
        ``{"up": "conv_transpose"}`` for a ConvTranspose that is a named part (kinds: ``CONVERTERS``' keys).
      ignore: glob patterns of torch keys to skip (e.g. ``["*.num_batches_tracked", "mask"]``).
      key: the init key (default ``jax.random.key(0)``); it matters only for units mapped to ``None``.

    Returns:
      ``(params, state)`` with the structure and dtypes of ``model.init``'s.

    Raises:
      InteropError: a missing key, an unused key or a wrong shape; ONE error lists every one, with the
        expected and the given shape and the nnjax unit it belongs to.
      ValueError: ``mapping`` or ``kinds`` names a path the model does not have, or an unknown kind.
      TypeError: a state_dict value that is neither a torch tensor nor an array.

    Example:
      >>> model = nnjax.serial(nnjax.Dense(3), nnjax.Relu(), nnjax.Dense(2))  # nn.Sequential(Linear, ReLU, Linear)
      >>> state_dict = {"0.weight": np.ones((3, 4)), "0.bias": np.zeros(3),
      ...               "2.weight": np.arange(6.0).reshape(2, 3), "2.bias": np.zeros(2)}
      >>> params, state = nnjax.interop.from_torch_state_dict(model, state_dict, input_shape=(4,))
      >>> jax.tree.map(jnp.shape, params)
      {'dense_0': {'b': (3,), 'w': (4, 3)}, 'dense_2': {'b': (2,), 'w': (3, 2)}, 'relu_1': {}}
      >>> print(params["dense_2"]["w"])  # torch's (out, in) weight, transposed
      [[0. 3.]
       [1. 4.]
       [2. 5.]]
    """
    where = "from_torch_state_dict"
    mapping, kinds = dict(mapping or {}), dict(kinds or {})
    torch_arrays = _state_dict(where, state_dict)
    keep = any(v is None for v in mapping.values())  # units that keep their initial values
    params, state = _template(model, input_shape, dtype, key, values=keep)
    view_params, view_state, stacks = _unstack(params, state)
    units = _units(view_params, view_state, kind(model), kinds)
    _check_mapping(where, units, mapping, kinds)
    pairing = _pair(units, torch_arrays, mapping, ignore)
    _raise_if_bad(where, pairing)
    new_params, new_state = view_params, view_state
    for unit, _, ctx in pairing.pairs:
        converter = CONVERTERS[unit.kind]
        expected = converter.to_torch(unit.params, unit.state, ctx)
        arrays = {local: ctx.torch[local] for local in expected if local in ctx.torch}
        p, s = converter.to_nnjax(arrays, unit.params, unit.state, ctx)
        if not _empty(unit.params):
            new_params = _put(new_params, unit.keys, _cast(p, unit.params))
        if not _empty(unit.state):
            new_state = _put(new_state, unit.keys, _cast(s, unit.state))
    new_params, new_state = _restack(new_params, stacks), _restack(new_state, stacks)
    return _cast(new_params, params), _cast(new_state, state)  # (units kept at their initial values, too)


def to_torch_state_dict(
    model: Layer,
    params: Params,
    state: State,
    *,
    template: Any = None,
    mapping: Mapping[str, str | None] | None = None,
    kinds: Mapping[str, str] | None = None,
    ignore: Sequence[str] = (),
    input_shape: Shape | None = None,
) -> dict[str, np.ndarray]:
    """A PyTorch ``state_dict`` (of NumPy arrays) for an nnjax model's ``(params, state)``.

    The inverse of ``from_torch_state_dict``: the same units, the same converters. The torch keys are
    those of ``template`` (paired as on import) when given, else built from the nnjax paths: a
    ``serial`` position becomes an ``nn.Sequential`` index (``dense_2/w`` -> ``2.weight``), other keys stay
    as they are. Load the result with ``module.load_state_dict({k: torch.from_numpy(v) for k, v in
    sd.items()})``. Recurrent biases come out as ``bias_ih = b``, ``bias_hh = 0`` (GRU: the n block of
    ``bias_hh`` is ``b_hn``), which sum to the same model; ``num_batches_tracked`` is the template's (else 0).

    Args:
      model: the nnjax model (its kind names a single-layer model's unit).
      params, state: the model's params and state.
      template: a torch state_dict (or module) whose keys and shapes the result must have; needed for a
        grouped ConvTranspose (nnjax's params do not hold the group count).
      mapping, kinds, ignore: as in ``from_torch_state_dict``; without a template, ``mapping`` gives the
        prefix of a unit or a subtree (``None`` leaves a unit out).
      input_shape: only when ``params`` went through JAX tree functions (which sort dict keys) and the model
        has named parts whose order the template's pairing needs: re-initializes to recover the order.

    Returns:
      ``{torch_key: np.ndarray}`` in the units' order, C-contiguous, in the params' dtypes.

    Raises:
      InteropError: with a ``template``, the model does not fit it (every offending key listed).
      ValueError: ``mapping`` or ``kinds`` names a path the model does not have.

    Example:
      >>> model = nnjax.serial(nnjax.Conv(4, (3, 3)), nnjax.BatchNorm(), nnjax.Relu())
      >>> params, state = model.init(jax.random.key(0), (8, 8, 1))
      >>> sd = nnjax.interop.to_torch_state_dict(model, params, state)
      >>> for name, value in sd.items():  # the keys of nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
      ...     print(name, value.shape)
      0.weight (4, 1, 3, 3)
      0.bias (4,)
      1.weight (4,)
      1.bias (4,)
      1.running_mean (4,)
      1.running_var (4,)
      1.num_batches_tracked ()
    """
    where = "to_torch_state_dict"
    mapping, kinds = dict(mapping or {}), dict(kinds or {})
    if input_shape is not None:
        fresh_p, fresh_s = _template(model, input_shape, jnp.float32, None, values=False)
        params = in_key_order(params, fresh_p)
        state = in_key_order(state, fresh_s)
    params, state, _ = _unstack(params, state)
    units = _units(params, state, kind(model), kinds)
    _check_mapping(where, units, mapping, kinds)
    out: dict[str, np.ndarray] = {}
    if template is not None:
        pairing = _pair(units, _state_dict(where, template), mapping, ignore)
        _raise_if_bad(where, pairing)
        pairs = pairing.pairs
    else:
        pairs = []
        for unit in units:
            entry = _covering(unit.path, mapping)
            if entry is None:
                prefix = unit.default_prefix
            elif mapping[entry] is None:
                continue
            elif entry == unit.path:
                prefix = mapping[entry]
            else:  # below a subtree's prefix, the default names of the rest of the path
                depth = len(entry.split("/")) if entry else 0
                prefix = _join(mapping[entry], ".".join(unit.default_parts[depth:]))
            pairs.append((unit, prefix, Context({})))
    for unit, prefix, ctx in pairs:
        for local, value in CONVERTERS[unit.kind].to_torch(unit.params, unit.state, ctx).items():
            out[_join(prefix, local)] = _contiguous(value)
    return out


def TorchBatchNorm(  # noqa: N802 - layer constructors are CamelCase
    momentum: float = 0.1, eps: float = 1e-5, affine: bool = True, *, axis_name: Any = None
) -> Layer:
    """A ``BatchNorm`` with PyTorch's conventions, for models ported from ``nn.BatchNorm1d/2d/3d``.

    ``BatchNorm(momentum=1 - momentum, epsilon=eps, use_scale=affine, use_bias=affine,
    running_variance="unbiased")``: torch's ``momentum`` weights the new batch (nnjax's the old average),
    and torch folds the unbiased batch variance into ``running_var``. Named ``"BatchNorm"``, so its key in
    ``serial`` is ``batch_norm_i`` as usual.

    Args:
      momentum: PyTorch's momentum (default 0.1), in [0, 1].
      eps: PyTorch's ``eps``.
      affine: learn the per-feature scale and bias (PyTorch's ``weight`` and ``bias``).
      axis_name: as ``BatchNorm``'s (a batch sharded over a mapped axis).

    Returns:
      A ``Layer``: ``x: (batch, ..., features) -> y`` of the same shape (channels-last).

    Raises:
      ValueError: ``momentum`` outside [0, 1] or ``eps <= 0`` (raised by ``BatchNorm``).

    Example:
      >>> layer = nnjax.interop.TorchBatchNorm()
      >>> params, state = layer.init(jax.random.key(0), (2,))
      >>> _, state = layer.apply(params, state, jnp.array([[0.0, 1.0], [2.0, 5.0]]), train=True)
      >>> print(state["var"])  # 0.9 * 1 + 0.1 * unbiased batch variance (2 and 8), as torch
      [1.1 1.7]
    """
    if isinstance(momentum, (int, float)) and not 0.0 <= momentum <= 1.0:
        raise ValueError(f"TorchBatchNorm: argument `momentum` expected a value in [0, 1], given {momentum!r}.")
    return BatchNorm(
        momentum=1.0 - momentum,
        epsilon=eps,
        axis_name=axis_name,
        use_scale=affine,
        use_bias=affine,
        running_variance="unbiased",
    )


def TorchFlatten() -> Layer:  # noqa: N802
    """Flattens channels-last feature maps in PyTorch's order: ``(batch, *spatial, C) -> (batch, C * prod(spatial))``.

    ``nn.Flatten`` on torch's ``(batch, C, H, W)`` maps lists channel 0's pixels first; ``nnjax.Flatten`` on
    ``(batch, H, W, C)`` lists pixel 0's channels first. A ``Dense`` ported from the ``nn.Linear`` after it
    needs the torch order, which this layer gives (it moves the channels first, then flattens).

    Returns:
      A parameter-free ``Layer`` named ``"TorchFlatten"``.

    Raises:
      LayerError: (at apply) an input of rank below 2.

    Example:
      >>> x = jnp.arange(8.0).reshape(1, 2, 2, 2)  # (batch, H, W, C)
      >>> print(nnjax.interop.TorchFlatten().apply({}, {}, x)[0])  # channel 0's 4 pixels, then channel 1's
      [[0. 2. 4. 6. 1. 3. 5. 7.]]
    """

    def fn(x):
        check_rank("TorchFlatten", x, 2, "a batch of channels-last examples")
        if x.ndim == 2:
            return x
        return jnp.moveaxis(x, -1, 1).reshape(x.shape[0], -1)  # (B, C, *spatial) -> (B, C * prod(spatial))

    return stateless(fn, "TorchFlatten")


# ---- safetensors ------------------------------------------------------------------------------------------

_META = "nnjax"


def _flatten(where: str, tree: Any, prefix: str, leaves: dict, order: list, empty: list) -> None:
    if isinstance(tree, dict):
        if not tree:
            if prefix:
                empty.append(prefix)
                order.append(prefix)
            return
        for k in _ordered(tree) if _serial_style(tree) else tree:
            if not isinstance(k, str) or not k or "." in k:
                raise ValueError(
                    f"{where}: dict keys must be non-empty strings without '.', given {k!r} "
                    f"under {prefix or 'the root'!r}."
                )
            _flatten(where, tree[k], _join(prefix, k), leaves, order, empty)
        return
    if not _is_array(tree) and not isinstance(tree, (int, float, bool, np.number)):
        raise TypeError(
            f"{where}: expected nested dicts of arrays, given {type(tree).__name__} at {prefix or 'the root'!r}. "
            f"Hint: optimizer states and other tuples go through nnjax.save_checkpoint."
        )
    if not prefix:
        raise TypeError(f"{where}: expected a dict of arrays, given a bare {type(tree).__name__}.")
    leaves[prefix] = _contiguous(np.asarray(jax.device_get(tree)))
    order.append(prefix)


def _import_safetensors(where: str):
    try:
        from safetensors import numpy as st_numpy
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            f"{where} needs the `safetensors` package: pip install safetensors (or nnjax[interop])."
        ) from error
    return st_numpy


def save_safetensors(path: str, params: Params, state: State | None = None) -> None:
    """Writes params (and state) to a ``.safetensors`` file with readable, ``.``-joined keys.

    Keys are the params paths, ``"dense_0.w"``; with ``state``, ``"params.dense_0.w"`` and
    ``"state.batch_norm_1.mean"``. The header's metadata records the key order and the empty dicts
    (``relu_1: {}``), so ``load_safetensors`` rebuilds exactly the same trees. bfloat16 arrays are stored
    as safetensors' ``BF16``. Only NumPy and safetensors are used (no torch).

    Args:
      path: the file to write.
      params: nested dicts of arrays (any shapes and dtypes NumPy and safetensors know, bfloat16 included).
      state: the model state, or None to store params alone.

    Returns:
      None.

    Raises:
      ValueError: a dict key that is not a string, is empty or contains ``.``.
      TypeError: a leaf that is not an array, or a non-dict container (optimizer states: use
        ``nnjax.save_checkpoint``); a dtype the installed safetensors cannot store.
      ImportError: safetensors is not installed.

    Example:
      >>> import os, tempfile
      >>> model = nnjax.serial(nnjax.Dense(3), nnjax.BatchNorm(), nnjax.Relu())
      >>> params, state = model.init(jax.random.key(0), (4,))
      >>> path = os.path.join(tempfile.mkdtemp(), "model.safetensors")
      >>> nnjax.interop.save_safetensors(path, params, state)
      >>> params2, state2 = nnjax.interop.load_safetensors(path)
      >>> jax.tree.map(jnp.shape, state2)
      {'batch_norm_1': {'mean': (3,), 'var': (3,)}, 'dense_0': {}, 'relu_2': {}}
      >>> bool((params2["dense_0"]["w"] == params["dense_0"]["w"]).all())
      True
    """
    where = "save_safetensors"
    st_numpy = _import_safetensors(where)
    leaves: dict[str, np.ndarray] = {}
    order: list[str] = []
    empty: list[str] = []
    trees = {"params": params} if state is None else {"params": params, "state": state}
    for name, tree in trees.items():
        if not isinstance(tree, dict):
            raise TypeError(f"{where}: argument `{name}` expected a dict of arrays, given {type(tree).__name__}.")
        _flatten(where, tree, "" if state is None else name, leaves, order, empty)
    meta = {"version": 1, "state": state is not None, "order": order, "empty": empty}
    try:
        st_numpy.save_file(leaves, path, metadata={_META: json.dumps(meta)})
    except (TypeError, ValueError, KeyError) as error:
        dtypes = sorted({str(v.dtype) for v in leaves.values()})
        raise TypeError(
            f"{where}: safetensors could not store the arrays (dtypes {dtypes}): {error}. Hint: bfloat16 needs "
            f"safetensors >= 0.4 with ml_dtypes; or cast, e.g. jax.tree.map(lambda a: a.astype(jnp.float32), params)."
        ) from error


def load_safetensors(path: str) -> tuple[Params, State]:
    """Reads a ``.safetensors`` file into nested dicts of JAX arrays: ``(params, state)``.

    A file written by ``save_safetensors`` comes back as it was saved (key order and empty dicts
    included; ``state`` is ``{}`` when none was saved). Any other safetensors file (e.g. a Hugging Face
    checkpoint) comes back as ``(nested dicts split at '.', {})``; its torch layouts are
    ``from_torch_state_dict``'s business: ``from_torch_state_dict(model, flat_arrays, ...)``.

    Args:
      path: the file to read.

    Returns:
      ``(params, state)``: nested dicts of ``jax.Array``.

    Raises:
      ValueError: a foreign file whose keys clash (``"a"`` and ``"a.b"``), or a file that is not
        safetensors (truncated, or another format; the message names the file).
      OSError: the file cannot be opened (e.g. ``FileNotFoundError``).
      ImportError: safetensors is not installed.

    Example:
      >>> import os, tempfile
      >>> path = os.path.join(tempfile.mkdtemp(), "w.safetensors")
      >>> nnjax.interop.save_safetensors(path, {"dense_0": {"w": jnp.ones((2, 3), jnp.bfloat16)}})
      >>> params, state = nnjax.interop.load_safetensors(path)
      >>> params["dense_0"]["w"].dtype, state
      (dtype(bfloat16), {})
    """
    where = "load_safetensors"
    _import_safetensors(where)
    from safetensors import safe_open

    try:
        with safe_open(path, framework="np") as f:
            metadata = f.metadata() or {}
            flat = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 - a safetensors handle, not a dict
    except OSError:
        raise
    except Exception as error:  # noqa: BLE001 - safetensors raises its own SafetensorError (not a ValueError)
        raise ValueError(
            f"{where}: {os.fspath(path)!r} is not a readable safetensors file ({type(error).__name__}: {error}). "
            "Hint: a safetensors file starts with an 8-byte header length and a JSON header; a PyTorch .pt/.bin "
            "file needs torch.load and then from_torch_state_dict."
        ) from error
    meta = json.loads(metadata[_META]) if _META in metadata else None
    order = meta["order"] if meta else list(flat)
    empty = set(meta["empty"]) if meta else set()
    tree: dict = {}
    for key in order:
        parts = key.split(".")
        node = tree
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"{where}: the keys of {path!r} clash at {key!r} (an array and a dict of one name).")
        if parts[-1] in node:
            raise ValueError(f"{where}: the keys of {path!r} clash at {key!r} (an array and a dict of one name).")
        node[parts[-1]] = {} if key in empty else jax.device_put(flat[key])
    if meta and meta["state"]:
        params, state = tree.get("params", {}), tree.get("state", {})
        return params, state
    return tree, {}
