"""The mysql check: MySQL or MariaDB accepts a login and answers a ping or a query."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from typing import Any

import aiomysql
import pymysql
from pymysql.constants import CR, ER

from sidecar.checks.base import Check, Reason, Resources, translate_os_error
from sidecar.checks.resolve import resolve_addresses
from sidecar.config import MysqlCheckConfig
from sidecar.redact import Secret

logger = logging.getLogger(__name__)

# Seconds allowed for COM_QUIT when a connection is closed politely.
QUIT_TIMEOUT = 1.0
_NOT_CONNECTED = "Not connected"  # aiomysql's Connection.host_info before the TCP connect
_AUTH_ERRORS = {
    ER.ACCESS_DENIED_ERROR,
    ER.DBACCESS_DENIED_ERROR,
    ER.HOST_NOT_PRIVILEGED,
    ER.HOST_IS_BLOCKED,
    ER.NOT_SUPPORTED_AUTH_MODE,
    1820,  # ER_MUST_CHANGE_PASSWORD
    1862,  # ER_MUST_CHANGE_PASSWORD_LOGIN
}
_LOST_ERRORS = {CR.CR_SERVER_LOST, CR.CR_SERVER_GONE_ERROR, CR.CR_SERVER_LOST_EXTENDED}


class MysqlCheck(Check[MysqlCheckConfig]):
    """Passes when the server completes a handshake and login, then answers a ping, or runs
    `query` without error.

    One connection stays open between probes, so a steady-state probe opens no new server
    connection. When the kept connection fails, the same attempt retries once on a fresh
    connection, so a server restart between probes is not a failure. Fails with `refused`,
    `connect_timeout`, `timeout` (including a server that accepts TCP but sends no
    greeting), `connection_lost`, `auth`, `unknown_database`, `query_failed`, `tls`,
    `protocol` or a `dns_*` reason.
    """

    def __init__(self, config: MysqlCheckConfig, resources: Resources) -> None:
        super().__init__(config, resources)
        self._connection: Any = None  # aiomysql.Connection; the library has no type hints
        self._connecting: Any = None
        self._ssl = _ssl_context(config)

    def secrets(self) -> tuple[Secret | None, ...]:
        return (self.config.password,)

    async def probe(self) -> str:
        if self._connection is not None:
            try:
                return await self._ask(self._connection)
            except asyncio.CancelledError:
                self._discard()
                raise
            except Exception as exc:
                logger.debug(
                    "kept connection failed; retrying on a new one",
                    extra={"check": self.name, "error": type(exc).__name__},
                )
                self._discard()

        try:
            self._connection = await self._connect()
            return await self._ask(self._connection)
        except asyncio.CancelledError:
            self._note_connect_progress()
            self._discard()
            raise
        except Exception:
            self._discard()
            raise

    async def _connect(self) -> Any:
        config = self.config
        self.phase = "connect"
        host = config.host
        if host is not None and self._ssl is None:
            # Resolve with c-ares, so a hung DNS server costs this probe alone; with TLS the
            # driver needs the name itself to verify the certificate.
            self.phase = "resolve"
            addresses = await resolve_addresses(self.resources.resolver, host, config.port)
            host = addresses[0][1]
            self.phase = "connect"

        connection = aiomysql.Connection(
            host=host or "localhost",
            port=config.port,
            unix_socket=config.unix_socket,
            user=config.user,
            password=config.password.reveal() if config.password else "",
            db=config.database,
            ssl=self._ssl,
            autocommit=True,
            program_name="readiness-sidecar",
        )
        self._connecting = connection
        await connection._connect()  # the body of aiomysql.connect() without its wrapper
        self._connecting = None
        return connection

    async def _ask(self, connection: Any) -> str:
        self.phase = "query"
        if self.config.query is None:
            await connection.ping(reconnect=False)
            return f"ping ok ({connection.get_server_info()})"
        async with connection.cursor() as cursor:
            await cursor.execute(self.config.query)
            rows = await cursor.fetchall()
        return f"query returned {len(rows)} row(s)"

    def _note_connect_progress(self) -> None:
        """Name the handshake step a connection attempt stopped in, for the timeout detail."""
        connecting = self._connecting
        if self.phase != "connect" or connecting is None:
            return
        if connecting.host_info == _NOT_CONNECTED:
            return
        if getattr(connecting, "server_version", None) is None:
            self.phase = "greeting: the server accepted TCP but sent no MySQL greeting"
        else:
            self.phase = "login"

    def timeout_reason(self) -> Reason:
        if self.phase == "resolve":
            return Reason.DNS_TIMEOUT
        return Reason.CONNECT_TIMEOUT if self.phase == "connect" else Reason.TIMEOUT

    def translate(self, exc: Exception) -> tuple[Reason, str] | None:
        if not isinstance(exc, pymysql.err.MySQLError):
            return None
        code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
        message = str(exc.args[1]) if len(exc.args) > 1 else str(exc)
        if code == CR.CR_CONN_HOST_ERROR:
            cause = exc.__cause__
            mapped = translate_os_error(cause, "connect") if cause is not None else None
            return mapped or (Reason.REFUSED, message)
        if code in _AUTH_ERRORS:
            return Reason.AUTH, f"login rejected: {message}"
        if code == ER.BAD_DB_ERROR:
            return Reason.UNKNOWN_DATABASE, message
        if code in _LOST_ERRORS:
            return Reason.CONNECTION_LOST, f"{message} during {self.phase}"
        if code == ER.CON_COUNT_ERROR:
            return Reason.REFUSED, f"server rejected the connection: {message}"
        if isinstance(exc, pymysql.err.InterfaceError | pymysql.err.InternalError):
            return Reason.PROTOCOL, f"{message} during {self.phase}"
        if self.phase == "query":
            return Reason.QUERY_FAILED, f"({code}) {message}"
        return Reason.ERROR, f"({code}) {message}"

    def _discard(self) -> None:
        """Drop the kept connection without a goodbye: its state is unknown."""
        for connection in (self._connection, self._connecting):
            if connection is not None:
                connection.close()
        self._connection = None
        self._connecting = None

    async def close(self) -> None:
        """Close the kept connection with COM_QUIT, so the server logs no aborted client."""
        connection, self._connection = self._connection, None
        if connection is None:
            return
        with contextlib.suppress(Exception):
            async with asyncio.timeout(QUIT_TIMEOUT):
                await connection.ensure_closed()
        connection.close()


def _ssl_context(config: MysqlCheckConfig) -> ssl.SSLContext | None:
    if not config.tls:
        return None
    if config.insecure:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        logger.warning(
            "TLS certificate verification is off for this check (insecure: true)",
            extra={"check": config.name},
        )
        return context
    return ssl.create_default_context(cafile=config.ca_file)
