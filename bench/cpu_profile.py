"""CPU profiles of the sidecar under three loads, sampled from outside with py-spy."""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import harness

SCENARIOS = {
    "ready-200": "GET /ready under wrk with 200 checks, 100 of them failing but not critical",
    "ready-503": "GET /ready under wrk with 200 checks, 100 of them critical and failing",
    "tcp-1000": "1,000 tcp checks at 1 s, no requests",
}


# Functions of the sidecar listed below the top ones.
SIDECAR_ROWS = 8


def _frame_name(frame: str) -> str:
    """Shorten `function (path/to/file.py:12)` to `function (dir/file.py)` or `(sidecar/...)`."""
    function, _, location = frame.strip().partition(" (")
    path = location.rstrip(")").rsplit(":", 1)[0]
    inside = re.search(r"(?:^|/)(sidecar/.*)$", path)
    short = inside.group(1) if inside else "/".join(path.split("/")[-2:])
    return f"{function} ({short})"


def summarize(raw: Path, top: int) -> list[list[str]]:
    """Return inclusive and own shares of the main thread's samples per function.

    Other threads are left out: py-spy reports pycares' helper thread, which blocks on a
    queue, as active.
    """
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = [_frame_name(frame) for frame in stack.split(";")]
        if not any(frame.endswith("(sidecar/__main__.py)") for frame in frames):
            continue
        total += count
        own[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count
    # Frames every sample shares (the interpreter and the loop) are left out.
    ranked = [name for name, count in inclusive.most_common() if count < total]
    chosen = ranked[:top]
    # The sidecar's own functions are listed too, even below the top.
    chosen += [name for name in ranked[top:] if "(sidecar/" in name][:SIDECAR_ROWS]
    return [
        [name, f"{100 * inclusive[name] / total:.1f}", f"{100 * own[name] / total:.1f}"]
        for name in chosen
    ]


def py_spy() -> str | None:
    """Return py-spy from PATH, or from beside this interpreter (a virtual environment)."""
    beside = Path(sys.executable).parent / "py-spy"
    return shutil.which("py-spy") or (str(beside) if beside.exists() else None)


def record(pid: int, seconds: int, output: Path) -> None:
    command = [
        py_spy() or "py-spy",
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(seconds),
        "--rate",
        "250",
        "--format",
        "raw",
        "--output",
        str(output),
    ]
    subprocess.run(command, check=True, capture_output=True)


def run(scenario: str, seconds: int, workdir: Path) -> Path:
    raw = workdir / "profile.txt"
    port = harness.free_port()
    with harness.Listeners(4) as listeners:
        if scenario.startswith("ready-"):
            critical = {"critical": scenario == "ready-503"}
            checks = harness.tcp_checks(100, 100, listeners.ports, {"interval": "5s"}, critical)
        else:
            fields = {"interval": "1s", "timeout": "500ms"}
            checks = harness.tcp_checks(1000, 0, listeners.ports, fields=fields)
        config = harness.write_config(workdir / "config.yaml", port, checks)
        command = harness.sidecar_command(config)
        with harness.started(command, workdir / "sidecar.log", scenario) as sidecar:
            harness.wait_for_status(port, "/live", 200, 30, sidecar.proc)
            if scenario == "tcp-1000":
                # Past the first rounds, in which every check probes at the same moment.
                time.sleep(20)
                record(sidecar.pid, seconds, raw)
                return raw
            time.sleep(2)
            url = f"http://{harness.LOOPBACK}:{port}/ready"
            load = subprocess.Popen(
                ["wrk", "-t1", "-c10", f"-d{seconds + 3}s", url],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                time.sleep(1)
                record(sidecar.pid, seconds, raw)
            finally:
                load.wait()
    return raw


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("scenarios", nargs="*", help=f"some of {', '.join(SCENARIOS)} (all)")
    parser.add_argument("--quick", action="store_true", help="3 s of samples")
    parser.add_argument("--seconds", type=int, default=None, help="seconds sampled (10)")
    parser.add_argument("--top", type=int, default=15, help="functions listed")
    args = parser.parse_args()
    harness.exit_on_sigterm()
    if py_spy() is None or shutil.which("wrk") is None:
        print("needs py-spy (pip install py-spy) and wrk (Debian package wrk)", file=sys.stderr)
        return 1
    unknown = sorted(set(args.scenarios) - set(SCENARIOS))
    if unknown:
        parser.error(f"unknown scenario {unknown[0]!r}; choose from {', '.join(SCENARIOS)}")
    seconds = args.seconds or (3 if args.quick else 10)
    print(f"machine: {harness.machine_summary()}")
    for scenario in args.scenarios or list(SCENARIOS):
        harness.note(f"profiling {scenario}")
        with harness.work_directory("bench-profile-") as workdir:
            raw = run(scenario, seconds, workdir)
            rows = summarize(raw, args.top)
        print()
        print(f"{scenario}: {SCENARIOS[scenario]}; {seconds} s of samples at 250 Hz")
        print()
        harness.print_table(["function (file)", "inclusive %", "own %"], rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
