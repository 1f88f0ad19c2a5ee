"""Fault matrix: every check kind against the faults that apply to it, through /ready/<check>.

Each scenario serves the sidecar with one check (interval 0.3 s, timeout 0.2 s), waits until
it is healthy, injects a fault, measures the time until `/ready/<check>` answers 503 and the
reason it reports, clears the fault and measures the time until it answers 200 again. The
open file descriptors and asyncio tasks of the test process must be back where they were.

The measured times are collected in a table, printed at the end of the module (visible with
`-s`) and written as JSON to `fault-matrix.json` in pytest's base temporary directory, or to
the path in the environment variable FAULT_MATRIX_JSON.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import SidecarServer, make_config
from tests.servers.dns import Answer, CName, NXDomain, ScriptedDNSServer, ServFail, Silent
from tests.servers.http import FaultyHttpServer
from tests.servers.mariadb import MariaDBServer
from tests.servers.mariadb_faults import (
    ConnectionHog,
    create_app_database,
    drop_app_database,
    kill_app_connections,
    set_app_password,
)
from tests.servers.tcp import Relay

INTERVAL = 0.3
TIMEOUT = 0.2
# Room for the polling step, the scheduler's wake-up and a machine busy with other tests.
SLACK = 0.35
# A fault is seen by the first probe that starts after it (at most interval + 10 % jitter
# later), which fails within its timeout.
DETECT_BOUND = INTERVAL * 1.1 + TIMEOUT + SLACK
# A cleared fault is seen by the next probe, which succeeds in a few milliseconds.
RECOVER_BOUND = INTERVAL * 1.1 + SLACK
POLL = 0.01
# Growth allowed between a scenario's start and end; each value is the lowest of several
# samples, so a probe in flight does not count.
FD_TOLERANCE = 1
TASK_TOLERANCE = 1
# How long a detected fault stays in force, so that a leak per failed probe adds up.
HOLD = 2 * INTERVAL
CHECK = "dep"

Action = Callable[[], Awaitable[Any]]


@dataclass
class Row:
    """One measured scenario."""

    kind: str
    fault: str
    detected: bool
    reason: str | None
    detail: str | None
    detect_seconds: float | None
    recover_seconds: float | None
    fd_growth: int
    task_growth: int


RESULTS: list[Row] = []


@pytest.fixture(scope="module", autouse=True)
def fault_table(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Print the table of every scenario of the module and write it as JSON."""
    fds_at_start = fd_targets()
    yield
    fds_at_end = fd_targets()
    module_fd_growth = len(fds_at_end) - len(fds_at_start)
    if not RESULTS:
        return
    target = os.environ.get("FAULT_MATRIX_JSON") or str(
        tmp_path_factory.getbasetemp() / "fault-matrix.json"
    )
    document = {
        "interval_seconds": INTERVAL,
        "timeout_seconds": TIMEOUT,
        "detect_bound_seconds": round(DETECT_BOUND, 3),
        "recover_bound_seconds": round(RECOVER_BOUND, 3),
        "module_fd_growth": module_fd_growth,
        "module_fds_opened": sorted(set(fds_at_end.items()) - set(fds_at_start.items())),
        "rows": [asdict(row) for row in RESULTS],
    }
    Path(target).write_text(json.dumps(document, indent=2) + "\n")
    print(f"\nfault matrix (interval {INTERVAL} s, timeout {TIMEOUT} s), JSON in {target}")
    # Informational only: in a full suite run, fixtures of other modules and session
    # fixtures can open or close files meanwhile.
    print(f"open fds of the test process: {module_fd_growth:+d} over the module")
    print(f"{'kind':<6} {'fault':<34} {'reason':<17} {'detect s':>8} {'recover s':>9}")
    for row in RESULTS:
        detect = f"{row.detect_seconds:.3f}" if row.detect_seconds is not None else "-"
        recover = f"{row.recover_seconds:.3f}" if row.recover_seconds is not None else "-"
        reason = row.reason if row.detected else "not detected"
        print(f"{row.kind:<6} {row.fault:<34} {reason or '-':<17} {detect:>8} {recover:>9}")


def fd_targets() -> dict[str, str]:
    """The open file descriptors of this process and what each refers to."""
    targets = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            targets[fd] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
    return targets


def resource_counts() -> tuple[int, int]:
    return len(os.listdir("/proc/self/fd")), len(asyncio.all_tasks())


