"""The documentation covers the package: every public name has an entry in the API reference, every page is
in a table of contents, and the build stays offline.

The build itself (``sphinx-build -W``, notebooks executed) runs in CI, ``.ci/run``; it takes minutes.
"""

import pathlib
import re

from public_api import OBJECTS, PUBLIC_MODULES

DOCS = pathlib.Path(__file__).resolve().parents[1] / "docs"
DIRECTIVE = re.compile(r"^\.\. (?:auto|py:)(?:function|class|exception|data|module)::\s+([\w.]+)", re.M)


def reference_entries() -> set[str]:
    return {name for page in DOCS.glob("api/*.rst") for name in DIRECTIVE.findall(page.read_text())}


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
