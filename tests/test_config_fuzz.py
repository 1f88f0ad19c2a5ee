"""Fuzzing of config validation: any input is valid or a ConfigError naming each problem's path.

Hypothesis builds random YAML documents, random mutations of the valid configs in
tests/data/configs and config/example.yaml, and random text. parse() must either accept
the text or raise ConfigError whose every problem is one line starting with a path
(`checks[0].port: ...`, `server: ...`, a top-level key, or the file name) and never raise
anything else or take longer than the deadline. A few fuzzed files also go through
`python -m sidecar validate`, which must exit 0 or 2 without a traceback.

Examples are derandomized, so a CI run is repeatable; set CONFIG_FUZZ_EXAMPLES to a
number to run that many random examples per test instead.
"""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.config import ConfigError, parse

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "tests" / "data" / "configs"
BASE_FILES = [*sorted(CONFIGS.glob("valid-*.yaml")), ROOT / "config" / "example.yaml"]
SOURCE = "fuzz.yaml"
TOP_LEVEL = ("server", "defaults", "checks")

_EXPLORE = os.environ.get("CONFIG_FUZZ_EXAMPLES")
FUZZ = settings(
    max_examples=int(_EXPLORE) if _EXPLORE else 200,
    derandomize=not _EXPLORE,
    deadline=timedelta(seconds=1),
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
# A long exploring run must not be cut by the suite's timeout per test.
FUZZ_TIMEOUT = pytest.mark.timeout(0 if _EXPLORE else 120)

# ---------------------------------------------------------------------------------------------
# The environment and files the valid configs refer to


def make_environ(secrets: Path) -> dict[str, str]:
    """Write the secret files of the valid configs; return the environment they read."""
    secrets.mkdir(parents=True, exist_ok=True)
    for name in ("mysql-password", "orders-token", "ca.pem"):
        (secrets / name).write_text(f"fuzz-{name}\n")
    return {
        "SECRETS_DIR": str(secrets),
        "MYSQL_PASSWORD": "fuzz-env-password",
        "PAYMENTS_TOKEN": "fuzz-env-token",
        "PROBE_INTERVAL": "10s",
        "ORDERS_HOST": "orders",
        "REDIS_HOST": "",
        "REDIS_PORT": "6380",
        "CACHE_FAILURES": "3",
        "CACHE_CRITICAL": "false",
    }


@pytest.fixture(scope="module")
def environ(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return make_environ(tmp_path_factory.mktemp("fuzz-secrets"))


def _absolute_paths(value: Any) -> Any:
    """Make the relative secret paths of config/example.yaml independent of the cwd."""
    if isinstance(value, list):
        return [_absolute_paths(v) for v in value]
    if not isinstance(value, dict):
        return value
    result = {}
    for key, child in value.items():
        relative = isinstance(child, str) and not child.startswith(("/", "$"))
        if str(key).endswith("_file") and relative:
            child = str(ROOT / child)
        result[key] = _absolute_paths(child)
    return result


BASE_DOCUMENTS = [_absolute_paths(yaml.safe_load(path.read_text())) for path in BASE_FILES]


class _NoAliasDumper(yaml.SafeDumper):
    """Writes a shared object out again instead of as an alias (aliases have their own test)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def dump(document: Any) -> str:
    return yaml.dump(document, Dumper=_NoAliasDumper, allow_unicode=True, sort_keys=False)


# ---------------------------------------------------------------------------------------------
# The contract

_SECTION_PATH = re.compile(r"(server|defaults|checks)(\[\d+\])*(\.|: )")


def top_level_keys(text: str) -> set[str]:
    try:
        document = yaml.safe_load(text)
    except (yaml.YAMLError, ValueError, RecursionError):
        return set()
    if not isinstance(document, dict):
        return set()
    # A key may be shown as it is or quoted, as repr() does.
    return {str(key) for key in document} | {repr(str(key)) for key in document}


def assert_valid_or_config_error(text: str, environ: dict[str, str]) -> None:
    """parse() accepts the text or names a path in every problem; nothing else."""
    try:
        parse(text, SOURCE, environ=environ)
    except ConfigError as exc:
        assert exc.problems, "a ConfigError without problems"
        keys = top_level_keys(text)
        for problem in exc.problems:
            assert "\n" not in problem, f"problem spans lines: {problem!r}"
            named = (
                problem.startswith(f"{SOURCE}: ")
                or _SECTION_PATH.match(problem) is not None
                or any(problem.startswith((f"{key}: ", f"{key}.", f"{key}[")) for key in keys)
            )
            assert named, f"problem does not start with a path: {problem!r}"


# ---------------------------------------------------------------------------------------------
# Strategies

KNOWN_KEYS = [
    *TOP_LEVEL,
    "name",
    "type",
    "host",
    "port",
    "interval",
    "timeout",
    "failure_threshold",
    "success_threshold",
    "critical",
    "initial_delay",
    "interval_unhealthy",
    "record",
    "nameservers",
    "min_answers",
    "resolv_conf",
    "url",
    "method",
    "expect_status",
    "expect_body",
    "headers",
    "bearer_token_env",
    "bearer_token_file",
    "follow_redirects",
    "ca_file",
    "server_name",
    "insecure",
    "unix_socket",
    "user",
    "password_env",
    "password_file",
    "database",
    "query",
    "tls",
    "drain_delay",
    "watch_interval",
]
INTERESTING = [
    "",
    " ",
    "0",
    "-1",
    "65536",
    "5s",
    "250ms",
    "1m30s",
    "1h",
    "-5s",
    "0s",
    "1.5",
    "5 s",
    "5S",
    "tcp",
    "dns",
    "http",
    "mysql",
    "redis",
    "A",
    "srv",
    "CNAME",
    "GET",
    "head",
    "POST",
    "2xx",
    "6xx",
    "xx",
    "127.0.0.1",
    "::1",
    "[::1]",
    "[::1]:53",
    "10.0.0.1:5353",
    "256.1.1.1",
    "-bad-.host",
    "a..b",
    "db.svc.cluster.local.",
    "http://db:8080/health",
    "https://u:pw@db/x",
    "ftp://db/",
    "http://",
    "http://db:99999/",
    "http://[::1]:8080/",
    "/",
    "/dev/null",
    "/nonexistent/file",
    "MYSQL_PASSWORD",
    "UNSET_VARIABLE",
    "${SECRETS_DIR}/mysql-password",
    "${UNSET_VARIABLE}",
    "${UNSET_VARIABLE:-7}",
    "${REDIS_PORT}",
    "${CACHE_CRITICAL}",
    "$$",
    "${",
    "$",
    "true",
    "false",
    "yes",
    "null",
    "Authorization",
    "checks[0]",
]
TEXT = st.text(
    alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\r\n\x85\u2028\u2029"),
    max_size=20,
)
KEYS = st.one_of(st.sampled_from(KNOWN_KEYS), TEXT, st.integers(-5, 5), st.booleans(), st.none())
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    # Integers of more than 4,300 digits crash the parser: see test_huge_integer_*.
    st.integers(-(10**30), 10**30),
    st.floats(),
    st.sampled_from(INTERESTING),
    TEXT,
)
VALUES = st.recursive(
    SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(KEYS, children, max_size=4),
    ),
    max_leaves=12,
)
CHECK_LIKE = st.dictionaries(st.sampled_from(KNOWN_KEYS), VALUES, max_size=8)
DOCUMENTS = st.one_of(
    VALUES,
    st.fixed_dictionaries(
        {},
        optional={
            "server": st.one_of(st.dictionaries(st.sampled_from(KNOWN_KEYS), VALUES), VALUES),
            "defaults": st.one_of(st.dictionaries(st.sampled_from(KNOWN_KEYS), VALUES), VALUES),
            "checks": st.one_of(st.lists(CHECK_LIKE, max_size=4), VALUES),
            "extra": VALUES,
        },
    ),
)


def paths_of(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value inside nested dicts and lists, the root included."""
    paths = [prefix]
    if isinstance(value, dict):
        for key, child in value.items():
            paths += paths_of(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            paths += paths_of(child, (*prefix, index))
    return paths


def _container(document: Any, path: tuple[Any, ...]) -> Any:
    for step in path[:-1]:
        document = document[step]
    return document


@st.composite
def mutated_documents(draw: st.DrawFn) -> Any:
    """A valid config with one to three random changes."""
    document = yaml.safe_load(dump(draw(st.sampled_from(BASE_DOCUMENTS))))
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in paths_of(document) if p]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = _container(document, path)
        key = path[-1]
        action = draw(st.sampled_from(["replace", "delete", "add", "duplicate", "wrap"]))
        if action == "replace":
            parent[key] = draw(VALUES)
        elif action == "delete":
            del parent[key]
        elif action == "add" and isinstance(parent, dict):
            parent[draw(KEYS)] = draw(VALUES)
        elif action == "add":
            parent.insert(key, draw(VALUES))
        elif action == "duplicate" and isinstance(parent, list):
            parent.append(yaml.safe_load(dump(parent[key])))
        else:
            parent[key] = [parent[key]]
    return document


@st.composite
def mutated_texts(draw: st.DrawFn) -> str:
    """The text of a valid config with a few characters inserted, deleted or replaced."""
    text = BASE_FILES[draw(st.integers(0, len(BASE_FILES) - 1))].read_text()
    for _ in range(draw(st.integers(1, 4))):
        position = draw(st.integers(0, len(text)))
        piece = draw(st.sampled_from([":", "-", " ", "\n", "\t", "'", '"', "{", "[", "&a", "*a"]))
        piece = draw(st.one_of(st.just(piece), st.text(max_size=3)))
        action = draw(st.sampled_from(["insert", "delete", "replace"]))
        if action == "insert":
            text = text[:position] + piece + text[position:]
        elif action == "delete":
            text = text[:position] + text[position + len(piece) :]
        else:
            text = text[:position] + piece + text[position + 1 :]
    return text


# ---------------------------------------------------------------------------------------------
# Fuzz tests


def test_base_documents_are_valid(environ):
    for document in BASE_DOCUMENTS:
        parse(dump(document), SOURCE, environ=environ)


@FUZZ_TIMEOUT
@FUZZ
@given(document=DOCUMENTS)
def test_random_documents(environ, document):
    assert_valid_or_config_error(dump(document), environ)


@FUZZ_TIMEOUT
@FUZZ
@given(document=mutated_documents())
def test_mutated_documents(environ, document):
    assert_valid_or_config_error(dump(document), environ)


@FUZZ_TIMEOUT
@FUZZ
@given(text=mutated_texts())
def test_mutated_texts(environ, text):
    assert_valid_or_config_error(text, environ)


@FUZZ_TIMEOUT
@FUZZ
@given(text=st.text(max_size=300))
def test_random_text(environ, text):
    assert_valid_or_config_error(text, environ)


# ---------------------------------------------------------------------------------------------
# The command line on fuzzed files

VALIDATE_FILES = 8


def fuzzed_files(directory: Path, count: int) -> list[Path]:
    """Mutated valid configs, from a fixed seed: half changed as data, half as text."""
    rng = random.Random(20261204)
    files = []
    for number in range(count):
        base = rng.randrange(len(BASE_FILES))
        if number % 2:
            text = BASE_FILES[base].read_text()
            for _ in range(rng.randint(1, 4)):
                position = rng.randrange(len(text))
                text = text[:position] + rng.choice(":-\n\t'\"{[&*!x9 ") + text[position + 1 :]
        else:
            document = yaml.safe_load(dump(BASE_DOCUMENTS[base]))
            paths = [p for p in paths_of(document) if p]
            path = rng.choice(paths)
            replacement: Any = rng.choice([None, -1, 0, 1.5, "", "x", [], {}, "${UNSET}", 10**20])
            _container(document, path)[path[-1]] = replacement
            text = dump(document)
        target = directory / f"fuzzed-{number:02d}.yaml"
        target.write_text(text)
        files.append(target)
    return files


def run_validate(path: Path, environ: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ.get("PATH", ""), **environ}
    return subprocess.run(
        [sys.executable, "-m", "sidecar", "validate", "-c", str(path)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
        check=False,
    )


def test_validate_command_on_fuzzed_files(tmp_path, environ):
    files = fuzzed_files(tmp_path, VALIDATE_FILES)
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda path: run_validate(path, environ), files))

    statuses = [result.returncode for result in results]
    assert 0 in statuses, statuses
    assert 2 in statuses, statuses
    for path, result in zip(files, results, strict=True):
        assert result.returncode in (0, 2), (path.name, result.returncode, result.stderr)
        assert "Traceback" not in result.stderr, (path.name, result.stderr)
        if result.returncode == 2:
            header, *problems = result.stderr.splitlines()
            assert header.startswith(f"readiness-sidecar: invalid config {path}: ")
            for problem in problems:
                assert problem.startswith("  "), (path.name, problem)


# ---------------------------------------------------------------------------------------------
# Inputs that break the contract today


def tcp_text(port: str) -> str:
    return f"checks:\n  - name: db\n    type: tcp\n    host: db\n    port: {port}\n"


def test_huge_integer_is_a_config_error():
    with pytest.raises(ConfigError):
        parse(tcp_text("9" * 5000), SOURCE, environ={})


@pytest.mark.parametrize(
    "text",
    [
        tcp_text("${BIG}"),
        "checks:\n  - name: ns\n    type: dns\n    host: db\n"
        "    nameservers: ['10.0.0.1:DIGITS']\n",
    ],
    ids=["interpolated-port", "nameserver-port"],
)
def test_huge_integer_string_is_a_config_error(text):
    digits = "9" * 5000
    with pytest.raises(ConfigError):
        parse(text.replace("DIGITS", digits), SOURCE, environ={"BIG": digits})


def test_self_referencing_alias_is_a_config_error():
    with pytest.raises(ConfigError):
        parse("checks: &loop\n  - *loop\n", SOURCE, environ={})


def test_deep_nesting_is_a_config_error():
    with pytest.raises(ConfigError):
        parse("checks: " + "[" * 500 + "]" * 500 + "\n", SOURCE, environ={})


def test_nested_aliases_do_not_expand():
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for level in range(1, 5):
        refs = ", ".join([f"*a{level - 1}"] * 10)
        levels.append(f"a{level}: &a{level} [{refs}]")
    text = "\n".join(levels) + "\nchecks: *a4\n"
    started = time.monotonic()
    with pytest.raises(ConfigError):
        parse(text, SOURCE, environ={})
    # 100,000 list items through five aliases; without the copies this takes milliseconds.
    assert time.monotonic() - started < 0.05


def test_invalid_punycode_host_is_a_config_error():
    text = "checks:\n  - name: web\n    type: http\n    url: http://xn--a.example/\n"
    with pytest.raises(ConfigError):
        parse(text, SOURCE, environ={})


def test_key_with_line_break_gives_one_line():
    text = 'checks:\n  - name: db\n    type: tcp\n    host: db\n    port: 1\n"a\\nb": 1\n'
    with pytest.raises(ConfigError) as caught:
        parse(text, SOURCE, environ={})
    assert all("\n" not in problem for problem in caught.value.problems)


def test_unprintable_character_gives_one_line():
    with pytest.raises(ConfigError) as caught:
        parse("\x1fchecks: []\n", SOURCE, environ={})
    assert all("\n" not in problem for problem in caught.value.problems)


@pytest.mark.parametrize(
    "text", ["${UNSET_VARIABLE}\n", "- ${UNSET_VARIABLE}\n"], ids=["string", "list"]
)
def test_unset_variable_at_root_names_file(text):
    with pytest.raises(ConfigError) as caught:
        parse(text, SOURCE, environ={})
    for problem in caught.value.problems:
        assert problem.startswith(f"{SOURCE}: ")
        assert "_Interpolated" not in problem


def test_validate_command_on_huge_integer(tmp_path):
    path = tmp_path / "huge.yaml"
    path.write_text(tcp_text("9" * 5000))
    result = run_validate(path, {})
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
