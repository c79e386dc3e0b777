"""Prometheus metrics of every service, served at ``/metrics`` on ``NBPOOL_METRICS_PORT``.

Each service process has its own registry (prometheus-client's default) and updates the metrics
of its part; the others stay at zero or without series. The port is never behind Traefik: the
numbers are for the operator's Prometheus, not for visitors. ``nbpool up`` gives each of its
processes a port from ``NBPOOL_METRICS_PORT`` up and writes them as a Prometheus file-based
service discovery list (``<state>/run/prometheus-targets.json``).

==============================================  =========  ===========================================
metric                                          by         what
==============================================  =========  ===========================================
``nbpool_pool_sandboxes{host,profile,state}``   spawner    sandboxes now: warm, starting, claimed
``nbpool_pool_capacity{host}``                  spawner    most sandboxes the host may run
``nbpool_claims_total{host,result}``            spawner    claims answered: claimed, none
``nbpool_claim_seconds``                        gateway    a launch's claim, asked to answered
``nbpool_launches_total{result}``               gateway    launches: ok, no_capacity
``nbpool_sessions``                             gateway    claimed sessions (all hosts)
``nbpool_hosts{state}``                         gateway    hosts live or silent
``nbpool_snapshots_total{op}``                  gateway    snapshots published, viewed (rendered or
                                                           cached), remixed, deleted
``nbpool_start_seconds{host}``                  spawner    a start, requested to warm
``nbpool_start_failures_total{host}``           spawner    starts that failed
``nbpool_culls_total{reason}``                  culler     sandboxes ended: idle, max_age, host.lost...
``nbpool_hosts_lost_total``                     culler     hosts declared lost
``nbpool_route_seconds``                        router     a route, written to answering through Traefik
``nbpool_routes``                               router     routes in Traefik's table
``nbpool_bus_retries_total{op}``                all        bus operations tried again (elections)
``nbpool_bus_errors_total{kind}``               all        disconnects, refusals, other bus errors
==============================================  =========  ===========================================
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from nbpool import logs

__all__ = [
    "BUS_ERRORS", "BUS_RETRIES", "CLAIMS", "CLAIM_SECONDS", "CULLS", "HOSTS", "HOSTS_LOST", "LAUNCHES",
    "POOL", "POOL_CAPACITY", "ROUTES", "ROUTE_SECONDS", "SESSIONS", "SNAPSHOTS", "START_FAILURES", "START_SECONDS",
    "serve",
]

log = logs.get("nbpool.metrics")

#: Latency buckets from a millisecond (a warm claim) to a minute (a cold start under load).
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

POOL = Gauge("nbpool_pool_sandboxes", "Sandboxes of a host and profile, by state", ["host", "profile", "state"])
POOL_CAPACITY = Gauge("nbpool_pool_capacity", "Most sandboxes a host may run", ["host"])
CLAIMS = Counter("nbpool_claims", "Claims a spawner answered", ["host", "result"])
CLAIM_SECONDS = Histogram("nbpool_claim_seconds", "A launch's claim, asked to answered (gateway)", buckets=_BUCKETS)
LAUNCHES = Counter("nbpool_launches", "Launches by result (gateway)", ["result"])
SESSIONS = Gauge("nbpool_sessions", "Claimed sessions on all hosts (gateway's view)")
HOSTS = Gauge("nbpool_hosts", "Sandbox hosts by state (gateway's view)", ["state"])
SNAPSHOTS = Counter("nbpool_snapshots", "Snapshots published, viewed (rendered or cached), remixed, deleted (gateway)", ["op"])
START_SECONDS = Histogram("nbpool_start_seconds", "A sandbox start, requested to warm", ["host"], buckets=_BUCKETS)
START_FAILURES = Counter("nbpool_start_failures", "Sandbox starts that failed", ["host"])
CULLS = Counter("nbpool_culls", "Sandboxes the culler ended, by reason", ["reason"])
HOSTS_LOST = Counter("nbpool_hosts_lost", "Hosts the culler declared lost")
ROUTE_SECONDS = Histogram("nbpool_route_seconds", "A route, written to answering through Traefik", buckets=_BUCKETS)
ROUTES = Gauge("nbpool_routes", "Routes in Traefik's table")
BUS_RETRIES = Counter("nbpool_bus_retries", "Bus operations tried again (a leader election, a server away)", ["op"])
BUS_ERRORS = Counter("nbpool_bus_errors", "Bus connection events: disconnects, refusals, errors", ["kind"])


def serve(port: int, host: str) -> None:
    """Serve ``/metrics`` on ``host:port`` (a thread of its own); port 0: not at all."""
    if not port:
        return
    start_http_server(port, addr=host)
    log.info("metrics served", extra={"address": f"{host}:{port}"})
