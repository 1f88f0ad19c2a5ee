"""CPU, memory and event-loop lag of the sidecar with 10 to 1,000 tcp checks."""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import harness

PROBE_TIMEOUT = "500ms"
LAG_TICK = 0.01
# The first probes of every check start together; lag samples from this many seconds after
# start are reported apart from the rest.
STARTUP_SECONDS = 3.0


@dataclass(frozen=True)
class Setup:
    name: str
    checks: int
    interval: str


IDLE = Setup("idle: 1 check at 60 s", 1, "60s")
SETUPS = (
    IDLE,
    Setup("10 checks at 1 s", 10, "1s"),
    Setup("100 checks at 1 s", 100, "1s"),
    Setup("1,000 checks at 1 s", 1000, "1s"),
    Setup("10 checks at 10 s", 10, "10s"),
    Setup("100 checks at 10 s", 100, "10s"),
    Setup("1,000 checks at 10 s", 1000, "10s"),
)
LAG_SETUPS = (
    IDLE,
    Setup("1,000 checks at 1 s", 1000, "1s"),
    Setup("1,000 checks at 10 s", 1000, "10s"),
)

_PROBES = re.compile(
    rb'^sidecar_check_probes_total\{[^}]*outcome="([a-z_]+)"[^}]*\} ([0-9.e+]+)$', re.MULTILINE
)


def probes_so_far(port: int) -> dict[str, float]:
    """Return sidecar_check_probes_total summed over the checks, by outcome."""
    status, body = harness.http_get(port, "/metrics", timeout=10)
    if status != 200:
        raise RuntimeError(f"/metrics returned status {status}, expected 200")
    counts: dict[str, float] = {}
    for outcome, value in _PROBES.findall(body):
        counts[outcome.decode()] = counts.get(outcome.decode(), 0.0) + float(value)
    if not counts:
        raise RuntimeError("no sidecar_check_probes_total samples in /metrics")
    return counts


def _failures(before: dict[str, float], after: dict[str, float]) -> str:
    """Describe the failed probes between two readings, by reason."""
    parts = []
    for outcome in sorted(after):
        count = after[outcome] - before.get(outcome, 0.0)
        if outcome != "success" and count:
            parts.append(f"{count:.0f} {outcome}")
    return ", ".join(parts) or "0"


def _checks(setup: Setup, ports: list[int]) -> list[dict[str, Any]]:
    fields = {"interval": setup.interval, "timeout": PROBE_TIMEOUT}
    return harness.tcp_checks(setup.checks, 0, ports, fields=fields)


@dataclass
class Usage:
    setup: Setup
    cpu_percent: float
    probes_per_second: float
    cpu_us_per_probe: float
    failed_probes: str
    rss_mib: float
    load: float
    others_cores: float


def measure_usage(setup: Setup, ports: list[int], workdir: Path, window: float) -> Usage:
    port = harness.free_port()
    config = harness.write_config(workdir / "config.yaml", port, _checks(setup, ports))
    command = harness.sidecar_command(config)
    with harness.started(command, workdir / "sidecar.log", setup.name) as sidecar:
        harness.wait_for_status(port, "/ready", 200, 60, sidecar.proc)
        # Let the first round, which starts every check at once, pass.
        time.sleep(2.0)
        load = harness.load_average()
        counts_before = probes_so_far(port)
        cpu_before = harness.cpu_seconds(sidecar.pid)
        busy_before = harness.busy_cpu_seconds()
        started = time.monotonic()
        time.sleep(window)
        elapsed = time.monotonic() - started
        cpu = harness.cpu_seconds(sidecar.pid) - cpu_before
        busy = harness.busy_cpu_seconds() - busy_before
        counts_after = probes_so_far(port)
        probes = sum(counts_after.values()) - sum(counts_before.values())
        rss = harness.rss_mib(sidecar.pid)
    return Usage(
        setup=setup,
        cpu_percent=100 * cpu / elapsed,
        probes_per_second=probes / elapsed,
        cpu_us_per_probe=1e6 * cpu / probes if probes else float("nan"),
        failed_probes=_failures(counts_before, counts_after),
        rss_mib=rss,
        load=load,
        # The listener process is counted here too: it accepts every probe's connection.
        others_cores=max(0.0, busy - cpu) / elapsed,
    )


# ---------------------------------------------------------------------------------------------
# Event-loop lag, measured inside the process that runs the sidecar's app


@dataclass
class Lag:
    setup: Setup
    # (phase name, p50 ms, p99 ms, max ms, samples) per phase of the run.
    phases: list[tuple[str, float, float, float, int]]
    failed_probes: str
    load: float


def _failed_probes(registry: Any) -> str:
    """Count probes by failure reason, from the sidecar's metric registry."""
    failed: dict[str, float] = {}
    for family in registry.collect():
        for sample in family.samples:
            outcome = sample.labels.get("outcome")
            if sample.name == "sidecar_check_probes_total" and outcome != "success":
                failed[outcome] = failed.get(outcome, 0.0) + sample.value
    return ", ".join(f"{int(n)} {reason}" for reason, n in sorted(failed.items()) if n) or "0"


