"""/live reports the sidecar's own health: a blocked loop, a dead task or stale probes."""

from __future__ import annotations

import asyncio
import time

from sidecar.liveness import MAX_LAG
from tests.conftest import SidecarServer, make_config
from tests.servers.tcp import SilentListener, free_port


async def poll_until(sidecar: SidecarServer, path: str, status: int, deadline: float = 5.0) -> str:
    started = time.monotonic()
    while True:
        code, body, _ = await sidecar.get(path)
        if code == status:
            return str(body)
        assert time.monotonic() - started < deadline, f"{path} never answered {status}: {body}"
        await asyncio.sleep(0.02)


async def test_blocked_loop_fails_then_recovers(serve_sidecar):
    with SilentListener() as listener:
        config = make_config(
            [{"name": "db", "type": "tcp", "host": "127.0.0.1", "port": listener.port}]
        )
        sidecar = await serve_sidecar(config)
        await sidecar.wait_for("/live", 200)

        # Block the event loop for longer than the limit, as a stuck callback would.
        asyncio.get_running_loop().call_soon(time.sleep, MAX_LAG + 0.5)
        failed = await poll_until(sidecar, "/live", 500)
        await poll_until(sidecar, "/live", 200)

    assert failed.startswith("[-]event loop ")


async def test_stale_probes_fail_live(serve_sidecar):
    with SilentListener() as listener:
        config = make_config(
            [
                {
                    "name": "db",
                    "type": "tcp",
                    "host": "127.0.0.1",
                    "port": listener.port,
                    "interval": 0.2,
                    "timeout": 0.1,
                }
            ]
        )
        sidecar = await serve_sidecar(config)
        await sidecar.wait_for("/ready", 200)

        # The test-only hook: pretend the last probe finished long ago.
        sidecar.scheduler.last_finished["db"] = time.monotonic() - 100
        status, body, _ = await sidecar.get("/live?format=json")
        await poll_until(sidecar, "/live", 200)

    assert status == 500
    assert body.count("no probe finished") == 1


async def test_dependency_outage_never_fails_live(serve_sidecar):
    config = make_config(
        [
            {
                "name": "db",
                "type": "tcp",
                "host": "127.0.0.1",
                "port": free_port(),
                "interval": 0.1,
                "timeout": 0.05,
            }
        ]
    )
    sidecar = await serve_sidecar(config)
    await sidecar.wait_for("/ready", 503)

    statuses = []
    for _ in range(30):
        statuses.append((await sidecar.get("/live"))[0])
        await asyncio.sleep(0.02)

    assert set(statuses) == {200}


async def test_live_verbose_lists_parts(serve_sidecar):
    with SilentListener() as listener:
        config = make_config(
            [{"name": "db", "type": "tcp", "host": "127.0.0.1", "port": listener.port}]
        )
        sidecar = await serve_sidecar(config)

        status, body, _ = await sidecar.get("/live?verbose")

    assert status == 200
    assert body == "[+]event-loop ok\n[+]probes ok\nlive check passed\n"
