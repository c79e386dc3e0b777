"""Which page of the new server a launch link opens. Pure functions, no network.

tmpnb-era and JupyterLab-era links all work:

============================================  ============================
link                                          opens (under /user/<id>/)
============================================  ============================
``/spawn``                                    ``lab``
``/spawn/lab/tree/<path>``                    ``lab/tree/<path>``
``/spawn/notebooks/<path>``                   ``lab/tree/<path>``
``/spawn/tree/<path>``                        ``lab/tree/<path>``
``/spawn/<path>`` (tmpnb)                     ``lab/tree/<path>``
``/spawn?urlpath=<any of the above forms>``   the same
============================================  ============================

A path that does not exist still opens JupyterLab, which says the file is missing.
"""

from __future__ import annotations

import re
from urllib.parse import quote, unquote

__all__ = ["BadLink", "lab_path", "spawn_link", "tree_page"]

_PREFIXES = ("lab/tree/", "notebooks/", "tree/", "lab/workspaces/")
_CONTROL = re.compile(r"[\x00-\x1f\x7f\\]")


class BadLink(ValueError):
    """The link asks for something that is not a file in the server (``..``, a scheme, ...)."""


def _clean(path: str) -> str:
    path = unquote(path)
    if _CONTROL.search(path):
        raise BadLink("the path must be a plain relative path")
    path = path.strip()
    if "://" in path or path.startswith("//"):
        raise BadLink("the path must be a plain relative path")
    parts = [p for p in path.strip("/").split("/") if p not in ("", ".")]
    if ".." in parts:
        raise BadLink("the path must not contain '..'")
    if len(path) > 1024:
        raise BadLink("the path is longer than 1024 characters")
    return "/".join(parts)


def lab_path(path: str = "", urlpath: str | None = None) -> str:
    """The page to open, relative to the server's base URL, from ``/spawn/<path>`` or ``?urlpath=``."""
    raw = _clean(urlpath if urlpath else path)
    if raw in ("", "lab", "tree", "notebooks", "lab/tree"):
        return "lab"
    for prefix in _PREFIXES:
        if raw.startswith(prefix):
            raw = raw[len(prefix):]
            break
    return tree_page(raw)


def tree_page(path: str) -> str:
    """The page that opens the file at ``path`` (plain, relative to the home folder) in JupyterLab."""
    return "lab/tree/" + quote(path)


def spawn_link(rest: str) -> str:
    """The launch link that opens the same page as ``/user/<old id>/<rest>`` did."""
    try:
        page = lab_path(rest.split("?", 1)[0]) if rest.startswith(_PREFIXES) else "lab"
    except BadLink:
        page = "lab"
    return "/spawn" if page == "lab" else "/spawn/" + page
