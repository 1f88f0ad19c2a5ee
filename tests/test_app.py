"""The sidecar's HTTP endpoints, served for real on loopback, against real dependencies."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable

import pytest
from aiohttp import web

from tests.conftest import make_config
from tests.servers.tcp import HangingPort, SilentListener, free_port


class ScriptedHttp:
    """An HTTP dependency whose /health status codes follow a list, then `then`."""

    def __init__(self) -> None:
        self.script: list[int] = []
        self.then = 200
        self.delay = 0.0
        self.requests = 0
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def _health(self, request: web.Request) -> web.Response:
        self.requests += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        status = self.script.pop(0) if self.script else self.then
        return web.Response(status=status, text=f"status {status}")

    async def start(self) -> ScriptedHttp:
        app = web.Application()
        app.router.add_get("/health", self._health)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/health"

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def scripted_http() -> AsyncIterator[Callable[[], asyncio.Future[ScriptedHttp]]]:
    servers: list[ScriptedHttp] = []

    def start() -> asyncio.Future[ScriptedHttp]:
        server = ScriptedHttp()
        servers.append(server)
        return asyncio.ensure_future(server.start())

    yield start
    for server in servers:
        await server.close()


@pytest.fixture
def listener():
    with SilentListener() as server:
        yield server


def tcp_check(name: str, port: int, **fields):
    return {"name": name, "type": "tcp", "host": "127.0.0.1", "port": port, **fields}


async def test_ready_when_all_healthy(serve_sidecar, listener):
    config = make_config([tcp_check("db", listener.port, interval=0.2, timeout=0.1)])
    sidecar = await serve_sidecar(config)

    await sidecar.wait_for("/ready", 200)
    status, body, headers = await sidecar.get("/ready")

    assert status == 200
    assert body == "ok\n"
    assert headers["Cache-Control"] == "no-store"
    assert headers["Content-Type"].startswith("text/plain")


async def test_failed_check_listed_with_reason(serve_sidecar, listener):
    closed = free_port()
    config = make_config(
        [
            tcp_check("db", listener.port, interval=0.2, timeout=0.1),
            tcp_check("orders", closed, interval=0.2, timeout=0.1),
        ]
    )
    sidecar = await serve_sidecar(config)
    await sidecar.wait_for("/ready/db", 200)
    await sidecar.wait_for("/ready/orders", 503)

    status, body, _ = await sidecar.get("/ready")

    lines = body.splitlines()
    assert status == 503
    assert lines[0] == "[+]db ok"
    assert lines[1].startswith("[-]orders failed: refused: ")
    assert "since " in lines[1]
    assert lines[-1] == "ready check failed"


async def test_verbose_success_lists_checks(serve_sidecar, listener):
    config = make_config([tcp_check("db", listener.port, interval=0.2, timeout=0.1)])
    sidecar = await serve_sidecar(config)
    await sidecar.wait_for("/ready", 200)

    status, body, _ = await sidecar.get("/readyz?verbose")

    assert status == 200
    assert body == "[+]db ok\nready check passed\n"


async def test_non_critical_failure_keeps_ready(serve_sidecar, listener):
    config = make_config(
        [
            tcp_check("db", listener.port, interval=0.2, timeout=0.1),
            tcp_check("cache", free_port(), interval=0.2, timeout=0.1, critical=False),
        ]
    )
    sidecar = await serve_sidecar(config)
    await sidecar.wait_for("/ready/cache", 503)

    status, body, _ = await sidecar.get("/ready?verbose")

    assert status == 200
    assert "[-]cache failed (not critical): refused" in body


async def test_exclude_leaves_check_out(serve_sidecar, listener):
    config = make_config(
        [
            tcp_check("db", listener.port, interval=0.2, timeout=0.1),
            tcp_check("orders", free_port(), interval=0.2, timeout=0.1),
        ]
    )
    sidecar = await serve_sidecar(config)
    await sidecar.wait_for("/ready/orders", 503)
    await sidecar.wait_for("/ready/db", 200)

    status, body, _ = await sidecar.get("/ready?exclude=orders&exclude=nosuch&verbose")

    assert status == 200
    assert "[+]orders excluded: ok" in body
    assert "no matches for 'nosuch'" in body


async def test_json_answer(serve_sidecar, listener):
    config = make_config([tcp_check("db", listener.port, interval=0.2, timeout=0.1)])
    sidecar = await serve_sidecar(config)
    await sidecar.wait_for("/ready", 200)

    by_query = await sidecar.get("/ready?format=json")
    by_accept = await sidecar.get("/ready", headers={"Accept": "application/json"})

    for status, body, headers in (by_query, by_accept):
        document = json.loads(body)
        check = document["checks"]["db"]
        assert status == 200
        assert headers["Content-Type"].startswith("application/json")
        assert document["status"] == "pass"
        assert document["ready"] is True
        assert check["status"] == "healthy"
        assert check["critical"] is True
        assert check["type"] == "tcp"
        assert check["last_success"].endswith("Z")
        assert check["consecutive_failures"] == 0
        assert check["duration_seconds"] >= 0


async def test_json_failure_has_error(serve_sidecar):
    config = make_config([tcp_check("orders", free_port(), interval=0.2, timeout=0.1)])
    sidecar = await serve_sidecar(config)
    await sidecar.wait_for("/ready/orders", 503)

    status, body, _ = await sidecar.get("/ready?format=json")

    check = json.loads(body)["checks"]["orders"]
    assert status == 503
    assert check["reason"] == "refused"
    assert "refused" in check["error"]
    assert check["last_success"] is None
    assert check["consecutive_failures"] >= 1


async def test_single_check_endpoint(serve_sidecar, listener):
    config = make_config(
        [
            tcp_check("db", listener.port, interval=0.2, timeout=0.1),
            tcp_check("orders", free_port(), interval=0.2, timeout=0.1),
        ]
    )
    sidecar = await serve_sidecar(config)
    await sidecar.wait_for("/ready/db", 200)
    await sidecar.wait_for("/ready/orders", 503)

    unknown_status, unknown_body, _ = await sidecar.get("/ready/nosuch")
    _, orders_json, _ = await sidecar.get("/ready/orders?format=json")

    assert unknown_status == 404
    assert "unknown check 'nosuch'" in unknown_body
    assert "db, orders" in unknown_body
    assert json.loads(orders_json)["reason"] == "refused"


async def test_bad_query_rejected(serve_sidecar, listener):
    config = make_config([tcp_check("db", listener.port, interval=0.2, timeout=0.1)])
    sidecar = await serve_sidecar(config)

    format_status, format_body, _ = await sidecar.get("/ready?format=xml")
    param_status, param_body, _ = await sidecar.get("/ready?verbsoe")

    assert format_status == 400
    assert "format=json" in format_body
    assert param_status == 400
    assert "'verbsoe'" in param_body


async def test_methods_get_and_head_only(serve_sidecar, listener):
    config = make_config([tcp_check("db", listener.port, interval=0.2, timeout=0.1)])
    sidecar = await serve_sidecar(config)
    await sidecar.wait_for("/ready", 200)

    async with sidecar.session.head(sidecar.url + "/ready") as head:
        head_status, head_body = head.status, await head.read()
    async with sidecar.session.post(sidecar.url + "/ready") as post:
        post_status, allow, cache = (
            post.status,
            post.headers["Allow"],
            post.headers["Cache-Control"],
        )

    assert head_status == 200
    assert head_body == b""
    assert post_status == 405
    assert set(allow.split(",")) == {"GET", "HEAD"}
    assert cache == "no-store"


async def test_live_ignores_dependencies(serve_sidecar):
    config = make_config([tcp_check("orders", free_port(), interval=0.2, timeout=0.1)])
    sidecar = await serve_sidecar(config)
    await sidecar.wait_for("/ready/orders", 503)

    statuses = [(await sidecar.get(path))[0] for path in ("/live", "/livez", "/live?verbose")]

    assert statuses == [200, 200, 200]


async def test_live_fails_then_task_restarts(serve_sidecar, listener, caplog):
    config = make_config([tcp_check("db", listener.port, interval=0.2, timeout=0.1)])
    sidecar = await serve_sidecar(config)
    task = sidecar.scheduler._tasks["db"]

    # The test-only hook: end the task from outside, as a bug in a probe loop would.
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    status, body, _ = await sidecar.get("/live")
    probes_before = sidecar.scheduler.states["db"].probes
    recovered_after = await sidecar.wait_for("/live", 200, deadline=5)
    await asyncio.sleep(0.5)

    assert status == 500
    assert "[-]db: probing task ended" in body
    assert recovered_after < 3
    assert sidecar.scheduler.states["db"].probes > probes_before
    assert any(r.getMessage() == "probing task ended; starting it again" for r in caplog.records)


async def test_started_latch_survives_failure(serve_sidecar, scripted_http):
    dependency = await scripted_http()
    config = make_config(
        [
            {
                "name": "orders",
                "type": "http",
                "url": dependency.url,
                "interval": 0.1,
                "timeout": 0.05,
            }
        ]
    )
    sidecar = await serve_sidecar(config)
    await sidecar.wait_for("/started", 200)

    dependency.then = 500
    await sidecar.wait_for("/ready", 503)
    status, _, _ = await sidecar.get("/startupz")

    assert status == 200


async def test_pending_until_first_result(serve_sidecar):
    with HangingPort() as port:
        config = make_config([tcp_check("db", port.port, interval=5, timeout=2)])
        sidecar = await serve_sidecar(config)

        status, body, _ = await sidecar.get("/ready")

        assert status == 503
        assert "[-]db pending: no probe has finished yet" in body


async def test_no_ready_blip_at_startup(serve_sidecar, scripted_http, listener):
    slow = await scripted_http()
    slow.delay = 0.4
    config = make_config(
        [
            tcp_check("db", listener.port, interval=1, timeout=0.5),
            {"name": "orders", "type": "http", "url": slow.url, "interval": 1, "timeout": 0.9},
        ]
    )
    sidecar = await serve_sidecar(config)

    statuses = []
    started = time.monotonic()
    while time.monotonic() - started < 0.8:
        statuses.append((await sidecar.get("/ready"))[0])
        await asyncio.sleep(0.01)

    first_ok = statuses.index(200)
    assert first_ok > 0
    assert set(statuses[:first_ok]) == {503}
    assert set(statuses[first_ok:]) == {200}


async def test_alternating_failures_below_threshold(serve_sidecar, scripted_http):
    dependency = await scripted_http()
    dependency.script = [200, 500, 500, 200, 500, 200, 500, 500, 200]
    dependency.then = 500
    config = make_config(
        [
            {
                "name": "orders",
                "type": "http",
                "url": dependency.url,
                "interval": 0.05,
                "timeout": 0.04,
                "failure_threshold": 3,
            }
        ]
    )
    sidecar = await serve_sidecar(config)
    await sidecar.wait_for("/ready", 200)

    observed = []
    while dependency.script:
        observed.append((await sidecar.get("/ready"))[0])
        await asyncio.sleep(0.005)
    failed_after = await sidecar.wait_for("/ready", 503)
    state = sidecar.scheduler.states["orders"]

    assert set(observed) == {200}
    assert state.consecutive_failures >= 3
    assert failed_after < 2.0


async def test_ready_answers_while_checks_hang(serve_sidecar):
    with HangingPort() as port:
        config = make_config(
            [tcp_check(f"hung-{i}", port.port, interval=3, timeout=2) for i in range(5)]
        )
        sidecar = await serve_sidecar(config)

        durations = []
        for _ in range(50):
            started = time.monotonic()
            status, _, _ = await sidecar.get("/ready?verbose")
            durations.append(time.monotonic() - started)

        assert status == 503
        # A bound far above the expected few milliseconds, and far below the kubelet's
        # default 1 s probe timeout: no answer waits on a probe.
        assert max(durations) < 0.5


async def test_index_lists_endpoints(serve_sidecar, listener):
    config = make_config([tcp_check("db", listener.port, interval=0.2, timeout=0.1)])
    sidecar = await serve_sidecar(config)

    status, body, _ = await sidecar.get("/")

    assert status == 200
    assert "/ready" in body
    assert "/metrics" in body
