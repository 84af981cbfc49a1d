"""Test helper: what a layer's ``init`` builds, read from an abstract trace (no program compiled)."""

from __future__ import annotations

import jax

import nnjax


def param_names(layer: nnjax.Layer, input_shape) -> list[str]:
    """The names of ``layer.init``'s top-level parameters, in init's order, from tracing it (read inside the
    trace: ``jax.eval_shape``'s own result would have its dict keys sorted)."""
    names = []
    jax.eval_shape(lambda key: names.extend(layer.init(key, input_shape)[0]), jax.random.key(0))
    return names
