"""The documentation covers the package: every public name has an entry in the API reference, every page is
in a table of contents, and the build stays offline.

The build itself (``sphinx-build -W``, notebooks executed) runs in CI, ``.ci/run``; it takes minutes.
"""

import os
import pathlib
import re
import subprocess
import sys

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


def test_the_site_runs_the_notebooks_at_full_size():
    """The notebook pages state full-size results in prose; smoke sizes are for the test suite only."""
    conf = (DOCS / "conf.py").read_text()
    assert "NNJAX_SMOKE" not in conf.split('"""', 2)[2], "conf.py must not shrink the notebooks"
    assert 'nb_output_stderr = "remove"' in conf  # tqdm's text bar and its IProgress warning


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


# --- names link to their documentation (docs/_ext/nnjax_links.py) ---------------------------------------


def links():
    sys.path.insert(0, str(DOCS / "_ext"))
    try:
        import nnjax_links
    finally:
        sys.path.remove(str(DOCS / "_ext"))
    return nnjax_links


def pygments(*names: str) -> str:
    """Pygments' HTML for a dotted name, as Sphinx writes it in a code block."""
    dot = '<span class="o">.</span>'
    return dot.join(f'<span class="n">{name}</span>' for name in names)


REFERENCE = {"nnjax.fit": "api/training.html#nnjax.fit", "nnjax.losses.mse": "api/losses.html#nnjax.losses.mse"}


def resolve(full):
    return REFERENCE.get(full) or links().external_url(full)


def test_code_names_link_to_the_reference_and_to_jax_and_optax():
    html = "<pre>" + pygments("nn", "losses", "mse") + "(" + pygments("jnp", "ones") + " "
    html += pygments("optax", "adam") + " " + pygments("result", "fit") + "</pre>"
    out = links().link_names(html, resolve)
    assert f'<a class="nnjax-name" href="api/losses.html#nnjax.losses.mse">{pygments("nn", "losses", "mse")}</a>' in out
    assert 'href="https://docs.jax.dev/en/latest/_autosummary/jax.numpy.ones.html"' in out
    assert 'href="https://optax.readthedocs.io/en/latest/api/optimizers.html#optax.adam"' in out
    assert pygments("result", "fit") in out and out.count("<a ") == 3  # an attribute named fit is not nnjax.fit


def test_inline_names_link_unless_already_linked():
    code = '<code class="docutils literal notranslate"><span class="pre">{}</span></code>'
    html = code.format("fit(x,") + " " + f'<a href="x">{code.format("fit")}</a>' + " " + code.format("jax.nn.elu")
    html += " " + code.format("train=True")
    out = links().link_names(html, resolve)
    assert f'href="api/training.html#nnjax.fit">{code.format("fit(x,")}</a>' in out
    assert f'<a href="x">{code.format("fit")}</a>' in out  # no link inside a link
    assert 'href="https://docs.jax.dev/en/latest/_autosummary/jax.nn.elu.html"' in out
    assert out.count("<a ") == 3


def test_external_urls():
    url = links().external_url
    assert url("jax.nn.initializers.glorot_uniform") == (
        "https://docs.jax.dev/en/latest/_autosummary/jax.nn.initializers.glorot_uniform.html"
    )
    assert url("jax.numpy") == "https://docs.jax.dev/en/latest/jax.numpy.html"
    assert url("optax.MultiSteps").endswith("/api/optimizer_wrappers.html#optax.MultiSteps")
    assert url("optax.cosine_decay_schedule").endswith("/api/optimizer_schedules.html#optax.cosine_decay_schedule")
    assert url("jax.not_a_name") is None and url("numpy.ones") is None


# --- the built site, scanned -----------------------------------------------------------------------------

MACHINE_PATH = re.compile(r"(/home/|/Users/|/tmp/|/work/|site-packages|/usr/lib/python|[A-Z]:\\\\Users)")
NOISE = re.compile(r"(Warning|IProgress|Traceback|\x1b\[)")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The built HTML: ``NNJAX_DOCS_HTML`` (CI points it at the build it just made), or a fresh build with
    the notebooks executed at the test suite's small sizes."""
    if os.environ.get("NNJAX_DOCS_HTML"):
        return pathlib.Path(os.environ["NNJAX_DOCS_HTML"])
    out = tmp_path_factory.mktemp("html")
    env = {**os.environ, "NNJAX_SMOKE": "1"}
    command = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", str(DOCS), str(out)]
    subprocess.run(command, check=True, env=env)
    return out


def pages(site: pathlib.Path):
    bs4 = pytest.importorskip("bs4")
    for path in sorted(site.rglob("*.html")):
        if not {"_modules", "_static", "_sources"} & set(path.relative_to(site).parts):
            yield path.relative_to(site), bs4.BeautifulSoup(path.read_text(), "html.parser")


@pytest.mark.slow  # builds the site (minutes) unless NNJAX_DOCS_HTML names a build
def test_built_site_is_clean(site):
    """No warnings or machine paths in rendered output, no code line past the column, no raw ``summary``
    string, no doubled names; guides and notebooks link each nnjax name in their code to the reference."""
    problems = []
    for name, soup in pages(site):
        for out in soup.select("div.cell_output"):
            text = out.get_text()
            if NOISE.search(text) or text.lstrip().startswith("'Model summary"):
                problems.append(f"{name}: noise in an output: {text.strip()[:80]!r}")
            epochs = [line.split("  ")[0] for line in text.splitlines() if line.startswith("epoch ")]
            if len(epochs) != len(set(epochs)):
                problems.append(f"{name}: an epoch's progress line shown more than once")
        main = soup.select_one("article") or soup
        text = main.get_text()
        if MACHINE_PATH.search(text):
            problems.append(f"{name}: a machine path: {MACHINE_PATH.search(text).group(0)!r}")
        for block in main.select("div.highlight pre"):
            # the API pages' examples come from docstrings (library code, 120 columns): not checked here
            if block.find_parent("div", class_="cell_output") or str(name).startswith("api/"):
                continue
            problems += [
                f"{name}: wide code: {line[:60]!r}" for line in block.get_text().splitlines() if len(line) > COLUMN
            ]
        for anchor in main.select("[id]"):
            if anchor["id"].count("nnjax.") > 1:
                problems.append(f"{name}: a doubled name: {anchor['id']}")
        if str(name).startswith(("guides/", "notebooks/")) or str(name) == "index.html":
            for span in main.select("div.highlight span.n"):
                before = span.find_previous_sibling()
                after_dot = before is not None and before.get_text() == "."  # torch.nn is not nnjax
                if span.get_text() in ("nnjax", "nn") and not after_dot and span.find_parent("a") is None:
                    following = span.find_next_sibling()
                    if following is not None and following.get_text() == ".":
                        nxt = following.find_next_sibling()
                        problems.append(f"{name}: unlinked name {span.get_text()}.{nxt.get_text() if nxt else ''}")
    assert not problems, "\n".join(problems[:40])
    api = (site / "api" / "activations.html").read_text()
    assert 'href="https://docs.jax.dev/en/latest/_autosummary/jax.nn.elu.html"' in api
    for page in ("gallery.html", "guides/sharp_bits.html"):
        assert (site / page).exists()
