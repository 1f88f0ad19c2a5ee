"""A recognisable password and token never appear in any output of the sidecar."""

from __future__ import annotations

import base64
import http.server
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest
import yaml

from tests.servers.tcp import free_port

PASSWORD = "pw-canary-51f0e8d2"
TOKEN = "tok-canary-a93b7c10"
URL_PASSWORD = "url-canary-77e2"


class EchoingHandler(http.server.BaseHTTPRequestHandler):
    """Answers 401 and repeats every request header back in the reason and body."""

    def do_GET(self) -> None:
        echoed = " ".join(f"{k}={v}" for k, v in self.headers.items())
        body = echoed.encode()
        self.send_response(401, f"denied {echoed}"[:200])
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def echo_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), EchoingHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def fetch(url: str, accept: str | None = None) -> str:
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return str(response.read().decode())
    except urllib.error.HTTPError as error:
        return error.read().decode()


@pytest.mark.mariadb
def test_no_output_shows_secrets(tmp_path, mariadb, echo_server):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    port = free_port()
    checks = [
        {
            "name": "mysql",
            "type": "mysql",
            "host": mariadb.host,
            "port": mariadb.port,
            "user": mariadb.app_user,
            "password_env": "CANARY_PASSWORD",
            "database": mariadb.app_database,
        },
        {
            "name": "api",
            "type": "http",
            "url": f"http://app:{URL_PASSWORD}@127.0.0.1:{echo_server}/health",
        },
        {
            "name": "token-api",
            "type": "http",
            "url": f"http://127.0.0.1:{echo_server}/health",
            "bearer_token_file": str(token_file),
        },
    ]
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "server": {"host": "127.0.0.1", "port": port, "drain_delay": 0},
                "defaults": {"interval": 0.3, "timeout": 0.2},
                "checks": checks,
            }
        )
    )
    env = {**os.environ, "CANARY_PASSWORD": PASSWORD}
    base = [sys.executable, "-m", "sidecar"]
    process = subprocess.Popen(
        [*base, "serve", "-c", str(config), "--log-level", "debug", "--log-format", "json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                body = fetch(f"http://127.0.0.1:{port}/ready?format=json")
            except OSError:
                body = ""
            if body.count('"unhealthy"') == 3:
                break
            assert time.monotonic() < deadline, f"checks did not all fail: {body}"
            time.sleep(0.05)

        answers = []
        for path in (
            "/ready",
            "/started",
            "/live",
            "/ready/mysql",
            "/ready/api",
            "/ready/token-api",
        ):
            for query in ("", "?verbose", "?format=json"):
                answers.append(fetch(f"http://127.0.0.1:{port}{path}{query}"))
        answers.append(fetch(f"http://127.0.0.1:{port}/metrics"))
        answers.append(fetch(f"http://127.0.0.1:{port}/"))

        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()

    check_run = subprocess.run(
        [*base, "check", "-c", str(config), "--log-level", "debug"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    validate_run = subprocess.run(
        [*base, "validate", "-c", str(config)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )

    outputs = {
        "serve stderr": stderr,
        "serve stdout": stdout,
        "endpoints": "\n".join(answers),
        "check": check_run.stdout + check_run.stderr,
        "validate": validate_run.stdout + validate_run.stderr,
    }
    basic = base64.b64encode(f"app:{URL_PASSWORD}".encode()).decode()
    for name, text in outputs.items():
        for secret in (PASSWORD, TOKEN, URL_PASSWORD, basic):
            assert secret not in text, f"{secret} leaked into {name}"
    # The failures themselves are reported: the sweep looked at real error messages.
    assert "Access denied" in outputs["endpoints"]
    assert "HTTP 401" in outputs["endpoints"]
    assert "Access denied" in outputs["serve stderr"]
    assert "******" in outputs["serve stderr"] or "******" in outputs["endpoints"]
    assert check_run.returncode == 1
    assert validate_run.returncode == 0
