"""nbpool's shared library: settings, bus, message models, events, logging and the runtime interface.

Every service (``nbpool.gateway``, ``nbpool.spawner``, ``nbpool.router``, ``nbpool.culler``)
imports from here; nothing here imports a service.
"""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
