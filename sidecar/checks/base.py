"""The check interface, probe results, failure reasons and the timed probe runner."""

from __future__ import annotations

import abc
import asyncio
import enum
import errno
import logging
import ssl
import time
import traceback
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import aiodns
import aiohttp

from sidecar.config import CheckConfig
from sidecar.redact import Secret, redact

logger = logging.getLogger(__name__)


class Reason(enum.StrEnum):
    """Failure reason of a probe. A closed set, because it is a metric label value."""

    REFUSED = "refused"
    CONNECT_TIMEOUT = "connect_timeout"
    TIMEOUT = "timeout"
    CONNECTION_LOST = "connection_lost"
    UNREACHABLE = "unreachable"
    DNS_NXDOMAIN = "dns_nxdomain"
    DNS_NO_ANSWER = "dns_no_answer"
    DNS_SERVFAIL = "dns_servfail"
    DNS_TIMEOUT = "dns_timeout"
    TLS = "tls"
    AUTH = "auth"
    UNKNOWN_DATABASE = "unknown_database"
    HTTP_STATUS = "http_status"
    BODY_MISMATCH = "body_mismatch"
    QUERY_FAILED = "query_failed"
    PROTOCOL = "protocol"
    ERROR = "error"


class ProbeError(Exception):
    """Raised inside a probe to fail it with a reason and a human-readable detail."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class CheckResult:
    """The result of one probe. `detail` is redacted and safe to show."""

    ok: bool
    reason: Reason | None
    detail: str
    duration_seconds: float


@dataclass(frozen=True, slots=True)
class Resources:
    """Clients shared by all checks of a process, created and closed by the app."""

    resolver: aiodns.DNSResolver
    http: aiohttp.ClientSession


ConfigT = TypeVar("ConfigT", bound=CheckConfig)


class Check(abc.ABC, Generic[ConfigT]):
    """One configured dependency check.

    Subclasses implement `probe()`. It returns a short detail on success and raises
    ProbeError (or a library exception that `translate()` maps) on failure. The runner
    enforces the timeout by cancelling `probe()`, so a probe needs no timeout of its own.
    """

    def __init__(self, config: ConfigT, resources: Resources) -> None:
        self.config = config
        self.resources = resources
        # The step the probe is in, named in timeout messages: "connect", "request", ...
        self.phase = "connect"

    @property
    def name(self) -> str:
        return self.config.name

    @abc.abstractmethod
    async def probe(self) -> str:
        """Probe the dependency once; return a detail such as `HTTP 200`."""

    def timeout_reason(self) -> Reason:
        """Return the reason for a probe cancelled by its timeout in the current phase."""
        return Reason.CONNECT_TIMEOUT if self.phase == "connect" else Reason.TIMEOUT

    def translate(self, exc: Exception) -> tuple[Reason, str] | None:
        """Map a library exception to a reason and detail; None leaves it to the defaults."""
        return None

    def secrets(self) -> tuple[Secret | None, ...]:
        """Secrets that must be masked in any detail this check produces."""
        return ()

    async def close(self) -> None:
        """Release connections the check keeps between probes."""


async def run_probe(check: Check[Any]) -> CheckResult:
    """Run one probe under the check's timeout; never raises except CancelledError."""
    timeout = check.config.timeout
    check.phase = "connect"
    started = time.monotonic()
    try:
        async with asyncio.timeout(timeout) as deadline:
            detail = await check.probe()
    except TimeoutError as exc:
        duration = time.monotonic() - started
        if deadline.expired():
            reason = check.timeout_reason()
            message = f"no answer within {_format_duration(timeout)} ({check.phase})"
        else:
            reason, message = _translate(check, exc)
        return _failure(check, reason, message, duration)
    except ProbeError as exc:
        return _failure(check, exc.reason, exc.detail, time.monotonic() - started)
    except Exception as exc:
        reason, message = _translate(check, exc)
        return _failure(check, reason, message, time.monotonic() - started)

    return CheckResult(
        ok=True,
        reason=None,
        detail=redact(detail, check.secrets()),
        duration_seconds=time.monotonic() - started,
    )


def _failure(check: Check[Any], reason: Reason, detail: str, duration: float) -> CheckResult:
    return CheckResult(
        ok=False,
        reason=reason,
        detail=redact(detail, check.secrets()),
        duration_seconds=duration,
    )


def _translate(check: Check[Any], exc: Exception) -> tuple[Reason, str]:
    specific = check.translate(exc)
    if specific is not None:
        return specific
    general = translate_os_error(exc, check.phase)
    if general is not None:
        return general
    # An exception no translation expected is a gap in this package, so it is logged with
    # its traceback, once per check and exception type every UNEXPECTED_LOG_INTERVAL seconds.
    # The traceback is redacted first: driver messages may quote credentials.
    key = (check.name, type(exc).__name__)
    now = time.monotonic()
    last_at, repeated = _unexpected_logged.get(key, (None, 0))
    if last_at is not None and now - last_at < UNEXPECTED_LOG_INTERVAL:
        _unexpected_logged[key] = (last_at, repeated + 1)
    else:
        _unexpected_logged[key] = (now, 0)
        trace = "".join(traceback.format_exception(exc))
        logger.error(
            "probe raised an unexpected exception",
            extra={
                "check": check.name,
                "repeated": repeated,
                "traceback": redact(trace, check.secrets()),
            },
        )
    return Reason.ERROR, f"{type(exc).__name__}: {exc}"


# Seconds between two tracebacks of the same unexpected exception type for one check.
UNEXPECTED_LOG_INTERVAL = 300.0
# (check, exception type) -> (monotonic time last logged, occurrences not logged since).
_unexpected_logged: dict[tuple[str, str], tuple[float, int]] = {}


_REFUSED = {errno.ECONNREFUSED}
_UNREACHABLE = {errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EADDRNOTAVAIL, errno.ENETDOWN}
_LOST = {errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED}


def translate_os_error(exc: BaseException, phase: str) -> tuple[Reason, str] | None:
    """Map socket, TLS and timeout errors shared by every kind; None for anything else."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return Reason.TLS, f"TLS certificate verification failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return Reason.TLS, f"TLS handshake failed: {exc.reason or exc}"
    if isinstance(exc, ConnectionRefusedError) or getattr(exc, "errno", None) in _REFUSED:
        return Reason.REFUSED, "connection refused"
    if isinstance(exc, ConnectionResetError | BrokenPipeError | ConnectionAbortedError):
        return Reason.CONNECTION_LOST, f"connection lost during {phase}: {exc.strerror or exc}"
    error_number = getattr(exc, "errno", None)
    if error_number in _LOST:
        return Reason.CONNECTION_LOST, f"connection lost during {phase}: {exc}"
    if error_number in _UNREACHABLE:
        return Reason.UNREACHABLE, f"{getattr(exc, 'strerror', None) or exc}"
    if isinstance(exc, TimeoutError):
        reason = Reason.CONNECT_TIMEOUT if phase == "connect" else Reason.TIMEOUT
        return reason, f"timed out during {phase}"
    return None


def format_duration(seconds: float) -> str:
    """Format seconds for people: `850 us`, `12 ms`, `1.5 s`."""
    return _format_duration(seconds)


def _format_duration(seconds: float) -> str:
    if seconds < 0.001:
        return f"{seconds * 1e6:.0f} us"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    return f"{seconds:.3g} s"
