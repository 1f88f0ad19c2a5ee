"""One task per check: probe at start, then every interval with jitter, and record results."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

from sidecar.checks import Check, CheckResult, run_probe
from sidecar.metrics import Metrics
from sidecar.state import CheckState, Status, Transition, has_started, is_ready

logger = logging.getLogger(__name__)

# Each wait between probes is the interval times a random factor in [1 - JITTER, 1 + JITTER],
# so the Pods of a Deployment started together do not probe a shared dependency in step.
JITTER = 0.1


class Scheduler:
    """Runs every check on its own schedule and keeps their states and metrics.

    Each check has one task, so two attempts of one check never overlap, and a probe that
    hangs costs its own timeout without delaying any other check.
    """

    def __init__(
        self,
        checks: Sequence[Check[Any]],
        metrics: Metrics,
        *,
        jitter: float = JITTER,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.checks = {check.name: check for check in checks}
        self.metrics = metrics
        self._jitter = jitter
        self._wall_clock = wall_clock
        now = wall_clock()
        self.states = {
            check.name: CheckState(
                check.name,
                check.config.kind,
                critical=check.config.critical,
                failure_threshold=check.config.failure_threshold,
                success_threshold=check.config.success_threshold,
                created_at=now,
            )
            for check in checks
        }
        # Monotonic time each check's last probe finished; /live reads it.
        self.last_finished: dict[str, float] = {}
        self._logged_reason: dict[str, str | None] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        for check in checks:
            metrics.add_check(check.name, check.config.kind)
        self._update_overall()

    def start(self) -> None:
        """Start one probing task per check. Raises RuntimeError if already started."""
        if self._tasks:
            raise RuntimeError("scheduler already started; call stop() before start()")
        for name, check in self.checks.items():
            self._tasks[name] = asyncio.create_task(self._run(check), name=f"check:{name}")
        logger.info("probing started", extra={"checks": len(self.checks)})

    async def stop(self, grace: float = 5.0) -> None:
        """Cancel the probing tasks, wait up to `grace` seconds, then close every check."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace)
            if pending:
                logger.error("probing tasks did not stop in time", extra={"tasks": len(pending)})
        self._tasks.clear()
        await asyncio.gather(*(self._close(check) for check in self.checks.values()))
        if tasks:
            logger.info("probing stopped")

    def dead_checks(self) -> list[str]:
        """Return the names of checks whose probing task has ended, which is a bug."""
        return [name for name, task in self._tasks.items() if task.done()]

    def is_ready(self, exclude: Sequence[str] = ()) -> bool:
        return is_ready(self.states.values(), exclude)

    def has_started(self, exclude: Sequence[str] = ()) -> bool:
        return has_started(self.states.values(), exclude)

    async def run_once(self) -> dict[str, CheckResult]:
        """Probe every check once, concurrently; record the results without logging them."""
        checks = list(self.checks.values())
        results = await asyncio.gather(*(run_probe(check) for check in checks))
        for check, result in zip(checks, results, strict=True):
            self.record(check, result, log=False)
        return {check.name: result for check, result in zip(checks, results, strict=True)}

    async def _run(self, check: Check[Any]) -> None:
        interval = check.config.interval
        while True:
            started = time.monotonic()
            result = await run_probe(check)
            self.record(check, result)

            delay = interval * random.uniform(1 - self._jitter, 1 + self._jitter)
            await asyncio.sleep(max(0.0, started + delay - time.monotonic()))

    def record(
        self, check: Check[Any], result: CheckResult, *, log: bool = True
    ) -> Transition | None:
        """Apply a probe result to the check's state and metrics, and log a transition."""
        name, kind = check.name, check.config.kind
        state = self.states[name]
        transition = state.record(result, self._wall_clock())
        self.last_finished[name] = time.monotonic()

        metrics = self.metrics
        metrics.check_duration.labels(name, kind).observe(result.duration_seconds)
        outcome = "success" if result.ok else str(result.reason)
        metrics.check_probes.labels(name, kind, outcome).inc()
        metrics.check_consecutive_failures.labels(name, kind).set(state.consecutive_failures)
        if result.ok:
            metrics.check_last_success.labels(name, kind).set(state.last_success_at or 0)
        logger.debug(
            "probe finished",
            extra={
                "check": name,
                "type": kind,
                "ok": result.ok,
                "reason": result.reason,
                "detail": result.detail,
                "duration_seconds": round(result.duration_seconds, 6),
            },
        )

        if transition is not None:
            metrics.check_up.labels(name, kind).set(1 if state.is_healthy else 0)
            metrics.check_transitions.labels(name, kind, str(transition.current)).inc()
            self._update_overall()
            if log:
                self._log_transition(transition)
        elif log and state.status is Status.UNHEALTHY and not result.ok:
            self._log_reason_change(state, result)
        return transition

    def _log_transition(self, transition: Transition) -> None:
        self._logged_reason[transition.check] = transition.reason
        fields = {
            "check": transition.check,
            "type": transition.kind,
            "from": str(transition.previous),
            "to": str(transition.current),
            "reason": transition.reason,
            "detail": transition.detail,
            "previous_seconds": round(transition.previous_seconds, 3),
        }
        if transition.current is Status.HEALTHY:
            logger.info("check is healthy", extra=fields)
        else:
            logger.warning("check is unhealthy", extra=fields)

    def _log_reason_change(self, state: CheckState, result: CheckResult) -> None:
        if self._logged_reason.get(state.name) == result.reason:
            return
        self._logged_reason[state.name] = result.reason
        logger.warning(
            "check is still unhealthy, for another reason",
            extra={
                "check": state.name,
                "type": state.kind,
                "reason": result.reason,
                "detail": result.detail,
            },
        )

    def _update_overall(self) -> None:
        self.metrics.ready.set(1 if self.is_ready() else 0)
        self.metrics.started.set(1 if self.has_started() else 0)

    async def _close(self, check: Check[Any]) -> None:
        try:
            await check.close()
        except Exception:
            logger.exception("closing the check failed", extra={"check": check.name})
