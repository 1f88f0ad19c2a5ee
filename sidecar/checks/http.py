"""The http check: an HTTP request gets the expected status and, optionally, body."""

from __future__ import annotations

import base64
import logging
import socket
import ssl
from types import SimpleNamespace
from typing import Any

import aiodns
import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from sidecar import __version__
from sidecar.checks.base import Check, ProbeError, Reason, Resources, translate_os_error
from sidecar.checks.resolve import resolve_addresses
from sidecar.config import HttpCheckConfig
from sidecar.redact import Secret

logger = logging.getLogger(__name__)

# Enough to match a health endpoint's body without letting a large answer use memory.
MAX_BODY_BYTES = 64 * 1024
USER_AGENT = f"readiness-sidecar/{__version__}"


class HttpCheck(Check[HttpCheckConfig]):
    """Passes when the request gets a status in `expect_status` (default 2xx) and, with
    `expect_body`, a body containing that text within its first 64 KiB.

    Redirects are not followed unless `follow_redirects` is set; an unexpected redirect fails
    with its Location. TLS is verified against the system CAs or `ca_file`, unless
    `insecure`. Fails with `http_status`, `body_mismatch`, `tls`, `refused`,
    `connect_timeout`, `timeout`, `connection_lost`, `protocol` or a `dns_*` reason.
    """

    def __init__(self, config: HttpCheckConfig, resources: Resources) -> None:
        super().__init__(config, resources)
        self._ssl: ssl.SSLContext | bool = True
        if config.insecure:
            self._ssl = False
            logger.warning(
                "TLS certificate verification is off for this check (insecure: true)",
                extra={"check": config.name},
            )
        elif config.ca_file:
            self._ssl = ssl.create_default_context(cafile=config.ca_file)
        self._headers = {"User-Agent": USER_AGENT, **dict(config.headers)}
        self._token = config.bearer_token
        # aiohttp sends a password in the URL as Basic auth, and a server may repeat the
        # password or the encoded header value.
        url = URL(config.url)
        self._url_secrets: tuple[Secret, ...] = ()
        if url.password:
            self._url_secrets = (
                Secret(url.password),
                Secret(_basic_credentials(url.user or "", url.password)),
            )

    def secrets(self) -> tuple[Secret | None, ...]:
        return (self._token, *self._url_secrets)

    async def probe(self) -> str:
        config = self.config
        headers = dict(self._headers)
        if self._token is not None:
            headers["Authorization"] = f"Bearer {self._token.reveal()}"

        self.phase = "connect"
        async with self.resources.http.request(
            config.method,
            config.url,
            headers=headers,
            allow_redirects=config.follow_redirects,
            ssl=self._ssl,
            server_hostname=config.server_name,
            # The probe runner's deadline covers connect, headers and body.
            timeout=aiohttp.ClientTimeout(total=None),
            trace_request_ctx=self,
        ) as response:
            self.phase = "body"
            status = response.status
            if status not in config.expect_status:
                raise ProbeError(Reason.HTTP_STATUS, _describe_status(response))
            if config.expect_body is None:
                return f"HTTP {status}"
            body = await _read_body(response, MAX_BODY_BYTES)

        text = body.decode(response.get_encoding() if response.charset else "utf-8", "replace")
        if config.expect_body not in text:
            raise ProbeError(
                Reason.BODY_MISMATCH,
                f"HTTP {status}, but the body does not contain {config.expect_body!r}",
            )
        return f"HTTP {status}, body matched"

    def translate(self, exc: Exception) -> tuple[Reason, str] | None:
        if isinstance(exc, aiohttp.ClientConnectorCertificateError):
            return Reason.TLS, f"TLS certificate verification failed: {exc.certificate_error}"
        if isinstance(exc, aiohttp.ClientConnectorSSLError | aiohttp.ClientSSLError):
            return Reason.TLS, f"TLS handshake failed: {exc}"
        if isinstance(exc, aiohttp.ClientConnectorError):
            mapped = translate_os_error(exc.os_error, "connect")
            return mapped or (Reason.ERROR, f"connect failed: {exc.os_error}")
        if isinstance(exc, aiohttp.ServerDisconnectedError):
            return Reason.CONNECTION_LOST, f"server closed the connection during {self.phase}"
        if isinstance(exc, aiohttp.ClientPayloadError):
            return Reason.CONNECTION_LOST, f"incomplete body: {exc}"
        if isinstance(exc, aiohttp.TooManyRedirects):
            return Reason.HTTP_STATUS, f"too many redirects ({len(exc.history)})"
        if isinstance(exc, aiohttp.ClientResponseError):
            return Reason.PROTOCOL, f"invalid HTTP response: {exc.message}"
        if isinstance(exc, aiohttp.ClientOSError):
            return translate_os_error(exc, self.phase)
        return None


def _basic_credentials(user: str, password: str) -> str:
    """Encode user and password as aiohttp's Basic auth header does (latin-1, base64)."""
    pair = f"{user}:{password}"
    try:
        raw = pair.encode("latin1")
    except UnicodeEncodeError:
        raw = pair.encode("utf-8")
    return base64.b64encode(raw).decode("ascii")


async def _read_body(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """Read the body up to `limit` bytes; `read(n)` alone stops at the first chunk."""
    body = bytearray()
    while len(body) < limit:
        chunk = await response.content.read(limit - len(body))
        if not chunk:
            break
        body += chunk
    return bytes(body)


def _describe_status(response: aiohttp.ClientResponse) -> str:
    status = f"HTTP {response.status}"
    if response.reason:
        # A reason phrase is the server's free text; keep it short.
        status += f" {response.reason[:80]}"
    location = response.headers.get("Location")
    if 300 <= response.status < 400 and location:
        return f"{status}, redirect to {location} not followed (set follow_redirects)"
    return status


class _Resolver(AbstractResolver):
    """aiohttp resolver on the shared c-ares channel, with the sidecar's DNS reasons."""

    def __init__(self, resolver: aiodns.DNSResolver) -> None:
        self._resolver = resolver

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        addresses = await resolve_addresses(self._resolver, host.rstrip("."), port)
        return [
            ResolveResult(hostname=host, host=address, port=port, family=fam, proto=0, flags=0)
            for fam, address in addresses
            if family in (socket.AF_UNSPEC, fam)
        ]

    async def close(self) -> None:
        """The shared resolver is closed by its owner."""


async def _on_connection_ready(
    session: aiohttp.ClientSession, context: SimpleNamespace, params: Any
) -> None:
    check = context.trace_request_ctx
    if isinstance(check, HttpCheck):
        check.phase = "request"


def create_session(resolver: aiodns.DNSResolver) -> aiohttp.ClientSession:
    """Create the one HTTP client session that every http check shares.

    Each probe opens a new connection (force_close), so a probe proves that the server
    accepts connections, and an idle pooled connection closed by the server never fails
    a probe. DNS is not cached, so a moved Service is seen at the next probe.
    """
    trace = aiohttp.TraceConfig()
    trace.on_connection_create_end.append(_on_connection_ready)
    trace.on_connection_reuseconn.append(_on_connection_ready)
    connector = aiohttp.TCPConnector(
        resolver=_Resolver(resolver),
        use_dns_cache=False,
        force_close=True,
        limit=0,
    )
    return aiohttp.ClientSession(
        connector=connector,
        trace_configs=[trace],
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=True,
    )
