"""The documentation covers the package: every public name has an entry in the API reference, every page is
in a table of contents, and the build stays offline.

The build itself (``sphinx-build -W``, notebooks executed) runs in CI, ``.ci/run``; it takes minutes.
"""

import pathlib
import re

import pytest

from public_api import OBJECTS, PUBLIC_MODULES

DOCS = pathlib.Path(__file__).resolve().parents[1] / "docs"
DIRECTIVE = re.compile(r"^\.\. (auto|py:)(function|class|exception|data|module|currentmodule)::\s+([\w.]+)", re.M)


def page_entries(text: str) -> list[tuple[str, str]]:
    """``[(full name, name as written)]`` for a reference page's directives.

    ``py:`` directives are resolved against the page's module (``.. py:module::`` or ``currentmodule``), as
    Sphinx resolves them; ``auto`` directives take full names (autodoc finds the module itself).
    """
    module, entries = None, []
    for kind, what, name in DIRECTIVE.findall(text):
        if what in ("module", "currentmodule"):
            module = name
            if what == "module":
                entries.append((name, name))
        elif kind == "py:" and module:
            entries.append((f"{module}.{name}", name))
        else:
            entries.append((name, name))
    return entries


def reference_entries() -> set[str]:
    return {full for page in DOCS.glob("api/*.rst") for full, _ in page_entries(page.read_text())}


def test_page_entries_resolve_against_the_page_module():
    text = ".. py:module:: nnjax.losses\n\n.. py:function:: mse(x)\n\n.. autofunction:: nnjax.losses.mae\n"
    assert page_entries(text) == [
        ("nnjax.losses", "nnjax.losses"),
        ("nnjax.losses.mse", "mse"),
        ("nnjax.losses.mae", "nnjax.losses.mae"),
    ]


def test_no_name_is_doubled_under_its_module():
    """``.. py:function:: nnjax.initializers.zeros`` under ``.. py:module:: nnjax.initializers`` would be
    ``nnjax.initializers.nnjax.initializers.zeros`` in search, anchors and objects.inv."""
    doubled = [
        f"{page.name}: {full}"
        for page in DOCS.glob("api/*.rst")
        for full, _ in page_entries(page.read_text())
        if full.count("nnjax.") > 1
    ]
    assert not doubled, f"write these names without their module under `.. py:module::`: {doubled}"


def test_every_public_name_has_a_reference_entry():
    missing = sorted(set(OBJECTS) - reference_entries())
    assert not missing, f"add these to a page in docs/api/: {missing}"


def test_every_public_module_has_a_reference_page():
    entries = reference_entries()
    missing = [module for module in PUBLIC_MODULES[1:] if module not in entries]
    assert not missing, f"add a docs/api page with `.. py:module::` for {missing}"


def test_reference_entries_name_real_objects():
    stale = sorted(name for name in reference_entries() - set(OBJECTS) if name not in PUBLIC_MODULES)
    assert not stale, f"docs/api names what nnjax does not export: {stale}"


def toctree_entries() -> set[str]:
    """Every page a ``{toctree}`` lists, as a path from docs/ without suffix (entries are page-relative)."""
    listed = set()
    for page in DOCS.rglob("*.md"):
        for block in re.findall(r"```\{toctree\}\n(.*?)```", page.read_text(), re.S):
            for entry in re.findall(r"^([\w/.-]+)$", block, re.M):
                listed.add(str((page.parent / entry).relative_to(DOCS)))
    return listed


def test_every_page_is_in_a_table_of_contents():
    pages = {str(p.relative_to(DOCS).with_suffix("")) for p in DOCS.rglob("*.md") if "_build" not in p.parts}
    pages |= {f"api/{p.stem}" for p in DOCS.glob("api/*.rst")}
    pages |= {f"notebooks/{p.stem}" for p in (DOCS.parent / "notebooks").glob("*.ipynb")}
    pages -= {"index"} | {p for p in pages if p.startswith("notebooks/") and p.count("/") > 1}
    orphans = sorted(pages - toctree_entries())
    assert not orphans, f"pages in no toctree: {orphans}"


def test_the_build_is_offline():
    conf = (DOCS / "conf.py").read_text()
    assert "sphinx.ext.intersphinx" not in conf, (
        "intersphinx fetches inventories at build time; the build must be offline"
    )
    assert "nb_execution_raise_on_error = True" in conf


# --- the pages' code: it fits the column and it runs ---------------------------------------------------

FENCE = re.compile(r"^(`{3,})([^\n]*)\n(.*?)^\1\s*$", re.M | re.S)
COLUMN = 88  # the width of a code block on the site; wider lines scroll and hide their comment
MARKDOWN = sorted(p for p in DOCS.rglob("*.md") if not {"_build", "notebooks"} & set(p.parts))
RUNNABLE = [DOCS / "index.md", *sorted((DOCS / "guides").glob("*.md"))]


def code_blocks(text: str) -> list[tuple[str, str]]:
    """``[(language, code)]`` for a Markdown page's fenced blocks, directives (``{toctree}``) left out."""
    return [(info.strip(), code) for _, info, code in FENCE.findall(text) if not info.startswith("{")]


def test_code_blocks_are_found():
    text = "a\n\n```python\nx = 1\n```\n\n```{toctree}\nguides/a\n```\n\n```bash\nls\n```\n"
    assert code_blocks(text) == [("python", "x = 1\n"), ("bash", "ls\n")]


def test_code_lines_fit_the_column():
    wide = [
        f"{page.relative_to(DOCS)}: {len(line)} characters: {line.strip()[:60]}"
        for page in MARKDOWN
        for _, code in code_blocks(page.read_text())
        for line in code.splitlines()
        if len(line) > COLUMN
    ]
    assert not wide, f"code lines wider than {COLUMN} characters:\n" + "\n".join(wide)


@pytest.mark.slow  # seconds to a minute per page: the guides train small models
@pytest.mark.parametrize("page", RUNNABLE, ids=lambda p: p.stem)
def test_page_code_runs_top_to_bottom(page, tmp_path, monkeypatch):
    """Each page's python blocks, in order, in one namespace: a reader can paste them as written."""
    blocks = [code for language, code in code_blocks(page.read_text()) if language == "python"]
    assert blocks, f"{page.name} has no python block"
    if any("torch" in code for code in blocks):
        pytest.importorskip("torch")
    pytest.importorskip("matplotlib").use("Agg")
    monkeypatch.chdir(tmp_path)  # checkpoints and figures land here
    namespace = {"__name__": "__main__"}
    for i, code in enumerate(blocks):
        exec(compile(code, f"{page.relative_to(DOCS)}, python block {i}", "exec"), namespace)
