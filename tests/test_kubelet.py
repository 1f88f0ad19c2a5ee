"""The deploy/ probes, run by a kubelet emulator against a real sidecar and a private MariaDB."""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from tests.kubelet import (
    DEPLOY_DIR,
    LIVENESS,
    READINESS,
    STARTUP,
    USER_AGENT,
    HttpProbe,
    ProbeWorker,
    load_probe,
)
from tests.servers.mariadb import MariaDBServer
from tests.servers.tcp import free_port

# Scaled timing. The manifests probe every 2 to 10 s, which would make each test last
# minutes, so periodSeconds and timeoutSeconds are replaced here while every threshold
# stays the manifest's. The sidecar's interval and timeout are shortened the same way.
KUBELET_PERIOD = 0.5
KUBELET_TIMEOUT = 0.4
SIDECAR_INTERVAL = 0.5
SIDECAR_TIMEOUT = 0.3
# The sidecar varies each interval by up to this fraction.
JITTER = 0.1
# Room for process scheduling on a busy 2-core machine shared with other test runs.
SLACK = 2.0
# How long MySQL stays down at the start: several probes of both the sidecar and the kubelet.
DOWN_AT_START = 1.5
# The in-process endpoints of the emulator's own tests respond within milliseconds.
FAST_PERIOD = 0.05


def scaled(probe: HttpProbe) -> HttpProbe:
    return probe.scaled(period_seconds=KUBELET_PERIOD, timeout_seconds=KUBELET_TIMEOUT)


def sidecar_config(shape: str, db: MariaDBServer, workdir: Path, port: int) -> dict[str, Any]:
    """The ConfigMap's config of one deploy/ shape, aimed at the private MariaDB.

    The mysql check gets the server's address, user, database and a password file. The
    mysql-dns check resolves `localhost`, which the hosts file answers, and names a closed
    loopback port as its DNS server, so no query reaches the machine's DNS server.
    """
    manifest = DEPLOY_DIR / shape / "30-sidecar-config.yaml"
    with manifest.open(encoding="utf-8") as handle:
        (configmap,) = [doc for doc in yaml.safe_load_all(handle) if doc["kind"] == "ConfigMap"]
    config: dict[str, Any] = yaml.safe_load(configmap["data"]["config.yaml"])
    config["server"].update(host="127.0.0.1", port=port, drain_delay=0)
    config["defaults"].update(interval=SIDECAR_INTERVAL, timeout=SIDECAR_TIMEOUT)

    password_file = workdir / "mysql-password"
    password_file.write_text(db.app_password + "\n")
    for check in config["checks"]:
        if check["type"] == "mysql":
            check.update(
                host=db.host,
                port=db.port,
                user=db.app_user,
                password_file=str(password_file),
                database=db.app_database,
            )
        elif check["type"] == "dns":
            check.update(host="localhost", nameservers=["127.0.0.1:9"])
        else:
            # A new check in the manifest must be aimed at a local server before it runs here.
            raise AssertionError(f"{manifest}: no local stand-in for check {check['name']!r}")
    return config


class SidecarProcess:
    """`readiness-sidecar serve` as a child process, its log in a file."""

    def __init__(self, config: dict[str, Any], workdir: Path) -> None:
        self.port = int(config["server"]["port"])
        self.config_path = workdir / "sidecar.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log_path = workdir / "sidecar.log"
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "sidecar", "serve", "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    async def wait_listening(self, deadline: float = 30.0) -> float:
        """Wait until the port accepts connections; return that moment."""
        give_up = time.monotonic() + deadline
        while True:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"sidecar exited with {self.process.returncode}:\n{self.log()}"
                )
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                if time.monotonic() > give_up:
                    raise AssertionError(f"sidecar did not listen:\n{self.log()}") from None
                await asyncio.sleep(0.05)
            else:
                writer.close()
                await writer.wait_closed()
                return time.monotonic()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def stopped_mariadb(tmp_path: Path, mariadb_template: Path) -> Iterator[MariaDBServer]:
    """A private MariaDB that is not running yet (the `mariadb` fixture starts its server)."""
    server = MariaDBServer(tmp_path / "mariadb", template=mariadb_template)
    yield server
    server.close()


