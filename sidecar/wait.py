"""The `wait` command: probe selected checks until each is healthy or a deadline passes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sidecar.app import open_checks
from sidecar.checks import Check, run_probe
from sidecar.config import Config
from sidecar.metrics import Metrics
from sidecar.report import describe
from sidecar.scheduler import Scheduler

# Retry delays start at FIRST_DELAY and grow by GROWTH per attempt, up to the smaller of the
# check's interval and the --max-delay option. A dependency that comes up is therefore
# noticed within max-delay plus one probe.
FIRST_DELAY = 0.05
GROWTH = 1.5
DEFAULT_MAX_DELAY = 0.25
# Seconds between reminders of what is still failing, on top of a line per change.
REMINDER_INTERVAL = 10.0


@dataclass(frozen=True, slots=True)
class WaitResult:
    """Whether every selected check became healthy, and the lines describing those left."""

    ready: bool
    elapsed_seconds: float
    failing: tuple[str, ...]


def retry_delay(attempt: int, interval: float, max_delay: float) -> float:
    """Return the delay before retry number `attempt` (0 for the first retry)."""
    return min(interval, max_delay, FIRST_DELAY * GROWTH**attempt)


async def wait_for_checks(
    config: Config,
    *,
    wait_seconds: float,
    max_delay: float = DEFAULT_MAX_DELAY,
    output: Callable[[str], None] = print,
) -> WaitResult:
    """Probe every check of `config` in parallel until all are healthy or `wait_seconds` pass.

    The deadline cancels probes in flight. Every failure is retried, including names that do
    not resolve yet, because a Service's DNS name appears only once its Pods are ready.
    """
    started = time.monotonic()
    async with open_checks(config, Metrics()) as scheduler:
        tasks = [
            asyncio.create_task(_until_healthy(scheduler, check, max_delay, output))
            for check in scheduler.checks.values()
        ]
        reminder = asyncio.create_task(_remind(scheduler, output))
        try:
            async with asyncio.timeout(wait_seconds):
                await asyncio.gather(*tasks)
        except TimeoutError:
            pass
        finally:
            reminder.cancel()
            for task in tasks:
                task.cancel()
            await asyncio.gather(reminder, *tasks, return_exceptions=True)

        elapsed = time.monotonic() - started
        now = time.time()
        failing = tuple(describe(s, now) for s in scheduler.states.values() if not s.is_healthy)
    return WaitResult(ready=not failing, elapsed_seconds=elapsed, failing=failing)


async def _until_healthy(
    scheduler: Scheduler, check: Check[Any], max_delay: float, output: Callable[[str], None]
) -> None:
    state = scheduler.states[check.name]
    last_reason: str | None = ""
    attempt = 0
    while True:
        began = time.monotonic()
        result = await run_probe(check)
        scheduler.record(check, result, log=False)
        if state.is_healthy:
            output(f"ready: {check.name} ({result.detail})")
            return
        if not result.ok and result.reason != last_reason:
            output(f"waiting: {check.name} {result.reason}: {result.detail}")
            last_reason = result.reason

        delay = retry_delay(attempt, check.config.interval, max_delay)
        attempt += 1
        await asyncio.sleep(max(0.0, began + delay - time.monotonic()))


async def _remind(scheduler: Scheduler, output: Callable[[str], None]) -> None:
    while True:
        await asyncio.sleep(REMINDER_INTERVAL)
        names = [s.name for s in scheduler.states.values() if not s.is_healthy]
        if names:
            output(f"still waiting for {', '.join(names)}")


def select_checks(config: Config, names: Sequence[str]) -> Config:
    """Keep only the named checks; raise ValueError naming any unknown name."""
    if not names:
        return config
    known = {check.name for check in config.checks}
    unknown = [name for name in names if name not in known]
    if unknown:
        configured = ", ".join(sorted(known))
        raise ValueError(
            f"unknown check {unknown[0]!r} in --check; configured checks: {configured}"
        )
    selected = tuple(check for check in config.checks if check.name in names)
    return Config(server=config.server, checks=selected, source=config.source)
