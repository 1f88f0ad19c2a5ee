"""Live config reload: file edits, ConfigMap symlink swaps, SIGHUP, bad files, secret rotation."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from sidecar.app import RELOADER
from sidecar.config import load
from sidecar.metrics import Metrics
from tests.servers.tcp import SilentListener, free_port


def tcp_check(name: str, port: int, **fields) -> dict:
    return {"name": name, "type": "tcp", "host": "127.0.0.1", "port": port, **fields}


def write(path: Path, checks: list[dict], **server) -> Path:
    document = {
        "server": {"watch_interval": 0.1, **server},
        "defaults": {"interval": 0.2, "timeout": 0.1},
        "checks": checks,
    }
    # Write and rename, so the watcher never reads a half-written file.
    temporary = path.with_suffix(".tmp")
    temporary.write_text(yaml.safe_dump(document))
    os.replace(temporary, path)
    return path


async def wait_generation(sidecar, generation: int, deadline: float = 5.0) -> float:
    started = time.monotonic()
    reloader = sidecar.app[RELOADER]
    while reloader.generation < generation:
        if time.monotonic() - started > deadline:
            raise AssertionError(f"no reload within {deadline}s")
        await asyncio.sleep(0.01)
    return time.monotonic() - started


@pytest.fixture
def listener():
    with SilentListener() as server:
        yield server


async def test_added_check_runs_and_old_state_kept(serve_sidecar, listener, tmp_path):
    path = write(tmp_path / "config.yaml", [tcp_check("db", listener.port)])
    sidecar = await serve_sidecar(load(path))
    await sidecar.wait_for("/ready", 200)
    old_check = sidecar.scheduler.checks["db"]
    old_state = sidecar.scheduler.states["db"]
    probes_before = old_state.probes

    write(path, [tcp_check("db", listener.port), tcp_check("cache", free_port(), critical=False)])
    await wait_generation(sidecar, 1)
    await sidecar.wait_for("/ready/cache", 503)

    assert sidecar.scheduler.checks["db"] is old_check
    assert sidecar.scheduler.states["db"] is old_state
    assert old_state.probes >= probes_before
    assert old_state.is_healthy
    assert (await sidecar.get("/ready"))[0] == 200


async def test_removed_check_disappears(serve_sidecar, listener, tmp_path):
    metrics = Metrics()
    path = write(
        tmp_path / "config.yaml", [tcp_check("db", listener.port), tcp_check("old", free_port())]
    )
    sidecar = await serve_sidecar(load(path), metrics)
    await sidecar.wait_for("/ready/old", 503)

    write(path, [tcp_check("db", listener.port)])
    await wait_generation(sidecar, 1)
    await sidecar.wait_for("/ready", 200)

    _, body, _ = await sidecar.get("/ready?format=json")
    _, exposition, _ = await sidecar.get("/metrics")
    assert list(json.loads(body)["checks"]) == ["db"]
    assert 'check="old"' not in exposition
    assert (await sidecar.get("/ready/old"))[0] == 404


async def test_changed_check_replaced(serve_sidecar, listener, tmp_path):
    path = write(tmp_path / "config.yaml", [tcp_check("db", free_port())])
    sidecar = await serve_sidecar(load(path))
    await sidecar.wait_for("/ready", 503)
    old_check = sidecar.scheduler.checks["db"]

    write(path, [tcp_check("db", listener.port)])
    await wait_generation(sidecar, 1)
    await sidecar.wait_for("/ready", 200)

    assert sidecar.scheduler.checks["db"] is not old_check


async def test_invalid_file_keeps_old_config(serve_sidecar, listener, tmp_path, caplog):
    caplog.set_level(logging.ERROR, logger="sidecar")
    metrics = Metrics()
    path = write(tmp_path / "config.yaml", [tcp_check("db", listener.port)])
    sidecar = await serve_sidecar(load(path), metrics)
    await sidecar.wait_for("/ready", 200)

    write(path, [tcp_check("db", 0)])
    started = time.monotonic()
    while metrics.registry.get_sample_value("sidecar_config_reload_failures_total") != 1:
        assert time.monotonic() - started < 5, "the invalid file was not noticed"
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.5)  # several more polls: the same bad file is not reported again

    records = [r for r in caplog.records if r.getMessage().startswith("config reload rejected")]
    assert metrics.registry.get_sample_value("sidecar_config_reload_failures_total") == 1
    assert len(records) == 1
    assert records[0].problems == ["checks[0].port: must be 1-65535, got 0"]
    assert (await sidecar.get("/ready"))[0] == 200
    assert sidecar.app[RELOADER].generation == 0


async def test_configmap_symlink_swap(serve_sidecar, listener, tmp_path):
    # The layout the kubelet writes for a mounted ConfigMap: config.yaml -> ..data/config.yaml,
    # ..data -> a timestamped directory, replaced by an atomic rename of the ..data link.
    mount = tmp_path / "mount"
    first = mount / "..2026_12_04_10_00_00.1"
    first.mkdir(parents=True)
    write(first / "config.yaml", [tcp_check("db", listener.port)])
    (mount / "..data").symlink_to(first.name)
    (mount / "config.yaml").symlink_to("..data/config.yaml")
    sidecar = await serve_sidecar(load(mount / "config.yaml"))
    await sidecar.wait_for("/ready", 200)

    second = mount / "..2026_12_04_10_01_00.2"
    second.mkdir()
    write(second / "config.yaml", [tcp_check("db", listener.port), tcp_check("api", listener.port)])
    (mount / "..data_tmp").symlink_to(second.name)
    os.replace(mount / "..data_tmp", mount / "..data")
    took = await wait_generation(sidecar, 1)
    await sidecar.wait_for("/ready/api", 200)

    assert took < 2.0
    assert list(sidecar.scheduler.checks) == ["db", "api"]


async def test_server_change_needs_restart(serve_sidecar, listener, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="sidecar")
    path = write(tmp_path / "config.yaml", [tcp_check("db", listener.port)])
    sidecar = await serve_sidecar(load(path))

    write(path, [tcp_check("db", listener.port)], port=9999)
    await wait_generation(sidecar, 1)

    assert any("restart the sidecar" in r.getMessage() for r in caplog.records)
    assert sidecar.app[RELOADER].config.server.port != 9999


@pytest.mark.mariadb
async def test_rotated_password_file(serve_sidecar, mariadb, tmp_path):
    secret = tmp_path / "mysql-password"
    secret.write_text("pw-stale-1d7c\n")
    check = {
        "name": "mysql",
        "type": "mysql",
        "host": mariadb.host,
        "port": mariadb.port,
        "user": mariadb.app_user,
        "password_file": str(secret),
        "database": mariadb.app_database,
    }
    path = write(tmp_path / "config.yaml", [check])
    sidecar = await serve_sidecar(load(path))
    await sidecar.wait_for("/ready", 503)
    _, body, _ = await sidecar.get("/ready?format=json")

    secret.write_text(mariadb.app_password + "\n")
    await wait_generation(sidecar, 1)
    await sidecar.wait_for("/ready", 200)

    assert json.loads(body)["checks"]["mysql"]["reason"] == "auth"


def test_sighup_reloads_serving_process(tmp_path, listener):
    port = free_port()
    path = write(
        tmp_path / "config.yaml",
        [tcp_check("db", listener.port)],
        host="127.0.0.1",
        port=port,
        watch_interval=0,
        drain_delay=0,
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "sidecar", "serve", "-c", str(path), "--log-format", "json"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}/ready/api"
        deadline = time.monotonic() + 20
        while not _answers(f"http://127.0.0.1:{port}/ready"):
            assert time.monotonic() < deadline, "serve did not start"
            time.sleep(0.05)
        write(
            path,
            [tcp_check("db", listener.port), tcp_check("api", listener.port)],
            host="127.0.0.1",
            port=port,
            watch_interval=0,
            drain_delay=0,
        )
        time.sleep(0.3)
        before = _status(url)

        process.send_signal(signal.SIGHUP)
        signalled = time.monotonic()
        while _status(url) != 200:
            assert time.monotonic() - signalled < 5, "SIGHUP did not reload"
            time.sleep(0.02)

        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    messages = [json.loads(line) for line in stderr.splitlines()]
    reloads = [m for m in messages if m["message"] == "config reloaded"]
    assert before == 404
    assert len(reloads) == 1
    assert reloads[0]["cause"] == "signal"
    assert reloads[0]["added"] == ["api"]


def _status(url: str) -> int:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def _answers(url: str) -> bool:
    try:
        _status(url)
    except OSError:
        return False
    return True
