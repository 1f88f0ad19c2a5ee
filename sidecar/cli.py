"""Command line: flags and their SIDECAR_* environment fallbacks, then the commands.

Exit statuses: 0 success, 1 a check failed (check), a timeout (wait) or the server could not
run (serve), 2 invalid config or usage, 128 + N after signal N (wait).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import signal
import sys
from collections.abc import Sequence

from aiohttp import web

from sidecar import __version__, log
from sidecar import wait as wait_module
from sidecar.app import RELOADER, SERVER_STATE, create_app, open_checks
from sidecar.checks.base import format_duration
from sidecar.config import Config, ConfigError, load
from sidecar.metrics import Metrics

logger = logging.getLogger(__name__)

DEFAULT_CONFIG = "/etc/readiness-sidecar/config.yaml"
EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2
# Seconds that in-flight requests get to finish once the listener closes.
SHUTDOWN_TIMEOUT = 2.0


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(name) or default


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-c",
        "--config",
        default=_env("SIDECAR_CONFIG", DEFAULT_CONFIG),
        help=f"path of the YAML config file (env SIDECAR_CONFIG; default {DEFAULT_CONFIG})",
    )
    common.add_argument(
        "--log-format",
        choices=log.FORMATS,
        default=_env("SIDECAR_LOG_FORMAT", "auto"),
        help="log line format on stderr; auto is text on a terminal and JSON otherwise "
        "(env SIDECAR_LOG_FORMAT; default auto)",
    )
    common.add_argument(
        "--log-level",
        choices=log.LEVELS,
        default=_env("SIDECAR_LOG_LEVEL", "info"),
        help="lowest level logged; debug logs every probe (env SIDECAR_LOG_LEVEL; default info)",
    )

    parser = argparse.ArgumentParser(
        prog="readiness-sidecar",
        description="Probe a Pod's dependencies and serve their health to the kubelet.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="subcommand", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        parents=[common],
        help="probe in the background and serve /ready, /live, /started and /metrics",
        description="Probe every check on its interval and serve the results over HTTP until "
        "SIGTERM or SIGINT. On SIGTERM /ready answers 503 at once, the server keeps "
        "answering for server.drain_delay seconds, then exits 0.",
    )
    serve.add_argument(
        "--host",
        default=_env("SIDECAR_HOST"),
        help="listen address; overrides server.host (env SIDECAR_HOST; default 0.0.0.0)",
    )
    serve.add_argument(
        "--port",
        type=int,
        default=_env("SIDECAR_PORT"),
        help="listen port; overrides server.port (env SIDECAR_PORT; default 8558)",
    )
    commands.add_parser(
        "check",
        parents=[common],
        help="probe every check once and print a table; exit 1 if a critical check fails",
        description="Probe every check once, concurrently, each within its timeout, and print "
        "one row per check. Exit 0 when every critical check passed, 1 otherwise.",
    )
    wait = commands.add_parser(
        "wait",
        parents=[common],
        help="probe until the checks are healthy, for an init container; exit 1 on timeout",
        description="Probe the selected checks in parallel until each is healthy "
        "(success_threshold successes in a row) or --timeout passes. Retries start after "
        f"{wait_module.FIRST_DELAY * 1000:.0f} ms and back off to the smaller of the check's "
        "interval and --max-delay. Exit 0 when ready, 1 on timeout, 2 on an invalid config, "
        "143 on SIGTERM. With -- COMMAND ARGS, the command replaces this process once ready.",
    )
    wait.add_argument(
        "--check",
        action="append",
        default=[],
        metavar="NAME",
        help="wait for this check only; repeat for several (default: every check)",
    )
    wait.add_argument(
        "--timeout",
        type=_seconds,
        metavar="SECONDS",
        default=_env("SIDECAR_WAIT_TIMEOUT", "300"),
        help="seconds to wait in all before exiting 1 (env SIDECAR_WAIT_TIMEOUT; default 300)",
    )
    wait.add_argument(
        "--max-delay",
        type=_seconds,
        metavar="SECONDS",
        default=_env("SIDECAR_WAIT_MAX_DELAY", str(wait_module.DEFAULT_MAX_DELAY)),
        help="longest pause in seconds between two probes of a check, which bounds how late "
        "a dependency that comes up is noticed (env SIDECAR_WAIT_MAX_DELAY; "
        f"default {wait_module.DEFAULT_MAX_DELAY})",
    )
    wait.add_argument(
        "exec_command",
        nargs=argparse.REMAINDER,
        metavar="-- COMMAND ARGS",
        help="a command to run in place of this process once every check is healthy",
    )
    commands.add_parser(
        "validate",
        parents=[common],
        help="read and validate the config; exit 2 listing every problem",
        description="Read and validate the config file without probing anything.",
    )
    return parser


def _seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, got {text!r}") from None
    if not seconds > 0 or seconds == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}")
    return seconds


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    log.setup(args.log_format, args.log_level)

    try:
        config = load(args.config)
    except ConfigError as exc:
        _print_config_error(args.config, exc)
        return EXIT_CONFIG

    if args.subcommand == "validate":
        print(f"{args.config}: valid, {len(config.checks)} check(s)")
        for check in config.checks:
            critical = "critical" if check.critical else "not critical"
            print(f"  {check.name}: {check.kind} {check.target()} ({critical})")
        return EXIT_OK
    if args.subcommand == "check":
        return asyncio.run(_check(config))
    if args.subcommand == "wait":
        return _wait(config, args)
    return _serve(config, args)


def _print_config_error(path: str, exc: ConfigError) -> None:
    count = len(exc.problems)
    plural = "problem" if count == 1 else "problems"
    print(f"readiness-sidecar: invalid config {path}: {count} {plural}", file=sys.stderr)
    for problem in exc.problems:
        print(f"  {problem}", file=sys.stderr)


async def _check(config: Config) -> int:
    async with open_checks(config, Metrics()) as scheduler:
        results = await scheduler.run_once()

    rows = [("CHECK", "TYPE", "CRITICAL", "RESULT", "REASON", "TIME", "DETAIL")]
    failed_critical = False
    for check in config.checks:
        result = results[check.name]
        if not result.ok and check.critical:
            failed_critical = True
        rows.append(
            (
                check.name,
                check.kind,
                "yes" if check.critical else "no",
                "ok" if result.ok else "FAILED",
                str(result.reason or ""),
                format_duration(result.duration_seconds),
                result.detail,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        print("  ".join([*cells, row[-1]]).rstrip())
    return EXIT_FAILED if failed_critical else EXIT_OK


def _wait(config: Config, args: argparse.Namespace) -> int:
    try:
        config = wait_module.select_checks(config, args.check)
    except ValueError as exc:
        print(f"readiness-sidecar: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    command = list(args.exec_command)
    if command[:1] == ["--"]:
        command = command[1:]

    status = asyncio.run(_run_wait(config, args.timeout, args.max_delay))
    if status != EXIT_OK or not command:
        return status
    sys.stdout.flush()
    try:
        os.execvp(command[0], command)
    except OSError as exc:
        print(f"readiness-sidecar: cannot run {command[0]!r}: {exc.strerror}", file=sys.stderr)
        return 127 if isinstance(exc, FileNotFoundError) else 126
    return EXIT_FAILED  # not reached: execvp replaces the process


async def _run_wait(config: Config, wait_seconds: float, max_delay: float) -> int:
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    received: list[signal.Signals] = []

    def on_signal(signum: signal.Signals) -> None:
        received.append(signum)
        task.cancel()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)

    def output(line: str) -> None:
        print(line, flush=True)

    names = ", ".join(check.name for check in config.checks)
    output(f"waiting up to {wait_seconds:g} s for {names}")
    try:
        result = await wait_module.wait_for_checks(
            config, wait_seconds=wait_seconds, max_delay=max_delay, output=output
        )
    except asyncio.CancelledError:
        if not received:
            raise
        output(f"stopped by {received[0].name} before the checks were ready")
        return 128 + received[0].value

    if result.ready:
        output(f"all {len(config.checks)} check(s) ready after {result.elapsed_seconds:.2f} s")
        return EXIT_OK
    output(f"timed out after {result.elapsed_seconds:.1f} s; not ready:")
    for line in result.failing:
        output(f"  {line}")
    return EXIT_FAILED


def _serve(config: Config, args: argparse.Namespace) -> int:
    server = config.server
    if args.host:
        server = dataclasses.replace(server, host=args.host)
    if args.port is not None:
        server = dataclasses.replace(server, port=args.port)
    config = dataclasses.replace(config, server=server)
    return asyncio.run(_run_server(config))


async def _run_server(config: Config) -> int:
    server = config.server
    app = create_app(config)
    # No access log: the kubelet probes every few seconds and would fill the log.
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT)
    await runner.setup()
    site = web.TCPSite(runner, server.host, server.port)
    try:
        await site.start()
    except OSError as exc:
        logger.error(
            "cannot listen on %s:%s: %s; choose another server.port or --port",
            server.host,
            server.port,
            exc.strerror or exc,
        )
        await runner.cleanup()
        return EXIT_FAILED

    logger.info(
        "serving",
        extra={
            "version": __version__,
            "host": server.host,
            "port": server.port,
            "config": config.source,
            "checks": [f"{c.name} ({c.kind} {c.target()})" for c in config.checks],
        },
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals_seen: list[str] = []

    def on_signal(signum: signal.Signals) -> None:
        signals_seen.append(signum.name)
        if len(signals_seen) > 1:
            logger.warning("second signal; exiting now", extra={"signal": signum.name})
            os._exit(EXIT_FAILED)
        app[SERVER_STATE].shutting_down = True
        logger.info(
            "shutting down: /ready answers 503 from now on",
            extra={"signal": signum.name, "drain_delay_seconds": server.drain_delay},
        )
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    reloader = app[RELOADER]
    if reloader.can_reload():
        loop.add_signal_handler(signal.SIGHUP, reloader.request)

    await stop.wait()
    # Keep answering during the drain delay, so the kubelet sees /ready fail and the
    # endpoints controller removes the Pod before the listener closes.
    await asyncio.sleep(server.drain_delay)
    await runner.cleanup()
    logger.info("stopped")
    return EXIT_OK
