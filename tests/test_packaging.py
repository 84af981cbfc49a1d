"""The package as users install it: one version, typed, requirements that keep the installed jax, and a wheel
that installs into a fresh virtual environment and runs.

The wheel test builds the sdist and the wheel with ``python -m build`` and installs the wheel, with its
dependencies from the package index, into a fresh venv for each Python from 3.10 to 3.13 found on this
machine; it is slow (a minute or more per Python) and runs in CI's slow pass.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import pathlib
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

import nnjax

ROOT = pathlib.Path(__file__).resolve().parents[1]
PYPROJECT = (ROOT / "pyproject.toml").read_text()
METADATA = importlib.metadata.metadata("nnjax")  # what pip sees of the installed checkout
PYTHONS = ("3.10", "3.11", "3.12", "3.13")


def requirements(extra: str | None = None) -> list[Requirement]:
    parsed = [Requirement(r) for r in METADATA.get_all("Requires-Dist")]
    if extra is None:
        return [r for r in parsed if r.marker is None]
    return [r for r in parsed if r.marker is not None and r.marker.evaluate({"extra": extra})]


def test_the_version_has_one_source():
    assert re.search(r'^dynamic = \["version"\]$', PYPROJECT, re.M) and not re.search(r'^version = "', PYPROJECT, re.M)
    assert 'version = { attr = "nnjax.__version__" }' in PYPROJECT
    assert METADATA["Version"] == importlib.metadata.version("nnjax") == nnjax.__version__
    assert f"## [{nnjax.__version__}]" in (ROOT / "CHANGELOG.md").read_text()


def test_py_typed_ships_and_python_versions_are_declared():
    assert (ROOT / "nnjax" / "py.typed").exists()
    assert re.search(r'^nnjax = \[.*"py\.typed".*\]$', PYPROJECT, re.M)
    classifiers = METADATA.get_all("Classifier")
    declared = [c.rsplit(" ", 1)[-1] for c in classifiers if c.startswith("Programming Language :: Python :: 3.")]
    assert declared == list(PYTHONS)
    assert METADATA["Requires-Python"] == ">=3.10"


def test_requirements_cannot_replace_an_installed_jax():
    """No jaxlib (a CPU-only jaxlib must never go in over a CUDA build) and lower bounds only: whatever jax
    Colab has, from the lower bound on, satisfies nnjax, so pip keeps it."""
    names = {r.name for r in requirements()}
    assert "jaxlib" not in names and "jax" in names
    for requirement in map(Requirement, METADATA.get_all("Requires-Dist")):  # extras and markers included
        for spec in requirement.specifier:
            assert spec.operator == ">=", f"{requirement}: only lower bounds may be declared, found {spec}"
    jax_bound = next(Version(s.version) for r in requirements() if r.name == "jax" for s in r.specifier)
    assert jax_bound <= Version(importlib.metadata.version("jax"))
    for extra in METADATA.get_all("Provides-Extra"):
        assert "jaxlib" not in {r.name for r in requirements(extra)}, f"extra {extra} names jaxlib"


def test_the_notebooks_install_cell_keeps_colabs_jax():
    """The Colab cell installs nnjax alone, without -U: pip then keeps Colab's jax (the test above)."""
    spec = importlib.util.spec_from_file_location("notebooks_build", ROOT / "notebooks" / "build.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    assert Requirement(build.INSTALL).name == "nnjax"
    command = re.search(r"subprocess\.run\((\[.*?\]), check=True\)", build.SETUP).group(1)
    assert '"pip", "install"' in command and "package" in command
    assert f'package = "{build.INSTALL}"' in build.SETUP
    assert not {"-U", "--upgrade", "--force-reinstall", "jax", "jaxlib"} & set(re.findall(r'"([^"]+)"', command))


def find_python(version: str) -> str | None:
    """An interpreter for ``version`` on this machine (PATH, or pyenv's versions), or None."""
    candidates = [shutil.which(f"python{version}")]
    pyenv = pathlib.Path.home() / ".pyenv" / "versions"
    candidates += sorted(str(p / "bin" / "python") for p in pyenv.glob(f"{version}.*"))
    for candidate in filter(None, candidates):
        probe = subprocess.run([candidate, "-c", "import sys, venv; print(sys.version_info[:2])"], capture_output=True)
        if probe.returncode == 0 and probe.stdout.decode().strip() == str(tuple(map(int, version.split(".")))):
            return candidate
    return None


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> pathlib.Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)], check=True, capture_output=True)
    return out


def run(args: list[str], **kwargs) -> str:
    done = subprocess.run(args, capture_output=True, text=True, **kwargs)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.mark.slow
def test_sdist_and_wheel_hold_the_package(dist):
    (wheel,) = dist.glob("*.whl")
    (sdist,) = dist.glob("*.tar.gz")
    assert wheel.name == f"nnjax-{nnjax.__version__}-py3-none-any.whl"
    names = zipfile.ZipFile(wheel).namelist()
    assert {"nnjax/py.typed", "nnjax/data_files/digits.npz", "nnjax/__init__.py", "nnjax/_src/core.py"} <= set(names)
    assert not any(name.startswith(("tests/", "examples/", "docs/")) for name in names)
    sdist_names = {name.split("/", 1)[1] for name in tarfile.open(sdist).getnames() if "/" in name}
    assert {"pyproject.toml", "README.md", "nnjax/py.typed", "nnjax/data_files/digits.npz"} <= sdist_names


@pytest.mark.slow
@pytest.mark.parametrize("version", PYTHONS)
def test_wheel_installs_beside_an_installed_jax_and_runs_the_neuron_example(version, dist, tmp_path):
    python = find_python(version)
    if python is None:
        pytest.skip(f"no Python {version} on this machine")
    venv = tmp_path / "venv"
    run([python, "-m", "venv", str(venv)])
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    run([*pip, "jax"])  # the environment a user (or Colab) already has
    freeze = [str(venv / "bin" / "python"), "-m", "pip", "list", "--format", "json"]
    before = {p["name"]: p["version"] for p in json.loads(run(freeze)) if p["name"] in ("jax", "jaxlib")}
    (wheel,) = dist.glob("*.whl")
    run([*pip, str(wheel)])
    after = {p["name"]: p["version"] for p in json.loads(run(freeze)) if p["name"] in ("jax", "jaxlib")}
    assert after == before, f"installing nnjax changed jax: {before} -> {after}"
    shutil.copy(ROOT / "examples" / "neuron.py", tmp_path / "neuron.py")  # run away from the checkout
    out = run([str(venv / "bin" / "python"), "neuron.py"], cwd=tmp_path)
    version_line = run(
        [str(venv / "bin" / "python"), "-c", "import nnjax; print(nnjax.__file__, nnjax.__version__)"], cwd=tmp_path
    )
    assert str(venv) in version_line and nnjax.__version__ in version_line
    assert "perceptron on AND: accuracy 1.00" in out and "two-layer MLP on XOR: accuracy 1.00" in out, out
