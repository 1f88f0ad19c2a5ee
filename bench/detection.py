"""Detection times of /ready and `wait` when MariaDB goes down and comes back."""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import harness

INTERVAL = 1.0
TIMEOUT = 0.5
POLL = 0.005
# Margins of the targets on top of the probe timing.
MARGIN = 0.05
WAIT_TARGET = 0.25


class StatusRecorder(threading.Thread):
    """Poller thread: GET /ready every POLL seconds, recording each status change and time."""

    def __init__(self, port: int) -> None:
        super().__init__(name="ready-poller", daemon=True)
        self.poller = harness.Poller(port, "/ready")
        self.changes: list[tuple[float, int | None]] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    def run(self) -> None:
        last: int | None = -1
        while not self._stopping.is_set():
            status = self.poller.status()
            now = time.monotonic()
            if status != last:
                with self._lock:
                    self.changes.append((now, status))
                last = status
            time.sleep(POLL)
        self.poller.close()

    def first(self, status: int, after: float, timeout: float) -> float:
        """Return the seconds from `after` to the first poll that saw `status`.

        Waits up to `timeout` for it. A change seen before `after` whose status still holds
        counts as 0 or less: the sidecar saw the event before the script's reference time.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                changes = list(self.changes)
            current = [(at, st) for at, st in changes if at <= after]
            if current and current[-1][1] == status:
                return current[-1][0] - after
            for at, st in changes:
                if at > after and st == status:
                    return at - after
            time.sleep(POLL)
        raise RuntimeError(f"timed out: /ready did not return {status} within {timeout:g} s")

    def stop(self) -> None:
        self._stopping.set()
        self.join(5)


@dataclass
class WaitRun:
    """A `readiness-sidecar wait` process, with the time of each output line."""

    proc: subprocess.Popen[bytes]
    lines: list[tuple[float, str]] = field(default_factory=list)
    exited_at: float | None = None

    def follow(self) -> None:
        stdout = self.proc.stdout
        assert stdout is not None
        threading.Thread(target=self._read, args=(stdout,), daemon=True).start()

    def _read(self, stdout: IO[bytes]) -> None:
        for raw in stdout:
            self.lines.append((time.monotonic(), raw.decode(errors="replace").rstrip()))
        self.proc.wait()
        self.exited_at = time.monotonic()

    def line_at(self, prefix: str) -> float | None:
        for at, line in self.lines:
            if line.startswith(prefix):
                return at
        return None

    def wait_for_line(self, prefix: str, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            at = self.line_at(prefix)
            if at is not None:
                return at
            time.sleep(POLL)
        raise RuntimeError(f"wait printed no line starting {prefix!r}: {self.lines}")


@dataclass
class Trial:
    down_503: float
    up_200: float
    wait_ready_line: float
    wait_exit: float
    wait_status: int
    mariadb_start: float
    load: float


def run_trial(server: Any, recorder: StatusRecorder, config: Path, rng: random.Random) -> Trial:
    load = harness.load_average()
    # A random pause, so the kill falls at a random point of the probe schedule.
    time.sleep(rng.uniform(0, INTERVAL))
    killed_at = time.monotonic()
    server.kill()
    down = recorder.first(503, killed_at, 10)

    command = [sys.executable, "-m", "sidecar", "wait", "-c", str(config), "--timeout", "60"]
    proc = subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    wait = WaitRun(proc)
    wait.follow()
    try:
        wait.wait_for_line("waiting: mysql", 10)
        # Let the retries reach their longest delay, then start the server at a random moment.
        time.sleep(rng.uniform(0.5, 1.0))
        start_called = time.monotonic()
        server.start()
        up_at = time.monotonic()
        up = recorder.first(200, up_at, 10)
        deadline = time.monotonic() + 10
        while wait.exited_at is None and time.monotonic() < deadline:
            time.sleep(POLL)
        if wait.exited_at is None:
            raise RuntimeError("timed out: wait did not exit within 10 s of the server's start")
        ready_line = wait.line_at("all ")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return Trial(
        down_503=down,
        up_200=up,
        wait_ready_line=(ready_line - up_at) if ready_line is not None else float("nan"),
        wait_exit=wait.exited_at - up_at,
        wait_status=proc.returncode,
        mariadb_start=up_at - start_called,
        load=load,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="3 trials: a smoke test")
    parser.add_argument("--trials", type=int, default=None, help="number of trials (20)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the random pauses")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    harness.exit_on_sigterm()
    trials = args.trials or (3 if args.quick else 20)
    rng = random.Random(args.seed)

    results: list[Trial] = []
    with harness.work_directory("bench-detection-") as workdir:
        with harness.private_mariadb(workdir / "mariadb") as server:
            password = workdir / "password"
            password.write_text(server.app_password)
            port = harness.free_port()
            check = {
                "name": "mysql",
                "type": "mysql",
                "host": server.host,
                "port": server.port,
                "user": server.app_user,
                "password_file": str(password),
                "interval": f"{INTERVAL:g}s",
                "timeout": f"{TIMEOUT * 1000:.0f}ms",
            }
            config = harness.write_config(workdir / "config.yaml", port, [check])
            command = harness.sidecar_command(config)
            with harness.started(command, workdir / "sidecar.log", "sidecar") as sidecar:
                harness.wait_for_status(port, "/ready", 200, 30, sidecar.proc)
                recorder = StatusRecorder(port)
                recorder.start()
                try:
                    for number in range(trials):
                        harness.note(f"trial {number + 1} of {trials}")
                        results.append(run_trial(server, recorder, config, rng))
                finally:
                    recorder.stop()

    print(f"machine: {harness.machine_summary()}")
    print(
        f"mysql check, interval {INTERVAL:g} s (jitter 10%), timeout {TIMEOUT:g} s; /ready "
        f"polled every {POLL * 1000:.0f} ms; {trials} trials; with {trials} trials p99 is the "
        "largest value"
    )
    print()
    rows = []
    measures = [
        (
            "MariaDB killed -> /ready 503",
            [t.down_503 for t in results],
            INTERVAL + TIMEOUT + MARGIN,
        ),
        ("MariaDB accepts logins -> /ready 200", [t.up_200 for t in results], INTERVAL + MARGIN),
        (
            "MariaDB accepts logins -> wait prints ready",
            [t.wait_ready_line for t in results],
            None,
        ),
        ("MariaDB accepts logins -> wait exits 0", [t.wait_exit for t in results], WAIT_TARGET),
        ("(MariaDB start() duration)", [t.mariadb_start for t in results], None),
    ]
    for name, values, target in measures:
        p99 = harness.percentile(values, 0.99)
        verdict = "-"
        if target is not None:
            verdict = "met" if p99 <= target else "missed"
        rows.append(
            [
                name,
                f"{1000 * harness.median(values):.0f}",
                f"{1000 * p99:.0f}",
                f"{1000 * min(values):.0f}",
                "-" if target is None else f"{1000 * target:.0f}",
                verdict,
            ]
        )
    harness.print_table(["event", "median ms", "p99 ms", "min ms", "target ms", "p99"], rows)
    statuses = sorted({t.wait_status for t in results})
    loads = [t.load for t in results]
    print()
    print(
        f"wait exit statuses: {statuses}; load 1m during the trials: "
        f"{min(loads):.2f} to {max(loads):.2f}"
    )
    harness.save_json(args.json, [vars(t) for t in results])
    return 0 if statuses == [0] else 1


if __name__ == "__main__":
    sys.exit(main())
