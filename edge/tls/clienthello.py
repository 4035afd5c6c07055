"""Sans-I/O reader of the client's first TLS flight: the ClientHello and, in TLS 1.2, its certificate.

The edge sees every byte a client sends before OpenSSL does (it drives TLS over
``ssl.MemoryBIO``), so it can read what the client *offered* — SNI, ALPN,
protocol versions, cipher suites — even when the handshake then fails, and it
can tell a plain-TCP MQTT or HTTP client apart from a TLS one with a message a
person understands.

In TLS 1.2 the client's ``Certificate`` message travels in cleartext; this reader
keeps it, so a refusal event can name the certificate that was presented even
though Python's ``ssl`` module hands out no peer certificate after a failed
verification. TLS 1.3 encrypts that message, and reading stops at the first
ChangeCipherSpec or encrypted record.

Feed bytes with :meth:`ClientFlightReader.receive_data`, as they arrive, in any
fragmentation (across TCP reads and across TLS records). The reader never raises
on bad input: it records a :attr:`~ClientFlightReader.problem` (``not_tls`` or
``malformed``) with a plain-language :attr:`~ClientFlightReader.reason`.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Final

from edge.tls.errors import ClientHelloError, WireFormatError
from edge.tls.wire import (
    CT_ALERT,
    CT_APPLICATION_DATA,
    CT_CHANGE_CIPHER_SPEC,
    CT_HANDSHAKE,
    Cursor,
    record_header,
)

__all__ = [
    "VERSION_NAMES",
    "ClientFlightReader",
    "ClientHello",
    "FlightProblem",
    "classify_plaintext",
    "version_name",
]

#: Handshake constants used here (RFC 8446, RFC 5246).
_HS_CLIENT_HELLO = 1
_HS_CERTIFICATE = 11
_EXT_SERVER_NAME = 0
_EXT_ALPN = 16
_EXT_SUPPORTED_VERSIONS = 43
# The extensions read beyond their type; the others are only listed.
_EXT_READ = frozenset((_EXT_SERVER_NAME, _EXT_ALPN, _EXT_SUPPORTED_VERSIONS))
# An extension's header: type and length, two big-endian 16-bit numbers.
_TYPE_AND_LENGTH = struct.Struct(">HH")
#: The largest record a peer may send (2^14 plus the expansion RFC 5246 allows).
_MAX_RECORD = 16384 + 2048
#: Stop buffering handshake bytes past this; a client certificate chain is far smaller.
_MAX_CAPTURE = 128 * 1024
#: Keep at most this much of an encrypted (TLS 1.3) client flight.
_MAX_ENCRYPTED = 64 * 1024

VERSION_NAMES: dict[int, str] = {
    0x0300: "SSLv3",
    0x0301: "TLSv1",
    0x0302: "TLSv1.1",
    0x0303: "TLSv1.2",
    0x0304: "TLSv1.3",
}


def version_name(code: int) -> str:
    """Return the usual name of a TLS protocol version code (``0x0303`` -> ``TLSv1.2``)."""
    if code in VERSION_NAMES:
        return VERSION_NAMES[code]
    if code & 0x0F0F == 0x0A0A:
        return "GREASE"
    return f"0x{code:04x}"


class FlightProblem(enum.Enum):
    """Why reading the client's flight stopped early."""

    NOT_TLS = "not_tls"
    MALFORMED = "malformed"


@dataclass(init=False, eq=True, unsafe_hash=True, slots=True)
class ClientHello:
    """What a client offered in its ClientHello. Immutable.

    A dataclass with a hand-written ``__init__`` and ``Final`` fields rather than
    ``frozen=True``: one is built per connect, and compiled (:mod:`edge.compiled`)
    this ``__init__`` is native (see :mod:`edge.core.session`).
    """

    record_version: Final[int]
    legacy_version: Final[int]
    #: Versions offered, newest first as sent: the supported_versions extension if
    #: present (GREASE values dropped), else the legacy version field alone.
    versions: Final[tuple[str, ...]]
    cipher_suites: Final[tuple[int, ...]]
    sni: Final[str | None]
    alpn: Final[tuple[str, ...]]
    extensions: Final[tuple[int, ...]]
    #: The 32-byte client random: the key of this handshake's lines in a key log.
    random: Final[bytes]

    def __init__(
        self,
        *,
        record_version: int,
        legacy_version: int,
        versions: tuple[str, ...],
        cipher_suites: tuple[int, ...],
        sni: str | None,
        alpn: tuple[str, ...],
        extensions: tuple[int, ...],
        random: bytes = b"",
    ) -> None:
        self.record_version = record_version
        self.legacy_version = legacy_version
        self.versions = versions
        self.cipher_suites = cipher_suites
        self.sni = sni
        self.alpn = alpn
        self.extensions = extensions
        self.random = random


