"""The read-only view of a published notebook snapshot, ``<snapshot origin>/s/<id>``.

Everything in a snapshot (cells, outputs, metadata, its name) comes from an anonymous visitor
and may be hostile. Two defences stand between it and the people who open the link:

- The page is served from its own cookieless origin under :data:`VIEW_CSP`: a sandbox with no
  scripts, no plugins, no forms, and no fetches except ``data:`` images and fonts.
- The notebook's HTML is sanitised here as well (:func:`_sanitise`), so that one mistake (a
  header lost by a proxy, a browser bug) is not enough for a snapshot to run script or to
  fetch from elsewhere (tracking, exfiltration through CSS).

nbconvert's ``lab`` template renders the notebook: markdown, highlighted code, text and ANSI
coloured output, tracebacks, HTML (pandas tables), PNG/JPEG/SVG images. What needs script is
lost: LaTeX stays as its source text (MathJax does not run), widgets show their text form,
JavaScript outputs show nothing, Mermaid diagrams show their source.
"""

from __future__ import annotations

import html
import logging
import queue
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, Final, Literal

import jinja2
import nbformat
from bs4 import BeautifulSoup, CData, Comment, Declaration, Doctype, ProcessingInstruction, Tag
from bs4.element import PageElement
from nbconvert import HTMLExporter, TemplateExporter
from nbconvert.filters.highlight import Highlight2HTML
from nbconvert.filters.markdown_mistune import IPythonRenderer, MarkdownWithMath
from nbconvert.filters.widgetsdatatypefilter import WidgetsDataTypeFilter
from nbformat import NotebookNode
from pygments.lexers import find_lexer_class_by_name  # type: ignore[import-untyped]  # no type hints
from pygments.util import ClassNotFound  # type: ignore[import-untyped]

__all__ = ["MAX_OUTPUT_CHARS", "VIEW_CSP", "VIEW_HEADERS", "missing_page", "render_view"]

#: The view's Content-Security-Policy. Beyond the plain ``sandbox`` (no script, an opaque
#: origin), three sandbox flags, each for a button a reader presses:
#: ``allow-popups`` lets the notebook's own links open in a new tab (``target=_blank``: a
#: sandboxed page may open no window otherwise, and the click does nothing);
#: ``allow-popups-to-escape-sandbox`` lets the page so opened be an ordinary page rather than
#: one sandboxed like this one; ``allow-downloads`` lets "Download .ipynb" work (Chromium
#: blocks downloads started from a sandboxed page). None of them lets a script run.
VIEW_CSP: Final = (
    "sandbox allow-popups allow-popups-to-escape-sandbox allow-downloads; "
    "default-src 'none'; img-src data:; style-src 'unsafe-inline'; font-src data:; "
    "form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
)

#: The headers of every response of the snapshot origin's pages (the view and
#: :func:`missing_page`); the gateway's middleware adds nosniff and the referrer policy.
#: Read-only, so that no caller adds its own to everybody's.
VIEW_HEADERS: Final[Mapping[str, str]] = MappingProxyType({
    "Content-Security-Policy": VIEW_CSP,
    "X-Robots-Tag": "noindex",
})

#: The most characters of one output (or one cell's source) shown; the rest is cut with a note.
#: Download .ipynb still has all of it.
MAX_OUTPUT_CHARS: Final = 1_000_000

# nbformat has no type hints: the functions used here, with the types they have.
_from_dict: Callable[[Mapping[str, Any]], NotebookNode] = nbformat.from_dict
_convert: Callable[[NotebookNode, int], NotebookNode] = nbformat.convert

_events = logging.getLogger(__name__)
# nbconvert warns about every image without alt text (every plot), on every render: a log line
# per view that nobody can act on. Its errors still reach the log.
_log = logging.getLogger(__name__ + ".nbconvert")
_log.setLevel(logging.ERROR)


# --- rendering -------------------------------------------------------------------------------

