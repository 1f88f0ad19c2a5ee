"""Private DNS servers on loopback for tests: a scripted UDP server and a real dnsmasq."""

from __future__ import annotations

import dataclasses
import heapq
import ipaddress
import logging
import os
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from tests.servers.process import wait_for_stop

__all__ = [
    "Answer",
    "Behaviour",
    "CName",
    "Delayed",
    "Dnsmasq",
    "Empty",
    "NXDomain",
    "Refused",
    "ScriptedDNSServer",
    "ServFail",
    "Silent",
    "Srv",
    "build_query",
    "parse_reply_rcode",
    "find_dnsmasq",
    "write_resolv_conf",
]

_LOG = logging.getLogger(__name__)

# Wire constants (RFC 1035, RFC 3596, RFC 2782, RFC 6891).
TYPE_A = 1
TYPE_CNAME = 5
TYPE_AAAA = 28
TYPE_SRV = 33
TYPE_OPT = 41
TYPE_ANY = 255
CLASS_IN = 1
CLASS_ANY = 255

RCODE_NOERROR = 0
RCODE_FORMERR = 1
RCODE_SERVFAIL = 2
RCODE_NXDOMAIN = 3
RCODE_REFUSED = 5

_TYPE_NAMES = {
    TYPE_A: "A",
    TYPE_CNAME: "CNAME",
    TYPE_AAAA: "AAAA",
    TYPE_SRV: "SRV",
    TYPE_ANY: "ANY",
}
_TYPE_CODES = {name: code for code, name in _TYPE_NAMES.items()}

_HEADER = struct.Struct("!HHHHHH")
_FLAG_QR = 0x8000
_FLAG_AA = 0x0400
_FLAG_TC = 0x0200
_FLAG_RD = 0x0100
_FLAG_RA = 0x0080

# Plain DNS over UDP allows 512 bytes. With EDNS the client states its own limit, which this
# server caps at 1232 bytes, the size c-ares 1.34 announces and a common choice to avoid
# IP fragmentation.
_PLAIN_UDP_LIMIT = 512
_EDNS_UDP_LIMIT = 1232
_MAX_CNAME_HOPS = 8


def _normalise(name: str) -> str:
    return name.rstrip(".").lower()


# ---------------------------------------------------------------------------
# Behaviours


@dataclasses.dataclass(frozen=True)
class Answer:
    """A and AAAA records; each address goes to the record type of its family.

    A query for a type without matching addresses gets NOERROR with an empty answer.
    """

    ips: tuple[str, ...]

    def __init__(self, ips: Iterable[str] | str) -> None:
        if isinstance(ips, str):
            ips = [ips]
        normalised = tuple(str(ipaddress.ip_address(ip)) for ip in ips)
        object.__setattr__(self, "ips", normalised)


@dataclasses.dataclass(frozen=True)
class NXDomain:
    """An NXDOMAIN reply with no records."""


@dataclasses.dataclass(frozen=True)
class ServFail:
    """A SERVFAIL reply with no records."""


@dataclasses.dataclass(frozen=True)
class Refused:
    """A REFUSED reply with no records."""


@dataclasses.dataclass(frozen=True)
class Silent:
    """No reply at all: the query is dropped."""


@dataclasses.dataclass(frozen=True)
class Empty:
    """A NOERROR reply with no records (the name exists, the type does not)."""


@dataclasses.dataclass(frozen=True)
class CName:
    """A CNAME record to `target`, followed by the records of target's behaviour.

    When target has no behaviour set on the server, the reply holds only the CNAME record
    and carries `rcode`: a CNAME chain that ends nowhere.
    """

    target: str
    rcode: Literal["NOERROR", "NXDOMAIN"] = "NOERROR"

    def __post_init__(self) -> None:
        if self.rcode not in ("NOERROR", "NXDOMAIN"):
            raise ValueError(f"rcode must be NOERROR or NXDOMAIN, not {self.rcode!r}")


@dataclasses.dataclass(frozen=True)
class Srv:
    """SRV records as (priority, weight, port, target); other types get an empty NOERROR."""

    records: tuple[tuple[int, int, int, str], ...]

    def __init__(self, records: Iterable[tuple[int, int, int, str]]) -> None:
        object.__setattr__(self, "records", tuple(tuple(r) for r in records))


@dataclasses.dataclass(frozen=True)
class Delayed:
    """The reply of `then`, sent after `seconds`. Other queries are served meanwhile."""

    seconds: float
    then: Behaviour


