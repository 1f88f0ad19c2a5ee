"""The dns check against private DNS servers: a scripted UDP server and a real dnsmasq."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar.checks.base import Reason, run_probe
from tests.conftest import require_binary
from tests.servers.dns import (
    Answer,
    CName,
    Dnsmasq,
    Empty,
    NXDomain,
    ScriptedDNSServer,
    ServFail,
    Silent,
    Srv,
    write_resolv_conf,
)


@pytest.fixture
def dns_server() -> Iterator[ScriptedDNSServer]:
    server = ScriptedDNSServer().start()
    yield server
    server.stop()


@pytest.fixture
def dnsmasq(tmp_path: Path) -> Iterator[Dnsmasq]:
    require_binary("dnsmasq")
    server = Dnsmasq(
        tmp_path / "dnsmasq",
        records={"mysql.app.svc.cluster.test": ["10.1.2.3"], "orders.test": ["10.1.2.4"]},
        local_domains=("cluster.test", "test"),
    )
    server.start()
    yield server
    server.close()


async def test_record_query_answered(make_check, dns_server):
    dns_server.set("db.test", Answer(["10.0.0.7", "10.0.0.8"]))
    check = make_check(type="dns", host="db.test", record="A", nameservers=[dns_server.nameserver])

    result = await run_probe(check)

    assert result.ok, result
    assert "10.0.0.7" in result.detail
    assert "10.0.0.8" in result.detail


@pytest.mark.parametrize(
    ("behaviour", "reason"),
    [
        (NXDomain(), Reason.DNS_NXDOMAIN),
        (ServFail(), Reason.DNS_SERVFAIL),
        (Empty(), Reason.DNS_NO_ANSWER),
        (CName("gone.test", rcode="NOERROR"), Reason.DNS_NO_ANSWER),
        (CName("gone.test", rcode="NXDOMAIN"), Reason.DNS_NO_ANSWER),
    ],
    ids=["nxdomain", "servfail", "empty", "cname-nowhere-noerror", "cname-nowhere-nxdomain"],
)
async def test_record_query_failures(make_check, dns_server, behaviour, reason):
    dns_server.set("db.test", behaviour)
    check = make_check(type="dns", host="db.test", record="A", nameservers=[dns_server.nameserver])

    result = await run_probe(check)

    assert not result.ok
    assert result.reason is reason, result


async def test_dangling_cname_detail_names_chain(make_check, dns_server):
    dns_server.set("db.test", CName("gone.test"))
    check = make_check(type="dns", host="db.test", record="A", nameservers=[dns_server.nameserver])

    result = await run_probe(check)

    assert "db.test -> gone.test" in result.detail


async def test_silent_server_times_out(make_check, dns_server):
    dns_server.set("db.test", Silent())
    check = make_check(
        type="dns", host="db.test", record="A", nameservers=[dns_server.nameserver], timeout=0.4
    )

    result = await run_probe(check)

    assert result.reason is Reason.DNS_TIMEOUT
    assert 0.3 < result.duration_seconds < 0.4 + 0.3


async def test_min_answers_not_reached(make_check, dns_server):
    dns_server.set("db.test", Answer(["10.0.0.7"]))
    check = make_check(
        type="dns", host="db.test", record="A", nameservers=[dns_server.nameserver], min_answers=2
    )

    result = await run_probe(check)

    assert result.reason is Reason.DNS_NO_ANSWER
    assert "expected at least 2" in result.detail


async def test_srv_record(make_check, dns_server):
    dns_server.set("_mysql._tcp.db.test", Srv([(0, 5, 3306, "mysql-0.db.test")]))
    check = make_check(
        type="dns", host="_mysql._tcp.db.test", record="SRV", nameservers=[dns_server.nameserver]
    )

    result = await run_probe(check)

    assert result.ok, result
    assert "3306" in result.detail


async def test_search_list_and_ndots(make_check, dns_server, tmp_path):
    dns_server.set("mysql.app.svc.test", Answer(["10.0.0.9"]))
    resolv_conf = write_resolv_conf(
        tmp_path / "resolv.conf",
        dns_server.port,
        search=["app.svc.test", "svc.test"],
        ndots=5,
    )
    check = make_check(type="dns", host="mysql", resolv_conf=str(resolv_conf))

    result = await run_probe(check)

    assert result.ok, result
    assert "10.0.0.9" in result.detail
    assert dns_server.queries("mysql.app.svc.test") >= 1


async def test_search_list_not_used_for_absolute_name(make_check, dns_server, tmp_path):
    dns_server.set("mysql.app.svc.test", Answer(["10.0.0.9"]))
    resolv_conf = write_resolv_conf(
        tmp_path / "resolv.conf", dns_server.port, search=["app.svc.test"], ndots=5
    )
    check = make_check(type="dns", host="mysql.", resolv_conf=str(resolv_conf))

    result = await run_probe(check)

    assert result.reason is Reason.DNS_NXDOMAIN
    assert dns_server.queries("mysql.app.svc.test") == 0


async def test_localhost_from_hosts_file(make_check, dns_server, tmp_path):
    # The resolv.conf names a server that answers nothing, so an answer can only come from
    # the hosts file.
    dns_server.set_default(Silent())
    resolv_conf = write_resolv_conf(tmp_path / "resolv.conf", dns_server.port)
    check = make_check(type="dns", host="localhost", resolv_conf=str(resolv_conf), timeout=1)

    result = await run_probe(check)

    assert result.ok, result
    assert "127.0.0.1" in result.detail or "::1" in result.detail
    assert dns_server.queries("localhost") == 0


async def test_missing_resolv_conf_is_an_error(make_check, tmp_path):
    check = make_check(type="dns", host="mysql", resolv_conf=str(tmp_path / "absent.conf"))

    result = await run_probe(check)

    assert result.reason is Reason.ERROR
    assert "absent.conf" in result.detail


async def test_recovers_after_servfail(make_check, dns_server):
    dns_server.set("db.test", ServFail())
    check = make_check(type="dns", host="db.test", record="A", nameservers=[dns_server.nameserver])
    failed = await run_probe(check)

    dns_server.set("db.test", Answer(["10.0.0.7"]))
    recovered = await run_probe(check)

    assert failed.reason is Reason.DNS_SERVFAIL
    assert recovered.ok, recovered


async def test_dnsmasq_answers_short_name(make_check, dnsmasq, tmp_path):
    resolv_conf = write_resolv_conf(
        tmp_path / "resolv.conf",
        dnsmasq.port,
        search=["app.svc.cluster.test", "svc.cluster.test"],
        ndots=5,
    )
    check = make_check(type="dns", host="mysql", resolv_conf=str(resolv_conf))

    result = await run_probe(check)

    assert result.ok, result
    assert "10.1.2.3" in result.detail


async def test_dnsmasq_unknown_name_nxdomain(make_check, dnsmasq):
    check = make_check(
        type="dns", host="missing.test", record="A", nameservers=[dnsmasq.nameserver]
    )

    result = await run_probe(check)

    assert result.reason is Reason.DNS_NXDOMAIN


async def test_dnsmasq_frozen_then_thawed(make_check, dnsmasq):
    check = make_check(
        type="dns", host="orders.test", record="A", nameservers=[dnsmasq.nameserver], timeout=0.5
    )

    dnsmasq.freeze()
    frozen = await run_probe(check)
    dnsmasq.thaw()
    thawed = await run_probe(check)

    assert frozen.reason is Reason.DNS_TIMEOUT
    assert frozen.duration_seconds < 0.5 + 0.3
    assert thawed.ok, thawed
