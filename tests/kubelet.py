"""A kubelet emulator for the tests: HTTP probes read from deploy/ and run like the kubelet."""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple, Self

import aiohttp
import yaml

DEPLOY_DIR = Path(__file__).resolve().parent.parent / "deploy"

# The headers the kubelet of Kubernetes 1.30 sends with every HTTP probe (pkg/probe/http in
# the Kubernetes source). Its transport disables keep-alive and compression.
USER_AGENT = "kube-probe/1.30"
PROBE_HEADERS = {"User-Agent": USER_AGENT, "Accept": "*/*", "Connection": "close"}
# The kubelet reads at most this much of a probe's response body.
MAX_BODY = 10 * 1024

READINESS = "readinessProbe"
LIVENESS = "livenessProbe"
STARTUP = "startupProbe"
PROBE_KINDS = (READINESS, LIVENESS, STARTUP)

# Kubernetes defaults for fields a probe leaves out.
DEFAULT_PERIOD = 10
DEFAULT_TIMEOUT = 1
DEFAULT_FAILURE_THRESHOLD = 3
DEFAULT_SUCCESS_THRESHOLD = 1
DEFAULT_INITIAL_DELAY = 0

_HTTP_GET_FIELDS = {"path", "port", "scheme"}


@dataclass(frozen=True)
class HttpProbe:
    """One httpGet probe of a container, with the Kubernetes defaults filled in."""

    kind: str
    container: str
    path: str
    port: int
    period_seconds: float = DEFAULT_PERIOD
    timeout_seconds: float = DEFAULT_TIMEOUT
    failure_threshold: int = DEFAULT_FAILURE_THRESHOLD
    success_threshold: int = DEFAULT_SUCCESS_THRESHOLD
    initial_delay_seconds: float = DEFAULT_INITIAL_DELAY

    def scaled(self, period_seconds: float, timeout_seconds: float) -> HttpProbe:
        """Return a copy with a shorter period and timeout; thresholds and path stay."""
        return dataclasses.replace(
            self, period_seconds=period_seconds, timeout_seconds=timeout_seconds
        )

    def describe(self) -> str:
        return (
            f"{self.container} {self.kind} GET {self.path}, period {self.period_seconds:g} s,"
            f" timeout {self.timeout_seconds:g} s, failureThreshold {self.failure_threshold},"
            f" successThreshold {self.success_threshold}"
        )


def _documents(manifest: Path) -> list[dict[str, Any]]:
    with manifest.open(encoding="utf-8") as handle:
        return [doc for doc in yaml.safe_load_all(handle) if isinstance(doc, dict)]


def find_deployment(manifest: Path, name: str | None = None) -> dict[str, Any]:
    """Return the Deployment of a multi-document manifest (the one called `name`, if given)."""
    found = [
        doc
        for doc in _documents(manifest)
        if doc.get("kind") == "Deployment"
        and (name is None or doc.get("metadata", {}).get("name") == name)
    ]
    if len(found) != 1:
        expected = "a Deployment" if name is None else f"Deployment {name!r}"
        raise LookupError(f"{manifest}: expected one {expected}, found {len(found)}")
    return found[0]


def find_container(deployment: dict[str, Any], name: str) -> dict[str, Any]:
    """Return a container, or a native sidecar (an init container with restartPolicy Always)."""
    spec = deployment["spec"]["template"]["spec"]
    candidates: list[dict[str, Any]] = list(spec.get("containers", []))
    # Plain init containers run to completion and may not have probes.
    candidates += [c for c in spec.get("initContainers", []) if c.get("restartPolicy") == "Always"]
    for container in candidates:
        if container.get("name") == name:
            return container
    raise LookupError(f"no container or native sidecar named {name!r}")