# The lab template without anything that runs or fetches: no require.js, MathJax, Mermaid or
# widget scripts, and no JavaScript outputs. The page around the notebook is ours, so a render
# gives only the notebook's body; the template's <head> (its CSS) is rendered once, when asked
# for with ``resources["nbpool_head"]``. Mermaid source is shown as text (the lab template puts
# it unescaped in the page, for a script to draw). Highlighted code is not put through bleach
# (pygments escapes it; _sanitise sees it anyway): that took half the time of a render.
_TEMPLATE = """\
{%- extends 'index.html.j2' -%}
{%- block header -%}{%- if resources.nbpool_head -%}{{ super() }}{%- endif -%}{%- endblock header -%}
{%- block html_head_js -%}{%- endblock html_head_js -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{%- block body_header -%}
<div class="jp-Notebook" data-jp-theme-light="true" data-jp-theme-name="JupyterLab Light">
{%- endblock body_header -%}
{%- block body_footer -%}</div>{%- endblock body_footer -%}
{%- block footer -%}{%- endblock footer -%}
{%- block data_javascript scoped -%}{%- endblock data_javascript -%}
{%- block data_widget_view scoped -%}{%- endblock data_widget_view -%}
{%- block input -%}
<div class="jp-CodeMirrorEditor jp-Editor jp-InputArea-editor" data-type="inline"><div class="cm-editor cm-s-jupyter">
{{ cell.source | highlight_code(metadata=cell.metadata) }}
</div></div>
{%- endblock input -%}
{%- block data_mermaid scoped -%}
<div class="jp-RenderedText jp-OutputArea-output" data-mime-type="text/vnd.mermaid">
<pre>{{ output.data['text/vnd.mermaid'] | escape_html }}</pre></div>
{%- endblock data_mermaid -%}
"""
_TEMPLATE_FILE = "nbpool_snapshot_view.html.j2"


class _Attachments(dict[str, dict[str, str]]):
    """A markdown cell's attachments, where a missing one is an empty PNG (a broken image)
    rather than nbconvert's InvalidNotebook for the whole notebook."""

    def __contains__(self, name: object) -> bool:
        return True

    def __missing__(self, name: str) -> dict[str, str]:
        return {"image/png": ""}


class _Exporter(HTMLExporter):
    """HTMLExporter that renders notebooks nbformat could read but that break its schema, and
    whose markdown survives references to missing attachments."""

    def _validate_preprocessor(self, nbc: NotebookNode, preprocessor: Any) -> None:
        # nbconvert checks the notebook against the schema after each preprocessor and gives up
        # on the first mismatch (an output type it does not know, a field too many). Whatever
        # the notebook holds, what reaches the page is sanitised; and validating a big notebook
        # several times costs more than rendering it.
        pass

    # (The type: ignores: nbconvert's own annotations disagree with each other here, and its
    # helpers have none.)
    def from_notebook_node(  # type: ignore[override]
        self, nb: NotebookNode, resources: dict[str, Any] | None = None, **kw: Any
    ) -> tuple[str, dict[str, Any]]:
        # HTMLExporter's, but for its last step: a BeautifulSoup pass over the whole page for alt
        # texts and tabindex, which _sanitise gives in its own pass; parsing the page twice made a
        # big notebook's render half as slow again.
        language = nb.metadata.get("language_info", {})
        lexer = language.get("pygments_lexer", language.get("name"))
        self.register_filter("highlight_code", Highlight2HTML(pygments_lexer=lexer, parent=self))  # type: ignore[no-untyped-call]
        resources = self._init_resources(resources)  # type: ignore[no-untyped-call]
        self.register_filter("filter_data_type", WidgetsDataTypeFilter(  # type: ignore[no-untyped-call]
            notebook_metadata=self._nb_metadata, parent=self, resources=resources))
        return TemplateExporter.from_notebook_node(self, nb, resources, **kw)

    @jinja2.pass_context
    def markdown2html(self, context: jinja2.runtime.Context, source: str) -> str:
        # As HTMLExporter.markdown2html, but with _Attachments, and never embed_images: that
        # reads files from the server's disk when a notebook links to them.
        cell = context.get("cell", {})
        renderer = IPythonRenderer(
            escape=False,
            attachments=_Attachments(cell.get("attachments") or {}),
            embed_images=False,
            anchor_link_text=self.anchor_link_text,
            exclude_anchor_links=self.exclude_anchor_links,
        )
        return str(MarkdownWithMath(renderer=renderer).render(source))


