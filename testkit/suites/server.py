"""The suite's endpoint: a TLS server that presents each case's certificate and watches.

It listens on one address for the whole run; :meth:`SuiteServer.arm` points it at the
current case, and each connection that arrives is that case's. The handshake is
driven here over ``ssl.MemoryBIO`` (as :mod:`edge.tls.session` does, for the same
reason: asyncio's TLS transport hides why a handshake failed), which lets this module

- read the ClientHello (SNI, ALPN, versions, cipher suites) before answering it;
- learn the alert the device sent when it refused: from the cleartext alert record
  (TLS 1.2) or from OpenSSL's reason once it has decrypted it (TLS 1.3);
- re-cut the cleartext handshake records into small ones, or into maximum-size
  ones whatever Max Fragment Length the device asked for (``split_records``);
- count what went each way, and time every packet.

After the handshake the device's first bytes say what it speaks (``0x10`` is an MQTT
CONNECT, ``GET``/``POST``... is HTTP), and :mod:`testkit.suites.behaviour` plays the
case's part. Nothing here decides a verdict: :mod:`testkit.suites.verdicts` does,
from the :class:`ConnRecord` list this fills.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from edge.tls.clienthello import ClientFlightReader
from edge.tls.verdict import failure_from_ssl_error
from edge.tls.wire import ALERT_CODES, ALERT_NAMES, record_header
from testkit.suites.model import Case
from testkit.suites.pki import ServerMaterial

__all__ = ["AppConn", "CaseRuntime", "ConnRecord", "SuiteServer", "build_context"]

_CT_CCS, _CT_ALERT, _CT_HANDSHAKE = 20, 21, 22
#: TLS 1.3 suites by code, for the ClientHello evidence and the cipher cases.
TLS13_SUITES = {
    0x1301: "TLS_AES_128_GCM_SHA256",
    0x1302: "TLS_AES_256_GCM_SHA384",
    0x1303: "TLS_CHACHA20_POLY1305_SHA256",
    0x1304: "TLS_AES_128_CCM_SHA256",
    0x1305: "TLS_AES_128_CCM_8_SHA256",
}
_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


def build_context(case: Case, material: ServerMaterial, client_ca: str) -> ssl.SSLContext:
    """The server context for ``case``: its certificate, versions, cipher and ALPN."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server = case.server
    if material.profile in ("sha1", "rsa1024"):
        # OpenSSL's default security level refuses to even load these; the point of
        # the case is to see whether the *device* refuses them.
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    ctx.load_cert_chain(str(material.chain_path), str(material.key_path))
    versions = sorted(_VERSIONS[v] for v in server.tls_versions)
    if server.split_records is not None:
        # Only TLS 1.2 sends the Certificate message in cleartext records we can re-cut.
        versions = [ssl.TLSVersion.TLSv1_2]
    cipher = server.cipher
    if cipher is not None and not cipher.startswith("TLS_"):
        versions = [ssl.TLSVersion.TLSv1_2]
        ctx.set_ciphers(cipher)
    if cipher is not None and cipher.startswith("TLS_"):
        versions = [ssl.TLSVersion.TLSv1_3]
    ctx.minimum_version, ctx.maximum_version = versions[0], versions[-1]
    if server.alpn:
        ctx.set_alpn_protocols(list(server.alpn))
    # A device that sends a certificate gets it checked against the suite root; one
    # that sends none is still served (the cases are about the device's checks).
    ctx.verify_mode = ssl.CERT_OPTIONAL
    ctx.load_verify_locations(client_ca)
    ctx.num_tickets = 0
    return ctx


