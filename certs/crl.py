"""Certificate revocation lists: build, read, and revoke into an existing CRL.

Every CRL carries the issuing CA's authorityKeyIdentifier and a CRL number;
updating a CRL keeps its entries and increments the number. Times are passed
in (``now``, ``last_update``); naive datetimes are read as UTC.

Errors: :class:`~certs.errors.CrlError` (unreadable or foreign CRL, unknown
reason, a certificate from another CA); parse failures of ``cryptography`` are
translated here.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from certs.authority import CertificateAuthority
from certs.bundle import describe_format, detect_format, pem_blocks
from certs.compat import certificate_public_key, read_names
from certs.errors import CrlError

__all__ = [
    "REASONS",
    "RevokedEntry",
    "build_crl",
    "crl_number",
    "load_crls",
    "parse_serial",
    "read_crl",
    "revoke",
    "revoked_entries",
    "update_crl",
]

#: (serial, revocation time, reason name or None)
RevokedEntry = tuple[int, datetime, str | None]

#: RFC 5280 reason names (OpenSSL spelling) to ``cryptography`` flags.
REASONS: dict[str, x509.ReasonFlags] = {
    "unspecified": x509.ReasonFlags.unspecified,
    "keyCompromise": x509.ReasonFlags.key_compromise,
    "CACompromise": x509.ReasonFlags.ca_compromise,
    "affiliationChanged": x509.ReasonFlags.affiliation_changed,
    "superseded": x509.ReasonFlags.superseded,
    "cessationOfOperation": x509.ReasonFlags.cessation_of_operation,
    "certificateHold": x509.ReasonFlags.certificate_hold,
    "removeFromCRL": x509.ReasonFlags.remove_from_crl,
    "privilegeWithdrawn": x509.ReasonFlags.privilege_withdrawn,
    "AACompromise": x509.ReasonFlags.aa_compromise,
}
_REASON_NAMES = {flag: name for name, flag in REASONS.items()}


def _utc(value: datetime) -> datetime:
    value = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    return value.astimezone(UTC).replace(microsecond=0)


def parse_serial(text: str) -> int:
    """A serial number written in hex, as ``inspect`` and OpenSSL print it.

    Colons and a ``0x`` prefix are allowed: ``1f:a0``, ``0x1fa0``, ``1FA0``.
    """
    cleaned = text.strip().lower().removeprefix("0x").replace(":", "")
    try:
        value = int(cleaned, 16)
    except ValueError:
        raise CrlError(f"invalid serial number {text!r}: expected hex digits") from None
    if value <= 0:
        raise CrlError(f"invalid serial number {text!r}: must be positive")
    return value


def build_crl(
    ca: CertificateAuthority,
    revoked: Sequence[RevokedEntry],
    *,
    crl_number: int,
    last_update: datetime | None = None,
    next_update: datetime | None = None,
    days: int = 7,
) -> x509.CertificateRevocationList:
    """Sign a CRL for ``ca`` listing ``revoked`` (reason names from :data:`REASONS`)."""
    if crl_number < 0:
        raise CrlError(f"CRL number must be >= 0, got {crl_number}")
    this = _utc(last_update or datetime.now(UTC))
    nxt = _utc(next_update) if next_update is not None else this + timedelta(days=days)
    if nxt <= this:
        raise CrlError(
            f"next update ({nxt.isoformat()}) must be after last update ({this.isoformat()})"
        )
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.cert.subject)
        .last_update(this)
        .next_update(nxt)
        .add_extension(ca.authority_key_identifier, critical=False)
        .add_extension(x509.CRLNumber(crl_number), critical=False)
    )
    for serial, when, reason in revoked:
        entry = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(_utc(when))
        if reason is not None:
            flag = REASONS.get(reason)
            if flag is None:
                raise CrlError(f"unknown revocation reason {reason!r}; known: {', '.join(REASONS)}")
            entry = entry.add_extension(x509.CRLReason(flag), critical=False)
        builder = builder.add_revoked_certificate(entry.build())
    return ca.sign_crl(builder)


def load_crls(data: bytes, source: str) -> list[x509.CertificateRevocationList]:
    """Every CRL in ``data`` (PEM ``X509 CRL`` blocks, or one DER CRL)."""
    blocks = [block for label, block in pem_blocks(data) if label == "X509 CRL"]
    try:
        if blocks:
            return [read_names(x509.load_pem_x509_crl(block)) for block in blocks]
        kind = detect_format(data)
        if kind == "der-crl":
            return [read_names(x509.load_der_x509_crl(data))]
    except (ValueError, x509.InvalidVersion) as exc:  # InvalidVersion is no ValueError
        raise CrlError(f"{source}: malformed CRL: {exc}") from exc
    raise CrlError(f"{source}: expected a CRL, but the file is {describe_format(kind)}")


def read_crl(path: Path | str) -> x509.CertificateRevocationList:
    """Read the (first) CRL in the file at ``path``."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise CrlError(f"{path}: cannot read CRL: {exc.strerror or exc}") from exc
    return load_crls(data, str(path))[0]


