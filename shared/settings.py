"""Settings of every service, read from ``NBPOOL_*`` environment variables.

One class per service, all sharing :class:`CommonSettings`. Defaults work on one machine;
:func:`load` validates at start-up and exits with a message that names the bad variable.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import sys
from pathlib import Path
from typing import Literal, TypeVar

from pydantic import BaseModel, Field, PrivateAttr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from nbpool import busauth
from nbpool.busauth import Credentials
from nbpool.notebook_paths import BadNotebook, notebook_path
from nbpool.origins import Origins, OriginsError, Routing
from nbpool.sandbox_config import EmbedOriginsError, parse_embed_origins

__all__ = [
    "CommonSettings",
    "CullerSettings",
    "GatewaySettings",
    "Profile",
    "RouterSettings",
    "SettingsError",
    "SpawnerSettings",
    "load",
]


class SettingsError(Exception):
    """A setting has a value nbpool cannot run with."""


class Profile(BaseModel):
    """A kind of sandbox visitors can ask for (``POST /sessions {"profile": ...}``)."""

    model_config = {"extra": "forbid"}

    description: str = "Python 3 with JupyterLab"
    pool_size: int | None = Field(default=None, ge=0, description="warm sandboxes per spawner; default NBPOOL_POOL_SIZE")
    image: str | None = Field(default=None, description="container image (docker runtime)")
    runtime: str | None = Field(
        default=None, pattern=r"^[a-z][a-z0-9_.-]{0,40}$",
        description="the Docker runtime of its containers, e.g. runsc (gVisor); default the engine's (runc)",
    )
    content: str | None = Field(
        default=None, min_length=1, max_length=1000,
        description="a folder, or a local git repository as PATH@REF: its files (and requirements.txt, apt.txt) "
                    "become the profile's image, nbpool/profile-<name>, built on `image` or the notebook image",
    )
    start: str | None = Field(
        default=None,
        description="the notebook that opens first and whose kernel is pre-started (relative to the home folder)",
    )
    ui: Literal["lab", "notebook"] = Field(
        default="lab",
        description="what links open: lab (JupyterLab) or notebook (Jupyter Notebook 7's single-document pages, "
                    "which load faster); both are in every sandbox, and a visitor can switch",
    )

    @field_validator("start")
    @classmethod
    def _start_is_a_notebook(cls, value: str | None) -> str | None:
        try:
            return None if value is None else notebook_path(value)
        except BadNotebook as err:
            raise ValueError(f"start {value!r}: {err}; give a notebook (.ipynb) relative to the home folder, "
                             "without '..'") from None

    def image_of(self, name: str) -> str | None:
        """The image this profile's sandboxes run: its content image, ``image``, or None (the default)."""
        return f"nbpool/profile-{name}:latest" if self.content is not None else self.image

    def prestart_of(self, default: str) -> str | None:
        """The notebook whose kernel is pre-started: ``start``; else ``default`` unless the content
        replaces the home (a content profile without ``start`` pre-starts nothing)."""
        return self.start if self.start is not None else (default if self.content is None else None)