@pytest.fixture
def run_sidecar(tmp_path: Path) -> Iterator[Callable[[dict[str, Any]], SidecarProcess]]:
    started: list[SidecarProcess] = []

    def run(config: dict[str, Any]) -> SidecarProcess:
        sidecar = SidecarProcess(config, tmp_path)
        started.append(sidecar)
        return sidecar

    yield run
    for sidecar in started:
        sidecar.stop()


def timeline(title: str, lines: list[tuple[str, float, str, float]]) -> None:
    """Print each event and what the emulated kubelet saw after it, in seconds from the event."""
    print(f"\n{title}")
    for event, event_at, outcome, at in lines:
        print(f"  {event} at t=0 -> {outcome} at t={at - event_at:+.3f} s")


def ready_bound(config: dict[str, Any], probe: HttpProbe) -> float:
    """Latest Ready=false after MySQL stops: the sum docs/kubernetes.md gives, plus slack."""
    threshold: int = config["defaults"]["failure_threshold"]
    sidecar = threshold * SIDECAR_INTERVAL * (1 + JITTER) + SIDECAR_TIMEOUT
    return sidecar + probe.failure_threshold * probe.period_seconds + SLACK


def recovery_bound(config: dict[str, Any], probe: HttpProbe) -> float:
    """Latest success of a kubelet probe after MySQL accepts logins, plus slack."""
    threshold: int = config["defaults"]["success_threshold"]
    sidecar = threshold * SIDECAR_INTERVAL * (1 + JITTER) + SIDECAR_TIMEOUT
    return sidecar + probe.success_threshold * probe.period_seconds + SLACK


def not_ready_floor(config: dict[str, Any], probe: HttpProbe) -> float:
    """Earliest Ready=false after MySQL stops.

    The sidecar's failed probes in a row are at least 0.9 x interval apart, the kubelet's a
    period; 0.2 s allows for a probe tick that runs late.
    """
    threshold: int = config["defaults"]["failure_threshold"]
    sidecar = (threshold - 1) * SIDECAR_INTERVAL * (1 - JITTER)
    return sidecar + (probe.failure_threshold - 1) * probe.period_seconds - 0.2


async def start_mariadb(db: MariaDBServer) -> tuple[float, float]:
    """Start the server in a thread, so the probes go on; return (called, logins work)."""
    called = time.monotonic()
    await asyncio.to_thread(db.start)
    return called, time.monotonic()


async def kill_mariadb(db: MariaDBServer) -> float:
    await asyncio.to_thread(db.kill)
    return time.monotonic()


