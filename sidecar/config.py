"""Read the YAML config file, validate it and return frozen config objects.

`load(path)` raises ConfigError listing every problem, each named by its place in the file,
for example `checks[2].port: must be 1-65535, got 0`. A file is accepted or rejected whole.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml
from yarl import URL

from sidecar.redact import Secret, redact_url

DEFAULT_PORT = 8558
DNS_RECORD_TYPES = ("A", "AAAA", "CNAME", "MX", "NS", "PTR", "SOA", "SRV", "TXT", "CAA", "NAPTR")
HTTP_METHODS = ("GET", "HEAD")
# Check names appear in URL paths, metric labels and log lines, so they are kept to a safe set.
_NAME = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$")
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_VARIABLE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_HOSTNAME_LABEL = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)$")


class SidecarError(Exception):
    """Base class of the errors this package raises."""


class ConfigError(SidecarError):
    """The config is invalid. `problems` has one line per problem, each naming its path."""

    def __init__(self, problems: list[str], source: str = "") -> None:
        self.problems = problems
        self.source = source
        super().__init__("\n".join(problems))


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Listen address and shutdown timing of the HTTP server."""

    host: str = "0.0.0.0"
    port: int = DEFAULT_PORT
    # Seconds between SIGTERM and closing the listener, while /ready already answers 503.
    drain_delay: float = 5.0
    # Seconds between checks of the config and secret files for changes; 0 turns it off.
    watch_interval: float = 1.0


@dataclass(frozen=True, slots=True)
class CheckConfig:
    """Fields common to every check kind. Durations are seconds."""

    kind: ClassVar[str] = ""

    name: str
    interval: float
    timeout: float
    failure_threshold: int
    success_threshold: int
    critical: bool
    # Seconds before the first probe.
    initial_delay: float
    # Interval while the check is not healthy, to see a recovery sooner.
    interval_unhealthy: float

    def target(self) -> str:
        """Describe what the check probes, without secrets, for logs and answers."""
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class TcpCheckConfig(CheckConfig):
    kind: ClassVar[str] = "tcp"

    host: str
    port: int

    def target(self) -> str:
        return _join_host_port(self.host, self.port)


@dataclass(frozen=True, slots=True)
class DnsCheckConfig(CheckConfig):
    kind: ClassVar[str] = "dns"

    host: str
    # None resolves like the application would (hosts file, search domains, ndots);
    # a record type sends that query as written.
    record: str | None
    nameservers: tuple[str, ...]
    min_answers: int
    resolv_conf: str

    def target(self) -> str:
        return f"{self.host} {self.record}" if self.record else self.host


@dataclass(frozen=True, slots=True)
class HttpCheckConfig(CheckConfig):
    kind: ClassVar[str] = "http"

    # Not in repr: a URL may carry a password.
    url: str = field(repr=False)
    method: str
    # Status codes that count as success.
    expect_status: frozenset[int]
    expect_body: str | None
    headers: tuple[tuple[str, str], ...]
    bearer_token: Secret | None
    follow_redirects: bool
    ca_file: str | None
    server_name: str | None
    insecure: bool

    def target(self) -> str:
        from sidecar.redact import redact_url

        return redact_url(self.url)


@dataclass(frozen=True, slots=True)
class MysqlCheckConfig(CheckConfig):
    kind: ClassVar[str] = "mysql"

    host: str | None
    port: int
    unix_socket: str | None
    user: str
    password: Secret | None = field(repr=False)
    database: str | None
    query: str | None
    tls: bool
    ca_file: str | None
    insecure: bool

    def target(self) -> str:
        if self.unix_socket:
            return f"unix:{self.unix_socket}"
        assert self.host is not None
        return _join_host_port(self.host, self.port)


