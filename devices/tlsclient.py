"""The device's TLS client: a handshake driver over ``ssl.MemoryBIO`` that sees every byte.

A device could let asyncio wrap its socket, but then it would see only "connected" or
an exception. The firmware developer wants the steps: what the ClientHello offered,
which version the server chose, the server's certificate and the device's verdict on
it, whether the edge asked for a client certificate, and the alert the edge sent back.
So the handshake runs on an :class:`ssl.SSLObject` over two memory BIOs, and every
record crossing the wire is parsed on the way (:class:`RecordReader`).

Layers:

- :class:`TlsClient` is sans-I/O: ``initiate()``, ``receive_data(bytes)``,
  ``receive_eof()``, ``send(bytes)``; it produces bytes (``data_to_send()``) and
  events (``events_received()``). Tests feed it bytes.
- :func:`open_tls` is the thin I/O layer: a plain asyncio TCP connection that pumps
  bytes through a :class:`TlsClient` and stamps each event with the caller's clock.

What can be seen in which version:

- TLS 1.2: the server's Certificate and CertificateRequest travel in cleartext, and so
  does the device's own Certificate message: all three are read off the wire.
- TLS 1.3: everything after ServerHello is encrypted. With ``inspect=True`` and a
  context whose ``keylog_filename`` is set (:func:`make_device_context` does that when
  asked), the server's handshake flight is decrypted from the key log
  (HKDF-Expand-Label + AEAD, RFC 8446 section 7), which reveals the CertificateRequest
  and the server's chain. Without it the request is inferred from the shape of the
  device's own encrypted flight (one record per handshake message: 1 record is
  Finished alone, 3 are Certificate, CertificateVerify, Finished; see
  :meth:`TlsClient._infer_tls13_request`), and reported as inferred.
  The server's leaf certificate is always available after the handshake
  (``getpeercert``). With TLS 1.3 the edge's verdict on the device's certificate comes
  *after* the device's handshake has finished, as an alert on the first read; callers
  therefore count a device as connected only after the protocol's acknowledgement.

Error tree (every foreign exception is translated here, at the boundary)::

    DeviceError                    root of every error the devices package raises
    ├── ConnectFailed              TCP could not connect (refused, unreachable, DNS)
    ├── TlsFailure                 the TLS session failed
    │   ├── ServerCertificateRejected  the device refused the server's certificate
    │   ├── AlertReceived          the edge sent a TLS alert (``alert`` names it)
    │   └── ConnectionLost         the edge closed the connection without an alert
    ├── ProtocolError              the server's MQTT/HTTP/WebSocket bytes made no sense
    │                              (defined in :mod:`devices.protocols`)
    └── DeviceTimeout              a step did not finish in time

Each error carries ``reason``: the short machine-readable word that ends up in
:attr:`devices.device.DeviceResult.reason` (``unknown_ca``, ``server-cert-untrusted``,
``connection-refused``, ...).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import ssl
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from cryptography import x509
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESCCM, AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from certs.compat import load_certificate
from devices.identity import Identity, connection_pointer, release_buffers, release_identity
from edge.tls.wire import (
    ALERT_NAMES,
    CT_ALERT,
    CT_APPLICATION_DATA,
    CT_CHANGE_CIPHER_SPEC,
    CT_HANDSHAKE,
    Cursor,
    record_header,
)

__all__ = [
    "ALERT_NAMES",
    "AlertReceived",
    "ApplicationData",
    "CertificateRequest",
    "ClientCertificateSent",
    "ClientHelloSent",
    "ConnectFailed",
    "ConnectionClosed",
    "ConnectionLost",
    "DeviceError",
    "DeviceTimeout",
    "HandshakeComplete",
    "RecordReader",
    "ServerCertificateRejected",
    "ServerCertificateSeen",
    "ServerHelloReceived",
    "TlsAlert",
    "TlsClient",
    "TlsEvent",
    "TlsFailure",
    "TlsStream",
    "alert_name_from_reason",
    "make_device_context",
    "open_tls",
]


# --------------------------------------------------------------------------- errors


class DeviceError(Exception):
    """Root of every error raised by the ``devices`` package."""

    reason: str = "error"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class ConnectFailed(DeviceError):
    """The TCP connection could not be made."""

    reason = "connection-failed"


class TlsFailure(DeviceError):
    """The TLS session failed."""

    reason = "tls-error"


class ServerCertificateRejected(TlsFailure):
    """The device refused the server's certificate (its own verdict, not the edge's)."""

    reason = "server-cert-untrusted"


class AlertReceived(TlsFailure):
    """The edge sent a fatal TLS alert; ``alert`` is its RFC 8446 name."""

    def __init__(self, alert: str, message: str | None = None) -> None:
        super().__init__(message or f"the edge sent TLS alert {alert}", reason=alert)
        self.alert = alert


class ConnectionLost(TlsFailure):
    """The edge closed the connection without telling why."""

    reason = "closed-by-edge"


class DeviceTimeout(DeviceError):
    """A step did not finish in time."""

    reason = "timeout"


# --------------------------------------------------------------------------- alerts

# OpenSSL names the alert it received in the error reason, with a version prefix
# that says nothing useful to a device developer ("SSLV3_ALERT_", "TLSV13_ALERT_").
_ALERT_PREFIXES = ("SSLV3_ALERT_", "TLSV13_ALERT_", "TLSV1_ALERT_", "TLSV1_")


def alert_name_from_reason(reason: str | None) -> str | None:
    """Map an OpenSSL error reason such as ``TLSV1_ALERT_UNKNOWN_CA`` to ``unknown_ca``.

    Returns None when the reason does not describe a received alert.
    """
    if not reason:
        return None
    upper = reason.upper()
    for prefix in _ALERT_PREFIXES:
        if upper.startswith(prefix):
            name = upper[len(prefix) :].lower()
            return name if name in ALERT_NAMES.values() else None
    return None


# --------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class ClientHelloSent:
    """The device's ClientHello went out: what it offered."""

    sni: str | None
    alpn: tuple[str, ...]
    versions: tuple[str, ...]
    size: int


