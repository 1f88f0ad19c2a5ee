"""The dns check: a name resolves to at least `min_answers` records."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from typing import Any

import aiodns
import aiodns.error
import pycares

from sidecar.checks.base import Check, ProbeError, Reason, Resources
from sidecar.checks.resolve import close_resolver, dns_error, make_resolver
from sidecar.config import DnsCheckConfig


class DnsCheck(Check[DnsCheckConfig]):
    """Passes when the name resolves to at least `min_answers` distinct records.

    Without `record`, resolution works like the application's own resolver: the hosts
    file, then DNS with the search domains and `ndots` of `resolv_conf`, A and AAAA.
    With `record`, that one query is sent for the name as written.
    Fails with `dns_nxdomain`, `dns_no_answer` (also for a CNAME chain that ends without a
    record of the type), `dns_servfail` or `dns_timeout`.
    """

    def __init__(self, config: DnsCheckConfig, resources: Resources) -> None:
        super().__init__(config, resources)
        self._resolver: aiodns.DNSResolver | None = None

    def _get_resolver(self) -> aiodns.DNSResolver:
        if self._resolver is None:
            try:
                self._resolver = make_resolver(
                    timeout=self.config.timeout,
                    nameservers=self.config.nameservers,
                    resolv_conf=self.config.resolv_conf,
                )
            except (OSError, ValueError) as exc:
                # ValueError: a path with a NUL byte, which validation lets through.
                cause = getattr(exc, "strerror", None) or exc
                raise ProbeError(
                    Reason.ERROR,
                    f"cannot read resolv_conf {self.config.resolv_conf!r}: {cause}",
                ) from exc
        return self._resolver

    def timeout_reason(self) -> Reason:
        return Reason.DNS_TIMEOUT

    async def probe(self) -> str:
        self.phase = "query"
        resolver = self._get_resolver()
        try:
            if self.config.record is None:
                answers = await self._resolve(resolver)
            else:
                answers = await self._query(resolver, self.config.record)
        except asyncio.CancelledError:
            # Stop the c-ares queries too: this channel belongs to this check alone.
            resolver.cancel()
            raise

        wanted = self.config.min_answers
        if len(answers) < wanted:
            raise ProbeError(
                Reason.DNS_NO_ANSWER,
                f"{self.config.host}: {len(answers)} answer(s), expected at least {wanted}",
            )
        shown = ", ".join(answers[:3]) + (" ..." if len(answers) > 3 else "")
        return f"{self.config.host}: {shown}"

    async def _resolve(self, resolver: aiodns.DNSResolver) -> list[str]:
        host = self.config.host
        try:
            result = await resolver.getaddrinfo(host, family=socket.AF_UNSPEC)
        except aiodns.error.DNSError as exc:
            raise dns_error(exc, host) from exc
        addresses: list[str] = []
        for node in result.nodes:
            address = node.addr[0]
            text = address.decode() if isinstance(address, bytes) else str(address)
            if text not in addresses:
                addresses.append(text)
        return addresses

    async def _query(self, resolver: aiodns.DNSResolver, record: str) -> list[str]:
        host = self.config.host
        try:
            result = await resolver.query_dns(host, record)
        except aiodns.error.DNSError as exc:
            error = dns_error(exc, host)
            if error.reason is Reason.DNS_NXDOMAIN and record != "CNAME":
                await self._raise_if_dangling_cname(resolver, record)
            raise error from exc

        wanted_type = getattr(pycares, f"QUERY_TYPE_{record}")
        answers = [_format_record(r.data) for r in result.answer if r.type == wanted_type]
        if answers:
            return list(dict.fromkeys(answers))
        _raise_if_chain(host, record, result)
        return []

    async def _raise_if_dangling_cname(self, resolver: aiodns.DNSResolver, record: str) -> None:
        """Turn NXDOMAIN into `dns_no_answer` when the name is a CNAME whose target is missing."""
        host = self.config.host
        try:
            result = await resolver.query_dns(host, "CNAME")
        except aiodns.error.DNSError:
            return
        _raise_if_chain(host, record, result)

    async def close(self) -> None:
        if self._resolver is not None:
            resolver, self._resolver = self._resolver, None
            await close_resolver(resolver)


def _raise_if_chain(host: str, record: str, result: pycares.DNSResult) -> None:
    chain = [r.data.cname for r in result.answer if isinstance(r.data, pycares.CNAMERecordData)]
    if chain:
        raise ProbeError(
            Reason.DNS_NO_ANSWER,
            f"{host}: CNAME chain {' -> '.join([host, *chain])} ends without {record} records",
        )


def _format_record(data: Any) -> str:
    """Render one record's data compactly, e.g. `10.0.0.1` or `0 5 3306 mysql-0.mysql`."""
    is_record = dataclasses.is_dataclass(data) and not isinstance(data, type)
    fields = dataclasses.asdict(data) if is_record else {"value": data}
    values = [
        v.decode(errors="replace") if isinstance(v, bytes) else str(v) for v in fields.values()
    ]
    return " ".join(values)
