"""Server load and time per probe of the mysql check, against mysqladmin ping and aiomysql."""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import harness

IDLE_WINDOW = 3.0
# Idle connections opened at the end to measure the server memory each one holds.
HELD_CONNECTIONS = 100


@dataclass
class Totals:
    """Costs of one method over all its rounds."""

    name: str
    probes: int = 0
    new_connections: int = 0
    aborted: int = 0
    server_cpu: float = 0.0  # utime + stime of mariadbd, seconds
    server_run_ns: int = 0  # run time of mariadbd's threads from schedstat, nanoseconds
    client_cpu: float = 0.0
    wall: float = 0.0
    times: list[float] = field(default_factory=list)
    loads: list[float] = field(default_factory=list)


class ServerCounters:
    """Reader of mariadbd's counters on one kept root connection, so reading opens none."""

    def __init__(self, server: Any) -> None:
        self.pid = harness.mariadb_pid(server)
        self._conn = server.connect_root()

    def status(self) -> dict[str, int]:
        with self._conn.cursor() as cursor:
            cursor.execute(
                "SHOW GLOBAL STATUS WHERE Variable_name IN "
                "('Connections', 'Aborted_clients', 'Aborted_connects')"
            )
            return {name: int(value) for name, value in cursor.fetchall()}

    def cpu(self) -> float:
        return harness.cpu_seconds(self.pid)

    def run_ns(self) -> int:
        """Return the on-CPU nanoseconds of the server's live threads, finer than utime+stime."""
        total = 0
        for task in Path(f"/proc/{self.pid}/task").iterdir():
            try:
                total += int((task / "schedstat").read_text().split()[0])
            except (OSError, ValueError, IndexError):
                continue
        return total

    def variable(self, name: str) -> int:
        with self._conn.cursor() as cursor:
            cursor.execute(f"SELECT @@{name}")
            return int(cursor.fetchone()[0])

    def close(self) -> None:
        self._conn.close()


# ---------------------------------------------------------------------------------------------
# The probe methods. Each returns a coroutine function that runs `count` probes and returns
# the seconds each one took.


ProbeRun = Callable[[int], Awaitable[list[float]]]


async def _timed(count: int, probe: Callable[[], Awaitable[None]]) -> list[float]:
    times = []
    for _ in range(count):
        started = time.perf_counter()
        await probe()
        times.append(time.perf_counter() - started)
    return times


class SidecarCheck:
    """The sidecar's own mysql check, run through run_probe like the scheduler runs it."""

    def __init__(self, server: Any, workdir: Path) -> None:
        self.server = server
        self.workdir = workdir
        self.check: Any = None
        self.resources: Any = None

    async def open(self) -> None:
        from sidecar.checks import Resources, create_check
        from sidecar.checks.http import create_session
        from sidecar.checks.resolve import make_resolver
        from sidecar.config import load

        password = self.workdir / "password"
        password.write_text(self.server.app_password)
        config = harness.write_config(
            self.workdir / "mysql.yaml",
            harness.free_port(),
            [
                {
                    "name": "mysql",
                    "type": "mysql",
                    "host": self.server.host,
                    "port": self.server.port,
                    "user": self.server.app_user,
                    "password_file": str(password),
                }
            ],
        )
        resolver = make_resolver(timeout=5.0)
        self.resources = Resources(resolver=resolver, http=create_session(resolver))
        self.check = create_check(load(config).checks[0], self.resources)
        # The first probe opens the kept connection; the measured ones are steady state.
        await self.probe()

    async def probe(self) -> None:
        from sidecar.checks import run_probe

        result = await run_probe(self.check)
        if not result.ok:
            raise RuntimeError(f"mysql check failed: {result.reason}: {result.detail}")

    async def run(self, count: int) -> list[float]:
        return await _timed(count, self.probe)

    async def close(self) -> None:
        from sidecar.checks.resolve import close_resolver

        await self.check.close()
        await self.resources.http.close()
        await close_resolver(self.resources.resolver)


def _connect_args(server: Any) -> dict[str, Any]:
    return {
        "host": server.host,
        "port": server.port,
        "user": server.app_user,
        "password": server.app_password,
        "autocommit": True,
    }


