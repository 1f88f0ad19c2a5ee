"""One task per check: probe at start, then every interval with jitter, and record results."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sidecar.checks import Check, CheckResult, run_probe
from sidecar.config import CheckConfig
from sidecar.metrics import Metrics
from sidecar.state import CheckState, Status, Transition, has_started, is_ready

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ConfigChange:
    """Names of the checks a new config added, changed and removed."""

    added: tuple[str, ...]
    changed: tuple[str, ...]
    removed: tuple[str, ...]


# Each wait between probes is the interval times a random factor in [1 - JITTER, 1 + JITTER],
# so the Pods of a Deployment started together do not probe a shared dependency in step.
JITTER = 0.1
# Seconds between log lines about a check that keeps failing for the same reason.
REMINDER_INTERVAL = 300.0


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
        factory: Callable[[CheckConfig], Check[Any]] | None = None,
        reminder_interval: float = REMINDER_INTERVAL,
    ) -> None:
        self.checks = {check.name: check for check in checks}
        # Builds a check from its config when apply() adds or changes one.
        self.factory = factory
        self.metrics = metrics
        self._jitter = jitter
        self._wall_clock = wall_clock
        self._running = False
        self.states = {check.name: self._new_state(check) for check in checks}
        # The verdicts for all checks, kept current by _update_overall().
        self.ready = False
        self.started = False
        # Monotonic times each check's task started and its last probe finished; /live
        # reads them.
        self.task_started: dict[str, float] = {}
        self.last_finished: dict[str, float] = {}
        self._logged_reason: dict[str, str | None] = {}
        # Per check: when its last failure was logged, and how many went unlogged since.
        self._last_logged: dict[str, tuple[float, int]] = {}
        self._outage_failures: dict[str, int] = {}
        self.reminder_interval = reminder_interval
        self._tasks: dict[str, asyncio.Task[None]] = {}
        for check in checks:
            metrics.add_check(check.name, check.config.kind)
        self._update_overall()

    def _new_state(self, check: Check[Any]) -> CheckState:
        return CheckState(
            check.name,
            check.config.kind,
            critical=check.config.critical,
            failure_threshold=check.config.failure_threshold,
            success_threshold=check.config.success_threshold,
            created_at=self._wall_clock(),
        )

    def start(self) -> None:
        """Start one probing task per check. Raises RuntimeError if already started."""
        if self._running:
            raise RuntimeError("scheduler already started; call stop() before start()")
        self._running = True
        for check in self.checks.values():
            self._start_task(check)
        logger.info("probing started", extra={"checks": len(self.checks)})

    def _start_task(self, check: Check[Any]) -> None:
        name = check.name
        self.task_started[name] = time.monotonic()
        self._tasks[name] = asyncio.create_task(self._run(check), name=f"check:{name}")

    async def stop(self, grace: float = 5.0) -> None:
        """Cancel the probing tasks, wait up to `grace` seconds, then close every check."""
        self._running = False
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

    async def apply(self, configs: Sequence[CheckConfig]) -> ConfigChange:
        """Switch to a new list of checks; needs `factory`.

        A check whose config is unchanged keeps its state, counters, task and open
        connections. Removed and changed checks are stopped and closed; new and changed
        ones start pending and, if the scheduler runs, are probed at once.
        """
        if self.factory is None:
            raise RuntimeError("apply() needs a factory; pass factory= to Scheduler()")
        build = self.factory
        old_checks, old_states = self.checks, self.states
        wanted = {config.name for config in configs}
        removed = [name for name in old_checks if name not in wanted]
        added: list[str] = []
        changed: list[str] = []
        checks: dict[str, Check[Any]] = {}
        states: dict[str, CheckState] = {}
        for config in configs:
            current = old_checks.get(config.name)
            if current is not None and current.config == config:
                checks[config.name] = current
                states[config.name] = old_states[config.name]
                continue
            (changed if current is not None else added).append(config.name)
            checks[config.name] = build(config)
            states[config.name] = self._new_state(checks[config.name])

        for name in removed + changed:
            await self._retire(old_checks[name])
        # NOTE: both dicts are replaced whole, never mutated, so a request handler that
        # iterates the old ones while this coroutine awaits sees a consistent set.
        self.checks, self.states = checks, states
        for name in added + changed:
            self.metrics.add_check(name, checks[name].config.kind)
            if self._running:
                self._start_task(checks[name])
        self._update_overall()
        return ConfigChange(tuple(added), tuple(changed), tuple(removed))

    async def _retire(self, check: Check[Any]) -> None:
        task = self._tasks.pop(check.name, None)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await self._close(check)
        self.metrics.remove_check(check.name, check.config.kind)
        self.last_finished.pop(check.name, None)
        self.task_started.pop(check.name, None)
        self._logged_reason.pop(check.name, None)
        self._last_logged.pop(check.name, None)
        self._outage_failures.pop(check.name, None)

    def dead_checks(self) -> list[str]:
        """Return the names of checks whose probing task has ended, which is a bug."""
        return [name for name, task in self._tasks.items() if task.done()]

    def revive(self, name: str) -> None:
        """Log why a check's probing task ended and start a new one; keeps the state."""
        task = self._tasks.get(name)
        if task is None or not task.done() or not self._running:
            return
        error = None if task.cancelled() else task.exception()
        logger.error(
            "probing task ended; starting it again",
            exc_info=error,
            extra={"check": name, "cancelled": task.cancelled()},
        )
        self._start_task(self.checks[name])

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
        config = check.config
        state = self.states[check.name]
        if config.initial_delay:
            await asyncio.sleep(config.initial_delay)
        while True:
            started = time.monotonic()
            result = await run_probe(check)
            self.record(check, result)

            interval = config.interval if state.is_healthy else config.interval_unhealthy
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

        if not result.ok:
            self._outage_failures[name] = self._outage_failures.get(name, 0) + 1
        if transition is not None:
            metrics.check_up.labels(name, kind).set(1 if state.is_healthy else 0)
            metrics.check_transitions.labels(name, kind, str(transition.current)).inc()
            self._update_overall()
            if log:
                self._log_transition(transition)
            if state.is_healthy:
                self._outage_failures[name] = 0
        elif log and state.status is Status.UNHEALTHY and not result.ok:
            self._log_repeat(state, result)
        return transition

    def _log_transition(self, transition: Transition) -> None:
        self._logged_reason[transition.check] = transition.reason
        self._last_logged[transition.check] = (time.monotonic(), 0)
        fields: dict[str, Any] = {
            "check": transition.check,
            "type": transition.kind,
            "from": str(transition.previous),
            "to": str(transition.current),
            "reason": transition.reason,
            "detail": transition.detail,
            "previous_seconds": round(transition.previous_seconds, 3),
        }
        if transition.current is Status.HEALTHY:
            if transition.previous is Status.UNHEALTHY:
                fields["failed_probes"] = self._outage_failures.get(transition.check, 0)
            logger.info("check is healthy", extra=fields)
        else:
            logger.warning("check is unhealthy", extra=fields)

    def _log_repeat(self, state: CheckState, result: CheckResult) -> None:
        """Log a failure of an unhealthy check when its reason changed, or as a reminder.

        Identical failures in between are only counted, and the count goes into the next
        line as `repeated`.
        """
        name = state.name
        now = time.monotonic()
        last_at, repeated = self._last_logged.get(name, (now, 0))
        reason_changed = self._logged_reason.get(name) != result.reason
        if not reason_changed and now - last_at < self.reminder_interval:
            self._last_logged[name] = (last_at, repeated + 1)
            return
        self._logged_reason[name] = result.reason
        self._last_logged[name] = (now, 0)
        message = (
            "check is still unhealthy, for another reason"
            if reason_changed
            else "check is still unhealthy"
        )
        logger.warning(
            message,
            extra={
                "check": name,
                "type": state.kind,
                "reason": result.reason,
                "detail": result.detail,
                "repeated": repeated,
                "consecutive_failures": state.consecutive_failures,
            },
        )

    def _update_overall(self) -> None:
        # NOTE: every change of a state's status or of the set of checks must end here, so
        # that the cached verdicts, which /ready reads without a query, stay true.
        self.ready = self.is_ready()
        self.started = self.has_started()
        self.metrics.ready.set(1 if self.ready else 0)
        self.metrics.started.set(1 if self.started else 0)

    async def _close(self, check: Check[Any]) -> None:
        try:
            await check.close()
        except Exception:
            logger.exception("closing the check failed", extra={"check": check.name})