@pytest.mark.mariadb
async def test_sidecar_shape_readiness_follows_mysql(
    stopped_mariadb: MariaDBServer,
    run_sidecar: Callable[[dict[str, Any]], SidecarProcess],
    tmp_path: Path,
) -> None:
    db = stopped_mariadb
    config = sidecar_config("sidecar", db, tmp_path, free_port())
    manifest = DEPLOY_DIR / "sidecar" / "40-wordpress.yaml"
    readiness_spec = load_probe(manifest, "wordpress", READINESS)
    liveness_spec = load_probe(manifest, "readiness-sidecar", LIVENESS)
    # WordPress's readinessProbe names the sidecar's port 8558; here the sidecar runs on a
    # free port, which the workers are given instead.
    assert (readiness_spec.path, readiness_spec.port) == ("/ready", 8558)
    assert liveness_spec.path == "/live"
    readiness, liveness = scaled(readiness_spec), scaled(liveness_spec)
    ready = ProbeWorker(readiness, port=config["server"]["port"])
    live = ProbeWorker(liveness, port=config["server"]["port"])

    sidecar = run_sidecar(config)
    listening = await sidecar.wait_listening()
    async with ready, live:
        await asyncio.sleep(DOWN_AT_START)
        down_results = list(ready.results)

        first_call, first_up = await start_mariadb(db)
        first_ready = await ready.wait_for(True, recovery_bound(config, readiness) + 30)

        killed = await kill_mariadb(db)
        not_ready = await ready.wait_for(False, ready_bound(config, readiness) + 30)

        second_call, second_up = await start_mariadb(db)
        second_ready = await ready.wait_for(True, recovery_bound(config, readiness) + 30)
        # Liveness keeps probing a little longer once MySQL is back.
        await asyncio.sleep(2 * KUBELET_PERIOD)

    print(f"\nsidecar shape: {readiness.describe()}")
    original = (
        f"period {readiness_spec.period_seconds:g} s, timeout {readiness_spec.timeout_seconds:g} s"
    )
    print(f"  scaled from {original}")
    print(f"  sidecar interval {SIDECAR_INTERVAL:g} s, timeout {SIDECAR_TIMEOUT:g} s")
    timeline(
        "emulated Ready transitions",
        [
            (
                "sidecar listening, MySQL down",
                listening,
                "first probe, Ready=false",
                ready.results[0].at,
            ),
            ("MariaDB start called", first_call, "Ready=true", first_ready),
            ("MariaDB accepting logins", first_up, "Ready=true", first_ready),
            ("MariaDB killed", killed, "Ready=false", not_ready),
            ("MariaDB restart called", second_call, "Ready=true", second_ready),
            ("MariaDB accepting logins again", second_up, "Ready=true", second_ready),
        ],
    )
    print(f"  livenessProbe /live: {len(live.results)} probes, {len(live.failures())} failed")

    # Not ready while MySQL was down at start: every probe got the sidecar's 503.
    assert len(down_results) >= 2
    assert all(r.status == 503 for r in down_results), down_results
    assert [t.ready for t in ready.transitions] == [True, False, True]
    assert first_call < first_ready <= first_up + recovery_bound(config, readiness)
    # No earlier than both sides' thresholds allow, no later than their sum with slack.
    floor = not_ready_floor(config, readiness)
    assert floor <= not_ready - killed <= ready_bound(config, readiness), sidecar.log()
    # The state flipped on the failureThreshold-th failure in a row, not before.
    flip = next(i for i, r in enumerate(ready.results) if r.at == not_ready)
    run = ready.results[flip - readiness.failure_threshold + 1 : flip + 1]
    assert all(not r.success for r in run)
    assert ready.results[flip - len(run)].success
    assert second_call < second_ready <= second_up + recovery_bound(config, readiness)
    # /live reports the sidecar's own health only, so MySQL's outages never fail it.
    assert live.failures() == [], live.failures()
    assert len(live.results) >= (second_ready - listening) / KUBELET_PERIOD / 2
    assert live.transitions == []
    assert live.restart_at is None
    assert sidecar.process.poll() is None


