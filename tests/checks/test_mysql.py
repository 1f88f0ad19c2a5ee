"""The mysql check against a private mariadbd that the tests kill, freeze and restart."""

from __future__ import annotations

import asyncio
import json
import logging
import time

import pytest

from sidecar.checks.base import Reason, run_probe
from sidecar.log import JsonFormatter
from tests.conftest import make_config
from tests.servers.mariadb import MariaDBServer
from tests.servers.tcp import HangingPort, SilentListener, free_port

pytestmark = pytest.mark.mariadb


@pytest.fixture
def password_env(monkeypatch: pytest.MonkeyPatch, mariadb: MariaDBServer) -> str:
    monkeypatch.setenv("TEST_MYSQL_PASSWORD", mariadb.app_password)
    return "TEST_MYSQL_PASSWORD"


def mysql_fields(server: MariaDBServer, password_env: str, **extra):
    return {
        "type": "mysql",
        "host": server.host,
        "port": server.port,
        "user": server.app_user,
        "password_env": password_env,
        "database": server.app_database,
        **extra,
    }


async def test_ping_passes(make_check, mariadb, password_env):
    check = make_check(**mysql_fields(mariadb, password_env))

    result = await run_probe(check)

    assert result.ok, result
    assert result.detail.startswith("ping ok")


async def test_steady_state_opens_no_connections(make_check, mariadb, password_env):
    check = make_check(**mysql_fields(mariadb, password_env))
    await run_probe(check)
    before = mariadb.global_status("Connections")

    results = [await run_probe(check) for _ in range(20)]

    # Each global_status() call is itself one root connection.
    after = mariadb.global_status("Connections")
    assert all(result.ok for result in results)
    assert after - before == 1


async def test_query_passes(make_check, mariadb, password_env):
    check = make_check(**mysql_fields(mariadb, password_env, query="SELECT 1"))

    result = await run_probe(check)

    assert result.ok, result
    assert result.detail == "query returned 1 row(s)"


async def test_bad_query_fails(make_check, mariadb, password_env):
    check = make_check(**mysql_fields(mariadb, password_env, query="SELECT * FROM missing"))

    result = await run_probe(check)

    assert result.reason is Reason.QUERY_FAILED
    assert "missing" in result.detail


async def test_wrong_password_is_auth(make_check, mariadb, monkeypatch):
    monkeypatch.setenv("WRONG_PASSWORD", "pw-wrong-5c8e1a")
    check = make_check(**mysql_fields(mariadb, "WRONG_PASSWORD"))

    result = await run_probe(check)

    assert result.reason is Reason.AUTH
    assert "Access denied" in result.detail
    assert "pw-wrong-5c8e1a" not in result.detail


async def test_unknown_database(make_check, mariadb, monkeypatch):
    # Only a user with global privileges learns that a database is missing; others get
    # "access denied", so this logs in as root.
    monkeypatch.setenv("ROOT_PASSWORD", mariadb.root_password)
    check = make_check(
        type="mysql",
        unix_socket=str(mariadb.socket_path),
        user="root",
        password_env="ROOT_PASSWORD",
        database="nosuch",
    )

    result = await run_probe(check)

    assert result.reason is Reason.UNKNOWN_DATABASE
    assert "nosuch" in result.detail


async def test_database_without_grant_is_auth(make_check, mariadb, password_env):
    check = make_check(**mysql_fields(mariadb, password_env, database="nosuch"))

    result = await run_probe(check)

    assert result.reason is Reason.AUTH
    assert "nosuch" in result.detail


async def test_unix_socket(make_check, mariadb, password_env):
    fields = mysql_fields(mariadb, password_env)
    del fields["host"], fields["port"]
    check = make_check(**fields, unix_socket=str(mariadb.socket_path))

    result = await run_probe(check)

    assert result.ok, result


async def test_refused(make_check, password_env, mariadb):
    fields = mysql_fields(mariadb, password_env, port=free_port())
    check = make_check(**fields)

    result = await run_probe(check)

    assert result.reason is Reason.REFUSED


async def test_no_greeting_times_out(make_check, password_env, mariadb):
    with SilentListener() as listener:
        check = make_check(**mysql_fields(mariadb, password_env, port=listener.port, timeout=0.5))

        result = await run_probe(check)

        assert result.reason is Reason.TIMEOUT
        assert "greeting" in result.detail
        assert 0.5 <= result.duration_seconds < 0.5 + 0.3