class BarePing:
    """aiomysql's ping on one connection kept open: the least a kept-connection probe costs."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.conn: Any = None

    async def open(self) -> None:
        import aiomysql

        self.conn = await aiomysql.connect(**_connect_args(self.server))

    async def probe(self) -> None:
        await self.conn.ping(reconnect=False)

    async def run(self, count: int) -> list[float]:
        return await _timed(count, self.probe)

    async def close(self) -> None:
        await self.conn.ensure_closed()


class FreshConnection:
    """A new aiomysql connection per probe: connect, log in, ping, COM_QUIT."""

    def __init__(self, server: Any) -> None:
        self.server = server

    async def open(self) -> None:
        pass

    async def probe(self) -> None:
        import aiomysql

        conn = await aiomysql.connect(**_connect_args(self.server))
        try:
            await conn.ping(reconnect=False)
        finally:
            await conn.ensure_closed()

    async def run(self, count: int) -> list[float]:
        return await _timed(count, self.probe)

    async def close(self) -> None:
        pass


class MysqladminPing:
    """`mysqladmin ping` run as a new process per probe, as an exec readiness probe does."""

    def __init__(self, server: Any, workdir: Path, program: str) -> None:
        # The password goes in an option file, not on the command line.
        options = workdir / "client.cnf"
        options.write_text(f"[client]\nuser={server.app_user}\npassword={server.app_password}\n")
        os.chmod(options, 0o600)
        self.command = [
            program,
            f"--defaults-extra-file={options}",
            "--protocol=TCP",
            "-h",
            server.host,
            "-P",
            str(server.port),
            "ping",
        ]

    async def open(self) -> None:
        pass

    async def run(self, count: int) -> list[float]:
        # Blocking on purpose: nothing else runs on this loop meanwhile.
        return _exec_probes(self.command, count)

    async def close(self) -> None:
        pass


def _exec_probes(command: list[str], count: int) -> list[float]:
    times = []
    for _ in range(count):
        started = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        times.append(time.perf_counter() - started)
        if result.returncode != 0 or "alive" not in result.stdout:
            raise RuntimeError(f"mysqladmin ping failed: {result.stdout} {result.stderr}")
    return times


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


async def measure_method(method: Any, totals: Totals, counters: ServerCounters, count: int) -> None:
    await method.open()
    try:
        before = counters.status()
        cpu_before, ns_before = counters.cpu(), counters.run_ns()
        client_before = time.process_time() + _children_cpu()
        totals.loads.append(harness.load_average())
        started = time.monotonic()
        times = await method.run(count)
        totals.wall += time.monotonic() - started
        totals.client_cpu += time.process_time() + _children_cpu() - client_before
        totals.server_cpu += counters.cpu() - cpu_before
        totals.server_run_ns += counters.run_ns() - ns_before
        after = counters.status()
    finally:
        await method.close()
    totals.probes += count
    totals.times.extend(times)
    totals.new_connections += after["Connections"] - before["Connections"]
    totals.aborted += (after["Aborted_clients"] - before["Aborted_clients"]) + (
        after["Aborted_connects"] - before["Aborted_connects"]
    )


async def held_connection_kib(server: Any, counters: ServerCounters, count: int) -> float:
    """Measure mariadbd's resident memory per idle open connection in KiB, over `count`."""
    import aiomysql

    before = harness.rss_mib(counters.pid)
    connections = []
    try:
        for _ in range(count):
            conn = await aiomysql.connect(**_connect_args(server))
            await conn.ping(reconnect=False)
            connections.append(conn)
        await asyncio.sleep(0.5)
        after = harness.rss_mib(counters.pid)
    finally:
        for conn in connections:
            await conn.ensure_closed()
    return 1024 * (after - before) / count


def idle_rates(counters: ServerCounters, seconds: float) -> tuple[float, float]:
    """Measure mariadbd's CPU while no client is connected, in s/s and ns/s."""
    cpu, ns = counters.cpu(), counters.run_ns()
    time.sleep(seconds)
    return (counters.cpu() - cpu) / seconds, (counters.run_ns() - ns) / seconds


@dataclass
class Run:
    """Everything one run of the benchmark measured."""

    totals: list[Totals]
    idle_cpu: float
    idle_ns: float
    held_kib: float
    held_count: int
    max_connections: int


