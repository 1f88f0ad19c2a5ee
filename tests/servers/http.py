"""A loopback HTTP server whose faults a test switches at run time, on one fixed port."""

from __future__ import annotations

import selectors
import socket
import struct
import threading
import time
from typing import Literal, Self

from tests.servers.tcp import LOOPBACK, _LoopServer

Mode = Literal["ok", "error", "hang", "slow_body", "cut"]
Listening = Literal["accept", "refuse", "stall"]

_CHUNK = 65536
_MAX_REQUEST = 65536
# How often the slow-body mode sends its next byte.
TRICKLE_SECONDS = 0.05


class FaultyHttpServer(_LoopServer):
    """An HTTP/1.1 server on loopback; each request is answered by the mode in force when it
    has arrived whole, and the port can refuse or stall new connections.

    Modes (set_mode): `ok` answers 200 with the body `ok`; `error` answers 500; `hang`
    reads the request and never answers; `slow_body` sends the headers of a 4 KiB body,
    then one byte every TRICKLE_SECONDS; `cut` sends the headers and 8 bytes of a 100-byte
    body, then closes. Every answer carries `Connection: close`.

    Listening states (set_listening): `accept` serves; `refuse` closes the listening socket,
    so connects are refused; `stall` stops accepting and fills the kernel's accept queue,
    so connects hang (Linux drops the SYN of a full queue). Back to `accept`, the port is
    bound again, or the queue is drained. Connections already accepted are never touched by
    a change of state. A plain TCP check can use this server as its target, too.
    """

    def __init__(self, host: str = LOOPBACK) -> None:
        super().__init__(host)
        self.mode: Mode = "ok"
        self.listening: Listening = "accept"
        self.requests = 0
        self._listener: socket.socket | None = None
        self._buffers: dict[socket.socket, bytearray] = {}
        self._trickling: dict[socket.socket, int] = {}
        self._fillers: list[socket.socket] = []
        self._ticker: threading.Thread | None = None
        self._stop_ticking = threading.Event()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/health"

    @property
    def open_connections(self) -> int:
        """Accepted connections that are not closed yet."""
        return len(self._buffers)

    def start(self) -> Self:
        if self._thread is not None:
            return self
        super().start()
        # The base class owns exactly one socket right after start(): its listener.
        (self._listener,) = self._owned
        self._stop_ticking.clear()
        self._ticker = threading.Thread(target=self._tick_loop, name="http-trickle", daemon=True)
        self._ticker.start()
        return self

    def close(self) -> None:
        self._stop_ticking.set()
        if self._ticker is not None:
            self._ticker.join(5)
            self._ticker = None
        for sock in self._fillers:
            sock.close()
        self._fillers.clear()
        super().close()
        self._buffers.clear()
        self._trickling.clear()

    def set_mode(self, mode: Mode) -> None:
        """Set the mode for requests that arrive from now on."""
        self._call(lambda: setattr(self, "mode", mode))

    def set_listening(self, state: Listening) -> None:
        """Switch the listening socket; returns once new connects behave the new way."""
        self._call(lambda: self._switch(state))

    # -- listening states, in the loop thread ----------------------------------------------------

    def _switch(self, state: Listening) -> None:
        if state == self.listening:
            return
        if self.listening == "refuse":
            self._bind()
        elif self.listening == "stall":
            self._unstall()
        if state == "refuse":
            listener, self._listener = self._listener, None
            if listener is not None:
                self._release(listener)
        elif state == "stall":
            self._stall()
        self.listening = state

    def _bind(self) -> None:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, self.port))
        listener.listen(128)
        listener.setblocking(False)
        self._listener = listener
        self._own(listener, selectors.EVENT_READ, lambda mask: self._accept(listener))

    def _stall(self) -> None:
        listener = self._listener
        assert listener is not None
        self._watch(listener, 0, None)
        # Calling listen() again on Linux changes the backlog of a listening socket.
        listener.listen(0)
        while True:
            queued, limit = _queue_info(listener)
            if queued > limit:
                return
            filler = socket.create_connection((self.host, self.port), timeout=2)
            self._fillers.append(filler)
            deadline = time.monotonic() + 5
            # The connect returns when the client side is set up; wait for the server side.
            while _queue_info(listener)[0] <= queued:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"port {self.port}: a filler did not reach the queue")
                time.sleep(0.001)

    def _unstall(self) -> None:
        listener = self._listener
        assert listener is not None
        for filler in self._fillers:
            filler.close()
        self._fillers.clear()
        listener.listen(128)
        # The queued server ends of the fillers are accepted, see EOF and are closed.
        self._watch(listener, selectors.EVENT_READ, lambda mask: self._accept(listener))

    # -- connections, in the loop thread --------------------------------------------------------

    def _on_accept(self, conn: socket.socket) -> None:
        self._buffers[conn] = bytearray()
        self._own(conn, selectors.EVENT_READ, lambda mask: self._on_readable(conn))

    def _on_readable(self, conn: socket.socket) -> None:
        try:
            data = conn.recv(_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(conn)
            return
        buffer = self._buffers.get(conn)
        if buffer is None:
            # The response was sent already, so later bytes are ignored.
            return
        buffer += data
        if b"\r\n\r\n" in buffer:
            self.requests += 1
            self._buffers[conn] = bytearray()
            self._answer(conn)
        elif len(buffer) > _MAX_REQUEST:
            self._drop(conn)

    def _answer(self, conn: socket.socket) -> None:
        mode = self.mode
        if mode == "hang":
            return
        if mode in ("ok", "error"):
            status = "200 OK" if mode == "ok" else "500 Internal Server Error"
            body = b"ok\n" if mode == "ok" else b"failing\n"
            self._send(conn, _head(status, len(body)) + body)
            self._drop(conn)
        elif mode == "slow_body":
            self._send(conn, _head("200 OK", 4096) + b"o")
            self._trickling[conn] = 4095
        elif mode == "cut":
            self._send(conn, _head("200 OK", 100) + b"ok\n12345")
            self._drop(conn)

    def _send(self, conn: socket.socket, data: bytes) -> None:
        try:
            # A fresh socket's send buffer takes these few hundred bytes in one call.
            conn.send(data)
        except OSError:
            pass

    def _drop(self, conn: socket.socket) -> None:
        self._buffers.pop(conn, None)
        self._trickling.pop(conn, None)
        if conn in self._owned:
            self._release(conn)

    def _tick_loop(self) -> None:
        while not self._stop_ticking.wait(TRICKLE_SECONDS):
            if self._trickling:
                self._call(self._trickle)

    def _trickle(self) -> None:
        for conn, left in list(self._trickling.items()):
            self._send(conn, b"k")
            if left <= 1:
                self._drop(conn)
            else:
                self._trickling[conn] = left - 1


def _head(status: str, length: int) -> bytes:
    lines = [
        f"HTTP/1.1 {status}",
        "Content-Type: text/plain",
        f"Content-Length: {length}",
        "Connection: close",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _queue_info(listener: socket.socket) -> tuple[int, int]:
    """(connections waiting in the accept queue, queue limit) of a listening socket on Linux."""
    # Linux reports them in tcpi_unacked and tcpi_sacked, the 32-bit fields at byte 24.
    info = listener.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 32)
    queued, limit = struct.unpack_from("II", info, 24)
    return int(queued), int(limit)