Behaviour = Answer | NXDomain | ServFail | Refused | Silent | Empty | CName | Srv | Delayed


def _check_behaviour(behaviour: object) -> None:
    if not isinstance(behaviour, Behaviour):
        expected = ", ".join(kind.__name__ for kind in Behaviour.__args__)
        raise TypeError(f"invalid behaviour {behaviour!r}: expected one of {expected}")
    if isinstance(behaviour, Delayed):
        _check_behaviour(behaviour.then)


# ---------------------------------------------------------------------------
# Wire format


def _encode_name(name: str) -> bytes:
    out = bytearray()
    for label in name.rstrip(".").split(".") if name.rstrip(".") else []:
        raw = label.encode("ascii")
        if not 0 < len(raw) < 64:
            raise ValueError(f"invalid label in name {name!r}")
        out.append(len(raw))
        out += raw
    out.append(0)
    if len(out) > 255:
        raise ValueError(f"name too long: {name!r}")
    return bytes(out)


def _read_name(packet: bytes, offset: int) -> tuple[str, int]:
    """Read an uncompressed name and return (dotted name, offset after it)."""
    labels: list[str] = []
    total = 0
    while True:
        length = packet[offset]
        offset += 1
        if length == 0:
            break
        if length > 63:
            # The question name is the first name in a message, so it has nothing to point back to.
            raise ValueError("unsupported label")
        label = packet[offset : offset + length]
        if len(label) != length:
            raise ValueError("truncated label")
        labels.append(label.decode("latin-1"))
        offset += length
        total += length + 1
        if total > 255:
            raise ValueError("name too long")
    return ".".join(labels), offset


def _skip_record(packet: bytes, offset: int) -> tuple[int, int, int]:
    """Skip one resource record and return (type, class, offset after it)."""
    while True:
        length = packet[offset]
        if length >= 0xC0:
            offset += 2
            break
        offset += 1 + length
        if length == 0:
            break
    rtype, rclass, _ttl, rdlength = struct.unpack_from("!HHIH", packet, offset)
    offset += 10 + rdlength
    if offset > len(packet):
        raise ValueError("truncated record")
    return rtype, rclass, offset


@dataclasses.dataclass(frozen=True)
class _Query:
    ident: int
    flags: int
    name: str
    qtype: int
    qclass: int
    question: bytes  # the question section exactly as received, echoed in the reply
    edns_size: int | None  # the client's UDP payload size when it sent an OPT record


def _parse_query(packet: bytes) -> _Query | None:
    """Parse a standard query with one question, or return None for anything else."""
    if len(packet) < _HEADER.size:
        return None
    ident, flags, qdcount, ancount, nscount, arcount = _HEADER.unpack_from(packet)
    opcode = (flags >> 11) & 0xF
    if flags & _FLAG_QR or opcode != 0 or qdcount != 1:
        return None
    name, offset = _read_name(packet, _HEADER.size)
    qtype, qclass = struct.unpack_from("!HH", packet, offset)
    offset += 4
    question = packet[_HEADER.size : offset]
    edns_size = None
    for _ in range(ancount + nscount + arcount):
        rtype, rclass, offset = _skip_record(packet, offset)
        if rtype == TYPE_OPT:
            edns_size = max(rclass, _PLAIN_UDP_LIMIT)
    return _Query(ident, flags, name, qtype, qclass, question, edns_size)


def _record(owner: bytes, rtype: int, ttl: int, rdata: bytes) -> bytes:
    return owner + struct.pack("!HHIH", rtype, CLASS_IN, ttl, len(rdata)) + rdata


def build_query(name: str, qtype: str = "A", ident: int = 0x5EED) -> bytes:
    """Build a plain recursive query packet, for probing a server without a resolver library."""
    header = _HEADER.pack(ident, _FLAG_RD, 1, 0, 0, 0)
    return header + _encode_name(name) + struct.pack("!HH", _TYPE_CODES[qtype], CLASS_IN)


def parse_reply_rcode(packet: bytes) -> tuple[int, int]:
    """Return (id, rcode) of a reply packet."""
    ident, flags = struct.unpack_from("!HH", packet)
    return ident, flags & 0xF


# ---------------------------------------------------------------------------
# Scripted server


