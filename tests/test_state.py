"""Table-driven tests of check state: thresholds, transitions, latches and the verdicts."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from sidecar.state import CheckState, Status, Transition, has_started, is_ready

P, H, U = Status.PENDING, Status.HEALTHY, Status.UNHEALTHY


@dataclass(frozen=True)
class Outcome:
    """The fields of a probe result that CheckState reads."""

    ok: bool
    reason: str | None = None
    detail: str = ""
    duration_seconds: float = 0.01


PASS = Outcome(ok=True, detail="HTTP 200")
FAIL = Outcome(ok=False, reason="refused", detail="connection refused")


def outcomes(results: str) -> list[Outcome]:
    """Turn a string such as "++-" into outcomes: "+" passes, "-" fails."""
    return [PASS if mark == "+" else FAIL for mark in results]


def make_state(
    results: str = "",
    *,
    name: str = "mysql",
    critical: bool = True,
    failure_threshold: int = 1,
    success_threshold: int = 1,
) -> CheckState:
    """Create a state that has recorded `results`, one per second from time 1."""
    state = CheckState(
        name,
        "mysql",
        critical=critical,
        failure_threshold=failure_threshold,
        success_threshold=success_threshold,
    )
    for second, outcome in enumerate(outcomes(results), start=1):
        state.record(outcome, float(second))
    return state


def test_pending_until_the_first_result() -> None:
    state = make_state()

    assert state.status is P
    assert not state.is_healthy
    assert state.probes == 0
    assert state.last_ok is None
    assert state.last_probe_at is None
    assert not state.has_been_healthy


@pytest.mark.parametrize(
    ("failure_threshold", "success_threshold", "results", "statuses"),
    [
        pytest.param(1, 1, "+", [H], id="first success"),
        pytest.param(1, 1, "-", [U], id="first failure"),
        pytest.param(1, 1, "+-+-", [H, U, H, U], id="thresholds of 1 follow each result"),
        pytest.param(3, 1, "+--", [H, H, H], id="failures below threshold keep healthy"),
        pytest.param(3, 1, "+---", [H, H, H, U], id="third consecutive failure flips"),
        pytest.param(
            3, 1, "+--+--+--+", [H] * 10, id="alternating below failure threshold never flips"
        ),
        pytest.param(3, 1, "+--+---", [H, H, H, H, H, H, U], id="a success resets the count"),
        pytest.param(3, 1, "--", [P, P], id="pending stays pending below failure threshold"),
        pytest.param(3, 1, "---", [P, P, U], id="pending turns unhealthy at failure threshold"),
        pytest.param(1, 3, "++", [P, P], id="pending needs success_threshold successes"),
        pytest.param(1, 3, "+++", [P, P, H], id="pending turns healthy at success threshold"),
        pytest.param(1, 3, "++-+++", [P, P, U, U, U, H], id="a failure resets the successes"),
        pytest.param(2, 2, "+-+-+-", [P] * 6, id="alternating from pending stays pending"),
        pytest.param(2, 2, "++-+-+-", [P, H, H, H, H, H, H], id="alternating keeps healthy"),
        pytest.param(1, 2, "-+-+-", [U] * 5, id="alternating keeps unhealthy"),
        pytest.param(1, 2, "-++", [U, U, H], id="unhealthy needs success_threshold successes"),
        pytest.param(2, 2, "++--++", [P, H, H, U, U, H], id="full cycle"),
    ],
)
def test_thresholds(
    failure_threshold: int, success_threshold: int, results: str, statuses: list[Status]
) -> None:
    state = make_state(failure_threshold=failure_threshold, success_threshold=success_threshold)

    seen = []
    for second, outcome in enumerate(outcomes(results), start=1):
        state.record(outcome, float(second))
        seen.append(state.status)

    assert seen == statuses


def test_counters_and_last_result() -> None:
    state = make_state(failure_threshold=5)

    state.record(PASS, 10.0)
    state.record(FAIL, 12.0)
    state.record(
        Outcome(ok=False, reason="timeout", detail="no answer", duration_seconds=2.0), 15.0
    )

    assert state.probes == 3
    assert state.consecutive_failures == 2
    assert state.consecutive_successes == 0
    assert state.last_ok is False
    assert (state.last_reason, state.last_detail) == ("timeout", "no answer")
    assert state.last_duration_seconds == 2.0
    assert (state.last_probe_at, state.last_success_at, state.last_failure_at) == (15.0, 10.0, 15.0)


@pytest.mark.parametrize(
    ("thresholds", "steps", "transitions"),
    [
        pytest.param(
            (1, 1),
            [("+", 103.0), ("+", 105.0), ("-", 110.0), ("-", 111.0), ("+", 114.5)],
            [(P, H, 3.0), None, (H, U, 7.0), None, (U, H, 4.5)],
            id="thresholds of 1",
        ),
        pytest.param(
            (2, 2),
            [("+", 101.0), ("+", 102.0), ("-", 130.0), ("-", 131.0), ("+", 140.0), ("+", 141.0)],
            [None, (P, H, 2.0), None, (H, U, 29.0), None, (U, H, 10.0)],
            id="thresholds of 2 count from the last change",
        ),
        pytest.param(
            (1, 1),
            [("+", 99.0)],
            [(P, H, 0.0)],
            id="clock before creation gives zero",
        ),
    ],
)
def test_transitions(
    thresholds: tuple[int, int],
    steps: list[tuple[str, float]],
    transitions: list[tuple[Status, Status, float] | None],
) -> None:
    failure_threshold, success_threshold = thresholds
    state = CheckState(
        "orders-api",
        "http",
        failure_threshold=failure_threshold,
        success_threshold=success_threshold,
        created_at=100.0,
    )

    returned = [state.record(outcomes(mark)[0], now) for mark, now in steps]

    assert [
        None if t is None else (t.previous, t.current, t.previous_seconds) for t in returned
    ] == transitions


def test_transition_carries_the_outcome() -> None:
    state = CheckState("orders-api", "http", created_at=100.0)
    state.record(PASS, 101.0)

    transition = state.record(FAIL, 160.0)

    assert transition == Transition(
        check="orders-api",
        kind="http",
        previous=H,
        current=U,
        reason="refused",
        detail="connection refused",
        previous_seconds=59.0,
    )
    assert state.last_change_at == 160.0


def test_no_transition_leaves_last_change_alone() -> None:
    state = CheckState("orders-api", "http", failure_threshold=3, created_at=100.0)
    state.record(PASS, 101.0)

    state.record(FAIL, 102.0)
    state.record(FAIL, 103.0)

    assert state.last_change_at == 101.0


@pytest.mark.parametrize(
    ("results", "has_been_healthy"),
    [
        ("", False),
        ("---", False),
        ("+", True),
        ("+-", True),
        ("+---", True),
        ("--+-", True),
    ],
)
def test_has_been_healthy_latch(results: str, has_been_healthy: bool) -> None:
    state = make_state(results)

    assert state.has_been_healthy is has_been_healthy


# Each state in the verdict tables: (name, critical, results with thresholds of 1).
StateSpec = tuple[str, bool, str]


def make_states(specs: list[StateSpec]) -> list[CheckState]:
    return [make_state(results, name=name, critical=critical) for name, critical, results in specs]


@pytest.mark.parametrize(
    ("specs", "exclude", "ready"),
    [
        pytest.param([("mysql", True, "+"), ("orders", True, "-+")], [], True, id="all healthy"),
        pytest.param([("mysql", True, "+"), ("orders", True, "+-")], [], False, id="one down"),
        pytest.param([("mysql", True, "+"), ("orders", True, "")], [], False, id="one pending"),
        pytest.param(
            [("mysql", True, "+"), ("cache", False, "-")], [], True, id="non-critical down"
        ),
        pytest.param(
            [("mysql", True, "+"), ("cache", False, "")], [], True, id="non-critical pending"
        ),
        pytest.param(
            [("mysql", True, "+"), ("orders", True, "-")], ["orders"], True, id="down excluded"
        ),
        pytest.param(
            [("mysql", True, "-"), ("orders", True, "+")], ["orders"], False, id="other excluded"
        ),
        pytest.param([("mysql", True, "-")], ["no-such-check"], False, id="unknown exclude"),
        pytest.param([("cache", False, "-")], [], True, id="only non-critical checks"),
        pytest.param([], [], True, id="no checks"),
    ],
)
def test_is_ready(specs: list[StateSpec], exclude: list[str], ready: bool) -> None:
    states = make_states(specs)

    assert is_ready(states, exclude=exclude) is ready


@pytest.mark.parametrize(
    ("specs", "exclude", "started"),
    [
        pytest.param([("mysql", True, "+")], [], True, id="healthy"),
        pytest.param([("mysql", True, "+-")], [], True, id="unhealthy after being healthy"),
        pytest.param([("mysql", True, "+--+-")], [], True, id="flapping after being healthy"),
        pytest.param([("mysql", True, "")], [], False, id="pending"),
        pytest.param([("mysql", True, "---")], [], False, id="never healthy"),
        pytest.param(
            [("mysql", True, "+-"), ("orders", True, "-")], [], False, id="one never healthy"
        ),
        pytest.param(
            [("mysql", True, "+"), ("cache", False, "-")], [], True, id="non-critical ignored"
        ),
        pytest.param(
            [("mysql", True, "+"), ("orders", True, "-")], ["orders"], True, id="excluded"
        ),
    ],
)
def test_has_started(specs: list[StateSpec], exclude: list[str], started: bool) -> None:
    states = make_states(specs)

    assert has_started(states, exclude=exclude) is started


def test_started_survives_unhealthy_check() -> None:
    state = make_state("+")

    state.record(FAIL, 10.0)

    assert state.status is U
    assert not is_ready([state])
    assert has_started([state])