@pytest.mark.mariadb
async def test_native_sidecar_holds_app_start(
    stopped_mariadb: MariaDBServer,
    run_sidecar: Callable[[dict[str, Any]], SidecarProcess],
    tmp_path: Path,
) -> None:
    db = stopped_mariadb
    config = sidecar_config("native-sidecar", db, tmp_path, free_port())
    manifest = DEPLOY_DIR / "native-sidecar" / "40-wordpress.yaml"
    specs = [
        load_probe(manifest, "readiness-sidecar", kind) for kind in (STARTUP, READINESS, LIVENESS)
    ]
    assert [spec.path for spec in specs] == ["/started", "/ready", "/live"]
    startup, readiness, liveness = [scaled(spec) for spec in specs]
    port = config["server"]["port"]
    # The kubelet starts the app containers once the native sidecar's startupProbe has
    # succeeded, and runs its other probes only from then on.
    started = ProbeWorker(startup, port=port)
    ready = ProbeWorker(readiness, port=port, after=started)
    live = ProbeWorker(liveness, port=port, after=started)

    sidecar = run_sidecar(config)
    listening = await sidecar.wait_listening()
    async with started, ready, live:
        await asyncio.sleep(DOWN_AT_START)
        startup_while_down = list(started.results)
        ready_while_held = list(ready.results)

        db_call, db_up = await start_mariadb(db)
        app_start = await started.wait_for(True, recovery_bound(config, startup) + 30)
        first_ready = await ready.wait_for(True, recovery_bound(config, readiness) + 30)

        killed = await kill_mariadb(db)
        not_ready = await ready.wait_for(False, ready_bound(config, readiness) + 30)
        # The kubelet sends no startup probe after the first success; the sidecar's /started
        # stays 200 all the same.
        assert not started.running
        latched = await started.probe_once()

    print(f"\nnative sidecar: {startup.describe()}")
    print(f"  {readiness.describe()}")
    timeline(
        "emulated app start and Ready transitions",
        [
            (
                "sidecar listening, MySQL down",
                listening,
                "first startupProbe, app held",
                started.results[0].at,
            ),
            ("MariaDB start called", db_call, "app start (startupProbe success)", app_start),
            ("MariaDB accepting logins", db_up, "app start", app_start),
            ("MariaDB accepting logins", db_up, "Ready=true", first_ready),
            ("MariaDB killed", killed, "Ready=false", not_ready),
        ],
    )
    print(f"  after the kill: GET /started -> {latched.status}")

    # While MySQL was down the app was held: /started returned 503 and the kubelet ran no
    # readiness probe yet.
    assert len(startup_while_down) >= 2
    assert all(r.status == 503 for r in startup_while_down), startup_while_down
    assert ready_while_held == []
    assert db_call < app_start <= db_up + recovery_bound(config, startup)
    assert started.results[-1].at == app_start
    assert started.results[-1].success
    assert all(not r.success for r in started.results[:-1])
    # The latch: once started, no more startup probes, and the sidecar keeps /started at 200
    # while /ready fails.
    assert [t.ready for t in started.transitions] == [True]
    assert started.ready
    assert started.restart_at is None
    assert latched.status == 200
    assert app_start <= ready.results[0].at
    assert [t.ready for t in ready.transitions] == [True, False]
    floor = not_ready_floor(config, readiness)
    assert floor <= not_ready - killed <= ready_bound(config, readiness), sidecar.log()
    assert live.results
    assert live.failures() == [], live.failures()


# The emulator itself, against an in-process endpoint.


class ScriptedEndpoint:
    """An HTTP endpoint on loopback that responds with scripted statuses and records requests."""

    def __init__(self, statuses: list[int], delay: float = 0.0) -> None:
        self.statuses = list(statuses)
        self.delay = delay
        self.requests: list[tuple[dict[str, str], tuple[str, int]]] = []
        self.port = 0

    async def handle(self, request: web.Request) -> web.Response:
        transport = request.transport
        peer = transport.get_extra_info("peername") if transport is not None else ("?", 0)
        self.requests.append((dict(request.headers), tuple(peer[:2])))
        if self.delay:
            await asyncio.sleep(self.delay)
        status = self.statuses.pop(0) if self.statuses else 200
        headers = {"Location": "/elsewhere"} if 300 <= status < 400 else None
        return web.Response(status=status, text="body", headers=headers)