class ScriptedDNSServer:
    """A UDP DNS server on loopback whose answer per name is set by the test.

    Usage::

        with ScriptedDNSServer() as dns:
            dns.set("db.test", Answer(["127.0.0.1", "::1"]))
            dns.set("gone.test", NXDomain())
            dns.set("alias.test", CName("db.test"))
            resolver = aiodns.DNSResolver(nameservers=[dns.nameserver], tries=1)
            ...
            assert dns.queries("db.test") == 1

    Names match case-insensitively and with or without a trailing dot. A name without a
    behaviour gets `default`, which is NXDOMAIN unless given. Behaviours may be changed
    from any thread at any time; a query uses the behaviours in force when it arrives.

    Records carry `ttl`, 0 by default: c-ares 1.34 caches answers for their TTL, and a
    cached answer would hide both a later behaviour change and the query from the counters.

    Limits: UDP only, no TCP listener. A reply larger than 512 bytes (or than the EDNS
    payload size the client announced, capped at 1232) is sent as a truncated header with
    TC set, and the client's retry over TCP then fails; keep record sets small.
    Classes other than IN and ANY get REFUSED. Malformed packets, responses and
    non-QUERY opcodes are ignored without reply. The server thread shares the GIL with the
    test, so a thread that keeps the GIL busy delays replies, up to client timeouts.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        default: Behaviour | None = None,
        ttl: int = 0,
        behaviours: Mapping[str, Behaviour] | None = None,
    ) -> None:
        self.host = host
        self.ttl = ttl
        self._default: Behaviour = default if default is not None else NXDomain()
        self._lock = threading.Lock()
        self._behaviours: dict[str, Behaviour] = {}
        self._counts: dict[str, int] = {}
        self._log: list[tuple[str, str]] = []
        self._sock: socket.socket | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self.errors = 0  # packets whose handling raised; they are dropped
        for name, behaviour in (behaviours or {}).items():
            self.set(name, behaviour)

    # -- configuration -------------------------------------------------------

    def set(self, name: str, behaviour: Behaviour) -> None:
        """Make queries for `name` follow `behaviour` from now on."""
        _check_behaviour(behaviour)
        with self._lock:
            self._behaviours[_normalise(name)] = behaviour

    def unset(self, name: str) -> None:
        """Return `name` to the default behaviour."""
        with self._lock:
            self._behaviours.pop(_normalise(name), None)

    def set_default(self, behaviour: Behaviour) -> None:
        """Set the behaviour for names that have none of their own."""
        _check_behaviour(behaviour)
        with self._lock:
            self._default = behaviour

    def clear(self) -> None:
        """Remove every per-name behaviour; the counters are kept."""
        with self._lock:
            self._behaviours.clear()

    def queries(self, name: str) -> int:
        """Return the number of queries (of any type) received for `name`."""
        with self._lock:
            return self._counts.get(_normalise(name), 0)

    def query_log(self) -> list[tuple[str, str]]:
        """Return all queries so far as (lower-case name, type mnemonic or number), oldest first."""
        with self._lock:
            return list(self._log)

    def reset_queries(self) -> None:
        """Zero the counters and empty the query log."""
        with self._lock:
            self._counts.clear()
            self._log.clear()

    # -- lifecycle -----------------------------------------------------------

    @property
    def port(self) -> int:
        if self._sock is None:
            raise RuntimeError("server is not running")
        return int(self._sock.getsockname()[1])

    @property
    def nameserver(self) -> str:
        """The server as c-ares accepts it in a server list: "127.0.0.1:PORT" or "[::1]:PORT"."""
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"

    def start(self) -> ScriptedDNSServer:
        if self._thread is not None:
            raise RuntimeError("server already started")
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.bind((self.host, 0))
            sock.setblocking(False)
            self._wake_r, self._wake_w = socket.socketpair()
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self._stopping.clear()
        self._thread = threading.Thread(target=self._serve, name="scripted-dns", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread and close the socket. Calling it again does nothing."""
        thread = self._thread
        if thread is not None:
            self._stopping.set()
            assert self._wake_w is not None
            try:
                self._wake_w.send(b"x")
            except OSError:
                pass
            thread.join(timeout=10)
            if thread.is_alive():
                raise RuntimeError("DNS server thread did not stop")
            self._thread = None
        for sock in (self._sock, self._wake_r, self._wake_w):
            if sock is not None:
                sock.close()
        self._sock = self._wake_r = self._wake_w = None

    def __enter__(self) -> ScriptedDNSServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- serving -------------------------------------------------------------

    def _serve(self) -> None:
        assert self._sock is not None and self._wake_r is not None
        sock = self._sock
        pending: list[tuple[float, int, bytes, tuple[Any, ...]]] = []  # (due, seq, reply, address)
        seq = 0
        with selectors.DefaultSelector() as selector:
            selector.register(sock, selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            while not self._stopping.is_set():
                timeout = None
                if pending:
                    timeout = max(0.0, pending[0][0] - time.monotonic())
                events = selector.select(timeout)
                if self._stopping.is_set():
                    break
                now = time.monotonic()
                while pending and pending[0][0] <= now:
                    _due, _seq, reply, address = heapq.heappop(pending)
                    self._send(reply, address)
                if not any(key.fileobj is sock for key, _mask in events):
                    continue
                for _ in range(64):  # drain what is queued, without starving the timers
                    try:
                        packet, address = sock.recvfrom(65535)
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError as exc:
                        _LOG.warning("failed to receive DNS packet: %s", exc)
                        continue
                    try:
                        outcome = self._handle(packet)
                    except Exception:
                        self.errors += 1
                        _LOG.warning("dropped DNS packet from %s", address, exc_info=True)
                        continue
                    if outcome is None:
                        continue
                    delay, reply = outcome
                    if delay > 0:
                        seq += 1
                        heapq.heappush(pending, (now + delay, seq, reply, address))
                    else:
                        self._send(reply, address)

    def _send(self, reply: bytes, address: tuple[Any, ...]) -> None:
        assert self._sock is not None
        try:
            self._sock.sendto(reply, address)
        except OSError as exc:
            _LOG.warning("failed to send DNS reply to %s: %s", address, exc)

    def _handle(self, packet: bytes) -> tuple[float, bytes] | None:
        """Return (delay, reply) for a packet, or None to stay silent."""
        try:
            query = _parse_query(packet)
        except (ValueError, IndexError, struct.error):
            return None
        if query is None:
            return None
        key = _normalise(query.name)
        with self._lock:
            self._counts[key] = self._counts.get(key, 0) + 1
            self._log.append((key, _TYPE_NAMES.get(query.qtype, str(query.qtype))))
            behaviours = dict(self._behaviours)
            default = self._default
            ttl = self.ttl
        if query.qclass not in (CLASS_IN, CLASS_ANY):
            return 0.0, self._reply(query, RCODE_REFUSED, [])
        resolved = _resolve(key, query.qtype, behaviours, default, ttl)
        if resolved is None:
            return None
        delay, rcode, records = resolved
        return delay, self._reply(query, rcode, records)

    def _reply(self, query: _Query, rcode: int, records: list[bytes]) -> bytes:
        flags = _FLAG_QR | _FLAG_AA | _FLAG_RA | (query.flags & _FLAG_RD) | rcode
        opt = b""
        limit = _PLAIN_UDP_LIMIT
        if query.edns_size is not None:
            limit = min(query.edns_size, _EDNS_UDP_LIMIT)
            opt = b"\x00" + struct.pack("!HHIH", TYPE_OPT, _EDNS_UDP_LIMIT, 0, 0)
        arcount = 1 if opt else 0
        header = _HEADER.pack(query.ident, flags, 1, len(records), 0, arcount)
        reply = header + query.question + b"".join(records) + opt
        if len(reply) > limit:
            header = _HEADER.pack(query.ident, flags | _FLAG_TC, 1, 0, 0, arcount)
            reply = header + query.question + opt
        return reply


def _resolve(
    name: str,
    qtype: int,
    behaviours: Mapping[str, Behaviour],
    default: Behaviour,
    ttl: int,
) -> tuple[float, int, list[bytes]] | None:
    """Work out (delay, rcode, answer records) for a query, or None for no reply."""
    owner = b"\xc0\x0c"  # pointer to the question name at offset 12
    records: list[bytes] = []
    delay = 0.0
    behaviour = behaviours.get(name, default)
    seen = {name}
    for _hop in range(_MAX_CNAME_HOPS + 1):
        while isinstance(behaviour, Delayed):
            delay += behaviour.seconds
            behaviour = behaviour.then
        if isinstance(behaviour, Silent):
            return None
        if isinstance(behaviour, NXDomain):
            return delay, RCODE_NXDOMAIN, records
        if isinstance(behaviour, ServFail):
            return delay, RCODE_SERVFAIL, []
        if isinstance(behaviour, Refused):
            return delay, RCODE_REFUSED, []
        if isinstance(behaviour, Empty):
            return delay, RCODE_NOERROR, records
        if isinstance(behaviour, Answer):
            for ip in behaviour.ips:
                address = ipaddress.ip_address(ip)
                if address.version == 4 and qtype in (TYPE_A, TYPE_ANY):
                    records.append(_record(owner, TYPE_A, ttl, address.packed))
                elif address.version == 6 and qtype in (TYPE_AAAA, TYPE_ANY):
                    records.append(_record(owner, TYPE_AAAA, ttl, address.packed))
            return delay, RCODE_NOERROR, records
        if isinstance(behaviour, Srv):
            if qtype in (TYPE_SRV, TYPE_ANY):
                for priority, weight, port, target in behaviour.records:
                    rdata = struct.pack("!HHH", priority, weight, port) + _encode_name(target)
                    records.append(_record(owner, TYPE_SRV, ttl, rdata))
            return delay, RCODE_NOERROR, records
        if isinstance(behaviour, CName):
            target = _normalise(behaviour.target)
            records.append(_record(owner, TYPE_CNAME, ttl, _encode_name(target)))
            if qtype == TYPE_CNAME:
                return delay, RCODE_NOERROR, records
            if target in seen:
                return delay, RCODE_SERVFAIL, []
            seen.add(target)
            if target not in behaviours:
                rcode = RCODE_NXDOMAIN if behaviour.rcode == "NXDOMAIN" else RCODE_NOERROR
                return delay, rcode, records
            owner = _encode_name(target)
            behaviour = behaviours[target]
            continue
        raise TypeError(f"not a behaviour: {behaviour!r}")
    return delay, RCODE_SERVFAIL, []


# ---------------------------------------------------------------------------
# dnsmasq


def find_dnsmasq() -> str | None:
    """Return the path of the dnsmasq binary, or None when it is not installed."""
    found = shutil.which("dnsmasq")
    if found:
        return found
    for candidate in ("/usr/sbin/dnsmasq", "/sbin/dnsmasq"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def _free_port(host: str = "127.0.0.1") -> int:
    """Return a port that is free for both UDP and TCP on `host` at the time of the call."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind((host, 0))
            port = int(udp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind((host, port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free port found")


class Dnsmasq:
    """The real dnsmasq on 127.0.0.1 at a free port, serving only the records it is given.

    `records` maps names to addresses (IPv4 and IPv6 may be mixed); they are written to a
    hosts file in `workdir`. dnsmasq has no upstream server at all, so nothing is ever
    forwarded. Names under `local_domains` that have no record get NXDOMAIN; the default
    "#" stands for every name. Names outside `local_domains` get REFUSED, which is dnsmasq's
    reply when it has no upstream server. Records carry TTL 0 so resolvers do not cache them.

    The process runs in the foreground of its own process group, logs queries to
    `workdir / "dnsmasq.log"` and is stopped by `close()` (also via the context manager).
    """

    def __init__(
        self,
        workdir: Path | str,
        records: Mapping[str, Sequence[str]] | None = None,
        local_domains: Sequence[str] = ("#",),
        *,
        port: int | None = None,
        binary: str | None = None,
        start_timeout: float = 10.0,
    ) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.records: dict[str, list[str]] = {k: list(v) for k, v in (records or {}).items()}
        self.local_domains = [d.strip(".") for d in local_domains]
        self.binary = binary or find_dnsmasq()
        if self.binary is None:
            raise FileNotFoundError("dnsmasq is not installed")
        self.start_timeout = start_timeout
        self.hosts_file = self.workdir / "dnsmasq.hosts"
        self.log_file = self.workdir / "dnsmasq.log"
        self.output_file = self.workdir / "dnsmasq.out"
        self._port = port
        self._proc: subprocess.Popen[bytes] | None = None
        self._output_offsets: dict[Path, int] = {}

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("dnsmasq has not been started")
        return self._port

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def nameserver(self) -> str:
        return f"127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        assert self.binary is not None
        cmd = [
            self.binary,
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--no-poll",
            "--bind-interfaces",
            "--listen-address=127.0.0.1",
            f"--port={self.port}",
            "--pid-file=",
            "--user=root",
            "--group=root",
            f"--addn-hosts={self.hosts_file}",
            "--local-ttl=0",
            "--log-queries",
            f"--log-facility={self.log_file}",
        ]
        cmd += [f"--local=/{domain}/" for domain in self.local_domains]
        return cmd

    def _write_hosts(self) -> None:
        lines = []
        for name, ips in self.records.items():
            for ip in ips:
                lines.append(f"{ipaddress.ip_address(ip)} {name.rstrip('.')}\n")
        self.hosts_file.write_text("".join(lines))

    def start(self) -> Dnsmasq:
        """Start dnsmasq and return once it has answered a query."""
        if self._proc is not None and self._proc.poll() is None:
            raise RuntimeError("dnsmasq is already running")
        if self._port is None:
            self._port = _free_port()
        self._write_hosts()
        self._output_offsets = {
            path: path.stat().st_size if path.exists() else 0
            for path in (self.output_file, self.log_file)
        }
        output = open(self.output_file, "ab")
        try:
            self._proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            output.close()
        try:
            self._wait_ready()
        except BaseException:
            self.kill()
            raise
        return self

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.start_timeout
        probe = build_query("dnsmasq-probe.invalid", "A")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(0.1)
            while True:
                if self._proc.poll() is not None:
                    raise RuntimeError(
                        f"dnsmasq exited with {self._proc.returncode}: {self._diagnostics()}"
                    )
                try:
                    sock.sendto(probe, ("127.0.0.1", self.port))
                    reply = sock.recv(4096)
                    if parse_reply_rcode(reply)[0] == struct.unpack_from("!H", probe)[0]:
                        return
                except (TimeoutError, ConnectionRefusedError):
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"timed out after {self.start_timeout}s waiting for dnsmasq to reply "
                        f"on port {self.port}: {self._diagnostics()}"
                    )

    def _diagnostics(self) -> str:
        """Return what this run of dnsmasq has written so far."""
        parts = []
        for path, offset in self._output_offsets.items():
            if path.exists():
                with path.open("rb") as f:
                    f.seek(offset)
                    text = f.read().decode(errors="replace").strip()
                if text:
                    parts.append(text[-2000:])
        return " | ".join(parts) or "no output"

    def reload(self, records: Mapping[str, Sequence[str]] | None = None) -> None:
        """Rewrite the hosts file (with `records` if given) and make dnsmasq reread it."""
        if records is not None:
            self.records = {k: list(v) for k, v in records.items()}
        self._write_hosts()
        self._signal(signal.SIGHUP)

    def freeze(self) -> None:
        """Suspend the process (SIGSTOP): queries then go unanswered."""
        self._signal(signal.SIGSTOP)
        # Delivery is asynchronous: return only once the process has stopped.
        if self._proc is not None:
            wait_for_stop(self._proc.pid)

    def thaw(self) -> None:
        """Resume a frozen process (SIGCONT)."""
        self._signal(signal.SIGCONT)

    def _signal(self, signum: int) -> None:
        if self._proc is None or self._proc.poll() is not None:
            raise RuntimeError("dnsmasq is not running")
        self._proc.send_signal(signum)

    def stop(self, timeout: float = 5.0) -> None:
        """Terminate with SIGTERM (SIGKILL after `timeout`) and reap the process."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            # A stopped process handles SIGTERM only once it is resumed.
            try:
                proc.send_signal(signal.SIGCONT)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._proc = None

    def kill(self) -> None:
        """Kill with SIGKILL at once and reap the process."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        self._proc = None

    def restart(self) -> None:
        """Stop and start again on the same port."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop the process if it runs. Calling it again does nothing."""
        self.stop()

    def __enter__(self) -> Dnsmasq:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# ---------------------------------------------------------------------------
# resolv.conf


def write_resolv_conf(
    path: Path | str,
    nameserver_port: int,
    search: Sequence[str] = (),
    ndots: int = 1,
    nameserver: str = "127.0.0.1",
) -> Path:
    """Write a resolv.conf that points c-ares at one of these servers.

    c-ares 1.34 takes the port from the nameserver line: "127.0.0.1:PORT" or
    "[127.0.0.1]:PORT" for IPv4, "[::1]:PORT" for IPv6. It skips a line it cannot parse
    ("127.0.0.1 port PORT", "::1:PORT") and, left without servers, uses 127.0.0.1:53.
    glibc understands none of these forms, so such a file is for c-ares only.

    NOTE: pycares 5.2.1 hands `Channel(resolvconf_path=...)` to c-ares as a pointer into a
    buffer it has already freed, so c-ares sometimes opens an empty path and runs with its
    defaults (127.0.0.1:53, no search list) instead of this file. Check `channel.servers`
    after creating the channel, or pass servers, domains and ndots to the channel directly.
    """
    path = Path(path)
    host = f"[{nameserver}]" if ":" in nameserver else nameserver
    lines = [f"nameserver {host}:{nameserver_port}"]
    if search:
        lines.append("search " + " ".join(d.strip(".") for d in search))
    lines.append(f"options ndots:{ndots}")
    path.write_text("\n".join(lines) + "\n")
    return path