def _new_exporter() -> _Exporter:
    return _Exporter(  # type: ignore[no-untyped-call]  # traitlets' constructors have no type hints
        template_name="lab",
        template_file=_TEMPLATE_FILE,
        extra_loaders=[jinja2.DictLoader({_TEMPLATE_FILE: _TEMPLATE})],
        theme="light",
        log=_log,
    )


# An HTMLExporter is not safe to share between threads: each render registers filters on it
# (the notebook's code lexer among them), which a render in another thread would then use. Nor
# is it cheap to make: its first render compiles the templates (about half a second). So
# renders borrow one from this pool and give it back: as many exist as renders ever ran at once.
_exporters: queue.SimpleQueue[_Exporter] = queue.SimpleQueue()


@contextmanager
def _exporter() -> Iterator[_Exporter]:
    try:
        exporter = _exporters.get_nowait()
    except queue.Empty:
        exporter = _new_exporter()
    try:
        yield exporter
    finally:
        _exporters.put(exporter)


_css_lock = threading.Lock()
_css: str | None = None


def _template_css() -> str:
    """The lab template's stylesheets, as one, rendered once: JupyterLab's light theme and the
    code highlighting. Checked to fetch nothing (a future nbconvert could add a web font)."""
    global _css
    with _css_lock:
        if _css is None:
            with _exporter() as exporter:
                empty = _from_dict({"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5})
                head, _ = exporter.from_notebook_node(empty, resources={"nbpool_head": True})
            soup = BeautifulSoup(head, "html.parser")
            css = "\n".join(style.get_text() for style in soup.find_all("style"))
            # Licence notes and links to where colours came from: no use to a reader.
            css = re.sub(r"/\*.*?\*/", "", css, flags=re.DOTALL)
            if "<" in css or "@import" in css or re.search(r"url\(\s*(?![\"']?data:)", css):
                raise RuntimeError("nbconvert's lab template CSS now fetches from elsewhere or holds markup; "
                                   "snapshot_view must not use it as it is")
            _css = css
        return _css


def render_view(
    notebook: dict[str, Any] | NotebookNode,
    *,
    name: str,
    created: str,
    expires_at: str,
    remix_url: str,
    download_url: str,
) -> str:
    """The whole page of a snapshot: a bar with its name, dates, Remix and Download, then the
    notebook, rendered and sanitised.

    ``notebook`` is one nbformat could read (version 4.x, or older to be converted); it is not
    changed. ``created`` and ``expires_at`` are ISO 8601 times (shown in UTC) or text shown as
    it is. Milliseconds for a small notebook, seconds of CPU for a big one (2 MB, 200 cells),
    mostly parsing the HTML to sanitise it: call it in a worker thread, and keep the page. Any
    number of threads may render at once.
    """
    nb = _prepare(notebook)
    css = _template_css()
    try:
        with _exporter() as exporter:
            rendered, _ = exporter.from_notebook_node(nb)
    except Exception:
        # Not seen with notebooks nbformat validates (tests/test_snapshot_view.py tries odd
        # ones); should one still break nbconvert, its page still offers Download and Remix.
        _events.exception("snapshot view not rendered", extra={"notebook": name})
        rendered = ("<p class=nbpool-unshown>This notebook cannot be shown here. Download it, or Remix it "
                    "to open it in Jupyter.</p>")
    body = _sanitise(rendered)
    bar = f"""<header class=nbpool-bar><div class=nbpool-what>
<p class=nbpool-kicker>Read-only snapshot</p>
<h1 class=nbpool-name>{html.escape(name)}</h1>
<p class=nbpool-when>Published {_when(created)} · expires {_when(expires_at)}</p></div>
<nav class=nbpool-actions aria-label="This snapshot">
<a class="nbpool-button nbpool-remix" href="{html.escape(remix_url)}"
 title="Open a live copy of this notebook in a fresh temporary Jupyter server">Remix</a>
<a class="nbpool-button nbpool-secondary" href="{html.escape(download_url)}" download>Download .ipynb</a>
</nav></header>"""
    return _page(name, f"{bar}<main class=nbpool-notebook>{body}</main>", css)


def missing_page(status: int, message: str, home_url: str = "") -> str:
    """The page of a snapshot link that shows nothing: ``status`` 404 (no such snapshot), 410
    (it expired) or another; ``message`` says why in words for the reader; ``home_url``, if
    given, is the gateway's landing page."""
    title = {404: "Snapshot not found", 410: "This snapshot has expired"}.get(status, "Snapshot unavailable")
    home = (f'<p><a class=nbpool-button href="{html.escape(home_url)}">Start your own Jupyter server</a></p>'
            if home_url else "")
    body = f"""<main class=nbpool-missing><p class=nbpool-kicker>Notebook snapshot</p>
<h1>{html.escape(title)}</h1><p>{html.escape(message)}</p>
<p class=nbpool-muted>Snapshots are temporary: each one is removed when it expires.</p>{home}</main>"""
    return _page(title, body)


_PAGE_CSS = """
.nbpool-page{margin:0;background:#fff;color:#1b1b1b;
font:16px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
.nbpool-bar{display:flex;flex-wrap:wrap;gap:.75rem 1.5rem;align-items:center;justify-content:space-between;
padding:.9rem max(1rem,calc((100% - 72rem)/2));background:#fbf7f4;border-bottom:1px solid #e8ddd5}
.nbpool-what{min-width:0}
.nbpool-kicker{margin:0;font-size:.75rem;letter-spacing:.06em;text-transform:uppercase;color:#8a5a3a}
.nbpool-bar h1{margin:.1rem 0;font-size:1.35rem;line-height:1.25;overflow-wrap:anywhere}
.nbpool-when,.nbpool-muted{margin:0;color:#5b5b5b;font-size:.9rem}
.nbpool-actions{display:flex;gap:.6rem;flex-wrap:wrap}
.nbpool-button{display:inline-block;padding:.5rem 1.1rem;border-radius:.45rem;border:1px solid #c4500f;
background:#c4500f;color:#fff;font-weight:600;text-decoration:none;white-space:nowrap}
.nbpool-button:hover{background:#a9440c}
.nbpool-secondary{background:transparent;color:#c4500f}
.nbpool-secondary:hover{background:#fbeee6}
.nbpool-button:focus-visible{outline:3px solid #2a7ae2;outline-offset:2px}
.nbpool-notebook{max-width:72rem;margin:0 auto;padding:1rem 0 3rem}
.nbpool-notebook .jp-Notebook{padding:0 1rem}
.nbpool-cut{color:#8a5a3a;font-style:italic}
.nbpool-unshown{padding:1rem;border:1px solid #e8ddd5;border-radius:.45rem;background:#fbf7f4}
.nbpool-missing{max-width:40rem;margin:0 auto;padding:3rem 1rem}
.nbpool-missing h1{font-size:1.8rem;line-height:1.2;margin:.3rem 0 1rem}
"""


def _page(title: str, body: str, notebook_css: str = "") -> str:
    # The template's CSS first, so that ours (the bar) wins where both style the same thing.
    styles = (f"<style>{notebook_css}</style>" if notebook_css else "") + f"<style>{_PAGE_CSS}</style>"
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)} · nbpool</title>{styles}</head>"
        f"<body class=nbpool-page>{body}</body></html>"
    )


