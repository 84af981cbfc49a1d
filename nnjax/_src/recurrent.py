"""Recurrent layers: SimpleRNN, LSTM and GRU cells, and the layers that scan them over time.

A *cell* is a small immutable object of pure functions for ONE time step:

    params = cell.init(key, input_features, dtype)
    carry = cell.initial_carry(batch, dtype)            # zeros
    carry, h_t = cell.step(params, carry, x_t)          # x_t: (batch, features) -> h_t: (batch, hidden)

``RNN(cell)`` turns a cell into a sequence ``Layer`` that runs it with ``jax.lax.scan`` over
``x: (batch, T, features)``. ``LSTM(h)``, ``GRU(h)`` and ``SimpleRNN(h)`` are shortcuts for
``RNN(LSTMCell(h))`` etc.; ``Bidirectional`` runs one cell forward and one backward.

Every cell's params are ``{"w_x": (features, G * hidden), "w_h": (hidden, G * hidden), "b": (G * hidden,)}``
with the ``G`` gate blocks side by side in the order given in the cell's docstring (PyTorch's order;
GRU adds ``"b_hn"``). ``step`` splits into ``input_projection`` (``x_t @ w_x + b``) and
``recurrence`` (the rest), so the projection can run inside the scan or, hoisted, as one big matmul.
``recurrence(..., feature_major=True)`` takes transposed ``(features, batch)`` arrays, which
``scan_cell`` uses in the CPU form of the ``rnn_layout`` kernel (``nnjax._src.kernels``).

Variable-length sequences: instead of an array, pass a dict ``{"x": x, "mask": mask}`` with
``mask: (batch, T)`` nonzero at real steps (see ``sequence_mask``). At a masked step the carry is held
and the output is zero, so padding anywhere changes nothing, and a reversed scan starts at each
sequence's own last real step. A dict may also hold ``"initial_carry"`` (default zeros).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from nnjax._src import initializers, kernels
from nnjax._src.core import Layer, serial
from nnjax._src.errors import LayerError, LayerTypeError
from nnjax._src.types import Array, DType, Params, PRNGKey, Shape

Carry = Any  # an array (batch, hidden), or a tuple of them (LSTM: (h, c))

_INPUT_KEYS = ("x", "mask", "initial_carry")


def _gate_params(
    key: PRNGKey, input_features: int, hidden: int, gates: int, dtype: DType, w_init: Any, h_init: Any
) -> Params:
    x_key, h_key = jax.random.split(key)
    return {
        "w_x": initializers.get(w_init)(x_key, (input_features, gates * hidden), dtype),
        "w_h": initializers.get(h_init)(h_key, (hidden, gates * hidden), dtype),
        "b": jnp.zeros((gates * hidden,), dtype),
    }


def _check_hidden(cell: str, hidden: Any) -> None:
    if not isinstance(hidden, int) or isinstance(hidden, bool) or hidden < 1:
        raise ValueError(f"{cell}: argument `hidden` expected a positive int, given {hidden!r}.")


class SimpleRNNCell(NamedTuple):
    """The Elman cell: ``h' = tanh(x_t @ w_x + b + h @ w_h)``.

    Params: ``{"w_x": (features, hidden), "w_h": (hidden, hidden), "b": (hidden,)}``; ``w_x`` Glorot-uniform,
    ``w_h`` orthogonal, ``b`` zeros (Keras' defaults). Carry: ``h: (batch, hidden)``.

    Attributes:
      hidden: the size of the hidden state (and of each output step), a positive int (checked by ``init``).
      w_init: initializer of ``w_x`` (function or name), default ``"glorot_uniform"``.
      h_init: initializer of ``w_h`` (function or name), default ``"orthogonal"``.
      kind: ``"SimpleRNN"``, the name of the layer ``RNN`` makes of the cell (class constant).
      gates: ``1``, the number of gate blocks in ``w_x``, ``w_h`` and ``b`` (class constant).

    Example:
      >>> cell = nnjax.SimpleRNNCell(4)
      >>> params = cell.init(jax.random.key(0), 3)  # 3 input features
      >>> jax.tree.map(jnp.shape, params)
      {'b': (4,), 'w_h': (4, 4), 'w_x': (3, 4)}
      >>> carry, h = cell.step(params, cell.initial_carry(2), jnp.ones((2, 3)))  # one step of a batch of 2
      >>> h.shape, bool(jnp.allclose(carry, h))
      ((2, 4), True)
    """

    hidden: int
    w_init: Any = "glorot_uniform"
    h_init: Any = "orthogonal"
    kind = "SimpleRNN"
    gates = 1

    def init(self, key: PRNGKey, input_features: int, dtype: DType = jnp.float32) -> Params:
        """The cell's params for ``input_features`` inputs; raises ValueError unless ``hidden`` is a positive int."""
        _check_hidden(self.kind, self.hidden)
        return _gate_params(key, input_features, self.hidden, 1, dtype, self.w_init, self.h_init)

    def initial_carry(self, batch: int, dtype: DType = jnp.float32) -> Carry:
        """The zero carry before the first step, for ``batch`` sequences."""
        return jnp.zeros((batch, self.hidden), dtype)

    def input_projection(self, params: Params, x: Array) -> Array:
        """``x @ w_x + b`` on the last axis: ``(..., features) -> (..., hidden)``."""
        return x @ params["w_x"] + params["b"]

    def recurrence(self, params: Params, carry: Carry, xw_t: Array, feature_major: bool = False) -> tuple[Carry, Array]:
        """The rest of ``step`` after ``input_projection``: ``(carry, xw_t) -> (new_carry, h_t)``."""
        h = jnp.tanh(xw_t + kernels.recurrent_matmul(params, carry, feature_major))
        return h, h

    def step(self, params: Params, carry: Carry, x_t: Array) -> tuple[Carry, Array]:
        """One step: ``x_t: (batch, features)``, carry ``h`` -> ``(h', h')``."""
        return self.recurrence(params, carry, self.input_projection(params, x_t))


class LSTMCell(NamedTuple):
    """The LSTM cell, PyTorch's equations and gate order ``i, f, g, o``::

        i, f, g, o = split(x_t @ w_x + b + h @ w_h, 4)
        c' = sigmoid(f) * c + sigmoid(i) * tanh(g)
        h' = sigmoid(o) * tanh(c')

    Params: ``{"w_x": (features, 4 * hidden), "w_h": (hidden, 4 * hidden), "b": (4 * hidden,)}``, blocks in
    the order ``i, f, g, o``; ``w_x`` Glorot-uniform, ``w_h`` orthogonal, ``b`` zeros except the forget
    block, which starts at ``forget_bias`` (1.0, as Keras' ``unit_forget_bias``; PyTorch starts at 0).
    PyTorch's ``b_ih + b_hh`` is our ``b``. Carry: ``(h, c)``, each ``(batch, hidden)``.

    Attributes:
      hidden: the size of the hidden state (and of each output step), a positive int (checked by ``init``).
      forget_bias: the initial value of the forget gate's bias block (1.0).
      w_init: initializer of ``w_x`` (function or name), default ``"glorot_uniform"``.
      h_init: initializer of ``w_h`` (function or name), default ``"orthogonal"``.
      kind: ``"LSTM"``, the name of the layer ``RNN`` makes of the cell (class constant).
      gates: ``4``, the number of gate blocks in ``w_x``, ``w_h`` and ``b`` (class constant).

    Example:
      >>> cell = nnjax.LSTMCell(4)
      >>> params = cell.init(jax.random.key(0), 3)
      >>> params["w_x"].shape, params["b"].reshape(4, 4)[:, 0].tolist()  # bias blocks i, f, g, o
      ((3, 16), [0.0, 1.0, 0.0, 0.0])
      >>> (h, c), out = cell.step(params, cell.initial_carry(2), jnp.ones((2, 3)))
      >>> h.shape, c.shape, bool(jnp.allclose(out, h))
      ((2, 4), (2, 4), True)
    """

    hidden: int
    forget_bias: float = 1.0
    w_init: Any = "glorot_uniform"
    h_init: Any = "orthogonal"
    kind = "LSTM"
    gates = 4

    def init(self, key: PRNGKey, input_features: int, dtype: DType = jnp.float32) -> Params:
        """The cell's params for ``input_features`` inputs; raises ValueError unless ``hidden`` is a positive int."""
        _check_hidden(self.kind, self.hidden)
        params = _gate_params(key, input_features, self.hidden, 4, dtype, self.w_init, self.h_init)
        params["b"] = params["b"].at[self.hidden : 2 * self.hidden].set(self.forget_bias)
        return params

    def initial_carry(self, batch: int, dtype: DType = jnp.float32) -> Carry:
        """The zero carry before the first step, for ``batch`` sequences."""
        zeros = jnp.zeros((batch, self.hidden), dtype)
        return (zeros, zeros)

    def input_projection(self, params: Params, x: Array) -> Array:
        """``x @ w_x + b`` on the last axis: ``(..., features) -> (..., 4 * hidden)``."""
        return x @ params["w_x"] + params["b"]

    def recurrence(self, params: Params, carry: Carry, xw_t: Array, feature_major: bool = False) -> tuple[Carry, Array]:
        """The rest of ``step`` after ``input_projection``: ``(carry, xw_t) -> (new_carry, h_t)``."""
        h, c = carry
        i, f, g, o = jnp.split(xw_t + kernels.recurrent_matmul(params, h, feature_major), 4, axis=0 if feature_major else -1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return (h, c), h

    def step(self, params: Params, carry: Carry, x_t: Array) -> tuple[Carry, Array]:
        """One step: ``x_t: (batch, features)``, carry ``(h, c)`` -> ``((h', c'), h')``."""
        return self.recurrence(params, carry, self.input_projection(params, x_t))


class GRUCell(NamedTuple):
    """The GRU cell, PyTorch's equations and gate order ``r, z, n`` (Keras ``reset_after=True``)::

        xr, xz, xn = split(x_t @ w_x + b, 3);  hr, hz, hn = split(h @ w_h, 3)
        r = sigmoid(xr + hr);  z = sigmoid(xz + hz)
        n = tanh(xn + r * (hn + b_hn))
        h' = (1 - z) * n + z * h

    Params: ``{"w_x": (features, 3 * hidden), "w_h": (hidden, 3 * hidden), "b": (3 * hidden,),
    "b_hn": (hidden,)}``; ``w_x`` Glorot-uniform, ``w_h`` orthogonal, biases zeros. PyTorch's
    ``b_ih + b_hh`` (r and z blocks) and ``b_ih`` (n block) are our ``b``; its ``b_hh`` n block is ``b_hn``.
    Carry: ``h: (batch, hidden)``.

    Attributes:
      hidden: the size of the hidden state (and of each output step), a positive int (checked by ``init``).
      w_init: initializer of ``w_x`` (function or name), default ``"glorot_uniform"``.
      h_init: initializer of ``w_h`` (function or name), default ``"orthogonal"``.
      kind: ``"GRU"``, the name of the layer ``RNN`` makes of the cell (class constant).
      gates: ``3``, the number of gate blocks in ``w_x``, ``w_h`` and ``b`` (class constant).

    Example:
      >>> cell = nnjax.GRUCell(4)
      >>> params = cell.init(jax.random.key(0), 3)
      >>> jax.tree.map(jnp.shape, params)
      {'b': (12,), 'b_hn': (4,), 'w_h': (4, 12), 'w_x': (3, 12)}
      >>> carry, h = cell.step(params, cell.initial_carry(2), jnp.ones((2, 3)))
      >>> h.shape
      (2, 4)
    """

    hidden: int
    w_init: Any = "glorot_uniform"
    h_init: Any = "orthogonal"
    kind = "GRU"
    gates = 3

    def init(self, key: PRNGKey, input_features: int, dtype: DType = jnp.float32) -> Params:
        """The cell's params for ``input_features`` inputs; raises ValueError unless ``hidden`` is a positive int."""
        _check_hidden(self.kind, self.hidden)
        params = _gate_params(key, input_features, self.hidden, 3, dtype, self.w_init, self.h_init)
        params["b_hn"] = jnp.zeros((self.hidden,), dtype)
        return params

    def initial_carry(self, batch: int, dtype: DType = jnp.float32) -> Carry:
        """The zero carry before the first step, for ``batch`` sequences."""
        return jnp.zeros((batch, self.hidden), dtype)

    def input_projection(self, params: Params, x: Array) -> Array:
        """``x @ w_x + b`` on the last axis: ``(..., features) -> (..., 3 * hidden)``."""
        return x @ params["w_x"] + params["b"]

    def recurrence(self, params: Params, carry: Carry, xw_t: Array, feature_major: bool = False) -> tuple[Carry, Array]:
        """The rest of ``step`` after ``input_projection``: ``(carry, xw_t) -> (new_carry, h_t)``."""
        h = carry
        axis = 0 if feature_major else -1
        xr, xz, xn = jnp.split(xw_t, 3, axis=axis)
        hr, hz, hn = jnp.split(kernels.recurrent_matmul(params, h, feature_major), 3, axis=axis)
        r = jax.nn.sigmoid(xr + hr)
        z = jax.nn.sigmoid(xz + hz)
        b_hn = params["b_hn"][:, None] if feature_major else params["b_hn"]
        n = jnp.tanh(xn + r * (hn + b_hn))
        h = (1.0 - z) * n + z * h
        return h, h

    def step(self, params: Params, carry: Carry, x_t: Array) -> tuple[Carry, Array]:
        """One step: ``x_t: (batch, features)``, carry ``h`` -> ``(h', h')``."""
        return self.recurrence(params, carry, self.input_projection(params, x_t))


Cell = SimpleRNNCell | LSTMCell | GRUCell


def sequence_mask(lengths: Array, max_len: int) -> Array:
    """A ``(batch, max_len)`` boolean mask, True at steps ``t < lengths[b]``: ``lengths: (batch,)`` ints.

    Args:
      lengths: ``(batch,)`` ints, the real length of each sequence.
      max_len: ``T``, the padded length of the sequences.

    Returns:
      ``(batch, max_len)`` bool, for the ``"mask"`` of ``RNN``-family and attention inputs.

    Example:
      >>> nnjax.sequence_mask(jnp.array([1, 3]), 4).tolist()
      [[True, False, False, False], [True, True, True, False]]
    """
    return jnp.arange(max_len)[None, :] < jnp.asarray(lengths)[:, None]


def scan_cell(
    cell: Cell,
    params: Params,
    x: Array,
    *,
    mask: Array | None = None,
    initial_carry: Carry | None = None,
    reverse: bool = False,
    unroll: int = 1,
    hoist_input: bool | None = None,
    feature_major: bool | None = None,
) -> tuple[Carry, Array]:
    """Runs ``cell`` over the time axis of ``x`` with ``jax.lax.scan`` (no input checks).

    Args:
      cell: a cell (``LSTMCell(64)``...); params: its params.
      x: ``(batch, T, features)``.
      mask: ``(batch, T)``, nonzero at real steps; at masked steps the carry is held and the output is 0.
      initial_carry: the carry before the first step (default zeros).
      reverse: run from the last step to the first; outputs stay aligned with the inputs.
      unroll: steps per scan iteration (``lax.scan``'s ``unroll``).
      hoist_input: compute ``x @ w_x + b`` for all steps as one matmul before the scan
        (default: the ``rnn_input`` kernel's form, ``kernels.hoist_rnn_input()``: hoisted in the generic
        form, inside the scan in the CPU form).
      feature_major: run the scan on transposed, ``(features, batch)`` steps and state (default: the
        ``rnn_layout`` kernel's form, ``kernels.feature_major_rnn()``: feature-major in the CPU form;
        never with ``hoist_input``). Inputs, outputs and carries keep their batch-major shapes.

    Returns:
      ``(final_carry, outputs)``: the carry after the last (first, when ``reverse``) real step and
      ``outputs: (batch, T, hidden)``.
    """
    hoist = kernels.hoist_rnn_input() if hoist_input is None else hoist_input
    transposed = (kernels.feature_major_rnn() if feature_major is None else feature_major) and not hoist
    batch = x.shape[0]
    dtype = jnp.result_type(x, params["w_h"])
    carry = cell.initial_carry(batch, dtype) if initial_carry is None else initial_carry
    masks = None if mask is None else jnp.swapaxes(jnp.asarray(mask) != 0, 0, 1)  # (T, batch)
    if transposed:
        return kernels.scan_feature_major(cell, params, x, masks, carry, reverse, unroll, _masked_step)
    xs = jnp.swapaxes(x, 0, 1)  # (T, batch, features): scan over the leading axis
    if hoist:
        xs = cell.input_projection(params, xs)  # (T, batch, G * hidden), one big matmul
    masks = None if masks is None else masks[..., None]  # (T, batch, 1)

    def body(carry, inputs):
        x_t, m_t = inputs
        xw_t = x_t if hoist else cell.input_projection(params, x_t)
        new_carry, h_t = cell.recurrence(params, carry, xw_t)
        return _masked_step(m_t, carry, new_carry, h_t)

    carry, ys = jax.lax.scan(body, carry, (xs, masks), reverse=reverse, unroll=unroll)
    return carry, jnp.swapaxes(ys, 0, 1)


def _masked_step(m_t: Array | None, carry: Carry, new_carry: Carry, h_t: Array) -> tuple[Carry, Array]:
    """Holds the carry and zeroes the output where ``m_t`` is False (``m_t`` broadcasts against both)."""
    if m_t is None:
        return new_carry, h_t
    new_carry = jax.tree.map(lambda new, old: jnp.where(m_t, new, old), new_carry, carry)
    return new_carry, jnp.where(m_t, h_t, jnp.zeros_like(h_t))


def _last_output(carry: Carry) -> Array:
    return carry[0] if isinstance(carry, tuple) else carry


def _split_input(name: str, x: Any) -> tuple[Array, Array | None, Carry | None]:
    """``x`` or ``{"x", "mask"?, "initial_carry"?}`` -> ``(x, mask, initial_carry)``."""
    if not isinstance(x, dict):
        return x, None, None
    unknown = sorted(set(x) - set(_INPUT_KEYS))
    if "x" not in x or unknown:
        raise LayerError(
            f"{name}: argument `x` expected an array or a dict with key 'x' and optional keys 'mask', "
            f"'initial_carry', given a dict with keys {sorted(x)}."
        )
    return x["x"], x.get("mask"), x.get("initial_carry")


def _check_sequence(name: str, x: Array, mask: Array | None, features: int) -> None:
    dtype = jnp.result_type(x)
    if not jnp.issubdtype(dtype, jnp.inexact):
        raise LayerTypeError(
            f"{name}: argument `x` expected a floating-point array (batch, T, {features}), given dtype {dtype} "
            f"with shape {tuple(jnp.shape(x))}. Hint: token ids need an Embedding layer or "
            f"`jax.nn.one_hot(ids, vocab)` first; other integers, `x.astype(jnp.float32)`."
        )
    if jnp.ndim(x) != 3 or x.shape[-1] != features:
        hint = (
            "a single sequence needs a batch axis, e.g. x[None]"
            if jnp.ndim(x) == 2
            else f"the layer was initialized for input_shape (T, {features}); check `input_shape` at init"
        )
        raise LayerError(
            f"{name}: argument `x` expected shape (batch, T, {features}), given {tuple(jnp.shape(x))}. Hint: {hint}."
        )
    if mask is not None and tuple(jnp.shape(mask)) != x.shape[:2]:
        raise LayerError(
            f"{name}: argument `mask` expected shape (batch, T) = {x.shape[:2]}, given {tuple(jnp.shape(mask))}. "
            f"Hint: build it from lengths with nnjax.sequence_mask(lengths, T)."
        )


def _input_features(name: str, input_shape: Any) -> int:
    shape = input_shape["x"] if isinstance(input_shape, dict) else input_shape
    if not isinstance(shape, tuple) or len(shape) != 2:
        raise LayerError(f"{name}: argument `input_shape` expected (T, features) for one sequence, given {shape}.")
    return shape[1]


def _check_cell(where: str, cell: Any) -> None:
    if not isinstance(cell, (SimpleRNNCell, LSTMCell, GRUCell)):
        hint = (
            " Hint: pass a cell such as LSTMCell(64), not a layer such as LSTM(64)." if isinstance(cell, Layer) else ""
        )
        raise TypeError(
            f"{where}: argument `cell` expected SimpleRNNCell, LSTMCell or GRUCell, given {type(cell).__name__}.{hint}"
        )
    _check_hidden(f"{cell.kind}Cell", cell.hidden)


def RNN(  # noqa: N802 - layer constructors are CamelCase, as in stax
    cell: Cell,
    *,
    return_sequences: bool = True,
    reverse: bool = False,
    unroll: int = 1,
    hoist_input: bool | None = None,
    feature_major: bool | None = None,
) -> Layer:
    """A layer that runs ``cell`` over the time axis with ``jax.lax.scan``.

    Params: the cell's (e.g. LSTM: ``{"w_x", "w_h", "b"}``). Named ``"LSTM(64)"`` etc., so its key in
    ``serial`` is ``lstm_0``.

    Args:
      cell: ``SimpleRNNCell(h)``, ``LSTMCell(h)`` or ``GRUCell(h)``.
      return_sequences: return every step's output ``(batch, T, hidden)``; else only the last
        ``(batch, hidden)`` (the last real step's, with a mask; the first step's when ``reverse``).
      reverse: read the sequence from the end; outputs stay aligned with the inputs.
      unroll: steps per scan iteration.
      hoist_input: compute the input projection for all steps before the scan (default: the kernel form,
        see ``nnjax._src.kernels.hoist_rnn_input``). Both give the same numbers.
      feature_major: scan on transposed ``(features, batch)`` steps (default: per backend, see
        ``nnjax._src.kernels.feature_major_rnn``). The same numbers, the same shapes outside.

    Input ``x`` is ``(batch, T, features)`` or a dict ``{"x": x, "mask": (batch, T), "initial_carry": carry}``
    (both keys optional). With a mask and ``return_sequences``, the output is ``{"x": y, "mask": mask}``,
    so stacked RNNs see the mask too (take ``out["x"]`` for the array); padded steps of ``y`` are 0.

    Returns:
      A ``Layer`` whose ``apply`` maps ``x: (batch, T, features)`` float to ``(batch, T, hidden)``
      (``return_sequences``; ``{"x": ..., "mask": ...}`` for a masked input) or ``(batch, hidden)``;
      ``input_shape`` is ``(T, features)`` (or ``{"x": (T, features), ...}``).

    Raises:
      TypeError: (when built) ``cell`` is not a cell (e.g. a layer such as ``LSTM(64)``).
      ValueError: (when built) the cell's ``hidden`` is not a positive int.
      LayerError: (at init) ``input_shape`` is not ``(T, features)``; (at apply) ``x`` not of rank 3, a feature
        count other than init's, unknown dict keys, or a mask of the wrong shape.
      LayerTypeError: (at apply) a non-float input (token ids need an ``Embedding`` first).

    Example:
      >>> layer = nnjax.RNN(nnjax.LSTMCell(4), return_sequences=False)
      >>> params, state = layer.init(jax.random.key(0), (5, 3))  # T=5 steps of 3 features
      >>> layer.name, layer.apply(params, state, jnp.ones((2, 5, 3)))[0].shape
      ('LSTM(4)', (2, 4))
      >>> x = {"x": jnp.ones((2, 5, 3)), "mask": nnjax.sequence_mask(jnp.array([5, 2]), 5)}
      >>> layer.apply(params, state, x)[0].shape  # each sequence's last real step
      (2, 4)
    """
    _check_cell("RNN", cell)
    name = f"{cell.kind}({cell.hidden})"

    def init(key, input_shape: Shape, dtype=jnp.float32):
        return cell.init(key, _input_features(name, input_shape), dtype), {}

    def apply(params, state, x, *, key=None, train=False):
        x, mask, carry = _split_input(name, x)
        _check_sequence(name, x, mask, params["w_x"].shape[0])
        carry, ys = scan_cell(
            cell,
            params,
            x,
            mask=mask,
            initial_carry=carry,
            reverse=reverse,
            unroll=unroll,
            hoist_input=hoist_input,
            feature_major=feature_major,
        )
        if not return_sequences:
            return _last_output(carry), state
        return (ys if mask is None else {"x": ys, "mask": mask}), state

    return Layer(init, apply, name)


_MERGES = {
    "concat": lambda a, b: jnp.concatenate([a, b], axis=-1),
    "sum": jnp.add,
    "mean": lambda a, b: (a + b) / 2,
    "mul": jnp.multiply,
}


def Bidirectional(  # noqa: N802
    cell_fwd: Cell,
    cell_bwd: Cell | None = None,
    *,
    merge: str = "concat",
    return_sequences: bool = True,
    unroll: int = 1,
    hoist_input: bool | None = None,
    feature_major: bool | None = None,
) -> Layer:
    """Runs ``cell_fwd`` from the first step and ``cell_bwd`` from the last, and merges their outputs.

    Params: ``{"forward": cell_fwd's, "backward": cell_bwd's}``. Input as for ``RNN`` (array or dict with
    ``"mask"``; an ``"initial_carry"`` must be a pair ``(forward_carry, backward_carry)``).

    Args:
      cell_fwd, cell_bwd: the two cells (``cell_bwd`` defaults to a copy of ``cell_fwd``'s type and size,
        with its own params).
      merge: ``"concat"`` (``2 * hidden`` features), ``"sum"``, ``"mean"`` or ``"mul"``.
      return_sequences: every step ``(batch, T, out)``; else the merge of the forward pass's last output
        and the backward pass's output at step 0, ``(batch, out)``.
      unroll, hoist_input, feature_major: as for ``RNN``, for both directions.

    Returns:
      A ``Layer`` whose ``apply`` maps ``x: (batch, T, features)`` float to ``(batch, T, out)`` (a dict
      ``{"x", "mask"}`` for a masked input) or ``(batch, out)``; ``out`` is ``hidden_fwd + hidden_bwd`` with
      ``"concat"``, else ``hidden``.

    Raises:
      TypeError: (when built) a cell is not a cell.
      ValueError: (when built) a bad ``hidden``, an unknown ``merge``, or unequal hidden sizes with a merge
        other than ``"concat"``.
      LayerError, LayerTypeError: (at init or apply) bad input, as for ``RNN``.

    Example:
      >>> layer = nnjax.Bidirectional(nnjax.GRUCell(4))
      >>> params, state = layer.init(jax.random.key(0), (5, 3))  # T=5 steps of 3 features
      >>> sorted(params), layer.apply(params, state, jnp.ones((2, 5, 3)))[0].shape
      (['backward', 'forward'], (2, 5, 8))
    """
    _check_cell("Bidirectional", cell_fwd)
    cell_bwd = cell_fwd if cell_bwd is None else cell_bwd
    _check_cell("Bidirectional", cell_bwd)
    if merge not in _MERGES:
        raise ValueError(f"Bidirectional: argument `merge` expected one of {sorted(_MERGES)}, given {merge!r}.")
    if merge != "concat" and cell_fwd.hidden != cell_bwd.hidden:
        raise ValueError(
            f"Bidirectional: merge={merge!r} needs equal hidden sizes, given {cell_fwd.hidden} and {cell_bwd.hidden}."
        )
    fwd, bwd = f"{cell_fwd.kind}({cell_fwd.hidden})", f"{cell_bwd.kind}({cell_bwd.hidden})"
    name = f"Bidirectional({fwd})" if fwd == bwd else f"Bidirectional({fwd}, {bwd})"
    combine = _MERGES[merge]

    def init(key, input_shape: Shape, dtype=jnp.float32):
        features = _input_features(name, input_shape)
        fwd_key, bwd_key = jax.random.split(key)
        return {
            "forward": cell_fwd.init(fwd_key, features, dtype),
            "backward": cell_bwd.init(bwd_key, features, dtype),
        }, {}

    def apply(params, state, x, *, key=None, train=False):
        x, mask, carry = _split_input(name, x)
        _check_sequence(name, x, mask, params["forward"]["w_x"].shape[0])
        carry_fwd, carry_bwd = (None, None) if carry is None else carry
        options = {"mask": mask, "unroll": unroll, "hoist_input": hoist_input, "feature_major": feature_major}
        last_fwd, ys_fwd = scan_cell(cell_fwd, params["forward"], x, initial_carry=carry_fwd, **options)
        last_bwd, ys_bwd = scan_cell(cell_bwd, params["backward"], x, initial_carry=carry_bwd, reverse=True, **options)
        if not return_sequences:
            return combine(_last_output(last_fwd), _last_output(last_bwd)), state
        ys = combine(ys_fwd, ys_bwd)
        return (ys if mask is None else {"x": ys, "mask": mask}), state

    return Layer(init, apply, name)


def _sequence_layer(cell: Cell, num_layers: int, return_sequences: bool, options: dict) -> Layer:
    if not isinstance(num_layers, int) or num_layers < 1:
        raise ValueError(f"{cell.kind}: argument `num_layers` expected a positive int, given {num_layers!r}.")
    if num_layers == 1:
        return RNN(cell, return_sequences=return_sequences, **options)
    layers = [RNN(cell, **options) for _ in range(num_layers - 1)]
    stack = serial(*layers, RNN(cell, return_sequences=return_sequences, **options))
    return Layer(stack.init, stack.apply, f"{cell.kind}({cell.hidden}, num_layers={num_layers})")


def LSTM(  # noqa: N802
    hidden: int,
    *,
    return_sequences: bool = True,
    reverse: bool = False,
    num_layers: int = 1,
    forget_bias: float = 1.0,
    unroll: int = 1,
    hoist_input: bool | None = None,
    feature_major: bool | None = None,
) -> Layer:
    """``RNN(LSTMCell(hidden, forget_bias))``; ``num_layers > 1`` stacks that many (params ``lstm_0``, ...).

    Shapes: ``x: (batch, T, features) -> (batch, T, hidden)``, or ``(batch, hidden)`` when
    ``return_sequences=False``. See ``RNN`` for masks and initial carries, ``LSTMCell`` for the equations.

    Args:
      hidden: the size of the hidden state and of each output step.
      return_sequences: return every step's output; else only the last (real) step's.
      reverse: read the sequences from the end (outputs stay aligned with the inputs).
      num_layers: the number of stacked layers; each but the last returns sequences to the next.
      forget_bias: the initial bias of the forget gate (see ``LSTMCell``).
      unroll, hoist_input, feature_major: as for ``RNN``.

    Returns:
      A ``Layer`` whose ``apply`` maps ``x: (batch, T, features)`` float (or a dict with ``"mask"``, see ``RNN``)
      to ``(batch, T, hidden)``, or ``(batch, hidden)`` when ``return_sequences=False``; ``input_shape`` is
      ``(T, features)``.

    Raises:
      ValueError: (when built) ``hidden`` or ``num_layers`` is not a positive int.
      LayerError, LayerTypeError: (at init or apply) bad input, as for ``RNN``.

    Example:
      >>> layer = nnjax.LSTM(4, num_layers=2, return_sequences=False)
      >>> params, state = layer.init(jax.random.key(0), (5, 3))  # T=5 steps of 3 features
      >>> sorted(params), layer.apply(params, state, jnp.ones((2, 5, 3)))[0].shape
      (['lstm_0', 'lstm_1'], (2, 4))
    """
    options = {"reverse": reverse, "unroll": unroll, "hoist_input": hoist_input, "feature_major": feature_major}
    return _sequence_layer(LSTMCell(hidden, forget_bias), num_layers, return_sequences, options)


def GRU(  # noqa: N802
    hidden: int,
    *,
    return_sequences: bool = True,
    reverse: bool = False,
    num_layers: int = 1,
    unroll: int = 1,
    hoist_input: bool | None = None,
    feature_major: bool | None = None,
) -> Layer:
    """``RNN(GRUCell(hidden))``; ``num_layers > 1`` stacks that many. Shapes as ``LSTM``; see ``GRUCell``.

    Args:
      hidden: the size of the hidden state and of each output step.
      return_sequences: return every step's output; else only the last (real) step's.
      reverse: read the sequences from the end (outputs stay aligned with the inputs).
      num_layers: the number of stacked layers; each but the last returns sequences to the next.
      unroll, hoist_input, feature_major: as for ``RNN``.

    Returns:
      A ``Layer`` whose ``apply`` maps ``x: (batch, T, features)`` float (or a dict with ``"mask"``, see ``RNN``)
      to ``(batch, T, hidden)``, or ``(batch, hidden)`` when ``return_sequences=False``; ``input_shape`` is
      ``(T, features)``.

    Raises:
      ValueError: (when built) ``hidden`` or ``num_layers`` is not a positive int.
      LayerError, LayerTypeError: (at init or apply) bad input, as for ``RNN``.

    Example:
      >>> layer = nnjax.GRU(4)
      >>> params, state = layer.init(jax.random.key(0), (5, 3))  # T=5 steps of 3 features
      >>> layer.apply(params, state, jnp.ones((2, 5, 3)))[0].shape
      (2, 5, 4)
    """
    options = {"reverse": reverse, "unroll": unroll, "hoist_input": hoist_input, "feature_major": feature_major}
    return _sequence_layer(GRUCell(hidden), num_layers, return_sequences, options)


def SimpleRNN(  # noqa: N802
    hidden: int,
    *,
    return_sequences: bool = True,
    reverse: bool = False,
    num_layers: int = 1,
    unroll: int = 1,
    hoist_input: bool | None = None,
    feature_major: bool | None = None,
) -> Layer:
    """``RNN(SimpleRNNCell(hidden))`` (tanh Elman cell); ``num_layers > 1`` stacks that many. Shapes as ``LSTM``.

    Args:
      hidden: the size of the hidden state and of each output step.
      return_sequences: return every step's output; else only the last (real) step's.
      reverse: read the sequences from the end (outputs stay aligned with the inputs).
      num_layers: the number of stacked layers; each but the last returns sequences to the next.
      unroll, hoist_input, feature_major: as for ``RNN``.

    Returns:
      A ``Layer`` whose ``apply`` maps ``x: (batch, T, features)`` float (or a dict with ``"mask"``, see ``RNN``)
      to ``(batch, T, hidden)``, or ``(batch, hidden)`` when ``return_sequences=False``; ``input_shape`` is
      ``(T, features)``.

    Raises:
      ValueError: (when built) ``hidden`` or ``num_layers`` is not a positive int.
      LayerError, LayerTypeError: (at init or apply) bad input, as for ``RNN``.

    Example:
      >>> layer = nnjax.SimpleRNN(4, return_sequences=False)
      >>> params, state = layer.init(jax.random.key(0), (5, 3))  # T=5 steps of 3 features
      >>> layer.apply(params, state, jnp.ones((2, 5, 3)))[0].shape
      (2, 4)
    """
    options = {"reverse": reverse, "unroll": unroll, "hoist_input": hoist_input, "feature_major": feature_major}
    return _sequence_layer(SimpleRNNCell(hidden), num_layers, return_sequences, options)
