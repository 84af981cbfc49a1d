"""Sphinx configuration (Sphinx, as JAX, Flax and Optax use: autodoc and napoleon read the Google-style
docstrings, MyST reads the Markdown guides, myst-nb executes and renders the notebooks).

Builds offline: no intersphinx inventories are fetched (``_ext/nnjax_links.py`` links JAX and Optax names
by URL pattern). The notebooks are copied from ``notebooks/`` and executed at build time at full size, so
the pages show the results their prose states (``NNJAX_SMOKE=1`` gives the test suite's small sizes, for a
quicker local build whose numbers then disagree with the prose); ``NNJAX_DOCS_EXECUTE=0`` renders them
without outputs.
"""

import os
import pathlib
import shutil
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "docs" / "_ext"))

import nnjax  # noqa: E402

project = "nnjax"
author = "the nnjax authors"
copyright = "2026, the nnjax authors"
release = version = nnjax.__version__

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "nnjax_links",  # docs/_ext: nnjax, JAX and Optax names link to their documentation, offline
]
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
exclude_patterns = ["_build", "**.ipynb_checkpoints"]
html_theme = "furo"
html_title = f"nnjax {version}"
html_static_path = ["_static"]
html_css_files = ["nnjax.css"]  # linked names in code blocks: a dotted underline

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_format = "short"
autodoc_default_options = {"members": False}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
myst_enable_extensions = ["colon_fence"]
myst_heading_anchors = 3
suppress_warnings = ["myst.header"]

# The six notebooks, rendered with their outputs.
NOTEBOOKS = ROOT / "docs" / "notebooks"
NOTEBOOKS.mkdir(exist_ok=True)
for notebook in sorted((ROOT / "notebooks").glob("*.ipynb")):
    shutil.copyfile(notebook, NOTEBOOKS / notebook.name)
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
nb_execution_mode = "force" if os.environ.get("NNJAX_DOCS_EXECUTE", "1") == "1" else "off"
nb_execution_timeout = 900
nb_execution_raise_on_error = True
nb_execution_show_tb = True
nb_merge_streams = True
# stderr holds tqdm's text bar (each state a line once rendered) and its "IProgress not found" warning
# (with the build machine's path); the epoch lines, one per epoch, are on stdout and stay.
nb_output_stderr = "remove"
