"""Tests of config loading: the files in tests/data/configs, interpolation, defaults, secrets."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from sidecar.config import (
    _COMMON_FIELDS,
    _KIND_FIELDS,
    _SERVER_FIELDS,
    CheckConfig,
    Config,
    ConfigError,
    DnsCheckConfig,
    HttpCheckConfig,
    MysqlCheckConfig,
    ServerConfig,
    TcpCheckConfig,
    load,
    parse,
)
from sidecar.redact import Secret

REPO = Path(__file__).resolve().parent.parent
CONFIGS = Path(__file__).resolve().parent / "data" / "configs"
VALID = sorted(CONFIGS.glob("valid-*.yaml"))
INVALID = sorted(CONFIGS.glob("invalid-*.yaml"))
SHIPPED = [REPO / "config" / "example.yaml", REPO / "config" / "quickstart.yaml"]
EXPECT = "# expect: "

# The invalid cases that must exist, by file name without "invalid-" and ".yaml".
REQUIRED_INVALID = {
    "unknown-top-level-key",
    "unknown-check-key",
    "missing-name",
    "missing-type",
    "unknown-type",
    "duplicate-names",
    "name-space",
    "name-slash",
    "name-uppercase",
    "name-too-long",
    "port-zero",
    "port-too-large",
    "port-not-a-number",
    "host",
    "url-scheme",
    "url-no-host",
    "url-password",
    "record-type",
    "nameserver",
    "timeout-equals-interval",
    "negative-duration",
    "malformed-duration",
    "threshold-zero",
    "boolean-string",
    "password-env-unset",
    "password-file-missing",
    "password-env-and-file",
    "mysql-no-host",
    "head-with-expect-body",
    "insecure-with-ca-file",
    "variable-unset",
    "yaml-syntax",
    "duplicate-yaml-key",
    "empty",
    "top-level-list",
    "several-problems",
}

FILE_MYSQL_PASSWORD = "file-mysql-password"
FILE_ORDERS_TOKEN = "file-orders-token"
ENV_MYSQL_PASSWORD = "env-mysql-password"
ENV_PAYMENTS_TOKEN = "env-payments-token"
# The password that the invalid-url-password*.yaml files contain in a URL.
URL_PASSWORD = "hunter2-secret"
TWO_XX = frozenset(range(200, 300))


@pytest.fixture(scope="module")
def secrets_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Create the secret files that configs read through ${SECRETS_DIR}. The CA is a dummy."""
    directory = tmp_path_factory.mktemp("secrets")
    (directory / "mysql-password").write_text(FILE_MYSQL_PASSWORD + "\n")
    (directory / "orders-token").write_text(FILE_ORDERS_TOKEN + "\n")
    (directory / "ca.pem").write_text("validation only checks that this file exists\n")
    return directory


@pytest.fixture(scope="module")
def environ(secrets_dir: Path) -> dict[str, str]:
    """Return the whole environment of the config files, so nothing comes from the real one."""
    return {
        "SECRETS_DIR": str(secrets_dir),
        "MYSQL_PASSWORD": ENV_MYSQL_PASSWORD,
        "PAYMENTS_TOKEN": ENV_PAYMENTS_TOKEN,
        "PROBE_INTERVAL": "10s",
        "ORDERS_HOST": "orders",
        "REDIS_HOST": "",
        "REDIS_PORT": "6380",
        "CACHE_FAILURES": "3",
        "CACHE_CRITICAL": "false",
    }


def expected_problems(path: Path) -> list[str]:
    """Read the leading `# expect:` lines, with `{file}` replaced by the path given to load()."""
    problems = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith(EXPECT):
            break
        problems.append(line.removeprefix(EXPECT).replace("{file}", str(path)))
    return problems


