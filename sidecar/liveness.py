"""The sidecar's own health for /live: a responsive event loop and probes that keep running.

Dependencies never count here: a database outage must not make the kubelet restart Pods.
"""

from __future__ import annotations

import asyncio
import time

from sidecar.scheduler import Scheduler

# Seconds between two ticks of the loop monitor.
TICK = 0.25
# A tick that comes this many seconds late means the loop was blocked.
MAX_LAG = 1.0
# A check is stale when its last probe finished more than this many times
# (interval + timeout) ago: its task no longer runs on schedule.
STALE_FACTOR = 3.0
# Seconds a probing task stays dead, and /live fails, before it is started again.
REVIVE_AFTER = 1.0


class LoopMonitor:
    """Measures how late the event loop runs a timer, as evidence that the loop is blocked.

    Given a scheduler, it also restarts a probing task that has been dead for REVIVE_AFTER
    seconds, after /live has reported it.
    """

    def __init__(self, scheduler: Scheduler | None = None) -> None:
        self.last_tick = time.monotonic()
        # Seconds the most recent tick came late.
        self.lag = 0.0
        self._task: asyncio.Task[None] | None = None
        self._scheduler = scheduler
        self._dead_since: dict[str, float] = {}

    def start(self) -> None:
        if self._task is not None:
            raise RuntimeError("loop monitor already started")
        self.last_tick = time.monotonic()
        self._task = asyncio.create_task(self._run(), name="loop-monitor")

    async def stop(self) -> None:
        if self._task is None:
            return
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        self._task = None

    async def _run(self) -> None:
        while True:
            expected = time.monotonic() + TICK
            await asyncio.sleep(TICK)
            now = time.monotonic()
            self.lag = max(0.0, now - expected)
            self.last_tick = now
            if self._scheduler is not None:
                self._revive_dead(self._scheduler, now)

    def _revive_dead(self, scheduler: Scheduler, now: float) -> None:
        dead = set(scheduler.dead_checks())
        for name in list(self._dead_since):
            if name not in dead:
                del self._dead_since[name]
        for name in dead:
            since = self._dead_since.setdefault(name, now)
            if now - since >= REVIVE_AFTER:
                scheduler.revive(name)
                del self._dead_since[name]

    def problem(self, now: float) -> str | None:
        """Describe a blocked loop, or return None."""
        if self.lag > MAX_LAG:
            return f"event loop was blocked for {self.lag:.2f} s (limit {MAX_LAG:g} s)"
        overdue = now - self.last_tick - TICK
        if overdue > MAX_LAG:
            return f"event loop monitor is {overdue:.2f} s overdue (limit {MAX_LAG:g} s)"
        return None


def stale_checks(scheduler: Scheduler, now: float) -> list[str]:
    """Describe checks whose probes stopped finishing on schedule."""
    problems = []
    for name, check in scheduler.checks.items():
        config = check.config
        since = scheduler.last_finished.get(name) or scheduler.task_started.get(name)
        if since is None:
            continue
        period = max(config.interval, config.interval_unhealthy) + config.timeout
        limit = STALE_FACTOR * period + (
            0 if name in scheduler.last_finished else config.initial_delay
        )
        if now - since > limit:
            problems.append(
                f"{name}: no probe finished for {now - since:.1f} s (limit {limit:g} s)"
            )
    return problems


def find_problems(scheduler: Scheduler, monitor: LoopMonitor) -> list[str]:
    """Return every reason the sidecar itself is unhealthy; empty when it is live."""
    now = time.monotonic()
    problems = []
    loop_problem = monitor.problem(now)
    if loop_problem:
        problems.append(loop_problem)
    for name in scheduler.dead_checks():
        problems.append(f"{name}: probing task ended")
    problems.extend(stale_checks(scheduler, now))
    return problems