def classify_plaintext(data: bytes) -> str:
    """Say in plain words what a non-TLS first read looks like.

    A plain-TCP MQTT client starts with a CONNECT packet (``0x10``); an HTTP client
    with a method name.
    """
    if not data:
        return "the client closed without sending anything"
    first = data[0]
    if first == 0x10:
        return "not TLS: looks like an MQTT CONNECT over plain TCP (the client must use TLS on this port)"
    head = data[:8]
    for method in (b"GET ", b"POST ", b"PUT ", b"HEAD ", b"DELETE ", b"OPTIONS ", b"PATCH "):
        if head.startswith(method[: len(head)]) and len(head) >= min(3, len(method)):
            return "not TLS: looks like plain HTTP (the client must use https:// on this port)"
    if head.startswith(b"PRI *"):
        return "not TLS: looks like cleartext HTTP/2 (the client must use TLS on this port)"
    if head.startswith(b"PROXY"):
        return "not TLS: looks like a PROXY protocol header, which this listener does not accept"
    if first == 0x80 or (first & 0x80 and len(data) > 2 and data[2] == 0x01):
        return "not TLS: an SSLv2-style ClientHello, which no supported version accepts"
    if first in (CT_ALERT, CT_APPLICATION_DATA, CT_CHANGE_CIPHER_SPEC):
        return f"not a ClientHello: the first TLS record has content type {first}"
    return f"not TLS: the first bytes are {data[:8].hex(' ')}"


def parse_client_hello(body: bytes, record_version: int) -> ClientHello:
    """Parse a ClientHello handshake message body (without its 4-byte header).

    Raises :class:`~edge.tls.errors.ClientHelloError` naming the malformed field.
    """
    # Plain index arithmetic on the fixed part and the extension list: this runs
    # once per connection, and a cursor object per field cost several times more.
    n = len(body)
    field = "legacy_version"
    try:
        if n < 35:
            field = "random" if n >= 2 else field
            raise WireFormatError(field)
        legacy_version = (body[0] << 8) | body[1]
        client_random = body[2:34]
        field = "session_id"
        p = 35 + body[34]
        if p > n:
            raise WireFormatError(field)
        field = "cipher_suites"
        if p + 2 > n:
            raise WireFormatError(field)
        suites_len = (body[p] << 8) | body[p + 1]
        p += 2
        if p + suites_len > n:
            raise WireFormatError(field)
        suites = struct.unpack_from(f">{suites_len // 2}H", body, p)
        p += suites_len
        field = "compression_methods"
        if p >= n:
            raise WireFormatError(field)
        p += 1 + body[p]
        if p > n:
            raise WireFormatError(field)
        sni: str | None = None
        alpn: list[str] = []
        versions: list[str] = []
        ext_types: list[int] = []
        if p < n:
            field = "extensions"
            if p + 2 > n:
                raise WireFormatError(field)
            end = p + 2 + ((body[p] << 8) | body[p + 1])
            if end > n:
                raise WireFormatError(field)
            p += 2
            unpack = _TYPE_AND_LENGTH.unpack_from
            while p < end:
                if p + 4 > end:
                    raise WireFormatError(field)
                ext_type, ext_len = unpack(body, p)
                p += 4
                ext_end = p + ext_len
                if ext_end > end:
                    raise WireFormatError(field)
                ext_types.append(ext_type)
                if ext_type not in _EXT_READ:
                    p = ext_end
                    continue
                if ext_type == _EXT_SERVER_NAME:
                    field = "server_name extension"
                    # server_name_list<1..2^16-1> of {name_type, HostName<1..2^16-1>}
                    q, end_list = _vector(body, p, ext_end, 2)
                    while q < end_list:
                        if q + 3 > end_list:
                            raise WireFormatError(field)
                        name_len = (body[q + 1] << 8) | body[q + 2]
                        if q + 3 + name_len > end_list:
                            raise WireFormatError(field)
                        if body[q] == 0 and sni is None:
                            sni = body[q + 3 : q + 3 + name_len].decode("ascii", errors="replace")
                        q += 3 + name_len
                elif ext_type == _EXT_ALPN:
                    field = "ALPN extension"
                    # ProtocolNameList: protocol_name_list<2..2^16-1> of opaque<1..2^8-1>
                    q, end_list = _vector(body, p, ext_end, 2)
                    while q < end_list:
                        name_len = body[q]
                        if q + 1 + name_len > end_list:
                            raise WireFormatError(field)
                        alpn.append(
                            body[q + 1 : q + 1 + name_len].decode("ascii", errors="replace")
                        )
                        q += 1 + name_len
                else:
                    field = "supported_versions extension"
                    # versions<2..254> of 16-bit codes
                    q, end_list = _vector(body, p, ext_end, 1)
                    while q < end_list:
                        if q + 2 > end_list:
                            raise WireFormatError(field)
                        offered = version_name((body[q] << 8) | body[q + 1])
                        if offered != "GREASE":
                            versions.append(offered)
                        q += 2
                field = "extensions"
                p = ext_end
    except WireFormatError:
        raise ClientHelloError(f"ClientHello {field} is truncated or has a bad length") from None
    if not versions:
        versions = [version_name(legacy_version)]
    return ClientHello(
        record_version=record_version,
        legacy_version=legacy_version,
        versions=tuple(versions),
        cipher_suites=suites,
        sni=sni,
        alpn=tuple(alpn),
        extensions=tuple(ext_types),
        random=client_random,
    )


