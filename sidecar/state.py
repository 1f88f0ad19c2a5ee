"""Per-check state, the threshold rules and the readiness verdict. Pure: no I/O, no clock."""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol


class Status(enum.StrEnum):
    PENDING = "pending"
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"


class ProbeOutcome(Protocol):
    """Fields of one probe result that the state reads."""

    @property
    def ok(self) -> bool: ...
    @property
    def reason(self) -> str | None: ...
    @property
    def detail(self) -> str: ...
    @property
    def duration_seconds(self) -> float: ...


@dataclass(frozen=True, slots=True)
class Transition:
    """A check changed status. `previous_seconds` is how long the previous status lasted."""

    check: str
    kind: str
    previous: Status
    current: Status
    reason: str | None
    detail: str
    previous_seconds: float


class CheckState:
    """The status of one check, driven by consecutive probe results.

    A pending or healthy check turns unhealthy after `failure_threshold` consecutive failures;
    a pending or unhealthy check turns healthy after `success_threshold` consecutive
    successes. These are the kubelet's probe semantics, so pending counts as not ready.
    """

    def __init__(
        self,
        name: str,
        kind: str,
        *,
        critical: bool = True,
        failure_threshold: int = 1,
        success_threshold: int = 1,
        created_at: float = 0.0,
    ) -> None:
        self.name = name
        self.kind = kind
        self.critical = critical
        self.failure_threshold = failure_threshold
        self.success_threshold = success_threshold
        self.status = Status.PENDING
        self.consecutive_failures = 0
        self.consecutive_successes = 0
        self.probes = 0
        self.last_ok: bool | None = None
        self.last_reason: str | None = None
        self.last_detail = ""
        self.last_duration_seconds: float | None = None
        # Wall-clock timestamps (seconds since the epoch) for people; None until it happens.
        self.last_probe_at: float | None = None
        self.last_success_at: float | None = None
        self.last_failure_at: float | None = None
        self.last_change_at = created_at
        # True once the check has been healthy; it never turns false again.
        self.has_been_healthy = False

    @property
    def is_healthy(self) -> bool:
        return self.status is Status.HEALTHY

    def record(self, outcome: ProbeOutcome, now: float) -> Transition | None:
        """Apply one probe result at wall time `now`; return the transition it caused, if any."""
        self.probes += 1
        self.last_ok = outcome.ok
        self.last_reason = outcome.reason
        self.last_detail = outcome.detail
        self.last_duration_seconds = outcome.duration_seconds
        self.last_probe_at = now
        if outcome.ok:
            self.consecutive_successes += 1
            self.consecutive_failures = 0
            self.last_success_at = now
            turned = self.consecutive_successes >= self.success_threshold
            target = Status.HEALTHY
        else:
            self.consecutive_failures += 1
            self.consecutive_successes = 0
            self.last_failure_at = now
            turned = self.consecutive_failures >= self.failure_threshold
            target = Status.UNHEALTHY

        if not turned or self.status is target:
            return None
        transition = Transition(
            check=self.name,
            kind=self.kind,
            previous=self.status,
            current=target,
            reason=outcome.reason,
            detail=outcome.detail,
            previous_seconds=max(0.0, now - self.last_change_at),
        )
        self.status = target
        self.last_change_at = now
        if target is Status.HEALTHY:
            self.has_been_healthy = True
        return transition


def is_ready(states: Iterable[CheckState], exclude: Iterable[str] = ()) -> bool:
    """Return True when every critical check, apart from `exclude`, is healthy."""
    excluded = set(exclude)
    return all(s.is_healthy for s in states if s.critical and s.name not in excluded)


def has_started(states: Iterable[CheckState], exclude: Iterable[str] = ()) -> bool:
    """Return True when every critical check, apart from `exclude`, has been healthy once."""
    excluded = set(exclude)
    return all(s.has_been_healthy for s in states if s.critical and s.name not in excluded)
