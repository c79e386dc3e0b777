"""Which page of the new server a launch link opens. Pure functions, no network.

tmpnb-era, JupyterLab-era and Notebook 7-era links all work. Each is read as a page in
JupyterLab's terms (:func:`lab_path`), and the profile's UI (:func:`ui_page`) says where that
page is in the server:

============================================  ===================  ==========================
link                                          page                 ``"ui": "notebook"`` opens
============================================  ===================  ==========================
``/spawn``                                    ``lab``              ``tree`` (the file list)
``/spawn/lab/tree/<path>``                    ``lab/tree/<path>``  see below
``/spawn/notebooks/<path>``                   ``lab/tree/<path>``
``/spawn/tree/<path>``                        ``lab/tree/<path>``
``/spawn/edit/<path>``                        ``lab/tree/<path>``
``/spawn/<path>`` (tmpnb)                     ``lab/tree/<path>``
``/spawn?urlpath=<any of the above forms>``   the same
============================================  ===================  ==========================

In Jupyter Notebook 7 (a profile's ``"ui": "notebook"``), ``lab/tree/<path>`` is
``notebooks/<path>`` for a notebook (``.ipynb``), ``edit/<path>`` for another file (a name with
a suffix) and ``tree/<path>`` otherwise (a folder's listing; Notebook sends a file there to its
own page). A path that does not exist still opens JupyterLab, or Notebook's notebook or
editor page, which says the file is missing; Notebook's ``tree/<path>`` answers 404.
"""

from __future__ import annotations

import re
from urllib.parse import quote, unquote

__all__ = ["BadLink", "lab_path", "spawn_link", "tree_page", "ui_page"]

_PREFIXES = ("lab/tree/", "notebooks/", "tree/", "edit/", "lab/workspaces/")
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
    if raw in ("", "lab", "tree", "notebooks", "edit", "lab/tree"):
        return "lab"
    for prefix in _PREFIXES:
        if raw.startswith(prefix):
            raw = raw[len(prefix):]
            break
    return tree_page(raw)


def tree_page(path: str) -> str:
    """The page that opens the file at ``path`` (plain, relative to the home folder) in JupyterLab."""
    return "lab/tree/" + quote(path)


def ui_page(page: str, ui: str) -> str:
    """Where ``page`` (``lab`` or ``lab/tree/<path>``, as :func:`lab_path` gives it) is in ``ui``
    (a profile's: ``lab``, JupyterLab, or ``notebook``, Jupyter Notebook 7)."""
    if ui == "lab":
        return page
    if ui != "notebook":
        raise ValueError(f"no such UI {ui!r}: lab or notebook")
    if page == "lab":
        return "tree"
    path = page.removeprefix("lab/tree/")
    name = path.rsplit("/", 1)[-1]
    if name.endswith(".ipynb"):
        return "notebooks/" + path
    return ("edit/" if "." in name.strip(".") else "tree/") + path


def spawn_link(rest: str) -> str:
    """The launch link that opens the same page as ``/user/<old id>/<rest>`` did."""
    try:
        page = lab_path(rest.split("?", 1)[0]) if rest.startswith(_PREFIXES) else "lab"
    except BadLink:
        page = "lab"
    return "/spawn" if page == "lab" else "/spawn/" + page