async def run_all(
    server: Any, workdir: Path, probes: int, rounds: int, mysqladmin: str | None
) -> Run:
    counters = ServerCounters(server)
    try:
        idle_cpu, idle_ns = idle_rates(counters, IDLE_WINDOW)
        methods: list[tuple[str, Any]] = [
            ("aiomysql ping, one kept connection", BarePing(server)),
            ("sidecar mysql check (run_probe), kept connection", SidecarCheck(server, workdir)),
            ("aiomysql connect + ping + COM_QUIT per probe", FreshConnection(server)),
        ]
        if mysqladmin:
            methods.append(
                (
                    "mysqladmin ping, a new process per probe",
                    MysqladminPing(server, workdir, mysqladmin),
                )
            )
        totals = {name: Totals(name) for name, _ in methods}
        per_round = max(1, probes // rounds)
        for round_number in range(rounds):
            for name, method in methods:
                harness.note(f"round {round_number + 1}: {name}")
                await measure_method(method, totals[name], counters, per_round)
        held_count = HELD_CONNECTIONS
        held_kib = await held_connection_kib(server, counters, held_count)
        max_connections = counters.variable("max_connections")
    finally:
        counters.close()
    return Run(list(totals.values()), idle_cpu, idle_ns, held_kib, held_count, max_connections)


def summarize(totals: Totals, idle_cpu: float, idle_ns: float) -> dict[str, Any]:
    n = totals.probes
    server_net = max(0.0, totals.server_cpu - idle_cpu * totals.wall)
    run_net = max(0.0, totals.server_run_ns - idle_ns * totals.wall)
    return {
        "method": totals.name,
        "probes": n,
        "new_connections": totals.new_connections,
        "aborted": totals.aborted,
        "server_cpu_ms": 1000 * totals.server_cpu,
        "server_cpu_us_per_probe": 1e6 * server_net / n,
        "server_run_us_per_probe": run_net / 1000 / n,
        "mean_us": 1e6 * sum(totals.times) / n,
        "p50_us": 1e6 * harness.percentile(totals.times, 0.5),
        "p99_us": 1e6 * harness.percentile(totals.times, 0.99),
        "client_cpu_us_per_probe": 1e6 * totals.client_cpu / n,
        "load": max(totals.loads),
    }


def measure(probes: int, rounds: int) -> dict[str, Any]:
    """Run every method against a new private MariaDB and return the summary."""
    mysqladmin = shutil.which("mysqladmin") or shutil.which("mariadb-admin")
    if mysqladmin is None:
        harness.note("mysqladmin not found (Debian package mariadb-client): skipping it")
    with harness.work_directory("bench-mysql-") as workdir:
        with harness.private_mariadb(workdir) as server:
            run = asyncio.run(run_all(server, workdir, probes, rounds, mysqladmin))
    return {
        "probes": probes,
        "rounds": rounds,
        "idle_cpu_per_second": run.idle_cpu,
        "idle_run_ns_per_second": run.idle_ns,
        "held_connection_kib": run.held_kib,
        "held_connections": run.held_count,
        "max_connections": run.max_connections,
        "methods": [summarize(t, run.idle_cpu, run.idle_ns) for t in run.totals],
        "load": harness.load_average(),
    }


def print_results(result: dict[str, Any]) -> None:
    rows = result["methods"]
    bare = rows[0]
    print(f"machine: {harness.machine_summary()}")
    print(
        f"private mariadbd on 127.0.0.1, TCP; {result['probes']} probes per method in "
        f"{result['rounds']} round(s); mariadbd idle: "
        f"{1000 * result['idle_cpu_per_second']:.1f} ms CPU/s (utime+stime), "
        f"{result['idle_run_ns_per_second'] / 1e6:.1f} ms/s (schedstat), taken away from the "
        "per-probe figures"
    )
    print()
    harness.print_table(
        [
            "method",
            "new connections",
            "aborted",
            "server CPU ms",
            "server CPU us/probe",
            "schedstat us/probe",
            "mean us",
            "p50 us",
            "p99 us",
            "mean x bare ping",
            "p50 x bare ping",
            "client CPU us/probe",
            "load 1m",
        ],
        [
            [
                row["method"],
                row["new_connections"],
                row["aborted"],
                f"{row['server_cpu_ms']:.0f}",
                f"{row['server_cpu_us_per_probe']:.1f}",
                f"{row['server_run_us_per_probe']:.1f}",
                f"{row['mean_us']:.0f}",
                f"{row['p50_us']:.0f}",
                f"{row['p99_us']:.0f}",
                f"{row['mean_us'] / bare['mean_us']:.2f}",
                f"{row['p50_us'] / bare['p50_us']:.2f}",
                f"{row['client_cpu_us_per_probe']:.0f}",
                f"{row['load']:.2f}",
            ]
            for row in rows
        ],
    )
    print()
    print(
        "server CPU ms is the raw utime+stime delta (10 ms ticks); the per-probe columns take "
        "away the idle rate over the method's run time"
    )
    print(
        f"{result['held_connections']} idle open connections: mariadbd RSS "
        f"+{result['held_connection_kib']:.0f} KiB each; max_connections "
        f"{result['max_connections']} (server default)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="200 probes per method")
    parser.add_argument("--probes", type=int, default=None, help="probes per method (1000)")
    parser.add_argument(
        "--rounds", type=int, default=1, help="split the probes into rounds that alternate methods"
    )
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    harness.exit_on_sigterm()
    probes = args.probes or (200 if args.quick else 1000)
    result = measure(probes, args.rounds)
    print_results(result)
    harness.save_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