@dataclass(kw_only=True)
class ConnRecord:
    """Everything seen on one connection of a case; times are seconds from the case start."""

    index: int
    opened: float
    peer: str = ""
    sni: str | None = None
    alpn_offered: list[str] = field(default_factory=list)
    versions_offered: list[str] = field(default_factory=list)
    suites_offered: list[int] = field(default_factory=list)
    extensions_offered: list[int] = field(default_factory=list)
    handshake_done: float | None = None
    tls_version: str | None = None
    cipher: str | None = None
    alpn: str | None = None
    #: The alert the device sent, by name ("" when it just closed).
    alert: str = ""
    #: How the handshake ended when it did not complete (OpenSSL's reason or "EOF").
    handshake_failure: str = ""
    #: Set when the edge itself ended the handshake (e.g. required ALPN missing).
    edge_refusal: str = ""
    raw_in: int = 0
    raw_out: int = 0
    #: Raw bytes the edge had sent when the device stopped the handshake.
    out_at_failure: int = 0
    app_in: int = 0
    first_app: float | None = None
    protocol: str | None = None
    packets: list[dict[str, Any]] = field(default_factory=list)
    closed: float | None = None
    closed_by: str = ""
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready evidence for reports."""
        out: dict[str, Any] = {
            "index": self.index,
            "opened_s": round(self.opened, 4),
            "sni": self.sni,
            "alpn_offered": self.alpn_offered,
            "versions_offered": self.versions_offered,
            "cipher_suites_offered": len(self.suites_offered),
            "extensions_offered": self.extensions_offered,
            "handshake_done_s": None
            if self.handshake_done is None
            else round(self.handshake_done, 4),
            "tls_version": self.tls_version,
            "cipher": self.cipher,
            "alpn": self.alpn,
            "alert_from_device": self.alert,
            "handshake_failure": self.handshake_failure,
            "edge_refusal": self.edge_refusal,
            "bytes_from_device": self.raw_in,
            "bytes_to_device": self.raw_out,
            "app_bytes_from_device": self.app_in,
            "first_app_byte_s": None if self.first_app is None else round(self.first_app, 4),
            "protocol": self.protocol,
            "packets": self.packets,
            "closed_s": None if self.closed is None else round(self.closed, 4),
            "closed_by": self.closed_by,
        }
        if self.notes:
            out["notes"] = self.notes
        return out


class CaseRuntime:
    """The live state of the case being run: its connections and a change signal."""

    def __init__(
        self, case: Case, material: ServerMaterial | None, context: ssl.SSLContext | None
    ) -> None:
        self.case = case
        self.material = material
        self.context = context
        self.started = time.monotonic()
        self.conns: list[ConnRecord] = []
        self.changed = asyncio.Event()
        #: Behaviour state shared across the case's connections.
        self.state: dict[str, Any] = {}
        self._open: set[AppConn] = set()
        #: Set when the engine starts stopping the device: a close after it is the
        #: case ending, not the device's decision.
        self.stopped_at: float | None = None

    def now(self) -> float:
        """Seconds since the case started."""
        return time.monotonic() - self.started

    def notify(self) -> None:
        """Wake the engine: something about this case changed."""
        self.changed.set()

    @property
    def open_connections(self) -> int:
        """Connections not closed yet."""
        return sum(1 for c in self.conns if c.closed is None)

    async def close_all(self) -> None:
        """Close every connection still open (the case is over)."""
        for conn in list(self._open):
            conn.abort()


class AppConn:
    """One connection after (and during) its handshake: decrypted bytes in and out."""

    def __init__(
        self,
        rt: CaseRuntime,
        rec: ConnRecord,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        assert rt.context is not None
        self.rt = rt
        self.rec = rec
        self._reader = reader
        self._writer = writer
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self.tls = rt.context.wrap_bio(self._in, self._out, server_side=True)
        self._split = rt.case.server.split_records
        self._ccs_sent = False
        self._pending_out = b""
        self._client_ccs = False
        self._raw_buf = b""
        self.closed = False

    @property
    def local_port(self) -> int:
        """The endpoint's port as this connection reached it (for a Server Reference)."""
        sock = self._writer.get_extra_info("sockname")
        return int(sock[1]) if sock else 0

    # -- raw I/O ----------------------------------------------------------------------

    def _flush(self) -> None:
        data = self._out.read()
        if not data or self.closed:
            return
        if self._split is not None and (self._pending_out or not self._ccs_sent):
            data = self._recut(self._pending_out + data)
        self.rec.raw_out += len(data)
        self._writer.write(data)

    def _recut(self, data: bytes) -> bytes:
        # Re-cut the cleartext handshake into records of _split bytes: consecutive
        # handshake records are joined, then cut (RFC 5246 6.2.1 lets a handshake
        # message span records, and records carry several messages). Small sizes test
        # reassembly; 16384 sends maximum-size records whatever Max Fragment Length the
        # device asked for. Stops at our ChangeCipherSpec: later records are encrypted.
        assert self._split is not None
        out = bytearray()
        pending = bytearray()
        version = 0x0303

        def cut() -> None:
            for i in range(0, len(pending), self._split or 1):
                piece = pending[i : i + (self._split or 1)]
                out.extend(
                    bytes([_CT_HANDSHAKE])
                    + version.to_bytes(2, "big")
                    + len(piece).to_bytes(2, "big")
                    + piece
                )
            pending.clear()

        pos = 0
        while (header := record_header(data, pos)) is not None:
            ctype, record_version, length = header
            end = pos + 5 + length
            if end > len(data):
                break
            if ctype == _CT_HANDSHAKE and not self._ccs_sent:
                version = record_version
                pending += data[pos + 5 : end]
            else:
                cut()
                if ctype == _CT_CCS:
                    self._ccs_sent = True
                out += data[pos:end]
            pos = end
        cut()
        self._pending_out = data[pos:]
        return bytes(out)

    def _watch_client_records(self, data: bytes) -> None:
        # Cleartext alerts come before the client's ChangeCipherSpec (TLS 1.2); the
        # name of an encrypted one (TLS 1.3) comes from OpenSSL's error instead.
        if self._client_ccs:
            return
        buf = self._raw_buf + data
        pos = 0
        while (header := record_header(buf, pos)) is not None:
            ctype, _, length = header
            if pos + 5 + length > len(buf):
                break
            if ctype == _CT_ALERT and length == 2:
                self.rec.alert = ALERT_NAMES.get(buf[pos + 6], f"alert {buf[pos + 6]}")
            elif ctype == _CT_CCS:
                self._client_ccs = True
                self._raw_buf = b""
                return
            pos += 5 + length
        self._raw_buf = buf[pos:][:65536]

    async def _read_raw(self, timeout: float | None) -> bytes:
        data = await asyncio.wait_for(self._reader.read(65536), timeout)
        self.rec.raw_in += len(data)
        return data

    def send_alert(self, name: str) -> None:
        """Send a cleartext fatal alert (for refusals the edge decides itself)."""
        self.rec.raw_out += 7
        self._writer.write(bytes([_CT_ALERT, 3, 3, 0, 2, 2, ALERT_CODES[name]]))

    # -- handshake --------------------------------------------------------------------

    async def handshake(self, timeout: float) -> bool:
        """Drive the handshake; True when it completed."""
        flight = ClientFlightReader()
        hello_seen = False
        deadline = time.monotonic() + timeout
        while True:
            try:
                data = await self._read_raw(max(0.01, deadline - time.monotonic()))
            except TimeoutError:
                self.rec.handshake_failure = "timeout: the device stalled mid-handshake"
                self.rec.out_at_failure = self.rec.raw_out
                return False
            if not data:
                self.rec.handshake_failure = "EOF: the device closed the connection"
                self.rec.closed_by = "device"
                self.rec.out_at_failure = self.rec.raw_out
                return False
            self._watch_client_records(data)
            if not hello_seen:
                flight.receive_data(data)
                hello = flight.client_hello
                if hello is not None:
                    hello_seen = True
                    self._note_hello(hello.sni, hello.alpn, hello.versions, hello.cipher_suites)
                    self.rec.extensions_offered = list(hello.extensions)
                    refusal = self._edge_refusal()
                    if refusal:
                        name, reason = refusal
                        self.rec.edge_refusal = reason
                        self.send_alert(name)
                        self.rec.closed_by = "edge"
                        return False
                elif flight.done:
                    self.rec.handshake_failure = f"not a TLS ClientHello ({flight.reason})"
                    self.rec.edge_refusal = f"the device did not start TLS: {flight.reason}"
                    return False
            self._in.write(data)
            try:
                self.tls.do_handshake()
            except ssl.SSLWantReadError:
                self._flush()
                continue
            except ssl.SSLError as exc:
                self.rec.out_at_failure = self.rec.raw_out
                outgoing = self._out.read()
                failure = failure_from_ssl_error(
                    exc, tls_version=self.tls.version(), outgoing=outgoing
                )
                if failure.alert_from_client:
                    self.rec.alert = self.rec.alert or failure.alert
                elif isinstance(exc, ssl.SSLCertVerificationError):
                    self.rec.edge_refusal = (
                        f"the device's own certificate failed: {exc.verify_message}"
                    )
                elif failure.library_reason not in ("", "EOF", "UNEXPECTED_EOF_WHILE_READING"):
                    # The edge's OpenSSL gave up on what the device offered.
                    self.rec.edge_refusal = (
                        f"the edge ended the handshake ({failure.library_reason}): nothing in the "
                        "device's ClientHello matches the case's version, cipher suite or key type"
                    )
                self.rec.handshake_failure = failure.library_reason or str(exc)
                self.rec.closed_by = "device" if not self.rec.edge_refusal else "edge"
                if outgoing:
                    self._writer.write(outgoing)
                return False
            self._flush()
            self.rec.handshake_done = self.rt.now()
            self.rec.tls_version = self.tls.version()
            cipher = self.tls.cipher()
            self.rec.cipher = cipher[0] if cipher else None
            self.rec.alpn = self.tls.selected_alpn_protocol()
            return True

    def _note_hello(
        self,
        sni: str | None,
        alpn: tuple[str, ...],
        versions: tuple[str, ...],
        suites: tuple[int, ...],
    ) -> None:
        self.rec.sni = sni
        self.rec.alpn_offered = list(alpn)
        self.rec.versions_offered = list(versions)
        self.rec.suites_offered = list(suites)
        self.rt.notify()

    def _edge_refusal(self) -> tuple[str, str] | None:
        server = self.rt.case.server
        if server.alpn and not set(server.alpn) & set(self.rec.alpn_offered):
            offered = ", ".join(self.rec.alpn_offered) or "no ALPN extension"
            return (
                "no_application_protocol",
                f"the case requires ALPN {' or '.join(server.alpn)}; the device offered {offered}",
            )
        cipher = server.cipher
        if cipher is not None and cipher.startswith("TLS_"):
            names = {TLS13_SUITES.get(c) for c in self.rec.suites_offered}
            if cipher not in names:
                return (
                    "handshake_failure",
                    f"the device did not offer {cipher} in its ClientHello",
                )
        return None

    # -- application data -------------------------------------------------------------

    async def recv(self, timeout: float | None) -> bytes | None:
        """Decrypted bytes from the device; ``None`` at its EOF. Raises TimeoutError."""
        while True:
            try:
                data = self.tls.read(65536)
            except ssl.SSLWantReadError:
                data = b""
            except ssl.SSLZeroReturnError:
                self.rec.closed_by = self.rec.closed_by or "device (close_notify)"
                return None
            except ssl.SSLError as exc:
                self.rec.notes.append(f"TLS error after the handshake: {exc}")
                self.rec.closed_by = self.rec.closed_by or "device (TLS error)"
                return None
            if data:
                if self.rec.first_app is None:
                    self.rec.first_app = self.rt.now()
                self.rec.app_in += len(data)
                self.rt.notify()
                return data
            raw = await self._read_raw(timeout)
            if not raw:
                self.rec.closed_by = self.rec.closed_by or "device (EOF)"
                return None
            self._in.write(raw)

    def send(self, data: bytes) -> None:
        """Encrypt and send ``data``."""
        if self.closed:
            return
        self.tls.write(data)
        self._flush()

    def log(self, direction: str, name: str, **detail: Any) -> None:
        """Record one application packet with its time."""
        entry: dict[str, Any] = {"t": round(self.rt.now(), 4), "dir": direction, "packet": name}
        entry.update(detail)
        self.rec.packets.append(entry)
        self.rt.notify()

    def close(self, *, notify_peer: bool = True, by: str = "edge") -> None:
        """Close the connection (with close_notify unless ``notify_peer`` is False)."""
        if self.closed:
            return
        if notify_peer:
            with contextlib.suppress(ssl.SSLError):
                self.tls.unwrap()
            self._flush()
        self.rec.closed_by = self.rec.closed_by or by
        self.closed = True
        self._writer.close()

    def abort(self) -> None:
        """Close at once, without a goodbye (the case ended)."""
        if not self.closed:
            self.rec.closed_by = self.rec.closed_by or "edge (case over)"
            self.closed = True
            self._writer.close()


