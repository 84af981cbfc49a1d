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
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp

from nnjax._src.errors import LayerError, LayerTypeError, with_location
from nnjax._src.types import Array, DType, Params, PRNGKey, Shape, State

LOCATED_ERRORS = (LayerError, LayerTypeError)


class InitFn(Protocol):
    def __call__(self, key: PRNGKey, input_shape: Shape, dtype: DType = jnp.float32) -> tuple[Params, State]: ...


class ApplyFn(Protocol):
    def __call__(
        self, params: Params, state: State, x: Any, *, key: PRNGKey | None = None, train: bool = False
    ) -> tuple[Any, State]: ...


class Layer(NamedTuple):
    """A layer: a pair of pure functions plus a readable name.

    Attributes:
      init: ``(key, input_shape, dtype=float32) -> (params, state)``; ``input_shape`` excludes the batch axis.
      apply: ``(params, state, x, *, key=None, train=False) -> (y, new_state)``; ``x`` has a batch axis.
      name: a readable description, e.g. ``"Dense(10)"``; used in errors and parameter names.
      input_dtype: the dtype the layer expects (``None``: the params' floating dtype; ``int32`` for Embedding).
    """

    init: InitFn
    apply: ApplyFn
    name: str
    input_dtype: DType | None = None

    def output_shape(self, input_shape: Shape, dtype: DType = jnp.float32) -> Shape:
        """The shape of one example's output, found with ``jax.eval_shape`` (no FLOPs are spent)."""

        def run(x):
            params, state = self.init(jax.random.key(0), input_shape, dtype)
            return self.apply(params, state, x)[0]

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
    return jax.eval_shape(fn, _as_spec(params), _as_spec(state), spec)


def spec_shape(spec: Any) -> Shape:
    """Drops the batch axis of an abstract value (or pytree of them): the per-example shape."""
    return jax.tree.map(lambda s: tuple(s.shape[1:]), spec)


def kind(layer: Layer) -> str:
    """The snake_case kind of a layer, from its name: ``"LeakyRelu(0.01)" -> "leaky_relu"``, ``"RMSNorm" -> "rms_norm"``."""
    base = layer.name.split("(")[0]
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", base).lower()


def child_names(layers: Sequence[Layer]) -> list[str]:
    """Parameter names of sub-layers: kind and position, e.g. ``["dense_0", "relu_1", "dense_2"]``."""
    return [f"{kind(layer)}_{i}" for i, layer in enumerate(layers)]


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


def serial(*layers: Layer) -> Layer:
    """Chains layers: the output of each is the input of the next.

    Params and state are dicts keyed by kind and position (``{"dense_0": ..., "relu_1": {}}``); errors
    from a sub-layer are prefixed with its position, e.g. ``serial[2] > Dense(10): ...``.

    Example:
      >>> model = serial(Dense(8), Relu(), Dense(1))
      >>> params, state = model.init(jax.random.key(0), (4,))
    """
    _check_layers("serial", layers)
    names = child_names(layers)

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
        new_state = {}
        for i, (name, layer, k) in enumerate(zip(names, layers, _split(key, len(layers)))):
            try:
                x, new_state[name] = layer.apply(params[name], state[name], x, key=k, train=train)
            except LOCATED_ERRORS as error:
                raise with_location(error, f"serial[{i}]") from None
        return x, new_state

    return Layer(init, apply, "serial", layers[0].input_dtype)


def parallel(*layers: Layer) -> Layer:
    """Applies layer ``i`` to input ``i`` of a tuple; returns the tuple of outputs.

    ``input_shape`` is a tuple of per-input shapes; ``x`` a tuple of batches. Use with ``fanout``
    and ``concatenate``/``add`` to build branches.
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
    """Wraps a parameter-free, state-free function ``fn(x) -> y`` of a batch as a layer."""

    def init(key, input_shape, dtype=jnp.float32):
        return {}, {}

    def apply(params, state, x, *, key=None, train=False):
        return fn(x), state

    return Layer(init, apply, name, input_dtype)


def fanout(n: int) -> Layer:
    """Copies its input ``n`` times: ``x -> (x, ..., x)``."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"fanout: argument `n` expected a positive int, given {n!r}.")
    return stateless(lambda x: (x,) * n, f"Fanout({n})")


def concatenate(axis: int = -1) -> Layer:
    """Joins a tuple of batches along ``axis`` (default: features)."""

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
    """Sums a tuple of batches of the same shape (a fan-in)."""

    def fn(xs):
        shapes = [tuple(jnp.shape(x)) for x in xs]
        if len(set(shapes)) != 1:
            raise LayerError(f"Add: argument `x` expected arrays of one shape, given shapes {shapes}.")
        return sum(xs[1:], xs[0])

    return stateless(fn, "Add")


def residual(*layers: Layer) -> Layer:
    """A skip connection: ``x -> x + serial(*layers)(x)``; the body must keep the shape of ``x``.

    Params and state are those of the body, under ``"body"``.
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
        try:
            y, new_state = body.apply(params["body"], state["body"], x, key=key, train=train)
        except LOCATED_ERRORS as error:
            raise with_location(error, "residual") from None
        return x + y, {"body": new_state}

    return Layer(init, apply, "Residual", body.input_dtype)


class Named(Layer):
    """A ``Layer`` of named parts (``named``): each part is an attribute, ``parts.encoder``, and the
    mapping of all is ``parts.parts``."""

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

    Example:
      >>> vae = named(encoder=serial(Dense(32), Relu(), Dense(2 * 8)), decoder=serial(Dense(32), Relu(), Dense(64)))
      >>> params, state = vae.init(jax.random.key(0), {"encoder": (64,), "decoder": (8,)})
      >>> sorted(params), vae.decoder.name
      (['decoder', 'encoder'], 'serial')
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
