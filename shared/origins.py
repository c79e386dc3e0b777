"""Where each part of nbpool is served. Pure functions, no network.

A visitor controls everything their sandbox serves (they run code in it, and JupyterLab runs
the JavaScript of notebooks its server trusts). The browser keeps pages of different origins
apart, so with ``NBPOOL_ROUTING=host`` (the default) every sandbox has an origin of its own,
made from its id, and the gateway's pages, the admin and the snapshot views have others:

===========  ==========================================  ==============================
part         origin (one machine, by default)            setting
===========  ==========================================  ==============================
gateway      ``http://127.0.0.1:8000``                   ``NBPOOL_PUBLIC_URL``
admin        ``http://admin.localhost:8000``             ``NBPOOL_ADMIN_URL``
sandbox      ``http://<id>.sb.localhost:8000``           ``NBPOOL_SANDBOX_URL`` (``{id}``)
snapshot     ``http://snapshots.localhost:8000``         ``NBPOOL_SNAPSHOT_URL``
===========  ==========================================  ==============================

The snapshot views show notebooks anyone published (:mod:`nbpool.snapshots`): they carry a policy
that runs no script, and their origin sets no cookie and is none of the others. When the public
URL is not on this machine and ``NBPOOL_SNAPSHOT_URL`` is not set, snapshots are off.

Each sandbox's Jupyter server runs at base URL ``/`` and Traefik routes it by ``Host``. With
``NBPOOL_ROUTING=path`` every sandbox is ``<public URL>/user/<id>/`` on the gateway's origin, as
tmpnb did: any sandbox's page can then read every other sandbox and the admin in a visitor's
browser, so it is only for people who trust each other (snapshot views are then on that origin
too, still without scripts).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

__all__ = ["Origins", "OriginsError", "Routing", "host_of"]

Routing = Literal["host", "path"]
HostKind = Literal["public", "admin", "sandbox", "snapshot"]

_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")


class OriginsError(ValueError):
    """The public, admin, sandbox and snapshot URLs do not make separate origins (the message names the variable)."""


def host_of(netloc: str) -> str:
    """The host name of a ``Host`` header or URL netloc, lower case, without port or brackets."""
    netloc = netloc.strip().lower()
    if netloc.startswith("["):
        return netloc[1:].split("]", 1)[0]
    return netloc.rsplit(":", 1)[0] if netloc.count(":") == 1 else netloc


def _is_local(host: str) -> bool:
    if host in _LOCAL_NAMES or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _origin(url: str, variable: str) -> tuple[str, str, str]:
    """(scheme, host, port part ``:8000`` or ``""``) of an origin URL, or why it is not one."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise OriginsError(f"{variable}={url!r}: give an http(s) URL with a host, like http://127.0.0.1:8000")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username or parts.password:
        raise OriginsError(f"{variable}={url!r}: give only scheme, host and port (no path, query or user)")
    try:
        port = parts.port
    except ValueError:
        raise OriginsError(f"{variable}={url!r}: the port is not a number from 1 to 65535") from None
    return parts.scheme, parts.hostname.lower(), f":{port}" if port else ""


