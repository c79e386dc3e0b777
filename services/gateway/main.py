"""``nbpool-gateway``: serves :func:`nbpool.gateway.app.create_app` with uvicorn."""

from __future__ import annotations

import uvicorn

from nbpool.gateway.app import create_app
from nbpool.service import configure
from nbpool.settings import GatewaySettings


def main() -> None:
    settings = configure("gateway", GatewaySettings)
    uvicorn.run(
        create_app(settings),
        host=settings.gateway_host,
        port=settings.gateway_port,
        log_config=None,
        access_log=False,
        loop="uvloop",
        http="httptools",
        proxy_headers=False,  # the client address is taken from X-Real-Ip set by Traefik (see app.client_of)
        timeout_graceful_shutdown=5,
        # Longer than Traefik's idle time for backend connections (90 s): with uvicorn's 5 s
        # default, Traefik reused connections uvicorn was closing and answered 502 (make bench).
        timeout_keep_alive=120,
    )


if __name__ == "__main__":
    main()
