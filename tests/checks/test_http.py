"""The http check against aiohttp and raw asyncio servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiohttp import web
from multidict import CIMultiDict

from sidecar.checks.base import Check, Reason, run_probe
from tests.servers.dns import ScriptedDNSServer

LOOPBACK = "127.0.0.1"
# Time a probe may take beyond its timeout before the test calls it late.
SLACK = 0.4

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
RawHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
MakeCheck = Callable[..., Check[Any]]


@dataclass(frozen=True, slots=True)
class Seen:
    """One request as the server received it."""

    method: str
    path: str
    headers: CIMultiDict[str]


class Upstream:
    """An aiohttp server on 127.0.0.1 that records every request it receives."""

    def __init__(self, routes: Mapping[str, Handler], ssl_context: ssl.SSLContext | None) -> None:
        self.requests: list[Seen] = []
        self.port = 0
        self._scheme = "https" if ssl_context else "http"
        self._ssl_context = ssl_context

        @web.middleware
        async def record(request: web.Request, handler: Handler) -> web.StreamResponse:
            self.requests.append(Seen(request.method, request.path, request.headers.copy()))
            return await handler(request)

        app = web.Application(middlewares=[record])
        for path, route_handler in routes.items():
            app.router.add_route("*", path, route_handler)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)

    def url(self, path: str = "/") -> str:
        return f"{self._scheme}://{LOOPBACK}:{self.port}{path}"

    async def start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, LOOPBACK, 0, ssl_context=self._ssl_context)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def close(self) -> None:
        await self._runner.cleanup()


class RawServer:
    """A TCP server on 127.0.0.1 that hands each connection to a coroutine and counts them.

    `finished` counts connections whose handler has returned: the response was sent or the
    peer closed its side.
    """

    def __init__(self, handler: RawHandler) -> None:
        self._handler = handler
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = False
        self._progress = asyncio.Event()
        self.accepted = 0
        self.finished = 0
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}/"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, LOOPBACK, 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def wait_finished(self, count: int, deadline: float = 1.0) -> None:
        """Wait until `count` connections have finished, or the deadline passes."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(deadline):
                while self.finished < count:
                    self._progress.clear()
                    await self._progress.wait()

    async def close(self) -> None:
        self._closing = True
        if self._server is not None:
            self._server.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
        # Transports close on the next loop iterations.
        await asyncio.sleep(0.01)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            # Python 3.11 logs a connection task that ends cancelled as an error, so the
            # cancellation that close() sends ends the task normally.
            if not self._closing:
                raise
        finally:
            self.finished += 1
            self._progress.set()
            self._tasks.discard(task)
            writer.close()


@pytest.fixture
async def serve_http() -> AsyncIterator[Callable[..., Awaitable[Upstream]]]:
    """Start aiohttp servers from a path -> handler mapping; all are stopped after the test."""
    started: list[Upstream] = []

    async def start(
        routes: Mapping[str, Handler], ssl_context: ssl.SSLContext | None = None
    ) -> Upstream:
        upstream = Upstream(routes, ssl_context)
        started.append(upstream)
        await upstream.start()
        return upstream

    yield start
    for upstream in started:
        await upstream.close()


@pytest.fixture
async def serve_raw() -> AsyncIterator[Callable[[RawHandler], Awaitable[RawServer]]]:
    """Start raw TCP servers; all are stopped, with their connections, after the test."""
    started: list[RawServer] = []

    async def start(handler: RawHandler) -> RawServer:
        server = RawServer(handler)
        started.append(server)
        await server.start()
        return server

    yield start
    for server in started:
        await server.close()


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> str:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


def server_tls(ca: trustme.CA, *identities: str) -> ssl.SSLContext:
    """Return a server TLS context with a certificate from `ca` for the given names or addresses."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*identities).configure_cert(context)
    return context


def reply(
    status: int = 200,
    text: str = "ok",
    headers: Mapping[str, str] | None = None,
    reason: str | None = None,
) -> Handler:
    """Return a handler that sends the same response to every request."""

    async def handle(request: web.Request) -> web.Response:
        body = None if status in (204, 304) else text
        return web.Response(status=status, text=body, headers=headers, reason=reason)

    return handle


def closed_port() -> int:
    """Return a loopback port that was bound and closed, so nothing listens on it."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


