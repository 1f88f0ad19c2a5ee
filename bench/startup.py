"""Time from starting `serve` to /live returning 200, and where that time goes."""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

import harness

POLL = 0.005
TARGET = 1.0


def _time_python(code: str) -> float:
    """Return the wall time of `python -c code` from Popen to exit."""
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", code], check=True)
    return time.monotonic() - started


def _import_time() -> float:
    """Return the seconds `import sidecar.cli` takes inside a fresh interpreter."""
    code = (
        "import time; t = time.perf_counter(); import sidecar.cli; print(time.perf_counter() - t)"
    )
    output = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout
    return float(output)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="3 runs: a smoke test")
    parser.add_argument("--runs", type=int, default=None, help="number of starts (10)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    harness.exit_on_sigterm()
    runs = args.runs or (3 if args.quick else 10)

    live: list[float] = []
    ready: list[float] = []
    bare: list[float] = []
    imports: list[float] = []
    loads: list[float] = []
    with harness.Listeners(1) as listeners, harness.work_directory("bench-startup-") as workdir:
        for number in range(runs):
            harness.note(f"start {number + 1} of {runs}")
            port = harness.free_port()
            # Like config/quickstart.yaml without its dns check: every target is loopback.
            listener = listeners.ports[0]
            checks = [
                {"name": "listener", "type": "tcp", "host": harness.LOOPBACK, "port": listener},
                {
                    "name": "nothing-listens",
                    "type": "tcp",
                    "host": harness.LOOPBACK,
                    "port": harness.closed_port(),
                    "critical": False,
                },
                {
                    "name": "self-http",
                    "type": "http",
                    "url": f"http://{harness.LOOPBACK}:{port}/live",
                    "critical": False,
                },
            ]
            config = harness.write_config(workdir / "config.yaml", port, checks)
            loads.append(harness.load_average())
            started = time.monotonic()
            command = harness.sidecar_command(config)
            with harness.started(command, workdir / "sidecar.log", "serve") as sidecar:
                harness.wait_for_status(port, "/live", 200, 30, sidecar.proc)
                live.append(time.monotonic() - started)
                harness.wait_for_status(port, "/ready", 200, 30, sidecar.proc)
                ready.append(time.monotonic() - started)
            bare.append(_time_python("pass"))
            imports.append(_import_time())

    print(f"machine: {harness.machine_summary()}")
    print(
        f"serve with 3 checks (tcp to a listener, tcp refused, http to its own /live); "
        f"{runs} starts; /live and /ready polled every {POLL * 1000:.0f} ms; "
        f"load 1m {min(loads):.2f} to {max(loads):.2f}"
    )
    print()
    rows = [
        ["process start -> /live 200", live, TARGET],
        ["process start -> /ready 200", ready, None],
        ["python -c pass (start and exit)", bare, None],
        ["import sidecar.cli (in a started interpreter)", imports, None],
    ]
    table = []
    for name, values, target in rows:
        verdict = "-"
        if target is not None:
            verdict = "met" if harness.median(values) < target else "missed"
        table.append(
            [
                name,
                f"{1000 * harness.median(values):.0f}",
                f"{1000 * max(values):.0f}",
                f"{1000 * min(values):.0f}",
                "-" if target is None else f"{1000 * target:.0f}",
                verdict,
            ]
        )
    harness.print_table(["measure", "median ms", "max ms", "min ms", "target ms", "median"], table)
    harness.save_json(
        args.json,
        {"live": live, "ready": ready, "python_pass": bare, "import": imports, "loads": loads},
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
