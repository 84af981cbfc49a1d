"""Links every nnjax, JAX and Optax name on a page to its documentation, offline.

nnjax names (``nnjax.fit``, ``nn.Dense``, ``losses.mse``, ``fit_many``) link to their entry in this site's
API reference, wherever they appear: in inline code and inside highlighted code blocks (guides and
notebooks). JAX and Optax names (``jax.grad``, ``jnp.ones``, ``optax.adam``) link to their own documentation
by URL pattern: the build fetches no inventories (it stays offline), so no intersphinx.

The work is done on each page's finished HTML body (``html-page-context``), by ``link_names``, a pure
function of the HTML and a resolver that the tests call directly.
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Callable

JAX_DOCS = "https://docs.jax.dev/en/latest"
OPTAX_DOCS = "https://optax.readthedocs.io/en/latest"
ALIASES = {"nn": "nnjax", "jnp": "jax.numpy"}  # as the notebooks and guides import them


def _submodules() -> frozenset[str]:
    import nnjax

    return frozenset(name for name in nnjax.__all__ if inspect.ismodule(getattr(nnjax, name)))


# `from nnjax import losses`: in code, `losses.mse` is nnjax's when nnjax has that name
SUBMODULES = _submodules()

# Optax's API pages by the module that defines a name (its docs group names by topic, not by module).
OPTAX_PAGES = [
    ("optax._src.alias", "optimizers"),
    ("optax.schedules", "optimizer_schedules"),
    ("optax._src.schedule", "optimizer_schedules"),
    ("optax._src.combine", "combining_optimizers"),
    ("optax.transforms._combining", "combining_optimizers"),
    ("optax._src.wrappers", "optimizer_wrappers"),
    ("optax.transforms._accumulation", "optimizer_wrappers"),
    ("optax._src.update", "apply_updates"),
    ("optax.losses", "losses"),
    ("optax._src.loss", "losses"),
    ("optax._src.base", "transformations"),
    ("optax._src.transform", "transformations"),
    ("optax._src.clipping", "transformations"),
    ("optax.transforms", "transformations"),
]


def resolve_object(name: str):
    """The Python object a dotted name denotes, or None."""
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return None
        return obj
    return None


def external_url(name: str) -> str | None:
    """The documentation URL of a JAX or Optax name (``jax.nn.relu``, ``optax.adam``), or None."""
    if not re.fullmatch(r"(jax|optax)(\.\w+)+", name):
        return None
    obj = resolve_object(name)
    if obj is None:
        return None
    if name.startswith("jax."):
        if inspect.ismodule(obj):
            return f"{JAX_DOCS}/{name}.html"
        return f"{JAX_DOCS}/_autosummary/{name}.html"
    module = getattr(obj, "__module__", "") or ""
    for prefix, page in OPTAX_PAGES:
        if module.startswith(prefix):
            return f"{OPTAX_DOCS}/api/{page}.html#{name}"
    return f"{OPTAX_DOCS}/search.html?q={name}"


# Pygments' HTML for a dotted name: <span class="n">nnjax</span><span class="o">.</span><span class="n">fit</span>
_NAME = r'<span class="(?:n|nn|nc|nf|nb)">(\w+)</span>'
_DOT = r'<span class="o">\.</span>'
CODE_CHAIN = re.compile(rf"(?<!{_DOT}){_NAME}(?:{_DOT}{_NAME})*")
INLINE = re.compile(r'<code class="docutils literal notranslate">(.*?)</code>', re.S)
ANCHOR = re.compile(r"(<a\b.*?</a>)", re.S)
TAG = re.compile(r"<[^>]+>")


def candidates(written: list[str], *, bare: bool) -> list[tuple[str, int]]:
    """``(full name, how many written parts it covers)`` a written name may denote, longest first.

    ``["nn", "losses", "mse"]`` -> ``("nnjax.losses.mse", 3), ("nnjax.losses", 2)``; with ``bare``, a name
    that is not qualified (``fit``, ``losses.mse`` in prose) is taken as nnjax's.
    """
    first = ALIASES.get(written[0], written[0])
    out = []
    for cut in range(len(written), 0, -1):
        full = ".".join([first, *written[1:cut]])
        if first.split(".")[0] in ("nnjax", "jax", "optax"):
            if "." in full:
                out.append((full, cut))
        elif bare or (cut > 1 and first in SUBMODULES):
            out.append((f"nnjax.{full}", cut))
    return out


def link_names(html: str, resolve: Callable[[str], str | None]) -> str:
    """Wraps each name in ``html`` that ``resolve`` knows in a link to it.

    Args:
      html: a page body. Text already inside ``<a>`` is left alone.
      resolve: full name (``nnjax.fit``) -> URL, or None when the name has no entry.

    Returns:
      The body with inline code that starts with a name, and names in highlighted code, linked.
    """

    def inline(match: re.Match) -> str:
        text = TAG.sub("", match.group(1)).strip()
        head = re.match(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*", text)
        if head is None:
            return match.group(0)
        for full, _ in candidates(head.group(0).split("."), bare=True):
            url = resolve(full)
            if url:
                return f'<a class="reference external nnjax-name" href="{url}">{match.group(0)}</a>'
        return match.group(0)

    def code(match: re.Match) -> str:
        spans = re.findall(r'<span class="[^"]+">[^<]*</span>', match.group(0))  # name, dot, name, ...
        written = [TAG.sub("", span) for span in spans[::2]]
        for full, cut in candidates(written, bare=False):
            url = resolve(full)
            if url:
                head, rest = "".join(spans[: 2 * cut - 1]), "".join(spans[2 * cut - 1 :])
                return f'<a class="nnjax-name" href="{url}">{head}</a>{rest}'
        return match.group(0)

    out = []
    for piece in ANCHOR.split(html):
        if piece.startswith("<a"):
            out.append(piece)
        else:
            out.append(CODE_CHAIN.sub(code, INLINE.sub(inline, piece)))
    return "".join(out)


def setup(app):
    def on_page(app, pagename, templatename, context, doctree):
        if "body" not in context:
            return
        domain = app.env.get_domain("py")
        objects, modules = domain.objects, domain.modules
        # a capitalized name written bare (`BestModel`) links when one public module alone has it
        short: dict[str, list[str]] = {}
        for name in objects:
            if "._" not in name:  # autodoc also records a class under its private module
                short.setdefault(name.rsplit(".", 1)[-1], []).append(name)
        classes = {name: fulls[0] for name, fulls in short.items() if len(fulls) == 1}

        def resolve(full: str) -> str | None:
            if full.startswith("nnjax"):
                if full not in objects and full.count(".") == 1 and full[6:7].isupper():
                    full = classes.get(full[6:], full)  # `BestModel` is nnjax.callbacks.BestModel
                if full in objects:
                    entry = objects[full]
                    docname, anchor = entry.docname, entry.node_id
                elif full in modules:
                    entry = modules[full]
                    docname, anchor = entry.docname, entry.node_id
                else:
                    return None
                return f"{app.builder.get_relative_uri(pagename, docname)}#{anchor}"
            return external_url(full)

        context["body"] = link_names(context["body"], resolve)

    app.connect("html-page-context", on_page)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
