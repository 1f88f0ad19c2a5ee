"""Fleet load on a shared MySQL, on paper from measured per-probe costs, and probe bursts."""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import harness
import mysql_load

REPLICAS = (10, 1000, 10000)
BIN = 0.1  # seconds: burst sizes are counted per 100 ms
SLICES = (1, 2, 3, 5, 10, 20, 40)  # rounds after the common start at which bursts are shown


def _method(costs: dict[str, Any], prefix: str) -> dict[str, Any]:
    for row in costs["methods"]:
        if row["method"].startswith(prefix):
            return dict(row)
    raise KeyError(f"no method starting {prefix!r} in the costs file")


def steady_rows(
    costs: dict[str, Any], checks: int, interval: float, period: float
) -> list[list[Any]]:
    """Build one row per fleet size and probe: rates, open connections and server CPU."""
    ping = _method(costs, "sidecar mysql check")
    admin = _method(costs, "mysqladmin")
    kib = costs["held_connection_kib"]
    rows = []
    for replicas in REPLICAS:
        probes = replicas * checks / interval
        kept_open = replicas * checks
        rows.append(
            [
                replicas,
                f"sidecar, interval {interval:g} s",
                f"{probes:,.0f}",
                "0",
                f"{kept_open:,}",
                f"{kept_open * kib / 1024:,.1f}",
                f"{100 * probes * ping['server_cpu_us_per_probe'] / 1e6:.2f}",
                f"{100 * probes * ping['server_run_us_per_probe'] / 1e6:.2f}",
                # After a MySQL restart every kept connection logs in again within one interval.
                f"{probes:,.0f} for {interval * 1.1:g} s",
            ]
        )
        for every in (period, interval):
            rate = replicas * checks / every
            # Little's law: connections open at once = arrival rate x time each stays open.
            open_at_once = rate * admin["mean_us"] / 1e6
            rows.append(
                [
                    replicas,
                    f"mysqladmin ping exec probe, period {every:g} s",
                    f"{rate:,.0f}",
                    f"{rate:,.0f}",
                    f"{open_at_once:,.1f}",
                    f"{open_at_once * kib / 1024:,.2f}",
                    f"{100 * rate * admin['server_cpu_us_per_probe'] / 1e6:.2f}",
                    f"{100 * rate * admin['server_run_us_per_probe'] / 1e6:.2f}",
                    "-",
                ]
            )
    return rows


def simulate_bursts(
    replicas: int,
    interval: float,
    jitter: float,
    rounds: int,
    start_spread: float,
    random_phase: bool,
    rng: random.Random,
) -> Counter[int]:
    """Simulate `replicas` sidecars started within `start_spread` s; count probes per bin.

    Each waits interval x U(1 - jitter, 1 + jitter) between probe starts, as the scheduler
    does. With random_phase, the wait after the first probe is interval x U(0, 1) instead.
    """
    bins: Counter[int] = Counter()
    horizon = rounds * interval
    for _ in range(replicas):
        at = rng.uniform(0, start_spread)
        first = True
        while at < horizon:
            bins[int(at / BIN)] += 1
            if first and random_phase:
                at += interval * rng.random()
            else:
                at += interval * rng.uniform(1 - jitter, 1 + jitter)
            first = False
    return bins