def problems_of(path: Path, environ: dict[str, str]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(path, environ=environ)
    return caught.value.problems


def check_named(config: Config, name: str) -> CheckConfig:
    return next(check for check in config.checks if check.name == name)


def check_yaml(fields: dict[str, object]) -> str:
    """Build a config with one check, writing each value as YAML source text."""
    lines = [f"{key}: {value}" for key, value in fields.items()]
    return "checks:\n  - " + "\n    ".join(lines) + "\n"


def tcp_yaml(**fields: object) -> str:
    return check_yaml({"name": "cache", "type": "tcp", "host": "redis", "port": 6379, **fields})


def http_yaml(**fields: object) -> str:
    return check_yaml({"name": "orders-api", "type": "http", "url": "http://orders/", **fields})


# ---------------------------------------------------------------------------------------------
# The data files


def test_every_required_invalid_case_has_a_file() -> None:
    present = {path.stem.removeprefix("invalid-") for path in INVALID}

    assert REQUIRED_INVALID - present == set()


@pytest.mark.parametrize("path", INVALID, ids=lambda path: path.stem)
def test_invalid_file_reports_exactly_its_problems(path: Path, environ: dict[str, str]) -> None:
    expected = expected_problems(path)

    problems = problems_of(path, environ)

    assert expected, f"{path.name} has no leading '{EXPECT}' line"
    assert problems == expected


@pytest.mark.parametrize("path", VALID, ids=lambda path: path.stem)
def test_valid_file_loads(path: Path, environ: dict[str, str]) -> None:
    config = load(path, environ=environ)

    assert config.checks
    assert config.source == str(path)


def test_minimal_file_uses_builtin_defaults(environ: dict[str, str]) -> None:
    config = load(CONFIGS / "valid-minimal.yaml", environ=environ)

    assert config.server == ServerConfig(
        host="0.0.0.0", port=8558, drain_delay=5.0, watch_interval=1.0
    )
    assert config.checks == (
        TcpCheckConfig(
            name="cache",
            interval=5.0,
            timeout=2.0,
            failure_threshold=1,
            success_threshold=1,
            critical=True,
            initial_delay=0.0,
            interval_unhealthy=5.0,
            host="redis",
            port=6379,
        ),
    )


def test_every_field_file_parses_each_value(secrets_dir: Path, environ: dict[str, str]) -> None:
    ca_file = f"{secrets_dir}/ca.pem"
    inherited: dict[str, Any] = {
        "interval": 10.0,
        "timeout": 3.0,
        "failure_threshold": 3,
        "success_threshold": 2,
        "critical": False,
        "initial_delay": 0.0,
        "interval_unhealthy": 10.0,
    }

    config = load(CONFIGS / "valid-every-field.yaml", environ=environ)

    assert config.server == ServerConfig(host="::", port=9000, drain_delay=10.0)
    assert config.checks == (
        TcpCheckConfig(
            name="cache",
            interval=60.0,
            timeout=0.25,
            failure_threshold=5,
            success_threshold=4,
            critical=True,
            initial_delay=0.0,
            interval_unhealthy=60.0,
            host="redis",
            port=6379,
        ),
        DnsCheckConfig(
            name="mysql-srv",
            **inherited,
            host="_mysql._tcp.mysql.default.svc.cluster.local.",
            record="SRV",
            nameservers=("10.96.0.10:53", "10.96.0.11:5353", "[fd00::10]:53", "[fd00::11]:5353"),
            min_answers=2,
            resolv_conf="/run/sidecar/resolv.conf",
        ),
        HttpCheckConfig(
            name="orders-api",
            **inherited,
            url="https://orders:8443/healthz",
            method="HEAD",
            expect_status=TWO_XX | {304},
            expect_body=None,
            headers=(("Accept", "application/json"), ("X-Probe", "readiness-sidecar")),
            bearer_token=Secret(FILE_ORDERS_TOKEN),
            follow_redirects=True,
            ca_file=ca_file,
            server_name="orders.shop.svc",
            insecure=False,
        ),
        HttpCheckConfig(
            name="payments-api",
            **inherited,
            url="https://payments/healthz",
            method="GET",
            expect_status=TWO_XX,
            expect_body="ok",
            headers=(),
            bearer_token=Secret(ENV_PAYMENTS_TOKEN),
            follow_redirects=False,
            ca_file=None,
            server_name=None,
            insecure=True,
        ),
        MysqlCheckConfig(
            name="mysql",
            **inherited,
            host="mysql",
            port=3307,
            unix_socket=None,
            user="app",
            password=Secret(FILE_MYSQL_PASSWORD),
            database="app",
            query="SELECT 1",
            tls=True,
            ca_file=ca_file,
            insecure=False,
        ),
        MysqlCheckConfig(
            name="mysql-socket",
            **inherited,
            host=None,
            port=3306,
            unix_socket="/run/mysqld/mysqld.sock",
            user="monitor",
            password=Secret(ENV_MYSQL_PASSWORD),
            database=None,
            query=None,
            tls=True,
            ca_file=None,
            insecure=True,
        ),
    )


def test_interpolation_file(environ: dict[str, str]) -> None:
    config = load(CONFIGS / "valid-interpolation.yaml", environ=environ)
    orders = check_named(config, "orders-api")
    cache = check_named(config, "cache")

    assert config.server.port == 9090
    assert isinstance(orders, HttpCheckConfig)
    assert orders.url == "http://orders:8080/healthz"
    assert orders.expect_body == "price: $5"
    assert orders.headers == (("X-Tenant", "shop"),)
    assert orders.interval == 10.0
    assert cache == TcpCheckConfig(
        name="cache",
        interval=10.0,
        timeout=2.0,
        failure_threshold=3,
        success_threshold=1,
        critical=False,
        initial_delay=0.0,
        interval_unhealthy=10.0,
        host="redis",
        port=6380,
    )


def test_defaults_apply_and_checks_override(environ: dict[str, str]) -> None:
    config = load(CONFIGS / "valid-defaults.yaml", environ=environ)
    inherits = check_named(config, "inherits")
    overrides = check_named(config, "overrides")

    assert (
        inherits.interval,
        inherits.timeout,
        inherits.failure_threshold,
        inherits.success_threshold,
        inherits.critical,
    ) == (30.0, 5.0, 3, 2, False)
    assert (
        overrides.interval,
        overrides.timeout,
        overrides.failure_threshold,
        overrides.success_threshold,
        overrides.critical,
    ) == (2.0, 1.0, 1, 1, True)


# ---------------------------------------------------------------------------------------------
# Single rules, on config text


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("250ms", 0.25),
        ("5s", 5.0),
        ("1m", 60.0),
        ("1m30s", 90.0),
        ("1h", 3600.0),
        ("1.5s", 1.5),
        ("1.5", 1.5),
        ("'2'", 2.0),
        ("2", 2.0),
    ],
)
def test_duration_forms(value: str, seconds: float) -> None:
    config = parse(tcp_yaml(interval=value, timeout="100ms"), environ={})

    assert config.checks[0].interval == seconds


