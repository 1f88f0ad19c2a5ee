"""Render check states as the text and JSON bodies of the health endpoints."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

from sidecar.state import CheckState, Status


def iso_time(timestamp: float | None) -> str | None:
    """Format a Unix time as ISO 8601 UTC with milliseconds, or None."""
    if timestamp is None:
        return None
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(timestamp))
    return f"{seconds}.{int(timestamp * 1000) % 1000:03d}Z"


def _ago(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    return f"{seconds * 1000:.0f} ms" if seconds >= 0.001 else f"{seconds * 1e6:.0f} us"


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def _last_failure(state: CheckState) -> str:
    return (
        f"{state.last_reason}: {state.last_detail} after {_duration(state.last_duration_seconds)}"
    )


def describe(state: CheckState, now: float) -> str:
    """Describe one check in one line, like the Kubernetes API server's `/readyz?verbose`."""
    suffix = "" if state.critical else " (not critical)"
    since = f"since {iso_time(state.last_change_at)}, {_ago(now - state.last_change_at)} ago"
    if state.status is Status.HEALTHY:
        if state.last_ok is False:
            return (
                f"[+]{state.name} ok{suffix}; last probe failed "
                f"({state.consecutive_failures} of {state.failure_threshold}): "
                f"{_last_failure(state)}"
            )
        return f"[+]{state.name} ok{suffix}"
    if state.status is Status.PENDING:
        if state.last_ok is None:
            return f"[-]{state.name} pending{suffix}: no probe has finished yet"
        if state.last_ok:
            return (
                f"[-]{state.name} pending{suffix}: {state.consecutive_successes} of "
                f"{state.success_threshold} successes needed"
            )
        return (
            f"[-]{state.name} pending{suffix}: {_last_failure(state)} "
            f"({state.consecutive_failures} of {state.failure_threshold} failures)"
        )
    if state.last_ok:
        return (
            f"[-]{state.name} failed{suffix}: recovering, {state.consecutive_successes} of "
            f"{state.success_threshold} successes ({since})"
        )
    return (
        f"[-]{state.name} failed{suffix}: {_last_failure(state)} "
        f"({_count(state.consecutive_failures, 'failure')} in a row, unhealthy {since})"
    )


def text_body(
    verdict_name: str,
    passed: bool,
    states: Sequence[CheckState],
    excluded: Iterable[str],
    unknown_excluded: Sequence[str],
    now: float,
    reason: str | None = None,
) -> str:
    """Build the verbose text body: one line per check, warnings, then the verdict."""
    excluded = set(excluded)
    lines = []
    for state in states:
        if state.name in excluded:
            lines.append(f"[+]{state.name} excluded: ok")
        else:
            lines.append(describe(state, now))
    if unknown_excluded:
        names = ", ".join(repr(name[:64]) for name in unknown_excluded)
        lines.append(f"warn: some checks cannot be excluded: no matches for {names}")
    verdict = "passed" if passed else "failed"
    lines.append(f"{verdict_name} check {verdict}" + (f": {reason}" if reason else ""))
    return "\n".join(lines) + "\n"


def check_json(state: CheckState, target: str) -> dict[str, Any]:
    """Build the JSON object for one check."""
    return {
        "name": state.name,
        "type": state.kind,
        "target": target,
        "status": str(state.status),
        "critical": state.critical,
        "reason": None if state.last_ok in (True, None) else state.last_reason,
        "error": None if state.last_ok in (True, None) else state.last_detail,
        "detail": state.last_detail or None,
        "last_probe": iso_time(state.last_probe_at),
        "last_success": iso_time(state.last_success_at),
        "last_failure": iso_time(state.last_failure_at),
        "last_change": iso_time(state.last_change_at),
        "duration_seconds": state.last_duration_seconds,
        "consecutive_failures": state.consecutive_failures,
        "consecutive_successes": state.consecutive_successes,
        "failure_threshold": state.failure_threshold,
        "success_threshold": state.success_threshold,
        "probes": state.probes,
    }
