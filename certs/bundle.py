"""Certificate files: detect what a file is, load certificates from PEM/DER/PKCS#7/PKCS#12.

Errors: :class:`~certs.errors.BundleError` (a file is not what was expected; the
message says what it is and how to convert it), and for PKCS#12 with a wrong
passphrase :class:`~certs.errors.PassphraseError`. Everything raised by
``cryptography`` while parsing is translated here.

Formats reported by :func:`detect_format` (stable strings, see :data:`FORMATS`).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs7, pkcs12

from certs.compat import load_certificate, read_names
from certs.errors import BundleError, PassphraseError

__all__ = [
    "FORMATS",
    "convert",
    "describe_format",
    "detect_format",
    "load_any_certificates",
    "load_pem_certificates",
    "order_chain",
    "pem_blocks",
    "pem_bundle",
    "read_certificates",
]

#: Every value :func:`detect_format` returns, with a human description.
FORMATS: dict[str, str] = {
    "empty": "an empty file",
    "text": "a text file without any PEM block",
    "binary": "binary data that is not a known DER structure",
    "pem-certificate": "PEM certificate(s)",
    "pem-pkcs7": "a PEM PKCS#7 bundle",
    "pem-private-key": "a PEM private key",
    "pem-encrypted-private-key": "an encrypted PEM private key",
    "pem-public-key": "a PEM public key",
    "pem-csr": "a PEM certificate signing request (CSR)",
    "pem-crl": "a PEM certificate revocation list (CRL)",
    "pem-other": "a PEM file with an unknown block type",
    "der-certificate": "a DER (binary) certificate",
    "der-pkcs7": "a DER PKCS#7 bundle",
    "der-pkcs12": "a PKCS#12 (.p12/.pfx) archive",
    "der-crl": "a DER certificate revocation list (CRL)",
    "der-csr": "a DER certificate signing request (CSR)",
    "der-private-key": "a DER private key",
}

_PEM_RE = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n(.*?)-----END \1-----", re.DOTALL)
_PEM_LABELS = {
    b"CERTIFICATE": "pem-certificate",
    b"TRUSTED CERTIFICATE": "pem-certificate",
    b"X509 CERTIFICATE": "pem-certificate",
    b"PKCS7": "pem-pkcs7",
    b"CMS": "pem-pkcs7",
    b"PRIVATE KEY": "pem-private-key",
    b"RSA PRIVATE KEY": "pem-private-key",
    b"EC PRIVATE KEY": "pem-private-key",
    b"ENCRYPTED PRIVATE KEY": "pem-encrypted-private-key",
    b"PUBLIC KEY": "pem-public-key",
    b"RSA PUBLIC KEY": "pem-public-key",
    b"CERTIFICATE REQUEST": "pem-csr",
    b"NEW CERTIFICATE REQUEST": "pem-csr",
    b"X509 CRL": "pem-crl",
}
# DER encodings of the PKCS#7 signedData OID, looked for near the start of a file.
_OID_SIGNED_DATA = bytes.fromhex("06092a864886f70d010702")
_CONVERT_HINT = {
    "der-certificate": "run: edgesim pki convert {src} --to pem",
    "der-pkcs7": "run: edgesim pki convert {src} --to pem",
    "pem-pkcs7": "run: edgesim pki convert {src} --to pem",
    "der-pkcs12": "run: edgesim pki convert {src} --to pem --passphrase-file FILE",
    "pem-private-key": "a certificate file must not hold a private key; give the certificate instead",
    "pem-encrypted-private-key": "a certificate file must not hold a private key",
    "der-private-key": "a certificate file must not hold a private key",
    "pem-csr": "a CSR must first be signed by a CA: edgesim pki issue ...",
    "der-csr": "a CSR must first be signed by a CA: edgesim pki issue ...",
    "pem-crl": "a CRL is not a certificate; inspect it with: edgesim pki inspect {src}",
    "der-crl": "a CRL is not a certificate; inspect it with: edgesim pki inspect {src}",
}


def pem_blocks(data: bytes) -> list[tuple[str, bytes]]:
    """Every PEM block in ``data`` as ``(label, whole block bytes)``, in file order."""
    return [(m.group(1).decode("ascii"), m.group(0)) for m in _PEM_RE.finditer(data)]


def _der_kind(data: bytes) -> str:
    """Classify binary ``data`` by trying each DER structure in turn."""
    if data[:1] != b"\x30":
        return "binary"
    head = data[:40]
    if _OID_SIGNED_DATA in head:
        return "der-pkcs7"
    # PFX ::= SEQUENCE { version INTEGER (3), authSafe ContentInfo, ... }
    for offset in (2, 3, 4, 5):
        if data[offset : offset + 3] == b"\x02\x01\x03":
            return "der-pkcs12"
    loaders: list[tuple[str, object]] = [
        ("der-certificate", x509.load_der_x509_certificate),
        ("der-crl", x509.load_der_x509_crl),
        ("der-csr", x509.load_der_x509_csr),
    ]
    for kind, loader in loaders:
        try:
            loader(data)  # type: ignore[operator]
        except x509.InvalidVersion:
            # Shaped like one (a version field is there to be wrong): a damaged
            # certificate, so that loading it says what is wrong with it.
            return kind
        except ValueError:
            continue
        return kind
    try:
        serialization.load_der_private_key(data, password=None)
    except TypeError:
        return "der-private-key"  # encrypted PKCS#8
    except (ValueError, UnsupportedAlgorithm):
        return "binary"
    return "der-private-key"


def detect_format(data: bytes) -> str:
    """Say what ``data`` holds: one of the keys of :data:`FORMATS`.

    For PEM input the first non-certificate block decides (a file with
    certificates and a private key is reported as a private key), so callers
    that want certificates only can refuse it by its real nature.
    """
    if not data.strip():
        return "empty"
    blocks = pem_blocks(data)
    if blocks:
        kinds = [_PEM_LABELS.get(label.encode(), "pem-other") for label, _ in blocks]
        for kind in kinds:
            if kind != "pem-certificate":
                return kind
        return "pem-certificate"
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return _der_kind(data)
    # Valid UTF-8 could still be DER by chance (short ASCII-only DER is rare): check.
    kind = _der_kind(data)
    return "text" if kind == "binary" else kind


def describe_format(kind: str) -> str:
    """The human description of a :func:`detect_format` value."""
    return FORMATS.get(kind, kind)


def _not_certificates(kind: str, source: str, expected: str, where: str = "") -> BundleError:
    hint = _CONVERT_HINT.get(kind, "")
    message = f"{source}{where}: expected {expected}, but the file is {describe_format(kind)}"
    if hint:
        message += "; " + hint.format(src=source)
    return BundleError(message)


def load_pem_certificates(data: bytes, *, source: str) -> list[x509.Certificate]:
    """Load the certificates of a PEM file, strictly.

    Only ``CERTIFICATE`` blocks are accepted (text around them is ignored, as
    OpenSSL does). Anything else raises :class:`BundleError` saying what the
    file is and how to convert it.
    """
    blocks = pem_blocks(data)
    if not blocks:
        raise _not_certificates(detect_format(data), source, "PEM certificate(s)")
    certs: list[x509.Certificate] = []
    for index, (label, block) in enumerate(blocks, start=1):
        if label != "CERTIFICATE":
            kind = _PEM_LABELS.get(label.encode(), "pem-other")
            raise _not_certificates(
                kind, source, "only CERTIFICATE blocks", f" (PEM block {index}, {label})"
            )
        try:
            certs.append(load_certificate(block, pem=True))
        except ValueError as exc:
            raise BundleError(
                f"{source}: PEM block {index} is not a valid certificate: {exc}"
            ) from exc
    return certs


def load_any_certificates(
    data: bytes, *, source: str, passphrase: bytes | None = None
) -> list[x509.Certificate]:
    """Load certificates from PEM, DER, PKCS#7 (PEM or DER) or PKCS#12.

    For PKCS#12 the leaf comes first, then the additional certificates.
    ``passphrase`` is used for PKCS#12 only.
    """
    kind = detect_format(data)
    try:
        if kind == "pem-certificate":
            return load_pem_certificates(data, source=source)
        if kind in ("pem-pkcs7", "der-pkcs7"):
            loaded = _load_pkcs7(data, pem=kind == "pem-pkcs7")
            return order_chain([read_names(c) for c in loaded])
        if kind == "der-certificate":
            return [load_certificate(data, pem=False)]
        if kind == "der-pkcs12":
            found = _pkcs12_certificates(data, source=source, passphrase=passphrase)
            return [read_names(c) for c in found]
    except (ValueError, x509.InvalidVersion, UnsupportedAlgorithm) as exc:
        # UnsupportedAlgorithm: a damaged PKCS#7 whose content type is no longer
        # signedData (found by tests/fuzz); it is as unreadable as a ValueError.
        # InvalidVersion, no ValueError either: a certificate whose version field
        # is not v1-v3 (found by tests/fuzz, in a PKCS#7 bundle).
        raise BundleError(f"{source}: cannot parse {describe_format(kind)}: {exc}") from exc
    raise _not_certificates(kind, source, "certificates (PEM, DER, PKCS#7 or PKCS#12)")


def _load_pkcs7(data: bytes, *, pem: bool) -> list[x509.Certificate]:
    with warnings.catch_warnings():
        # OpenSSL's crl2pkcs7 writes the certificate SET unsorted (BER, not DER);
        # cryptography parses it anyway but warns, which is noise for our users.
        warnings.simplefilter("ignore", UserWarning)
        if pem:
            return list(pkcs7.load_pem_pkcs7_certificates(data))
        return list(pkcs7.load_der_pkcs7_certificates(data))


def order_chain(certs: Sequence[x509.Certificate]) -> list[x509.Certificate]:
    """Put certificates that form one chain in leaf-to-root order.

    PKCS#7 stores certificates as a SET, so their order is lost; when the
    certificates form a single issuer chain it is rebuilt (by name), otherwise
    the input order is kept.
    """
    remaining = list(certs)
    if len(remaining) < 2:
        return remaining
    issuers = {c.issuer for c in remaining if c.issuer != c.subject}
    leaves = [c for c in remaining if c.subject not in issuers]
    if len(leaves) != 1:
        return remaining
    ordered = [leaves[0]]
    remaining.remove(leaves[0])
    while remaining:
        current = ordered[-1]
        nxt = [
            c
            for c in remaining
            if c.subject == current.issuer and current.issuer != current.subject
        ]
        if len(nxt) != 1:
            return list(certs)
        ordered.append(nxt[0])
        remaining.remove(nxt[0])
    return ordered


def _pkcs12_certificates(
    data: bytes, *, source: str, passphrase: bytes | None
) -> list[x509.Certificate]:
    try:
        p12 = _load_pkcs12(data, passphrase)
    except ValueError as exc:
        if passphrase is None:
            # An empty password is common for "unprotected" archives: try it before failing.
            try:
                p12 = _load_pkcs12(data, b"")
            except ValueError:
                raise PassphraseError(
                    f"{source}: PKCS#12 archive needs a passphrase (use --passphrase-file)"
                ) from exc
        else:
            raise PassphraseError(
                f"{source}: wrong passphrase for PKCS#12 archive, or the archive is corrupt"
            ) from exc
    certs = [] if p12.cert is None else [p12.cert.certificate]
    certs.extend(c.certificate for c in p12.additional_certs)
    return certs


def _load_pkcs12(data: bytes, passphrase: bytes | None) -> pkcs12.PKCS12KeyAndCertificates:
    with warnings.catch_warnings():
        # An archive that is not strict DER (trailing bytes, BER lengths) parses with
        # a UserWarning, which would escape as an error where warnings are errors
        # (found by tests/fuzz); as for PKCS#7, the certificates are what matters.
        warnings.simplefilter("ignore", UserWarning)
        return pkcs12.load_pkcs12(data, passphrase)


def pem_bundle(certs: Iterable[x509.Certificate]) -> bytes:
    """Concatenate ``certs`` as PEM, in the given order."""
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def read_certificates(
    path: Path | str, *, strict: bool = False, passphrase: bytes | None = None
) -> list[x509.Certificate]:
    """Read every certificate in the file at ``path``.

    By default any format :func:`load_any_certificates` knows is accepted; with
    ``strict=True`` only PEM ``CERTIFICATE`` blocks are (what a trust upload
    requires). An empty result raises :class:`BundleError`.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise BundleError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    certs = (
        load_pem_certificates(data, source=str(path))
        if strict
        else load_any_certificates(data, source=str(path), passphrase=passphrase)
    )
    if not certs:
        raise BundleError(f"{path}: holds no certificate")
    return certs


