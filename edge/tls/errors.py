"""The error tree of :mod:`edge.tls`.

::

    TlsError                      root of every error raised by edge.tls
    ├── ClientHelloError          a ClientHello or Certificate message is malformed
    │                             (the reader records it as a problem; parse_* raise it)
    ├── TlsConfigError            a server certificate, key or CA/CRL PEM cannot be loaded
    ├── WireFormatError           a length field points past the end of its structure
    │                             (edge.tls.wire.Cursor; also a ValueError; callers translate it)
    └── IdentityError             no identity can be derived from a verified certificate

``ssl.SSLError`` and ``cryptography`` exceptions never escape this package: the
handshake driver turns them into a :class:`~edge.tls.verdict.HandshakeVerdict`
(a value, not an exception, since a refused device is a normal outcome), and the
context builder wraps them in :class:`TlsConfigError`.
"""

from __future__ import annotations


class TlsError(Exception):
    """Root of the :mod:`edge.tls` error tree."""


class ClientHelloError(TlsError):
    """The bytes received are not a well-formed TLS ClientHello."""


class WireFormatError(TlsError, ValueError):
    """A TLS structure is shorter than one of its length fields says."""


class TlsConfigError(TlsError):
    """A server certificate, key, or trust material could not be loaded."""


class IdentityError(TlsError):
    """The identity rule found nothing to name the device by in its certificate."""