class CommonSettings(BaseSettings):
    """Settings every service reads."""

    model_config = SettingsConfigDict(env_prefix="NBPOOL_", extra="ignore")

    instance: str = Field(default="nbpool", pattern=r"^[a-z][a-z0-9_]{0,30}$")
    nats_url: str = "nats://127.0.0.1:4222"
    nats_credentials: Path | None = Field(
        default=None, description="folder of <role>.password files (nbpool.busauth); unset: connect without credentials",
    )
    public_url: str = Field(default="http://127.0.0.1:8000", description="the gateway's origin, as visitors reach it")
    routing: Routing = Field(default="host", description="host: each sandbox on its own origin; path: one origin (trusted users only)")
    sandbox_url: str = Field(default="", description="each sandbox's origin, with {id}; default http://{id}.sb.localhost:<port>")
    admin_url: str = Field(default="", description="the admin's origin; default http://admin.localhost:<port>")
    snapshot_url: str = Field(
        default="", description="the snapshot views' origin; default http://snapshots.localhost:<port> on one machine, else off",
    )
    embed_origins: str = Field(
        default="*",
        description="pages that may use a sandbox they hold the token of (CORS, websockets, framing): "
                    "* (any), none, or origins separated by spaces or commas",
    )
    environment: Literal["development", "production"] = "development"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["text", "json"] = "text"
    profiles: dict[str, Profile] = Field(default_factory=lambda: {"default": Profile()})
    default_profile: str = "default"
    state_dir: Path = Path(".nbpool")
    static_offload: bool = Field(
        default=False, description="serve JupyterLab's static files from the gateway behind Traefik, not from each sandbox"
    )
    idle_timeout: float = Field(default=600.0, gt=0)
    max_age: float = Field(default=7200.0, gt=0)
    metrics_port: int = Field(default=0, ge=0, le=65535, description="where /metrics is served (Prometheus); 0: not served")
    metrics_host: str = Field(default="127.0.0.1", description="the address /metrics listens on")
    bus_replicas: int = Field(default=1, ge=1, le=5, description="servers that keep each bucket and stream (3 in a cluster)")
    host_timeout: float = Field(
        default=8.0, gt=0, le=300,
        description="seconds without a spawner's heartbeat before its host is lost (no claims, sessions ended)",
    )
    _origins: Origins = PrivateAttr()

    @field_validator("profiles")
    @classmethod
    def _profile_names(cls, value: dict[str, Profile]) -> dict[str, Profile]:
        if not value:
            raise ValueError("at least one profile is needed")
        for name in value:
            if not name or not name.replace("-", "").replace("_", "").isalnum() or len(name) > 40:
                raise ValueError(f"profile name {name!r}: use letters, digits, '-' and '_' (40 at most)")
            if value[name].content is not None and not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,39}", name):
                raise ValueError(f"profile name {name!r}: a profile with content names its image "
                                 "nbpool/profile-<name>, so use lower case letters, digits, '-' and '_', "
                                 "beginning with a letter or digit")
        return value

    @field_validator("embed_origins")
    @classmethod
    def _embed_origins(cls, value: str) -> str:
        try:
            origins = parse_embed_origins(value)
        except EmbedOriginsError as err:
            raise ValueError(str(err)) from None
        return "*" if origins is None else " ".join(origins) or "none"

    @property
    def embed_origin_list(self) -> tuple[str, ...] | None:
        """The origins of NBPOOL_EMBED_ORIGINS; None: any page."""
        return parse_embed_origins(self.embed_origins)

    @model_validator(mode="after")
    def _default_profile_exists(self) -> CommonSettings:
        if self.default_profile not in self.profiles:
            raise ValueError(
                f"NBPOOL_DEFAULT_PROFILE={self.default_profile!r} is not one of NBPOOL_PROFILES "
                f"({', '.join(sorted(self.profiles))})"
            )
        self.state_dir = self.state_dir.expanduser().resolve()
        try:
            self._origins = Origins.from_settings(
                self.routing, self.public_url.rstrip("/"), self.sandbox_url, self.admin_url, self.snapshot_url.rstrip("/"))
        except OriginsError as err:
            raise ValueError(str(err)) from None
        self.public_url = self._origins.public_url
        self.admin_url = self._origins.admin_url
        self.sandbox_url = self._origins.sandbox_template
        self.snapshot_url = self._origins.snapshot_url
        return self

    def bus_credentials(self, role: str) -> Credentials | None:
        """How ``role`` logs in to NATS: from ``NBPOOL_NATS_CREDENTIALS``, else none (anonymous).

        The operator (the ``nbpool`` command) also finds the folder ``nbpool up`` made in the state folder.
        """
        folder = self.nats_credentials
        if folder is None and role == busauth.OPERATOR and (self.state_dir / "bus" / f"{role}.password").exists():
            folder = self.state_dir / "bus"
        if folder is None:
            return None
        try:
            return busauth.load(folder.expanduser(), role)
        except busauth.CredentialsError as err:
            raise SettingsError(str(err)) from None

    @property
    def origins(self) -> Origins:
        """Where the gateway, the admin and each sandbox are served (checked at start-up)."""
        return self._origins


