"""The layer contract and the combinators that compose layers.

A layer is a ``Layer(init, apply, name)`` of two pure functions:

    init(key, input_shape, dtype=float32) -> (params, state)
    apply(params, state, x, *, key=None, train=False) -> (y, new_state)

``input_shape`` is the shape of ONE example (no batch axis); ``x`` is a batch, ``(batch, *input_shape)``.
``params`` and ``state`` are pytrees of arrays (nested dicts with readable names; ``{}`` when empty).
``key`` is needed only by layers that are random in training (Dropout); they raise without it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp

from nnjax._src.checks import suspended
from nnjax._src.compile import init_in_one_program
from nnjax._src.errors import LayerError, LayerTypeError, with_location
from nnjax._src.layer_checks import check_children, checked_apply, checked_init, is_checked
from nnjax._src.types import DType, Params, PRNGKey, Shape, State

LOCATED_ERRORS = (LayerError, LayerTypeError)


class InitFn(Protocol):
    def __call__(self, key: PRNGKey, input_shape: Shape, dtype: DType = jnp.float32) -> tuple[Params, State]: ...


class ApplyFn(Protocol):
    def __call__(
        self, params: Params, state: State, x: Any, *, key: PRNGKey | None = None, train: bool = False
    ) -> tuple[Any, State]: ...


class _LayerFields(NamedTuple):
    init: InitFn
    apply: ApplyFn
    name: str
    input_dtype: DType | None = None
    input_range: tuple[int, int] | None = None


class Layer(_LayerFields):
    """A layer: a pair of pure functions plus a readable name.

    Every nnjax layer constructor (``Dense(10)``, ``serial(...)``) returns one; any two functions that follow
    the contract make a layer that composes with the rest.

    Attributes:
      init: ``(key, input_shape, dtype=float32) -> (params, state)``; ``input_shape`` excludes the batch axis.
      apply: ``(params, state, x, *, key=None, train=False) -> (y, new_state)``; ``x: (batch, *input_shape)``.
      name: a readable description, e.g. ``"Dense(10)"``; used in errors, in ``repr`` and, in snake_case,
        for parameter names in combinators (``"Dense(10)"`` at position 0 of a ``serial`` is ``"dense_0"``).
      input_dtype: the dtype the layer expects (``None``: the params' floating dtype; ``int32`` for Embedding).
      input_range: ``(low, high)``, the integer inputs it accepts (Embedding: ``(0, vocab_size)``); ``fit``
        checks token ids against it where the data enter. ``None``: no such bound.

    ``Layer(...)`` wraps ``init`` and ``apply`` with checks of their arguments (a PRNG key, one example's shape,
    a floating dtype; ``apply`` given its state), so a mistake names the layer; the checks run while tracing.
    Called on its own (not under ``jit``), ``init`` runs as one compiled program, whatever the depth.
    A layer is not called directly (``layer(x)`` is a Keras habit): use ``layer.apply(params, state, x)``.

    Example:
      >>> def init(key, input_shape, dtype=jnp.float32):
      ...     return {"scale": jnp.ones(input_shape[-1:], dtype)}, {}
      >>> def apply(params, state, x, *, key=None, train=False):
      ...     return x * params["scale"], state
      >>> scale = nnjax.Layer(init, apply, "Scale")
      >>> params, state = nnjax.serial(nnjax.Dense(3), scale).init(jax.random.key(0), (4,))
      >>> sorted(params), scale.output_shape((3,))
      (['dense_0', 'scale_1'], (3,))
    """

    __slots__ = ()

    def __new__(
        cls, init: InitFn, apply: ApplyFn, name: str, input_dtype: DType | None = None,
        input_range: tuple[int, int] | None = None,
    ) -> Layer:
        if not is_checked(init):  # another layer's init is already checked and compiled on its own
            init = checked_init(init_in_one_program(init), name)
        apply = checked_apply(apply, name)
        return super().__new__(cls, init, apply, name, input_dtype, input_range)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            f"{self.name}: a Layer is not called directly (a Keras or PyTorch habit). Hint: "
            f"`params, state = layer.init(jax.random.key(0), input_shape)`, then "
            f"`y, state = layer.apply(params, state, x)`."
        )

    def output_shape(self, input_shape: Shape, dtype: DType = jnp.float32) -> Shape:
        """The shape of one example's output, found with ``jax.eval_shape`` (no FLOPs are spent).

        Args:
          input_shape: ONE example's shape, no batch axis (a pytree of shapes for multi-input layers).
          dtype: the parameter dtype.

        Returns:
          One example's output shape, e.g. ``(10,)`` (a pytree of shapes for multi-output layers).
        """

        def run(x):
            params, state = self.init(jax.random.key(0), input_shape, dtype)
            return self.apply(params, state, x)[0]

        with suspended():
            return spec_shape(jax.eval_shape(run, input_spec(self, input_shape, dtype)))

    def __repr__(self) -> str:
        return self.name


def is_shape(x: Any) -> bool:
    """True for a plain shape tuple such as ``(28, 28, 1)`` (a leaf of a shape pytree)."""
    return isinstance(x, tuple) and all(isinstance(d, int) for d in x)


def input_spec(layer: Layer, input_shape: Shape, dtype: DType) -> Any:
    """A batch-of-one ``ShapeDtypeStruct`` (or pytree of them) for ``input_shape``."""
    in_dtype = layer.input_dtype or dtype
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct((1, *s), in_dtype), input_shape, is_leaf=is_shape)


def _as_spec(tree: Any) -> Any:
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(jnp.shape(a), jnp.result_type(a)), tree)


def output_spec(layer: Layer, params: Params, state: State, spec: Any) -> Any:
    """The abstract output of ``layer`` for abstract input ``spec`` (eval mode, no FLOPs)."""
    fn = lambda p, s, x: layer.apply(p, s, x, train=False)[0]  # noqa: E731
    with suspended():  # eval_shape cannot evaluate the checked mode's checks
        return jax.eval_shape(fn, _as_spec(params), _as_spec(state), spec)


def spec_shape(spec: Any) -> Shape:
    """Drops the batch axis of an abstract value (or pytree of them): the per-example shape."""
    return jax.tree.map(lambda s: tuple(s.shape[1:]), spec)


WORD = re.compile(r"([A-Z][a-z]{3,}[a-z0-9]*)")  # a capitalised word of four or more letters: Dense, Norm, Attention


def kind(layer: Layer) -> str:
    """The snake_case kind of a layer, from its name, read as a reader says it.

    Words are capitalised runs of four or more letters (``Dense``, ``Norm``, ``Attention``); what lies
    between them (an acronym such as ``RMS``, ``LoRA``, ``ALiBi``, ``ViT``, or a short syllable such as
    ``Max``, ``Res``, ``Net``) stays one piece: ``"LeakyRelu(0.01)" -> "leaky_relu"``, ``"RMSNorm" ->
    "rms_norm"``, ``"LoRA" -> "lora"``, ``"ALiBiAttention" -> "alibi_attention"``, ``"GPT" -> "gpt"``,
    ``"ResNet18" -> "resnet18"``, ``"MaxPool" -> "max_pool"``. Names already in snake_case stay as they are.
    """
    base = layer.name.split("(")[0]
    pieces = [piece.strip("_") for piece in WORD.split(base)]
    return "_".join(piece for piece in pieces if piece).lower()


def child_names(layers: Sequence[Layer]) -> list[str]:
    """Parameter names of sub-layers: kind and position, e.g. ``["dense_0", "relu_1", "dense_2"]``."""
    return [f"{kind(layer)}_{i}" for i, layer in enumerate(layers)]


def serial_names(items: Sequence[Any], named_layers: Mapping[str, Any]) -> tuple[list[str], list[Layer]]:
    """``serial``'s arguments as ``(names, layers)``: a ``Layer`` is named by kind and position (``dense_2``),
    a ``(name, layer)`` pair and a keyword argument by the name given (keyword arguments come last)."""
    given: list[str | None] = []
    layers: list[Any] = []
    for item in [*items, *named_layers.items()]:
        pair = not isinstance(item, Layer) and isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)
        given.append(item[0] if pair else None)
        layers.append(item[1] if pair else item)
    _check_layers("serial", layers)
    pairs = enumerate(zip(given, layers, strict=True))
    names = [f"{kind(layer)}_{i}" if name is None else name for i, (name, layer) in pairs]
    for i, name in enumerate(given):
        if name is not None and (not name or "/" in name):
            raise ValueError(f"serial: layer {i}'s name expected a non-empty string without '/', given {name!r}.")
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in seen:
            raise ValueError(
                f"serial: layers {seen[name]} and {i} are both named {name!r}; names must be unique. "
                f"Hint: name one of them explicitly, e.g. serial(..., ({name + '_b'!r}, layer))."
            )
        seen[name] = i
    return names, layers


def _split(key: PRNGKey | None, n: int) -> list[PRNGKey | None]:
    if key is None:
        return [None] * n
    return list(jax.random.split(key, n))


def _check_layers(combinator: str, layers: Sequence[Any]) -> None:
    if not layers:
        raise ValueError(f"{combinator}: expected at least one layer, given none.")
    for i, layer in enumerate(layers):
        if not isinstance(layer, Layer):
            hint = " Did you forget to call it, e.g. `Relu()`?" if callable(layer) else ""
            raise TypeError(f"{combinator}: argument {i} expected a Layer, given {type(layer).__name__}.{hint}")


def serial(*layers: Layer | tuple[str, Layer], **named_layers: Layer) -> Layer:
    """Chains layers: the output of each is the input of the next.

    Params and state are dicts keyed by kind and position (``{"dense_0": ..., "relu_1": {}}``), or by the
    name given: a ``(name, layer)`` pair or a keyword argument keeps its name wherever it sits, so
    inserting a layer before it renames nothing you named (freezing ``"backbone/*"`` and copying weights
    by name keep working). Errors from a sub-layer are prefixed with its position, e.g.
    ``serial[2] > Dense(10): ...``. ``init`` splits ``key`` into one key per layer and passes each layer
    the output shape of the one before; ``apply`` splits its ``key`` (when given) the same way.

    Args:
      *layers: one or more layers, applied in order; each a ``Layer`` (named ``kind_position``, e.g.
        ``dense_0``; see ``kind``) or a ``(name, layer)`` pair.
      **named_layers: more layers, applied after ``layers`` in the order given, each under its keyword.

    Returns:
      A ``Layer`` named ``"serial"`` whose ``apply`` maps ``x: (batch, *input_shape)`` to the last layer's
      output; its ``input_dtype`` and ``input_range`` are the first layer's.

    Raises:
      ValueError: no layers given, two layers have one name, or a given name is empty or holds ``/``.
      TypeError: an argument is not a ``Layer`` (e.g. ``Relu`` instead of ``Relu()``).
      LayerError, LayerTypeError: (at init or apply) raised by a sub-layer, prefixed with ``serial[i]``.

    Example:
      >>> named = nnjax.serial(("backbone", nnjax.Dense(8)), nnjax.Relu(), head=nnjax.Dense(1))
      >>> list(named.init(jax.random.key(0), (4,))[0])
      ['backbone', 'relu_1', 'head']
      >>> model = nnjax.serial(nnjax.Dense(8), nnjax.Relu(), nnjax.Dense(1))
      >>> params, state = model.init(jax.random.key(0), (4,))
      >>> sorted(params), state
      (['dense_0', 'dense_2', 'relu_1'], {'dense_0': {}, 'relu_1': {}, 'dense_2': {}})
      >>> model.apply(params, state, jnp.ones((5, 4)))[0].shape
      (5, 1)
      >>> model.apply(params, state, jnp.ones((5, 3)))
      Traceback (most recent call last):
      ...
      nnjax._src.errors.LayerError: serial[0] > Dense(8): argument `x` expected shape (batch, ..., 4), given (5, 3)...
    """
    names, layers = serial_names(layers, named_layers)

    def init(key, input_shape, dtype=jnp.float32):
        params, state = {}, {}
        spec = input_spec(layers[0], input_shape, dtype)
        for i, (name, layer, k) in enumerate(zip(names, layers, _split(key, len(layers)))):
            try:
                params[name], state[name] = layer.init(k, spec_shape(spec), dtype)
                if i + 1 < len(layers):
                    spec = output_spec(layer, params[name], state[name], spec)
            except LOCATED_ERRORS as error:
                raise with_location(error, f"serial[{i}]") from None
        return params, state

    def apply(params, state, x, *, key=None, train=False):
        check_children("serial", names, params, state)
        new_state = {}
        for i, (name, layer, k) in enumerate(zip(names, layers, _split(key, len(layers)))):
            try:
                x, new_state[name] = layer.apply(params[name], state[name], x, key=k, train=train)
            except LOCATED_ERRORS as error:
                raise with_location(error, f"serial[{i}]") from None
        return x, new_state

    return Layer(init, apply, "serial", layers[0].input_dtype, layers[0].input_range)


def parallel(*layers: Layer) -> Layer:
    """Applies layer ``i`` to input ``i`` of a tuple; returns the tuple of outputs.

    ``input_shape`` is a tuple of per-input shapes; ``x`` a tuple of batches. Use with ``fanout``
    and ``concatenate``/``add`` to build branches. Params and state are dicts keyed by kind and position,
    as in ``serial``.

    Args:
      *layers: one or more layers, one per input.

    Returns:
      A ``Layer`` whose ``apply`` maps a tuple ``(x_0, ..., x_n)`` of batches to the tuple of
      ``layers[i]``'s outputs on ``x_i``.

    Raises:
      ValueError: no layers given.
      TypeError: an argument is not a ``Layer``.
      LayerError: (at init or apply) ``input_shape`` or ``x`` is not a tuple of one entry per layer; errors of a
        sub-layer (LayerError, LayerTypeError) come prefixed with ``parallel[i]``.

    Example:
      >>> branches = nnjax.parallel(nnjax.Dense(2), nnjax.Dense(3))
      >>> params, state = branches.init(jax.random.key(0), ((4,), (5,)))
      >>> ys, _ = branches.apply(params, state, (jnp.ones((8, 4)), jnp.ones((8, 5))))
      >>> [y.shape for y in ys]
      [(8, 2), (8, 3)]
    """
    _check_layers("parallel", layers)
    names = child_names(layers)

    def check(inputs, what):
        if not isinstance(inputs, (tuple, list)) or len(inputs) != len(layers):
            given = f"{type(inputs).__name__} of {len(inputs)}" if isinstance(inputs, (tuple, list)) else type(inputs).__name__
            raise LayerError(f"parallel: argument `{what}` expected a tuple of {len(layers)} inputs, given {given}.")

    def init(key, input_shape, dtype=jnp.float32):
        check(input_shape, "input_shape")
        params, state = {}, {}
        for i, (name, layer, k, shape) in enumerate(zip(names, layers, _split(key, len(layers)), input_shape)):
            try:
                params[name], state[name] = layer.init(k, shape, dtype)
            except LOCATED_ERRORS as error:
                raise with_location(error, f"parallel[{i}]") from None
        return params, state

    def apply(params, state, x, *, key=None, train=False):
        check(x, "x")
        check_children("parallel", names, params, state)
        outputs, new_state = [], {}
        for i, (name, layer, k, xi) in enumerate(zip(names, layers, _split(key, len(layers)), x)):
            try:
                y, new_state[name] = layer.apply(params[name], state[name], xi, key=k, train=train)
            except LOCATED_ERRORS as error:
                raise with_location(error, f"parallel[{i}]") from None
            outputs.append(y)
        return tuple(outputs), new_state

    return Layer(init, apply, "parallel")


def stateless(fn: Callable[[Any], Any], name: str, input_dtype: DType | None = None) -> Layer:
    """Wraps a parameter-free, state-free function ``fn(x) -> y`` of a batch as a layer.

    Args:
      fn: a function of a whole batch, ``x: (batch, ...) -> y: (batch, ...)``; it must be traceable by
        ``jax.eval_shape`` (``init`` of a ``serial`` runs it abstractly to find output shapes).
      name: the layer's name; its snake_case form names it in combinators (``"Double"`` -> ``"double_0"``).
      input_dtype: the dtype the layer expects (``None``: the params' floating dtype).

    Returns:
      A ``Layer`` with params and state ``{}`` whose ``apply`` returns ``fn(x)``.

    Example:
      >>> double = nnjax.stateless(lambda x: 2.0 * x, "Double")
      >>> double.init(jax.random.key(0), (3,))
      ({}, {})
      >>> double.apply({}, {}, jnp.ones((1, 3)))[0].tolist()
      [[2.0, 2.0, 2.0]]
    """

    def init(key, input_shape, dtype=jnp.float32):
        return {}, {}

    def apply(params, state, x, *, key=None, train=False):
        return fn(x), state

    return Layer(init, apply, name, input_dtype)


def fanout(n: int) -> Layer:
    """Copies its input ``n`` times: ``x -> (x, ..., x)``, the fan-out before ``parallel`` branches.

    Args:
      n: the number of copies, a positive int.

    Returns:
      A parameter-free ``Layer`` whose ``apply`` maps ``x`` to the tuple of ``n`` references to ``x``.

    Raises:
      ValueError: ``n`` is not a positive int.

    Example:
      >>> model = nnjax.serial(nnjax.fanout(2), nnjax.parallel(nnjax.Dense(3), nnjax.Dense(5)), nnjax.concatenate())
      >>> params, state = model.init(jax.random.key(0), (4,))
      >>> model.apply(params, state, jnp.ones((2, 4)))[0].shape
      (2, 8)
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"fanout: argument `n` expected a positive int, given {n!r}.")
    return stateless(lambda x: (x,) * n, f"Fanout({n})")


def concatenate(axis: int = -1) -> Layer:
    """Joins a tuple of batches along ``axis`` (default: features), a fan-in after ``parallel``.

    Args:
      axis: the axis of the batched arrays to join along (axis 0 is the batch axis; default -1, the
        features).

    Returns:
      A parameter-free ``Layer`` whose ``apply`` maps a tuple of arrays equal in every axis but ``axis``, e.g.
      ``((batch, f_0), (batch, f_1))``, to ``(batch, f_0 + f_1)``.

    Raises:
      LayerError: (at apply) ``x`` is not a tuple or list, or its arrays differ in rank or in an axis other
        than ``axis``.

    Example:
      >>> join = nnjax.concatenate()
      >>> join.apply({}, {}, (jnp.ones((2, 3)), jnp.zeros((2, 5))))[0].shape
      (2, 8)
    """

    def fn(xs):
        if not isinstance(xs, (tuple, list)):
            raise LayerError(f"Concatenate(axis={axis}): argument `x` expected a tuple of arrays, given {type(xs).__name__}.")
        shapes = [tuple(jnp.shape(x)) for x in xs]
        ranks = {len(s) for s in shapes}
        ax = axis % max(ranks) if ranks else axis
        if len(ranks) != 1 or len({s[:ax] + s[ax + 1 :] for s in shapes}) != 1:
            raise LayerError(
                f"Concatenate(axis={axis}): argument `x` expected arrays equal in every axis but {axis}, given shapes {shapes}."
            )
        return jnp.concatenate(xs, axis=axis)

    return stateless(fn, f"Concatenate(axis={axis})")


def add() -> Layer:
    """Sums a tuple of batches of the same shape (a fan-in after ``parallel``).

    Returns:
      A parameter-free ``Layer`` whose ``apply`` maps a tuple ``(x_0, ..., x_n)`` of arrays of one shape to
      ``x_0 + ... + x_n``, of that shape.

    Raises:
      LayerError: (at apply) ``x`` is not a tuple or list of arrays, or its arrays differ in shape.

    Example:
      >>> total = nnjax.add()
      >>> total.apply({}, {}, (jnp.ones((2, 3)), jnp.full((2, 3), 2.0)))[0].tolist()
      [[3.0, 3.0, 3.0], [3.0, 3.0, 3.0]]
    """

    def fn(xs):
        if not isinstance(xs, (tuple, list)):  # iterating one array would sum over its batch axis
            raise LayerError(f"Add: argument `x` expected a tuple of arrays, given {type(xs).__name__}.")
        shapes = [tuple(jnp.shape(x)) for x in xs]
        if len(set(shapes)) != 1:
            raise LayerError(f"Add: argument `x` expected arrays of one shape, given shapes {shapes}.")
        return sum(xs[1:], xs[0])

    return stateless(fn, "Add")


def residual(*layers: Layer) -> Layer:
    """A skip connection: ``x -> x + serial(*layers)(x)``; the body must keep the shape of ``x``.

    Params and state are those of the body, under ``"body"``.

    Args:
      *layers: the body, one or more layers chained as in ``serial``.

    Returns:
      A ``Layer`` named ``"Residual"`` whose ``apply`` maps ``x: (batch, *input_shape)`` to ``x + body(x)``, of
      the same shape.

    Raises:
      ValueError: no layers given.
      TypeError: an argument is not a ``Layer``.
      LayerError: (at init) the body's output shape differs from ``input_shape``; errors of the body's layers
        come prefixed with their position (``serial[i]``, and ``residual`` at apply).

    Example:
      >>> block = nnjax.residual(nnjax.Dense(8), nnjax.Relu(), nnjax.Dense(4))
      >>> params, state = block.init(jax.random.key(0), (4,))
      >>> sorted(params["body"])
      ['dense_0', 'dense_2', 'relu_1']
      >>> block.apply(params, state, jnp.ones((2, 4)))[0].shape
      (2, 4)
    """
    body = serial(*layers)

    def init(key, input_shape, dtype=jnp.float32):
        params, state = body.init(key, input_shape, dtype)
        out = spec_shape(output_spec(body, params, state, input_spec(body, input_shape, dtype)))
        if out != tuple(input_shape):
            raise LayerError(
                f"Residual: the body must keep the input shape to be added to it; input_shape {tuple(input_shape)}, "
                f"body output {out}. Hint: make the last layer of the body output {tuple(input_shape)[-1:]} features."
            )
        return {"body": params}, {"body": state}

    def apply(params, state, x, *, key=None, train=False):
        check_children("Residual", ["body"], params, state)
        try:
            y, new_state = body.apply(params["body"], state["body"], x, key=key, train=train)
        except LOCATED_ERRORS as error:
            raise with_location(error, "residual") from None
        return x + y, {"body": new_state}

    return Layer(init, apply, "Residual", body.input_dtype, body.input_range)


class Named(Layer):
    """A ``Layer`` of named parts (what ``named`` returns): each part is an attribute, ``model.encoder``.

    Attributes:
      parts: the mapping ``{name: Layer}`` of all parts, in the order given to ``named``.
      init, apply, name, input_dtype: as in ``Layer``.

    Example:
      >>> model = nnjax.named(encoder=nnjax.Dense(2), decoder=nnjax.Dense(4))
      >>> isinstance(model, nnjax.Named), model.encoder.name, list(model.parts)
      (True, 'Dense(2)', ['encoder', 'decoder'])
    """

    def __getattr__(self, name: str) -> Layer:  # called only when normal lookup fails: a part's name
        parts = self.__dict__.get("parts", {})
        if name in parts:
            return parts[name]
        raise AttributeError(f"{self.name}: no part named {name!r}; the parts are {sorted(parts)}.")


def named(**parts: Layer) -> Named:
    """A model of named parts whose params and state are ONE pytree, ``{"encoder": ..., "decoder": ...}``.

    ``init(key, input_shapes)`` takes one input shape per part, ``{"encoder": (64,), "decoder": (8,)}``
    (each part its own key, split in the order given); ``apply(params, state, xs)`` applies part ``name``
    to ``xs[name]`` and returns the dict of outputs. Inside a general objective (``nnjax.objective``), run
    the parts one by one: ``parts.encoder.apply(params["encoder"], state["encoder"], x, ...)``. Being one
    pytree, the params checkpoint, shard, print (``summary``) and stack (``fit_many``) as any model's.

    Args:
      **parts: the parts, as ``name=layer``.

    Returns:
      A ``Named`` layer (each part also an attribute) whose ``apply`` maps ``{name: (batch, ...)}`` to
      ``{name: part's output}``; params and state are ``{name: part's}``.

    Raises:
      ValueError: no parts given.
      TypeError: a part is not a ``Layer``.
      LayerError: (at init or apply) ``input_shape`` or ``x`` is not a dict with exactly one entry per part;
        errors of a part (LayerError, LayerTypeError) come prefixed with ``named['name']``.

    Example:
      >>> encoder = nnjax.serial(nnjax.Dense(8), nnjax.Relu(), nnjax.Dense(2 * 2))  # mean, log-variance
      >>> decoder = nnjax.serial(nnjax.Dense(8), nnjax.Relu(), nnjax.Dense(4))
      >>> vae = nnjax.named(encoder=encoder, decoder=decoder)
      >>> params, state = vae.init(jax.random.key(0), {"encoder": (4,), "decoder": (2,)})
      >>> sorted(params), vae.decoder.name
      (['decoder', 'encoder'], 'serial')
      >>> vae.decoder.apply(params["decoder"], state["decoder"], jnp.ones((3, 2)))[0].shape
      (3, 4)
    """
    _check_layers("named", list(parts.values()))
    names = list(parts)

    def check(tree, what):
        if not isinstance(tree, dict) or set(tree) != set(names):
            given = sorted(tree) if isinstance(tree, dict) else type(tree).__name__
            raise LayerError(f"named: argument `{what}` expected a dict with one entry per part {names}, given {given}.")

    def init(key, input_shape, dtype=jnp.float32):
        check(input_shape, "input_shape")
        params, state = {}, {}
        for name, k in zip(names, _split(key, len(names)), strict=True):
            try:
                params[name], state[name] = parts[name].init(k, input_shape[name], dtype)
            except LOCATED_ERRORS as error:
                raise with_location(error, f"named[{name!r}]") from None
        return params, state

    def apply(params, state, x, *, key=None, train=False):
        check(x, "x")
        check_children("named", names, params, state)
        outputs, new_state = {}, {}
        for name, k in zip(names, _split(key, len(names)), strict=True):
            try:
                outputs[name], new_state[name] = parts[name].apply(params[name], state[name], x[name], key=k, train=train)
            except LOCATED_ERRORS as error:
                raise with_location(error, f"named[{name!r}]") from None
        return outputs, new_state

    dtypes = {layer.input_dtype for layer in parts.values()}
    layer = Named(init, apply, f"named({', '.join(names)})", dtypes.pop() if len(dtypes) == 1 else None)
    layer.__dict__["parts"] = dict(parts)
    return layer
