"""Shared fixtures: config building, checks with real clients, and the sidecar app on loopback."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web

from sidecar.app import SCHEDULER, create_app
from sidecar.checks import Check, Resources, create_check
from sidecar.checks.http import create_session
from sidecar.checks.resolve import close_resolver, make_resolver
from sidecar.config import Config, parse
from sidecar.metrics import Metrics
from sidecar.scheduler import Scheduler
from tests.servers.mariadb import MariaDBServer, make_template

IN_CI = os.environ.get("CI", "").lower() == "true"


def require_binary(name: str) -> str:
    """Return the path of a server binary; skip without it, except under CI=true."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin")
    if path is None:
        message = f"{name} is not installed; install it (see .ci/run) to run this test"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return path


def make_config(checks: list[dict[str, Any]], **sections: Any) -> Config:
    """Validate a config built from Python values, as the YAML file would be."""
    document = {"checks": checks, **sections}
    return parse(yaml.safe_dump(document), "<test>", environ=os.environ)


@pytest.fixture(scope="session")
def mariadb_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_binary("mariadbd")
    return make_template(tmp_path_factory.mktemp("mariadb-template"))


@pytest.fixture
def mariadb(tmp_path: Path, mariadb_template: Path) -> Iterator[MariaDBServer]:
    server = MariaDBServer(tmp_path / "mariadb", template=mariadb_template)
    server.start()
    yield server
    server.close()


@pytest.fixture
async def resources() -> AsyncIterator[Resources]:
    """The shared resolver and HTTP session that checks use, closed after the test.

    The resolver asks a closed loopback port, so a test that resolves a name by mistake
    fails fast instead of querying the machine's DNS server. Tests that need DNS point it
    at a server they started.
    """
    resolver = make_resolver(timeout=5.0, nameservers=["127.0.0.1:9"])
    session = create_session(resolver)
    yield Resources(resolver=resolver, http=session)
    await session.close()
    await close_resolver(resolver)


@pytest.fixture
async def make_check(resources: Resources) -> AsyncIterator[Callable[..., Check[Any]]]:
    """Build a check from keyword fields, e.g. make_check(type="tcp", host=..., port=...)."""
    created: list[Check[Any]] = []

    def build(**fields: Any) -> Check[Any]:
        fields.setdefault("name", "probe")
        fields.setdefault("interval", 10)
        fields.setdefault("timeout", 2)
        config = make_config([fields])
        check = create_check(config.checks[0], resources)
        created.append(check)
        return check

    yield build
    for check in created:
        await check.close()


class SidecarServer:
    """The sidecar app served on a free loopback port, with a client session to query it."""

    def __init__(self, runner: web.AppRunner, port: int, session: aiohttp.ClientSession) -> None:
        self.runner = runner
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.session = session

    @property
    def app(self) -> web.Application:
        return self.runner.app

    @property
    def scheduler(self) -> Scheduler:
        return self.app[SCHEDULER]

    async def get(self, path: str, **kwargs: Any) -> tuple[int, str, Any]:
        """GET a path; return status, body text and headers."""
        async with self.session.get(self.url + path, **kwargs) as response:
            return response.status, await response.text(), response.headers

    async def wait_for(
        self, path: str, status: int, deadline: float = 10.0, interval: float = 0.02
    ) -> float:
        """Poll `path` until it answers `status`; return the seconds that took."""
        started = time.monotonic()
        last: tuple[int, str] | None = None
        while time.monotonic() - started < deadline:
            code, body, _ = await self.get(path)
            if code == status:
                return time.monotonic() - started
            last = (code, body)
            await asyncio.sleep(interval)
        raise AssertionError(f"{path} did not answer {status} within {deadline}s; last: {last}")


@pytest.fixture
async def serve_sidecar() -> AsyncIterator[Callable[..., Awaitable[SidecarServer]]]:
    """Start the sidecar app for a config; every server is stopped after the test."""
    started: list[SidecarServer] = []
    session = aiohttp.ClientSession()

    async def start(config: Config, metrics: Metrics | None = None) -> SidecarServer:
        app = create_app(config, metrics)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        sockets = runner.addresses
        port = sockets[0][1]
        server = SidecarServer(runner, port, session)
        started.append(server)
        return server

    yield start
    for server in started:
        await server.runner.cleanup()
    await session.close()