async def resource_floor() -> tuple[int, int]:
    """The lowest fd and task counts seen over one and a half intervals."""
    samples = []
    for _ in range(10):
        samples.append(resource_counts())
        await asyncio.sleep(INTERVAL * 0.15)
    return min(s[0] for s in samples), min(s[1] for s in samples)


async def poll_state(sidecar: SidecarServer) -> tuple[int, dict[str, Any]]:
    status, body, _ = await sidecar.get(f"/ready/{CHECK}?format=json")
    return status, json.loads(body)


async def wait_status(sidecar: SidecarServer, status: int, deadline: float) -> dict[str, Any]:
    """Poll until /ready/<check> answers `status`; return its JSON state with `elapsed`."""
    started = time.monotonic()
    last: dict[str, Any] = {}
    while time.monotonic() - started < deadline:
        code, state = await poll_state(sidecar)
        if code == status:
            state["elapsed"] = time.monotonic() - started
            return state
        last = state
        await asyncio.sleep(POLL)
    raise AssertionError(f"/ready/{CHECK} did not answer {status} within {deadline} s: {last}")


async def stays_healthy(sidecar: SidecarServer, seconds: float) -> dict[str, Any] | None:
    """Poll for `seconds`; return the first unhealthy state seen, or None."""
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        code, state = await poll_state(sidecar)
        if code != 200:
            state["elapsed"] = time.monotonic() - started
            return state
        await asyncio.sleep(POLL)
    return None


async def in_thread(function: Callable[..., Any], *args: Any) -> Any:
    """Run a blocking fault control off the event loop, which the sidecar under test shares."""
    return await asyncio.to_thread(function, *args)


async def run_scenario(
    serve_sidecar: Callable[..., Awaitable[SidecarServer]],
    check: dict[str, Any],
    fault: str,
    inject: Action,
    clear: Action,
    reasons: set[str] | None,
    may_go_unnoticed: bool = False,
) -> Row:
    """Measure one fault; `reasons` None means the check is expected not to notice it.

    With may_go_unnoticed, the fault is either detected with one of `reasons` or not at all,
    because which one happens depends on a race outside the sidecar.
    """
    fields = {"name": CHECK, "interval": INTERVAL, "timeout": TIMEOUT, **check}
    sidecar = await serve_sidecar(make_config([fields]))
    await sidecar.wait_for(f"/ready/{CHECK}", 200, deadline=10)
    fds_before, tasks_before = await resource_floor()

    await inject()
    detected = reasons is not None
    state: dict[str, Any] | None
    if detected and not may_go_unnoticed:
        state = await wait_status(sidecar, 503, DETECT_BOUND + 5)
        await asyncio.sleep(HOLD)
    else:
        state = await stays_healthy(sidecar, 4 * INTERVAL + TIMEOUT)
    await clear()
    recovered = await wait_status(sidecar, 200, RECOVER_BOUND + 5)
    fds_after, tasks_after = await resource_floor()

    row = Row(
        kind=check["type"],
        fault=fault,
        detected=state is not None,
        reason=state["reason"] if state else None,
        detail=(state["error"] or "")[:160] if state else None,
        detect_seconds=round(state["elapsed"], 3) if state and "elapsed" in state else None,
        recover_seconds=round(recovered["elapsed"], 3),
        fd_growth=fds_after - fds_before,
        task_growth=tasks_after - tasks_before,
    )
    RESULTS.append(row)

    if reasons is None:
        assert state is None, f"{fault} was expected to go unnoticed, but: {state}"
    elif may_go_unnoticed:
        assert state is None or row.reason in reasons, row
    else:
        assert row.reason in reasons, row
        assert row.detect_seconds is not None and row.detect_seconds <= DETECT_BOUND, row
        assert row.recover_seconds is not None and row.recover_seconds <= RECOVER_BOUND, row
    assert row.fd_growth <= FD_TOLERANCE, row
    assert row.task_growth <= TASK_TOLERANCE, row
    return row


# ---------------------------------------------------------------------------------------------
# Dependencies


@pytest.fixture
def http_server() -> Iterator[FaultyHttpServer]:
    with FaultyHttpServer() as server:
        yield server


@pytest.fixture
def relays() -> Iterator[Callable[[tuple[str, int]], Relay]]:
    started: list[Relay] = []

    def start(target: tuple[str, int]) -> Relay:
        relay = Relay(target).start()
        started.append(relay)
        return relay

    yield start
    for relay in started:
        relay.close()


@pytest.fixture
def dns_server() -> Iterator[ScriptedDNSServer]:
    with ScriptedDNSServer(default=NXDomain()) as server:
        server.set("db.fault.test", Answer(["127.0.0.1"]))
        yield server


