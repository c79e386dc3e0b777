"""Where a service spends its time while a figure is measured: py-spy samples, summed by function.

``bench/run.py --profile`` wraps the phases where a target can be missed (claims at the highest
concurrency, the route table growing) in :func:`sampling`, which runs ``py-spy record`` on the
given service processes for as long as the phase lasts. Each profile is summarised as the
functions with the most samples on top of the stack (*self*: where the CPU goes) and in the
stack (*inclusive*: which call paths are expensive), written to ``docs/profiles/`` beside the
collapsed stacks themselves (``*.collapsed``, for flame graph tools).

Sampling costs the service a little CPU of its own (py-spy reads its memory from outside, at
``rate`` samples a second), so figures measured under ``--profile`` are not the published ones.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from common import progress, py_spy

__all__ = ["sampling", "summarize"]


@contextlib.contextmanager
def sampling(pids: dict[str, int], out_dir: Path, label: str, rate: int = 500, enabled: bool = True) -> Iterator[None]:
    """Sample each process in ``pids`` while the block runs; summaries go to ``out_dir/<label>-<name>.txt``."""
    spy = py_spy() if enabled else None
    if spy is None:
        if enabled:
            progress("py-spy not found: install the bench extra (pip install -e '.[bench]') to profile")
        yield
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    running: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}
    for name, pid in pids.items():
        raw = out_dir / f".{label}-{name}.raw"
        proc = subprocess.Popen(
            # --gil: only the thread holding the GIL, i.e. Python code running, not threads blocked in C.
            [spy, "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw", "--output", str(raw),
             "--nonblocking", "--gil"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        running[name] = (proc, raw)
    time.sleep(1.0)  # py-spy takes a moment to attach; what it misses would not be sampled
    try:
        yield
    finally:
        for name, (proc, raw) in running.items():
            proc.send_signal(signal.SIGINT)  # py-spy writes what it has on Ctrl-C
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if raw.exists():
                # Several spans with one label add up (say, the rounds of one concurrency).
                collapsed = out_dir / f"{label}-{name}.collapsed"
                with open(collapsed, "a") as f:
                    f.write(raw.read_text())
                raw.unlink()
                text = summarize(collapsed.read_text(), f"{label}: {name}, py-spy at {rate} samples/s; stacks in {collapsed.name}")
                (out_dir / f"{label}-{name}.txt").write_text(text)
                progress(f"profile written: {out_dir / f'{label}-{name}.txt'}")


def summarize(collapsed: str, title: str, top: int = 25) -> str:
    """The functions with the most samples, on top of the stack and anywhere in it."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    idle = total = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        leaf = frames[-1]
        if "select (selectors.py" in leaf or "_worker (concurrent/futures/thread.py" in stack:
            idle += n
            continue
        own[leaf] += n
        for frame in set(frames):
            inclusive[frame] += n
    busy = max(1, total - idle)
    lines = [f"# {title}", f"# {total} samples, {total - idle} busy ({(total - idle) / max(1, total):.0%}); shares below are of busy samples", "",
             "## self (where the CPU goes)"]
    lines += [f"{c / busy:6.1%}  {f}" for f, c in own.most_common(top)]
    lines += ["", "## inclusive (expensive call paths)"]
    lines += [f"{c / busy:6.1%}  {f}" for f, c in inclusive.most_common(top * 2)]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(summarize(Path(sys.argv[1]).read_text(), sys.argv[1]))
