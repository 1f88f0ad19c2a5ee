"""A private, controllable MariaDB server on loopback for the tests."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pymysql

from tests.servers.process import wait_for_stop

# The template datadir is made once per test session and copied for each server, so the
# passwords live in the template and are fixed here. They only guard throwaway servers
# that listen on 127.0.0.1. The "pw-" prefix makes them easy to spot in logs and output.
TEMPLATE_APP_PASSWORD = "pw-6b1f0c93e2d84a57"
TEMPLATE_ROOT_PASSWORD = "pw-root-9d2e47a1c05b"
APP_USER = "app"
APP_DATABASE = "app"

# Options used both when the template is made and when a server runs from a copy of it.
# The redo log size must match, or every start would resize the log.
_STORAGE_OPTIONS = (
    "--skip-log-bin",
    "--innodb-buffer-pool-size=16M",
    "--innodb-log-file-size=4M",
)

# sockaddr_un.sun_path is 108 bytes including the final NUL, so a longer socket path is moved
# to a short temporary directory.
_MAX_SOCKET_PATH = 100

_NOT_INSTALLED = "mariadbd or mariadb-install-db not found, so install the mariadb-server package"

_BINARY_DIRS = ("/usr/sbin", "/usr/bin", "/usr/libexec", "/usr/local/sbin", "/usr/local/bin")


def _find_program(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for directory in _BINARY_DIRS:
        candidate = Path(directory) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def find_mariadbd() -> str | None:
    """Return the path of mariadbd, or None when it or mariadb-install-db is not installed."""
    if _find_program("mariadb-install-db") is None:
        return None
    return _find_program("mariadbd")


def _user_options() -> list[str]:
    # mariadbd aborts when run as root without --user=root. Other users leave the option out,
    # because it only applies to root.
    return ["--user=root"] if os.geteuid() == 0 else []


def _tail(path: Path, offset: int = 0, limit: int = 4000) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(offset)
            data = handle.read()
    except OSError as exc:
        return f"(cannot read {path}: {exc})"
    text = data.decode("utf-8", "replace")
    return text[-limit:] if text else "(empty)"


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def make_template(workdir: Path) -> Path:
    """Create a template datadir in workdir with the app user and database and return its path."""
    install_db = _find_program("mariadb-install-db")
    if install_db is None or find_mariadbd() is None:
        raise RuntimeError(_NOT_INSTALLED)

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    datadir = workdir / "template-datadir"
    if datadir.exists():
        raise RuntimeError(f"template datadir {datadir} already exists, so pass a new workdir")

    app_password = _quote(TEMPLATE_APP_PASSWORD)
    root_password = _quote(TEMPLATE_ROOT_PASSWORD)
    # Bootstrap mode runs without the grant tables loaded. FLUSH PRIVILEGES loads them so that
    # CREATE USER and GRANT are accepted.
    statements = [
        "FLUSH PRIVILEGES;",
        f"CREATE DATABASE `{APP_DATABASE}`;",
        f"CREATE USER '{APP_USER}'@'%' IDENTIFIED BY {app_password};",
        f"CREATE USER '{APP_USER}'@'localhost' IDENTIFIED BY {app_password};",
        f"GRANT ALL PRIVILEGES ON `{APP_DATABASE}`.* TO '{APP_USER}'@'%';",
        f"GRANT ALL PRIVILEGES ON `{APP_DATABASE}`.* TO '{APP_USER}'@'localhost';",
        # A password lets root log in over the socket whatever the OS user is.
        "ALTER USER 'root'@'localhost' IDENTIFIED VIA mysql_native_password"
        f" USING PASSWORD({root_password}) OR unix_socket;",
    ]

    extra_sql = workdir / "template-init.sql"
    extra_sql.write_text("\n".join(statements) + "\n")
    log_path = workdir / "template-install.log"
    command = [
        install_db,
        "--no-defaults",
        f"--datadir={datadir}",
        *_user_options(),
        "--skip-test-db",
        "--skip-name-resolve",
        f"--extra-file={extra_sql}",
        *_STORAGE_OPTIONS,
    ]
    with log_path.open("wb") as log:
        result = subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=120,
            check=False,
        )
    if result.returncode != 0:
        raise RuntimeError(
            f"mariadb-install-db failed with exit code {result.returncode}, output:\n"
            f"{_tail(log_path)}"
        )

    return datadir


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class _ProcessState:
    """What the finalizer needs, kept apart from the server so the server can be collected."""

    proc: subprocess.Popen[bytes] | None = None
    frozen: bool = False
    remove_on_close: list[Path] = field(default_factory=list)


def _kill_process(state: _ProcessState) -> None:
    proc = state.proc
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    state.frozen = False


# NOTE: the finalizer runs at interpreter exit, not when the test process is killed with
# SIGKILL or an unhandled SIGTERM. mariadbd then keeps running in its own session.
def _release(state: _ProcessState) -> None:
    _kill_process(state)
    for path in state.remove_on_close:
        shutil.rmtree(path, ignore_errors=True)
    state.remove_on_close.clear()


class MariaDBServer:
    """A private mariadbd on a copied datadir, a free loopback TCP port and its own unix socket."""

    host: str = "127.0.0.1"
    app_user: str = APP_USER
    app_password: str = TEMPLATE_APP_PASSWORD
    app_database: str = APP_DATABASE
    root_password: str = TEMPLATE_ROOT_PASSWORD

    def __init__(self, workdir: Path, template: Path | None = None) -> None:
        mariadbd = find_mariadbd()
        if mariadbd is None:
            raise RuntimeError(_NOT_INSTALLED)
        self._mariadbd = mariadbd
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._state = _ProcessState()
        self._finalizer = weakref.finalize(self, _release, self._state)
        self._closed = False
        # NOTE: another process can take the port before start(), which then fails with
        # "Address already in use" in the log after the bind retries.
        self.port = _free_port()
        self.datadir = self.workdir / "datadir"
        self.log_path = self.workdir / "mariadbd.err"
        self.pid_path = self.workdir / "mariadbd.pid"
        self._output_path = self.workdir / "mariadbd.out"
        self._tmpdir = self.workdir / "tmp"
        self._tmpdir.mkdir(exist_ok=True)

        socket_path = self.workdir / "mariadbd.sock"
        if len(str(socket_path)) > _MAX_SOCKET_PATH:
            short_dir = Path(tempfile.mkdtemp(prefix="mdb-"))
            self._state.remove_on_close.append(short_dir)
            socket_path = short_dir / "mariadbd.sock"
        self.socket_path = socket_path

        if template is None:
            template = make_template(self.workdir / "template")
            self._state.remove_on_close.append(self.workdir / "template")
        self._state.remove_on_close.append(self.datadir)
        self._state.remove_on_close.append(self._tmpdir)
        shutil.copytree(template, self.datadir)

    def __repr__(self) -> str:
        return f"<MariaDBServer {self.host}:{self.port} pid={self.pid}>"

    @property
    def pid(self) -> int | None:
        proc = self._state.proc
        if proc is None or proc.poll() is not None:
            return None
        return proc.pid

    @property
    def is_running(self) -> bool:
        return self.pid is not None

    @property
    def is_frozen(self) -> bool:
        return self.is_running and self._state.frozen

    def _command(self) -> list[str]:
        return [
            self._mariadbd,
            "--no-defaults",
            *_user_options(),
            f"--datadir={self.datadir}",
            f"--tmpdir={self._tmpdir}",
            f"--bind-address={self.host}",
            f"--port={self.port}",
            f"--socket={self.socket_path}",
            f"--pid-file={self.pid_path}",
            f"--log-error={self.log_path}",
            "--skip-name-resolve",
            # After a kill the port may still be in use for a moment, so retry the bind for 10 s.
            "--port-open-timeout=10",
            "--character-set-server=utf8mb4",
            "--collation-server=utf8mb4_general_ci",
            "--innodb-temp-data-file-path=ibtmp1:1M:autoextend",
            "--innodb-buffer-pool-load-at-startup=0",
            "--innodb-buffer-pool-dump-at-shutdown=0",
            *_STORAGE_OPTIONS,
        ]

    def start(self, timeout: float = 30.0) -> None:
        """Start mariadbd and return once the app user can log in over TCP."""
        if self._closed:
            raise RuntimeError("server is closed, so create a new MariaDBServer")
        if self.is_running:
            raise RuntimeError(f"mariadbd is already running as pid {self.pid}")
        log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self._output_path.open("ab") as output:
            self._state.proc = subprocess.Popen(
                self._command(),
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._state.frozen = False
        proc = self._state.proc
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while True:
            code = proc.poll()
            if code is not None:
                raise RuntimeError(
                    f"mariadbd exited with code {code} during start-up, server log:\n"
                    f"{_tail(self.log_path, log_offset)}"
                )
            try:
                conn = pymysql.connect(
                    host=self.host,
                    port=self.port,
                    user=self.app_user,
                    password=self.app_password,
                    database=self.app_database,
                    # Without a read timeout the wait for the greeting has no limit, which
                    # hangs on a frozen server or on another listener holding the port.
                    connect_timeout=1,
                    read_timeout=1,
                    write_timeout=1,
                )
            except pymysql.MySQLError as exc:
                last_error = exc
            else:
                conn.close()
                return
            if time.monotonic() >= deadline:
                _kill_process(self._state)
                raise RuntimeError(
                    f"timed out: mariadbd did not accept a login on {self.host}:{self.port} within"
                    f" {timeout:g}s (last error: {last_error!r}), server log:\n"
                    f"{_tail(self.log_path, log_offset)}"
                )
            time.sleep(0.05)

    def stop(self, timeout: float = 30.0) -> None:
        """Shut down cleanly with SIGTERM, or SIGKILL the server if it has not exited in time."""
        proc = self._state.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        if self._state.frozen:
            # A stopped process only acts on SIGTERM once continued.
            proc.send_signal(signal.SIGCONT)
            self._state.frozen = False
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            _kill_process(self._state)

    def kill(self) -> None:
        """SIGKILL the server and wait until the process is gone."""
        _kill_process(self._state)

    def freeze(self) -> None:
        """SIGSTOP the server: TCP connects still complete in the kernel, but no greeting comes."""
        proc = self._state.proc
        if proc is None or proc.poll() is not None:
            raise RuntimeError("mariadbd is not running")
        proc.send_signal(signal.SIGSTOP)
        self._state.frozen = True
        # The signal is delivered asynchronously; return only once every thread has stopped,
        # or a request sent right after freeze() could still be answered.
        wait_for_stop(proc.pid)

    def thaw(self) -> None:
        """SIGCONT a frozen server."""
        proc = self._state.proc
        if proc is None or proc.poll() is not None:
            raise RuntimeError("mariadbd is not running")
        proc.send_signal(signal.SIGCONT)
        self._state.frozen = False

    def restart(self, timeout: float = 30.0) -> None:
        """Stop the server if it runs, then start it again on the same port and datadir."""
        self.stop()
        self.start(timeout)

    def connect_root(self, **kwargs: Any) -> pymysql.connections.Connection:
        """Open a root connection over the unix socket, which the caller must close."""
        # The read timeout keeps a call on a frozen server from blocking forever.
        options: dict[str, Any] = {"autocommit": True, "connect_timeout": 5, "read_timeout": 60}
        options.update(kwargs)
        return pymysql.connect(
            unix_socket=str(self.socket_path),
            user="root",
            password=self.root_password,
            **options,
        )

    def execute(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        """Run one statement as root on a new unix socket connection and return its rows."""
        conn = self.connect_root()
        try:
            with conn.cursor() as cursor:
                cursor.execute(sql, args if args else None)
                return list(cursor.fetchall())
        finally:
            conn.close()

    def global_status(self, name: str) -> int:
        """Return one SHOW GLOBAL STATUS counter, which also counts this query's own connection."""
        rows = self.execute(
            "SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME = %s",
            name.upper(),
        )
        if not rows:
            raise KeyError(name)
        return int(rows[0][0])

    def close(self) -> None:
        """Kill the server if it runs and remove its datadir and temporary files.

        The server log stays in workdir. Calling close() again does nothing.
        """
        self._closed = True
        self._finalizer()

    def __enter__(self) -> MariaDBServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