# ---------------------------------------------------------------------------------------------
# tcp


@pytest.mark.parametrize("fault", ["refused", "hang (SYN dropped)"])
async def test_tcp(serve_sidecar, http_server, fault):
    states = {"refused": "refuse", "hang (SYN dropped)": "stall"}
    expected = {"refused": {"refused"}, "hang (SYN dropped)": {"connect_timeout"}}

    await run_scenario(
        serve_sidecar,
        {"type": "tcp", "host": "127.0.0.1", "port": http_server.port},
        fault,
        lambda: in_thread(http_server.set_listening, states[fault]),
        lambda: in_thread(http_server.set_listening, "accept"),
        expected[fault],
    )


async def test_tcp_partition_behind_relay_goes_unnoticed(serve_sidecar, http_server, relays):
    # A tcp check proves that something accepts the connection: a proxy in front of an
    # unreachable server (a service mesh sidecar, for example) still does.
    relay = relays(("127.0.0.1", http_server.port))

    await run_scenario(
        serve_sidecar,
        {"type": "tcp", "host": "127.0.0.1", "port": relay.port},
        "partition (relay frozen)",
        lambda: in_thread(relay.freeze),
        lambda: in_thread(relay.thaw),
        None,
    )


async def test_tcp_cut_behind_relay(serve_sidecar, http_server, relays):
    # With its server gone, the relay accepts each connection and resets it at once. The
    # probe fails only when the reset arrives before the event loop handles the connect.
    relay = relays(("127.0.0.1", http_server.port))

    async def inject() -> None:
        await in_thread(http_server.set_listening, "refuse")
        await in_thread(relay.cut, True)

    await run_scenario(
        serve_sidecar,
        {"type": "tcp", "host": "127.0.0.1", "port": relay.port},
        "cut (relay resets)",
        inject,
        lambda: in_thread(http_server.set_listening, "accept"),
        {"connection_lost"},
        may_go_unnoticed=True,
    )


# ---------------------------------------------------------------------------------------------
# http

HTTP_FAULTS: dict[str, tuple[str, str, set[str]]] = {
    # fault: (listening state, mode, expected reasons)
    "refused": ("refuse", "ok", {"refused"}),
    "hang (no answer)": ("accept", "hang", {"timeout"}),
    "hang (SYN dropped)": ("stall", "ok", {"connect_timeout"}),
    "500": ("accept", "error", {"http_status"}),
    "slow body": ("accept", "slow_body", {"timeout"}),
    "cut mid-response": ("accept", "cut", {"connection_lost"}),
}


@pytest.mark.parametrize("fault", list(HTTP_FAULTS))
async def test_http(serve_sidecar, http_server, fault):
    listening, mode, expected = HTTP_FAULTS[fault]

    async def inject() -> None:
        await in_thread(http_server.set_mode, mode)
        await in_thread(http_server.set_listening, listening)

    async def clear() -> None:
        await in_thread(http_server.set_listening, "accept")
        await in_thread(http_server.set_mode, "ok")

    # expect_body makes the check read the body, so a slow or cut body fails it.
    check = {"type": "http", "url": http_server.url, "expect_body": "ok"}
    await run_scenario(serve_sidecar, check, fault, inject, clear, expected)


async def test_http_partition(serve_sidecar, http_server, relays):
    relay = relays(("127.0.0.1", http_server.port))
    check = {"type": "http", "url": f"http://127.0.0.1:{relay.port}/health", "expect_body": "ok"}

    await run_scenario(
        serve_sidecar,
        check,
        "partition (relay frozen)",
        lambda: in_thread(relay.freeze),
        lambda: in_thread(relay.thaw),
        {"timeout"},
    )


# ---------------------------------------------------------------------------------------------
# dns

DNS_FAULTS = {
    "nxdomain": (NXDomain(), {"dns_nxdomain"}),
    "servfail": (ServFail(), {"dns_servfail"}),
    "silence": (Silent(), {"dns_timeout"}),
    "cname to nowhere": (CName("nowhere.fault.test"), {"dns_no_answer"}),
}


