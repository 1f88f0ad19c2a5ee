"""Process helpers shared by the test servers."""

from __future__ import annotations

import time
from pathlib import Path


def wait_for_stop(pid: int, timeout: float = 5.0) -> None:
    """Wait until every thread of `pid` is in the stopped state ('T' in /proc)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = []
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                stat = (task / "stat").read_text()
            except OSError:
                continue
            states.append(stat.rsplit(")", 1)[1].split()[0])
        if states and all(state in ("T", "t") for state in states):
            return
        time.sleep(0.005)
    raise RuntimeError(f"mariadbd pid {pid} did not stop within {timeout}s")