def _when(text: str) -> str:
    """An ISO 8601 time as a <time> in UTC (without a zone: as it is); other text as it is."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return html.escape(text)
    zone = ""
    if moment.tzinfo is not None:
        moment, zone = moment.astimezone(UTC), " UTC"
    return f'<time datetime="{html.escape(text)}">{moment.day} {moment:%b %Y, %H:%M}{zone}</time>'


# --- the notebook before rendering -----------------------------------------------------------

# Outputs that only a script shows (nothing to render without one; the text/plain beside them,
# "IntSlider(value=3)", is shown instead).
_SCRIPT_MIMETYPES = frozenset({
    "application/javascript",
    "text/javascript",
    "application/vnd.jupyter.widget-view+json",
    "application/vnd.jupyter.widget-state+json",
})

# What the view shows (HTMLExporter.display_data_priority without the script ones).
_SHOWN_MIMETYPES = frozenset({
    "text/html", "text/markdown", "image/svg+xml", "text/vnd.mermaid", "text/latex", "image/png", "image/jpeg",
    "text/plain",
})


def _prepare(notebook: dict[str, Any] | NotebookNode) -> NotebookNode:
    """A version-4 copy of ``notebook`` with what cannot be shown left out and what is too big cut.

    nbconvert takes for granted that what it reads has the type it expects, which the schema
    leaves open in places (``metadata.language``, output metadata per type): those of another
    type are left out.
    """
    nb = _from_dict(notebook)  # new containers all through: the caller's notebook is not changed
    if isinstance(nb.get("nbformat"), int) and nb.nbformat < 4:
        nb = _convert(nb, 4)
    metadata = _mapping(nb, "metadata")
    metadata.pop("widgets", None)  # widgets' state, for their scripts
    _only(metadata, "language", str)
    language = _mapping(metadata, "language_info")
    _only(language, "name", str)
    _only(language, "pygments_lexer", str)
    if not _known_lexer(language.get("pygments_lexer", language.get("name", "ipython3"))):
        language.pygments_lexer = "text"  # rather than nbconvert's guess and a warning per cell
    # nbformat 4.5 gave cells ids; nbformat warns about each one without (MissingIDFieldWarning).
    needs_id = isinstance(nb.get("nbformat_minor"), int) and nb.nbformat_minor >= 5
    # Cells of a type nbformat does not know: nbconvert shows "unknown type" for each.
    cells = nb.get("cells")
    nb.cells = [cell for cell in (cells if isinstance(cells, list) else [])
                if isinstance(cell, NotebookNode) and cell.get("cell_type") in ("markdown", "code", "raw")]
    for index, cell in enumerate(nb.cells):
        _prepare_cell(cell, f"nbpool-cell-{index}" if needs_id else None)
    return nb


def _prepare_cell(cell: NotebookNode, default_id: str | None) -> None:
    metadata = _mapping(cell, "metadata")
    for key, kind in (("transient", dict), ("raw_mimetype", str), ("magics_language", str)):
        _only(metadata, key, kind)
    if not (isinstance(metadata.get("tags", []), list) and all(isinstance(tag, str) for tag in metadata.get("tags", []))):
        del metadata["tags"]
    if not _known_lexer(metadata.get("magics_language", "text")):
        del metadata["magics_language"]  # %%language cells
    _only(cell, "id", str)
    if default_id and "id" not in cell:
        cell.id = default_id
    if "attachments" in cell:
        attachments = _mapping(cell, "attachments")
        for name, bundle in list(attachments.items()):
            if isinstance(bundle, NotebookNode):
                for mimetype, data in list(bundle.items()):
                    bundle[mimetype] = _text(data)
            else:
                del attachments[name]
    cell.source = _text(cell.get("source", ""))
    if len(cell.source) > MAX_OUTPUT_CHARS:
        note = _cut_note(len(cell.source) - MAX_OUTPUT_CHARS)
        if cell.cell_type == "markdown":
            note = f"*{note}*"
        cell.source = f"{cell.source[:MAX_OUTPUT_CHARS]}\n\n{note}"
    if cell.cell_type == "code":
        outputs = cell.get("outputs")
        cell.outputs = [_prepare_output(output) for output in (outputs if isinstance(outputs, list) else [])
                        if isinstance(output, NotebookNode)]


def _prepare_output(output: NotebookNode) -> NotebookNode:
    metadata = _mapping(output, "metadata")
    for key in [key for key, value in metadata.items() if "/" in key and not isinstance(value, dict)]:
        del metadata[key]  # a MIME type's metadata (width, height) is a mapping
    # Where nbconvert once wrote the images to files: the lab template shows those paths (which a
    # notebook may point anywhere) instead of the images the output holds.
    metadata.pop("filenames", None)
    output.pop("svg_filename", None)
    kind = output.get("output_type")
    if kind == "stream":
        output.text = _cut_text(_text(output.get("text", "")))
        if output.get("name") not in ("stdout", "stderr", "stdin"):
            output.name = "stdout"  # nbconvert shows no other
    elif kind == "error":
        traceback = output.get("traceback")
        lines = [_text(line) for line in (traceback if isinstance(traceback, list) else [])]
        kept: list[str] = []
        size = 0
        for line in lines:
            if size + len(line) > MAX_OUTPUT_CHARS:
                kept.append(_cut_note(sum(map(len, lines)) - size))
                break
            kept.append(line)
            size += len(line)
        output.traceback = kept
    elif kind in ("execute_result", "display_data"):
        data = output.get("data")
        output.data = _prepare_data(data if isinstance(data, NotebookNode) else _from_dict({}))
    return output


def _prepare_data(data: NotebookNode) -> NotebookNode:
    kept = _from_dict({})
    for mimetype, value in data.items():
        if mimetype in _SCRIPT_MIMETYPES:
            continue
        if isinstance(value, list) and all(isinstance(line, str) for line in value):
            value = "".join(value)
        if isinstance(value, str) and len(value) > MAX_OUTPUT_CHARS:
            if mimetype.startswith("image/"):
                # Half an image is no image: say what is missing instead.
                kept.setdefault("text/plain", f"[{mimetype} image of {len(value) / 1e6:.1f} MB: too big "
                                              "for this view; Download .ipynb has it]")
                continue
            value = _cut_text(value, as_html=mimetype == "text/html")
        kept[mimetype] = value
    if not _SHOWN_MIMETYPES.intersection(kept):
        # Say so, rather than nbconvert's silence and a warning.
        kept["text/plain"] = f"[output of type {', '.join(data) or 'none'}: not shown here]"
    return kept


def _mapping(parent: NotebookNode, key: str) -> NotebookNode:
    """``parent[key]``, made an empty mapping if it is missing or something else."""
    value = parent.get(key)
    if not isinstance(value, NotebookNode):
        value = parent[key] = _from_dict({})
    return value


def _only(mapping: NotebookNode, key: str, kind: type) -> None:
    """Leave ``mapping[key]`` out unless it is a ``kind``."""
    if key in mapping and not isinstance(mapping[key], kind):
        del mapping[key]


def _known_lexer(name: object) -> bool:
    if name in {"ipython2", "ipython3"}:  # nbconvert's own names for IPython's lexers
        return True
    try:
        find_lexer_class_by_name(str(name))
    except ClassNotFound:
        return False
    return True


def _text(value: Any) -> str:
    """Text that valid notebooks hold as a string, or a list of lines, in odd ones anything."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "".join(map(str, value))
    return "" if value is None else str(value)