@pytest.fixture
async def endpoint() -> AsyncIterator[Callable[..., Any]]:
    runners: list[web.AppRunner] = []

    async def serve(statuses: list[int], delay: float = 0.0) -> ScriptedEndpoint:
        scripted = ScriptedEndpoint(statuses, delay)
        app = web.Application()
        app.router.add_get("/ready", scripted.handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        scripted.port = runner.addresses[0][1]
        return scripted

    yield serve
    for runner in runners:
        await runner.cleanup()


def test_load_probe_reads_manifest() -> None:
    manifest = DEPLOY_DIR / "native-sidecar" / "40-wordpress.yaml"
    startup = load_probe(manifest, "readiness-sidecar", STARTUP)
    assert startup == HttpProbe(STARTUP, "readiness-sidecar", "/started", 8558, 2, 2, 150, 1, 0)
    with pytest.raises(ValueError, match="not an httpGet probe"):
        load_probe(manifest, "wordpress", READINESS)
    with pytest.raises(LookupError, match="no startupProbe"):
        load_probe(DEPLOY_DIR / "sidecar" / "40-wordpress.yaml", "readiness-sidecar", STARTUP)


def test_load_probe_fills_kubernetes_defaults(tmp_path: Path) -> None:
    pod = {
        "initContainers": [
            {"name": "setup", "image": "x"},
            {
                "name": "helper",
                "image": "x",
                "restartPolicy": "Always",
                "ports": [{"name": "health", "containerPort": 9000}],
                "livenessProbe": {"httpGet": {"path": "/live", "port": "health"}},
            },
        ],
        "containers": [{"name": "app", "image": "x"}],
    }
    deployment = {"kind": "Deployment", "spec": {"template": {"spec": pod}}}
    manifest = tmp_path / "app.yaml"
    manifest.write_text(yaml.safe_dump_all([{"kind": "Namespace"}, deployment]))
    probe = load_probe(manifest, "helper", LIVENESS)
    assert probe == HttpProbe(LIVENESS, "helper", "/live", 9000, 10, 1, 3, 1, 0)
    with pytest.raises(LookupError, match="no container or native sidecar named 'setup'"):
        load_probe(manifest, "setup", LIVENESS)


async def test_worker_counts_like_kubelet(endpoint: Callable[..., Any]) -> None:
    # Threshold 2 for failures: a single 500 between successes changes nothing.
    statuses = [503, 503, 200, 302, 500, 204, 500, 404, 399, 200]
    scripted = await endpoint(statuses)
    probe = HttpProbe(READINESS, "app", "/ready", scripted.port, FAST_PERIOD, 1, 2, 1, 0)
    async with ProbeWorker(probe) as worker:
        await worker.wait_for_results(len(statuses), 10)

    results = worker.results[: len(statuses)]
    assert [r.status for r in results] == statuses
    assert [r.success for r in results] == [s < 400 for s in statuses]
    assert [(t.ready, t.at) for t in worker.transitions] == [
        (True, results[2].at),
        (False, results[7].at),
        (True, results[8].at),
    ]
    for headers, _ in scripted.requests:
        assert headers["User-Agent"] == USER_AGENT
        assert headers["Connection"] == "close"
        assert headers["Accept"] == "*/*"
        assert "Accept-Encoding" not in headers
    # A new connection for every probe: no client port is used twice.
    peers = [peer for _, peer in scripted.requests]
    assert len(set(peers)) == len(peers)
    # Probe k starts on or after tick k of the period's grid.
    starts = [r.at - r.duration for r in results]
    assert starts[-1] - starts[0] >= 0.9 * (len(starts) - 1) * FAST_PERIOD


async def test_worker_failures_and_stopping(endpoint: Callable[..., Any]) -> None:
    slow = await endpoint([], delay=1.0)
    liveness = HttpProbe(LIVENESS, "app", "/ready", slow.port, FAST_PERIOD, 0.1, 2, 1, 0)
    async with ProbeWorker(liveness) as live:
        assert live.ready
        await live.wait_for(False, 10)
    # A liveness probe that reaches its failure threshold stops: the container restarts.
    assert live.restart_at == live.transitions[0].at
    assert [r.error for r in live.results] == ["no answer within 0.1 s"] * 2

    startup = HttpProbe(STARTUP, "app", "/ready", free_port(), FAST_PERIOD, 1, 100, 1, 0)
    async with ProbeWorker(startup) as refused:
        await refused.wait_for_results(2, 10)
        assert not refused.ready
        assert refused.running
    assert all(r.status is None and "Connect" in (r.error or "") for r in refused.results)

    ok = await endpoint([200])
    delayed = dataclasses.replace(startup, port=ok.port, initial_delay_seconds=0.2)
    async with ProbeWorker(delayed) as worker:
        await worker.wait_for(True, 10)
        await asyncio.sleep(3 * FAST_PERIOD)
        # A startup probe stops once it has succeeded.
        assert not worker.running
        assert len(worker.results) == 1
    assert worker.started_at is not None
    first = worker.results[0]
    assert first.at - first.duration - worker.started_at >= 0.2
