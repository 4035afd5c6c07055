"""Certificates that OpenSSL reads but cryptography refuses, for the tests of that gap.

- A version field other than v1-v3: OpenSSL 3.0 parses and sends such a
  certificate, while cryptography's loader raises ``x509.InvalidVersion``, which
  is no ``ValueError``.
- A malformed extension value, such as an IP address SAN of 5 bytes: OpenSSL
  verifies the certificate, while cryptography raises ``ValueError`` when its
  extensions are first read, after loading went well.

Shared by the tests of the bundle loaders, ``pki inspect``, the identity
functions, the uploads and the edge's refusal report.
"""

from __future__ import annotations

import base64
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, NameOID

from certs.authority import CertificateAuthority

#: A SubjectAltName of one iPAddress of 5 bytes ([7] 01 02 03 04 05): OpenSSL prints
#: it as "IP Address:<invalid length=5>", cryptography cannot make an address of it.
BAD_IP_SAN = x509.UnrecognizedExtension(
    ExtensionOID.SUBJECT_ALTERNATIVE_NAME, bytes.fromhex("30078705" + "0102030405")
)

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


def with_bad_ip_san(
    ca: CertificateAuthority, name: str, *, start: datetime, end: datetime
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A device certificate ``CN=name`` by ``ca`` whose only SAN is :data:`BAD_IP_SAN`.

    Correctly signed and within ``start``-``end``: OpenSSL verifies it as any other.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(BAD_IP_SAN, critical=False)
    )
    return ca.sign(builder), key
