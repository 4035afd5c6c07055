"""Validation of what is uploaded to a certificate set.

Pure functions over bytes and :mod:`cryptography` objects: no storage, no I/O.
The PKI toolkit does the certificate work (:func:`certs.bundle.load_pem_certificates`
reads the file strictly, :func:`certs.lint.lint_chain` with the ``ca-set``
profile checks each certificate and the chain); this module turns their results and errors into
:class:`~edge.trust.model.Finding` values inside a
:class:`~edge.trust.errors.RefusedError`, so ``CertsError`` never leaves here.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from cryptography import x509

from certs.bundle import describe_format, detect_format, load_pem_certificates
from certs.compat import read_names
from certs.errors import CertsError
from certs.lint import lint_chain
from edge.trust.errors import LimitError, RefusedError
from edge.trust.model import Finding

__all__ = [
    "crl_issuer_in",
    "describe_name",
    "parse_crl",
    "validate_set_name",
    "validate_upload",
]

_SET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def describe_name(name: x509.Name) -> str:
    """Return ``name`` the way findings and listings show it (RFC 4514)."""
    return name.rfc4514_string()


def validate_set_name(name: str) -> None:
    """Refuse a set name that is not 1-64 letters, digits, ``.``, ``_``, ``-``."""
    if not _SET_NAME.fullmatch(name):
        raise RefusedError(
            f"invalid certificate set name {name!r}",
            [
                Finding(
                    severity="error",
                    code="bad-set-name",
                    message=f"set name {name!r} must be 1-64 characters: letters, digits, "
                    "'.', '_' or '-', starting with a letter or digit",
                )
            ],
        )


def validate_upload(
    data: bytes,
    *,
    allow_sha1: bool,
    at: datetime,
    max_certificates: int,
    source: str = "FILE",
) -> tuple[list[x509.Certificate], list[Finding]]:
    """Check one uploaded file; return its certificates and any warnings.

    Raises :class:`RefusedError` naming every offending certificate (the linter's
    findings), or :class:`LimitError` when the file holds more than
    ``max_certificates`` (code ``too-many``, with the other findings too).
    """
    try:
        certs = load_pem_certificates(data, source=source)
    except CertsError as exc:
        kind = detect_format(data)
        headline = (
            # PEM certificates, one of which does not parse: say which, and why.
            f"upload refused: {exc}"
            if kind == "pem-certificate"
            else f"upload refused: the file is {describe_format(kind)}, not PEM certificates"
        )
        raise RefusedError(
            headline,
            [Finding(severity="error", code=f"format-{kind}", message=str(exc))],
        ) from exc
    if not certs:
        raise RefusedError(
            "upload refused: the file holds no certificate",
            [Finding(severity="error", code="format-empty", message=f"{source}: no certificate")],
        )
    findings = [
        _finding(f)
        for f in lint_chain(
            certs,
            profile="ca-set",
            at=at,
            allow_sha1=allow_sha1,
            max_certificates=max_certificates,
        )
    ]
    errors = [f for f in findings if f.severity == "error"]
    if any(f.code == "too-many" for f in errors):
        raise LimitError(
            f"upload refused: {len(certs)} certificates, limit {max_certificates}", errors
        )
    if errors:
        noun = "problem" if len(errors) == 1 else "problems"
        raise RefusedError(f"upload refused: {len(errors)} {noun}", errors)
    return certs, [f for f in findings if f.severity != "error"]


def _finding(raw: Any) -> Finding:
    """Copy a :class:`certs.lint.Finding` into the trust store's own type."""
    return Finding(
        severity=str(raw.severity),
        code=str(raw.code),
        message=str(raw.message),
        position=raw.position,
        subject=raw.subject,
        hint=raw.hint,
    )


def parse_crl(data: bytes) -> x509.CertificateRevocationList:
    """Read one CRL in PEM or DER; refuse anything else saying what it is."""
    kind = detect_format(data)
    try:
        if kind == "pem-crl":
            return read_names(x509.load_pem_x509_crl(data))
        if kind == "der-crl":
            return read_names(x509.load_der_x509_crl(data))
    except (ValueError, x509.InvalidVersion) as exc:  # InvalidVersion is no ValueError
        raise RefusedError(
            "CRL refused: it cannot be parsed",
            [Finding(severity="error", code="crl-malformed", message=f"cannot parse CRL: {exc}")],
        ) from exc
    raise RefusedError(
        f"CRL refused: the file is {describe_format(kind)}",
        [
            Finding(
                severity="error",
                code=f"crl-format-{kind}",
                message=f"expected a CRL (PEM or DER), but the file is {describe_format(kind)}",
                hint="build one with: edgesim pki crl ...",
            )
        ],
    )


def crl_issuer_in(
    crl: x509.CertificateRevocationList, cas: Sequence[x509.Certificate]
) -> x509.Certificate:
    """Return the CA among ``cas`` that signed ``crl``; refuse the CRL if there is none."""
    issuer = describe_name(crl.issuer)
    named = [c for c in cas if c.subject == crl.issuer]
    for ca in named:
        try:
            if crl.is_signature_valid(ca.public_key()):  # type: ignore[arg-type]
                return ca
        except (TypeError, ValueError):
            continue  # a key type CRLs cannot use: try the next candidate
    if named:
        finding = Finding(
            severity="error",
            code="crl-bad-signature",
            message=f"the CRL names issuer {issuer} but its signature does not verify with "
            "that CA's key",
            hint="the CRL must be signed by the CA's current key",
        )
    else:
        finding = Finding(
            severity="error",
            code="crl-issuer-unknown",
            message=f"the CRL's issuer {issuer} is not a CA of the set's active version",
            hint="upload the CRL to the set holding its issuer, or activate a version with it",
        )
    raise RefusedError("CRL refused: " + finding.message, [finding])
