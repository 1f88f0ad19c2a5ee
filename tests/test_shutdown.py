"""Graceful shutdown of `serve`: drain, polite close of connections, a clean stderr."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.servers.tcp import SilentListener, free_port

DIRTY_STDERR = ("Traceback", "Unclosed client session", "Task was destroyed", "Unclosed connector")


def status_of(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


class Sidecar:
    """`readiness-sidecar serve` as a child process on a free loopback port."""

    def __init__(self, tmp_path: Path, checks: list[dict], drain_delay: float) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = tmp_path / "config.yaml"
        server = {"host": "127.0.0.1", "port": self.port, "drain_delay": drain_delay}
        config.write_text(yaml.safe_dump({"server": server, "checks": checks}))
        self.process = subprocess.Popen(
            [sys.executable, "-m", "sidecar", "serve", "-c", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )

    def wait_ready(self, deadline: float = 20.0) -> None:
        started = time.monotonic()
        while time.monotonic() - started < deadline:
            try:
                if status_of(self.url + "/ready")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError("the sidecar did not become ready")

    def finish(self, timeout: float = 20.0) -> str:
        _, stderr = self.process.communicate(timeout=timeout)
        return stderr

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.communicate()


@pytest.fixture
def listener():
    with SilentListener() as server:
        yield server


def tcp(port: int) -> dict:
    return {"name": "db", "type": "tcp", "host": "127.0.0.1", "port": port}


def test_sigterm_drains_with_idle_keepalive(tmp_path, listener):
    sidecar = Sidecar(tmp_path, [tcp(listener.port)], drain_delay=1.0)
    try:
        sidecar.wait_ready()
        # An idle keep-alive connection, as a client pool would leave open.
        idle = socket.create_connection(("127.0.0.1", sidecar.port))
        idle.sendall(b"GET /live HTTP/1.1\r\nHost: sidecar\r\n\r\n")
        assert idle.recv(4096).startswith(b"HTTP/1.1 200")

        sidecar.process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        while status_of(sidecar.url + "/ready")[0] != 503:
            assert time.monotonic() - signalled < 0.5, "/ready did not turn 503"
        turned_503 = time.monotonic() - signalled
        ready_status, ready_body = status_of(sidecar.url + "/ready?format=json")
        live_status, _ = status_of(sidecar.url + "/live")
        stderr = sidecar.finish()
        exited = time.monotonic() - signalled
        idle.close()
    finally:
        sidecar.kill()

    messages = [json.loads(line)["message"] for line in stderr.splitlines()]
    assert sidecar.process.returncode == 0
    assert turned_503 < 0.5
    assert ready_status == 503
    assert json.loads(ready_body)["reason"] == "shutting_down"
    assert live_status == 200
    # The drain delay, then a prompt exit: the idle connection does not hold it up.
    assert 1.0 <= exited < 1.0 + 1.5
    assert messages[-1] == "stopped"
    for text in DIRTY_STDERR:
        assert text not in stderr


def test_second_signal_exits_at_once(tmp_path, listener):
    sidecar = Sidecar(tmp_path, [tcp(listener.port)], drain_delay=30.0)
    try:
        sidecar.wait_ready()

        sidecar.process.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        sidecar.process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        stderr = sidecar.finish(timeout=10)
        exited = time.monotonic() - signalled
    finally:
        sidecar.kill()

    assert sidecar.process.returncode == 1
    assert exited < 2.0
    assert "second signal; exiting now" in stderr


def test_logs_are_json_without_a_terminal(tmp_path, listener):
    sidecar = Sidecar(tmp_path, [tcp(listener.port)], drain_delay=0)
    try:
        sidecar.wait_ready()
        sidecar.process.send_signal(signal.SIGINT)
        stderr = sidecar.finish()
    finally:
        sidecar.kill()

    entries = [json.loads(line) for line in stderr.splitlines()]
    serving = next(entry for entry in entries if entry["message"] == "serving")
    healthy = next(entry for entry in entries if entry["message"] == "check is healthy")
    assert serving["checks"] == [f"db (tcp 127.0.0.1:{listener.port})"]
    assert healthy["from"] == "pending"
    assert healthy["to"] == "healthy"
    assert healthy["check"] == "db"
    assert healthy["type"] == "tcp"
    assert "previous_seconds" in healthy


@pytest.mark.mariadb
def test_mysql_connection_closed_politely(tmp_path, mariadb):
    secret = tmp_path / "password"
    secret.write_text(mariadb.app_password)
    check = {
        "name": "mysql",
        "type": "mysql",
        "host": mariadb.host,
        "port": mariadb.port,
        "user": mariadb.app_user,
        "password_file": str(secret),
    }
    aborted_before = mariadb.global_status("Aborted_clients")
    sidecar = Sidecar(tmp_path, [check], drain_delay=0)
    try:
        sidecar.wait_ready()
        connected = mariadb.global_status("Threads_connected")

        sidecar.process.send_signal(signal.SIGTERM)
        stderr = sidecar.finish()
    finally:
        sidecar.kill()

    assert sidecar.process.returncode == 0
    assert connected == 2  # the sidecar's kept connection and the status query
    assert mariadb.global_status("Aborted_clients") == aborted_before
    assert mariadb.global_status("Threads_connected") == 1
    for text in DIRTY_STDERR:
        assert text not in stderr