@pytest.mark.parametrize(
    ("value", "codes"),
    [
        (None, TWO_XX),
        ("2xx", TWO_XX),
        ("3XX", frozenset(range(300, 400))),
        ("204", frozenset({204})),
        ("[200, 204]", frozenset({200, 204})),
        ("[2xx, 404]", TWO_XX | {404}),
    ],
)
def test_expect_status_forms(value: str | None, codes: frozenset[int]) -> None:
    text = http_yaml() if value is None else http_yaml(expect_status=value)

    check = parse(text, environ={}).checks[0]

    assert isinstance(check, HttpCheckConfig)
    assert check.expect_status == codes


def test_variable_default_when_unset_or_empty() -> None:
    text = tcp_yaml(host="${REDIS_HOST:-redis}")

    unset = parse(text, environ={}).checks[0]
    empty = parse(text, environ={"REDIS_HOST": ""}).checks[0]
    from_variable = parse(text, environ={"REDIS_HOST": "cache.shop.svc"}).checks[0]

    assert isinstance(unset, TcpCheckConfig)
    assert isinstance(empty, TcpCheckConfig)
    assert isinstance(from_variable, TcpCheckConfig)
    assert (unset.host, empty.host, from_variable.host) == ("redis", "redis", "cache.shop.svc")