@dataclass(frozen=True, slots=True)
class ServerHelloReceived:
    """The server chose a version and a cipher suite."""

    version: str
    cipher_suite: str
    hello_retry: bool = False


@dataclass(frozen=True, slots=True)
class ServerCertificateSeen:
    """The server's certificate chain (DER, leaf first), read off the wire."""

    chain: tuple[bytes, ...]
    source: str  # "cleartext" (TLS 1.2) or "decrypted" (TLS 1.3 with the key log)


@dataclass(frozen=True, slots=True)
class CertificateRequest:
    """Whether the server asked for a client certificate.

    ``requested`` is None when that cannot be known (TLS 1.3 without the key log);
    ``how`` says how it was learnt. ``ca_names`` is the number of acceptable CA
    names the server listed (TLS 1.2).
    """

    requested: bool | None
    how: str
    ca_names: int = 0


@dataclass(frozen=True, slots=True)
class ClientCertificateSent:
    """The device's Certificate message: how many certificates it carried."""

    count: int | None  # None: the message was encrypted and not inspected
    how: str


@dataclass(frozen=True, slots=True)
class HandshakeComplete:
    """The device's side of the handshake finished (the edge may still refuse, TLS 1.3)."""

    version: str
    cipher: str
    alpn: str | None
    peer_certificate: dict[str, Any]


@dataclass(frozen=True, slots=True)
class TlsAlert:
    """A fatal alert arrived from the edge (or the device refused the server certificate).

    ``sent_by`` is ``"edge"`` for an alert the edge sent; ``"device"`` when the
    device's own verification failed (``verify_message`` explains it).
    """

    name: str
    sent_by: str
    reason: str
    verify_message: str = ""


