"""Logging setup: one line per event on stderr, as JSON or as text.

Both formats mask passwords in URLs (`user:password@`) as a last line of defence.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from aiohttp.http_exceptions import HttpProcessingError

from sidecar.redact import redact_url

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("auto", "json", "text")


def _extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


def _timestamp(record: logging.LogRecord) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{seconds}.{int(record.msecs):03d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, then the `extra=` fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(_extra_fields(record))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return redact_url(json.dumps(entry, default=str, ensure_ascii=False))


class TextFormatter(logging.Formatter):
    """`time LEVEL logger: message key=value ...`, with the level coloured on a terminal."""

    _COLOURS = {"WARNING": "\033[33m", "ERROR": "\033[31m", "CRITICAL": "\033[31m"}

    def __init__(self, colour: bool) -> None:
        super().__init__()
        self._colour = colour

    def format(self, record: logging.LogRecord) -> str:
        level = record.levelname
        if self._colour and level in self._COLOURS:
            level = f"{self._COLOURS[level]}{level}\033[0m"
        fields = " ".join(
            f"{k}={_quote(v)}" for k, v in _extra_fields(record).items() if v is not None
        )
        line = f"{_timestamp(record)} {level} {record.name}: {record.getMessage()}"
        if fields:
            line += f" {fields}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return redact_url(line)


def _quote(value: Any) -> str:
    text = ", ".join(map(str, value)) if isinstance(value, list | tuple) else str(value)
    return json.dumps(text) if not text or any(c in text for c in ' "=\n') else text


def setup(log_format: str = "auto", level: str = "info") -> None:
    """Send the `sidecar` loggers to stderr; `auto` picks text on a terminal, JSON otherwise."""
    is_terminal = sys.stderr.isatty()
    if log_format == "auto":
        log_format = "text" if is_terminal else "json"
    handler = logging.StreamHandler(sys.stderr)
    formatter: logging.Formatter
    formatter = JsonFormatter() if log_format == "json" else TextFormatter(colour=is_terminal)
    handler.setFormatter(formatter)

    root = logging.getLogger("sidecar")
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    root.propagate = False
    # aiohttp logs a traceback per malformed request at ERROR on its own loggers; keep them
    # on the same handler so every line has one format.
    for name in ("aiohttp.server", "aiohttp.web", "asyncio"):
        library = logging.getLogger(name)
        library.handlers = [handler]
        library.setLevel(logging.WARNING)
        library.propagate = False
    server_logger = logging.getLogger("aiohttp.server")
    for old_filter in list(server_logger.filters):
        if isinstance(old_filter, _MalformedRequestFilter):
            server_logger.removeFilter(old_filter)
    server_logger.addFilter(_MalformedRequestFilter())


class _MalformedRequestFilter(logging.Filter):
    """Turns aiohttp's traceback for a request it rejected as malformed into one short line,
    at most once every MALFORMED_LOG_INTERVAL seconds, with the number of others since.

    The client already got a 400 that names the problem; a traceback per bad request would
    let any scanner flood the log.
    """

    def __init__(self) -> None:
        super().__init__()
        self._last_logged: float | None = None
        self._suppressed = 0

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if not isinstance(error, HttpProcessingError):
            return True
        now = time.monotonic()
        if self._last_logged is not None and now - self._last_logged < MALFORMED_LOG_INTERVAL:
            self._suppressed += 1
            return False
        record.msg = "rejected a malformed HTTP request: %s"
        record.args = (_one_line(str(error))[:200],)
        record.exc_info = None
        record.exc_text = None
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.__dict__["repeated"] = self._suppressed
        self._last_logged, self._suppressed = now, 0
        return True


# Seconds between two log lines about malformed requests.
MALFORMED_LOG_INTERVAL = 60.0


def _one_line(text: str) -> str:
    return " ".join(text.split())
