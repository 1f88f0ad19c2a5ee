"""Small TCP fault servers on loopback for sync and asyncio tests."""

from __future__ import annotations

import errno
import os
import queue
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Self

LOOPBACK = "127.0.0.1"
_CHUNK = 65536
# A relay stops reading from one side while this much data waits for the other side.
_MAX_PENDING = 1 << 20


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def free_port(host: str = LOOPBACK) -> int:
    """Return a port that was free a moment ago (another process may take it later)."""
    with socket.socket(_family(host)) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _hard_close(sock: socket.socket, reset: bool) -> None:
    """Close a socket; with reset=True the kernel sends RST instead of FIN."""
    if reset:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    sock.close()


class _Closable:
    """Context-manager support for classes with start() and close()."""

    def start(self) -> Self:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class _LoopServer(_Closable):
    """A listener on a free port, served by one background thread running a selector loop.

    Subclasses handle new connections in _on_accept(); all socket work happens in that thread,
    and other threads reach it only through _call().
    """

    def __init__(self, host: str = LOOPBACK) -> None:
        self.host = host
        self.port = 0
        self._accepted = 0
        self._cond = threading.Condition()
        self._sel: selectors.BaseSelector | None = None
        self._thread: threading.Thread | None = None
        self._calls: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._owned: set[socket.socket] = set()
        self._stopping = False
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None

    @property
    def accepted(self) -> int:
        """Connections accepted since start()."""
        return self._accepted

    def wait_accepted(self, count: int, timeout: float = 5.0) -> bool:
        """Block until at least `count` connections were accepted; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self._accepted >= count, timeout)

    def start(self) -> Self:
        if self._thread is not None:
            return self
        self._stopping = False
        listener = socket.create_server((self.host, 0), family=_family(self.host), backlog=128)
        listener.setblocking(False)
        self.port = int(listener.getsockname()[1])
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._sel = selectors.DefaultSelector()
        self._own(listener, selectors.EVENT_READ, lambda mask: self._accept(listener))
        self._sel.register(self._wake_r, selectors.EVENT_READ, lambda mask: self._run_calls())
        name = f"{type(self).__name__}-{self.port}"
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stopping = True
        self._wake()
        thread.join(10)
        for sock in (self._wake_r, self._wake_w):
            if sock is not None:
                sock.close()
        if self._sel is not None:
            self._sel.close()

    def _loop(self) -> None:
        assert self._sel is not None
        try:
            while not self._stopping:
                for key, mask in self._sel.select():
                    # A callback may have closed or changed another socket reported in this
                    # round; skipping its stale event is safe because the selector reports again.
                    if self._sel.get_map().get(key.fd) is key:
                        key.data(mask)
        finally:
            for sock in list(self._owned):
                self._release(sock)
            self._run_calls()

    def _wake(self) -> None:
        try:
            if self._wake_w is not None:
                self._wake_w.send(b"\0")
        except OSError:
            pass

    def _run_calls(self) -> None:
        try:
            while self._wake_r is not None and self._wake_r.recv(_CHUNK):
                pass
        except OSError:
            pass
        while True:
            try:
                self._calls.get_nowait()()
            except queue.Empty:
                return

    def _call(self, fn: Callable[[], None]) -> None:
        """Run fn in the loop thread and wait for it; does nothing once closed."""
        thread = self._thread
        if thread is None:
            return
        if threading.current_thread() is thread:
            fn()
            return
        done = threading.Event()

        def run() -> None:
            try:
                if not self._stopping:
                    fn()
            finally:
                done.set()

        self._calls.put(run)
        self._wake()
        while not done.wait(0.1) and thread.is_alive():
            pass

    def _own(
        self, sock: socket.socket, events: int = 0, callback: Callable[[int], None] | None = None
    ) -> None:
        """Track a socket for release at close, and watch it for `events` if given."""
        self._owned.add(sock)
        self._watch(sock, events, callback)

    def _watch(
        self, sock: socket.socket, events: int, callback: Callable[[int], None] | None
    ) -> None:
        """Set the events watched on a socket; 0 stops watching it."""
        assert self._sel is not None
        registered = self._is_registered(sock)
        if events == 0:
            if registered:
                self._sel.unregister(sock)
        elif registered:
            self._sel.modify(sock, events, callback)
        else:
            self._sel.register(sock, events, callback)

    def _is_registered(self, sock: socket.socket) -> bool:
        assert self._sel is not None
        try:
            self._sel.get_key(sock)
        except (KeyError, ValueError):
            return False
        return True

    def _release(self, sock: socket.socket, reset: bool = False) -> None:
        """Stop watching, forget and close a socket."""
        if self._sel is not None and self._is_registered(sock):
            self._sel.unregister(sock)
        self._owned.discard(sock)
        _hard_close(sock, reset)

    def _accept(self, listener: socket.socket) -> None:
        try:
            conn, _ = listener.accept()
        except OSError:
            # Nothing to accept yet, or the client reset before accept().
            return
        conn.setblocking(False)
        self._on_accept(conn)
        with self._cond:
            self._accepted += 1
            self._cond.notify_all()

    def _on_accept(self, conn: socket.socket) -> None:
        raise NotImplementedError


class SilentListener(_LoopServer):
    """Accepts connections and never sends a byte; keeps them open until close()."""

    def __init__(self, host: str = LOOPBACK) -> None:
        super().__init__(host)
        self._conns: set[socket.socket] = set()

    @property
    def open_connections(self) -> int:
        """Accepted connections that the client has not closed yet."""
        return len(self._conns)

    def close(self) -> None:
        super().close()
        self._conns.clear()

    def _on_accept(self, conn: socket.socket) -> None:
        self._conns.add(conn)
        # Reading (and discarding) client bytes is how a peer close is noticed.
        self._own(conn, selectors.EVENT_READ, lambda mask: self._discard_input(conn))

    def _discard_input(self, conn: socket.socket) -> None:
        try:
            if conn.recv(_CHUNK):
                return
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            pass
        self._conns.discard(conn)
        self._release(conn)


class ClosingListener(_LoopServer):
    """Accepts each connection and closes it at once, after sending `banner` if given.

    reset=True makes the close an RST instead of a FIN. The kernel also turns a plain close
    into an RST when the client had already sent bytes that were not read.
    """

    def __init__(self, banner: bytes = b"", reset: bool = False, host: str = LOOPBACK) -> None:
        super().__init__(host)
        self.banner = banner
        self.reset = reset

    def _on_accept(self, conn: socket.socket) -> None:
        try:
            if self.banner:
                # The send buffer of a new socket takes a small banner in one call.
                conn.send(self.banner)
        except OSError:
            pass
        _hard_close(conn, self.reset)


class HangingPort(_Closable):
    """A loopback port where connect() neither succeeds nor is refused: it hangs until timeout.

    Linux only. The port listens with backlog 0 and never calls accept(). start() fills the
    accept queue with its own connections. The kernel then drops every new SYN, so clients
    retransmit SYNs until their own timeout. After close() connects are refused.
    """

    def __init__(self, host: str = LOOPBACK) -> None:
        self.host = host
        self.port = 0
        self._listener: socket.socket | None = None
        self._fillers: list[socket.socket] = []

    def start(self) -> Self:
        if self._listener is not None:
            return self
        self._listener = socket.socket(_family(self.host), socket.SOCK_STREAM)
        try:
            self._listener.bind((self.host, 0))
            self._listener.listen(0)
            self.port = int(self._listener.getsockname()[1])
            while True:
                queued, limit = self._queue_info()
                # The kernel drops SYNs once more than `limit` connections wait in the queue.
                if queued > limit:
                    break
                self._fillers.append(socket.create_connection((self.host, self.port), 5))
                self._await_queued(queued + 1)
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        for sock in self._fillers:
            sock.close()
        self._fillers.clear()
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    def _queue_info(self) -> tuple[int, int]:
        """(connections waiting in the accept queue, queue limit) from the kernel's tcp_info."""
        assert self._listener is not None
        # For a listening socket Linux reports the queue length in tcpi_unacked and the limit
        # in tcpi_sacked, the two 32-bit fields at byte offset 24.
        info = self._listener.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 32)
        queued, limit = struct.unpack_from("II", info, 24)
        return int(queued), int(limit)

    def _await_queued(self, count: int) -> None:
        """Wait until the server side has queued a filler whose client side is connected."""
        deadline = time.monotonic() + 5
        while self._queue_info()[0] < count:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"timed out waiting for {count} connections in the accept queue"
                    f" of port {self.port}"
                )
            time.sleep(0.005)


