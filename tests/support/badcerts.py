"""Certificates that OpenSSL reads but cryptography refuses, for the tests of that gap.

A version field other than v1-v3 is one: OpenSSL 3.0 parses and sends such a
certificate, while cryptography raises ``x509.InvalidVersion``, which is no
``ValueError``. Shared by the tests of the bundle loaders, the identity
functions, the uploads and the edge's refusal report.
"""

from __future__ import annotations

import base64

# The TBSCertificate's version: [0] EXPLICIT INTEGER 2 (v3), as every issuer here writes it.
_V3 = b"\xa0\x03\x02\x01\x02"


def with_version(der: bytes, version: int) -> bytes:
    """``der`` (a v3 certificate) with its version field set to ``version`` (0-127).

    The signature no longer matches; what is tested is the parse, which comes first.
    """
    assert der.count(_V3) == 1, "expected one v3 version field"
    return der.replace(_V3, b"\xa0\x03\x02\x01" + bytes([version]))


def pem(der: bytes) -> bytes:
    """``der`` as one PEM CERTIFICATE block, written without parsing it."""
    body = base64.encodebytes(der)  # lines of 76 characters: OpenSSL reads them too
    return b"-----BEGIN CERTIFICATE-----\n" + body + b"-----END CERTIFICATE-----\n"