async def read_head(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")


# --------------------------------------------------------------------------------------------
# Status


async def test_ok_status_passes(make_check: MakeCheck, serve_http: Any) -> None:
    upstream = await serve_http({"/health": reply(200)})
    check = make_check(type="http", url=upstream.url("/health"))

    result = await run_probe(check)

    assert result.ok, result
    assert result.reason is None
    assert result.detail == "HTTP 200"


async def test_server_error_fails(make_check: MakeCheck, serve_http: Any) -> None:
    upstream = await serve_http({"/health": reply(500)})
    check = make_check(type="http", url=upstream.url("/health"))

    result = await run_probe(check)

    assert not result.ok
    assert result.reason is Reason.HTTP_STATUS
    assert "HTTP 500" in result.detail


@pytest.mark.parametrize(
    ("status", "expect_status", "ok"),
    [
        (204, [204], True),
        (200, [204], False),
        (302, "3xx", True),
        (308, "3xx", True),
        (200, "3xx", False),
        (404, [200, 404], True),
    ],
)
async def test_expect_status(
    make_check: MakeCheck, serve_http: Any, status: int, expect_status: Any, ok: bool
) -> None:
    headers = {"Location": "/elsewhere"} if 300 <= status < 400 else None
    upstream = await serve_http({"/health": reply(status, headers=headers)})
    check = make_check(type="http", url=upstream.url("/health"), expect_status=expect_status)

    result = await run_probe(check)

    assert result.ok is ok, result
    assert result.reason is (None if ok else Reason.HTTP_STATUS)
    assert f"HTTP {status}" in result.detail


async def test_head_method(make_check: MakeCheck, serve_http: Any) -> None:
    upstream = await serve_http({"/health": reply(200)})
    check = make_check(type="http", url=upstream.url("/health"), method="head")

    result = await run_probe(check)

    assert result.ok, result
    assert [seen.method for seen in upstream.requests] == ["HEAD"]


# --------------------------------------------------------------------------------------------
# Body


async def test_expect_body_matches(make_check: MakeCheck, serve_http: Any) -> None:
    upstream = await serve_http({"/health": reply(200, text='{"status": "ready"}')})
    check = make_check(type="http", url=upstream.url("/health"), expect_body='"ready"')

    result = await run_probe(check)

    assert result.ok, result
    assert "body matched" in result.detail


async def test_expect_body_mismatch(make_check: MakeCheck, serve_http: Any) -> None:
    upstream = await serve_http({"/health": reply(200, text='{"status": "starting"}')})
    check = make_check(type="http", url=upstream.url("/health"), expect_body='"ready"')

    result = await run_probe(check)

    assert not result.ok
    assert result.reason is Reason.BODY_MISMATCH
    assert "HTTP 200" in result.detail


async def test_error_status_wins_over_body(make_check: MakeCheck, serve_http: Any) -> None:
    upstream = await serve_http({"/health": reply(503, text="ready")})
    check = make_check(type="http", url=upstream.url("/health"), expect_body="ready")

    result = await run_probe(check)

    assert result.reason is Reason.HTTP_STATUS
    assert "HTTP 503" in result.detail


async def test_body_split_across_writes_matches(make_check: MakeCheck, serve_raw: Any) -> None:
    # The server writes its body in two pieces with a pause between them, and the expected
    # text is only in the second piece.
    first, second = b'{"status": ', b'"ready"}'

    async def send_in_two_parts(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(first) + len(second)}\r\n\r\n"
        writer.write(head.encode() + first)
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(second)
        await writer.drain()

    server = await serve_raw(send_in_two_parts)
    check = make_check(type="http", url=server.url, expect_body='"ready"')

    result = await run_probe(check)

    assert result.ok, result
    assert result.detail == "HTTP 200, body matched"


# --------------------------------------------------------------------------------------------
# Timeouts and connection errors


async def test_silent_server_times_out(make_check: MakeCheck, serve_raw: Any) -> None:
    async def stay_silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    server = await serve_raw(stay_silent)
    check = make_check(type="http", url=server.url, timeout=0.5)

    result = await run_probe(check)

    assert not result.ok
    assert result.reason is Reason.TIMEOUT
    assert result.duration_seconds >= 0.5 - 0.01
    assert result.duration_seconds < 0.5 + SLACK
    assert "500 ms" in result.detail


async def test_trickled_body_times_out(make_check: MakeCheck, serve_raw: Any) -> None:
    body = b"." * 35 + b"ready"

    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode())
        await writer.drain()
        for index in range(len(body)):
            await asyncio.sleep(0.1)
            writer.write(body[index : index + 1])
            await writer.drain()

    server = await serve_raw(trickle)
    check = make_check(type="http", url=server.url, timeout=0.5, expect_body="ready")

    result = await run_probe(check)

    assert not result.ok
    assert result.reason is Reason.TIMEOUT, result
    assert result.duration_seconds >= 0.5 - 0.01
    assert result.duration_seconds < 0.5 + SLACK
    assert "(body)" in result.detail


