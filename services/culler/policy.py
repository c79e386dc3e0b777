"""The cull decision. A pure function: record, activity and time in, verdict out."""

from __future__ import annotations

from dataclasses import dataclass

from nbpool.models import Activity, SandboxRecord, State

__all__ = ["CullPolicy", "Verdict", "decide", "expires_at"]


@dataclass(frozen=True)
class CullPolicy:
    """When sandboxes end.

    - ``idle_timeout``: a claimed sandbox with no activity for this long.
    - ``max_age``: a claimed sandbox this long after it was claimed, busy or not.
    - ``pool_max_age``: a warm, unclaimed sandbox this long after it turned warm (recycled, so
      the pool never hands out a server that has sat for hours).
    - ``unopened_timeout``: a claimed sandbox that nobody has used since the claim (a link
      preview, a crawler, a launch whose visitor went away): no request reached its server.
    """

    idle_timeout: float
    max_age: float
    pool_max_age: float
    unopened_timeout: float = float("inf")


@dataclass(frozen=True)
class Verdict:
    """``end`` says whether to end the sandbox, ``reason`` why (idle, max_age, recycle, unopened)."""

    end: bool
    reason: str = ""


KEEP = Verdict(False)


def decide(rec: SandboxRecord, activity: Activity | None, now: float, policy: CullPolicy) -> Verdict:
    """Whether ``rec`` should end now.

    Activity is what the sandbox's own server reports (API requests, kernel messages, a busy
    kernel). The claim itself counts as activity: a visitor who just arrived is not idle, even if
    the server sat in the pool for a while before.
    """
    if rec.state == State.WARM:
        warm_since = rec.warm_at or rec.created_at
        if now - warm_since > policy.pool_max_age:
            return Verdict(True, "recycle")
        return KEEP
    if rec.state != State.CLAIMED or rec.claimed_at is None:
        return KEEP
    if now - rec.claimed_at > policy.max_age:
        return Verdict(True, "max_age")
    opened = activity is not None and (activity.last_activity > rec.claimed_at or activity.connections > 0)
    if not opened and now - rec.claimed_at > policy.unopened_timeout:
        return Verdict(True, "unopened")
    last = rec.claimed_at
    if activity is not None:
        if activity.busy_kernels:
            last = max(last, activity.at)
        last = max(last, activity.last_activity)
    if now - last > policy.idle_timeout:
        return Verdict(True, "idle")
    return KEEP


def expires_at(rec: SandboxRecord, activity: Activity | None, policy: CullPolicy) -> float | None:
    """When ``rec`` will be ended if nothing more happens: the earlier of idle and maximum age."""
    if rec.claimed_at is None:
        return None
    last = rec.claimed_at if activity is None else max(rec.claimed_at, activity.last_activity)
    return min(rec.claimed_at + policy.max_age, last + policy.idle_timeout)