async def _lag_samples(
    setup: Setup, ports: list[int], workdir: Path, phases: list[tuple[str, float]]
) -> Lag:
    from aiohttp import web

    from sidecar.app import METRICS, create_app
    from sidecar.config import load

    # The failures are counted from the metrics; their log lines would only fill the output.
    logging.getLogger("sidecar").setLevel(logging.ERROR)
    port = harness.free_port()
    path = harness.write_config(workdir / "lag.yaml", port, _checks(setup, ports))
    app = create_app(load(path))
    runner = web.AppRunner(app, access_log=None)
    load_average = harness.load_average()
    began = time.monotonic()
    samples: list[tuple[float, float]] = []

    async def sample() -> None:
        deadline = began + phases[-1][1]
        while (now := time.monotonic()) < deadline:
            await asyncio.sleep(LAG_TICK)
            samples.append((now - began, (time.monotonic() - now - LAG_TICK) * 1000))

    # The sampler starts before the app, so it also measures the first round of probes,
    # which setup() starts for every check at once.
    sampler = asyncio.create_task(sample())
    await asyncio.sleep(0)
    await runner.setup()
    try:
        await web.TCPSite(runner, harness.LOOPBACK, port).start()
        await sampler
        failed = _failed_probes(app[METRICS].registry)
    finally:
        sampler.cancel()
        await runner.cleanup()
    results = []
    phase_start = 0.0
    for name, phase_end in phases:
        late = [ms for at, ms in samples if phase_start <= at < phase_end]
        results.append(
            (
                name,
                harness.percentile(late, 0.5),
                harness.percentile(late, 0.99),
                max(late, default=float("nan")),
                len(late),
            )
        )
        phase_start = phase_end
    return Lag(setup=setup, phases=results, failed_probes=failed, load=load_average)


def lag_phases(duration: float) -> list[tuple[str, float]]:
    """Return the phases of a lag run: the first probes, the next seconds, the rest."""
    middle = min(20.0, duration / 2)
    return [
        (f"0-{STARTUP_SECONDS:g} s", STARTUP_SECONDS),
        (f"{STARTUP_SECONDS:g}-{middle:g} s", middle),
        (f"{middle:g}-{duration:g} s", duration),
    ]


def measure_lag(setup: Setup, ports: list[int], workdir: Path, duration: float) -> Lag:
    return asyncio.run(_lag_samples(setup, ports, workdir, lag_phases(duration)))


def _above_idle(usage: Usage, idle: Usage) -> str:
    """Format the CPU per probe after taking away the idle process's CPU rate."""
    if usage.probes_per_second < 1:
        return "-"
    extra = (usage.cpu_percent - idle.cpu_percent) / 100
    return f"{1e6 * extra / usage.probes_per_second:.0f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="5 s windows: a smoke test")
    parser.add_argument("--window", type=float, default=None, help="seconds measured (20)")
    parser.add_argument(
        "--lag-duration", type=float, default=None, help="seconds of each loop-lag run (45)"
    )
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    harness.exit_on_sigterm()
    window = args.window or (5.0 if args.quick else 20.0)
    lag_duration = args.lag_duration or (10.0 if args.quick else 45.0)

    usages: list[Usage] = []
    lags: list[Lag] = []
    with harness.Listeners(4) as listeners, harness.work_directory("bench-overhead-") as workdir:
        for setup in SETUPS:
            harness.note(f"usage: {setup.name}")
            usages.append(measure_usage(setup, listeners.ports, workdir, window))
        for setup in LAG_SETUPS:
            harness.note(f"loop lag: {setup.name}")
            lags.append(measure_lag(setup, listeners.ports, workdir, lag_duration))

    idle = usages[0]
    print(f"machine: {harness.machine_summary()}")
    print(
        f"tcp checks to 4 loopback listeners, timeout {PROBE_TIMEOUT}; window {window:g} s "
        "after /ready is 200 plus 2 s"
    )
    print()
    harness.print_table(
        [
            "setup",
            "CPU % of one core",
            "probes/s",
            "CPU us/probe",
            "above idle us/probe",
            "failed",
            "RSS MiB",
            "RSS - idle MiB",
            "other cores",
            "load 1m",
        ],
        [
            [
                u.setup.name,
                f"{u.cpu_percent:.2f}",
                f"{u.probes_per_second:.1f}",
                f"{u.cpu_us_per_probe:.0f}" if u.probes_per_second >= 1 else "-",
                _above_idle(u, idle),
                u.failed_probes,
                f"{u.rss_mib:.1f}",
                f"{u.rss_mib - idle.rss_mib:+.1f}",
                f"{u.others_cores:.2f}",
                f"{u.load:.2f}",
            ]
            for u in usages
        ],
    )
    print()
    print(
        f"event-loop lag: a task in the sidecar's process sleeps {LAG_TICK * 1000:.0f} ms in a "
        f"loop and records how late it wakes, over {lag_duration:g} s from the app's start"
    )
    print()
    harness.print_table(
        ["setup", "phase", "p50 ms", "p99 ms", "max ms", "samples", "failed probes", "load 1m"],
        [
            [
                lag.setup.name,
                name,
                f"{p50:.2f}",
                f"{p99:.2f}",
                f"{worst:.2f}",
                count,
                lag.failed_probes,
                f"{lag.load:.2f}",
            ]
            for lag in lags
            for name, p50, p99, worst, count in lag.phases
        ],
    )
    harness.save_json(
        args.json,
        {
            "window_seconds": window,
            "usage": [{**vars(u), "setup": u.setup.name} for u in usages],
            "lag": [{**vars(lag), "setup": lag.setup.name} for lag in lags],
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