def _cut_text(text: str, as_html: bool = False) -> str:
    if len(text) <= MAX_OUTPUT_CHARS:
        return text
    note = _cut_note(len(text) - MAX_OUTPUT_CHARS)
    if as_html:
        return f"{text[:MAX_OUTPUT_CHARS]}\n<p class=nbpool-cut>{note}</p>"
    return f"{text[:MAX_OUTPUT_CHARS]}\n\n{note}"


def _cut_note(cut: int) -> str:
    return f"[… {cut:,} more characters cut from this view; Download .ipynb has them all]"


# --- sanitising ------------------------------------------------------------------------------
#
# A denylist on BeautifulSoup's tree rather than bleach's allowlist. The CSP is the first
# defence (no script runs, nothing is fetched whatever this misses); this one is for when it is
# absent. An allowlist complete enough for what notebooks show (inline SVG, pandas Styler
# <style>, xarray's checkbox-and-label HTML) would be hundreds of names long, and bleach strips
# what it does not know, losing the outputs this view is for; bleach is also deprecated and
# untyped. The tree is re-serialised (never patched text), so what the browser parses is what
# was checked, except where html.parser and a browser disagree on what is text: that is the
# contents of <style> (markup inside SVG and MathML) and of comments and CDATA, handled below.

# Elements removed with everything in them.
_DROP = frozenset({
    "script", "iframe", "object", "embed", "param", "applet", "frame", "frameset", "noframes", "noembed",
    "portal", "fencedframe", "base", "meta", "link", "template", "plaintext", "xmp", "isindex", "keygen",
    "bgsound", "foreignobject", "set", "handler", "listener",
})
# Elements replaced by what is in them: a form submits nothing; <noscript> is what a browser
# shows without scripts anyway, but it parses its contents as text when scripts are enabled.
_UNWRAP = frozenset({"form", "noscript"})
_ANIMATIONS = frozenset({"animate", "animatemotion", "animatetransform", "discard"})
# Attributes removed wherever they are: fetches, navigations and submissions the checks below
# would otherwise have to understand (srcset lists URLs separated by commas that data: URLs hold).
_DROP_ATTRS = frozenset({
    "action", "formaction", "form", "ping", "srcdoc", "srcset", "imagesrcset", "data", "codebase", "classid",
    "archive", "manifest", "dynsrc", "lowsrc", "longdesc", "profile", "cite", "http-equiv", "xml:base",
    "download", "target", "folder",
})
_URL_ATTRS = frozenset({"href", "src", "poster", "background"})
_LINKS = frozenset({"a", "area"})
_SVG_IMAGES = frozenset({"image", "feimage"})
_ATTR_NAME = re.compile(r"[a-z_][a-z0-9_.:-]*\Z")
_SCHEME = re.compile(r"([a-z][a-z0-9+.-]*):")
_DATA_IMAGE = re.compile(r"data:image/(?:png|jpeg|gif|webp|svg\+xml)[;,]")
# CSS that fetches or runs: url() and its relatives (image-set("x.png") takes plain strings; IE's
# behavior and Firefox's old -moz-binding took url()), @import, IE's expression(); escapes
# (u\72l( is url() to a browser) and entities (decoded in an SVG <style>) are refused, not decoded.
_CSS_FETCH = re.compile(
    r"url\s*\(|image(?:-set)?\s*\(|cross-fade\s*\(|element\s*\(|src\s*\(|@import|expression\s*\(|\\|&[#a-z]",
    re.IGNORECASE)
