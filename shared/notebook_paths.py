"""Paths of notebooks in a sandbox's home folder, as visitors and operators give them.

One check for all of them: a notebook to publish (``POST /sessions/{id}/snapshots``), a page to
open, a profile's ``start`` notebook. Pure, and cheap to import (settings use it).
"""

from __future__ import annotations

import re

__all__ = ["NOTEBOOK_PATH", "BadNotebook", "notebook_path"]

_CONTROL = re.compile(r"[\x00-\x1f\x7f\\]")
#: What a notebook path may look like, for the OpenAPI document (the check is notebook_path's).
NOTEBOOK_PATH = r"^(?!/)(?!.*://)(?!(.*/)?\.\.(/|$))[^\x00-\x1f\x7f\\]*[^/\x00-\x1f\x7f\\]\.ipynb$"


class BadNotebook(ValueError):
    """Not a path to a notebook, or not a valid notebook (422); the message says which."""


def notebook_path(path: str) -> str:
    """``path`` made plain (``a/./b.ipynb`` -> ``a/b.ipynb``), or :class:`BadNotebook` saying why not."""
    if _CONTROL.search(path):
        raise BadNotebook("the path must not contain control characters or backslashes")
    if len(path) > 1024:
        raise BadNotebook("the path is longer than 1024 characters")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise BadNotebook("the path must not contain '..'")
    if path.startswith("/") or "://" in path:
        raise BadNotebook("give the notebook's path relative to the home folder, like Welcome.ipynb")
    if not path.endswith(".ipynb") or not re.fullmatch(NOTEBOOK_PATH, path):
        raise BadNotebook("only notebooks (a path ending in <name>.ipynb) can be published")
    return "/".join(parts)