@dataclass(frozen=True, slots=True)
class ApplicationData:
    """Decrypted application bytes from the server."""

    data: bytes


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The server closed the connection; ``clean`` if it sent close_notify first."""

    clean: bool


TlsEvent = (
    ClientHelloSent
    | ServerHelloReceived
    | ServerCertificateSeen
    | CertificateRequest
    | ClientCertificateSent
    | HandshakeComplete
    | TlsAlert
    | ApplicationData
    | ConnectionClosed
)

# --------------------------------------------------------------------------- records

_HS_CLIENT_HELLO, _HS_SERVER_HELLO = 1, 2
_HS_ENCRYPTED_EXTENSIONS, _HS_CERTIFICATE, _HS_CERTIFICATE_REQUEST = 8, 11, 13
_HS_SERVER_HELLO_DONE, _HS_FINISHED = 14, 20
_EXT_SNI, _EXT_ALPN, _EXT_SUPPORTED_VERSIONS = 0, 16, 43
_HRR_RANDOM = bytes.fromhex("cf21ad74e59a6111be1d8c021e65b891c2a211167abb8c5e079e09e2c8a8339c")

_VERSION_NAMES = {0x0301: "TLSv1", 0x0302: "TLSv1.1", 0x0303: "TLSv1.2", 0x0304: "TLSv1.3"}

# TLS 1.3 suites: name, AEAD, key length, hash.
_TLS13_SUITES: dict[int, tuple[str, type[AESGCM | ChaCha20Poly1305 | AESCCM], int, str]] = {
    0x1301: ("TLS_AES_128_GCM_SHA256", AESGCM, 16, "sha256"),
    0x1302: ("TLS_AES_256_GCM_SHA384", AESGCM, 32, "sha384"),
    0x1303: ("TLS_CHACHA20_POLY1305_SHA256", ChaCha20Poly1305, 32, "sha256"),
    0x1304: ("TLS_AES_128_CCM_SHA256", AESCCM, 16, "sha256"),
}


def _version_name(code: int) -> str:
    return _VERSION_NAMES.get(code, f"0x{code:04x}")


def _extensions(cur: Cursor) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    if cur.remaining == 0:
        return out
    ext = Cursor(cur.vec(2))
    while ext.remaining:
        kind = ext.u16()
        out[kind] = ext.vec(2)
    return out


def parse_client_hello(body: bytes) -> tuple[bytes, ClientHelloSent]:
    """Parse a ClientHello body; return (client_random, what it offered)."""
    cur = Cursor(body)
    legacy = cur.u16()
    random = cur.take(32)
    cur.vec(1)  # session id
    cur.vec(2)  # cipher suites
    cur.vec(1)  # compression methods
    exts = _extensions(cur)
    sni = None
    if _EXT_SNI in exts:
        names = Cursor(exts[_EXT_SNI])
        lst = Cursor(names.vec(2))
        while lst.remaining:
            kind = lst.u8()
            value = lst.vec(2)
            if kind == 0:
                sni = value.decode("ascii", "replace")
    alpn: list[str] = []
    if _EXT_ALPN in exts:
        lst = Cursor(Cursor(exts[_EXT_ALPN]).vec(2))
        while lst.remaining:
            alpn.append(lst.vec(1).decode("ascii", "replace"))
    if _EXT_SUPPORTED_VERSIONS in exts:
        vers = Cursor(Cursor(exts[_EXT_SUPPORTED_VERSIONS]).vec(1))
        versions = []
        while vers.remaining:
            code = vers.u16()
            # GREASE values (RFC 8701) are noise, not offers.
            if code & 0x0F0F != 0x0A0A:
                versions.append(_version_name(code))
    else:
        versions = [_version_name(legacy)]
    return random, ClientHelloSent(sni, tuple(alpn), tuple(versions), len(body) + 4)


def parse_server_hello(body: bytes) -> tuple[int, int, bool]:
    """Parse a ServerHello body; return (version code, cipher suite code, is HelloRetryRequest)."""
    cur = Cursor(body)
    legacy = cur.u16()
    random = cur.take(32)
    cur.vec(1)
    suite = cur.u16()
    cur.u8()
    exts = _extensions(cur)
    version = legacy
    if _EXT_SUPPORTED_VERSIONS in exts and len(exts[_EXT_SUPPORTED_VERSIONS]) == 2:
        version = int.from_bytes(exts[_EXT_SUPPORTED_VERSIONS], "big")
    return version, suite, random == _HRR_RANDOM


def parse_certificate(body: bytes, *, tls13: bool) -> tuple[bytes, ...]:
    """Parse a Certificate message body into DER certificates, leaf first."""
    cur = Cursor(body)
    if tls13:
        cur.vec(1)  # certificate_request_context
    lst = Cursor(cur.vec(3))
    out = []
    while lst.remaining:
        out.append(lst.vec(3))
        if tls13:
            lst.vec(2)  # per-certificate extensions
    return tuple(out)


def parse_certificate_request_12(body: bytes) -> int:
    """Parse a TLS 1.2 CertificateRequest; return the number of acceptable CA names."""
    cur = Cursor(body)
    cur.vec(1)  # certificate types
    cur.vec(2)  # signature algorithms
    names = Cursor(cur.vec(2))
    count = 0
    while names.remaining:
        names.vec(2)
        count += 1
    return count


class RecordReader:
    """Reassembles one direction's TLS records and handshake messages.

    ``feed(bytes)`` returns a list of ``(kind, payload)``: ``("handshake", (type, body))``
    for a cleartext handshake message, ``("alert", (level, description))`` for a
    cleartext alert, ``("encrypted", (header, fragment))`` for a record that cannot be
    read without keys. After :meth:`encrypted_from_now` every handshake/alert record is
    treated as encrypted.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._hs = bytearray()
        self.encrypted = False

    def encrypted_from_now(self) -> None:
        """Mark the point after which the peer's records are protected."""
        self.encrypted = True

    def feed(self, data: bytes) -> list[tuple[str, Any]]:
        """Consume bytes; return the parsed items (see the class docstring)."""
        self._buf += data
        out: list[tuple[str, Any]] = []
        while (fields := record_header(self._buf)) is not None:
            ctype, _, length = fields
            if len(self._buf) < 5 + length:
                break
            header = bytes(self._buf[:5])
            fragment = bytes(self._buf[5 : 5 + length])
            del self._buf[: 5 + length]
            if ctype == CT_CHANGE_CIPHER_SPEC:
                out.append(("ccs", None))
            elif self.encrypted or ctype == CT_APPLICATION_DATA:
                out.append(("encrypted", (header, fragment)))
            elif ctype == CT_ALERT and len(fragment) >= 2:
                out.append(("alert", (fragment[0], fragment[1])))
            elif ctype == CT_HANDSHAKE:
                self._hs += fragment
                out.extend(("handshake", msg) for msg in _split_handshake(self._hs))
        return out


def _split_handshake(buf: bytearray) -> list[tuple[int, bytes]]:
    """Pop every complete handshake message off ``buf``."""
    out = []
    while len(buf) >= 4:
        length = int.from_bytes(buf[1:4], "big")
        if len(buf) < 4 + length:
            break
        out.append((buf[0], bytes(buf[4 : 4 + length])))
        del buf[: 4 + length]
    return out


# ------------------------------------------------------------------ TLS 1.3 inspection


def _hkdf_expand_label(secret: bytes, label: bytes, length: int, algorithm: str) -> bytes:
    full = b"tls13 " + label
    info = struct.pack("!H", length) + bytes([len(full)]) + full + b"\x00"
    hash_alg: hashes.HashAlgorithm = hashes.SHA384() if algorithm == "sha384" else hashes.SHA256()
    return HKDFExpand(hash_alg, length, info).derive(secret)


class _Tls13Decryptor:
    """Decrypts one direction's TLS 1.3 handshake records with a key-log secret."""

    def __init__(self, suite: int, secret: bytes) -> None:
        _name, aead_cls, key_len, alg = _TLS13_SUITES[suite]
        key = _hkdf_expand_label(secret, b"key", key_len, alg)
        self._iv = _hkdf_expand_label(secret, b"iv", 12, alg)
        self._aead = aead_cls(key)
        self._seq = 0

    def decrypt(self, header: bytes, fragment: bytes) -> tuple[int, bytes]:
        nonce = bytes(a ^ b for a, b in zip(self._iv, self._seq.to_bytes(12, "big"), strict=True))
        self._seq += 1
        plain = self._aead.decrypt(nonce, fragment, header).rstrip(b"\x00")
        if not plain:
            raise ValueError("empty TLS 1.3 inner plaintext")
        return plain[-1], plain[:-1]