async def test_refused(make_check: MakeCheck) -> None:
    check = make_check(type="http", url=f"http://{LOOPBACK}:{closed_port()}/health")

    result = await run_probe(check)

    assert not result.ok
    assert result.reason is Reason.REFUSED
    assert "refused" in result.detail


async def test_unresolvable_name(make_check: MakeCheck) -> None:
    # c-ares 1.34 sends queries for the reserved .invalid TLD to its servers like any other
    # name, so the resolver is pointed at a private server that returns NXDOMAIN.
    name = "nowhere.invalid"
    with ScriptedDNSServer() as dns:
        check = make_check(type="http", url=f"http://{name}/health")
        check.resources.resolver.nameservers = [dns.nameserver]

        result = await run_probe(check)

        assert not result.ok
        assert result.reason is not None
        assert result.reason.startswith("dns_")
        assert result.reason is Reason.DNS_NXDOMAIN
        assert name in result.detail
        assert dns.queries(name) >= 1


# --------------------------------------------------------------------------------------------
# Redirects


async def test_redirect_not_followed_by_default(make_check: MakeCheck, serve_http: Any) -> None:
    target = await serve_http({"/ok": reply(200)})
    location = target.url("/ok")
    source = await serve_http({"/old": reply(302, headers={"Location": location})})
    check = make_check(type="http", url=source.url("/old"))

    result = await run_probe(check)

    assert not result.ok
    assert result.reason is Reason.HTTP_STATUS
    assert "HTTP 302" in result.detail
    assert location in result.detail
    assert target.requests == []


async def test_redirect_followed(make_check: MakeCheck, serve_http: Any) -> None:
    target = await serve_http({"/ok": reply(200)})
    source = await serve_http({"/old": reply(302, headers={"Location": target.url("/ok")})})
    check = make_check(type="http", url=source.url("/old"), follow_redirects=True)

    result = await run_probe(check)

    assert result.ok, result
    assert result.detail == "HTTP 200"
    assert [seen.path for seen in target.requests] == ["/ok"]


# --------------------------------------------------------------------------------------------
# TLS


async def test_tls_untrusted_ca_fails(
    make_check: MakeCheck, serve_http: Any, ca: trustme.CA
) -> None:
    upstream = await serve_http({"/": reply(200)}, server_tls(ca, LOOPBACK))
    check = make_check(type="http", url=upstream.url())

    result = await run_probe(check)

    assert not result.ok
    assert result.reason is Reason.TLS
    assert upstream.requests == []


async def test_tls_with_ca_file_passes(
    make_check: MakeCheck, serve_http: Any, ca: trustme.CA, ca_file: str
) -> None:
    upstream = await serve_http({"/": reply(200)}, server_tls(ca, LOOPBACK))
    check = make_check(type="http", url=upstream.url(), ca_file=ca_file)

    result = await run_probe(check)

    assert result.ok, result


async def test_tls_insecure_passes(make_check: MakeCheck, serve_http: Any, ca: trustme.CA) -> None:
    upstream = await serve_http({"/": reply(200)}, server_tls(ca, LOOPBACK))
    check = make_check(type="http", url=upstream.url(), insecure=True)

    result = await run_probe(check)

    assert result.ok, result


async def test_tls_server_name_passes(
    make_check: MakeCheck, serve_http: Any, ca: trustme.CA, ca_file: str
) -> None:
    upstream = await serve_http({"/": reply(200)}, server_tls(ca, "sidecar.test"))
    check = make_check(type="http", url=upstream.url(), ca_file=ca_file, server_name="sidecar.test")

    result = await run_probe(check)

    assert result.ok, result


async def test_tls_name_mismatch_fails(
    make_check: MakeCheck, serve_http: Any, ca: trustme.CA, ca_file: str
) -> None:
    upstream = await serve_http({"/": reply(200)}, server_tls(ca, "sidecar.test"))
    check = make_check(type="http", url=upstream.url(), ca_file=ca_file)

    result = await run_probe(check)

    assert not result.ok
    assert result.reason is Reason.TLS