def test_double_dollar_is_a_literal_dollar() -> None:
    text = http_yaml(expect_body="'cost $$5, $${NOT_A_VARIABLE}'")

    check = parse(text, environ={}).checks[0]

    assert isinstance(check, HttpCheckConfig)
    assert check.expect_body == "cost $5, ${NOT_A_VARIABLE}"


@pytest.mark.parametrize(
    ("field", "value", "parsed"),
    [
        ("port", "6380", 6380),
        ("failure_threshold", "4", 4),
        ("interval", "30s", 30.0),
        ("interval", "7", 7.0),
        ("critical", "false", False),
        ("critical", "True", True),
    ],
)
def test_numbers_and_booleans_from_variables(field: str, value: str, parsed: object) -> None:
    config = parse(tcp_yaml(**{field: "${VALUE}"}), environ={"VALUE": value})

    assert getattr(config.checks[0], field) == parsed


def test_quoted_boolean_rejected() -> None:
    with pytest.raises(ConfigError) as caught:
        parse(tcp_yaml(critical="'true'"), environ={})

    assert caught.value.problems == ["checks[0].critical: must be true or false, got 'true'"]


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_bytes(b"")

    problems = problems_of(path, {})

    assert problems == [f"{path}: config is empty; it needs at least a `checks` list"]


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"

    problems = problems_of(path, {})

    assert problems == [f"{path}: cannot read config file: No such file or directory"]


@pytest.mark.parametrize(
    ("content", "password"),
    [
        ("pw", "pw"),
        ("pw\n", "pw"),
        ("pw\r\n", "pw"),
        ("pw\n\n", "pw"),
        (" pw \n", " pw "),
    ],
)
def test_password_file_trailing_newline_stripped(
    tmp_path: Path, content: str, password: str
) -> None:
    (tmp_path / "mysql-password").write_text(content, newline="")
    text = (
        "checks:\n  - {name: mysql, type: mysql, host: mysql, user: app,"
        " password_file: '${DIR}/mysql-password'}\n"
    )

    check = parse(text, environ={"DIR": str(tmp_path)}).checks[0]

    assert isinstance(check, MysqlCheckConfig)
    assert check.password is not None
    assert check.password.reveal() == password
    assert check.password.source == f"file {tmp_path}/mysql-password"


def test_password_env_records_its_source() -> None:
    text = "checks:\n  - {name: mysql, type: mysql, host: mysql, user: app, password_env: PW}\n"

    check = parse(text, environ={"PW": ENV_MYSQL_PASSWORD}).checks[0]

    assert isinstance(check, MysqlCheckConfig)
    assert check.password is not None
    assert check.password.reveal() == ENV_MYSQL_PASSWORD
    assert check.password.source == "env PW"


def test_secret_repr_never_shows_the_value() -> None:
    secret = Secret("hunter2-value", "env MYSQL_PASSWORD")

    renderings = [repr(secret), str(secret), f"{secret}", f"{secret!r}", "%s" % secret]  # noqa: UP031

    assert all("hunter2-value" not in text for text in renderings)


def test_loaded_config_repr_hides_every_secret(environ: dict[str, str]) -> None:
    config = load(CONFIGS / "valid-every-field.yaml", environ=environ)

    text = f"{config!r} {config}"

    for value in (FILE_MYSQL_PASSWORD, FILE_ORDERS_TOKEN, ENV_MYSQL_PASSWORD, ENV_PAYMENTS_TOKEN):
        assert value not in text


def test_url_password_never_in_problems(environ: dict[str, str]) -> None:
    paths = sorted(CONFIGS.glob("invalid-url-password*.yaml"))

    messages = [problem for path in paths for problem in problems_of(path, environ)]

    assert len(paths) >= 2
    assert all(URL_PASSWORD not in message for message in messages)


# ---------------------------------------------------------------------------------------------
# Values that once slipped through validation.


