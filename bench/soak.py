"""Soak run: `readiness-sidecar serve` against flapping loopback dependencies, sampled each second.

Usage: python bench/soak.py --minutes 10 --checks 50

The script starts every dependency itself on 127.0.0.1: TCP listeners that open and close on
a schedule, a port that never completes a connect, an HTTP server whose answers alternate
between 200 and 500, a listener that never answers HTTP, a scripted DNS server whose names
alternate between an answer and NXDOMAIN (and one name that gets no reply), and, when
mariadbd is installed, a private MariaDB killed with SIGKILL and restarted every minute.
Then it runs the sidecar as a child process with `--checks` checks spread over those
dependencies and samples, once a second, the child's RSS, open file descriptors, threads
and CPU time, and the latency of one GET /ready on a new connection, as the kubelet does.

It writes one CSV row per sample and prints a summary with pass criteria: RSS growth after
warm-up below 5 %, file descriptors and threads flat. The asyncio task count cannot be read
from outside the process (the sidecar exposes no debug endpoint), so it is not reported.
Everything started here is stopped on exit, also after Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import http.client
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import yaml
from aiohttp import web

# The fault servers of the test suite are reused. They live in the repository, not the package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.servers.dns import Answer, NXDomain, ScriptedDNSServer, Silent  # noqa: E402
from tests.servers.mariadb import MariaDBServer, find_mariadbd, make_template  # noqa: E402
from tests.servers.tcp import HangingPort, SilentListener, free_port  # noqa: E402

LOOPBACK = "127.0.0.1"
PASSWORD_ENV = "SOAK_MYSQL_PASSWORD"
# Seconds each flapping dependency spends up, then down.
TCP_PERIOD = 5.0
HTTP_PERIOD = 4.0
DNS_PERIOD = 6.0
# The MariaDB server is killed this often and started again this long after the kill.
MYSQL_KILL_EVERY = 60.0
MYSQL_DOWN_FOR = 5.0
# Pass criteria of the summary.
MAX_RSS_GROWTH = 0.05
FD_TOLERANCE = 2
THREAD_TOLERANCE = 0

T = TypeVar("T")


class Stop(Exception):
    """Raised by the signal handler to end the run early."""


# ---------------------------------------------------------------------------------------------
# Dependencies that flap, served by one asyncio loop in a background thread


class FlappingPort:
    """A TCP listener on a fixed port that is open for `period` seconds, then closed as long."""

    def __init__(self, period: float, offset: float) -> None:
        self.period = period
        self.offset = offset
        self.port = 0
        self.bind_failures = 0
        self._server: asyncio.Server | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, LOOPBACK, 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        self._task = asyncio.create_task(self._flap())

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    async def _flap(self) -> None:
        await asyncio.sleep(self.offset)
        while True:
            await asyncio.sleep(self.period)
            await self._close_listener()
            await asyncio.sleep(self.period)
            try:
                # asyncio sets SO_REUSEADDR, so the port can be bound again at once.
                self._server = await asyncio.start_server(self._accept, LOOPBACK, self.port)
            except OSError:
                self.bind_failures += 1

    async def _close_listener(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._close_listener()


class FlappingHttp:
    """An HTTP server whose /flap/N responds 200 and 500 by turns, each for `period` seconds."""

    def __init__(self, period: float) -> None:
        self.period = period
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/flap/{index}", self._flap)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, LOOPBACK, 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def _flap(self, request: web.Request) -> web.Response:
        index = int(request.match_info["index"])
        up = int(time.monotonic() / self.period + index) % 2 == 0
        status = 200 if up else 500
        return web.Response(status=status, text=f"status {status}\n")

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


class LoopThread:
    """An asyncio loop in a daemon thread, for the dependencies that are asyncio servers."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="deps", daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


class DnsFlapper:
    """Turns the scripted DNS server's flapping names between an answer and NXDOMAIN."""

    def __init__(self, dns: ScriptedDNSServer, names: list[str], period: float) -> None:
        self.dns = dns
        self.names = names
        self.period = period
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dns-flapper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        flip = 0
        while not self._stop.wait(self.period):
            flip += 1
            for index, name in enumerate(self.names):
                up = (flip + index) % 2 == 0
                self.dns.set(name, Answer([LOOPBACK]) if up else NXDomain())

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)