# --------------------------------------------------------------------------------------------
# Request headers and credentials


async def test_headers_sent(make_check: MakeCheck, serve_http: Any) -> None:
    upstream = await serve_http({"/health": reply(200)})
    check = make_check(
        type="http", url=upstream.url("/health"), headers={"X-Probe": "yes", "Host": "app.test"}
    )

    result = await run_probe(check)

    assert result.ok, result
    headers = upstream.requests[0].headers
    assert headers["X-Probe"] == "yes"
    assert headers["Host"] == "app.test"
    assert headers["User-Agent"].startswith("readiness-sidecar/")


async def test_bearer_token_sent_and_hidden(
    make_check: MakeCheck, serve_http: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = "tok-4f1c9a7e2b"
    monkeypatch.setenv("SIDECAR_TEST_TOKEN", token)
    # The server repeats the token in its reason phrase and body.
    upstream = await serve_http(
        {"/private": reply(401, text=f"bad token {token}", reason=f"Unauthorized {token}")}
    )
    check = make_check(
        type="http", url=upstream.url("/private"), bearer_token_env="SIDECAR_TEST_TOKEN"
    )

    result = await run_probe(check)

    assert upstream.requests[0].headers["Authorization"] == f"Bearer {token}"
    assert result.reason is Reason.HTTP_STATUS
    assert "HTTP 401" in result.detail
    assert token not in result.detail


async def test_url_password_hidden(make_check: MakeCheck, serve_http: Any) -> None:
    password = "pw-8d2e61c0"
    upstream = await serve_http({"/health": reply(500)})
    url = f"http://alice:{password}@{LOOPBACK}:{upstream.port}/health"
    check = make_check(type="http", url=url)

    result = await run_probe(check)

    expected = "Basic " + base64.b64encode(f"alice:{password}".encode()).decode()
    assert upstream.requests[0].headers["Authorization"] == expected
    assert result.reason is Reason.HTTP_STATUS
    assert password not in result.detail
    assert password not in check.config.target()
    assert f"{LOOPBACK}:{upstream.port}" in check.config.target()


async def test_url_password_hidden_in_redirect(make_check: MakeCheck, serve_http: Any) -> None:
    # The server redirects to a URL that repeats the credentials.
    password = "pw-8d2e61c0"

    async def redirect(request: web.Request) -> web.Response:
        location = f"http://alice:{password}@{request.host}/next"
        return web.Response(status=302, headers={"Location": location})

    upstream = await serve_http({"/old": redirect})
    check = make_check(type="http", url=f"http://alice:{password}@{LOOPBACK}:{upstream.port}/old")

    result = await run_probe(check)

    assert result.reason is Reason.HTTP_STATUS
    assert "redirect to http://alice:" in result.detail
    assert password not in result.detail


async def test_url_password_hidden_in_reason(make_check: MakeCheck, serve_http: Any) -> None:
    # The server repeats the password, without the URL around it, in its reason phrase.
    password = "pw-8d2e61c0"
    upstream = await serve_http({"/health": reply(401, reason=f"Wrong password {password}")})
    url = f"http://alice:{password}@{LOOPBACK}:{upstream.port}/health"
    check = make_check(type="http", url=url)

    result = await run_probe(check)

    assert result.reason is Reason.HTTP_STATUS
    assert "HTTP 401" in result.detail
    assert password not in result.detail


# --------------------------------------------------------------------------------------------
# Connections


async def test_each_probe_opens_new_connection(make_check: MakeCheck, serve_raw: Any) -> None:
    async def keep_alive(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Responds to any number of requests on one connection, so reuse would show.
        while True:
            await read_head(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()

    server = await serve_raw(keep_alive)
    check = make_check(type="http", url=server.url)

    results = [await run_probe(check) for _ in range(3)]

    assert all(result.ok for result in results), results
    assert server.accepted == 3


async def test_timed_out_probe_closes_connection(make_check: MakeCheck, serve_raw: Any) -> None:
    async def stay_silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    server = await serve_raw(stay_silent)
    check = make_check(type="http", url=server.url, timeout=0.3)

    result = await run_probe(check)
    await server.wait_finished(1, deadline=1.0)

    assert result.reason is Reason.TIMEOUT
    assert server.accepted == 1
    assert server.finished == 1