def crl_number(crl: x509.CertificateRevocationList) -> int | None:
    """The CRL number extension's value, or ``None``."""
    try:
        return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        return None


def revoked_entries(crl: x509.CertificateRevocationList) -> list[RevokedEntry]:
    """The entries of ``crl`` as ``(serial, time, reason name)``."""
    entries: list[RevokedEntry] = []
    for item in crl:
        try:
            flag = item.extensions.get_extension_for_class(x509.CRLReason).value.reason
            reason: str | None = _REASON_NAMES.get(flag, flag.value)
        except x509.ExtensionNotFound:
            reason = None
        entries.append((item.serial_number, item.revocation_date_utc, reason))
    return entries


def _check_issuer(
    ca: CertificateAuthority, crl: x509.CertificateRevocationList, source: str
) -> None:
    if crl.issuer != ca.cert.subject:
        raise CrlError(f"{source}: CRL was issued by {crl.issuer.rfc4514_string()}, not by this CA")
    try:
        valid = crl.is_signature_valid(certificate_public_key(ca.cert))  # type: ignore[arg-type]
    except (InvalidSignature, TypeError, ValueError):
        valid = False
    if not valid:
        raise CrlError(f"{source}: CRL signature does not verify with this CA's key")


def update_crl(
    ca: CertificateAuthority,
    existing: x509.CertificateRevocationList | None,
    add: Iterable[RevokedEntry],
    *,
    now: datetime | None = None,
    days: int = 7,
    source: str = "<crl>",
) -> x509.CertificateRevocationList:
    """A new CRL: ``existing``'s entries plus ``add`` (serials already listed are kept as
    they were), CRL number incremented (1 for a new CRL)."""
    entries: dict[int, RevokedEntry] = {}
    number = 1
    if existing is not None:
        _check_issuer(ca, existing, source)
        for entry in revoked_entries(existing):
            entries[entry[0]] = entry
        number = (crl_number(existing) or 0) + 1
    for entry in add:
        entries.setdefault(entry[0], entry)
    return build_crl(
        ca,
        list(entries.values()),
        crl_number=number,
        last_update=now or datetime.now(UTC),
        days=days,
    )


def revoke(
    ca: CertificateAuthority,
    crl_path: Path | str,
    certs: Sequence[x509.Certificate] = (),
    *,
    serials: Sequence[int] = (),
    reason: str | None = None,
    now: datetime | None = None,
    days: int = 7,
) -> x509.CertificateRevocationList:
    """Add ``certs`` (checked to be issued by ``ca``) and ``serials`` to the CRL file.

    The file is created when missing; the new CRL is written back as PEM.
    """
    when = _utc(now or datetime.now(UTC))
    for cert in certs:
        if cert.issuer != ca.cert.subject:
            raise CrlError(
                f"certificate {cert.subject.rfc4514_string()} (serial {cert.serial_number:x}) "
                f"was issued by {cert.issuer.rfc4514_string()}, not by this CA"
            )
    if reason is not None and reason not in REASONS:
        raise CrlError(f"unknown revocation reason {reason!r}; known: {', '.join(REASONS)}")
    path = Path(crl_path)
    existing = read_crl(path) if path.exists() else None
    add = [(c.serial_number, when, reason) for c in certs] + [(s, when, reason) for s in serials]
    crl = update_crl(ca, existing, add, now=when, days=days, source=str(path))
    try:
        path.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    except OSError as exc:
        raise CrlError(f"{path}: cannot write CRL: {exc.strerror or exc}") from exc
    return crl
