"""The HTTP client the services use to talk to sandboxes' own servers.

A sandbox's Jupyter server sets its login cookie (``username-<address>-<port>``) on every request
it authenticates with the token, and httpx keeps every cookie it is given: a spawner polling its
claimed sessions' activity kept one per sandbox it had ever asked, for as long as it ran, and each
request walked all of them: 17 ms of CPU per request with 1000 kept, against 3 ms with none. The
services authenticate with the token on each request and never need a cookie; a sandbox's cookie
sent on to a later sandbox at the same address would be of no use either. So these clients keep
none.
"""

from __future__ import annotations

from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any

import httpx

__all__ = ["sandbox_client"]


def sandbox_client(**options: Any) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` (``options`` as for it) that accepts and sends no cookies."""
    return httpx.AsyncClient(cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])), **options)