@pytest.mark.parametrize("record", ["A", None], ids=["query-A", "resolver"])
@pytest.mark.parametrize("fault", list(DNS_FAULTS))
async def test_dns(serve_sidecar, dns_server, tmp_path, fault, record):
    behaviour, expected = DNS_FAULTS[fault]
    check: dict[str, Any] = {"type": "dns", "host": "db.fault.test"}
    if record:
        check.update(record=record, nameservers=[dns_server.nameserver])
    else:
        # The application's way: hosts file, then DNS per a resolv.conf with no search list.
        resolv_conf = tmp_path / "resolv.conf"
        resolv_conf.write_text(f"nameserver {dns_server.nameserver}\noptions ndots:1\n")
        check["resolv_conf"] = str(resolv_conf)

    async def inject() -> None:
        dns_server.set("db.fault.test", behaviour)

    async def clear() -> None:
        dns_server.set("db.fault.test", Answer(["127.0.0.1"]))

    label = f"{fault} ({'query A' if record else 'resolver'})"
    await run_scenario(serve_sidecar, check, label, inject, clear, expected)


# ---------------------------------------------------------------------------------------------
# mysql


@pytest.fixture
def mysql_password(monkeypatch: pytest.MonkeyPatch, mariadb: MariaDBServer) -> str:
    monkeypatch.setenv("FAULT_MYSQL_PASSWORD", mariadb.app_password)
    return "FAULT_MYSQL_PASSWORD"


def mysql_check(server: MariaDBServer, password_env: str, port: int | None = None) -> dict:
    return {
        "type": "mysql",
        "host": server.host,
        "port": port or server.port,
        "user": server.app_user,
        "password_env": password_env,
        "database": server.app_database,
    }


MYSQL_FAULTS = [
    "kill -9",
    "SIGSTOP",
    "restart (clean stop)",
    "max_connections full",
    "wrong password",
    "database dropped",
    "partition (relay frozen)",
]


@pytest.mark.mariadb
@pytest.mark.parametrize("fault", MYSQL_FAULTS)
async def test_mysql(serve_sidecar, mariadb, mysql_password, relays, fault):
    server = mariadb
    port = None
    hog = ConnectionHog(server)
    relay: Relay | None = None
    if fault.startswith("partition"):
        relay = relays((server.host, server.port))
        port = relay.port

    # A password change, a dropped database and a full server only affect new logins, and
    # the check keeps its connection between probes. Killing that connection makes the next
    # probe log in again.
    def fill_server() -> None:
        hog.start()
        hog.kill_others()

    def change_password() -> None:
        set_app_password(server, "pw-changed-0d9a3f")
        kill_app_connections(server)

    def drop_database() -> None:
        drop_app_database(server)
        kill_app_connections(server)

    def freeze_relay() -> None:
        assert relay is not None
        relay.freeze()

    def thaw_relay() -> None:
        assert relay is not None
        relay.thaw()

    faults: dict[str, tuple[Callable[[], Any], Callable[[], Any], set[str]]] = {
        "kill -9": (server.kill, server.start, {"refused"}),
        "SIGSTOP": (server.freeze, server.thaw, {"timeout"}),
        "restart (clean stop)": (server.stop, server.start, {"refused", "connection_lost"}),
        "max_connections full": (fill_server, hog.close, {"refused"}),
        "wrong password": (
            change_password,
            lambda: set_app_password(server, server.app_password),
            {"auth"},
        ),
        "database dropped": (
            drop_database,
            lambda: create_app_database(server),
            {"unknown_database"},
        ),
        "partition (relay frozen)": (freeze_relay, thaw_relay, {"timeout"}),
    }
    inject, clear, expected = faults[fault]
    try:
        await run_scenario(
            serve_sidecar,
            mysql_check(server, mysql_password, port),
            fault,
            lambda: in_thread(inject),
            lambda: in_thread(clear),
            expected,
        )
    finally:
        hog.close()


@pytest.mark.mariadb
@pytest.mark.parametrize("fault", ["wrong password", "database dropped"])
async def test_mysql_kept_connection_hides(serve_sidecar, mariadb, mysql_password, fault):
    # Neither fault touches a connection that is already logged in, and the check keeps
    # its connection: it stays healthy while every new login of the application fails.
    server = mariadb
    faults = {
        "wrong password": (
            lambda: set_app_password(server, "pw-changed-0d9a3f"),
            lambda: set_app_password(server, server.app_password),
        ),
        "database dropped": (
            lambda: drop_app_database(server),
            lambda: create_app_database(server),
        ),
    }
    inject, clear = faults[fault]
    check = {**mysql_check(server, mysql_password), "query": "SELECT 1"}

    await run_scenario(
        serve_sidecar,
        check,
        f"{fault}, connection kept",
        lambda: in_thread(inject),
        lambda: in_thread(clear),
        None,
    )