def convert(data: bytes, *, to: str, source: str, passphrase: bytes | None = None) -> bytes:
    """Convert certificates (PEM, DER, PKCS#7, PKCS#12) or a CRL to ``to`` (``pem``/``der``).

    PEM output holds every certificate (chain order rebuilt for PKCS#7);
    DER holds exactly one object, so several certificates are refused with a
    hint to use PEM.
    """
    if to not in ("pem", "der"):
        raise BundleError(f"unknown output format {to!r}: use pem or der")
    kind = detect_format(data)
    if kind in ("pem-crl", "der-crl"):
        try:
            crl = (
                x509.load_pem_x509_crl(data) if kind == "pem-crl" else x509.load_der_x509_crl(data)
            )
        except ValueError as exc:
            raise BundleError(f"{source}: malformed CRL: {exc}") from exc
        encoding = serialization.Encoding.PEM if to == "pem" else serialization.Encoding.DER
        return crl.public_bytes(encoding)
    certs = load_any_certificates(data, source=source, passphrase=passphrase)
    if not certs:
        raise BundleError(f"{source}: holds no certificate")
    if to == "pem":
        return pem_bundle(certs)
    if len(certs) > 1:
        raise BundleError(
            f"{source}: holds {len(certs)} certificates but DER holds exactly one; use --to pem"
        )
    return certs[0].public_bytes(serialization.Encoding.DER)