class _Side:
    """One socket of a relayed connection, with the bytes waiting to be written to it."""

    __slots__ = ("sock", "peer", "out", "eof", "shut", "connecting", "callback")

    def __init__(self, sock: socket.socket, connecting: bool = False) -> None:
        self.sock = sock
        self.callback: Callable[[int], None] | None = None
        self.peer: _Side = self
        self.out = bytearray()
        self.eof = False  # this socket has sent its EOF
        self.shut = False  # EOF was passed on to this socket
        self.connecting = connecting


class Relay(_LoopServer):
    """A TCP proxy to `target` that can silently stop forwarding without closing anything.

    freeze() stops all reading and writing on both sides of every connection (connections
    accepted while frozen wait too), thaw() resumes, cut() closes the current connections.
    Upstream connects start as soon as a client is accepted, frozen or not.
    """

    def __init__(self, target: tuple[str, int], host: str = LOOPBACK) -> None:
        super().__init__(host)
        self.target = target
        self._frozen = False
        self._pairs: dict[_Side, _Side] = {}  # client side -> upstream side

    @property
    def connections(self) -> int:
        """Relayed connections currently open."""
        return len(self._pairs)

    @property
    def frozen(self) -> bool:
        """True between freeze() and thaw()."""
        return self._frozen

    def close(self) -> None:
        super().close()
        self._pairs.clear()

    def freeze(self) -> None:
        """Stop forwarding in both directions; returns once no more bytes will move."""
        self._call(lambda: self._set_frozen(True))

    def thaw(self) -> None:
        """Resume forwarding, including bytes that arrived while frozen."""
        self._call(lambda: self._set_frozen(False))

    def cut(self, reset: bool = False) -> None:
        """Close both sockets of every current connection, with RST if reset else FIN."""

        def cut_all() -> None:
            for client in list(self._pairs):
                self._drop_pair(client, reset)

        self._call(cut_all)

    def _set_frozen(self, frozen: bool) -> None:
        self._frozen = frozen
        for client, upstream in self._pairs.items():
            self._update(client)
            self._update(upstream)

    def _on_accept(self, conn: socket.socket) -> None:
        host, port = self.target
        upstream = socket.socket(_family(host))
        upstream.setblocking(False)
        if upstream.connect_ex((host, port)) not in (0, errno.EINPROGRESS):
            upstream.close()
            _hard_close(conn, reset=True)
            return
        client, remote = _Side(conn), _Side(upstream, connecting=True)
        client.peer, remote.peer = remote, client
        self._pairs[client] = remote
        for side in (client, remote):
            # One callback per socket, so that re-watching with the same events changes nothing.
            side.callback = lambda mask, side=side: self._on_ready(side, mask)
            self._own(side.sock)
            self._update(side)

    def _update(self, side: _Side) -> None:
        """Watch a socket for what it can do now; nothing at all while frozen."""
        events = 0
        if self._frozen:
            pass
        elif side.connecting:
            events = selectors.EVENT_WRITE
        else:
            if not side.eof and len(side.peer.out) < _MAX_PENDING:
                events |= selectors.EVENT_READ
            if side.out:
                events |= selectors.EVENT_WRITE
        self._watch(side.sock, events, side.callback)

    def _on_ready(self, side: _Side, mask: int) -> None:
        try:
            if side.connecting:
                err = side.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    raise OSError(err, os.strerror(err))
                side.connecting = False
            else:
                if mask & selectors.EVENT_WRITE and side.out:
                    del side.out[: side.sock.send(side.out)]
                if mask & selectors.EVENT_READ:
                    data = side.sock.recv(_CHUNK)
                    side.peer.out += data
                    side.eof = not data
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            # A reset or failed connect on one side is passed on to the other as a reset.
            self._drop_pair(side, reset=True)
            return
        for one in (side, side.peer):
            dest = one.peer
            if one.eof and not dest.out and not dest.connecting and not dest.shut:
                dest.shut = True
                try:
                    dest.sock.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
        if side.eof and side.peer.eof and not side.out and not side.peer.out:
            self._drop_pair(side, reset=False)
            return
        self._update(side)
        self._update(side.peer)

    def _drop_pair(self, side: _Side, reset: bool) -> None:
        client = side if side in self._pairs else side.peer
        if self._pairs.pop(client, None) is not None:
            self._release(client.sock, reset)
            self._release(client.peer.sock, reset)
