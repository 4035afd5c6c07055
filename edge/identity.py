"""The identity rule: which field of a verified client certificate names the device.

Rules (config ``identity.rule``):

=============  =================================================================
``cn``         the subject common name (the default)
``san-dns``    the first DNS subjectAltName
``san-uri``    the first URI subjectAltName
``san-email``  the first rfc822Name (email) subjectAltName
``sha256``     the certificate's SHA-256 fingerprint, lower-case hex
``subject``    the whole subject DN, RFC 4514 string
=============  =================================================================

The name is namespaced by the certificate set that verified the certificate
(:class:`~edge.core.session.DeviceIdentity`), so equal names under two CAs are two
devices. A certificate lacking the field the rule asks for raises
:class:`~edge.tls.errors.IdentityError` naming the rule and the certificate.
"""

from __future__ import annotations

import enum
import hashlib

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from certs.compat import load_certificate
from edge.core.session import DeviceIdentity, PeerCertificate
from edge.tls.errors import IdentityError

__all__ = [
    "IdentityRule",
    "derive_identity",
    "describe_certificate",
    "inspect_certificate",
    "parse_rule",
    "sha256_hex",
]


class IdentityRule(enum.Enum):
    """Which certificate field names the device."""

    CN = "cn"
    SAN_DNS = "san-dns"
    SAN_URI = "san-uri"
    SAN_EMAIL = "san-email"
    SHA256 = "sha256"
    SUBJECT = "subject"


def parse_rule(text: str) -> IdentityRule:
    """Parse a rule name (``cn``, ``san-dns``, ...); raises ``ValueError`` listing the choices."""
    key = text.strip().lower().replace("_", "-")
    for rule in IdentityRule:
        if rule.value == key:
            return rule
    choices = ", ".join(r.value for r in IdentityRule)
    raise ValueError(f"unknown identity rule {text!r} (choose one of: {choices})")


def _san_values(
    cert: x509.Certificate, kind: type[x509.GeneralName], rule: IdentityRule
) -> list[str]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    except (ValueError, x509.DuplicateExtension) as exc:
        # cryptography parses extensions when first asked, and more strictly than
        # OpenSSL, which verified this certificate: e.g. an IP address SAN of 5
        # bytes. The device is refused, naming why, not dropped without a word.
        raise IdentityError(
            f"identity rule `{rule.value}`: certificate `{cert.subject.rfc4514_string()}` "
            f"(serial {cert.serial_number:x}) has extensions that cannot be parsed: {exc}"
        ) from None
    return [str(v) for v in ext.value.get_values_for_type(kind)]  # type: ignore[arg-type]


def derive_identity(der: bytes, *, namespace: str, rule: IdentityRule) -> DeviceIdentity:
    """Return the identity of the device holding the certificate ``der``."""
    try:
        cert = load_certificate(der, pem=False)
    except ValueError as exc:
        raise IdentityError(f"the client certificate cannot be parsed: {exc}") from None
    return _identity(cert, der, namespace, rule)


def inspect_certificate(
    der: bytes, *, namespace: str, rule: IdentityRule
) -> tuple[DeviceIdentity, PeerCertificate]:
    """Parse ``der`` once; return the device identity and the facts events report."""
    try:
        cert = load_certificate(der, pem=False)
    except ValueError as exc:
        raise IdentityError(f"the client certificate cannot be parsed: {exc}") from None
    return _identity(cert, der, namespace, rule), _facts(cert, der)


def _identity(
    cert: x509.Certificate, der: bytes, namespace: str, rule: IdentityRule
) -> DeviceIdentity:
    name: str | None
    if rule is IdentityRule.CN:
        attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        name = str(attrs[0].value) if attrs else None
    elif rule is IdentityRule.SAN_DNS:
        name = next(iter(_san_values(cert, x509.DNSName, rule)), None)
    elif rule is IdentityRule.SAN_URI:
        name = next(iter(_san_values(cert, x509.UniformResourceIdentifier, rule)), None)
    elif rule is IdentityRule.SAN_EMAIL:
        name = next(iter(_san_values(cert, x509.RFC822Name, rule)), None)
    elif rule is IdentityRule.SHA256:
        name = sha256_hex(der)
    else:
        name = cert.subject.rfc4514_string()
    if not name:
        raise IdentityError(
            f"identity rule `{rule.value}`: certificate `{cert.subject.rfc4514_string()}` "
            f"(serial {cert.serial_number:x}) has no such field"
        )
    return DeviceIdentity(namespace=namespace, name=name)


# hashlib.sha256(data) looks the digest up in OpenSSL's provider tables on every
# call (about 17,000 instructions with OpenSSL 3.0); copying a ready object does not.
_SHA256 = hashlib.sha256()


def sha256_hex(data: bytes) -> str:
    """The SHA-256 of ``data`` in lower-case hex (a certificate's fingerprint from its DER)."""
    h = _SHA256.copy()
    h.update(data)
    return h.hexdigest()


def describe_certificate(der: bytes) -> PeerCertificate | None:
    """Return the event-facing facts of a DER certificate, or ``None`` if it does not parse."""
    try:
        return _facts(load_certificate(der, pem=False), der)
    except ValueError:
        # A refused device's certificate that cryptography cannot read (a version
        # other than v1-v3, a damaged name): the refusal is still reported.
        return None


def _facts(cert: x509.Certificate, der: bytes) -> PeerCertificate:
    return PeerCertificate(
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        serial=f"{cert.serial_number:x}",
        sha256=sha256_hex(der),
        not_before=cert.not_valid_before_utc.isoformat(),
        not_after=cert.not_valid_after_utc.isoformat(),
    )


def certificate_to_der(cert: x509.Certificate) -> bytes:
    """Return the DER encoding of ``cert``."""
    return cert.public_bytes(serialization.Encoding.DER)
