"""nbpool's shared library: settings, bus, message models, events, logging and the runtime interface.

Every service (``nbpool.gateway``, ``nbpool.spawner``, ``nbpool.router``, ``nbpool.culler``)
imports from here; nothing here imports a service.
"""

from __future__ import annotations

import sys

__all__ = ["__version__"]

# httpx imports its command-line client (click, pygments, rich) whenever those are installed,
# and JupyterLab installs them. No nbpool process uses it; leaving it out saves about 2 MiB in
# each service (the control plane's memory target, docs/benchmarks.md). A None entry makes that
# one import fail, which httpx handles by going without it.
sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
# jsonschema (under nbformat, which the gateway uses to check snapshots) imports rfc3987_syntax
# when it is installed, and that builds an Earley parser at import: 2.2-2.8 s of CPU on a
# 2-core test machine, in every gateway start. It only checks the "iri" string formats, which
# no schema nbpool validates uses; jsonschema goes without them when the import fails.
sys.modules.setdefault("rfc3987_syntax", None)  # type: ignore[arg-type]

__version__ = "0.1.0"