class MysqlKiller:
    """Kills the MariaDB server with SIGKILL every `every` seconds and restarts it later."""

    def __init__(self, server: MariaDBServer, every: float, down_for: float, start: float) -> None:
        self.server = server
        self.every = every
        self.down_for = down_for
        self.events: list[tuple[float, str]] = []
        self._start = start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mysql-killer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.every - self.down_for):
            self.server.kill()
            self.events.append((time.monotonic() - self._start, "killed"))
            if self._stop.wait(self.down_for):
                return
            try:
                self.server.start()
                self.events.append((time.monotonic() - self._start, "restarted"))
            except RuntimeError as exc:
                self.events.append((time.monotonic() - self._start, f"restart failed: {exc}"))

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            # A start() in progress takes up to its own 30 s timeout.
            self._thread.join(40)


# ---------------------------------------------------------------------------------------------
# The run


@dataclass
class Sample:
    elapsed: float
    rss_kib: int
    fds: int
    threads: int
    cpu_seconds: float
    ready_status: int
    ready_ms: float


@dataclass
class Run:
    """Everything started, so that cleanup can stop it whatever happened."""

    workdir: Path
    cleanups: list[tuple[str, Callable[[], None]]] = field(default_factory=list)

    def on_exit(self, what: str, action: Callable[[], None]) -> None:
        self.cleanups.append((what, action))

    def close(self) -> None:
        for what, action in reversed(self.cleanups):
            try:
                action()
            except Exception as exc:  # keep stopping the rest
                print(f"cleanup of {what} failed: {exc!r}", file=sys.stderr)
        self.cleanups.clear()


def build_checks(
    count: int,
    interval: float,
    timeout: float,
    ports: dict[str, Any],
    dns_names: dict[str, list[str]],
    mysql: MariaDBServer | None,
) -> list[dict[str, Any]]:
    """Spread `count` checks over the dependencies, one kind after the other."""
    kinds = ["tcp-flap", "http-flap", "dns-flap", "tcp-hang", "http-silent", "dns-silent"]
    if mysql is not None:
        kinds.append("mysql-killed")
    checks: list[dict[str, Any]] = []
    used: dict[str, int] = {}
    for number in range(count):
        kind = kinds[number % len(kinds)]
        index = used.get(kind, 0)
        used[kind] = index + 1
        check: dict[str, Any] = {
            "name": f"{kind}-{index}",
            "interval": interval,
            "timeout": timeout,
            # Checks that always fail are not critical, so /ready still changes with the others.
            "critical": kind not in ("tcp-hang", "http-silent", "dns-silent"),
        }
        if kind == "tcp-flap":
            port = ports["tcp_flap"][index % len(ports["tcp_flap"])]
            check.update(type="tcp", host=LOOPBACK, port=port)
        elif kind == "tcp-hang":
            check.update(type="tcp", host=LOOPBACK, port=ports["hang"])
        elif kind == "http-flap":
            check.update(type="http", url=f"http://{LOOPBACK}:{ports['http']}/flap/{index}")
        elif kind == "http-silent":
            check.update(type="http", url=f"http://{LOOPBACK}:{ports['silent']}/health")
        elif kind == "dns-flap":
            names = dns_names["flap"]
            check.update(type="dns", host=names[index % len(names)])
            # Half resolve like an application (getaddrinfo), half send one A query.
            if index % 2:
                check.update(record="A", nameservers=[ports["dns"]])
            else:
                check.update(resolv_conf=ports["resolv_conf"])
        elif kind == "dns-silent":
            check.update(type="dns", host=dns_names["silent"][0], record="A")
            check.update(nameservers=[ports["dns"]])
        else:
            assert mysql is not None
            check.update(
                type="mysql",
                host=mysql.host,
                port=mysql.port,
                user=mysql.app_user,
                password_env=PASSWORD_ENV,
                database=mysql.app_database,
            )
            if index % 2:
                check["query"] = "SELECT 1"
        checks.append(check)
    return checks


def read_proc(pid: int) -> tuple[int, int, int, float]:
    """(RSS in KiB, open fds, threads, CPU seconds) of a process, from /proc."""
    rss = threads = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
        elif line.startswith("Threads:"):
            threads = int(line.split()[1])
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    # utime and stime are fields 14 and 15 of stat(5), 12 and 13 after the command name.
    cpu = (int(stat[11]) + int(stat[12])) / ticks
    return rss, fds, threads, cpu


