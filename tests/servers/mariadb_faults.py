"""Faults of a running private MariaDB: a full connection limit, a new password, no database."""

from __future__ import annotations

from types import TracebackType
from typing import Any, Self

import pymysql

from tests.servers.mariadb import MariaDBServer, _quote

# MariaDB does not accept a max_connections below 10.
MIN_MAX_CONNECTIONS = 10


def app_connection_ids(server: MariaDBServer) -> list[int]:
    """Ids of the app user's open connections."""
    rows = server.execute(
        "SELECT ID FROM information_schema.PROCESSLIST WHERE USER = %s", server.app_user
    )
    return [int(row[0]) for row in rows]


def kill_app_connections(server: MariaDBServer) -> list[int]:
    """Kill every connection of the app user; return their ids."""
    ids = app_connection_ids(server)
    for ident in ids:
        server.execute(f"KILL CONNECTION {ident}")
    return ids


def set_app_password(server: MariaDBServer, password: str) -> None:
    """Change the app user's password; open connections keep working."""
    for host in ("%", "localhost"):
        server.execute(f"ALTER USER '{server.app_user}'@'{host}' IDENTIFIED BY {_quote(password)}")


def drop_app_database(server: MariaDBServer) -> None:
    """Drop the app database; its grants stay, so create_app_database() restores access."""
    server.execute(f"DROP DATABASE `{server.app_database}`")


def create_app_database(server: MariaDBServer) -> None:
    server.execute(f"CREATE DATABASE IF NOT EXISTS `{server.app_database}`")


class ConnectionHog:
    """Takes every connection the server allows, so a new non-root login gets error 1040,
    "Too many connections".

    start() opens MIN_MAX_CONNECTIONS app connections, then lowers max_connections to that
    number. Connections open before stay open. kill_others() kills the app connections the
    hog does not own, such as a client's kept connection. It uses a root connection opened
    by start(), because a new root login may be rejected too. close() restores the limit
    and closes every connection.
    """

    def __init__(self, server: MariaDBServer) -> None:
        self.server = server
        self._admin: Any = None
        self._hogs: list[Any] = []
        self._previous: int | None = None

    def start(self) -> Self:
        self._admin = self.server.connect_root()
        try:
            with self._admin.cursor() as cursor:
                cursor.execute("SELECT @@GLOBAL.max_connections")
                self._previous = int(cursor.fetchone()[0])
            for _ in range(MIN_MAX_CONNECTIONS):
                self._hogs.append(
                    pymysql.connect(
                        host=self.server.host,
                        port=self.server.port,
                        user=self.server.app_user,
                        password=self.server.app_password,
                        connect_timeout=5,
                        read_timeout=10,
                    )
                )
            with self._admin.cursor() as cursor:
                cursor.execute(f"SET GLOBAL max_connections = {MIN_MAX_CONNECTIONS}")
        except BaseException:
            self.close()
            raise
        return self

    def kill_others(self) -> list[int]:
        """Kill the app connections that the hog did not open; return their ids."""
        own = {hog.thread_id() for hog in self._hogs}
        killed = []
        with self._admin.cursor() as cursor:
            cursor.execute(
                "SELECT ID FROM information_schema.PROCESSLIST WHERE USER = %s",
                (self.server.app_user,),
            )
            for (ident,) in cursor.fetchall():
                if int(ident) not in own:
                    cursor.execute(f"KILL CONNECTION {int(ident)}")
                    killed.append(int(ident))
        return killed

    def close(self) -> None:
        if self._admin is not None:
            if self._previous is not None:
                with self._admin.cursor() as cursor:
                    cursor.execute(f"SET GLOBAL max_connections = {self._previous}")
            self._admin.close()
            self._admin = None
        for hog in self._hogs:
            hog.close()
        self._hogs.clear()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
