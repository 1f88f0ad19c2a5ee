"""Name resolution with aiodns (c-ares) and the mapping of its errors to failure reasons."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiodns
import aiodns.error
import pycares

from sidecar.checks.base import ProbeError, Reason

# c-ares error numbers -> (reason, text). Source: pycares.errno, the c-ares ARES_E* codes.
_DNS_ERRORS: dict[int, tuple[Reason, str]] = {
    pycares.errno.ARES_ENOTFOUND: (Reason.DNS_NXDOMAIN, "name not found (NXDOMAIN)"),
    pycares.errno.ARES_ENODATA: (Reason.DNS_NO_ANSWER, "no records of the requested type"),
    pycares.errno.ARES_ESERVFAIL: (Reason.DNS_SERVFAIL, "server failure (SERVFAIL)"),
    pycares.errno.ARES_EREFUSED: (Reason.DNS_SERVFAIL, "server refused the query (REFUSED)"),
    pycares.errno.ARES_ETIMEOUT: (Reason.DNS_TIMEOUT, "no answer from the DNS server"),
    pycares.errno.ARES_ECONNREFUSED: (Reason.DNS_TIMEOUT, "DNS server unreachable"),
    pycares.errno.ARES_EBADNAME: (Reason.ERROR, "malformed name"),
    pycares.errno.ARES_EFORMERR: (Reason.PROTOCOL, "malformed DNS reply"),
    pycares.errno.ARES_EBADRESP: (Reason.PROTOCOL, "malformed DNS reply"),
    pycares.errno.ARES_ENOTIMP: (Reason.DNS_SERVFAIL, "server does not implement the query"),
}


def dns_error(exc: aiodns.error.DNSError, name: str) -> ProbeError:
    """Translate an aiodns error for `name` into a ProbeError."""
    number = exc.args[0] if exc.args else None
    reason, text = _DNS_ERRORS.get(
        number if isinstance(number, int) else -1, (Reason.ERROR, str(exc))
    )
    return ProbeError(reason, f"{name}: {text}")


@dataclass(frozen=True, slots=True)
class ResolvConf:
    """The parts of resolv.conf(5) that decide which names are queried and where."""

    nameservers: tuple[str, ...] = ()
    search: tuple[str, ...] = ()
    ndots: int = 1


def read_resolv_conf(path: str) -> ResolvConf:
    """Parse `nameserver`, `search`, `domain` and `options ndots:N` from a resolv.conf file.

    Raises OSError when the file cannot be read. Like glibc, the last `search` or `domain`
    line wins, and ndots is capped at 15.
    """
    nameservers: list[str] = []
    search: list[str] = []
    ndots = 1
    for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
        words = line.split("#", 1)[0].split(";", 1)[0].split()
        if len(words) < 2:
            continue
        keyword, values = words[0], words[1:]
        if keyword == "nameserver":
            nameservers.append(values[0])
        elif keyword in ("search", "domain"):
            search = values
        elif keyword == "options":
            for option in values:
                name, _, value = option.partition(":")
                if name == "ndots" and value.isdigit():
                    ndots = min(int(value), 15)
    return ResolvConf(tuple(nameservers), tuple(search), ndots)


def make_resolver(
    *,
    timeout: float,
    nameservers: Sequence[str] = (),
    resolv_conf: str | None = None,
) -> aiodns.DNSResolver:
    """Create a resolver that gives up by itself after `timeout` seconds, with one try.

    With one try and the probe's own timeout, c-ares ends a query at about the time the
    probe is cancelled, so an abandoned query does not keep running. `nameservers`
    replace those of `resolv_conf`; raises OSError when `resolv_conf` cannot be read.
    """
    # NOTE: pycares 5.2.1 hands c-ares freed buffers for the `resolvconf_path` and
    # `lookups` options, so c-ares often reads no file at all and queries 127.0.0.1:53.
    # Neither is passed: the file is parsed here, and c-ares' default lookup order is
    # already the hosts file, then DNS.
    options: dict[str, Any] = {"timeout": timeout, "tries": 1}
    if resolv_conf:
        parsed = read_resolv_conf(resolv_conf)
        options["domains"] = list(parsed.search)
        options["ndots"] = parsed.ndots
        if parsed.nameservers and not nameservers:
            options["servers"] = list(parsed.nameservers)
    if nameservers:
        options["servers"] = list(nameservers)
    return aiodns.DNSResolver(**options)


async def resolve_addresses(
    resolver: aiodns.DNSResolver, host: str, port: int
) -> list[tuple[socket.AddressFamily, str]]:
    """Resolve `host` to (family, address) pairs, hosts file first; IP literals pass through."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
        return [(family, str(ip))]

    try:
        result = await resolver.getaddrinfo(host, port=port, type=socket.SOCK_STREAM)
    except aiodns.error.DNSError as exc:
        raise dns_error(exc, host) from exc
    addresses: list[tuple[socket.AddressFamily, str]] = []
    for node in result.nodes:
        address = node.addr[0]
        text = address.decode() if isinstance(address, bytes) else str(address)
        pair = (socket.AddressFamily(node.family), text)
        if pair not in addresses:
            addresses.append(pair)
    if not addresses:
        raise ProbeError(Reason.DNS_NO_ANSWER, f"{host}: no addresses")
    return addresses


async def close_resolver(resolver: aiodns.DNSResolver) -> None:
    """Cancel pending queries and close the resolver's channel."""
    resolver.cancel()
    await resolver.close()
    # c-ares delivers cancellations through the loop; let them run before returning.
    await asyncio.sleep(0)
