"""Scheduling: first probe at start, interval with jitter, no overlap, no head-of-line blocking."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time

import pytest

from sidecar.checks.base import Check, ProbeError, Reason
from sidecar.metrics import Metrics
from sidecar.scheduler import Scheduler
from tests.conftest import make_config


class ScriptedCheck(Check):
    """A check whose probe sleeps for `delay` seconds, then passes or fails as told."""

    def __init__(self, name: str, interval: float, timeout: float, delay: float = 0.0) -> None:
        config = make_config(
            [
                {
                    "name": name,
                    "type": "tcp",
                    "host": "127.0.0.1",
                    "port": 1,
                    "interval": interval,
                    "timeout": timeout,
                }
            ]
        ).checks[0]
        super().__init__(config, resources=None)  # type: ignore[arg-type]
        self.delay = delay
        self.fail = False
        self.starts: list[float] = []
        self.running = 0
        self.max_running = 0
        self.closed = False

    async def probe(self) -> str:
        self.starts.append(time.monotonic())
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        try:
            await asyncio.sleep(self.delay)
        finally:
            self.running -= 1
        if self.fail:
            raise ProbeError(Reason.REFUSED, "connection refused")
        return "fine"

    async def close(self) -> None:
        self.closed = True


async def run_for(scheduler: Scheduler, seconds: float) -> None:
    scheduler.start()
    try:
        await asyncio.sleep(seconds)
    finally:
        await scheduler.stop()


async def test_first_probe_at_start():
    check = ScriptedCheck("a", interval=10, timeout=1)
    scheduler = Scheduler([check], Metrics())
    started = time.monotonic()

    await run_for(scheduler, 0.1)

    assert len(check.starts) == 1
    assert check.starts[0] - started < 0.05


async def test_interval_with_jitter():
    check = ScriptedCheck("a", interval=0.1, timeout=0.05)
    scheduler = Scheduler([check], Metrics(), jitter=0.1)

    await run_for(scheduler, 1.05)

    gaps = [b - a for a, b in zip(check.starts, check.starts[1:], strict=False)]
    assert 8 <= len(check.starts) <= 12
    assert min(gaps) >= 0.09 - 0.005
    assert max(gaps) <= 0.11 + 0.05


async def test_attempts_never_overlap():
    check = ScriptedCheck("slow", interval=0.1, timeout=0.09, delay=0.2)
    scheduler = Scheduler([check], Metrics(), jitter=0)

    await run_for(scheduler, 0.6)

    assert check.max_running == 1
    assert scheduler.states["slow"].last_reason == "connect_timeout"


async def test_hung_check_delays_no_other():
    hung = ScriptedCheck("hung", interval=5, timeout=2, delay=10)
    quick = ScriptedCheck("quick", interval=0.05, timeout=0.04)
    scheduler = Scheduler([hung, quick], Metrics(), jitter=0)

    await run_for(scheduler, 0.5)

    assert len(hung.starts) == 1
    assert len(quick.starts) >= 8


async def test_stop_closes_checks():
    check = ScriptedCheck("a", interval=10, timeout=1, delay=5)
    scheduler = Scheduler([check], Metrics())

    await run_for(scheduler, 0.05)

    assert check.closed
    assert check.running == 0


async def test_start_twice_raises():
    scheduler = Scheduler([ScriptedCheck("a", interval=10, timeout=1)], Metrics())
    scheduler.start()
    try:
        with pytest.raises(RuntimeError, match="already started"):
            scheduler.start()
    finally:
        await scheduler.stop()


async def test_transitions_logged_once(caplog):
    caplog.set_level(logging.INFO, logger="sidecar")
    check = ScriptedCheck("a", interval=0.02, timeout=0.01)
    check.fail = True
    scheduler = Scheduler([check], Metrics(), jitter=0)

    await run_for(scheduler, 0.3)

    warnings = [r for r in caplog.records if r.getMessage() == "check is unhealthy"]
    assert len(check.starts) >= 5
    assert len(warnings) == 1
    assert warnings[0].reason == "refused"
    assert warnings[0].__dict__["from"] == "pending"


async def test_reason_change_logged_once(caplog):
    caplog.set_level(logging.INFO, logger="sidecar")
    check = ScriptedCheck("a", interval=0.02, timeout=0.01)
    check.fail = True
    scheduler = Scheduler([check], Metrics(), jitter=0)
    scheduler.start()
    await asyncio.sleep(0.1)

    check.delay = 0.05  # now every attempt times out
    await asyncio.sleep(0.3)
    await scheduler.stop()

    changes = [
        r
        for r in caplog.records
        if r.getMessage() == "check is still unhealthy, for another reason"
    ]
    assert len(changes) == 1
    assert changes[0].reason == "connect_timeout"


async def test_repeated_failures_counted_in_reminder(caplog):
    caplog.set_level(logging.INFO, logger="sidecar")
    check = ScriptedCheck("a", interval=0.02, timeout=0.01)
    check.fail = True
    scheduler = Scheduler([check], Metrics(), jitter=0, reminder_interval=0.2)
    scheduler.start()
    await asyncio.sleep(0.5)

    check.fail = False
    await asyncio.sleep(0.1)
    await scheduler.stop()

    reminders = [r for r in caplog.records if r.getMessage() == "check is still unhealthy"]
    recovered = [r for r in caplog.records if r.getMessage() == "check is healthy"]
    assert 1 <= len(reminders) <= 3
    assert all(r.repeated >= 3 for r in reminders)
    assert len(recovered) == 1
    assert recovered[0].failed_probes >= 10


async def test_interval_unhealthy_and_initial_delay():
    check = ScriptedCheck("a", interval=1.0, timeout=0.05)
    check.config = dataclasses.replace(check.config, interval_unhealthy=0.05, initial_delay=0.2)
    check.fail = True
    scheduler = Scheduler([check], Metrics(), jitter=0)
    started = time.monotonic()

    await run_for(scheduler, 0.6)

    assert check.starts[0] - started >= 0.2
    assert 5 <= len(check.starts) <= 10