@pytest.mark.parametrize("value", [".nan", ".inf", "inf", "nan", "1e400"])
def test_non_finite_duration_rejected(value: str) -> None:
    try:
        parse(tcp_yaml(interval=value), environ={})
    except ConfigError as exc:
        assert exc.problems[0].startswith("checks[0].interval: ")
    else:
        raise AssertionError(f"interval {value} was accepted")


def test_unhashable_yaml_key_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        parse(tcp_yaml(**{"[a]": 1}), environ={})


def test_url_host_with_space_rejected() -> None:
    with pytest.raises(ConfigError):
        parse(http_yaml(url="http://ord ers/"), environ={})


# ---------------------------------------------------------------------------------------------
# The files shipped in config/


def test_shipped_configs_validate(monkeypatch: pytest.MonkeyPatch) -> None:
    # Relative secret paths resolve against the working directory.
    monkeypatch.chdir(REPO)

    configs = [load(path, environ={}) for path in SHIPPED]

    assert all(config.checks for config in configs)


def test_example_lists_every_key() -> None:
    text = SHIPPED[0].read_text(encoding="utf-8")
    written = set(re.findall(r"^\s*(?:#\s*)?(?:-\s+)?([a-z_]+):", text, flags=re.MULTILINE))
    keys = {"server", "defaults", "checks", "name", "type", *_SERVER_FIELDS, *_COMMON_FIELDS}
    keys.update(key for fields in _KIND_FIELDS.values() for key in fields)

    assert keys - written == set()


# ---------------------------------------------------------------------------------------------
# The real command line


def run_validate(
    path: Path, environ: dict[str, str], cwd: Path
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sidecar", "validate", "-c", str(path)],
        env={"PATH": os.environ.get("PATH", ""), **environ},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="module")
def cli_runs(
    environ: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[Path, subprocess.CompletedProcess[str]]]:
    """Run `validate` once per data file, in parallel, because each start takes about a second."""
    cwd = tmp_path_factory.mktemp("cwd")
    paths = [*VALID, *INVALID]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        runs = list(pool.map(lambda path: run_validate(path, environ, cwd), paths))
    yield dict(zip(paths, runs, strict=True))


@pytest.mark.parametrize("path", INVALID, ids=lambda path: path.stem)
def test_cli_rejects_invalid_file(
    path: Path, cli_runs: dict[Path, subprocess.CompletedProcess[str]]
) -> None:
    run = cli_runs[path]
    expected = expected_problems(path)

    lines = run.stderr.splitlines()

    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stdout + run.stderr
    assert str(path) in lines[0]
    assert [line.strip() for line in lines[1:]] == expected
    assert URL_PASSWORD not in run.stdout + run.stderr


@pytest.mark.parametrize("path", VALID, ids=lambda path: path.stem)
def test_cli_accepts_valid_file(
    path: Path, cli_runs: dict[Path, subprocess.CompletedProcess[str]]
) -> None:
    run = cli_runs[path]

    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stdout + run.stderr


@pytest.mark.parametrize("path", SHIPPED, ids=lambda path: path.name)
def test_cli_accepts_shipped_config(path: Path) -> None:
    run = run_validate(path.relative_to(REPO), {}, REPO)

    assert run.returncode == 0, run.stderr


def test_field_and_cross_field_problems_together() -> None:
    text = "checks:\n  - name: db\n    type: mysql\n    port: 0\n"

    with pytest.raises(ConfigError) as caught:
        parse(text, environ={})

    assert caught.value.problems == [
        "checks[0].port: must be 1-65535, got 0",
        "checks[0].user: missing; a mysql check needs it",
        "checks[0].host: missing; a mysql check needs host or unix_socket",
    ]


def test_bad_interval_alone_reported() -> None:
    with pytest.raises(ConfigError) as caught:
        parse(tcp_yaml(interval="bogus", timeout="10s"), environ={})

    assert caught.value.problems == [
        "checks[0].interval: must be a duration such as 5s or 250ms, got 'bogus'"
    ]
