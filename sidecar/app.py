"""The aiohttp application: health endpoints, metrics, and the wiring of clients and probes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from sidecar import __version__
from sidecar.checks import Check, Resources, create_check
from sidecar.checks.http import create_session
from sidecar.checks.resolve import close_resolver, make_resolver
from sidecar.config import CheckConfig, Config
from sidecar.liveness import LoopMonitor, find_problems
from sidecar.metrics import Metrics
from sidecar.reload import ConfigReloader
from sidecar.report import check_json, iso_time, text_body
from sidecar.scheduler import Scheduler

logger = logging.getLogger(__name__)

# Timeout of the shared resolver used by tcp, http and mysql checks for their host names.
# Each probe's own timeout still applies; this only ends abandoned c-ares queries.
SHARED_RESOLVER_TIMEOUT = 5.0


@dataclass(slots=True)
class ServerState:
    """Server-wide state the endpoints read besides the checks: whether the sidecar is stopping."""

    shutting_down: bool = False
    started_at: float = field(default_factory=time.time)


CONFIG = web.AppKey("config", Config)
METRICS = web.AppKey("metrics", Metrics)
SCHEDULER = web.AppKey("scheduler", Scheduler)
SERVER_STATE = web.AppKey("server_state", ServerState)
RELOADER = web.AppKey("reloader", ConfigReloader)
LOOP_MONITOR = web.AppKey("loop_monitor", LoopMonitor)


def create_app(config: Config, metrics: Metrics | None = None) -> web.Application:
    """Build the application; probes start with the app and stop at its cleanup."""
    app = web.Application()
    app[CONFIG] = config
    app[METRICS] = metrics or Metrics()
    app[SERVER_STATE] = ServerState()
    app.cleanup_ctx.append(_probing)
    app.on_response_prepare.append(_add_headers)

    for prefix in ("ready", "readyz"):
        app.router.add_get(f"/{prefix}", _ready)
        app.router.add_get(f"/{prefix}/{{check}}", _ready_one)
    for path in ("/started", "/startupz"):
        app.router.add_get(path, _started)
    for path in ("/live", "/livez"):
        app.router.add_get(path, _live)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/", _index)
    return app


@contextlib.asynccontextmanager
async def open_checks(config: Config, metrics: Metrics) -> AsyncIterator[Scheduler]:
    """Create the shared clients, the checks and their scheduler; close all of it on exit.

    The scheduler is not started: `serve` starts it, `check` runs one round instead.
    """
    resolver = make_resolver(timeout=SHARED_RESOLVER_TIMEOUT)
    session = create_session(resolver)
    resources = Resources(resolver=resolver, http=session)
    try:
        checks = [create_check(check, resources) for check in config.checks]

        def build(check: CheckConfig) -> Check[Any]:
            return create_check(check, resources)

        scheduler = Scheduler(checks, metrics, factory=build)
        try:
            yield scheduler
        finally:
            await scheduler.stop()
    finally:
        await session.close()
        await close_resolver(resolver)


async def _probing(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    async with open_checks(config, app[METRICS]) as scheduler:
        app[SCHEDULER] = scheduler
        scheduler.start()
        reloader = ConfigReloader(config, scheduler, app[METRICS])
        app[RELOADER] = reloader
        monitor = LoopMonitor(scheduler)
        app[LOOP_MONITOR] = monitor
        monitor.start()
        task = None
        if reloader.can_reload():
            task = asyncio.create_task(reloader.run(), name="config-reload")
        try:
            yield
        finally:
            await monitor.stop()
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)


async def _add_headers(request: web.Request, response: web.StreamResponse) -> None:
    # Also on 404 and 405 answers, which aiohttp builds itself.
    response.headers.update(_HEADERS)


# ---------------------------------------------------------------------------------------------
# Request parsing


class _Query:
    """The query parameters every health endpoint accepts."""

    def __init__(self, request: web.Request, known_checks: Sequence[str]) -> None:
        query = request.query
        unknown = sorted(set(query) - {"verbose", "exclude", "format"})
        if unknown:
            raise _bad_request(
                f"unknown query parameter {unknown[0][:64]!r}; use verbose, exclude or format"
            )
        fmt = query.get("format", "")
        if fmt not in ("", "json", "text"):
            raise _bad_request(f"unsupported format {fmt[:64]!r}; use format=json or format=text")
        accepts_json = "application/json" in request.headers.get("Accept", "")
        self.json = fmt == "json" or (fmt == "" and accepts_json)
        self.verbose = "verbose" in query
        excluded = query.getall("exclude", [])
        self.excluded = [name for name in excluded if name in known_checks]
        self.unknown_excluded = [name for name in excluded if name not in known_checks]


def _bad_request(message: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=message + "\n", headers=_HEADERS)


_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


def _text(body: str, status: int) -> web.Response:
    return web.Response(text=body, status=status, content_type="text/plain", headers=_HEADERS)


def _json(document: dict[str, Any], status: int) -> web.Response:
    return web.Response(
        text=json.dumps(document, indent=2) + "\n",
        status=status,
        content_type="application/json",
        headers=_HEADERS,
    )


# ---------------------------------------------------------------------------------------------
# Handlers. Every answer is built from the cached states: none waits on a probe.


def _verdict_response(
    request: web.Request,
    verdict_name: str,
    decide: Callable[[Scheduler, Sequence[str]], bool],
) -> web.Response:
    scheduler = request.app[SCHEDULER]
    states = list(scheduler.states.values())
    query = _Query(request, [s.name for s in states])
    shutting_down = request.app[SERVER_STATE].shutting_down and verdict_name == "ready"

    passed = decide(scheduler, query.excluded) and not shutting_down
    reason = "shutting_down" if shutting_down else None
    status = 200 if passed else 503
    if query.json:
        document = {
            "status": "pass" if passed else "fail",
            verdict_name: passed,
            "reason": reason,
            "checks": {
                s.name: check_json(s, scheduler.checks[s.name].config.target())
                for s in states
                if s.name not in query.excluded
            },
        }
        return _json(document, status)
    if passed and not query.verbose:
        return _text("ok\n", status)
    now = time.time()
    body = text_body(
        verdict_name, passed, states, query.excluded, query.unknown_excluded, now, reason
    )
    return _text(body, status)


async def _ready(request: web.Request) -> web.Response:
    # The kubelet's request: no query, success. Answer from the cached verdict without
    # looking at each check.
    if (
        not request.query_string
        and request.app[SCHEDULER].ready
        and not request.app[SERVER_STATE].shutting_down
        and "application/json" not in request.headers.get("Accept", "")
    ):
        return _text("ok\n", 200)
    return _verdict_response(request, "ready", Scheduler.is_ready)


async def _started(request: web.Request) -> web.Response:
    return _verdict_response(request, "started", Scheduler.has_started)


async def _ready_one(request: web.Request) -> web.Response:
    scheduler = request.app[SCHEDULER]
    name = request.match_info["check"]
    state = scheduler.states.get(name)
    if state is None:
        known = ", ".join(scheduler.states) or "none"
        return _text(f"unknown check {name[:64]!r}; configured checks: {known}\n", 404)
    query = _Query(request, [name])
    status = 200 if state.is_healthy else 503
    if query.json:
        return _json(check_json(state, scheduler.checks[name].config.target()), status)
    if state.is_healthy and not query.verbose:
        return _text("ok\n", status)
    return _text(text_body("ready", state.is_healthy, [state], (), (), time.time()), status)


async def _live(request: web.Request) -> web.Response:
    # The sidecar's own health only: a responsive loop and probes that run on schedule.
    # Dependencies never affect this answer.
    problems = find_problems(request.app[SCHEDULER], request.app[LOOP_MONITOR])
    query = _Query(request, [])
    status = 500 if problems else 200
    if query.json:
        document: dict[str, Any] = {
            "status": "fail" if problems else "pass",
            "live": not problems,
            "problems": problems,
        }
        return _json(document, status)
    if not problems and not query.verbose:
        return _text("ok\n", status)
    lines = [f"[-]{problem}" for problem in problems] or ["[+]event-loop ok", "[+]probes ok"]
    lines.append("live check " + ("failed" if problems else "passed"))
    return _text("\n".join(lines) + "\n", status)


async def _metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[METRICS].registry)
    response = web.Response(body=body, headers=_HEADERS)
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response


async def _index(request: web.Request) -> web.Response:
    started = iso_time(request.app[SERVER_STATE].started_at)
    lines = [
        f"readiness-sidecar {__version__}, running since {started}",
        "/ready     200 when every critical check is healthy",
        "           (?verbose, ?format=json, ?exclude=NAME)",
        "/ready/NAME  one check",
        "/started   200 once every critical check has been healthy",
        "/live      the sidecar's own health; dependencies never affect it",
        "/metrics   Prometheus metrics",
    ]
    return _text("\n".join(lines) + "\n", 200)
