"""TLS wire formats shared by the edge and the device simulator (no ``ssl``, no I/O).

The edge reads the client's flight (:mod:`edge.tls.clienthello`) and names the
alerts it sends (:mod:`edge.tls.verdict`); the simulated device
(``devices.tlsclient``) reads the server's flight and names the alerts it
receives. Both read the same structures, so they come from here:

- :data:`ALERT_NAMES` / :data:`ALERT_CODES`: alert description codes (RFC 8446
  section 6, RFC 5246 section 7.2);
- the record content types and :func:`record_header` (RFC 8446 section 5.1);
- :class:`Cursor`: bounds-checked reads of handshake structures (big-endian
  integers and length-prefixed vectors, RFC 8446 section 3).

Errors: :class:`Cursor` raises :class:`~edge.tls.errors.WireFormatError` (a
``ValueError`` too) when a length points past the end of its structure; each
caller translates it into its own terms.
"""

from __future__ import annotations

from edge.tls.errors import WireFormatError

__all__ = [
    "ALERT_CODES",
    "ALERT_NAMES",
    "CT_ALERT",
    "CT_APPLICATION_DATA",
    "CT_CHANGE_CIPHER_SPEC",
    "CT_HANDSHAKE",
    "RECORD_HEADER_LEN",
    "Cursor",
    "record_header",
]

#: Record content types (RFC 8446 section 5.1).
CT_CHANGE_CIPHER_SPEC = 20
CT_ALERT = 21
CT_HANDSHAKE = 22
CT_APPLICATION_DATA = 23
#: content type (1) + legacy record version (2) + length (2).
RECORD_HEADER_LEN = 5

#: TLS alert descriptions (RFC 8446 section 6, RFC 5246 section 7.2).
ALERT_NAMES: dict[int, str] = {
    0: "close_notify",
    10: "unexpected_message",
    20: "bad_record_mac",
    22: "record_overflow",
    40: "handshake_failure",
    42: "bad_certificate",
    43: "unsupported_certificate",
    44: "certificate_revoked",
    45: "certificate_expired",
    46: "certificate_unknown",
    47: "illegal_parameter",
    48: "unknown_ca",
    49: "access_denied",
    50: "decode_error",
    51: "decrypt_error",
    70: "protocol_version",
    71: "insufficient_security",
    80: "internal_error",
    86: "inappropriate_fallback",
    90: "user_canceled",
    109: "missing_extension",
    110: "unsupported_extension",
    112: "unrecognized_name",
    113: "bad_certificate_status_response",
    115: "unknown_psk_identity",
    116: "certificate_required",
    120: "no_application_protocol",
}
#: Alert name -> description code (the inverse of :data:`ALERT_NAMES`).
ALERT_CODES: dict[str, int] = {name: code for code, name in ALERT_NAMES.items()}


def record_header(buf: bytes | bytearray, pos: int = 0) -> tuple[int, int, int] | None:
    """Return ``(content type, record version, fragment length)`` of the record at ``pos``.

    ``None`` when fewer than five bytes are there yet. Nothing is checked: the
    caller decides what an odd version or length means.
    """
    if len(buf) - pos < RECORD_HEADER_LEN:
        return None
    return buf[pos], (buf[pos + 1] << 8) | buf[pos + 2], (buf[pos + 3] << 8) | buf[pos + 4]


class Cursor:
    """Bounds-checked reads over one handshake structure.

    Every read past the end raises :class:`~edge.tls.errors.WireFormatError`;
    nothing is read partially.
    """

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        """Return the next ``n`` bytes."""
        if self.pos + n > len(self.data):
            raise WireFormatError("truncated handshake message")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        """Return the next byte."""
        return self.take(1)[0]

    def u16(self) -> int:
        """Return the next big-endian 16-bit integer."""
        return int.from_bytes(self.take(2), "big")

    def u24(self) -> int:
        """Return the next big-endian 24-bit integer."""
        return int.from_bytes(self.take(3), "big")

    def vec(self, length_bytes: int) -> bytes:
        """Return the next vector whose length prefix is ``length_bytes`` long."""
        return self.take(int.from_bytes(self.take(length_bytes), "big"))

    def sub(self, length_bytes: int) -> Cursor:
        """Return a cursor over the next vector (see :meth:`vec`)."""
        return Cursor(self.vec(length_bytes))

    @property
    def remaining(self) -> int:
        """Bytes left to read."""
        return len(self.data) - self.pos

    def at_end(self) -> bool:
        """True when every byte was read."""
        return self.pos >= len(self.data)