def get(port: int, path: str, timeout: float = 5.0) -> tuple[int, bytes, float]:
    """GET a path on a new connection; return status, body and milliseconds taken."""
    started = time.perf_counter()
    connection = http.client.HTTPConnection(LOOPBACK, port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read()
        status = response.status
    finally:
        connection.close()
    return status, body, (time.perf_counter() - started) * 1000


def wait_serving(port: int, process: subprocess.Popen[bytes], deadline: float = 30.0) -> None:
    started = time.monotonic()
    while time.monotonic() - started < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the sidecar exited with status {process.returncode}")
        try:
            if get(port, "/live", timeout=1.0)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"the sidecar did not answer /live within {deadline:g} s")


def start_sidecar(run: Run, checks: list[dict[str, Any]], env: dict[str, str]) -> tuple[Any, int]:
    port = free_port()
    config = {
        "server": {"host": LOOPBACK, "port": port, "drain_delay": 0},
        "checks": checks,
    }
    config_path = run.workdir / "sidecar.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    log = (run.workdir / "sidecar.log").open("wb")
    command = [sys.executable, "-m", "sidecar", "serve", "-c", str(config_path)]
    process = subprocess.Popen(
        [*command, "--log-format", "json"],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    log.close()

    def stop_sidecar() -> None:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        print(f"sidecar exited with status {process.returncode}")

    run.on_exit("the sidecar", stop_sidecar)
    wait_serving(port, process)
    return process, port


def window_mean(samples: list[Sample], start: float, end: float, attr: str) -> float:
    values = [getattr(s, attr) for s in samples if start <= s.elapsed < end]
    return statistics.fmean(values) if values else float("nan")


def window_max(samples: list[Sample], start: float, end: float, attr: str) -> int:
    values = [getattr(s, attr) for s in samples if start <= s.elapsed < end]
    return max(values) if values else 0


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def log_problems(path: Path) -> list[str]:
    """Lines of the sidecar's log that carry a traceback or an error."""
    problems = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            problems.append(line)
            continue
        if "traceback" in entry or "exception" in entry or entry.get("level") == "error":
            problems.append(line)
    return problems


def probe_totals(port: int) -> dict[str, float]:
    """Probes by outcome and transitions, summed over every check, from /metrics."""
    _, body, _ = get(port, "/metrics")
    totals: dict[str, float] = {}
    for line in body.decode().splitlines():
        if line.startswith("sidecar_check_probes_total{"):
            outcome = line.split('outcome="', 1)[1].split('"', 1)[0]
            totals[outcome] = totals.get(outcome, 0.0) + float(line.rsplit(" ", 1)[1])
        elif line.startswith("sidecar_check_transitions_total{"):
            totals["transitions"] = totals.get("transitions", 0.0) + float(line.rsplit(" ", 1)[1])
    return totals


def summarise(
    samples: list[Sample], duration: float, log_path: Path, totals: dict[str, float]
) -> bool:
    """Print the summary and return whether the pass criteria hold."""
    # Minute 1 is warm-up, minute 2 the reference, the last minute the end; shorter runs
    # use thirds of their length instead.
    span = min(60.0, duration / 3)
    reference = (span, 2 * span)
    final = (duration - span, duration + 1)
    steady = [s for s in samples if s.elapsed >= span]

    rss_ref = window_mean(samples, *reference, "rss_kib")
    rss_end = window_mean(samples, *final, "rss_kib")
    growth = (rss_end - rss_ref) / rss_ref if rss_ref else float("nan")
    fds_ref, fds_end = window_max(samples, *reference, "fds"), window_max(samples, *final, "fds")
    thr_ref = window_max(samples, *reference, "threads")
    thr_end = window_max(samples, *final, "threads")
    latencies = [s.ready_ms for s in samples]
    statuses: dict[int, int] = {}
    for s in samples:
        statuses[s.ready_status] = statuses.get(s.ready_status, 0) + 1
    cpu = samples[-1].cpu_seconds - samples[0].cpu_seconds if len(samples) > 1 else 0.0
    cpu_span = samples[-1].elapsed - samples[0].elapsed if len(samples) > 1 else 1.0
    problems = log_problems(log_path)

    print(f"samples: {len(samples)} over {duration:.0f} s; windows of {span:.0f} s")
    print(
        f"RSS: {rss_ref / 1024:.1f} MiB mean in [{reference[0]:.0f} s, {reference[1]:.0f} s), "
        f"{rss_end / 1024:.1f} MiB mean in the last {span:.0f} s: growth {growth * 100:+.2f} %"
    )
    print(
        f"RSS min/max after warm-up: {min(s.rss_kib for s in steady) / 1024:.1f} / "
        f"{max(s.rss_kib for s in steady) / 1024:.1f} MiB"
    )
    print(
        f"open fds min/max after warm-up: {min(s.fds for s in steady)} / "
        f"{max(s.fds for s in steady)} "
        f"(max {fds_ref} in the reference window, {fds_end} at the end)"
    )
    print(
        f"threads min/max after warm-up: {min(s.threads for s in steady)} / "
        f"{max(s.threads for s in steady)} (max {thr_ref} in the reference window, "
        f"{thr_end} at the end)"
    )
    print(f"CPU: {cpu:.1f} s over {cpu_span:.0f} s ({cpu / cpu_span * 100:.1f} % of one core)")
    print(
        f"/ready latency ms: p50 {percentile(latencies, 0.5):.2f}, "
        f"p99 {percentile(latencies, 0.99):.2f}, max {max(latencies):.2f}; "
        f"statuses {dict(sorted(statuses.items()))}"
    )
    outcomes = ", ".join(f"{k} {v:.0f}" for k, v in sorted(totals.items()))
    print(f"probes by outcome, and transitions: {outcomes}")
    print("asyncio tasks: not readable from outside the process; not measured")
    print(f"log lines with a traceback or at level error: {len(problems)}")
    for line in problems[:5]:
        print(f"  {line[:300]}")

    criteria = [
        (
            f"RSS growth {growth * 100:+.2f} % < {MAX_RSS_GROWTH * 100:.0f} %",
            growth < MAX_RSS_GROWTH,
        ),
        (
            f"fds flat: end max {fds_end} <= reference max {fds_ref} + {FD_TOLERANCE}",
            fds_end <= fds_ref + FD_TOLERANCE,
        ),
        (
            f"threads flat: end max {thr_end} <= reference max {thr_ref} + {THREAD_TOLERANCE}",
            thr_end <= thr_ref + THREAD_TOLERANCE,
        ),
        ("no traceback or error in the log", not problems),
    ]
    for text, ok in criteria:
        print(f"{'PASS' if ok else 'FAIL'}: {text}")
    return all(ok for _, ok in criteria)


def soak(args: argparse.Namespace, run: Run) -> bool:
    deps = LoopThread()
    run.on_exit("the dependency loop", deps.close)

    flapping = [FlappingPort(TCP_PERIOD, offset=i * 0.7) for i in range(4)]
    http_server = FlappingHttp(HTTP_PERIOD)

    async def start_servers() -> None:
        for port in flapping:
            await port.start()
        await http_server.start()

    async def stop_servers() -> None:
        for port in flapping:
            await port.stop()
        await http_server.stop()

    run.on_exit("the flapping servers", lambda: deps.run(stop_servers()))
    deps.run(start_servers())

    hang = HangingPort().start()
    run.on_exit("the hanging port", hang.close)
    silent = SilentListener().start()
    run.on_exit("the silent listener", silent.close)

    flap_names = [f"flap-{i}.soak.test" for i in range(4)]
    dns = ScriptedDNSServer(default=NXDomain()).start()
    run.on_exit("the DNS server", dns.stop)
    for name in flap_names:
        dns.set(name, Answer([LOOPBACK]))
    dns.set("silent.soak.test", Silent())
    flapper = DnsFlapper(dns, flap_names, DNS_PERIOD)
    flapper.start()
    run.on_exit("the DNS flapper", flapper.stop)
    resolv_conf = run.workdir / "resolv.conf"
    resolv_conf.write_text(f"nameserver {dns.nameserver}\noptions ndots:1\n")

    mysql: MariaDBServer | None = None
    if not args.no_mariadb and find_mariadbd() is not None:
        print("starting a private MariaDB ...", flush=True)
        template_dir = run.workdir / "mariadb-template"
        run.on_exit("the MariaDB template", lambda: shutil.rmtree(template_dir, True))
        template = make_template(template_dir)
        mysql = MariaDBServer(run.workdir / "mariadb", template=template)
        run.on_exit("MariaDB", mysql.close)
        mysql.start()
    elif not args.no_mariadb:
        print("mariadbd not found: no mysql checks")

    ports = {
        "tcp_flap": [p.port for p in flapping],
        "hang": hang.port,
        "http": http_server.port,
        "silent": silent.port,
        "dns": dns.nameserver,
        "resolv_conf": str(resolv_conf),
    }
    names = {"flap": flap_names, "silent": ["silent.soak.test"]}
    checks = build_checks(args.checks, args.interval, args.timeout, ports, names, mysql)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")}
    if mysql is not None:
        env[PASSWORD_ENV] = mysql.app_password
    process, port = start_sidecar(run, checks, env)
    print(
        f"sidecar pid {process.pid} on port {port} with {len(checks)} checks; "
        f"running {args.minutes:g} min; CSV {args.csv}",
        flush=True,
    )

    started = time.monotonic()
    killer: MysqlKiller | None = None
    if mysql is not None:
        killer = MysqlKiller(mysql, MYSQL_KILL_EVERY, MYSQL_DOWN_FOR, started)
        killer.start()
        run.on_exit("the MariaDB killer", killer.stop)

    duration = args.minutes * 60
    samples: list[Sample] = []
    stopped_early = False
    with open(args.csv, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["elapsed_s", "rss_kib", "fds", "threads", "cpu_s", "ready_status", "ready_ms"]
        )
        tick = 0
        try:
            while True:
                tick += 1
                next_at = started + tick * args.sample_interval
                if next_at - started > duration:
                    break
                time.sleep(max(0.0, next_at - time.monotonic()))
                if process.poll() is not None:
                    raise RuntimeError(f"the sidecar exited with status {process.returncode}")
                rss, fds, threads, cpu = read_proc(process.pid)
                try:
                    status, _, latency = get(port, "/ready")
                except OSError:
                    status, latency = 0, float("nan")
                sample = Sample(
                    round(time.monotonic() - started, 3), rss, fds, threads, cpu, status, latency
                )
                samples.append(sample)
                writer.writerow(
                    [sample.elapsed, rss, fds, threads, f"{cpu:.2f}", status, f"{latency:.3f}"]
                )
                if tick % 60 == 0:
                    handle.flush()
                    print(
                        f"{sample.elapsed:6.0f} s  rss {rss / 1024:.1f} MiB  fds {fds}  "
                        f"threads {threads}  /ready {status} {latency:.1f} ms",
                        flush=True,
                    )
        except Stop:
            stopped_early = True
            print("stopped early by a signal; summary of the samples so far")
    totals = probe_totals(port)
    if killer is not None:
        killer.stop()
        print("MariaDB events: " + ", ".join(f"{t:.0f} s {what}" for t, what in killer.events))
    bind_failures = sum(p.bind_failures for p in flapping)
    if bind_failures:
        print(f"flapping listeners could not bind their port again {bind_failures} time(s)")
    if len(samples) < 3:
        print("too few samples for a summary")
        return False
    elapsed = samples[-1].elapsed if stopped_early else duration
    return summarise(samples, elapsed, run.workdir / "sidecar.log", totals) and not stopped_early


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the run")
    parser.add_argument("--checks", type=int, default=50, help="number of checks")
    parser.add_argument("--interval", type=float, default=1.0, help="interval of every check")
    parser.add_argument("--timeout", type=float, default=0.5, help="timeout of every check")
    parser.add_argument("--sample-interval", type=float, default=1.0, help="seconds per sample")
    parser.add_argument("--csv", help="where to write the samples (default: in the work dir)")
    parser.add_argument("--no-mariadb", action="store_true", help="leave out the mysql checks")
    args = parser.parse_args()

    # The work dir keeps the config, the sidecar's log and the CSV; MariaDB's files are removed.
    workdir = Path(tempfile.mkdtemp(prefix="sidecar-soak-"))
    args.csv = args.csv or str(workdir / "soak.csv")
    print(f"work dir: {workdir}", flush=True)
    run = Run(workdir)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        raise Stop(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    passed = False
    try:
        passed = soak(args, run)
    except Stop as exc:
        print(f"stopped by {exc} during start-up")
    finally:
        # A second signal during cleanup must not leave servers running.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        run.close()
    print("RESULT: " + ("PASS" if passed else "FAIL"))
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
