"""The `wait` command, run as a real process against dependencies that come up late."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from sidecar.wait import FIRST_DELAY, retry_delay
from tests.servers.dns import Answer, NXDomain, ScriptedDNSServer, ServFail
from tests.servers.mariadb import MariaDBServer
from tests.servers.tcp import HangingPort, SilentListener, free_port


def write_config(path: Path, checks: list[dict]) -> Path:
    path.write_text(yaml.safe_dump({"checks": checks}))
    return path


def start_wait(config: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "sidecar", "wait", "-c", str(config), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


class ExitWatcher:
    """Read a process's output line by line and record when it exits, from a thread."""

    def __init__(self, process: subprocess.Popen) -> None:
        self.process = process
        self.exited_at: float | None = None
        self.lines: list[str] = []
        self.stderr = ""
        self._new_line = threading.Condition()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    @property
    def stdout(self) -> str:
        return "".join(self.lines)

    def _watch(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._new_line:
                self.lines.append(line)
                self._new_line.notify_all()
        self.process.stdout.close()
        if self.process.stderr is not None:
            self.stderr = self.process.stderr.read()
            self.process.stderr.close()
        self.process.wait()
        self.exited_at = time.monotonic()
        with self._new_line:
            self._new_line.notify_all()

    def wait_for_line(self, prefix: str, timeout: float = 20.0) -> str:
        """Block until the process prints a line starting with `prefix`; return it."""
        deadline = time.monotonic() + timeout
        with self._new_line:
            while True:
                for line in self.lines:
                    if line.startswith(prefix):
                        return line
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.exited_at is not None:
                    raise AssertionError(f"no line starting {prefix!r} in {self.stdout!r}")
                self._new_line.wait(remaining)

    def join(self, timeout: float) -> int:
        self._thread.join(timeout)
        if self._thread.is_alive():
            self.process.kill()
            self._thread.join()
            raise AssertionError(f"wait did not exit within {timeout}s")
        return self.process.returncode


def test_retry_delays_grow_to_cap():
    delays = [retry_delay(attempt, interval=5.0, max_delay=0.25) for attempt in range(10)]

    assert delays[0] == FIRST_DELAY
    assert delays == sorted(delays)
    assert max(delays) == 0.25
    assert retry_delay(20, interval=0.1, max_delay=0.25) == 0.1


def test_exits_0_when_port_opens(tmp_path):
    port = free_port()
    config = write_config(
        tmp_path / "c.yaml", [{"name": "db", "type": "tcp", "host": "127.0.0.1", "port": port}]
    )
    process = start_wait(config, "--timeout", "20")
    watcher = ExitWatcher(process)
    watcher.wait_for_line("waiting: db refused")

    server = socket.create_server(("127.0.0.1", port))
    opened_at = time.monotonic()
    try:
        status = watcher.join(20)
    finally:
        server.close()

    assert status == 0, watcher.stderr
    assert watcher.exited_at is not None
    # Noticed within max-delay (0.25 s) plus one probe; the rest is process exit and slack.
    assert watcher.exited_at - opened_at < 1.5
    assert "waiting: db refused" in watcher.stdout
    assert "all 1 check(s) ready" in watcher.stdout.splitlines()[-1]


def test_timeout_exits_1_with_summary(tmp_path):
    config = write_config(
        tmp_path / "c.yaml",
        [{"name": "db", "type": "tcp", "host": "127.0.0.1", "port": free_port()}],
    )

    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "sidecar", "wait", "-c", str(config), "--timeout", "1"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    duration = time.monotonic() - started

    lines = result.stdout.splitlines()
    assert result.returncode == 1
    assert any(line.startswith("timed out after 1.0 s") for line in lines)
    assert lines[-1].startswith("  [-]db failed: refused")
    assert duration < 1 + 3  # process start-up takes about a second on a slow machine


def test_deadline_cancels_probe_in_flight(tmp_path):
    with HangingPort() as port:
        config = write_config(
            tmp_path / "c.yaml",
            [
                {
                    "name": "db",
                    "type": "tcp",
                    "host": "127.0.0.1",
                    "port": port.port,
                    "interval": 20,
                    "timeout": 15,
                }
            ],
        )
        process = start_wait(config, "--timeout", "1")
        watcher = ExitWatcher(process)
        started = time.monotonic()

        status = watcher.join(20)

    assert status == 1
    assert watcher.exited_at is not None
    assert watcher.exited_at - started < 1 + 3
    assert "db pending" in watcher.stdout


def test_unresolved_name_retried(tmp_path):
    with ScriptedDNSServer() as dns:
        dns.set("mysql.test", NXDomain())
        config = write_config(
            tmp_path / "c.yaml",
            [
                {
                    "name": "mysql-dns",
                    "type": "dns",
                    "host": "mysql.test",
                    "record": "A",
                    "nameservers": [dns.nameserver],
                }
            ],
        )
        process = start_wait(config, "--timeout", "20")
        watcher = ExitWatcher(process)
        watcher.wait_for_line("waiting: mysql-dns dns_nxdomain")
        dns.set("mysql.test", ServFail())
        watcher.wait_for_line("waiting: mysql-dns dns_servfail")

        dns.set("mysql.test", Answer(["10.0.0.5"]))
        status = watcher.join(20)

    assert status == 0, watcher.stdout
    assert "waiting: mysql-dns dns_nxdomain" in watcher.stdout
    assert "waiting: mysql-dns dns_servfail" in watcher.stdout
    assert dns.queries("mysql.test") >= 3


def test_sigterm_exits_at_once(tmp_path):
    config = write_config(
        tmp_path / "c.yaml",
        [{"name": "db", "type": "tcp", "host": "127.0.0.1", "port": free_port()}],
    )
    process = start_wait(config, "--timeout", "60")
    watcher = ExitWatcher(process)
    watcher.wait_for_line("waiting: db refused")

    process.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    status = watcher.join(10)

    assert status == 128 + signal.SIGTERM
    assert watcher.exited_at is not None
    assert watcher.exited_at - signalled < 2
    assert "stopped by SIGTERM" in watcher.stdout
    assert "Traceback" not in watcher.stderr


def test_selected_checks_only(tmp_path):
    with SilentListener() as listener:
        config = write_config(
            tmp_path / "c.yaml",
            [
                {"name": "db", "type": "tcp", "host": "127.0.0.1", "port": listener.port},
                {"name": "down", "type": "tcp", "host": "127.0.0.1", "port": free_port()},
            ],
        )

        result = subprocess.run(
            [sys.executable, "-m", "sidecar", "wait", "-c", str(config), "--check", "db"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        unknown = subprocess.run(
            [sys.executable, "-m", "sidecar", "wait", "-c", str(config), "--check", "nope"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    assert result.returncode == 0
    assert "down" not in result.stdout
    assert unknown.returncode == 2
    assert "unknown check 'nope' in --check; configured checks: db, down" in unknown.stderr


def test_runs_command_after_success(tmp_path):
    with SilentListener() as listener:
        config = write_config(
            tmp_path / "c.yaml",
            [{"name": "db", "type": "tcp", "host": "127.0.0.1", "port": listener.port}],
        )
        command = [
            sys.executable,
            "-c",
            "import os, sys; print('app pid', os.getpid()); sys.exit(3)",
        ]

        process = start_wait(config, "--", *command)
        stdout, _ = process.communicate(timeout=30)

    assert process.returncode == 3
    assert f"app pid {process.pid}" in stdout


def test_missing_command_exits_127(tmp_path):
    with SilentListener() as listener:
        config = write_config(
            tmp_path / "c.yaml",
            [{"name": "db", "type": "tcp", "host": "127.0.0.1", "port": listener.port}],
        )

        process = start_wait(config, "--", "no-such-command-here")
        _, stderr = process.communicate(timeout=30)

    assert process.returncode == 127
    assert "cannot run 'no-such-command-here'" in stderr


def test_success_threshold_counts(tmp_path):
    with SilentListener() as listener:
        config = write_config(
            tmp_path / "c.yaml",
            [
                {
                    "name": "db",
                    "type": "tcp",
                    "host": "127.0.0.1",
                    "port": listener.port,
                    "success_threshold": 3,
                }
            ],
        )

        result = subprocess.run(
            [sys.executable, "-m", "sidecar", "wait", "-c", str(config)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

        assert result.returncode == 0
        assert listener.accepted == 3


@pytest.mark.mariadb
def test_mariadb_coming_up(tmp_path, mariadb_template, monkeypatch):
    server = MariaDBServer(tmp_path / "mariadb", template=mariadb_template)
    try:
        config = write_config(
            tmp_path / "c.yaml",
            [
                {
                    "name": "mysql",
                    "type": "mysql",
                    "host": server.host,
                    "port": server.port,
                    "user": server.app_user,
                    "password_env": "WAIT_TEST_PASSWORD",
                    "database": server.app_database,
                }
            ],
        )
        process = start_wait(
            config, "--timeout", "60", env={"WAIT_TEST_PASSWORD": server.app_password}
        )
        watcher = ExitWatcher(process)
        watcher.wait_for_line("waiting: mysql refused")

        server.start()  # returns once a login over TCP works
        logins_work_at = time.monotonic()
        status = watcher.join(60)
    finally:
        server.close()

    assert status == 0, watcher.stdout
    assert watcher.exited_at is not None
    assert watcher.exited_at - logins_work_at < 1.5
    assert "waiting: mysql refused" in watcher.stdout
