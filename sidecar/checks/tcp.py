"""The tcp check: a TCP connection to host:port is accepted."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket

from sidecar.checks.base import Check, ProbeError, Reason, Resources, translate_os_error
from sidecar.checks.resolve import resolve_addresses
from sidecar.config import TcpCheckConfig

logger = logging.getLogger(__name__)


# Ports where a bare TCP connect does harm. MySQL and MariaDB count a connection closed
# before the handshake as a connect error, and after max_connect_errors of them (100 by
# default) refuse every further connection from that host until FLUSH HOSTS.
DATABASE_PORTS = {3306: "MySQL/MariaDB", 33060: "MySQL X Protocol"}


class TcpCheck(Check[TcpCheckConfig]):
    """Passes when a TCP connection to host:port is accepted, then closes it with a FIN.

    A name is resolved with the hosts file and DNS, and every address is tried in turn.
    Fails with the reason of the last address tried: `refused`, `connect_timeout`,
    `unreachable`, or a `dns_*` reason when the name does not resolve.
    """

    def __init__(self, config: TcpCheckConfig, resources: Resources) -> None:
        super().__init__(config, resources)
        server = DATABASE_PORTS.get(config.port)
        if server is not None:
            logger.warning(
                "tcp check on a %s port: the server counts each bare connect as an error and "
                "may block this host after max_connect_errors; use a mysql check instead",
                server,
                extra={"check": config.name, "port": config.port},
            )

    async def probe(self) -> str:
        self.phase = "resolve"
        addresses = await resolve_addresses(
            self.resources.resolver, self.config.host, self.config.port
        )

        self.phase = "connect"
        failures: list[str] = []
        last: ProbeError | None = None
        for family, address in addresses:
            try:
                await self._connect(family, address)
            except OSError as exc:
                reason, text = translate_os_error(exc, "connect") or (Reason.ERROR, str(exc))
                last = ProbeError(reason, text)
                failures.append(f"{_format(address, self.config.port)} {text}")
                continue
            return f"connected to {_format(address, self.config.port)}"
        assert last is not None
        raise ProbeError(last.reason, "; ".join(failures))

    async def _connect(self, family: socket.AddressFamily, address: str) -> None:
        _, writer = await asyncio.open_connection(address, self.config.port, family=family)
        writer.close()
        # A peer that resets while we close does not make the check fail: it accepted.
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def _format(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