def _resolve_port(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    # Like the kubelet: a named port is looked up among the probed container's own ports.
    for entry in container.get("ports", []):
        if entry.get("name") == port:
            return int(entry["containerPort"])
    raise LookupError(f"container {container.get('name')!r} has no port named {port!r}")


def load_probe(
    manifest: Path | str, container: str, kind: str, deployment: str | None = None
) -> HttpProbe:
    """Read one httpGet probe (kind is readinessProbe, livenessProbe or startupProbe)."""
    if kind not in PROBE_KINDS:
        raise ValueError(f"kind must be one of {', '.join(PROBE_KINDS)}, got {kind!r}")
    manifest = Path(manifest)
    spec = find_container(find_deployment(manifest, deployment), container)
    probe = spec.get(kind)
    if probe is None:
        raise LookupError(f"{manifest}: container {container!r} has no {kind}")
    http_get = probe.get("httpGet")
    if http_get is None:
        raise ValueError(f"{manifest}: {container} {kind} is not an httpGet probe")
    # Fail on fields the emulator does not send, rather than probe differently.
    unsupported = set(http_get) - _HTTP_GET_FIELDS
    if unsupported or http_get.get("scheme", "HTTP") != "HTTP":
        raise ValueError(f"{manifest}: {container} {kind}: only path, port and scheme HTTP")
    return HttpProbe(
        kind=kind,
        container=container,
        path=http_get.get("path", "/"),
        port=_resolve_port(spec, http_get["port"]),
        period_seconds=probe.get("periodSeconds", DEFAULT_PERIOD),
        timeout_seconds=probe.get("timeoutSeconds", DEFAULT_TIMEOUT),
        failure_threshold=probe.get("failureThreshold", DEFAULT_FAILURE_THRESHOLD),
        success_threshold=probe.get("successThreshold", DEFAULT_SUCCESS_THRESHOLD),
        initial_delay_seconds=probe.get("initialDelaySeconds", DEFAULT_INITIAL_DELAY),
    )


class ProbeResult(NamedTuple):
    """One probe: when it finished, its outcome, the HTTP status if any, and what failed."""

    at: float
    success: bool
    status: int | None
    error: str | None
    duration: float


class Transition(NamedTuple):
    """A change of the container's probe state at a monotonic time.

    For a readiness probe, `ready` is the container's readiness. For a startup probe it means
    started, and for a liveness probe false means that the kubelet would restart the container.
    """

    at: float
    ready: bool


class ProbeWorker:
    """Probes one HTTP endpoint on a schedule and keeps state the way the kubelet's worker does.

    A result changes the state only after failure_threshold failures or success_threshold
    successes in a row. Readiness and startup start false, liveness true. A startup probe
    stops once it has succeeded. A liveness or startup probe that reaches its failure
    threshold stops too, and `restart_at` is the time the kubelet would restart the container.
    With `after`, probes wait until that (startup) worker is true, as the kubelet disables a
    container's other probes until its startupProbe has succeeded.
    """

    def __init__(
        self,
        probe: HttpProbe,
        port: int | None = None,
        host: str = "127.0.0.1",
        *,
        after: ProbeWorker | None = None,
    ) -> None:
        self.probe = probe
        self.url = f"http://{host}:{probe.port if port is None else port}{probe.path}"
        self.after = after
        self.ready = probe.kind == LIVENESS
        self.results: list[ProbeResult] = []
        self.transitions: list[Transition] = []
        self.started_at: float | None = None
        self.restart_at: float | None = None
        # The kubelet's counters: the last result and how many times in a row it came.
        self._last_result: bool | None = None
        self._result_run = 0
        self._changed = asyncio.Event()
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<ProbeWorker {self.probe.kind} {self.url} ready={self.ready}>"

    def start(self) -> None:
        """Start probing: the first probe at once (after any initial delay), then every period."""
        if self._task is not None:
            raise RuntimeError("worker already started")
        # A new connection for every probe, and no proxy from the environment.
        connector = aiohttp.TCPConnector(force_close=True)
        self._session = aiohttp.ClientSession(
            connector=connector, skip_auto_headers=("Accept-Encoding",)
        )
        self.started_at = time.monotonic()
        self._task = asyncio.create_task(self._run(), name=f"kubelet-{self.probe.kind}")

    async def stop(self) -> None:
        """Stop probing and close the client session; re-raise an error of the worker task."""
        task, self._task = self._task, None
        try:
            if task is not None:
                task.cancel()
                await asyncio.wait([task])
                if not task.cancelled():
                    task.result()
        finally:
            if self._session is not None:
                await self._session.close()
                self._session = None

    async def __aenter__(self) -> Self:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def failures(self) -> list[ProbeResult]:
        return [result for result in self.results if not result.success]

    async def wait_for(self, ready: bool, within: float) -> float:
        """Wait up to `within` seconds until the state is `ready`; return when it became so."""
        await self._wait_until(lambda: self.ready == ready, within, f"state {ready}")
        if self.transitions:
            return self.transitions[-1].at
        assert self.started_at is not None
        return self.started_at

    async def wait_for_results(self, count: int, within: float) -> list[ProbeResult]:
        """Wait up to `within` seconds until `count` probes have finished; return them all."""
        await self._wait_until(lambda: len(self.results) >= count, within, f"{count} results")
        return list(self.results)

    async def _wait_until(
        self, condition: Callable[[], bool], within: float, description: str
    ) -> None:
        async with asyncio.timeout(within):
            while not condition():
                if self._task is not None and self._task.done():
                    self._task.result()
                    raise AssertionError(f"{self!r} stopped before reaching {description}")
                self._changed.clear()
                await self._changed.wait()

    async def probe_once(self) -> ProbeResult:
        """Send one probe the way the kubelet does, without touching the counters."""
        if self._session is None:
            raise RuntimeError("start() the worker first")
        began = time.monotonic()
        status: int | None = None
        error: str | None = None
        try:
            # NOTE: the kubelet follows redirects to the same host. This worker judges the 3xx
            # itself, as the kubelet does for a redirect to another host.
            async with asyncio.timeout(self.probe.timeout_seconds):
                async with self._session.get(
                    self.url, headers=PROBE_HEADERS, allow_redirects=False
                ) as response:
                    status = response.status
                    await response.content.read(MAX_BODY)
        except TimeoutError:
            error = f"no answer within {self.probe.timeout_seconds:g} s"
        except (aiohttp.ClientError, OSError) as exc:
            error = f"{type(exc).__name__}: {exc}"
        if error is None and status is not None and not 200 <= status < 400:
            error = f"HTTP status {status}"
        finished = time.monotonic()
        return ProbeResult(finished, error is None, status, error, finished - began)

    def _wake(self) -> None:
        # Wakes the waiters after a result, a change of state, or the end of the task.
        self._changed.set()

    def _record(self, result: ProbeResult) -> bool:
        """Count a result like the kubelet; return False once this worker stops probing."""
        self.results.append(result)
        self._wake()
        if result.success == self._last_result:
            self._result_run += 1
        else:
            self._last_result = result.success
            self._result_run = 1
        threshold = self.probe.success_threshold if result.success else self.probe.failure_threshold
        if self._result_run < threshold:
            return True
        if result.success != self.ready:
            self.ready = result.success
            self.transitions.append(Transition(result.at, result.success))
        if self.probe.kind == STARTUP and result.success:
            return False
        if self.probe.kind in (LIVENESS, STARTUP) and not result.success:
            self.restart_at = result.at
            return False
        return True

    def _may_probe(self) -> bool:
        assert self.started_at is not None
        if time.monotonic() - self.started_at < self.probe.initial_delay_seconds:
            return False
        return self.after is None or self.after.ready

    async def _run(self) -> None:
        try:
            period = self.probe.period_seconds
            tick = time.monotonic()
            while True:
                if self._may_probe() and not self._record(await self.probe_once()):
                    return
                # Like a Go ticker: ticks fall on a fixed grid, a tick missed while a probe
                # ran fires at once, and any further missed ticks are dropped.
                now = time.monotonic()
                if tick + period <= now:
                    tick += math.floor((now - tick) / period) * period
                    continue
                tick += period
                await asyncio.sleep(tick - now)
        finally:
            self._wake()
