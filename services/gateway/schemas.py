"""The gateway API's request and response documents, and the patterns its parameters are held to."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated

from fastapi import Query
from pydantic import BaseModel, ConfigDict, Field, field_validator

from nbpool.gateway.links import lab_path
from nbpool.gateway.sandbox_files import NOTEBOOK_PATH, notebook_path
from nbpool.snapshots import SNAPSHOT_ID

__all__ = [
    "RELATIVE_PATH", "SESSION_ID", "ProfileQuery", "RequestBody", "SessionCreated", "SessionInfo", "SessionRequest", "SnapshotCreated",
    "SnapshotInfo", "SnapshotRequest", "Stats", "UrlPathQuery", "iso",
]

#: A session (sandbox) id, as a path parameter.
SESSION_ID = r"^[a-z0-9]{4,40}$"
# What links.lab_path accepts, for the OpenAPI document (the check itself is lab_path's, in Python).
RELATIVE_PATH = r"^(?!//)(?!.*://)(?!(.*/)?\.\.(/|$))[^\x00-\x1f\x7f\\]*$"
ProfileQuery = Annotated[str | None, Query(description="a configured profile")]
UrlPathQuery = Annotated[str | None, Query(description="the page to open, in any of the link forms",
                                           max_length=1024, json_schema_extra={"pattern": RELATIVE_PATH})]


def iso(ts: float | None) -> str | None:
    """A Unix time as ISO 8601 in UTC (``...Z``)."""
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


class RequestBody(BaseModel):
    """A JSON request body: its fields and JSON's types as the document states them, nothing else
    (pydantic's lax mode would read `true` as 1 and "5" as 5: the fuzzer's stateful phase found a
    launch with `{"wait": true}` accepted)."""

    model_config = ConfigDict(extra="forbid", strict=True)


class SessionRequest(RequestBody):
    """What a launch may ask for. Every field is optional."""

    profile: str | None = Field(default=None, description="a configured profile; the default profile if absent")
    path: str = Field(default="", max_length=1024, description="a file or folder to open, relative to the home folder",
                      json_schema_extra={"pattern": RELATIVE_PATH})
    snapshot: str | None = Field(default=None, description="a snapshot's id: the session starts with a copy of its "
                                 "notebook, opened (remix)", json_schema_extra={"pattern": SNAPSHOT_ID})
    wait: float | None = Field(
        default=None, ge=0,
        description="seconds to wait in line for a sandbox, at most NBPOOL_MAX_WAIT (the document's maximum). When "
                    "none is warm, or others are waiting, the request waits in the same first-come-first-served line "
                    "as browsers and is answered when its turn comes; past the wait, 503 with its `position`. Closing "
                    "the connection leaves the line. Absent: up to the claim timeout (NBPOOL_CLAIM_TIMEOUT) for sandboxes that "
                    "are starting, and 503 at once when every sandbox is in use.")

    @field_validator("snapshot")
    @classmethod
    def _snapshot_id(cls, value: str | None) -> str | None:
        if value is not None and not re.match(SNAPSHOT_ID, value):
            raise ValueError("not a snapshot id (16 hexadecimal digits, from its view_url or remix_url)")
        return value

    @field_validator("path")
    @classmethod
    def _relative_path(cls, value: str) -> str:
        lab_path(value)  # raises BadLink (a ValueError) with what is wrong
        return value.strip("/")


class SnapshotRequest(RequestBody):
    """Which notebook of the session to publish."""

    path: str = Field(max_length=1024, description="the notebook, relative to the session's home folder",
                      json_schema_extra={"pattern": NOTEBOOK_PATH, "examples": ["Welcome.ipynb"]})

    @field_validator("path")
    @classmethod
    def _notebook(cls, value: str) -> str:
        return notebook_path(value)  # raises BadNotebook (a ValueError) with what is wrong


class SnapshotInfo(BaseModel):
    id: str
    name: str = Field(description="the notebook's file name")
    created: str = Field(description="ISO 8601, UTC")
    expires_at: str = Field(description="when it is deleted (ISO 8601, UTC)")
    size: int = Field(description="bytes")
    view_url: str = Field(description="the read-only view, on the snapshot origin: share this")
    remix_url: str = Field(description="opens a fresh session with a copy of the notebook")
    notebook_url: str = Field(description="the .ipynb itself")


class SnapshotCreated(SnapshotInfo):
    delete_token: str = Field(description="deletes the snapshot (DELETE /snapshots/{id}); shown only now")


class SessionCreated(BaseModel):
    id: str
    url: str = Field(description="opens JupyterLab (or Notebook 7, for a profile with \"ui\": \"notebook\"); carries the token")
    token: str
    expires_at: str | None = Field(description="when the session ends if left idle (ISO 8601, UTC)")
    profile: str
    kernel_id: str | None = Field(
        default=None, description="a kernel already running in the server (the Welcome notebook's), ready for code"
    )


class SessionInfo(BaseModel):
    id: str
    state: str
    profile: str
    created: str | None
    claimed: str | None
    last_activity: str | None
    expires_at: str | None
    url: str


class Stats(BaseModel):
    available: int = Field(description="warm sandboxes ready to hand out")
    capacity: int = Field(description="sandboxes the spawners may run at most")
    in_use: int
    starting: int
    waiting: int
    spawners: int
    healthy_spawners: int
    profiles: dict[str, dict[str, int]]
