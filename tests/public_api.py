"""The public API as the docs and docstring tests see it: every public module and the names in its ``__all__``."""

from __future__ import annotations

import importlib
import inspect

import nnjax

# The package and every submodule it exports (``nnjax.losses``, ``nnjax.models``, ...).
PUBLIC_MODULES = ["nnjax", *sorted(f"nnjax.{name}" for name in nnjax.__all__ if inspect.ismodule(getattr(nnjax, name)))]


def public_objects() -> dict[str, object]:
    """``{"nnjax.fit": fit, ...}``: every name in a public module's ``__all__`` that is not a module."""
    found = {}
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        for name in module.__all__:
            obj = getattr(module, name)
            if not inspect.ismodule(obj):
                found[f"{module_name}.{name}"] = obj
    return found


def defined_here(obj) -> bool:
    """False for names nnjax re-exports unchanged from JAX (``nnjax.activations.gelu`` is ``jax.nn.gelu``)."""
    return (getattr(obj, "__module__", None) or "").startswith("nnjax")


OBJECTS = public_objects()
# Constants are documented in the reference only; JAX's own functions keep JAX's docstrings.
DOCUMENTED = {name: obj for name, obj in OBJECTS.items() if callable(obj) and defined_here(obj)}