def _read_keylog_secret(path: Path, label: str, client_random: bytes) -> bytes | None:
    """Find ``label``'s secret for this connection in an NSS key log file."""
    needle = f"{label} {client_random.hex()} "
    try:
        text = path.read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(needle):
            return bytes.fromhex(line[len(needle) :].strip())
    return None


# --------------------------------------------------------------------------- driver


_READ_SIZE = 65536
_local = threading.local()


def _read_buffer() -> tuple[bytearray, memoryview]:
    """This thread's read buffer and a view of it (``SSLObject.read`` releases the GIL)."""
    found: tuple[bytearray, memoryview] | None = getattr(_local, "buffer", None)
    if found is None:
        buf = bytearray(_READ_SIZE)
        found = _local.buffer = (buf, memoryview(buf))
    return found


class TlsClient:
    """Sans-I/O TLS client: bytes in, bytes and :data:`TlsEvent` out.

    ``inspect`` enables decrypting the TLS 1.3 handshake flights from the context's key
    log (the context must have ``keylog_filename`` set; see :func:`make_device_context`).
    ``identity`` is the device's certificate and key when ``context`` is shared by
    many devices and holds none (:mod:`devices.identity`). ``trace=False`` produces
    only the events that carry data or end the session (:class:`ApplicationData`,
    :class:`TlsAlert`, :class:`ConnectionClosed`): no record is parsed and nothing
    is described, for callers that record no trace (a fleet's held devices).
    """

    def __init__(
        self,
        context: ssl.SSLContext,
        server_hostname: str | None,
        *,
        inspect: bool = False,
        identity: Identity | None = None,
        trace: bool = True,
    ) -> None:
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._ssl = context.wrap_bio(self._in, self._out, server_hostname=server_hostname)
        # The connection's SSL * (0: not readable here), to release memory OpenSSL keeps.
        self._ptr = 0
        self._shared_identity = False
        if identity is not None:
            self._ptr = identity.apply(self._ssl)
            if not self._ptr:
                raise TlsFailure(
                    "cannot set the device's certificate and key on its connection",
                    reason="bad-device-cert",
                )
            # The certificate and key can be dropped after a TLS 1.3 handshake, unless
            # the edge may ask for them again (post-handshake authentication).
            self._shared_identity = not context.post_handshake_auth
        else:
            self._ptr = connection_pointer(self._ssl)
        self._events: list[TlsEvent] = []
        self._app_out = bytearray()
        self._held_out = bytearray()
        self._inspect = inspect
        self._keylog = Path(context.keylog_filename) if context.keylog_filename else None
        # Only the trace needs the parsed records; a held fleet device skips the work
        # (about 0.2 ms of CPU per connect, and two readers per device).
        self._trace = trace
        self._server_records: RecordReader | None = RecordReader() if trace else None
        self._client_records: RecordReader | None = RecordReader() if trace else None
        self._client_random = b""
        self._version = 0
        self._suite = 0
        self._pending_server: list[tuple[bytes, bytes]] = []
        self._pending_client: list[tuple[bytes, bytes]] = []
        self._cert_request_seen = False
        self._client_cert_seen = False
        self.handshake_done = False
        self.closed = False

    # -- public sans-I/O API

    @property
    def ssl_object(self) -> ssl.SSLObject:
        """The underlying :class:`ssl.SSLObject` (for ``getpeercert`` and friends)."""
        return self._ssl

    def initiate(self) -> None:
        """Start the handshake: the ClientHello becomes available from :meth:`data_to_send`."""
        self._step_handshake()

    def receive_data(self, data: bytes) -> None:
        """Feed bytes received from the server."""
        if self.closed:
            return
        if self._server_records is not None:
            self._observe_server(data)
        self._in.write(data)
        if not self.handshake_done:
            self._step_handshake()
        if self.handshake_done and not self.closed:
            self._read_application_data()

    def receive_eof(self) -> None:
        """The server closed the TCP connection."""
        if self.closed:
            return
        self._in.write_eof()
        if self.handshake_done:
            self._read_application_data()
        else:
            self._step_handshake()
        if not self.closed:
            self.closed = True
            self._events.append(ConnectionClosed(clean=False))

    def send(self, data: bytes) -> None:
        """Encrypt application bytes (after the handshake); buffered until it completes.

        Ignored once the session has failed or closed: that was already reported.
        """
        if self.closed:
            return
        if not self.handshake_done:
            self._app_out += data
            return
        self._write(data)

    def _write(self, data: bytes) -> None:
        try:
            self._ssl.write(data)
        except ssl.SSLError as exc:
            # Reported as an event like every other failure, never as a foreign error.
            self._fail(exc)

    def close(self) -> None:
        """Send close_notify (best effort)."""
        if self.handshake_done and not self.closed:
            with contextlib.suppress(ssl.SSLError):
                self._ssl.unwrap()
        self.closed = True

    def data_to_send(self) -> bytes:
        """Bytes to write to the TCP connection now."""
        data = self._out.read()
        if data and self._client_records is not None:
            self._observe_client(data)
        if self._held_out:
            data = bytes(self._held_out) + data
            self._held_out.clear()
        return data

    def events_received(self) -> list[TlsEvent]:
        """Events since the last call, in order."""
        events, self._events = self._events, []
        return events

    # -- internals

    def _step_handshake(self) -> None:
        try:
            self._ssl.do_handshake()
        except ssl.SSLWantReadError:
            return
        except ssl.SSLCertVerificationError as exc:
            self._fail_verification(exc)
            return
        except ssl.SSLError as exc:
            self._fail(exc)
            return
        self.handshake_done = True
        if self._shared_identity and self._ssl.version() == "TLSv1.3":
            # TLS 1.3 has no renegotiation: the device's certificate was sent for good.
            # Its parsed leaf and key (about 9.6 KiB) are dropped from the connection.
            release_identity(self._ptr)
        # With TLS 1.3 the device's last flight (Certificate, CertificateVerify,
        # Finished) was written by this very call: read it now, so that the trace
        # knows what the device sent before it reports the handshake done.
        flight = self._out.read()
        if flight:
            self._held_out += flight
            if self._client_records is not None:
                self._observe_client(flight)
        self._on_handshake_done()
        if self._app_out:
            data = bytes(self._app_out)
            self._app_out.clear()
            self._write(data)

    def _read_application_data(self) -> None:
        # Into one buffer per thread, then copied to its exact size: ``read(65536)``
        # allocated 64 KiB per call and shrank it in place, and the small survivors
        # pinned each 64 KiB hole in the heap: when thousands of held devices
        # closed at once, the fleet's RSS grew by gigabytes.
        buffer, view = _read_buffer()
        while True:
            try:
                # With a buffer, read() returns the count (typeshed says bytes).
                n = cast(int, self._ssl.read(_READ_SIZE, buffer))
                chunk = bytes(view[:n])
            except ssl.SSLWantReadError:
                # An idle connection: OpenSSL keeps its 16 KiB read buffer otherwise.
                release_buffers(self._ptr)
                return
            except ssl.SSLZeroReturnError:
                self.closed = True
                self._events.append(ConnectionClosed(clean=True))
                return
            except ssl.SSLEOFError:
                self.closed = True
                self._events.append(ConnectionClosed(clean=False))
                return
            except ssl.SSLError as exc:
                self._fail(exc)
                return
            if not chunk:
                self.closed = True
                self._events.append(ConnectionClosed(clean=True))
                return
            self._events.append(ApplicationData(chunk))

    def _fail_verification(self, exc: ssl.SSLCertVerificationError) -> None:
        message = str(exc.verify_message or exc.reason or exc)
        code = exc.verify_code
        lowered = message.lower()
        if "hostname" in lowered or "ip address mismatch" in lowered:
            reason = "server-cert-hostname-mismatch"
        elif code == 10 or "expired" in lowered:
            reason = "server-cert-expired"
        elif code == 9 or "not yet valid" in lowered:
            reason = "server-cert-not-yet-valid"
        elif code in (2, 18, 19, 20, 21) or "issuer" in lowered or "self-signed" in lowered:
            reason = "server-cert-untrusted"
        else:
            reason = "server-cert-invalid"
        if self._version == 0x0304 and self._trace:
            # The server's chain is in the encrypted flight: show it if we can.
            self._inspect_tls13()
        self.closed = True
        self._events.append(TlsAlert("", "device", reason, message))

    def _fail(self, exc: ssl.SSLError) -> None:
        self.closed = True
        name = alert_name_from_reason(exc.reason)
        if name is not None:
            self._events.append(TlsAlert(name, "edge", name))
        elif isinstance(exc, ssl.SSLEOFError) or exc.reason in (
            "UNEXPECTED_EOF_WHILE_READING",
            None,
        ):
            self._events.append(ConnectionClosed(clean=False))
        else:
            reason = (exc.reason or "tls-error").lower().replace("_", "-")
            self._events.append(TlsAlert("", "device", reason, str(exc)))

    def _on_handshake_done(self) -> None:
        if not self._trace:
            return
        if self._version == 0x0304:
            self._inspect_tls13()
            if not self._cert_request_seen:
                self._infer_tls13_request()
        elif not self._cert_request_seen:
            self._events.append(CertificateRequest(False, "cleartext"))
        cipher = self._ssl.cipher()
        peer = self._ssl.getpeercert() or {}
        self._events.append(
            HandshakeComplete(
                version=self._ssl.version() or _version_name(self._version),
                cipher=cipher[0] if cipher else "",
                alpn=self._ssl.selected_alpn_protocol(),
                peer_certificate=dict(peer),
            )
        )
        # The records are no longer needed: drop them so a held device stays small.
        self._server_records = None
        self._client_records = None
        self._pending_server.clear()
        self._pending_client.clear()

    def _infer_tls13_request(self) -> None:
        """Tell from the device's own encrypted flight whether a certificate was asked for.

        The device's last flight is encrypted, but its shape is not: OpenSSL (the only
        TLS stack a device here runs) writes one record per handshake message, so the
        flight is Finished alone (1 record: not requested), an empty Certificate and
        Finished (2: requested, the device had none), or Certificate,
        CertificateVerify and Finished (3: requested and sent).
        """
        flight = [fragment for _header, fragment in self._pending_client]
        how = f"inferred: the device's encrypted flight has {len(flight)} record(s)"
        if len(flight) == 1:
            self._events.append(CertificateRequest(False, how))
        elif len(flight) == 2:
            self._events.append(CertificateRequest(True, how))
            self._events.append(ClientCertificateSent(0, how))
        elif len(flight) == 3:
            self._events.append(CertificateRequest(True, how))
            size = len(flight[0])
            self._events.append(
                ClientCertificateSent(None, f"encrypted, {size}-byte Certificate record")
            )
        else:
            self._events.append(
                CertificateRequest(None, "unknown (TLS 1.3, encrypted; use --trace)")
            )
            self._events.append(ClientCertificateSent(None, "encrypted"))

    def _observe_client(self, data: bytes) -> None:
        assert self._client_records is not None
        for kind, item in self._client_records.feed(data):
            if kind == "handshake":
                self._client_message(*item, tls13=False)
            elif kind == "encrypted":
                self._pending_client.append(item)

    def _client_message(self, mtype: int, body: bytes, *, tls13: bool) -> None:
        try:
            if mtype == _HS_CLIENT_HELLO and not self._client_random:
                self._client_random, hello = parse_client_hello(body)
                self._events.append(hello)
            elif mtype == _HS_CERTIFICATE and not self._client_cert_seen:
                self._client_cert_seen = True
                chain = parse_certificate(body, tls13=tls13)
                how = "decrypted" if tls13 else "cleartext"
                self._events.append(ClientCertificateSent(len(chain), how))
        except ValueError:
            # A record the parser does not follow is not the device's problem: the
            # handshake itself still runs inside OpenSSL.
            pass

    def _observe_server(self, data: bytes) -> None:
        assert self._server_records is not None
        for kind, item in self._server_records.feed(data):
            if kind == "handshake":
                self._server_message(*item, tls13=False)
            elif kind == "alert":
                # A cleartext alert is also reported by OpenSSL as an SSLError; the
                # driver reports it from there so that it appears exactly once.
                pass
            elif kind == "encrypted":
                self._pending_server.append(item)

    def _server_message(self, mtype: int, body: bytes, *, tls13: bool) -> None:
        try:
            if mtype == _HS_SERVER_HELLO:
                version, suite, hrr = parse_server_hello(body)
                self._version, self._suite = version, suite
                suite_name = _TLS13_SUITES.get(suite, (f"0x{suite:04x}",))[0]
                self._events.append(ServerHelloReceived(_version_name(version), suite_name, hrr))
                if version == 0x0304 and not hrr:
                    assert self._server_records is not None
                    self._server_records.encrypted_from_now()
            elif mtype == _HS_CERTIFICATE:
                chain = parse_certificate(body, tls13=tls13)
                self._events.append(
                    ServerCertificateSeen(chain, "decrypted" if tls13 else "cleartext")
                )
            elif mtype == _HS_CERTIFICATE_REQUEST and not self._cert_request_seen:
                self._cert_request_seen = True
                names = 0 if tls13 else parse_certificate_request_12(body)
                how = "decrypted" if tls13 else "cleartext"
                self._events.append(CertificateRequest(True, how, names))
            elif mtype == _HS_SERVER_HELLO_DONE and not self._cert_request_seen:
                self._cert_request_seen = True
                self._events.append(CertificateRequest(False, "cleartext"))
            elif mtype == _HS_FINISHED and tls13 and not self._cert_request_seen:
                self._cert_request_seen = True
                self._events.append(CertificateRequest(False, "decrypted"))
        except ValueError:
            pass

    def _inspect_tls13(self) -> None:
        """Decrypt both handshake flights from the key log, if asked and possible."""
        if not (self._inspect and self._keylog and self._suite in _TLS13_SUITES):
            return
        server_secret = _read_keylog_secret(
            self._keylog, "SERVER_HANDSHAKE_TRAFFIC_SECRET", self._client_random
        )
        client_secret = _read_keylog_secret(
            self._keylog, "CLIENT_HANDSHAKE_TRAFFIC_SECRET", self._client_random
        )
        for secret, records, handler in (
            (server_secret, self._pending_server, self._server_message),
            (client_secret, self._pending_client, self._client_message),
        ):
            if secret is None:
                continue
            decryptor = _Tls13Decryptor(self._suite, secret)
            buf = bytearray()
            for header, fragment in records:
                try:
                    ctype, plain = decryptor.decrypt(header, fragment)
                except (InvalidTag, ValueError):
                    # Past the handshake flight the keys change: stop there.
                    break
                if ctype != CT_HANDSHAKE:
                    break
                buf += plain
                for mtype, body in _split_handshake(buf):
                    handler(mtype, body, tls13=True)