async def test_hanging_connect_times_out(make_check, password_env, mariadb):
    with HangingPort() as port:
        check = make_check(**mysql_fields(mariadb, password_env, port=port.port, timeout=0.5))

        result = await run_probe(check)

        assert result.reason is Reason.CONNECT_TIMEOUT
        assert 0.5 <= result.duration_seconds < 0.5 + 0.3


async def test_frozen_server_times_out_then_recovers(make_check, mariadb, password_env):
    check = make_check(**mysql_fields(mariadb, password_env, timeout=0.5))
    assert (await run_probe(check)).ok

    mariadb.freeze()
    try:
        frozen = await run_probe(check)
    finally:
        mariadb.thaw()
    recovered = await run_probe(check)

    assert frozen.reason is Reason.TIMEOUT
    assert 0.5 <= frozen.duration_seconds < 0.5 + 0.3
    assert recovered.ok, recovered


async def test_restart_between_probes_not_a_failure(make_check, mariadb, password_env):
    check = make_check(**mysql_fields(mariadb, password_env))
    assert (await run_probe(check)).ok

    mariadb.restart()
    result = await run_probe(check)

    assert result.ok, result


async def test_close_sends_quit(make_check, mariadb, password_env):
    check = make_check(**mysql_fields(mariadb, password_env))
    assert (await run_probe(check)).ok
    aborted_before = mariadb.global_status("Aborted_clients")

    await check.close()
    await asyncio.sleep(0.1)

    assert mariadb.global_status("Aborted_clients") == aborted_before
    assert mariadb.global_status("Threads_connected") == 1


async def test_kill_and_restart_end_to_end(serve_sidecar, mariadb, password_env):
    interval, timeout = 0.5, 0.3
    config = make_config(
        [
            {
                "name": "mysql",
                **mysql_fields(mariadb, password_env),
                "interval": interval,
                "timeout": timeout,
            }
        ]
    )
    sidecar = await serve_sidecar(config)
    await sidecar.wait_for("/ready", 200)

    mariadb.kill()
    killed_at = time.monotonic()
    live_statuses = []
    while (await sidecar.get("/ready"))[0] != 503:
        live_statuses.append((await sidecar.get("/live"))[0])
        await asyncio.sleep(0.01)
    detected = time.monotonic() - killed_at
    _, body, _ = await sidecar.get("/ready?format=json")
    reason = json.loads(body)["checks"]["mysql"]["reason"]

    mariadb.start()
    up_at = time.monotonic()
    while (await sidecar.get("/ready"))[0] != 200:
        live_statuses.append((await sidecar.get("/live"))[0])
        await asyncio.sleep(0.01)
    recovered = time.monotonic() - up_at

    # Jitter stretches an interval by up to 10%; the rest is slack for a loaded machine.
    slack = 0.5
    assert detected < interval * 1.1 + timeout + slack
    assert reason in ("refused", "connection_lost")
    assert recovered < interval * 1.1 + slack
    assert set(live_statuses) <= {200}
    # The sidecar holds one connection; the status query itself is the other.
    assert mariadb.global_status("Threads_connected") == 2


async def test_password_never_shown(serve_sidecar, mariadb, monkeypatch, caplog):
    secret = "pw-leak-canary-7f3a9b"
    monkeypatch.setenv("LEAKY_PASSWORD", secret)
    caplog.set_level(logging.DEBUG, logger="sidecar")
    config = make_config(
        [
            {
                "name": "mysql",
                **mysql_fields(mariadb, "LEAKY_PASSWORD"),
                "interval": 0.2,
                "timeout": 0.15,
            },
            {
                "name": "api",
                "type": "http",
                "url": f"http://app:{secret}@127.0.0.1:{free_port()}/",
                "interval": 0.2,
                "timeout": 0.15,
            },
        ]
    )
    sidecar = await serve_sidecar(config)
    await sidecar.wait_for("/ready/mysql", 503)
    await sidecar.wait_for("/ready/api", 503)

    answers = [
        (await sidecar.get(path))[1]
        for path in ("/ready", "/ready?verbose", "/ready?format=json", "/ready/mysql", "/metrics")
    ]

    formatter = JsonFormatter()
    log_lines = "\n".join(formatter.format(record) for record in caplog.records)
    for answer in answers:
        assert secret not in answer
    assert "Access denied" in answers[0]
    assert secret not in log_lines
    assert "Access denied" in log_lines