@dataclass(frozen=True, slots=True)
class Config:
    """A validated config file."""

    server: ServerConfig
    checks: tuple[CheckConfig, ...]
    source: str = ""

    def files(self) -> tuple[str, ...]:
        """The config file and every file it names (secrets, CA bundles), for watching."""
        paths = [self.source] if self.source else []
        for check in self.checks:
            for value in (getattr(check, name, None) for name in _FILE_FIELDS):
                if isinstance(value, Secret) and value.path:
                    paths.append(value.path)
                elif isinstance(value, str):
                    paths.append(value)
        return tuple(dict.fromkeys(paths))


# Check fields that name files, or secrets that may come from files.
_FILE_FIELDS = ("password", "bearer_token", "ca_file")


def _join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# ---------------------------------------------------------------------------------------------
# Reading the file


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe YAML loader that rejects a key repeated in one mapping."""


def _construct_unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: list[Any] = []
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if not isinstance(key, str | int | float | bool | None):
            raise yaml.constructor.ConstructorError(
                None, None, f"a {type(key).__name__} cannot be a mapping key", key_node.start_mark
            )
        if key in seen:
            mark = key_node.start_mark
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (line {mark.line + 1})", mark
            )
        seen.append(key)
    return loader.construct_mapping(node)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_unique_mapping,
)


class _Interpolated(str):
    """A string produced by `${VAR}` substitution; numeric and boolean fields accept it."""

    __slots__ = ()


def load(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> Config:
    """Read, interpolate and validate the config file at `path`.

    Raises ConfigError when the file cannot be read, is not YAML, or has any invalid value.
    """
    source = os.fspath(path)
    try:
        text = Path(source).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{source}: cannot read config file: {exc.strerror}"], source) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{source}: config file is not UTF-8 text"], source) from exc
    return parse(text, source, os.environ if environ is None else environ)


def parse(text: str, source: str = "<config>", environ: Mapping[str, str] | None = None) -> Config:
    """Validate config text. Raises ConfigError listing every problem."""
    try:
        document = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError([f"{source}: invalid YAML: {_describe_yaml_error(exc)}"], source) from exc
    except ValueError as exc:
        # PyYAML raises it for an integer of more than 4,300 digits.
        raise ConfigError([f"{source}: invalid YAML: {_one_line(str(exc))}"], source) from exc
    except RecursionError as exc:
        raise ConfigError([f"{source}: invalid YAML: nested too deeply"], source) from exc

    problems = _Problems()
    environ = os.environ if environ is None else environ
    if isinstance(document, dict):
        # Any other root is rejected below; its path would have no name to start with.
        document = _interpolate(document, environ, "", problems, {})
    config = _validate_document(document, source, problems, environ)
    if problems.lines or config is None:
        raise ConfigError(problems.lines or [f"{source}: config is empty"], source)
    return config


def _describe_yaml_error(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    if mark is None:
        return _one_line(str(problem))
    return f"{_one_line(str(problem))} at line {mark.line + 1}, column {mark.column + 1}"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _interpolate(
    value: Any, environ: Mapping[str, str], path: str, problems: _Problems, done: dict[int, Any]
) -> Any:
    """Substitute `${VAR}` and `${VAR:-default}` in every string; `$$` is a literal `$`.

    `done` maps the id of each list and mapping already handled to its result, so a YAML
    alias is substituted once and shared, and an alias that contains itself ends.
    """
    if isinstance(value, dict | list) and id(value) in done:
        return done[id(value)]
    if isinstance(value, dict):
        mapping: dict[Any, Any] = {}
        done[id(value)] = mapping
        for k, v in value.items():
            mapping[k] = _interpolate(v, environ, _child(path, k), problems, done)
        return mapping
    if isinstance(value, list):
        items: list[Any] = []
        done[id(value)] = items
        for i, v in enumerate(value):
            items.append(_interpolate(v, environ, f"{path}[{i}]", problems, done))
        return items
    if not isinstance(value, str) or "$" not in value:
        return value

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, default = match.group(1), match.group(2)
        if name in environ and (environ[name] or default is None):
            return environ[name]
        if default is not None:
            return default
        problems.add(
            path, f"environment variable {name} is not set; set it or write ${{{name}:-default}}"
        )
        problems.unsubstituted.add(path)
        return ""

    return _Interpolated(_VARIABLE.sub(substitute, value))


def _child(path: str, key: Any) -> str:
    name = str(key)
    if not name.isprintable() or not name or name != name.strip():
        # Quoted, so a line break cannot split the problem and an empty key still shows.
        name = repr(name)
    return f"{path}.{name}" if path else name


class _Problems:
    def __init__(self) -> None:
        self.lines: list[str] = []
        # Paths whose `${VAR}` could not be substituted; their value is a stand-in, so
        # later complaints about it would only repeat the first problem.
        self.unsubstituted: set[str] = set()

    def add(self, path: str, message: str) -> None:
        if path in self.unsubstituted:
            return
        self.lines.append(f"{path}: {message}")


# ---------------------------------------------------------------------------------------------
# Value parsers. Each returns the parsed value or raises _Invalid with a message.


class _Invalid(Exception):
    """A value is invalid. `subpath` names the item inside it, e.g. `[2]`."""

    def __init__(self, message: str, subpath: str = "") -> None:
        super().__init__(message)
        self.subpath = subpath


def parse_duration(value: Any) -> float:
    """Parse seconds from a number or a string such as `250ms`, `5s`, `1m30s` or `1.5`."""
    seconds: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        parts = _DURATION_PART.findall(text)
        if re.fullmatch(r"[0-9]+(\.[0-9]+)?", text):
            seconds = float(text)
        elif parts and "".join(n + u for n, u in parts) == text:
            seconds = sum(float(n) * _DURATION_UNITS[u] for n, u in parts)
    if seconds is None or not math.isfinite(seconds):
        raise _Invalid(f"must be a duration such as 5s or 250ms, got {value!r}")
    return seconds


def _positive_duration(value: Any) -> float:
    seconds = parse_duration(value)
    if seconds <= 0:
        raise _Invalid(f"must be > 0, got {value!r}")
    return seconds


def _non_negative_duration(value: Any) -> float:
    seconds = parse_duration(value)
    if seconds < 0:
        raise _Invalid(f"must be >= 0, got {value!r}")
    return seconds


def _integer(value: Any) -> int:
    # At most 18 digits: int() refuses strings of more than 4,300, and no field needs more.
    if isinstance(value, _Interpolated) and re.fullmatch(r"-?[0-9]{1,18}", value.strip()):
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Invalid(f"must be an integer, got {value!r}")
    return value


def _positive_int(value: Any) -> int:
    number = _integer(value)
    if number < 1:
        raise _Invalid(f"must be >= 1, got {number}")
    return number


def _port(value: Any) -> int:
    number = _integer(value)
    if not 1 <= number <= 65535:
        raise _Invalid(f"must be 1-65535, got {number}")
    return number


def _boolean(value: Any) -> bool:
    if isinstance(value, _Interpolated) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    if not isinstance(value, bool):
        raise _Invalid(f"must be true or false, got {value!r}")
    return value


def _string(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _Invalid(f"must be a non-empty string, got {value!r}")
    return str(value)


def _host(value: Any) -> str:
    text = _string(value).strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    name = text[:-1] if text.endswith(".") else text
    if len(name) > 253 or not all(_HOSTNAME_LABEL.fullmatch(label) for label in name.split(".")):
        raise _Invalid(f"must be a hostname or an IP address, got {value!r}")
    return text


def _file_path(value: Any) -> str:
    path = _string(value)
    if not os.path.isfile(path):
        raise _Invalid(f"file {path!r} not found")
    if not os.access(path, os.R_OK):
        raise _Invalid(f"file {path!r} is not readable")
    return path


def _check_name(value: Any) -> str:
    name = _string(value)
    if not _NAME.fullmatch(name):
        raise _Invalid(
            "must be 1-63 lowercase letters, digits, '-', '_' or '.', starting and ending "
            f"with a letter or digit, got {value!r}"
        )
    return name


def _record_type(value: Any) -> str:
    text = _string(value).upper()
    if text not in DNS_RECORD_TYPES:
        raise _Invalid(f"must be one of {', '.join(DNS_RECORD_TYPES)}, got {value!r}")
    return text


def _nameserver(value: Any) -> str:
    """Accept `ip`, `ip:port`, `[ipv6]` or `[ipv6]:port`; return c-ares' `ip:port` form."""
    text = _string(value).strip()
    match = re.fullmatch(
        r"\[([0-9A-Fa-f:.]+)\](?::(\d{1,5}))?|([0-9.]+)(?::(\d{1,5}))?|([0-9A-Fa-f:]+)", text
    )
    if match is None:
        raise _Invalid(f"must be an IP address with an optional :port, got {value!r}")
    address = match.group(1) or match.group(3) or match.group(5)
    port_text = match.group(2) or match.group(4) or "53"
    try:
        ip = ipaddress.ip_address(address)
    except ValueError as exc:
        raise _Invalid(f"must be an IP address with an optional :port, got {value!r}") from exc
    port = _port(int(port_text))
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