def _vector(body: bytes, start: int, end: int, length_bytes: int) -> tuple[int, int]:
    """Return ``(first, end)`` of the vector at ``start`` whose length prefix is ``length_bytes`` long.

    Raises :class:`~edge.tls.errors.WireFormatError` when the prefix or the vector
    does not fit before ``end`` (the end of the enclosing structure).
    """
    first = start + length_bytes
    if first > end:
        raise WireFormatError("truncated vector length")
    size = (body[start] << 8) | body[start + 1] if length_bytes == 2 else body[start]
    if first + size > end:
        raise WireFormatError("vector longer than its container")
    return first, first + size


def parse_certificate_message(body: bytes) -> tuple[bytes, ...]:
    """Parse a TLS 1.2 ``Certificate`` message body into DER certificates (leaf first)."""
    try:
        certs = Cursor(body).sub(3)
        out: list[bytes] = []
        while not certs.at_end():
            out.append(certs.vec(3))
    except WireFormatError:
        raise ClientHelloError("Certificate message is truncated or has a bad length") from None
    return tuple(out)


class ClientFlightReader:
    """Read the client's cleartext handshake flight, fed in arbitrary pieces.

    After :attr:`client_hello` is set the caller can pick a context (SNI) and start
    the handshake while it keeps feeding the same bytes here, so that a TLS 1.2
    client ``Certificate`` message is captured too (:attr:`client_certificates`).

    Bytes fed after the ClientHello are only kept (up to a limit), not parsed:
    they matter only when the handshake is refused, and most handshakes are not.
    Reading :attr:`client_certificates`, :attr:`encrypted_records` or :attr:`done`
    parses them then.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._hs = bytearray()
        self._seen = 0
        self._records = 0
        self.client_hello: ClientHello | None = None
        self._certificates: tuple[bytes, ...] = ()
        self._encrypted: list[bytes] = []
        self._encrypted_bytes = 0
        self._after_ccs = False
        # Bytes received after the ClientHello, not parsed yet (None before it).
        self._later: list[bytes] | None = None
        self.problem: FlightProblem | None = None
        self.reason = ""
        self._done = False

    @property
    def done(self) -> bool:
        """True once nothing more can be learnt from cleartext (encryption started,
        a problem was found, or the capture limit was reached)."""
        self._catch_up()
        return self._done

    @property
    def client_certificates(self) -> tuple[bytes, ...]:
        """The DER certificates of a cleartext (TLS 1.2) client ``Certificate`` message."""
        self._catch_up()
        return self._certificates

    @property
    def encrypted_records(self) -> list[bytes]:
        """Encrypted client records (TLS 1.3 handshake flight), whole, in order.

        Kept for :mod:`edge.tls.keylog` to decrypt the Certificate of a refused device.
        """
        self._catch_up()
        return self._encrypted

    def receive_data(self, data: bytes) -> None:
        """Feed bytes received from the client."""
        if not data:
            return
        later = self._later
        if later is not None:
            # After the ClientHello: keep, parse only if a refusal asks (see _catch_up).
            if self._seen <= _MAX_CAPTURE:
                self._seen += len(data)
                if self._seen <= _MAX_CAPTURE:
                    later.append(data)
            return
        if self._done:
            return
        self._seen += len(data)
        if self._seen > _MAX_CAPTURE:
            self._done = True
            return
        self._buf += data
        self._parse_records()
        if self.client_hello is not None:
            self._later = []

    def _catch_up(self) -> None:
        later = self._later
        if later:
            self._later = []
            if not self._done:
                self._buf += b"".join(later)
                self._parse_records()
        if self._seen > _MAX_CAPTURE:
            self._done = True

    def _fail(self, problem: FlightProblem, reason: str) -> None:
        self.problem = problem
        self.reason = reason
        self._done = True
        self._buf.clear()
        self._hs.clear()

    def _parse_records(self) -> None:
        buf = self._buf
        while not self._done:
            # The very first bytes decide whether this is TLS at all.
            if (not self._records and buf) and (
                buf[0] != CT_HANDSHAKE or (len(buf) >= 2 and buf[1] != 3)
            ):
                self._fail(FlightProblem.NOT_TLS, classify_plaintext(bytes(buf)))
                return
            header = record_header(buf)
            if header is None:
                return
            ctype, version, length = header
            if buf[1] != 3:
                self._fail(FlightProblem.MALFORMED, f"TLS record with version 0x{version:04x}")
                return
            if length > _MAX_RECORD:
                self._fail(
                    FlightProblem.MALFORMED, f"TLS record of {length} bytes exceeds the maximum"
                )
                return
            if len(buf) < 5 + length:
                return
            if self._after_ccs and ctype == CT_HANDSHAKE:
                # TLS 1.2: the Finished after ChangeCipherSpec is encrypted.
                self._done = True
                self._buf.clear()
                return
            if ctype in (CT_CHANGE_CIPHER_SPEC, CT_APPLICATION_DATA):
                # From here on the client's records are encrypted (TLS 1.3: a
                # middlebox-compatibility CCS, then the encrypted flight).
                self._after_ccs = self._after_ccs or ctype == CT_CHANGE_CIPHER_SPEC
                if ctype == CT_APPLICATION_DATA:
                    self._encrypted_bytes += 5 + length
                    if self._encrypted_bytes > _MAX_ENCRYPTED:
                        self._done = True
                        return
                    self._encrypted.append(bytes(buf[: 5 + length]))
                del buf[: 5 + length]
                self._records += 1
                continue
            payload = bytes(buf[5 : 5 + length])
            del buf[: 5 + length]
            self._records += 1
            if ctype == CT_ALERT:
                self._done = True
                return
            if ctype != CT_HANDSHAKE:
                self._fail(FlightProblem.MALFORMED, f"unexpected TLS record content type {ctype}")
                return
            self._hs += payload
            self._parse_handshake(version)

    def _parse_handshake(self, record_version: int) -> None:
        hs = self._hs
        while len(hs) >= 4 and not self._done:
            msg_type = hs[0]
            msg_len = int.from_bytes(hs[1:4], "big")
            if len(hs) < 4 + msg_len:
                return
            body = bytes(hs[4 : 4 + msg_len])
            del hs[: 4 + msg_len]
            if self.client_hello is None:
                if msg_type != _HS_CLIENT_HELLO:
                    self._fail(
                        FlightProblem.MALFORMED,
                        f"the first handshake message has type {msg_type}, not ClientHello (1)",
                    )
                    return
                try:
                    self.client_hello = parse_client_hello(body, record_version)
                except ClientHelloError as exc:
                    self._fail(FlightProblem.MALFORMED, str(exc))
                    return
            elif msg_type == _HS_CERTIFICATE:
                try:
                    self._certificates = parse_certificate_message(body)
                except ClientHelloError as exc:
                    self._fail(FlightProblem.MALFORMED, str(exc))
                    return
                # Nothing after the Certificate message is of interest.
                self._done = True


def server_hello_version(data: bytes) -> str | None:
    """Return the version a server's first flight selects, or ``None`` if not readable.

    Python's ``ssl`` reports the version only after a successful handshake; the
    handshake driver needs it earlier to know which alert a failure sends.
    """
    found = parse_server_hello(data)
    return found[0] if found else None


def parse_server_hello(data: bytes) -> tuple[str, int] | None:
    """Return ``(version name, cipher suite)`` from a server's first flight, if readable."""
    header = record_header(data)
    if header is None or header[0] != CT_HANDSHAKE:
        return None
    r = Cursor(data[5 : 5 + header[2]])
    try:
        if r.u8() != 2:  # ServerHello
            return None
        body = Cursor(r.take(r.u24()))
        legacy = body.u16()
        body.take(32)
        body.vec(1)
        suite = body.u16()
        body.take(1)  # compression method
        if not body.at_end():
            exts = body.sub(2)
            while not exts.at_end():
                ext_type = exts.u16()
                ext = exts.sub(2)
                if ext_type == _EXT_SUPPORTED_VERSIONS:
                    return version_name(ext.u16()), suite
        return version_name(legacy), suite
    except WireFormatError:
        return None
