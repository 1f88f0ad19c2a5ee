"""Throughput and latency of GET /ready under wrk, against a minimal aiohttp app on one loop."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import harness

WRK_THREADS = 1
WRK_CONNECTIONS = 10
SERVER_CPU = 0
CLIENT_CPU = 1
CHECK_INTERVAL = "5s"


@dataclass(frozen=True)
class Case:
    """One server configuration to load with wrk."""

    name: str
    kind: str  # "baseline" or "sidecar"
    status: int
    ok_checks: int = 0
    failing_checks: int = 0
    failing_critical: bool = False
    # For the baseline: serve the sidecar's 503 body of this loop instead of "ok\n".
    long_body: bool = False


CASES = (
    Case("baseline: constant ok", "baseline", 200),
    Case("sidecar: 5 checks, 2 failing (not critical)", "sidecar", 200, 3, 2),
    Case("sidecar: 200 checks, 100 failing (not critical)", "sidecar", 200, 100, 100),
    Case("sidecar: 200 checks, 100 critical failing (503)", "sidecar", 503, 100, 100, True),
    Case("baseline: constant 503 body of the same size", "baseline", 503, long_body=True),
)
# The kubelet's cases, also measured side by side with the baseline.
PAIRED_CASES = CASES[1:3]


@dataclass
class WrkResult:
    """Figures of one wrk run and of the machine during it."""

    requests_per_second: float
    p50_ms: float
    p99_ms: float
    requests: int
    non_2xx: int
    socket_errors: int
    load: float
    server_cpu: float  # cores used by the server during the run
    others_cpu: float  # cores used by processes other than wrk and the server
    body_bytes: int = 0
    attempts: int = 1

    @property
    def per_core(self) -> float:
        """Requests per second of server CPU: the server's cost, whatever CPU it was given."""
        return self.requests_per_second / self.server_cpu if self.server_cpu else 0.0