# The same in any other attribute, as SVG reads its presentation attributes as CSS: fill="url(x)"
# fetches x, cursor="url(x)" too; references within the page (clip-path="url(#c)") stay.
_ATTR_FETCH = re.compile(
    r"url\s*\(\s*+(?![\"']?+\s*+#)|(?:image|image-set|cross-fade|element|src)\s*\(|\\[\s\S]*\(", re.IGNORECASE)
_REL = "noopener noreferrer nofollow"
_FOCUSABLE = frozenset({"jp-Cell-inputWrapper", "jp-OutputArea-output"})


def _sanitise(fragment: str) -> str:
    """``fragment`` (the notebook's HTML) without what could run script, fetch from elsewhere,
    submit, or navigate anywhere but to a new tab on http(s)."""
    soup = BeautifulSoup(fragment, "html.parser", multi_valued_attributes=None)
    # Depth first with a list (a notebook may nest elements deeper than Python recurses), and only
    # into what stays. (Not soup.descendants and .decomposed: that property searches the whole
    # subtree of every element it is asked about.)
    pending: list[PageElement] = list(soup.contents)
    while pending:
        node = pending.pop()
        if isinstance(node, Tag):
            verdict = _sanitise_tag(node)
            if verdict != "drop":
                pending.extend(node.contents)
            if verdict == "unwrap":
                node.unwrap()
        elif isinstance(node, (Comment, CData, Declaration, Doctype, ProcessingInstruction)):
            node.extract()
    return str(soup)


