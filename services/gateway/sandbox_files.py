"""Notebooks in and out of a sandbox, through its Jupyter server's contents API, with its token.

The gateway reaches a sandbox where the proxy does (the record's ``target``): on one machine, and
on a cluster's proxy machines, which reach every host's sandboxes. The visitor controls the server,
so whatever it answers is checked here: sizes are capped while reading, and a notebook must be
one that nbformat reads and validates.
"""

from __future__ import annotations

import json
import posixpath
from urllib.parse import quote

import httpx
import nbformat

from nbpool.clients import sandbox_client
from nbpool.models import SandboxRecord
from nbpool.notebook_paths import NOTEBOOK_PATH, BadNotebook, notebook_path

__all__ = [
    "NOTEBOOK_PATH", "BadNotebook", "NoSuchNotebook", "SandboxFiles", "SandboxUnreachable", "TooLarge", "check_notebook",
    "notebook_path",
]


class NoSuchNotebook(LookupError):
    """No file at that path in the sandbox (404)."""


class TooLarge(ValueError):
    """Larger than the limit (413)."""


class SandboxUnreachable(ConnectionError):
    """The sandbox's server did not answer as a Jupyter server should (503)."""


def check_notebook(data: bytes) -> nbformat.NotebookNode:
    """The notebook in ``data``, if nbformat reads and validates it; else :class:`BadNotebook`."""
    try:
        node: nbformat.NotebookNode = nbformat.reads(data.decode("utf-8"), as_version=4)  # type: ignore[no-untyped-call]
        nbformat.validate(node)
    except UnicodeDecodeError:
        raise BadNotebook("the file is not UTF-8 text, so not a notebook") from None
    except (json.JSONDecodeError, nbformat.reader.NotJSONError):
        raise BadNotebook("the file is not JSON, so not a notebook") from None
    except nbformat.ValidationError as err:
        raise BadNotebook(f"the file is not a valid notebook: {err.message}") from None
    except Exception as err:  # nbformat raises several kinds for documents that are no notebook at all
        raise BadNotebook(f"the file is not a valid notebook: {err}") from None
    return node


class SandboxFiles:
    """Reads and writes notebooks in sandboxes (one HTTP client for all of them)."""

    def __init__(self, timeout: float = 20.0) -> None:
        self._http = sandbox_client(timeout=timeout, follow_redirects=False, trust_env=False)

    async def close(self) -> None:
        await self._http.aclose()

    @staticmethod
    def _url(rec: SandboxRecord, path: str) -> str:
        return f"{rec.target}{rec.path}api/contents/{quote(path)}"

    @staticmethod
    def _auth(rec: SandboxRecord) -> dict[str, str]:
        return {"Authorization": f"token {rec.token}"}

    async def fetch(self, rec: SandboxRecord, path: str, max_bytes: int) -> bytes:
        """The bytes of the notebook at ``path`` (plain, see :func:`notebook_path`) in the sandbox."""
        url = self._url(rec, path)
        try:
            head = await self._http.get(url, params={"content": "0"}, headers=self._auth(rec))
            if head.status_code == 404:
                raise NoSuchNotebook(f"there is no {path} in this session (save the notebook first?)")
            if head.status_code != 200:
                raise SandboxUnreachable(f"the session's server answered {head.status_code} for {path}")
            model = head.json()
            if model.get("type") == "directory":
                raise BadNotebook(f"{path} is a folder, not a notebook")
            if isinstance(model.get("size"), int) and model["size"] > max_bytes:
                raise TooLarge(f"{path} is {model['size']} bytes; a snapshot may hold at most {max_bytes} "
                               "(NBPOOL_SNAPSHOT_MAX_BYTES): clear large outputs and try again")
            # As text, exactly as saved. The JSON answer escapes it, so it may be larger than the
            # file: the cap while reading allows for that; the file's own size is checked after.
            async with self._http.stream("GET", url, params={"type": "file", "format": "text", "content": "1"},
                                         headers=self._auth(rec)) as answer:
                if answer.status_code == 404:
                    raise NoSuchNotebook(f"there is no {path} in this session")
                if answer.status_code != 200:
                    raise SandboxUnreachable(f"the session's server answered {answer.status_code} for {path}")
                body = bytearray()
                async for chunk in answer.aiter_bytes():
                    body += chunk
                    if len(body) > 6 * max_bytes + 65536:
                        raise TooLarge(f"{path} is larger than {max_bytes} bytes (NBPOOL_SNAPSHOT_MAX_BYTES)")
            content = json.loads(bytes(body)).get("content")
        except httpx.HTTPError as err:
            raise SandboxUnreachable(f"the session's server did not answer ({err.__class__.__name__})") from None
        except ValueError as err:
            if isinstance(err, (BadNotebook, TooLarge)):
                raise
            raise SandboxUnreachable("the session's server did not answer as a Jupyter server does") from None
        if not isinstance(content, str):
            raise SandboxUnreachable("the session's server did not answer as a Jupyter server does")
        data = content.encode("utf-8")
        if len(data) > max_bytes:
            raise TooLarge(f"{path} is {len(data)} bytes; a snapshot may hold at most {max_bytes} "
                           "(NBPOOL_SNAPSHOT_MAX_BYTES): clear large outputs and try again")
        return data

    async def place(self, rec: SandboxRecord, name: str, data: bytes) -> None:
        """Write the notebook ``data`` to ``name`` in the sandbox's home folder (replacing a file there)."""
        name = posixpath.basename(name)
        try:
            answer = await self._http.put(
                self._url(rec, name), headers=self._auth(rec),
                json={"type": "file", "format": "text", "content": data.decode("utf-8")},
            )
        except httpx.HTTPError as err:
            raise SandboxUnreachable(f"the new session's server did not answer ({err.__class__.__name__})") from None
        if answer.status_code not in (200, 201):
            raise SandboxUnreachable(f"the new session's server answered {answer.status_code} when given the notebook")