def burst_rows(
    replicas: int, interval: float, costs: dict[str, Any], seed: int | None
) -> list[list[Any]]:
    rng = random.Random(seed)
    ping = _method(costs, "sidecar mysql check")["server_run_us_per_probe"]
    login = _method(costs, "aiomysql connect")["server_run_us_per_probe"]
    admin = _method(costs, "mysqladmin")["server_run_us_per_probe"]
    mean = replicas * BIN / interval
    # (name, jitter, start spread, random first wait, server CPU of a first and a later probe)
    scenarios = [
        ("sidecar, 10% jitter, all started at once", 0.1, 0.0, False, login, ping),
        ("sidecar, 10% jitter, started over 1 s", 0.1, 1.0, False, login, ping),
        ("proposed: wait U(0, interval) after the first probe", 0.1, 0.0, True, login, ping),
        ("exec probe, fixed period, all started at once", 0.0, 0.0, False, admin, admin),
    ]
    rows = []
    rounds = max(SLICES) + 1
    for name, jitter, spread, phase, first_cost, later_cost in scenarios:
        bins = simulate_bursts(replicas, interval, jitter, rounds, spread, phase, rng)
        peaks = []
        for round_number in SLICES:
            first_bin = int((round_number - 1) * interval / BIN)
            last_bin = int(round_number * interval / BIN)
            peaks.append(max(bins.get(b, 0) for b in range(first_bin, last_bin)))
        rows.append(
            [name]
            + [f"{peak:,} ({peak / mean:.0f}x)" for peak in peaks]
            + [f"{peaks[0] * first_cost / 1000:,.0f}", f"{peaks[-1] * later_cost / 1000:,.1f}"]
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="measure with 200 probes per method")
    parser.add_argument(
        "--costs", help="JSON written by mysql_load.py --json; without it, measure now"
    )
    parser.add_argument("--checks", type=int, default=1, help="mysql checks per replica (1)")
    parser.add_argument("--interval", type=float, default=5.0, help="sidecar interval (5 s)")
    parser.add_argument(
        "--period", type=float, default=10.0, help="exec probe periodSeconds (10, the default)"
    )
    parser.add_argument("--burst-replicas", type=int, default=10000, help="replicas simulated")
    parser.add_argument("--seed", type=int, default=1, help="seed of the simulation")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    harness.exit_on_sigterm()

    if args.costs:
        costs = json.loads(Path(args.costs).read_text())
        source = f"costs from {args.costs}"
    else:
        costs = mysql_load.measure(200 if args.quick else 1000, 1)
        source = f"costs measured now, {costs['probes']} probes per method"

    ping = _method(costs, "sidecar mysql check")
    login = _method(costs, "aiomysql connect")
    admin = _method(costs, "mysqladmin")
    print(f"machine: {harness.machine_summary()}")
    print(
        f"{source}: server CPU per probe (utime+stime / schedstat) sidecar ping "
        f"{ping['server_cpu_us_per_probe']:.1f} / {ping['server_run_us_per_probe']:.1f} us, "
        f"aiomysql login + ping {login['server_cpu_us_per_probe']:.1f} / "
        f"{login['server_run_us_per_probe']:.1f} us, mysqladmin ping "
        f"{admin['server_cpu_us_per_probe']:.1f} / {admin['server_run_us_per_probe']:.1f} us; "
        f"{costs['held_connection_kib']:.0f} KiB server memory per open connection; "
        f"max_connections {costs['max_connections']}"
    )
    print(f"{args.checks} mysql check(s) per replica")
    print()
    steady = steady_rows(costs, args.checks, args.interval, args.period)
    harness.print_table(
        [
            "replicas",
            "probe",
            "probes/s",
            "new connections/s",
            "connections open",
            "server MiB for them",
            "server CPU % (utime+stime)",
            "server CPU % (schedstat)",
            "logins/s after a MySQL restart",
        ],
        steady,
    )
    print()
    print(
        f"bursts: {args.burst_replicas:,} replicas, interval {args.interval:g} s; largest number "
        f"of probes in one {BIN * 1000:.0f} ms bin during round N (x the mean of "
        f"{args.burst_replicas * BIN / args.interval:,.0f}); CPU ms = server CPU (schedstat) "
        "that the busiest bin brings: the sidecar's first probe logs in, later ones ping"
    )
    print()
    bursts = burst_rows(args.burst_replicas, args.interval, costs, args.seed)
    harness.print_table(
        [
            "start",
            *[f"round {n}" for n in SLICES],
            "round 1 bin CPU ms",
            f"round {SLICES[-1]} bin CPU ms",
        ],
        bursts,
    )
    harness.save_json(args.json, {"costs": costs, "steady": steady, "bursts": bursts})
    return 0


if __name__ == "__main__":
    sys.exit(main())