@dataclass
class RetryPolicy:
    """Repeat a run that other processes disturbed, within a total time budget."""

    max_others: float  # cores used by other processes above which a run is repeated
    budget_seconds: float
    spent_seconds: float = 0.0

    def measure(self, run: Callable[[], WrkResult], seconds: int) -> WrkResult:
        best = run()
        attempts = 1
        while best.others_cpu > self.max_others and self.spent_seconds + seconds <= (
            self.budget_seconds
        ):
            self.spent_seconds += seconds
            attempts += 1
            again = run()
            if again.others_cpu < best.others_cpu:
                best = again
        best.attempts = attempts
        return best


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([0-9.]+)(us|ms|s)", text)
    if match is None:
        raise ValueError(f"unexpected wrk latency {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_wrk(output: str) -> dict[str, float]:
    """Pick requests/s, the 50th and 99th latency percentiles and error counts from wrk."""
    values: dict[str, float] = {"non_2xx": 0, "socket_errors": 0}
    for line in output.splitlines():
        words = line.split()
        if line.startswith("Requests/sec:"):
            values["rps"] = float(words[1])
        elif len(words) == 2 and words[0] in ("50%", "99%"):
            values["p" + words[0][:-1]] = _ms(words[1])
        elif "requests in" in line:
            values["requests"] = int(words[0])
        elif line.strip().startswith("Non-2xx or 3xx responses:"):
            values["non_2xx"] = int(words[-1])
        elif line.strip().startswith("Socket errors:"):
            values["socket_errors"] = sum(int(n) for n in re.findall(r"\d+", line))
    missing = {"rps", "p50", "p99", "requests"} - set(values)
    if missing:
        raise RuntimeError(f"cannot read {sorted(missing)} from wrk output:\n{output}")
    return values


def _wrk_command(url: str, seconds: int, close: bool) -> list[str]:
    command = [
        *harness.pin_prefix(CLIENT_CPU),
        "wrk",
        f"-t{WRK_THREADS}",
        f"-c{WRK_CONNECTIONS}",
        f"-d{seconds:g}s",
        "--latency",
    ]
    if close:
        command += ["-H", "Connection: close"]
    return [*command, url]


def run_wrk(url: str, seconds: int, close: bool, server_pid: int) -> WrkResult:
    command = _wrk_command(url, seconds, close)
    load = harness.load_average()

    server_before = harness.cpu_seconds(server_pid)
    busy_before = harness.busy_cpu_seconds()
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    self_before = time.process_time()
    started = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    elapsed = time.monotonic() - started
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    server_cpu = harness.cpu_seconds(server_pid) - server_before
    busy = harness.busy_cpu_seconds() - busy_before
    wrk_cpu = (children_after.ru_utime + children_after.ru_stime) - (
        children_before.ru_utime + children_before.ru_stime
    )
    own_cpu = time.process_time() - self_before
    if result.returncode != 0:
        raise RuntimeError(f"wrk failed with status {result.returncode}: {result.stderr}")

    values = parse_wrk(result.stdout)
    return WrkResult(
        requests_per_second=values["rps"],
        p50_ms=values["p50"],
        p99_ms=values["p99"],
        requests=int(values["requests"]),
        non_2xx=int(values["non_2xx"]),
        socket_errors=int(values["socket_errors"]),
        load=load,
        server_cpu=server_cpu / elapsed,
        others_cpu=max(0.0, busy - server_cpu - wrk_cpu - own_cpu) / elapsed,
    )


def run_side_by_side(targets: list[tuple[str, int]], seconds: int, close: bool) -> list[WrkResult]:
    """Load several servers at once, one wrk each, all servers sharing one CPU.

    The servers then get equal shares of the same core at the same moment, so changes of the
    machine's speed during the run cancel out of their ratio.
    """
    load = harness.load_average()
    cpu_before = [harness.cpu_seconds(pid) for _, pid in targets]
    busy_before = harness.busy_cpu_seconds()
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    runs = [
        subprocess.Popen(
            _wrk_command(url, seconds, close),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for url, _ in targets
    ]
    outputs = [run.communicate() for run in runs]
    elapsed = time.monotonic() - started
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpus = [
        harness.cpu_seconds(pid) - before
        for (_, pid), before in zip(targets, cpu_before, strict=True)
    ]
    wrk_cpu = (children_after.ru_utime + children_after.ru_stime) - (
        children_before.ru_utime + children_before.ru_stime
    )
    others = max(0.0, harness.busy_cpu_seconds() - busy_before - sum(cpus) - wrk_cpu) / elapsed
    results = []
    for run, (stdout, stderr), cpu in zip(runs, outputs, cpus, strict=True):
        if run.returncode != 0:
            raise RuntimeError(f"wrk failed with status {run.returncode}: {stderr}")
        values = parse_wrk(stdout)
        results.append(
            WrkResult(
                requests_per_second=values["rps"],
                p50_ms=values["p50"],
                p99_ms=values["p99"],
                requests=int(values["requests"]),
                non_2xx=int(values["non_2xx"]),
                socket_errors=int(values["socket_errors"]),
                load=load,
                server_cpu=cpu / elapsed,
                others_cpu=others,
            )
        )
    return results


# ---------------------------------------------------------------------------------------------
# The servers, run as children of this script so that both use the same interpreter and loop


def _install_loop(loop: str) -> None:
    if loop == "uvloop":
        import uvloop

        uvloop.install()


async def _baseline(port: int, body: bytes, status: int) -> None:
    from aiohttp import web

    async def ready(request: web.Request) -> web.Response:
        return web.Response(body=body, status=status, content_type="text/plain")

    app = web.Application()
    app.router.add_get("/ready", ready)
    # The same runner settings as the sidecar's serve command.
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, harness.LOOPBACK, port).start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await runner.cleanup()


def child_main(args: argparse.Namespace) -> int:
    _install_loop(args.loop)
    if args.child == "baseline":
        body = Path(args.body_file).read_bytes() if args.body_file else b"ok\n"
        asyncio.run(_baseline(args.port, body, args.status))
        return 0
    from sidecar.cli import main

    return main(["serve", "-c", args.config, "--log-format", "json"])


# ---------------------------------------------------------------------------------------------
# The benchmark


def _server_command(case: Case, loop: str, port: int, config: Path, body_file: Path) -> list[str]:
    command = [*harness.pin_prefix(SERVER_CPU), sys.executable, __file__, "--loop", loop]
    if case.kind == "baseline":
        command += ["--child", "baseline", "--port", str(port), "--status", str(case.status)]
        if case.long_body:
            command += ["--body-file", str(body_file)]
        return command
    return [*command, "--child", "sidecar", "--config", str(config)]


def _wait_ready(port: int, case: Case, proc: subprocess.Popen[bytes]) -> None:
    """Wait until every check has a first result and /ready returns the expected status."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with status {proc.returncode}")
        try:
            status, body = harness.http_get(port, "/ready?verbose")
        except OSError:
            time.sleep(0.05)
            continue
        if status == case.status and b"pending" not in body:
            return
        time.sleep(0.05)
    raise RuntimeError(f"timed out: {case.name}: /ready did not return {case.status} in 30 s")


@contextlib.contextmanager
def serving(
    case: Case, loop: str, workdir: Path, listener_ports: list[int]
) -> Iterator[tuple[harness.ManagedProcess, str, bytes]]:
    """Start the server of a case; yield it, its /ready URL and the body of /ready."""
    port = harness.free_port()
    config = workdir / f"config-{port}.yaml"
    body_file = workdir / f"body-{loop}.txt"
    if case.kind == "sidecar":
        checks = harness.tcp_checks(
            case.ok_checks,
            case.failing_checks,
            listener_ports,
            fields={"interval": CHECK_INTERVAL},
            failing_fields={"critical": case.failing_critical},
        )
        harness.write_config(config, port, checks)
    command = _server_command(case, loop, port, config, body_file)
    with harness.started(command, workdir / f"server-{port}.log", case.name) as server:
        try:
            _wait_ready(port, case, server.proc)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}\n{server.log_tail()}") from exc
        status, body = harness.http_get(port, "/ready")
        if status != case.status:
            raise RuntimeError(f"{case.name}: /ready returned {status}, expected {case.status}")
        if case.kind == "sidecar" and case.status == 503:
            # The baseline with a long body serves this very body.
            body_file.write_bytes(body)
        yield server, f"http://{harness.LOOPBACK}:{port}/ready", body


def measure_case(
    case: Case,
    loop: str,
    workdir: Path,
    listener_ports: list[int],
    seconds: int,
    warmup: int,
    retry: RetryPolicy,
) -> dict[str, WrkResult]:
    results: dict[str, WrkResult] = {}
    with serving(case, loop, workdir, listener_ports) as (server, url, body):
        run_wrk(url, warmup, close=False, server_pid=server.pid)
        for mode, close in (("keep-alive", False), ("close", True)):
            harness.note(f"  {loop} {mode}: {case.name}")
            results[mode] = retry.measure(
                lambda close=close: run_wrk(url, seconds, close, server.pid), seconds
            )
            results[mode].body_bytes = len(body)
    return results


def measure_pair(
    case: Case, loop: str, workdir: Path, listener_ports: list[int], seconds: int
) -> dict[str, tuple[WrkResult, WrkResult]]:
    """Load the baseline and a sidecar case at the same time, both servers on one CPU."""
    results = {}
    with (
        serving(CASES[0], loop, workdir, listener_ports) as (base, base_url, _),
        serving(case, loop, workdir, listener_ports) as (sidecar, sidecar_url, _),
    ):
        for url, pid in ((base_url, base.pid), (sidecar_url, sidecar.pid)):
            run_wrk(url, 1, close=False, server_pid=pid)
        for mode, close in (("keep-alive", False), ("close", True)):
            harness.note(f"  {loop} {mode}, side by side: {case.name}")
            both = run_side_by_side(
                [(base_url, base.pid), (sidecar_url, sidecar.pid)], seconds, close
            )
            results[mode] = (both[0], both[1])
    return results


def _median_result(results: list[WrkResult]) -> WrkResult:
    """Return the run with the median requests/s, so a row's figures come from one run."""
    ordered = sorted(results, key=lambda r: r.requests_per_second)
    return ordered[(len(ordered) - 1) // 2]


def _ratio(value: float, base: float) -> str:
    return f"{value / base:.2f}" if base else "-"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="2 s runs: a smoke test")
    parser.add_argument(
        "--duration", type=int, default=None, help="whole seconds per wrk run (default 10)"
    )
    parser.add_argument("--rounds", type=int, default=1, help="repeat all cases; median shown")
    parser.add_argument(
        "--loops",
        default="asyncio,uvloop",
        help="event loops to measure, comma-separated (uvloop is skipped when not installed)",
    )
    parser.add_argument(
        "--max-others",
        type=float,
        default=0.2,
        help="repeat a run during which other processes used more cores than this (0.2)",
    )
    parser.add_argument(
        "--retry-budget",
        type=float,
        default=None,
        help="seconds of repeated runs allowed in all (default 30, 10 with --quick)",
    )
    parser.add_argument(
        "--pair-duration",
        type=int,
        default=None,
        help="whole seconds per side-by-side run (default 5, 2 with --quick); 0 skips them",
    )
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--child", choices=("baseline", "sidecar"), help=argparse.SUPPRESS)
    parser.add_argument("--loop", default="asyncio", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--status", type=int, default=200, help=argparse.SUPPRESS)
    parser.add_argument("--body-file", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child_main(args)
    harness.exit_on_sigterm()

    if shutil.which("wrk") is None:
        print("wrk not found: install the Debian package wrk", file=sys.stderr)
        return 1
    seconds = args.duration or (2 if args.quick else 10)
    # wrk takes whole seconds only.
    warmup = 1
    loops = [name.strip() for name in args.loops.split(",") if name.strip()]
    if "uvloop" in loops:
        try:
            import uvloop  # noqa: F401
        except ImportError:
            harness.note("uvloop is not installed: measuring asyncio only")
            loops.remove("uvloop")

    budget = args.retry_budget
    if budget is None:
        budget = 10 if args.quick else 30
    pair_seconds = args.pair_duration
    if pair_seconds is None:
        pair_seconds = 2 if args.quick else 5
    retry = RetryPolicy(args.max_others, budget)
    runs: dict[tuple[str, str, str], list[WrkResult]] = {}
    pairs: dict[tuple[str, str, str], list[tuple[WrkResult, WrkResult]]] = {}
    with harness.Listeners(4) as listeners, harness.work_directory("bench-serve-") as workdir:
        for round_number in range(args.rounds):
            for loop in loops:
                harness.note(f"round {round_number + 1}, loop {loop}")
                for case in CASES:
                    measured = measure_case(
                        case, loop, workdir, listeners.ports, seconds, warmup, retry
                    )
                    for mode, result in measured.items():
                        runs.setdefault((loop, mode, case.name), []).append(result)
                for case in PAIRED_CASES if pair_seconds else ():
                    paired = measure_pair(case, loop, workdir, listeners.ports, pair_seconds)
                    for mode, both in paired.items():
                        pairs.setdefault((loop, mode, case.name), []).append(both)

    print(f"machine: {harness.machine_summary()}")
    print(
        f"wrk -t{WRK_THREADS} -c{WRK_CONNECTIONS} -d{seconds:g}s on CPU {CLIENT_CPU}, server on "
        f"CPU {SERVER_CPU}{'' if harness.pin_prefix(1) else ' (not pinned: taskset missing)'}; "
        f"{args.rounds} round(s), median run shown; check interval {CHECK_INTERVAL}"
    )
    print()
    headers = [
        "loop",
        "connection",
        "case",
        "req/s",
        "x baseline",
        "req/s per server core",
        "x baseline",
        "p50 ms",
        "p99 ms",
        "p99 x baseline",
        "body B",
        "non-2xx",
        "errors",
        "server cores",
        "other cores",
        "load 1m",
        "runs",
    ]
    rows: list[list[Any]] = []
    document: list[dict[str, Any]] = []
    for loop in loops:
        for mode in ("keep-alive", "close"):
            base = _median_result(runs[(loop, mode, CASES[0].name)])
            for case in CASES:
                result = _median_result(runs[(loop, mode, case.name)])
                rows.append(
                    [
                        loop,
                        mode,
                        case.name,
                        f"{result.requests_per_second:.0f}",
                        _ratio(result.requests_per_second, base.requests_per_second),
                        f"{result.per_core:.0f}",
                        _ratio(result.per_core, base.per_core),
                        f"{result.p50_ms:.2f}",
                        f"{result.p99_ms:.2f}",
                        _ratio(result.p99_ms, base.p99_ms),
                        result.body_bytes,
                        result.non_2xx,
                        result.socket_errors,
                        f"{result.server_cpu:.2f}",
                        f"{result.others_cpu:.2f}",
                        f"{result.load:.2f}",
                        result.attempts,
                    ]
                )
                document.append(
                    {
                        "loop": loop,
                        "connection": mode,
                        "case": case.name,
                        "runs": [vars(r) for r in runs[(loop, mode, case.name)]],
                    }
                )
    harness.print_table(headers, rows)
    if pairs:
        print()
        print(
            f"side by side: the baseline and the sidecar both on CPU {SERVER_CPU}, loaded at the "
            f"same time by one wrk each on CPU {CLIENT_CPU}, {pair_seconds} s per run; median "
            "ratio over the rounds, with the lowest and highest"
        )
        print()
        harness.print_table(
            [
                "loop",
                "connection",
                "case",
                "baseline req/s",
                "sidecar req/s",
                "x baseline",
                "per server core x baseline",
                "range",
                "baseline p99 ms",
                "sidecar p99 ms",
                "other cores",
                "load 1m",
            ],
            _pair_rows(pairs),
        )
        for (loop, mode, name), measured in pairs.items():
            document.append(
                {
                    "loop": loop,
                    "connection": mode,
                    "case": name,
                    "side_by_side": [[vars(base), vars(side)] for base, side in measured],
                }
            )
    harness.save_json(args.json, document)
    return 0


def _pair_rows(
    pairs: dict[tuple[str, str, str], list[tuple[WrkResult, WrkResult]]],
) -> list[list[Any]]:
    rows: list[list[Any]] = []
    for (loop, mode, name), measured in pairs.items():
        ratios = [
            side.per_core / base.per_core if base.per_core else 0.0 for base, side in measured
        ]
        # The round whose ratio is the median gives the row's other figures.
        middle = sorted(range(len(measured)), key=lambda i: ratios[i])[(len(measured) - 1) // 2]
        base, side = measured[middle]
        rows.append(
            [
                loop,
                mode,
                name,
                f"{base.requests_per_second:.0f}",
                f"{side.requests_per_second:.0f}",
                _ratio(side.requests_per_second, base.requests_per_second),
                f"{ratios[middle]:.2f}",
                f"{min(ratios):.2f}-{max(ratios):.2f}",
                f"{base.p99_ms:.2f}",
                f"{side.p99_ms:.2f}",
                f"{side.others_cpu:.2f}",
                f"{side.load:.2f}",
            ]
        )
    return rows


if __name__ == "__main__":
    sys.exit(main())
