"""A sandbox's Jupyter server: ``python -m <this module> ARGS`` is ``jupyter server ARGS`` without
the imports a temporary server pays for and never uses.

In the notebook image it is the module ``nbpool_sandbox_server`` (start-notebook.sh runs it);
the process runtime runs it as ``nbpool.sandbox_server``. Only the server process is changed:
kernels are processes of their own and import what they like.

What it leaves out, each measured in the image with ``python -X importtime`` (2-core machine):

- ``rfc3987_syntax``: jupyter_events validates its event schemas with jsonschema, and jsonschema
  imports rfc3987_syntax when it is installed, which builds an Earley parser at import: 2.0 s of
  the server's 3.1 s of imports, and most of a sandbox's start (start to answering 3.3 s, then
  1.4 s). It only checks the "iri" and "iri-reference" string formats, which no Jupyter event
  schema uses; jsonschema goes without them when the import fails, which a ``None`` entry in
  ``sys.modules`` makes it do.

And what it does not log: traitlets leaves an application's logger at DEBUG and drops records
below ``log_level`` at the handler, so each ``log.debug`` call (several per request and per
kernel message) still builds its record first. py-spy in a sandbox, visitors opening a kernel
websocket and running ``1+1`` one after another: 11% of the server's busy samples were in
``logging``, a third of them debug records nobody saw. The logger here drops them itself.
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["main"]

#: Modules the server must not import (see the module docstring).
LEFT_OUT = ("rfc3987_syntax",)


def main() -> None:
    for name in LEFT_OUT:
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]
    from jupyter_server.serverapp import ServerApp as JupyterServerApp

    class ServerApp(JupyterServerApp):
        """Jupyter's server (same name: same logger and configuration section), its logger at ``log_level``."""

        def initialize(self, *args: Any, **kwargs: Any) -> None:
            super().initialize(*args, **kwargs)
            self.log.setLevel(self.log_level)

    sys.exit(ServerApp.launch_instance())


if __name__ == "__main__":
    main()
