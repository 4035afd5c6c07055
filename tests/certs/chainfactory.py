"""Build test certificates with any defect the linter and the verifier must catch.

Everything is built directly with ``cryptography``'s builders so a test can make a
certificate the project's own authority would refuse to issue (no CA flag, no
keyCertSign, a 1024-bit RSA key, a SHA-1 signature...). Times are passed in:
every certificate is valid from ``T0 - 1 day`` to ``T0 + 365 days`` unless a
test says otherwise, and tests validate at :data:`T0`.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: The validation time every test uses; certificates are built around it.
T0 = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey

# Keys are slow to make (RSA especially): tests share one key per kind.
_KEYS: dict[str, PrivateKey] = {}


def key(kind: str = "ec256", *, fresh: bool = False) -> PrivateKey:
    """A private key of ``kind``: ec256, ec384, ec192, rsa2048, rsa1024, ed25519.

    Keys are cached per kind so a test module makes each kind once; ``fresh``
    makes a new one (for two certificates that must not share a key).
    """
    if not fresh and kind in _KEYS:
        return _KEYS[kind]
    made: PrivateKey
    if kind == "ec256":
        made = ec.generate_private_key(ec.SECP256R1())
    elif kind == "ec384":
        made = ec.generate_private_key(ec.SECP384R1())
    elif kind == "ec192":
        made = ec.generate_private_key(ec.SECP192R1())
    elif kind == "rsa2048":
        made = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    elif kind == "rsa1024":
        made = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    elif kind == "ed25519":
        made = ed25519.Ed25519PrivateKey.generate()
    else:
        raise ValueError(f"unknown key kind {kind!r}")
    if not fresh:
        _KEYS[kind] = made
    return made


@dataclass(frozen=True)
class Issued:
    """A certificate with its private key."""

    cert: x509.Certificate
    key: PrivateKey

    @property
    def pem(self) -> bytes:
        """The certificate as PEM."""
        return self.cert.public_bytes(serialization.Encoding.PEM)


def name(cn: str) -> x509.Name:
    """``O=edgesim test, CN=<cn>``."""
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "edgesim test"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


_serial = iter(range(1000, 10**9))


def make_cert(
    cn: str,
    *,
    issuer: Issued | None = None,
    key_kind: str = "ec256",
    fresh_key: bool = True,
    ca: bool | None = True,
    path_length: int | None = None,
    key_usage: str = "auto",
    eku: list[x509.ObjectIdentifier] | None = None,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
    issuer_name: x509.Name | None = None,
    signing_key: PrivateKey | None = None,
    san: list[str] | None = None,
    serial: int | None = None,
    aki: bool = True,
) -> Issued:
    """Build one certificate.

    ``issuer=None`` makes it self-signed. ``ca=None`` leaves basicConstraints out,
    ``ca=False`` writes ``CA:FALSE``. ``key_usage``: ``"auto"`` (keyCertSign+cRLSign
    for CAs, digitalSignature for leaves), ``"none"`` (no extension) or
    ``"no-certsign"`` (a CA key usage without keyCertSign). ``issuer_name`` and
    ``signing_key`` override what the issuer would write and sign with, to make
    mismatched names and bad signatures.
    """
    private = key(key_kind, fresh=fresh_key)
    subject = name(cn)
    issuer_dn = issuer_name or (issuer.cert.subject if issuer else subject)
    signer = signing_key or (issuer.key if issuer else private)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_dn)
        .public_key(private.public_key())
        .serial_number(serial if serial is not None else next(_serial))
        .not_valid_before(not_before or T0 - dt.timedelta(days=1))
        .not_valid_after(not_after or T0 + dt.timedelta(days=365))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(private.public_key()), False)
    )
    if aki:
        issuer_public = (issuer.key if issuer else private).public_key()
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_public), False
        )
    if ca is not None:
        builder = builder.add_extension(
            x509.BasicConstraints(ca=ca, path_length=path_length if ca else None), True
        )
    is_ca = bool(ca)
    if key_usage != "none":
        cert_sign = is_ca and key_usage != "no-certsign"
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=not is_ca or key_usage == "no-certsign",
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=cert_sign,
                crl_sign=is_ca,
                encipher_only=False,
                decipher_only=False,
            ),
            True,
        )
    if eku is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(eku), False)
    if san:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(s) for s in san]), False
        )
    algorithm = None if isinstance(signer, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return Issued(cert=builder.sign(signer, algorithm), key=private)


def chain3(*, leaf_eku: list[x509.ObjectIdentifier] | None = None) -> tuple[Issued, Issued, Issued]:
    """A good root -> intermediate -> device chain: returns ``(leaf, intermediate, root)``."""
    root = make_cert("Test Root")
    inter = make_cert("Test Int", issuer=root, path_length=0)
    leaf = make_cert(
        "device-1",
        issuer=inter,
        ca=False,
        eku=leaf_eku if leaf_eku is not None else [ExtendedKeyUsageOID.CLIENT_AUTH],
    )
    return leaf, inter, root


# --- signatures with hashes cryptography no longer signs with -----------------

_SHA256_RSA = bytes.fromhex("2a864886f70d01010b")  # 1.2.840.113549.1.1.11
_WEAK_RSA = {
    "sha1": (bytes.fromhex("2a864886f70d010105"), hashes.SHA1()),  # 1.2.840.113549.1.1.5
    "md5": (bytes.fromhex("2a864886f70d010104"), hashes.MD5()),  # 1.2.840.113549.1.1.4
}


def _der_length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def _tlv(tag: int, body: bytes) -> bytes:
    return bytes([tag]) + _der_length(len(body)) + body


def oid_der(dotted: str) -> bytes:
    """The DER encoding (tag, length, value) of an object identifier."""
    arcs = [int(part) for part in dotted.split(".")]
    body = bytearray([40 * arcs[0] + arcs[1]])
    for arc in arcs[2:]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        body.extend(reversed(chunk))
    return _tlv(0x06, bytes(body))


def duplicate_extension(issuer: Issued) -> Issued:
    """A device certificate carrying the same (private) extension twice, RSA-signed.

    cryptography's builder refuses duplicates, so two extensions with OIDs of the
    same length are written and the second OID is patched into the first before
    signing by hand. Reading ``.extensions`` of the result raises ``DuplicateExtension``.
    """
    first, second = "1.3.6.1.4.1.55555.1", "1.3.6.1.4.1.55555.2"
    private = key("ec256")
    cert = (
        x509.CertificateBuilder()
        .subject_name(name("duplicate-extension"))
        .issuer_name(issuer.cert.subject)
        .public_key(private.public_key())
        .serial_number(next(_serial))
        .not_valid_before(T0 - dt.timedelta(days=1))
        .not_valid_after(T0 + dt.timedelta(days=365))
        .add_extension(x509.UnrecognizedExtension(x509.ObjectIdentifier(first), b"\x05\x00"), False)
        .add_extension(
            x509.UnrecognizedExtension(x509.ObjectIdentifier(second), b"\x05\x00"), False
        )
        .sign(issuer.key, hashes.SHA256())
    )
    return patch_and_resign(Issued(cert=cert, key=private), oid_der(second), oid_der(first), issuer)


def patch_and_resign(issued: Issued, old: bytes, new: bytes, issuer: Issued) -> Issued:
    """Replace ``old`` by ``new`` (same length) in the TBS and sign it again (RSA/SHA-256).

    Makes certificates cryptography's builder would never write (duplicate
    extensions, unknown curves) while keeping the issuer's signature valid.
    """
    if not isinstance(issuer.key, rsa.RSAPrivateKey):
        raise TypeError("patch_and_resign needs an RSA issuer")
    if len(old) != len(new) or issued.cert.tbs_certificate_bytes.count(old) != 1:
        raise ValueError("the patch must be the same length and match exactly once")
    tbs = issued.cert.tbs_certificate_bytes.replace(old, new)
    alg_id = _tlv(0x30, _tlv(0x06, _SHA256_RSA) + b"\x05\x00")
    signature = issuer.key.sign(tbs, padding.PKCS1v15(), hashes.SHA256())
    der = _tlv(0x30, tbs + alg_id + _tlv(0x03, b"\x00" + signature))
    return Issued(cert=x509.load_der_x509_certificate(der), key=issued.key)


def unknown_curve(issuer: Issued) -> Issued:
    """A device certificate whose EC key names a curve nobody knows (1.2.840.10045.3.1.99)."""
    device = make_cert("odd-curve", issuer=issuer, ca=False)
    return patch_and_resign(
        device, oid_der("1.2.840.10045.3.1.7"), oid_der("1.2.840.10045.3.1.99"), issuer
    )


def resign_weak(issued: Issued, signer: PrivateKey, digest: str) -> Issued:
    """Re-sign an RSA/SHA-256 certificate with SHA-1 or MD5 (``digest``).

    cryptography refuses to sign with those hashes, but a linter must still meet
    them in uploaded files: the OIDs have the same DER length, so the TBS is
    patched in place and signed by hand.
    """
    if not isinstance(signer, rsa.RSAPrivateKey):
        raise TypeError("weak-hash re-signing needs an RSA signer")
    oid, algorithm = _WEAK_RSA[digest]
    tbs = issued.cert.tbs_certificate_bytes
    if tbs.count(_SHA256_RSA) != 1:
        raise ValueError("expected exactly one sha256WithRSAEncryption OID in the TBS")
    tbs = tbs.replace(_SHA256_RSA, oid)
    alg_id = _tlv(0x30, _tlv(0x06, oid) + b"\x05\x00")
    signature = signer.sign(tbs, padding.PKCS1v15(), algorithm)
    der = _tlv(0x30, tbs + alg_id + _tlv(0x03, b"\x00" + signature))
    return Issued(cert=x509.load_der_x509_certificate(der), key=issued.key)


def revoke(
    issuer: Issued,
    serials: list[int],
    *,
    this_update: dt.datetime | None = None,
    next_update: dt.datetime | None = None,
    signing_key: PrivateKey | None = None,
    reason: x509.ReasonFlags | None = x509.ReasonFlags.key_compromise,
    revoked_at: dt.datetime | None = None,
) -> x509.CertificateRevocationList:
    """A CRL by ``issuer`` listing ``serials`` (times default around :data:`T0`)."""
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.cert.subject)
        .last_update(this_update or T0 - dt.timedelta(hours=1))
        .next_update(next_update or T0 + dt.timedelta(days=7))
        .add_extension(x509.CRLNumber(1), False)
    )
    for serial in serials:
        entry = (
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(revoked_at or T0 - dt.timedelta(days=2))
        )
        if reason is not None:
            entry = entry.add_extension(x509.CRLReason(reason), False)
        builder = builder.add_revoked_certificate(entry.build())
    signer = signing_key or issuer.key
    algorithm = None if isinstance(signer, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(signer, algorithm)