class GatewaySettings(CommonSettings):
    """The gateway's settings (HTTP API and pages)."""

    gateway_host: str = "127.0.0.1"
    gateway_port: int = Field(default=8001, ge=1, le=65535)
    admin_token: str = ""
    claim_timeout: float = Field(default=10.0, ge=0, description="how long a launch waits for a starting sandbox")
    max_wait: float = Field(default=300.0, ge=0, le=3600.0,
                            description="the longest `wait` a POST /sessions may ask for, in seconds")
    rate_limit: float = Field(default=60.0, gt=0, description="launches per minute per client")
    # Well below a spawner's capacity (NBPOOL_MAX_SANDBOXES, 20): one client cannot take the pool at once.
    rate_burst: int = Field(default=5, ge=1)
    max_sessions_per_client: int = Field(
        default=30, ge=1, description="live sessions one client address may hold (a class of 30 behind one NAT)"
    )
    max_body_bytes: int = Field(default=16_384, ge=256)
    trusted_proxies: list[str] = Field(default_factory=lambda: ["127.0.0.1", "::1"])
    admin_session_ttl: float = Field(default=8 * 3600.0, gt=0, le=24 * 3600.0, description="seconds an admin sign-in lasts")
    snapshot_max_bytes: int = Field(default=5 * 1024 * 1024, ge=1024, le=64 * 1024 * 1024,
                                    description="the largest notebook a snapshot may hold")
    snapshot_ttl: float = Field(default=30 * 86400.0, ge=5, le=3650 * 86400.0, description="seconds a snapshot lives")
    snapshot_budget: int = Field(default=1024**3, ge=1024 * 1024,
                                 description="bytes all snapshots together may take on the bus (each bus node keeps a copy)")
    snapshot_rate: float = Field(default=10.0, gt=0, description="snapshots per minute per client")
    binder_specs: dict[str, str] = Field(
        default_factory=dict,
        description="Binder launches (/build, /v2): pattern of <provider>/<spec> (* any characters) -> profile; "
                    "the first that matches decides",
    )
    binder_refuse_unknown: bool = Field(
        default=False, description="refuse Binder specs no NBPOOL_BINDER_SPECS pattern matches (else: the default profile)",
    )

    @model_validator(mode="after")
    def _binder_profiles_exist(self) -> GatewaySettings:
        for pattern, profile in self.binder_specs.items():
            if profile not in self.profiles:
                raise ValueError(f"NBPOOL_BINDER_SPECS: {pattern!r} names the profile {profile!r}, which is not one of "
                                 f"NBPOOL_PROFILES ({', '.join(sorted(self.profiles))})")
            if not pattern or len(pattern) > 512 or any(ord(ch) < 32 for ch in pattern):
                raise ValueError(f"NBPOOL_BINDER_SPECS: {pattern!r} is not a pattern (1-512 printable characters)")
        return self

    @model_validator(mode="after")
    def _admin_token_outside_development(self) -> GatewaySettings:
        if self.environment == "production" and len(self.admin_token) < 16:
            raise ValueError("NBPOOL_ADMIN_TOKEN must be set (16 characters or more) when NBPOOL_ENVIRONMENT=production")
        if self.snapshot_max_bytes > self.snapshot_budget:
            raise ValueError(f"NBPOOL_SNAPSHOT_MAX_BYTES ({self.snapshot_max_bytes}) is larger than NBPOOL_SNAPSHOT_BUDGET "
                             f"({self.snapshot_budget}): no snapshot could be stored")
        return self