def _sanitise_tag(tag: Tag) -> Literal["keep", "drop", "unwrap"]:
    """What to do with ``tag`` (dropped ones are gone already); its attributes made safe."""
    name = tag.name.lower().rpartition(":")[2]  # <svg:script> is no script to a browser; still
    if (
        name in _DROP
        or (name == "style" and (_CSS_FETCH.search(tag.get_text()) or "<" in tag.get_text()))
        # <animate attributeName=href to="javascript:..."> makes a link; to="url(x)" fetches
        or (name in _ANIMATIONS and (
            str(tag.get("attributename", "")).strip().lower().rpartition(":")[2] == "href"
            or any(_ATTR_FETCH.search(str(tag.get(key, ""))) or ":" in str(tag.get(key, ""))
                   for key in ("values", "from", "to", "by"))))
        or (name == "input" and str(tag.get("type", "")).strip().lower() in {"submit", "image", "reset"})
    ):
        tag.decompose()
        return "drop"
    if name in _UNWRAP:
        return "unwrap"
    for attr, value in list(tag.attrs.items()):
        attr_name = attr.lower()
        local = attr_name.rpartition(":")[2]
        if (
            not _ATTR_NAME.match(attr_name)
            or local.startswith("on")
            or attr_name in _DROP_ATTRS
            or (attr_name == "style" and _CSS_FETCH.search(str(value)))
            or (local in _URL_ATTRS and not _url_allowed(name, local, str(value)))
            or (local not in _URL_ATTRS and _ATTR_FETCH.search(str(value)))
        ):
            del tag[attr]
    if name == "button":
        tag["type"] = "button"
    # What HTMLExporter would add: words for screen readers, and the keyboard's way into wide
    # outputs (to scroll them).
    if name == "img" and "alt" not in tag.attrs:
        tag["alt"] = "An image without a description"
    if name == "div" and _FOCUSABLE.intersection(str(tag.get("class", "")).split()):
        tag["tabindex"] = "0"
    if name in _LINKS:
        href = _url_text(str(tag.get("href", tag.get("xlink:href", ""))))
        if href.startswith(("http:", "https:")):
            tag["rel"], tag["target"] = _REL, "_blank"
    return "keep"


def _url_text(value: str) -> str:
    """A URL as a browser reads it: without tabs and newlines anywhere, without control
    characters and spaces at either end (``java\\tscript:`` is ``javascript:``), lowercased."""
    return re.sub(r"[\t\n\r]", "", value).strip("".join(map(chr, range(0x21)))).lower()


def _url_allowed(element: str, attr: str, value: str) -> bool:
    """Whether ``attr`` (a local name: href, src, poster, background) of ``element`` may keep
    ``value``: links to http(s), mail and within the page; images inline in data: URLs (the
    CSP's only images); SVG references within the page (``<use href="#a">``)."""
    url = _url_text(value)
    scheme = _SCHEME.match(url)
    if attr == "href" and element in _LINKS:
        return url.startswith("#") or (scheme is not None and scheme.group(1) in {"http", "https", "mailto"})
    if attr == "href":
        return url.startswith("#") or (element in _SVG_IMAGES and _DATA_IMAGE.match(url) is not None)
    # src, poster (<video>), background (<table>, <body>): what a page loads by itself.
    return (element == "img" or attr != "src") and _DATA_IMAGE.match(url) is not None

