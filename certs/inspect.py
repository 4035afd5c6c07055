"""Describe any PKI file: certificates, CRLs, keys, CSRs, PKCS#7 and PKCS#12.

:func:`inspect_data` returns plain JSON-ready dictionaries (one per object
found, in file order), and :func:`render` prints them for people. Nothing here
raises for an unknown file: it is reported as ``{"kind": "unknown", ...}``;
only an unreadable or undecryptable input raises (the
:class:`~certs.errors.CertsError` of the loader).
"""

from __future__ import annotations

import binascii
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization

from certs.bundle import describe_format, detect_format, load_any_certificates, pem_blocks
from certs.compat import certificate_public_key
from certs.crl import crl_number, load_crls, revoked_entries
from certs.errors import BundleError, KeyLoadError
from certs.keys import key_description, load_private_key
from certs.lint import extension_value
from certs.names import display_name

__all__ = [
    "describe_certificate",
    "describe_crl",
    "describe_extension",
    "inspect_data",
    "render",
]


def _hex(data: bytes) -> str:
    return binascii.hexlify(data, ":").decode()


def _time(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


def _general_names(names: Sequence[x509.GeneralName]) -> str:
    labels = {
        x509.DNSName: "DNS",
        x509.IPAddress: "IP",
        x509.UniformResourceIdentifier: "URI",
        x509.RFC822Name: "email",
        x509.RegisteredID: "RID",
    }
    parts = []
    for name in names:
        if isinstance(name, x509.DirectoryName):
            parts.append(f"dirName:{display_name(name.value)}")
        elif isinstance(name, x509.RegisteredID):
            parts.append(f"RID:{name.value.dotted_string}")
        elif isinstance(name, x509.OtherName):
            parts.append(f"otherName:{name.type_id.dotted_string}")
        else:
            parts.append(f"{labels.get(type(name), type(name).__name__)}:{name.value}")
    return ", ".join(parts)


def describe_extension(ext: x509.Extension[x509.ExtensionType]) -> str:
    """A one-line human rendering of an extension's value."""
    value = ext.value
    if isinstance(value, x509.BasicConstraints):
        text = f"CA:{'TRUE' if value.ca else 'FALSE'}"
        return text + (f", pathlen:{value.path_length}" if value.path_length is not None else "")
    if isinstance(value, x509.KeyUsage):
        flags = [
            "digitalSignature",
            "nonRepudiation",
            "keyEncipherment",
            "dataEncipherment",
            "keyAgreement",
            "keyCertSign",
            "cRLSign",
        ]
        attrs = [
            "digital_signature",
            "content_commitment",
            "key_encipherment",
            "data_encipherment",
            "key_agreement",
            "key_cert_sign",
            "crl_sign",
        ]
        on = [f for f, a in zip(flags, attrs, strict=True) if getattr(value, a)]
        if value.key_agreement:
            on += [
                n
                for n, a in (("encipherOnly", "encipher_only"), ("decipherOnly", "decipher_only"))
                if getattr(value, a)
            ]
        return ", ".join(on)
    if isinstance(value, x509.ExtendedKeyUsage):
        return ", ".join(_oid_name(o) for o in value)
    if isinstance(value, x509.SubjectAlternativeName | x509.IssuerAlternativeName):
        return _general_names(list(value))
    if isinstance(value, x509.SubjectKeyIdentifier):
        return _hex(value.digest)
    if isinstance(value, x509.AuthorityKeyIdentifier):
        parts = []
        if value.key_identifier is not None:
            parts.append(f"keyid:{_hex(value.key_identifier)}")
        if value.authority_cert_issuer:
            parts.append(_general_names(value.authority_cert_issuer))
        if value.authority_cert_serial_number is not None:
            parts.append(f"serial:{value.authority_cert_serial_number:x}")
        return ", ".join(parts)
    if isinstance(value, x509.CRLNumber):
        return str(value.crl_number)
    if isinstance(value, x509.CRLDistributionPoints):
        return ", ".join(_general_names(p.full_name or []) for p in value)
    if isinstance(value, x509.AuthorityInformationAccess):
        return ", ".join(
            f"{_oid_name(d.access_method)};{_general_names([d.access_location])}" for d in value
        )
    if isinstance(value, x509.CertificatePolicies):
        return ", ".join(p.policy_identifier.dotted_string for p in value)
    if isinstance(value, x509.UnrecognizedExtension):
        if ext.oid.dotted_string == "2.16.840.1.113730.1.13" and value.value[:1] == b"\x16":
            # nsComment: an IA5String; skip the one- or multi-byte DER length.
            body = (
                value.value[2:]
                if value.value[1] < 0x80
                else value.value[2 + (value.value[1] & 0x7F) :]
            )
            return body.decode("ascii", "replace")
        return "DER:" + value.value.hex()
    try:
        return _hex(value.public_bytes())
    except (NotImplementedError, ValueError):
        return repr(value)


#: Names for extensions ``cryptography`` does not know (it calls them "Unknown OID").
_EXTRA_NAMES = {
    "2.16.840.1.113730.1.13": "nsComment",
    "2.16.840.1.113730.1.1": "nsCertType",
}


def _oid_name(oid: x509.ObjectIdentifier) -> str:
    name = getattr(oid, "_name", "Unknown OID")
    if name == "Unknown OID":
        return _EXTRA_NAMES.get(oid.dotted_string, oid.dotted_string)
    return str(name)


def _extensions(exts: x509.Extensions) -> list[dict[str, Any]]:
    return [
        {
            "name": _oid_name(ext.oid),
            "oid": ext.oid.dotted_string,
            "critical": ext.critical,
            "value": describe_extension(ext),
        }
        for ext in exts
    ]


_UNREADABLE = (x509.DuplicateExtension, ValueError)


def _readable_extensions(
    get: Callable[[], x509.Extensions], found: dict[str, Any]
) -> list[dict[str, Any]]:
    # cryptography parses extensions when first asked, more strictly than OpenSSL
    # (twice the same one, an IP address of 5 bytes): say so under
    # ``extensions_error`` and describe everything else.
    try:
        return _extensions(get())
    except _UNREADABLE as exc:
        found["extensions_error"] = str(exc)
        return []


def _public_key(get: Callable[[], object]) -> str:
    # A key cryptography cannot load (a point off its curve, an unknown algorithm)
    # is described as such; the rest of the certificate or request still is.
    try:
        return key_description(get())
    except (UnsupportedAlgorithm, ValueError) as exc:
        return f"unusable ({exc})"


def describe_certificate(cert: x509.Certificate) -> dict[str, Any]:
    """Subject, issuer, serial, validity, key, signature, fingerprint and extensions.

    Extensions that cannot be parsed (twice the same one, a malformed value) are
    reported under ``extensions_error``, with an empty ``extensions`` list.
    """
    bc = extension_value(cert, x509.BasicConstraints)
    is_ca = bc is not None and bc.ca
    sig = cert.signature_algorithm_oid
    found: dict[str, Any] = {
        "kind": "certificate",
        "subject": display_name(cert.subject),
        "issuer": display_name(cert.issuer),
        "serial": f"{cert.serial_number:x}",
        "not_before": _time(cert.not_valid_before_utc),
        "not_after": _time(cert.not_valid_after_utc),
        "key": _public_key(lambda: certificate_public_key(cert)),
        "signature_algorithm": _oid_name(sig),
        "sha256_fingerprint": _hex(cert.fingerprint(hashes.SHA256())).upper(),
        "self_signed": cert.subject == cert.issuer,
        "ca": is_ca,
        "version": cert.version.name,
    }
    found["extensions"] = _readable_extensions(lambda: cert.extensions, found)
    return found


def describe_crl(crl: x509.CertificateRevocationList) -> dict[str, Any]:
    """Issuer, update times, number, entries and extensions of a CRL.

    Extensions that cannot be parsed, the CRL's own or a revoked entry's, are
    reported under ``extensions_error``.
    """
    sig = crl.signature_algorithm_oid
    found: dict[str, Any] = {
        "kind": "crl",
        "issuer": display_name(crl.issuer),
        "last_update": _time(crl.last_update_utc),
        "next_update": _time(crl.next_update_utc) if crl.next_update_utc else None,
        "signature_algorithm": _oid_name(sig),
    }
    found["extensions"] = _readable_extensions(lambda: crl.extensions, found)
    found["crl_number"] = None if "extensions_error" in found else crl_number(crl)
    try:
        entries = revoked_entries(crl)
    except _UNREADABLE as exc:
        # An entry whose extensions do not parse: list them without reasons.
        found.setdefault("extensions_error", f"a revoked entry: {exc}")
        entries = [(item.serial_number, item.revocation_date_utc, None) for item in crl]
    found["revoked"] = [
        {"serial": f"{serial:x}", "date": _time(when), "reason": reason}
        for serial, when, reason in entries
    ]
    return found


def _describe_key(block: bytes, source: str, passphrase: bytes | None) -> dict[str, Any]:
    encrypted = b"ENCRYPTED" in block
    try:
        key = load_private_key(block, passphrase=passphrase, source=source)
    except KeyLoadError as exc:
        return {"kind": "private-key", "encrypted": encrypted, "key": None, "note": str(exc)}
    public = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    digest = hashes.Hash(hashes.SHA256())
    digest.update(public)
    return {
        "kind": "private-key",
        "encrypted": encrypted,
        "key": key_description(key),
        "public_key_sha256": _hex(digest.finalize()).upper(),
    }


def _describe_csr(csr: x509.CertificateSigningRequest) -> dict[str, Any]:
    try:
        valid = csr.is_signature_valid
    except (UnsupportedAlgorithm, ValueError):
        valid = False  # its key cannot be loaded ("key" says why), so nothing verifies
    found: dict[str, Any] = {
        "kind": "csr",
        "subject": display_name(csr.subject),
        "key": _public_key(csr.public_key),
        "signature_valid": valid,
    }
    found["extensions"] = _readable_extensions(lambda: csr.extensions, found)
    return found


def inspect_data(
    data: bytes, *, source: str, passphrase: bytes | None = None
) -> list[dict[str, Any]]:
    """Describe every object in ``data`` (PEM blocks in order; DER/PKCS#7/PKCS#12 whole)."""
    blocks = pem_blocks(data)
    if blocks:
        found: list[dict[str, Any]] = []
        for label, block in blocks:
            found.extend(_describe_one(block, label, source, passphrase))
        return found
    return _describe_one(data, None, source, passphrase)


def _describe_one(
    data: bytes, label: str | None, source: str, passphrase: bytes | None
) -> list[dict[str, Any]]:
    kind = detect_format(data)
    if kind in ("pem-certificate", "der-certificate", "pem-pkcs7", "der-pkcs7", "der-pkcs12"):
        certs = load_any_certificates(data, source=source, passphrase=passphrase)
        items = [describe_certificate(c) for c in certs]
        if kind == "der-pkcs12":
            items.extend(_pkcs12_key(data, passphrase))
        return items
    if kind in ("pem-crl", "der-crl"):
        return [describe_crl(c) for c in load_crls(data, source)]
    if kind in ("pem-private-key", "pem-encrypted-private-key", "der-private-key"):
        return [_describe_key(data, source, passphrase)]
    try:
        if kind in ("pem-csr", "der-csr"):
            load = x509.load_pem_x509_csr if kind == "pem-csr" else x509.load_der_x509_csr
            csr = load(data)
            _ = csr.subject  # parsed when first asked: fail here, saying so
            return [_describe_csr(csr)]
        if kind == "pem-public-key":
            key = serialization.load_pem_public_key(data)
            return [{"kind": "public-key", "key": key_description(key)}]
    except (ValueError, TypeError, x509.InvalidVersion, UnsupportedAlgorithm) as exc:
        # TypeError: cryptography's name parser on an attribute of the wrong type;
        # InvalidVersion (no ValueError): a version field other than v1.
        raise BundleError(f"{source}: cannot parse {describe_format(kind)}: {exc}") from exc
    return [
        {"kind": "unknown", "format": kind, "description": describe_format(kind), "label": label}
    ]


def _pkcs12_key(data: bytes, passphrase: bytes | None) -> list[dict[str, Any]]:
    from cryptography.hazmat.primitives.serialization import pkcs12

    for attempt in (passphrase, b""):
        try:
            p12 = pkcs12.load_pkcs12(data, attempt)
        except ValueError:
            continue
        if p12.key is not None:
            return [{"kind": "private-key", "encrypted": True, "key": key_description(p12.key)}]
        return []
    return []


def render(items: Sequence[dict[str, Any]]) -> str:
    """Human text for :func:`inspect_data`'s result."""
    out: list[str] = []
    for index, item in enumerate(items, start=1):
        kind = item["kind"]
        out.append(f"[{index}] {kind}")
        for key, value in item.items():
            if key in ("kind", "extensions", "revoked"):
                continue
            out.append(f"    {key.replace('_', ' ')}: {value}")
        for entry in item.get("revoked", []):
            reason = f" ({entry['reason']})" if entry["reason"] else ""
            out.append(f"    revoked: {entry['serial']} at {entry['date']}{reason}")
        for ext in item.get("extensions", []):
            crit = " (critical)" if ext["critical"] else ""
            out.append(f"    {ext['name']}{crit}: {ext['value']}")
    return "\n".join(out)
