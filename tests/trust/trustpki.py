"""Certificates for trust-store tests: good ones from the PKI toolkit, bad ones built here.

Every time is derived from :data:`NOW`, so no test depends on the clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from certs.authority import CertificateAuthority
from certs.crl import build_crl

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)

Key = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

_EC_KEY = ec.generate_private_key(ec.SECP256R1())


def pem(*certs: x509.Certificate) -> bytes:
    """Concatenate certificates as one PEM file."""
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def root(cn: str = "Test Root", *, now: datetime = NOW) -> CertificateAuthority:
    """A correct root CA, valid around ``now``."""
    return CertificateAuthority.create_root(cn, now=now - timedelta(days=1))


def chain(depth: int = 2, *, prefix: str = "Chain") -> list[CertificateAuthority]:
    """A root then ``depth - 1`` intermediates, each issued by the previous one."""
    cas = [root(f"{prefix} Root")]
    for i in range(1, depth):
        cas.append(
            cas[-1].issue_intermediate(f"{prefix} Intermediate {i}", now=NOW - timedelta(days=1))
        )
    return cas


def build(
    cn: str,
    *,
    key: Key | None = None,
    issuer: x509.Certificate | None = None,
    issuer_key: Key | None = None,
    ca: bool = True,
    not_before: datetime = NOW - timedelta(days=1),
    not_after: datetime = NOW + timedelta(days=365),
) -> tuple[x509.Certificate, Key]:
    """A certificate with exactly the defects asked for (self-signed without ``issuer``)."""
    key = key if key is not None else _EC_KEY
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    signer = issuer_key if issuer_key is not None else key
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.subject if issuer is not None else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    return builder.sign(signer, hashes.SHA256()), key


def rsa_key(bits: int) -> rsa.RSAPrivateKey:
    """An RSA key of ``bits`` (small ones are fast: used for the weak-key cases)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def subjects(certs: Sequence[x509.Certificate]) -> list[str]:
    """RFC 4514 subjects, as findings name them."""
    return [c.subject.rfc4514_string() for c in certs]


_SHA256_RSA = bytes.fromhex("2a864886f70d01010b")  # sha256WithRSAEncryption
_SHA1_RSA = bytes.fromhex("2a864886f70d010105")  # sha1WithRSAEncryption, same DER length


def _tlv(tag: int, body: bytes) -> bytes:
    n = len(body)
    if n < 0x80:
        length = bytes([n])
    else:
        raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
        length = bytes([0x80 | len(raw)]) + raw
    return bytes([tag]) + length + body


def sha1_signed(cert: x509.Certificate, signer: rsa.RSAPrivateKey) -> x509.Certificate:
    """Re-sign an RSA/SHA-256 certificate with SHA-1.

    ``cryptography`` no longer signs with SHA-1, but uploads must still meet it:
    the OIDs have the same length, so the TBS is patched and signed by hand.
    """
    from cryptography.hazmat.primitives.asymmetric import padding

    tbs = cert.tbs_certificate_bytes.replace(_SHA256_RSA, _SHA1_RSA)
    signature = signer.sign(tbs, padding.PKCS1v15(), hashes.SHA1())
    algorithm = _tlv(0x30, _tlv(0x06, _SHA1_RSA) + b"\x05\x00")
    return x509.load_der_x509_certificate(
        _tlv(0x30, tbs + algorithm + _tlv(0x03, b"\x00" + signature))
    )


def crl_pem(ca: CertificateAuthority, *serials: int, encoding: str = "pem") -> bytes:
    """A CRL signed by ``ca`` revoking ``serials``."""
    an_hour_ago = NOW - timedelta(hours=1)
    revoked = [(serial, an_hour_ago, None) for serial in serials]
    crl = build_crl(ca, revoked, crl_number=1, last_update=an_hour_ago)
    enc = serialization.Encoding.PEM if encoding == "pem" else serialization.Encoding.DER
    return crl.public_bytes(enc)