def _url(value: Any) -> str:
    text = _string(value).strip()
    try:
        url = URL(text)
        # yarl decodes a punycode host here, and raises UnicodeError (a ValueError) for an
        # invalid one.
        host = url.host
    except (ValueError, TypeError) as exc:
        raise _Invalid(f"must be an http or https URL, got {redact_url(text)!r}") from exc
    if url.scheme not in ("http", "https") or not host:
        # The URL may carry a password, so the message shows only its scheme and host.
        raise _Invalid(
            f"must be an http or https URL with a host, got scheme {url.scheme!r} and host {host!r}"
        )
    try:
        _ = url.port
    except ValueError as exc:
        raise _Invalid(f"has an invalid port: {exc}") from exc
    try:
        _host(host)
    except _Invalid as exc:
        raise _Invalid(f"has an invalid host {host!r}; expected a hostname or IP") from exc
    return text


def _status_set(value: Any) -> frozenset[int]:
    items = value if isinstance(value, list) else [value]
    codes: set[int] = set()
    for item in items:
        if isinstance(item, str) and re.fullmatch(r"[1-5]xx", item.strip().lower()):
            first = int(item.strip()[0]) * 100
            codes.update(range(first, first + 100))
            continue
        code = _integer(item)
        if not 100 <= code <= 599:
            raise _Invalid(f"status codes must be 100-599 or a class such as 2xx, got {item!r}")
        codes.add(code)
    if not codes:
        raise _Invalid("must list at least one status code")
    return frozenset(codes)


