"""Every public name is documented to one standard, and every docstring example runs.

The standard (Google style, rendered by Sphinx's napoleon): a one-line summary; ``Args:`` with shapes when
the callable takes arguments; ``Returns:`` for functions and layer constructors; ``Raises:`` when the
function's own source raises; an ``Example:`` whose ``>>>`` lines run here as doctests. Examples see
``jax``, ``jnp``, ``np``, ``optax`` and ``nnjax`` already imported, with ``jax_enable_x64`` off and NumPy
printing 4 digits after the point. Names re-exported unchanged from JAX keep JAX's docstrings.
"""

from __future__ import annotations

import doctest
import importlib
import inspect
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from public_api import DOCUMENTED, PUBLIC_MODULES

import nnjax


def takes_arguments(obj) -> bool:
    try:
        params = inspect.signature(obj).parameters
    except (TypeError, ValueError):
        return False
    return any(p.name not in ("self", "cls") for p in params.values())


def own_source(obj) -> str:
    try:
        return inspect.getsource(obj)
    except (OSError, TypeError):
        return ""


def missing_sections(obj) -> list[str]:
    doc = inspect.getdoc(obj) or ""
    if not doc.strip():
        return ["docstring"]
    if isinstance(obj, type) and issubclass(obj, BaseException):
        return []
    missing = []
    if not isinstance(obj, type):
        if takes_arguments(obj) and "Args:" not in doc:
            missing.append("Args:")
        if "Returns:" not in doc and "Yields:" not in doc:
            missing.append("Returns:")
        if re.search(r"^\s+raise \w", own_source(obj), re.M) and "Raises:" not in doc:
            missing.append("Raises:")
    if not re.search(r"^Examples?:\s*$", doc, re.M) or ">>>" not in doc:
        missing.append("Example:")
    return missing


@pytest.mark.parametrize("name", sorted(DOCUMENTED))
def test_public_name_has_a_complete_docstring(name):
    missing = missing_sections(DOCUMENTED[name])
    assert not missing, f"{name}: its docstring lacks {', '.join(missing)}"


def doctests() -> dict[str, doctest.DocTest]:
    finder = doctest.DocTestFinder(exclude_empty=True)
    tests = {}
    for module_name in ["nnjax", *PUBLIC_MODULES[1:]]:
        module = importlib.import_module(module_name)
        for name in module.__all__:
            obj = getattr(module, name)
            if inspect.ismodule(obj) or f"{module_name}.{name}" not in DOCUMENTED:
                continue
            for test in finder.find(obj, f"{module_name}.{name}", globs={}):
                if test.examples and test.name not in tests:
                    tests[test.name] = test
    tests["nnjax"] = finder.find(nnjax, "nnjax", globs={})[0]  # the package docstring's example
    return tests


DOCTESTS = doctests()


@pytest.mark.parametrize("name", sorted(DOCTESTS))
def test_docstring_example_runs(name):
    test = DOCTESTS[name]
    test.globs = {"jax": jax, "jnp": jnp, "np": np, "optax": optax, "nnjax": nnjax}
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    failures: list[str] = []
    with np.printoptions(precision=4, suppress=True):
        result = runner.run(test, out=failures.append, clear_globs=True)
    assert result.failed == 0, "".join(failures)