# --------------------------------------------------------------------------- contexts


def make_device_context(
    *,
    ca_pem: str,
    cert_pem: bytes | None = None,
    key_pem: bytes | None = None,
    cert_file: str | None = None,
    key_file: str | None = None,
    alpn: tuple[str, ...] = (),
    keylog_filename: str | None = None,
    check_hostname: bool = True,
    min_version: ssl.TLSVersion | None = None,
    max_version: ssl.TLSVersion | None = None,
) -> ssl.SSLContext:
    """Build a lean device context: only the given roots, the device's own cert and key.

    ``ssl.create_default_context()`` would load every system CA (about 29 ms and
    820 KiB); a device needs only the edge's roots. ``cert_pem``/``key_pem`` are
    written to a private temporary file because :meth:`ssl.SSLContext.load_cert_chain`
    reads only files. ``SSLKEYLOGFILE`` is honoured explicitly: a context built this
    way ignores it otherwise. ``keylog_filename`` (for ``inspect``) wins over it.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = check_hostname
    if min_version is not None:
        ctx.minimum_version = min_version
    if max_version is not None:
        ctx.maximum_version = max_version
    try:
        ctx.load_verify_locations(cadata=ca_pem)
    except (ssl.SSLError, ValueError) as exc:
        raise TlsFailure(f"CA bundle: not a PEM certificate list ({exc})", reason="bad-ca") from exc
    if cert_pem is not None or cert_file is not None:
        _load_cert_chain(ctx, cert_pem, key_pem, cert_file, key_file)
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    keylog = keylog_filename or os.environ.get("SSLKEYLOGFILE")
    if keylog:
        ctx.keylog_filename = keylog
    return ctx


def _load_cert_chain(
    ctx: ssl.SSLContext,
    cert_pem: bytes | None,
    key_pem: bytes | None,
    cert_file: str | None,
    key_file: str | None,
) -> None:
    if cert_file is not None:
        try:
            ctx.load_cert_chain(cert_file, key_file)
        except (ssl.SSLError, OSError) as exc:
            raise TlsFailure(
                f"device certificate {cert_file} / key {key_file or cert_file}: {exc}",
                reason="bad-device-cert",
            ) from exc
        return
    assert cert_pem is not None
    # load_cert_chain reads files only; a memfd keeps the key off the disk where available.
    blob = cert_pem + b"\n" + (key_pem or b"")
    fd = os.memfd_create("device-cert") if hasattr(os, "memfd_create") else -1
    if fd >= 0:
        try:
            os.write(fd, blob)
            path = f"/proc/self/fd/{fd}"
            try:
                ctx.load_cert_chain(path)
            except (ssl.SSLError, OSError) as exc:
                raise TlsFailure(
                    f"device certificate/key PEM: {exc}", reason="bad-device-cert"
                ) from exc
        finally:
            os.close(fd)
        return
    import tempfile

    with tempfile.NamedTemporaryFile("wb") as tmp:  # pragma: no cover - non-Linux
        tmp.write(blob)
        tmp.flush()
        try:
            ctx.load_cert_chain(tmp.name)
        except (ssl.SSLError, OSError) as exc:
            raise TlsFailure(
                f"device certificate/key PEM: {exc}", reason="bad-device-cert"
            ) from exc


def certificate_summary(der: bytes) -> dict[str, Any]:
    """A short description of a certificate for traces: subject, issuer, validity, SANs."""
    try:
        cert = load_certificate(der, pem=False)
    except ValueError:
        return {"error": "not a parseable certificate"}
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [str(v) for v in san.get_values_for_type(x509.DNSName)]
        names += [str(v) for v in san.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        names = []
    except (ValueError, x509.DuplicateExtension) as exc:
        # cryptography is stricter than OpenSSL here (e.g. an IP address SAN of 5 bytes).
        names = [f"(extensions cannot be parsed: {exc})"]
    return {
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": cert.not_valid_after_utc.isoformat(),
        "san": names,
        "sha256": hashlib.sha256(der).hexdigest(),
    }


# --------------------------------------------------------------------------- I/O layer

Clock = Callable[[], float]
EventSink = Callable[[TlsEvent, float], None]


class _Pump(asyncio.Protocol):
    """Moves bytes between a TCP transport and a :class:`TlsClient`."""

    def __init__(self, stream: TlsStream) -> None:
        self.stream = stream

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.stream._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.stream._receive(data)

    def eof_received(self) -> bool | None:
        self.stream._receive_eof()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.stream._receive_eof(reset=isinstance(exc, ConnectionResetError))


class TlsStream:
    """A TLS connection driven by :class:`TlsClient` over a plain asyncio transport.

    Events go to ``sink(event, t)`` as they happen (``t`` from the caller's clock);
    application data is read with :meth:`read`. Failures surface from
    :meth:`wait_handshake` and :meth:`read` as :class:`TlsFailure` subclasses.
    """

    __slots__ = (
        "_buffer",
        "_clock",
        "_error",
        "_handshake",
        "_on_error",
        "_reader",
        "_sink",
        "_spoke",
        "_transport",
        "_waiter",
        "eof",
        "tls",
    )

    def __init__(self, tls: TlsClient, clock: Clock, sink: EventSink | None) -> None:
        self.tls = tls
        self._clock = clock
        self._sink = sink
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._waiter: asyncio.Future[None] | None = None
        self._handshake: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._error: TlsFailure | None = None
        self._reader: Callable[[bytes], None] | None = None
        self._on_error: Callable[[TlsFailure], None] | None = None
        self._spoke: asyncio.Future[bool] | None = None
        self.eof = False

    # -- used by the protocol

    def _receive(self, data: bytes) -> None:
        after_handshake = self.tls.handshake_done
        self.tls.receive_data(data)
        self._flush()
        if after_handshake and self._spoke is not None and not self._spoke.done():
            self._spoke.set_result(True)

    def _receive_eof(self, *, reset: bool = False) -> None:
        if self.eof:
            return
        self.eof = True
        self.tls.receive_eof()
        self._flush()
        if self._error is None or (reset and isinstance(self._error, ConnectionLost)):
            self._error = ConnectionLost(
                "the edge reset the connection (TCP RST)"
                if reset
                else "the edge closed the connection"
            )
        self._settle()

    def _flush(self) -> None:
        out = self.tls.data_to_send()
        if out and self._transport is not None and not self._transport.is_closing():
            self._transport.write(out)
        events = self.tls.events_received()
        if not events:
            # Without a trace no event marks the handshake's end: settle on the state.
            if self.tls.handshake_done and not self._handshake.done():
                self._settle()
            return
        now = self._clock()
        for event in events:
            if isinstance(event, ApplicationData):
                if self._reader is not None:
                    self._reader(event.data)
                else:
                    self._buffer += event.data
            elif isinstance(event, TlsAlert):
                self._error = _alert_error(event)
            elif isinstance(event, ConnectionClosed) and self._error is None:
                self._error = ConnectionLost(
                    "the edge closed the TLS session"
                    if event.clean
                    else "the edge closed the connection"
                )
            if self._sink is not None:
                self._sink(event, now)
        self._settle()

    def _settle(self) -> None:
        if not self._handshake.done():
            if self.tls.handshake_done:
                self._handshake.set_result(None)
            elif self._error is not None:
                self._handshake.set_exception(self._error)
                # Retrieved or not, the failure is also reported by read(); avoid the
                # "exception never retrieved" warning.
                self._handshake.exception()
        waiter = self._waiter
        if waiter is not None and not waiter.done() and (self._buffer or self._error is not None):
            waiter.set_result(None)
        if self._error is not None:
            if self._transport is not None:
                self._transport.close()
            if self._spoke is not None and not self._spoke.done():
                self._spoke.set_result(True)
            on_error, self._on_error = self._on_error, None
            if on_error is not None:
                on_error(self._error)

    # -- public API

    async def wait_handshake(self) -> None:
        """Wait until the device's side of the handshake is done (or failed)."""
        await self._handshake

    async def wait_edge_after_handshake(self, timeout: float) -> bool:
        """Wait until the edge sends anything after the handshake; False after ``timeout``.

        With TLS 1.3 the edge judges the device's certificate after the device's
        handshake is over, then sends either session tickets (accepted) or an alert.
        A device that writes its first request before that races the edge: an edge
        that closes a socket with unread data sends a TCP reset, and the reset can
        destroy the alert still waiting in the device's receive buffer (Mosquitto
        does this). Waiting for the edge's first record first lets the alert through.
        An edge configured without session tickets says nothing, hence ``timeout``.
        """
        if self._error is not None:
            raise self._error
        if self._buffer:
            return True
        self._spoke = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(timeout):
                await self._spoke
        except TimeoutError:
            return False
        finally:
            self._spoke = None
        if self._error is not None and not self._buffer:
            raise self._error
        return True

    def set_reader(
        self,
        reader: Callable[[bytes], None],
        on_error: Callable[[TlsFailure], None],
    ) -> None:
        """Deliver application data to ``reader`` and the final failure to ``on_error``.

        A callback instead of a reading task keeps a held device small: no task, no
        buffer between the TLS object and the protocol parser.
        """
        self._reader = reader
        self._on_error = on_error
        if self._buffer:
            data = bytes(self._buffer)
            self._buffer.clear()
            reader(data)
        self._settle()

    async def read(self) -> bytes:
        """Return the next application bytes; raise the failure once none remain."""
        while not self._buffer:
            if self._error is not None:
                raise self._error
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        data = bytes(self._buffer)
        self._buffer.clear()
        return data

    @property
    def error(self) -> TlsFailure | None:
        """The failure that ended the connection, if any."""
        return self._error

    def write(self, data: bytes) -> None:
        """Encrypt and send application bytes."""
        if self._error is not None:
            raise self._error
        self.tls.send(data)
        self._flush()
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        """Send close_notify and close the TCP connection."""
        if self._transport is None or self._transport.is_closing():
            return
        self.tls.close()
        out = self.tls.data_to_send()
        if out:
            self._transport.write(out)
        self._transport.close()

    def abort(self) -> None:
        """Drop the TCP connection without a TLS goodbye."""
        if self._transport is not None:
            self._transport.abort()


def _alert_error(event: TlsAlert) -> TlsFailure:
    if event.sent_by == "device":
        if event.reason.startswith("server-cert"):
            return ServerCertificateRejected(
                f"the device refused the server certificate: {event.verify_message}",
                reason=event.reason,
            )
        return TlsFailure(f"TLS error: {event.verify_message}", reason=event.reason)
    return AlertReceived(event.name)


async def tcp_connect(host: str, port: int, stream: TlsStream) -> None:
    """Open the TCP connection for ``stream``; translate socket errors to :class:`ConnectFailed`."""
    loop = asyncio.get_running_loop()
    try:
        await loop.create_connection(lambda: _Pump(stream), host, port)
    except ConnectionRefusedError as exc:
        raise ConnectFailed(
            f"TCP connect to {host}:{port} refused", reason="connection-refused"
        ) from exc
    except socket.gaierror as exc:
        raise ConnectFailed(f"cannot resolve {host}: {exc}", reason="dns-failed") from exc
    except OSError as exc:
        raise ConnectFailed(
            f"TCP connect to {host}:{port} failed: {exc}", reason="connection-failed"
        ) from exc


async def open_tls(
    host: str,
    port: int,
    context: ssl.SSLContext,
    *,
    server_hostname: str | None,
    clock: Clock,
    sink: EventSink | None = None,
    inspect: bool = False,
    on_tcp: Callable[[float, float], None] | None = None,
    identity: Identity | None = None,
) -> TlsStream:
    """Connect over TCP, send the ClientHello and return the stream (handshake in flight).

    ``identity``: the device's certificate and key for a shared ``context``.
    ``on_tcp(t_start, t_end)`` reports the TCP connect's timing. Await
    :meth:`TlsStream.wait_handshake` for the device's side of the handshake.
    """
    # Without a sink no one reads the trace's events: skip describing the handshake.
    tls = TlsClient(
        context, server_hostname, inspect=inspect, identity=identity, trace=sink is not None
    )
    stream = TlsStream(tls, clock, sink)
    t0 = clock()
    await tcp_connect(host, port, stream)
    if on_tcp is not None:
        on_tcp(t0, clock())
    tls.initiate()
    stream._flush()
    return stream
