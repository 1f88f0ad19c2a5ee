"""The tcp check against loopback listeners that accept, refuse, hang or stay silent."""

from __future__ import annotations

import asyncio
import logging

from sidecar.checks.base import Reason, run_probe
from tests.servers.dns import Answer, ScriptedDNSServer
from tests.servers.tcp import ClosingListener, HangingPort, SilentListener, free_port


async def test_accepting_port_passes(make_check):
    with SilentListener() as listener:
        check = make_check(type="tcp", host="127.0.0.1", port=listener.port)

        result = await run_probe(check)

        assert result.ok, result
        assert f"127.0.0.1:{listener.port}" in result.detail
        assert listener.wait_accepted(1)


async def test_connection_closed_after_probe(make_check):
    with SilentListener() as listener:
        check = make_check(type="tcp", host="127.0.0.1", port=listener.port)

        await run_probe(check)

        deadline = asyncio.get_running_loop().time() + 2
        for _ in range(200):
            if not listener.open_connections or asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.01)
        assert listener.open_connections == 0


async def test_peer_closing_at_once_passes(make_check):
    with ClosingListener() as listener:
        check = make_check(type="tcp", host="127.0.0.1", port=listener.port)

        result = await run_probe(check)

        assert result.ok, result


async def test_refused_port(make_check):
    check = make_check(type="tcp", host="127.0.0.1", port=free_port())

    result = await run_probe(check)

    assert result.reason is Reason.REFUSED
    assert "refused" in result.detail


async def test_hanging_connect_times_out(make_check):
    with HangingPort() as port:
        check = make_check(type="tcp", host="127.0.0.1", port=port.port, timeout=0.5)

        result = await run_probe(check)

        assert result.reason is Reason.CONNECT_TIMEOUT
        assert 0.5 <= result.duration_seconds < 0.5 + 0.3


async def test_every_address_tried(make_check, tmp_path, monkeypatch):
    # The name resolves to a refusing address first and an accepting one second.
    with ScriptedDNSServer() as dns, SilentListener() as listener:
        refused_port = listener.port
        dns.set("multi.test", Answer(["127.0.0.2", "127.0.0.1"]))
        check = make_check(type="tcp", host="multi.test", port=refused_port)
        resolver = check.resources.resolver
        resolver.nameservers = [dns.nameserver]

        result = await run_probe(check)

        assert result.ok, result
        assert "127.0.0.1" in result.detail


async def test_all_addresses_refused_listed(make_check):
    with ScriptedDNSServer() as dns:
        port = free_port()
        dns.set("multi.test", Answer(["127.0.0.2", "127.0.0.3"]))
        check = make_check(type="tcp", host="multi.test", port=port)
        check.resources.resolver.nameservers = [dns.nameserver]

        result = await run_probe(check)

        assert result.reason is Reason.REFUSED
        assert f"127.0.0.2:{port}" in result.detail
        assert f"127.0.0.3:{port}" in result.detail


async def test_unresolvable_name(make_check):
    with ScriptedDNSServer() as dns:
        check = make_check(type="tcp", host="nowhere.test", port=80)
        check.resources.resolver.nameservers = [dns.nameserver]

        result = await run_probe(check)

        assert result.reason is Reason.DNS_NXDOMAIN


async def test_database_port_warns(make_check, caplog):
    caplog.set_level(logging.WARNING, logger="sidecar")

    make_check(type="tcp", host="127.0.0.1", port=3306)
    make_check(name="other", type="tcp", host="127.0.0.1", port=6379)

    warnings = [r for r in caplog.records if "max_connect_errors" in r.getMessage()]
    assert len(warnings) == 1
    assert warnings[0].check == "probe"
    assert "use a mysql check instead" in warnings[0].getMessage()
