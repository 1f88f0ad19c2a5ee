"""Helpers shared by the benchmark scripts: processes, /proc readings, listeners and tables."""

from __future__ import annotations

import contextlib
import http.client
import json
import math
import multiprocessing
import multiprocessing.connection
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
# The scripts import the private MariaDB helper from the test suite, which lives at the root.
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

LOOPBACK = "127.0.0.1"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------------------------------
# Machine and process readings


def load_average() -> float:
    """Return the 1-minute load average."""
    return float(Path("/proc/loadavg").read_text().split()[0])


def cpu_seconds(pid: int) -> float:
    """Return utime + stime of a process (all its threads, live and exited) in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()
    # After the command name: state is field 3, utime 14 and stime 15 (1-based, man proc).
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / CLOCK_TICKS


def rss_mib(pid: int) -> float:
    """Return the resident set size of a process in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def machine_summary() -> str:
    """Describe the CPU model, core count, kernel and Python, for the tables' header."""
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    python = sys.version.split()[0]
    return f"{model}, {os.cpu_count()} cores, Linux {os.uname().release}, Python {python}"


def busy_cpu_seconds() -> float:
    """Return the CPU seconds all cores spent busy since boot, from /proc/stat."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


def pin_prefix(cpu: int) -> list[str]:
    """Return a `taskset -c CPU` prefix when taskset exists and the CPU is online."""
    if shutil.which("taskset") is None or cpu >= (os.cpu_count() or 1):
        return []
    return ["taskset", "-c", str(cpu)]


def free_port() -> int:
    """Return a loopback port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


# ---------------------------------------------------------------------------------------------
# Statistics and output


def percentile(values: Sequence[float], fraction: float) -> float:
    """Return the nearest-rank percentile: with 20 values, fraction 0.99 gives the largest."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, math.ceil(len(ordered) * fraction))
    return ordered[min(rank, len(ordered)) - 1]


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Print a Markdown table, so the output can be pasted into the docs as it is."""
    cells = [[str(cell) for cell in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]

    def line(values: Sequence[str]) -> str:
        return "| " + " | ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)) + " |"

    print(line(headers))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells:
        print(line(row))
    sys.stdout.flush()


def save_json(path: str | None, data: Any) -> None:
    """Write the results as JSON when the --json option named a file."""
    if path:
        Path(path).write_text(json.dumps(data, indent=2) + "\n")
        print(f"results written to {path}")


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so the scripts' cleanup runs and stops their servers."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def note(message: str) -> None:
    """Print a progress line on stderr, so stdout keeps only the tables."""
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# HTTP


def http_get(port: int, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
    """Send one GET on a new connection and return the status and body."""
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


class Poller:
    """GET requests on one keep-alive connection, reconnecting after an error."""

    def __init__(self, port: int, path: str, timeout: float = 1.0) -> None:
        self.port = port
        self.path = path
        self.timeout = timeout
        self._conn: http.client.HTTPConnection | None = None

    def status(self) -> int | None:
        """Send one request and return its status, or None when the server did not respond."""
        try:
            if self._conn is None:
                self._conn = http.client.HTTPConnection(LOOPBACK, self.port, timeout=self.timeout)
            self._conn.request("GET", self.path)
            response = self._conn.getresponse()
            response.read()
            return response.status
        except (OSError, http.client.HTTPException):
            self.close()
            return None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def wait_for_status(
    port: int, path: str, want: int, timeout: float, proc: subprocess.Popen[bytes] | None = None
) -> float:
    """Poll GET path until it returns status `want`; return the seconds that took.

    Raises RuntimeError on timeout or when `proc` exits first.
    """
    started = time.monotonic()
    poller = Poller(port, path)
    try:
        while True:
            if poller.status() == want:
                return time.monotonic() - started
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"process exited with status {proc.returncode}")
            if time.monotonic() - started > timeout:
                raise RuntimeError(f"timed out: {path} did not return {want} within {timeout:g} s")
            time.sleep(0.005)
    finally:
        poller.close()


# ---------------------------------------------------------------------------------------------
# The sidecar as a process


def write_config(
    path: Path,
    port: int,
    checks: list[dict[str, Any]],
    defaults: dict[str, Any] | None = None,
    server: dict[str, Any] | None = None,
) -> Path:
    """Write a sidecar config that listens on loopback:port."""
    document: dict[str, Any] = {
        "server": {"host": LOOPBACK, "port": port, "drain_delay": "0s", **(server or {})},
        "checks": checks,
    }
    if defaults:
        document["defaults"] = defaults
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


@dataclass
class ManagedProcess:
    """A child process the benchmark started; stop() ends it by its PID."""

    proc: subprocess.Popen[bytes]
    log_path: Path | None = None
    name: str = "process"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def log_tail(self, limit: int = 2000) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-limit:]


