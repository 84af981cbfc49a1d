"""The notebooks: built from notebooks/build.py with outputs stripped, and each executes cleanly.

Execution runs every notebook top to bottom in a fresh python3 kernel (this interpreter's ipykernel) with
``NNJAX_SMOKE=1``, the small sizes CI uses, and checks that no cell raised and that every plotting cell
displayed a PNG.
"""

import importlib.util
import os
import re
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")

ROOT = Path(__file__).resolve().parents[1]
# tqdm on stderr: a bar state ("16/48 [00:00<...]"), or its warning that ipywidgets is missing
TQDM = re.compile(r"\d+/\d+ \[|IProgress not found|from \.autonotebook import")
FOLDER = ROOT / "notebooks"
NAMES = sorted(p.name for p in FOLDER.glob("*.ipynb"))


def load_build():
    spec = importlib.util.spec_from_file_location("notebooks_build", FOLDER / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_notebooks_match_build_py_and_are_stripped():
    built = load_build().build()
    assert sorted(built) == NAMES and len(NAMES) >= 2
    for name, text in built.items():
        assert (FOLDER / name).read_text() == text, f"{name} is out of date: run python notebooks/build.py"
        nb = nbformat.reads(text, as_version=4)
        stem = name.removesuffix(".ipynb")
        assert f"https://colab.research.google.com/github/nnjax/nnjax/blob/main/notebooks/{name}" in nb.cells[0].source
        assert 'if "google.colab" in sys.modules' in nb.cells[1].source and "NNJAX_SMOKE" in nb.cells[1].source
        assert "jax.devices()" in nb.cells[2].source
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(c.outputs == [] and c.execution_count is None for c in code), f"{stem}: outputs not stripped"


def code_cells(name: str) -> list:
    return [c for c in nbformat.read(FOLDER / name, as_version=4).cells if c.cell_type == "code"]


@pytest.mark.parametrize("name", NAMES)
def test_code_lines_fit_the_column(name):
    wide = [line for cell in code_cells(name) for line in cell.source.splitlines() if len(line) > 88]
    assert not wide, f"{name}: code lines wider than 88 characters (the site's column): {wide}"


@pytest.mark.parametrize("name", NAMES)
def test_the_install_cell_runs_but_the_site_hides_it(name):
    install = code_cells(name)[0]
    assert "pip" in install.source and install.metadata.get("tags") == ["remove-cell"]
    assert all("remove-cell" not in c.metadata.get("tags", []) for c in code_cells(name)[1:])


@pytest.mark.parametrize("name", NAMES)
def test_outputs_show_once_and_long_logs_scroll(name):
    """A cell ending in ``nn.summary(...)`` would print the table and show it again as a raw string; a
    training cell with a progress bar prints one line per epoch, so its output scrolls on the site."""
    for cell in code_cells(name):
        last = cell.source.strip().splitlines()[-1]
        assert not last.startswith("nn.summary("), f"{name}: assign nn.summary's table: {last!r}"
        trains = "nn.fit(" in cell.source or "nn.fit_many(" in cell.source
        if trains and "progress=False" not in cell.source:
            tags = cell.metadata.get("tags", [])
            assert "scroll-output" in tags, f"{name}: tag {cell.source.splitlines()[0]!r} scroll-output"
        if "scroll-output" in cell.metadata.get("tags", []):  # a figure at the end of a scrolled log is hidden
            assert not plotting(cell), f"{name}: plot in a cell of its own after {cell.source.splitlines()[0]!r}"


def plotting(cell) -> bool:
    last = cell.source.strip().splitlines()[-1]
    return last.startswith(("nn.plots.", "plt.show()")) or "display(nn.plots." in cell.source


@pytest.mark.slow  # about 40 s to several minutes per notebook on 2 shared CPU cores
@pytest.mark.parametrize("name", NAMES)
def test_notebook_executes(name, tmp_path, monkeypatch):
    monkeypatch.setenv("NNJAX_SMOKE", "1")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    nb = nbformat.read(FOLDER / name, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError, with the cell and traceback, if a cell fails
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(o.output_type != "error" for c in code for o in c.outputs)
    for cell in code:
        if plotting(cell):
            kinds = [k for o in cell.outputs for k in o.get("data", {})]
            assert "image/png" in kinds, f"{name}: the cell {cell.source.splitlines()[0]!r} displayed no figure"
    text = "".join(o.get("text", "") for c in code for o in c.outputs)
    assert "devices:" in text
    # The docs site leaves stderr out (conf.py: tqdm's text bar and its IProgress warning); anything else
    # there would be hidden from readers, so it fails here.
    stderr = "".join(o.get("text", "") for c in code for o in c.outputs if o.get("name") == "stderr")
    hidden = [line for line in re.split(r"[\r\n]", stderr) if line.strip() and not TQDM.search(line)]
    assert not hidden, f"{name}: stderr the docs site would hide: {hidden[:5]}"
