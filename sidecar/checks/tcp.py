"""The tcp check: a TCP connection to host:port is accepted."""

from __future__ import annotations

import asyncio
import contextlib
import socket

from sidecar.checks.base import Check, ProbeError, Reason, translate_os_error
from sidecar.checks.resolve import resolve_addresses
from sidecar.config import TcpCheckConfig


class TcpCheck(Check[TcpCheckConfig]):
    """Passes when a TCP connection to host:port is accepted, then closes it with a FIN.

    A name is resolved with the hosts file and DNS, and every address is tried in turn.
    Fails with the reason of the last address tried: `refused`, `connect_timeout`,
    `unreachable`, or a `dns_*` reason when the name does not resolve.
    """

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