@contextlib.contextmanager
def started(
    command: Sequence[str],
    log_path: Path,
    name: str,
    env: dict[str, str] | None = None,
) -> Iterator[ManagedProcess]:
    """Start a process with its output in log_path; stop it on exit, also on errors."""
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            list(command),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    managed = ManagedProcess(proc, log_path, name)
    try:
        yield managed
    finally:
        managed.stop()


def sidecar_command(config: Path, *args: str) -> list[str]:
    """Return the `serve` command line, as `python -m sidecar` with this interpreter."""
    return [
        sys.executable,
        "-m",
        "sidecar",
        "serve",
        "-c",
        str(config),
        "--log-format",
        "json",
        *args,
    ]


# ---------------------------------------------------------------------------------------------
# Accept-and-close TCP listeners in a child process


def _serve_listeners(count: int, conn: multiprocessing.connection.Connection) -> None:
    parent = os.getppid()
    selector = selectors.DefaultSelector()
    listeners = []
    for _ in range(count):
        listener = socket.create_server((LOOPBACK, 0), backlog=4096)
        listener.setblocking(False)
        selector.register(listener, selectors.EVENT_READ)
        listeners.append(listener)
    conn.send([s.getsockname()[1] for s in listeners])
    conn.close()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while os.getppid() == parent:
        for key, _ in selector.select(timeout=1.0):
            listener = key.fileobj
            assert isinstance(listener, socket.socket)
            # Accept everything queued, then close: the tcp check only needs the handshake.
            while True:
                try:
                    accepted, _ = listener.accept()
                except BlockingIOError:
                    break
                accepted.close()


@dataclass
class Listeners:
    """Loopback listeners that accept each connection and close it, run in their own process.

    A separate process keeps their work out of the measured process and its GIL.
    """

    count: int = 4
    ports: list[int] = field(default_factory=list)
    _process: Any = None

    def __enter__(self) -> Listeners:
        context = multiprocessing.get_context("spawn")
        receive, send = context.Pipe(duplex=False)
        self._process = context.Process(
            target=_serve_listeners, args=(self.count, send), daemon=True
        )
        self._process.start()
        send.close()
        if not receive.poll(30):
            self.close()
            raise RuntimeError("listener process did not report its ports")
        self.ports = receive.recv()
        receive.close()
        return self

    @property
    def pid(self) -> int:
        return int(self._process.pid)

    def close(self) -> None:
        if self._process is not None and self._process.is_alive():
            self._process.terminate()
            self._process.join(10)
        self._process = None

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def closed_port() -> int:
    """Return a loopback port with no listener, so a connection to it is refused."""
    return free_port()


def tcp_checks(
    ok: int,
    failing: int,
    ports: Sequence[int],
    fields: dict[str, Any] | None = None,
    failing_fields: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Build `ok` tcp checks spread over the listener ports and `failing` ones to a closed port.

    `fields` (interval, critical, ...) apply to every check, `failing_fields` to the failing
    ones on top.
    """
    checks: list[dict[str, Any]] = []
    for index in range(ok):
        port = ports[index % len(ports)]
        check = {"name": f"ok-{index}", "type": "tcp", "host": LOOPBACK, "port": port}
        checks.append({**check, **(fields or {})})
    refused = closed_port()
    for index in range(failing):
        check = {"name": f"down-{index}", "type": "tcp", "host": LOOPBACK, "port": refused}
        checks.append({**check, **(fields or {}), **(failing_fields or {})})
    return checks


# ---------------------------------------------------------------------------------------------
# A private MariaDB


@contextlib.contextmanager
def private_mariadb(workdir: Path) -> Iterator[Any]:
    """Yield a started MariaDBServer on a free loopback port; kill and remove it on exit."""
    from tests.servers.mariadb import MariaDBServer, make_template

    template = make_template(workdir / "template")
    server = MariaDBServer(workdir / "server", template=template)
    try:
        server.start()
        yield server
    finally:
        server.close()
        shutil.rmtree(workdir / "template", ignore_errors=True)


def mariadb_pid(server: Any) -> int:
    pid = server.pid
    if pid is None:
        raise RuntimeError("mariadbd is not running")
    return int(pid)


@contextlib.contextmanager
def work_directory(prefix: str) -> Iterator[Path]:
    """Create a temporary directory and remove it on exit."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
