"""The command line, run as a real process: serve, check and validate with their exit statuses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.servers.tcp import SilentListener, free_port


def write_config(path: Path, checks: list[dict], **sections) -> Path:
    path.write_text(yaml.safe_dump({"checks": checks, **sections}))
    return path


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sidecar", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        check=False,
    )


def http_status(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def wait_for_status(url: str, status: int, deadline: float = 10.0) -> None:
    started = time.monotonic()
    while time.monotonic() - started < deadline:
        try:
            if http_status(url)[0] == status:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"{url} did not answer {status} within {deadline}s")


@pytest.fixture
def listener():
    with SilentListener() as server:
        yield server


def test_check_all_healthy(tmp_path, listener):
    config = write_config(
        tmp_path / "c.yaml",
        [{"name": "db", "type": "tcp", "host": "127.0.0.1", "port": listener.port}],
    )

    result = run_cli("check", "-c", str(config))

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].split() == [
        "CHECK", "TYPE", "CRITICAL", "RESULT", "REASON", "TIME", "DETAIL"
    ]  # fmt: skip
    assert result.stdout.splitlines()[1].split()[:4] == ["db", "tcp", "yes", "ok"]


def test_check_critical_failure_exits_1(tmp_path, listener):
    config = write_config(
        tmp_path / "c.yaml",
        [
            {"name": "db", "type": "tcp", "host": "127.0.0.1", "port": listener.port},
            {"name": "orders", "type": "tcp", "host": "127.0.0.1", "port": free_port()},
        ],
    )

    result = run_cli("check", "-c", str(config))

    assert result.returncode == 1
    assert "FAILED  refused" in result.stdout


def test_check_non_critical_failure_exits_0(tmp_path):
    config = write_config(
        tmp_path / "c.yaml",
        [
            {
                "name": "cache",
                "type": "tcp",
                "host": "127.0.0.1",
                "port": free_port(),
                "critical": False,
            }
        ],
    )

    result = run_cli("check", "-c", str(config))

    assert result.returncode == 0
    assert "FAILED" in result.stdout


def test_invalid_config_exits_2(tmp_path):
    config = write_config(
        tmp_path / "c.yaml", [{"name": "db", "type": "tcp", "host": "127.0.0.1", "port": 0}]
    )

    results = [run_cli(command, "-c", str(config)) for command in ("serve", "check", "validate")]

    for result in results:
        assert result.returncode == 2
        assert "checks[0].port: must be 1-65535, got 0" in result.stderr
        assert "Traceback" not in result.stderr


def test_missing_config_file_exits_2(tmp_path):
    result = run_cli("validate", "-c", str(tmp_path / "absent.yaml"))

    assert result.returncode == 2
    assert "cannot read config file" in result.stderr


def test_config_from_environment(tmp_path, listener):
    config = write_config(
        tmp_path / "c.yaml",
        [{"name": "db", "type": "tcp", "host": "127.0.0.1", "port": listener.port}],
    )

    result = run_cli("validate", env={"SIDECAR_CONFIG": str(config)})

    assert result.returncode == 0
    assert "valid, 1 check(s)" in result.stdout


def test_help_names_units_and_defaults():
    result = run_cli("serve", "--help")

    assert result.returncode == 0
    assert "default 8558" in result.stdout
    assert "SIDECAR_CONFIG" in result.stdout
    assert "drain_delay seconds" in result.stdout


def test_serve_drains_then_exits_0(tmp_path, listener):
    port = free_port()
    config = write_config(
        tmp_path / "c.yaml",
        [{"name": "db", "type": "tcp", "host": "127.0.0.1", "port": listener.port}],
        server={"host": "127.0.0.1", "port": port, "drain_delay": "1s"},
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "sidecar", "serve", "-c", str(config), "--log-format", "json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_status(f"http://127.0.0.1:{port}/ready", 200)

        process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        wait_for_status(f"http://127.0.0.1:{port}/ready", 503, deadline=0.9)
        live_status = http_status(f"http://127.0.0.1:{port}/live")[0]
        _, stderr = process.communicate(timeout=10)
        stopped = time.monotonic() - signalled
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    messages = [json.loads(line)["message"] for line in stderr.splitlines()]
    assert process.returncode == 0
    assert live_status == 200
    assert stopped >= 1.0
    assert "serving" in messages
    assert "stopped" in messages
    assert "Traceback" not in stderr
    assert "Unclosed" not in stderr


def test_serve_port_in_use_exits_1(tmp_path, listener):
    config = write_config(
        tmp_path / "c.yaml",
        [{"name": "db", "type": "tcp", "host": "127.0.0.1", "port": listener.port}],
        server={"host": "127.0.0.1", "port": listener.port},
    )

    result = run_cli("serve", "-c", str(config), "--log-format", "text")

    assert result.returncode == 1
    assert "cannot listen on 127.0.0.1" in result.stderr
    assert "Traceback" not in result.stderr
