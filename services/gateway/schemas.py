"""The gateway API's request and response documents, and the patterns its parameters are held to."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import Query
from pydantic import BaseModel, ConfigDict, Field, field_validator

from nbpool.gateway.links import lab_path

__all__ = [
    "RELATIVE_PATH", "SESSION_ID", "ProfileQuery", "SessionCreated", "SessionInfo", "SessionRequest", "Stats",
    "UrlPathQuery", "iso",
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


class SessionRequest(BaseModel):
    """What a launch may ask for. Every field is optional."""

    model_config = ConfigDict(extra="forbid")

    profile: str | None = Field(default=None, description="a configured profile; the default profile if absent")
    path: str = Field(default="", max_length=1024, description="a file or folder to open, relative to the home folder",
                      json_schema_extra={"pattern": RELATIVE_PATH})

    @field_validator("path")
    @classmethod
    def _relative_path(cls, value: str) -> str:
        lab_path(value)  # raises BadLink (a ValueError) with what is wrong
        return value.strip("/")


class SessionCreated(BaseModel):
    id: str
    url: str = Field(description="opens JupyterLab; carries the token")
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