#: What plays the case after the handshake: ``(conn, first_bytes) -> None``.
Behaviour = Callable[[AppConn, bytes], Awaitable[None]]


class SuiteServer:
    """One listening endpoint; each connection belongs to the case armed when it arrived."""

    def __init__(
        self, host: str, port: int, behaviour: Behaviour, *, first_byte_timeout: float = 10.0
    ) -> None:
        self.host = host
        self.port = port
        self._behaviour = behaviour
        self._first_byte_timeout = first_byte_timeout
        self._server: asyncio.Server | None = None
        self.current: CaseRuntime | None = None
        self.stray = 0

    async def start(self) -> None:
        """Start listening (``port`` 0 picks a free port, then :attr:`port` holds it)."""
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    def arm(self, rt: CaseRuntime | None) -> None:
        """Give the next connections to ``rt`` (``None``: refuse them between cases)."""
        self.current = rt

    async def close(self) -> None:
        """Stop listening."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        rt = self.current
        if rt is None or rt.context is None:
            # Between cases: a late or early connection must not count for any case.
            self.stray += 1
            writer.close()
            return
        peer = writer.get_extra_info("peername")
        rec = ConnRecord(
            index=len(rt.conns) + 1, opened=rt.now(), peer=str(peer[:2]) if peer else ""
        )
        rt.conns.append(rec)
        conn = AppConn(rt, rec, reader, writer)
        rt._open.add(conn)
        rt.notify()
        try:
            if await conn.handshake(rt.case.timeout_s):
                try:
                    first = await conn.recv(
                        self._first_byte_timeout
                        if rt.case.behaviour == "serve"
                        else rt.case.timeout_s
                    )
                except TimeoutError:
                    first = None
                    rec.notes.append("the device sent nothing after the handshake")
                    rec.closed_by = "edge (device idle)"
                if first is not None:
                    await self._behaviour(conn, first)
        except (ConnectionError, OSError) as exc:
            rec.notes.append(f"connection error: {exc}")
            rec.closed_by = rec.closed_by or "device (reset)"
        finally:
            rec.closed = rt.now()
            if rt.stopped_at is not None and not rec.closed_by.startswith("edge"):
                rec.closed_by = "edge (case over: the device was stopped)"
            conn.closed = True
            rt._open.discard(conn)
            writer.close()
            rt.notify()