def _headers(value: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, dict):
        raise _Invalid(f"must be a mapping of header names to values, got {type(value).__name__}")
    headers = []
    for name, text in value.items():
        if not isinstance(name, str) or not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", name):
            raise _Invalid(f"header name {name!r} is not a valid HTTP token")
        if not isinstance(text, str | int) or isinstance(text, bool):
            raise _Invalid(f"header {name} must have a string value, got {text!r}")
        if any(c in str(text) for c in "\r\n\0"):
            raise _Invalid(f"header {name} contains a line break or NUL")
        headers.append((name, str(text)))
    return tuple(headers)


def _nameservers(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise _Invalid(f"must be a list of IP addresses, got {type(value).__name__}")
    servers = []
    for index, item in enumerate(value):
        try:
            servers.append(_nameserver(item))
        except _Invalid as exc:
            raise _Invalid(str(exc), f"[{index}]") from exc
    return tuple(servers)


# ---------------------------------------------------------------------------------------------
# Schema

_Parser = Callable[[Any], Any]

_COMMON_FIELDS: dict[str, _Parser] = {
    "interval": _positive_duration,
    "timeout": _positive_duration,
    "failure_threshold": _positive_int,
    "success_threshold": _positive_int,
    "critical": _boolean,
    "initial_delay": _non_negative_duration,
    "interval_unhealthy": _positive_duration,
}
_BUILTIN_DEFAULTS: dict[str, Any] = {
    "interval": 5.0,
    "timeout": 2.0,
    "failure_threshold": 1,
    "success_threshold": 1,
    "critical": True,
    "initial_delay": 0.0,
    # None means the check's own interval.
    "interval_unhealthy": None,
}

# Per kind: field -> (parser, default). A default of _REQUIRED marks a required field.
_REQUIRED = object()
_KIND_FIELDS: dict[str, dict[str, tuple[_Parser, Any]]] = {
    "tcp": {"host": (_host, _REQUIRED), "port": (_port, _REQUIRED)},
    "dns": {
        "host": (_host, _REQUIRED),
        "record": (_record_type, None),
        "nameservers": (_nameservers, ()),
        "min_answers": (_positive_int, 1),
        "resolv_conf": (_string, "/etc/resolv.conf"),
    },
    "http": {
        "url": (_url, _REQUIRED),
        "method": (_string, "GET"),
        "expect_status": (_status_set, frozenset(range(200, 300))),
        "expect_body": (_string, None),
        "headers": (_headers, ()),
        "bearer_token_env": (_string, None),
        "bearer_token_file": (_file_path, None),
        "follow_redirects": (_boolean, False),
        "ca_file": (_file_path, None),
        "server_name": (_host, None),
        "insecure": (_boolean, False),
    },
    "mysql": {
        "host": (_host, None),
        "port": (_port, 3306),
        "unix_socket": (_string, None),
        "user": (_string, _REQUIRED),
        "password_env": (_string, None),
        "password_file": (_file_path, None),
        "database": (_string, None),
        "query": (_string, None),
        "tls": (_boolean, False),
        "ca_file": (_file_path, None),
        "insecure": (_boolean, False),
    },
}
_SERVER_FIELDS: dict[str, _Parser] = {
    "host": _host,
    "port": _port,
    "drain_delay": _non_negative_duration,
    "watch_interval": _non_negative_duration,
}


def _validate_document(
    document: Any, source: str, problems: _Problems, environ: Mapping[str, str]
) -> Config | None:
    if document is None:
        problems.add(source, "config is empty; it needs at least a `checks` list")
        return None
    if not isinstance(document, dict):
        problems.add(
            source,
            f"must be a mapping with server, defaults and checks, got {type(document).__name__}",
        )
        return None
    for key in document:
        if key not in ("server", "defaults", "checks"):
            problems.add(_child("", key), "unknown key; expected server, defaults or checks")

    server = _validate_server(document.get("server"), problems)
    defaults = _validate_defaults(document.get("defaults"), problems)
    checks = _validate_checks(document.get("checks"), defaults, problems, environ)
    return Config(server=server, checks=tuple(checks), source=source)


def _validate_server(raw: Any, problems: _Problems) -> ServerConfig:
    if raw is None:
        return ServerConfig()
    if not isinstance(raw, dict):
        problems.add("server", f"must be a mapping, got {type(raw).__name__}")
        return ServerConfig()
    values = _parse_fields(raw, _SERVER_FIELDS, "server", problems)
    return ServerConfig(**values)


def _validate_defaults(raw: Any, problems: _Problems) -> dict[str, Any]:
    defaults = dict(_BUILTIN_DEFAULTS)
    if raw is None:
        return defaults
    if not isinstance(raw, dict):
        problems.add("defaults", f"must be a mapping, got {type(raw).__name__}")
        return defaults
    defaults.update(_parse_fields(raw, _COMMON_FIELDS, "defaults", problems))
    return defaults


def _parse_fields(
    raw: dict[Any, Any], parsers: Mapping[str, _Parser], path: str, problems: _Problems
) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for key, value in raw.items():
        parser = parsers.get(key)
        if parser is None:
            problems.add(_child(path, key), f"unknown key; expected one of {', '.join(parsers)}")
            continue
        try:
            values[key] = parser(value)
        except _Invalid as exc:
            problems.add(_child(path, key), str(exc))
    return values


def _validate_checks(
    raw: Any, defaults: dict[str, Any], problems: _Problems, environ: Mapping[str, str]
) -> list[CheckConfig]:
    if raw is None:
        problems.add("checks", "missing; list at least one check")
        return []
    if not isinstance(raw, list):
        problems.add("checks", f"must be a list, got {type(raw).__name__}")
        return []
    if not raw:
        problems.add("checks", "is empty; list at least one check")
        return []

    checks: list[CheckConfig] = []
    first_use: dict[Any, int] = {}
    for index, item in enumerate(raw):
        path = f"checks[{index}]"
        name = item.get("name") if isinstance(item, dict) else None
        if isinstance(name, str) and name in first_use:
            problems.add(
                f"{path}.name",
                f"duplicate check name {name!r}, already used by checks[{first_use[name]}]",
            )
        elif isinstance(name, str):
            first_use[name] = index
        check = _validate_check(item, defaults, path, problems, environ)
        if check is not None:
            checks.append(check)
    return checks


def _validate_check(
    raw: Any,
    defaults: dict[str, Any],
    path: str,
    problems: _Problems,
    environ: Mapping[str, str],
) -> CheckConfig | None:
    if not isinstance(raw, dict):
        problems.add(path, f"must be a mapping with name and type, got {type(raw).__name__}")
        return None
    before = len(problems.lines)

    name = _required(raw, "name", _check_name, path, problems)
    kind = raw.get("type")
    if not isinstance(kind, str) or kind not in _KIND_FIELDS:
        expected = ", ".join(_KIND_FIELDS)
        message = "missing" if kind is None else f"unknown check type {kind!r}"
        problems.add(f"{path}.type", f"{message}; expected one of {expected}")
        return None

    kind_fields = _KIND_FIELDS[kind]
    common = dict(defaults)
    specific: dict[str, Any] = {}
    parsed_common: set[str] = set()
    for key, value in raw.items():
        if key in ("name", "type"):
            continue
        if key in _COMMON_FIELDS:
            parser = _COMMON_FIELDS[key]
        elif key in kind_fields:
            parser = kind_fields[key][0]
        else:
            allowed = ", ".join(["name", "type", *_COMMON_FIELDS, *kind_fields])
            problems.add(
                f"{path}.{key}", f"unknown key for a {kind} check; expected one of {allowed}"
            )
            continue
        try:
            parsed = parser(value)
        except _Invalid as exc:
            problems.add(f"{path}.{key}{exc.subpath}", str(exc))
            continue
        (common if key in _COMMON_FIELDS else specific)[key] = parsed
        if key in _COMMON_FIELDS:
            parsed_common.add(key)

    for key, (_, default) in kind_fields.items():
        if key in specific:
            continue
        if default is _REQUIRED and key not in raw:
            problems.add(f"{path}.{key}", f"missing; a {kind} check needs it")
        # A missing or invalid field gets a stand-in, so the cross-field checks below still
        # run and every problem of the check is listed at once.
        specific[key] = None if default is _REQUIRED else default

    if common["interval_unhealthy"] is None:
        common["interval_unhealthy"] = common["interval"]
    timing = ("interval", "timeout", "interval_unhealthy")
    unparsed = {key for key in timing if key in raw and key not in parsed_common}
    for interval_key in ("interval", "interval_unhealthy"):
        if unparsed or common["timeout"] < common[interval_key]:
            continue
        problems.add(
            f"{path}.timeout",
            f"must be less than {interval_key} ({_format_seconds(common[interval_key])}), "
            f"got {_format_seconds(common['timeout'])}",
        )
        break
    check = _BUILDERS[kind](name or "", common, specific, path, _Scope(problems, environ))
    return None if len(problems.lines) > before or name is None else check


def _required(
    raw: dict[Any, Any], key: str, parser: _Parser, path: str, problems: _Problems
) -> Any:
    if key not in raw:
        problems.add(f"{path}.{key}", "missing")
        return None
    try:
        return parser(raw[key])
    except _Invalid as exc:
        problems.add(f"{path}.{key}", str(exc))
        return None


def _format_seconds(seconds: float) -> str:
    return f"{seconds * 1000:g}ms" if seconds < 1 else f"{seconds:g}s"


@dataclass(slots=True)
class _Scope:
    """Problem list and environment that a builder needs besides the fields."""

    problems: _Problems
    environ: Mapping[str, str]


def _build_tcp(
    name: str, common: dict[str, Any], specific: dict[str, Any], path: str, scope: _Scope
) -> CheckConfig:
    return TcpCheckConfig(name=name, **common, **specific)


def _build_dns(
    name: str, common: dict[str, Any], specific: dict[str, Any], path: str, scope: _Scope
) -> CheckConfig:
    return DnsCheckConfig(name=name, **common, **specific)


def _build_http(
    name: str, common: dict[str, Any], specific: dict[str, Any], path: str, scope: _Scope
) -> CheckConfig:
    problems = scope.problems
    method = str(specific["method"]).upper()
    if method not in HTTP_METHODS:
        problems.add(f"{path}.method", f"must be GET or HEAD, got {specific['method']!r}")
    if method == "HEAD" and specific["expect_body"] is not None:
        problems.add(f"{path}.expect_body", "cannot be used with method HEAD, which has no body")
    if specific["insecure"] and specific["ca_file"]:
        problems.add(f"{path}.insecure", "cannot be combined with ca_file; choose one")
    token = _read_secret(
        specific.pop("bearer_token_env"),
        specific.pop("bearer_token_file"),
        f"{path}.bearer_token",
        scope,
    )
    if token is not None and any(key.lower() == "authorization" for key, _ in specific["headers"]):
        problems.add(
            f"{path}.headers", "sets Authorization, and so does bearer_token_*; choose one"
        )
    specific["method"] = method
    return HttpCheckConfig(name=name, bearer_token=token, **common, **specific)


def _build_mysql(
    name: str, common: dict[str, Any], specific: dict[str, Any], path: str, scope: _Scope
) -> CheckConfig:
    problems = scope.problems
    if specific["host"] is None and specific["unix_socket"] is None:
        problems.add(f"{path}.host", "missing; a mysql check needs host or unix_socket")
    if specific["host"] is not None and specific["unix_socket"] is not None:
        problems.add(f"{path}.unix_socket", "cannot be combined with host; choose one")
    if specific["insecure"] and specific["ca_file"]:
        problems.add(f"{path}.insecure", "cannot be combined with ca_file; choose one")
    if (specific["insecure"] or specific["ca_file"]) and not specific["tls"]:
        problems.add(f"{path}.tls", "must be true when ca_file or insecure is set")
    password = _read_secret(
        specific.pop("password_env"), specific.pop("password_file"), f"{path}.password", scope
    )
    return MysqlCheckConfig(name=name, password=password, **common, **specific)


def _read_secret(
    env_name: str | None, file_path: str | None, path: str, scope: _Scope
) -> Secret | None:
    """Read a secret from an environment variable or a file; the value never enters a message."""
    if env_name and file_path:
        field_name = path.rsplit(".", 1)[-1]
        scope.problems.add(f"{path}_env", f"cannot be combined with {field_name}_file; choose one")
        return None
    if env_name:
        value = scope.environ.get(env_name)
        if value is None:
            scope.problems.add(f"{path}_env", f"environment variable {env_name} is not set")
            return None
        return Secret(value, f"env {env_name}")
    if file_path:
        try:
            text = Path(file_path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            scope.problems.add(f"{path}_file", f"cannot read {file_path!r}: {type(exc).__name__}")
            return None
        # Kubernetes Secret files and `echo` often end with a newline that is not part of
        # the credential.
        return Secret(text.rstrip("\r\n"), f"file {file_path}", path=file_path)
    return None


_Builder = Callable[[str, dict[str, Any], dict[str, Any], str, _Scope], CheckConfig]
_BUILDERS: dict[str, _Builder] = {
    "tcp": _build_tcp,
    "dns": _build_dns,
    "http": _build_http,
    "mysql": _build_mysql,
}