@dataclass(frozen=True)
class Origins:
    """The gateway's, the admin's, the sandboxes' and the snapshot views' origins (see the module
    docstring).

    Build it with :meth:`from_settings`, which checks that they are apart.
    """

    routing: Routing
    public_url: str
    admin_url: str
    sandbox_template: str  # "http://{id}.sb.localhost:8000" (host routing) or "<public>/user/{id}" (path)
    snapshot_url: str = ""  # "" when snapshots are off

    @classmethod
    def from_settings(
        cls, routing: Routing, public_url: str, sandbox_url: str = "", admin_url: str = "", snapshot_url: str = "",
    ) -> Origins:
        """Check the settings and fill in the defaults: ``sb.localhost``, ``admin.localhost`` and
        ``snapshots.localhost`` on the public URL's port when the public URL is on this machine.

        Raises :class:`OriginsError` naming the variable when a URL is malformed, the sandbox
        template has no ``{id}`` at the start of its host, or two parts would share a host.
        """
        scheme, public_host, port = _origin(public_url, "NBPOOL_PUBLIC_URL")
        public_url = f"{scheme}://{_bracket(public_host)}{port}"
        if routing == "path":
            return cls("path", public_url, public_url, public_url + "/user/{id}", public_url)
        local = _is_local(public_host)
        if not snapshot_url and local:
            snapshot_url = f"{scheme}://snapshots.localhost{port}"
        if not sandbox_url:
            if not local:
                raise OriginsError(
                    "NBPOOL_SANDBOX_URL must be set when NBPOOL_PUBLIC_URL is not on this machine, "
                    "e.g. https://{id}.nb-user.example.net (a wildcard DNS record and certificate)"
                )
            sandbox_url = f"{scheme}://{{id}}.sb.localhost{port}"
        if not admin_url:
            if not local:
                raise OriginsError("NBPOOL_ADMIN_URL must be set when NBPOOL_PUBLIC_URL is not on this machine, "
                                   "e.g. https://admin.nb.example.net")
            admin_url = f"{scheme}://admin.localhost{port}"
        if sandbox_url.count("{id}") != 1:
            raise OriginsError(f"NBPOOL_SANDBOX_URL={sandbox_url!r}: it must contain {{id}} once, "
                               "as the first label of the host: http://{id}.sb.localhost:8000")
        s_scheme, s_host, s_port = _origin(sandbox_url.replace("{id}", "x0"), "NBPOOL_SANDBOX_URL")
        if not s_host.startswith("x0.") or not sandbox_url.split("://", 1)[-1].startswith("{id}."):
            raise OriginsError(f"NBPOOL_SANDBOX_URL={sandbox_url!r}: {{id}} must be the first label of the host, "
                               "followed by the sandbox domain: http://{id}.sb.localhost:8000")
        domain = s_host[len("x0."):]
        if not all(_LABEL.match(label) for label in domain.split(".")):
            raise OriginsError(f"NBPOOL_SANDBOX_URL={sandbox_url!r}: the sandbox domain {domain!r} is not a DNS name")
        a_scheme, admin_host, a_port = _origin(admin_url, "NBPOOL_ADMIN_URL")
        for name, host in (("NBPOOL_PUBLIC_URL", public_host), ("NBPOOL_ADMIN_URL", admin_host)):
            if host == domain or host.endswith("." + domain):
                raise OriginsError(f"{name} ({host}) lies in the sandbox domain {domain} of NBPOOL_SANDBOX_URL: "
                                   "a sandbox could then serve it; choose a sandbox domain of its own")
        if (a_scheme, admin_host, a_port) == (scheme, public_host, port):
            raise OriginsError(f"NBPOOL_ADMIN_URL={admin_url!r} is the gateway's own origin (NBPOOL_PUBLIC_URL); "
                               "give the admin a host of its own, like http://admin.localhost:8000")
        if admin_host == public_host:
            raise OriginsError(f"NBPOOL_ADMIN_URL={admin_url!r} has the gateway's host; give the admin a host of its "
                               "own (Traefik tells them apart by host), like http://admin.localhost:8000")
        if snapshot_url:
            v_scheme, view_host, v_port = _origin(snapshot_url, "NBPOOL_SNAPSHOT_URL")
            if view_host in (public_host, admin_host):
                raise OriginsError(f"NBPOOL_SNAPSHOT_URL={snapshot_url!r} has the gateway's or the admin's host; "
                                   "give snapshot views a host of their own, like http://snapshots.localhost:8000")
            if view_host == domain or view_host.endswith("." + domain):
                raise OriginsError(f"NBPOOL_SNAPSHOT_URL ({view_host}) lies in the sandbox domain {domain} of "
                                   "NBPOOL_SANDBOX_URL: a sandbox could then serve it; choose a host outside it")
            snapshot_url = f"{v_scheme}://{_bracket(view_host)}{v_port}"
        return cls("host", public_url, f"{a_scheme}://{admin_host}{a_port}", f"{s_scheme}://{{id}}.{domain}{s_port}",
                   snapshot_url)

    # ---- sandboxes ----------------------------------------------------------------------

    @property
    def by_host(self) -> bool:
        """True when every sandbox has an origin of its own (``NBPOOL_ROUTING=host``)."""
        return self.routing == "host"

    @property
    def sandbox_domain(self) -> str:
        """``sb.localhost`` for ``http://{id}.sb.localhost:8000`` (host routing only)."""
        return host_of(urlsplit(self.sandbox_template.replace("{id}", "x0")).netloc)[len("x0."):]

    def base_path(self, sandbox_id: str) -> str:
        """The Jupyter server's base URL: ``/``, or ``/user/<id>/`` with path routing."""
        return "/" if self.by_host else f"/user/{sandbox_id}/"

    def sandbox_url(self, sandbox_id: str) -> str:
        """Where the sandbox's server answers for visitors, ending in ``/``."""
        return self.sandbox_template.replace("{id}", sandbox_id) + "/"

    def sandbox_netloc(self, sandbox_id: str) -> str:
        """The ``Host`` header visitors send to the sandbox (host routing: its own name and port)."""
        return urlsplit(self.sandbox_url(sandbox_id)).netloc

    def sandbox_host(self, sandbox_id: str) -> str:
        """The host name Traefik routes to the sandbox (host routing)."""
        return f"{sandbox_id}.{self.sandbox_domain}"

    # ---- telling requests apart ----------------------------------------------------------

    def kind(self, host_header: str) -> HostKind:
        """Which part a request's ``Host`` asks for. Anything unknown is the gateway's."""
        if not self.by_host:
            return "public"
        host = host_of(host_header)
        if host == host_of(urlsplit(self.admin_url).netloc):
            return "admin"
        if self.snapshot_url and host == host_of(urlsplit(self.snapshot_url).netloc):
            return "snapshot"
        if host.endswith("." + self.sandbox_domain):
            return "sandbox"
        return "public"

    def sandbox_origin_pattern(self) -> str:
        """A regular expression that matches every sandbox's origin, as browsers send it in ``Origin``."""
        scheme, rest = self.sandbox_template.split("://", 1)
        return "^" + re.escape(scheme + "://") + "[a-z0-9]{4,40}" + re.escape(rest.replace("{id}", "", 1)) + "$"

    def sandbox_source(self) -> str:
        """A CSP source expression that matches every sandbox origin (``http://*.sb.localhost:8000``)."""
        return self.sandbox_template.replace("{id}", "*")


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host
