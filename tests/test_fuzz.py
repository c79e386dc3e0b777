"""The gateway's API against its own OpenAPI document, fuzzed by schemathesis on a live nbpool.

Every phase (examples, coverage, fuzzing, stateful: launch, read, end, read again) and every
check: no 5xx, every status and content type and body as documented, invalid input refused,
valid input accepted. Bounded in examples and time; 429s from the rate limit and 503s from a
full pool are documented answers, not failures.
"""

from __future__ import annotations

import collections
import json
import subprocess
from pathlib import Path
from typing import Any

from cluster import BIN, Cluster


def test_the_api_keeps_its_documented_contract(make_cluster: Any, tmp_path: Path) -> None:
    cluster: Cluster = make_cluster(
        # A launch that waits in line is held up to its `wait`: at most 2 s here (the document's maximum).
        {"NBPOOL_POOL_SIZE": "2", "NBPOOL_MAX_SANDBOXES": "4", "NBPOOL_CLAIM_TIMEOUT": "1", "NBPOOL_MAX_WAIT": "2",
         "NBPOOL_IDLE_TIMEOUT": "60"},
        warm=2,
    )
    report = tmp_path / "report"
    # A 503 with Retry-After is the documented answer when every sandbox is taken: the fuzzer
    # launches thousands of sessions into a pool of four.
    config = tmp_path / "schemathesis.toml"
    config.write_text('[checks.not_a_server_error]\nexpected-statuses = ["2xx", "3xx", "4xx", 503]\n')
    run = subprocess.run(
        [str(BIN / "schemathesis"), "--config-file", str(config), "run", f"{cluster.url}/openapi.json",
         "--checks", "all", "--phases", "examples,coverage,fuzzing,stateful",
         "--max-examples", "40", "--max-time", "240", "--workers", "1", "--seed", "20261202",
         "--request-timeout", "30", "--max-redirects", "0", "--no-color",
         "--report", "ndjson", "--report-dir", str(report)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,  # its cache stays out of the checkout
    )
    statuses = _statuses(report)
    summary = f"{sum(statuses.values())} requests: {dict(sorted(statuses.items()))}"
    print(summary)
    assert run.returncode == 0, f"{summary}\n{run.stdout[-12000:]}\n{run.stderr[-3000:]}\n{cluster.logs()}"
    assert sum(statuses.values()) > 200, summary
    assert not [code for code in statuses if code >= 500 and code != 503], summary


def _statuses(report: Path) -> collections.Counter[int]:
    """Status codes of every response the fuzzer got, from its event log."""
    counts: collections.Counter[int] = collections.Counter()
    for path in report.glob("*.ndjson"):
        for line in path.read_text().splitlines():
            _count(json.loads(line), counts)
    return counts


def _count(node: Any, counts: collections.Counter[int]) -> None:
    # The event log nests interactions; every response has a status_code.
    if isinstance(node, dict):
        if isinstance(node.get("response"), dict) and isinstance(node["response"].get("status_code"), int):
            counts[node["response"]["status_code"]] += 1
        for value in node.values():
            _count(value, counts)
    elif isinstance(node, list):
        for value in node:
            _count(value, counts)