class SpawnerSettings(CommonSettings):
    """The spawner's settings (warm pool, runtime, activity polling)."""

    spawner_id: str = Field(default_factory=lambda: socket.gethostname().split(".")[0] or "spawner")
    runtime: Literal["process", "docker"] = "process"
    pool_size: int = Field(default=3, ge=0)
    max_sandboxes: int = Field(default=20, ge=1)
    #: Starts in flight. A start is CPU-bound (the Jupyter server's and kernel's start-up): more
    #: starts at once than cores only makes each slower (make bench's fill group, docs/benchmarks.md).
    spawn_concurrency: int = Field(default_factory=lambda: max(2, os.cpu_count() or 2), ge=1)
    refill_delay: float = Field(default=1.0, ge=0, description="seconds refills wait after a burst of claims")
    start_timeout: float = Field(default=60.0, gt=0)
    heartbeat_interval: float = Field(default=2.0, gt=0)
    activity_interval: float = Field(default=3.0, gt=0)
    jupyter_command: str = Field(default=f"{sys.executable} -m nbpool.sandbox_server", description="process runtime")
    process_address: str = Field(
        default="127.0.0.1", description="process runtime: where servers listen (in a cluster, an address the proxy tier reaches)",
    )
    prestart_kernel: bool = Field(default=True, description="start the notebook's kernel while the sandbox is pooled")
    prestart_notebook: str = Field(default="Welcome.ipynb", description="the notebook whose session is pre-started")
    remove_on_stop: bool = Field(default=False, description="end this spawner's sandboxes when it stops")
    docker_image: str = Field(default="nbpool/notebook:latest", description="docker runtime: the sandbox image")
    docker_network: str = Field(default="", description="docker runtime: bridge network; default <instance>-sandboxes")
    docker_egress: bool = Field(default=False, description="docker runtime: may sandboxes reach beyond the host")
    docker_memory: str = Field(default="512m", pattern=r"^[0-9]+[bkmg]?$", description="docker runtime: memory limit")
    docker_disk: str = Field(
        default="1g", pattern=r"^[0-9]+[bkmg]?$",
        description="docker runtime: what a sandbox may write (its home, on tmpfs: counts as memory too)",
    )
    docker_cpus: float = Field(default=1.0, gt=0, description="docker runtime: CPU limit")
    docker_pids: int = Field(default=256, ge=16, description="docker runtime: process limit")
    docker_start_cpu_shares: int = Field(
        default=128, ge=2, le=1024,
        description="docker runtime: CPU shares of a starting sandbox, against 1024 once ready (1024: no difference)",
    )
    docker_workers: int = Field(default=8, ge=1, description="docker runtime: Docker API calls at a time")
    docker_timeout: float = Field(default=30.0, gt=0, description="docker runtime: seconds per Docker API call")
    docker_subnet: str = Field(
        default="", description="docker runtime: the sandbox network's subnet (CIDR); in a cluster, one per host, routed to it",
    )
    proxy_sources: list[str] = Field(
        default_factory=list,
        description="docker runtime, in a cluster: the proxy tier's addresses (CIDR) allowed in to the sandboxes' port",
    )

    @field_validator("docker_subnet")
    @classmethod
    def _subnet(cls, value: str) -> str:
        if value:
            try:
                ipaddress.ip_network(value)
            except ValueError as err:
                raise ValueError(f"not a network in CIDR form ({err})") from None
        return value

    @field_validator("proxy_sources")
    @classmethod
    def _sources(cls, value: list[str]) -> list[str]:
        for source in value:
            try:
                ipaddress.ip_network(source, strict=False)
            except ValueError as err:
                raise ValueError(f"{source!r} is not an address or network in CIDR form ({err})") from None
        return value

    @property
    def network(self) -> str:
        """The Docker network sandboxes join."""
        return self.docker_network or f"{self.instance}-sandboxes"

    @model_validator(mode="after")
    def _beats_within_host_timeout(self) -> SpawnerSettings:
        if self.host_timeout < 2 * self.heartbeat_interval:
            raise ValueError(
                f"NBPOOL_HOST_TIMEOUT ({self.host_timeout:g} s) must be at least twice NBPOOL_HEARTBEAT_INTERVAL "
                f"({self.heartbeat_interval:g} s): one late heartbeat must not lose a host"
            )
        return self

    @field_validator("spawner_id")
    @classmethod
    def _spawner_id(cls, value: str) -> str:
        cleaned = "".join(c if c.isalnum() or c in "-_" else "-" for c in value)
        if not cleaned:
            raise ValueError("NBPOOL_SPAWNER_ID must contain letters or digits")
        return cleaned

    def pool_target(self, profile: str) -> int:
        """Warm sandboxes this spawner keeps for ``profile``."""
        size = self.profiles[profile].pool_size
        return self.pool_size if size is None else size


class RouterSettings(CommonSettings):
    """The router's settings (Traefik file provider)."""

    proxy_url: str = "http://127.0.0.1:8000"
    gateway_url: str = Field(default="http://127.0.0.1:8001", description="comma-separated for several gateways")
    route_check_timeout: float = Field(default=30.0, gt=0)
    proxy_compress: bool = Field(
        default=True,
        description="Traefik compresses the text sandboxes serve (zstd, else gzip, as the browser accepts): "
                    "JupyterLab's 5.3 MB first load comes over the network as 1.5 MB",
    )

    @property
    def gateway_urls(self) -> list[str]:
        return [url.strip().rstrip("/") for url in self.gateway_url.split(",") if url.strip()]

    @property
    def dynamic_dir(self) -> Path:
        """The folder Traefik's file provider watches."""
        return self.state_dir / "traefik" / "dynamic"


class CullerSettings(CommonSettings):
    """The culler's settings (when to end sandboxes)."""

    pool_max_age: float = Field(default=3600.0, gt=0)
    cull_interval: float = Field(default=5.0, gt=0)
    unopened_timeout: float = Field(default=120.0, gt=0, description="seconds a claimed session may go unopened")


_S = TypeVar("_S", bound=CommonSettings)


def load(cls: type[_S]) -> _S:
    """Read settings from the environment, or exit with a message naming each bad variable."""
    try:
        return cls()
    except ValidationError as err:
        lines = []
        for problem in err.errors():
            where = "_".join(str(part) for part in problem["loc"]).upper()
            name = f"NBPOOL_{where}" if where else "settings"
            lines.append(f"  {name}: {problem['msg']}")
        raise SettingsError("invalid settings:\n" + "\n".join(lines)) from None
