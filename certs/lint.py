"""Chain linting: why a certificate file would be refused, certificate by certificate.

:func:`lint_chain` checks an ordered list of certificates against the seed's three
conditions for a chain (each certificate is followed by its issuer's; each issuer DN
equals the next subject DN; each signature verifies with the next certificate's
public key) and against what else makes chains fail in the field: issuers that are
not CAs or lack ``keyCertSign``, path length constraints, validity at a given time,
weak hashes and keys, duplicates, device certificates without ``clientAuth``,
leaves in a CA set, a missing root, too many certificates.

It never raises for a bad certificate: every problem is a :class:`Finding` with a
stable ``code``, the 1-based ``position`` and subject of the certificate, a message
and a hint. Errors make the file unusable (:func:`has_errors`); warnings alone do
not. The only exception raised here is ``ValueError`` for a bad argument (unknown
profile, negative maximum), a programming error rather than bad input.

Profiles
--------
``chain`` (a device chain, or a file checked before upload): the file is one chain,
leaf first. A last certificate that is not self-signed is a ``missing-root``
*warning*: the root may already be in the trust store, or be uploaded separately.

``ca-set`` (what the trust store accepts as a certificate set): every certificate
must be a CA. A set may hold several independent hierarchies, so certificates are
grouped into chains by walking the file in order: a group continues while the next
certificate is the issuer of the current one, and ends at a self-signed root. Each
group therefore obeys the seed's conditions in order and must end at a self-signed
root; a group that does not is a ``missing-root`` *error*. The choice follows what
production edges do: OpenSSL-based TLS terminators (nginx ``ssl_client_certificate``,
the edge's own ``ssl`` contexts) anchor only on self-signed roots unless
``X509_V_FLAG_PARTIAL_CHAIN`` is set, which they do not set, so an
intermediates-only set would make every device fail with ``unknown_ca``.

A self-signed root's own signature hash is a warning, not an error: TLS peers never
check the trust anchor's self-signature (OpenSSL skips it too), but auditors flag it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from certs.compat import (
    certificate_public_key,
    dsa_deprecation_silenced,
    has_dsa_key,
    is_dsa_key,
)

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

__all__ = [
    "CODES",
    "Finding",
    "Profile",
    "describe_certificate",
    "extension_value",
    "extensions_problem",
    "has_errors",
    "is_self_signed",
    "lint_chain",
    "signature_problem",
]

Profile = Literal["chain", "ca-set"]
_ExtT = TypeVar("_ExtT", bound=x509.ExtensionType)
Severity = Literal["error", "warning"]

#: Every finding code, with what it means (stable: tools match on these).
CODES: dict[str, str] = {
    "empty": "the file holds no certificate",
    "too-many": "more certificates than allowed",
    "duplicate": "the same certificate appears twice",
    "bad-extensions": "the extensions cannot be parsed (e.g. one appears twice)",
    "issuer-mismatch": "the next certificate is not the issuer (issuer DN differs)",
    "order": "the issuer is in the file, but not right after the certificate",
    "bad-signature": "the signature does not verify with the issuer's public key",
    "not-ca": "an issuer (or root, or ca-set member) lacks basicConstraints CA:true",
    "no-keycertsign": "an issuer's keyUsage lacks keyCertSign",
    "path-length-exceeded": "a CA's pathLenConstraint is exceeded below it",
    "expired": "the certificate is past its notAfter",
    "not-yet-valid": "the certificate is before its notBefore",
    "weak-signature-hash": "signed with MD5 or SHA-1 (or an unknown hash)",
    "weak-rsa-key": "an RSA key under 2048 bits",
    "weak-ec-key": "an EC key under 256 bits",
    "weak-dsa-key": "a DSA key (no TLS 1.3 peer accepts it)",
    "unsupported-key": "a public key of an unknown algorithm or curve",
    "leaf-in-ca-set": "a non-CA certificate in a CA set",
    "no-client-auth": "a device certificate whose EKU lacks clientAuth",
    "missing-root": "the chain does not end at a self-signed root",
}

_CLIENT_EKUS = frozenset(
    {ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE}
)
_MIN_RSA_BITS = 2048
_MIN_EC_BITS = 256


@dataclass(frozen=True, slots=True, kw_only=True)
class Finding:
    """One problem found in a certificate file.

    ``position`` is 1-based (``None`` for file-level findings such as ``empty``),
    ``subject`` the RFC 4514 subject of that certificate, ``message`` says what is
    wrong naming the certificate, ``hint`` says how to fix it.
    """

    severity: Severity
    code: str
    position: int | None
    subject: str | None
    message: str
    hint: str

    def to_dict(self) -> dict[str, object]:
        """The finding as a JSON-ready dictionary (the ``--json`` shape)."""
        return {
            "severity": self.severity,
            "code": self.code,
            "position": self.position,
            "subject": self.subject,
            "message": self.message,
            "hint": self.hint,
        }


def has_errors(findings: Sequence[Finding]) -> bool:
    """True when any finding is an error (the file must be refused)."""
    return any(f.severity == "error" for f in findings)


def describe_certificate(cert: x509.Certificate, position: int) -> dict[str, object]:
    """The ``certificates[]`` entry of ``edgesim pki lint --json`` for one certificate."""
    return {
        "position": position,
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "serial": format(cert.serial_number, "x"),
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": cert.not_valid_after_utc.isoformat(),
        "sha256": cert.fingerprint(hashes.SHA256()).hex(),
    }


def signature_problem(cert: x509.Certificate, issuer: x509.Certificate) -> str | None:
    """None when ``issuer``'s key verifies ``cert``'s signature, else why not (a sentence).

    ``verify_directly_issued_by`` covers RSA PKCS#1 v1.5 and PSS, ECDSA, Ed25519 and
    Ed448 with current hashes. It refuses SHA-1 and MD5 outright, which a linter
    still has to check (to tell "weak" from "forged"), so those fall back to
    verifying with the issuer's public key directly. What either raises is
    translated into a sentence saying which part failed.
    """
    try:
        if has_dsa_key(issuer):
            # A DSA issuer is refused by its own finding (weak-dsa-key); its
            # signatures are still checked, to tell a weak chain from a forged one.
            with dsa_deprecation_silenced():
                return _verify_with_key(cert, certificate_public_key(issuer))
        cert.verify_directly_issued_by(issuer)
    except InvalidSignature:
        return "the signature does not verify with the issuer's public key"
    except (UnsupportedAlgorithm, ValueError, TypeError):
        try:
            public = certificate_public_key(issuer)
        except (UnsupportedAlgorithm, ValueError) as exc:
            return f"the issuer's public key cannot be read ({exc})"
        return _verify_with_key(cert, public)
    return None


def _verify_with_key(cert: x509.Certificate, public: CertificatePublicKeyTypes) -> str | None:
    """The fallback of :func:`signature_problem`, one key type at a time."""
    signature, tbs = cert.signature, cert.tbs_certificate_bytes
    try:
        params = cert.signature_algorithm_parameters
        digest = cert.signature_hash_algorithm
        if isinstance(public, rsa.RSAPublicKey) and isinstance(
            params, padding.PKCS1v15 | padding.PSS
        ):
            if digest is None:
                return "the RSA signature names no hash algorithm"
            public.verify(signature, tbs, params, digest)
        elif isinstance(public, ec.EllipticCurvePublicKey) and isinstance(params, ec.ECDSA):
            public.verify(signature, tbs, params)
        elif isinstance(public, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
            public.verify(signature, tbs)
        elif is_dsa_key(public) and digest is not None:
            public.verify(signature, tbs, digest)
        else:
            algorithm = cert.signature_algorithm_oid
            return (
                f"the signature algorithm ({getattr(algorithm, '_name', algorithm.dotted_string)}) "
                f"does not match the issuer's {type(public).__name__.removesuffix('PublicKey')} key"
            )
    except InvalidSignature:
        return "the signature does not verify with the issuer's public key"
    except UnsupportedAlgorithm as exc:
        return f"the signature algorithm cannot be checked here ({exc})"
    except (ValueError, TypeError) as exc:
        return f"the signature cannot be checked ({exc})"
    return None


def is_self_signed(cert: x509.Certificate) -> bool:
    """True when ``cert`` is self-issued and its signature verifies with its own key."""
    return cert.issuer == cert.subject and signature_problem(cert, cert) is None


def extensions_problem(cert: x509.Certificate) -> str | None:
    """None when ``cert``'s extensions can be read, else why not (duplicates, bad DER)."""
    try:
        cert.extensions  # noqa: B018 - parsing is the check
    except (x509.DuplicateExtension, ValueError) as exc:
        return str(exc)
    return None


def extension_value(
    cert: x509.Certificate | x509.RevokedCertificate, kind: type[_ExtT]
) -> _ExtT | None:
    """The value of ``cert``'s extension of type ``kind``; None if absent or unreadable.

    Unreadable extensions (see :func:`extensions_problem`) are reported on their
    own; callers asking for one extension treat them as absent.
    """
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except (x509.ExtensionNotFound, x509.DuplicateExtension, ValueError):
        return None


def _basic_constraints(cert: x509.Certificate) -> x509.BasicConstraints | None:
    return extension_value(cert, x509.BasicConstraints)


def _key_usage(cert: x509.Certificate) -> x509.KeyUsage | None:
    return extension_value(cert, x509.KeyUsage)


def _eku(cert: x509.Certificate) -> x509.ExtendedKeyUsage | None:
    return extension_value(cert, x509.ExtendedKeyUsage)


def _is_ca(cert: x509.Certificate) -> bool:
    bc = _basic_constraints(cert)
    return bc is not None and bc.ca


def _hash_name(cert: x509.Certificate) -> str | None:
    """The signature's hash name (lower case), ``None`` for hash-less Ed25519/Ed448."""
    try:
        algorithm = cert.signature_hash_algorithm
    except UnsupportedAlgorithm:
        # MD2, MD4 and other hashes cryptography cannot even name.
        return f"unknown ({cert.signature_algorithm_oid.dotted_string})"
    return None if algorithm is None else algorithm.name.lower()


class _Linter:
    """Collects findings for one call of :func:`lint_chain`."""

    def __init__(
        self, certs: Sequence[x509.Certificate], at: dt.datetime, allow_sha1: bool
    ) -> None:
        self.certs = list(certs)
        self.at = at
        self.allow_sha1 = allow_sha1
        self.findings: list[Finding] = []
        self.self_signed = [is_self_signed(c) for c in self.certs]

    def label(self, index: int) -> str:
        cert = self.certs[index]
        return f"certificate {index + 1} ({cert.subject.rfc4514_string()})"

    def add(
        self, severity: Severity, code: str, index: int | None, message: str, hint: str
    ) -> None:
        subject = None if index is None else self.certs[index].subject.rfc4514_string()
        position = None if index is None else index + 1
        if any(f.code == code and f.position == position for f in self.findings):
            # One finding per condition and certificate (a root that is no CA
            # is both "the issuer of 1" and "the root").
            return
        self.findings.append(
            Finding(
                severity=severity,
                code=code,
                position=position,
                subject=subject,
                message=message,
                hint=hint,
            )
        )

    # --- checks on one certificate ------------------------------------------

    def check_each(self) -> None:
        seen: dict[bytes, int] = {}
        for index, cert in enumerate(self.certs):
            fingerprint = cert.fingerprint(hashes.SHA256())
            if fingerprint in seen:
                self.add(
                    "error",
                    "duplicate",
                    index,
                    f"{self.label(index)} is the same certificate as certificate "
                    f"{seen[fingerprint] + 1}",
                    "remove the second copy; each certificate must appear once",
                )
            else:
                seen[fingerprint] = index
            problem = extensions_problem(cert)
            if problem is not None:
                self.add(
                    "error",
                    "bad-extensions",
                    index,
                    f"{self.label(index)} has extensions that cannot be parsed ({problem}); "
                    "every TLS stack refuses it",
                    "re-issue it with each extension once and every value well-formed "
                    "(RFC 5280 4.2)",
                )
            self.check_validity(index)
            self.check_hash(index)
            self.check_key(index)

    def check_validity(self, index: int) -> None:
        cert = self.certs[index]
        when = self.at.isoformat()
        if self.at > cert.not_valid_after_utc:
            self.add(
                "error",
                "expired",
                index,
                f"{self.label(index)} expired on {cert.not_valid_after_utc.isoformat()} "
                f"(checked at {when})",
                "issue a new certificate (or renew it with the same key) and upload that",
            )
        elif self.at < cert.not_valid_before_utc:
            self.add(
                "error",
                "not-yet-valid",
                index,
                f"{self.label(index)} is not valid before "
                f"{cert.not_valid_before_utc.isoformat()} (checked at {when})",
                "check the issuing machine's clock, or wait until notBefore; "
                "devices and edges reject certificates from the future",
            )

    def check_hash(self, index: int) -> None:
        name = _hash_name(self.certs[index])
        if (
            name is None
            or name in ("sha224", "sha256", "sha384", "sha512")
            or name.startswith("sha3-")
        ):
            return
        if self.self_signed[index]:
            # Nobody verifies a trust anchor's self-signature; still worth knowing.
            self.add(
                "warning",
                "weak-signature-hash",
                index,
                f"{self.label(index)} is a root self-signed with {name}; TLS peers do "
                "not check a root's own signature, but auditors and some tools flag it",
                "re-sign the root with SHA-256 (same key and name) when convenient",
            )
            return
        severity: Severity = "warning" if name == "sha1" and self.allow_sha1 else "error"
        self.add(
            severity,
            "weak-signature-hash",
            index,
            f"{self.label(index)} is signed with {name}; OpenSSL 3 at its default "
            "security level and every current TLS stack reject it",
            "re-issue the certificate signed with SHA-256"
            + ("" if severity == "warning" else " (or pass --allow-sha1 for SHA-1 legacy fleets)"),
        )

    def check_key(self, index: int) -> None:
        try:
            public = certificate_public_key(self.certs[index])
        except (UnsupportedAlgorithm, ValueError) as exc:
            self.add(
                "error",
                "unsupported-key",
                index,
                f"{self.label(index)} has a public key that cannot be used ({exc})",
                "issue a new certificate with an EC P-256/P-384, RSA 2048+ or Ed25519 key",
            )
            return
        if isinstance(public, rsa.RSAPublicKey) and public.key_size < _MIN_RSA_BITS:
            self.add(
                "error",
                "weak-rsa-key",
                index,
                f"{self.label(index)} has a {public.key_size}-bit RSA key "
                f"(at least {_MIN_RSA_BITS} required)",
                "issue a new certificate with an RSA 2048+ or EC P-256 key",
            )
        elif isinstance(public, ec.EllipticCurvePublicKey) and public.key_size < _MIN_EC_BITS:
            self.add(
                "error",
                "weak-ec-key",
                index,
                f"{self.label(index)} has a {public.key_size}-bit EC key on "
                f"{public.curve.name} (at least {_MIN_EC_BITS} bits required)",
                "issue a new certificate with a P-256 or P-384 key",
            )
        elif is_dsa_key(public):
            self.add(
                "error",
                "weak-dsa-key",
                index,
                f"{self.label(index)} has a DSA key, which TLS 1.3 does not allow",
                "issue a new certificate with an EC P-256 or RSA 2048+ key",
            )

    # --- checks on links -------------------------------------------------------

    def find_issuer(self, index: int) -> int | None:
        """The position of another certificate that issued ``index``, or None."""
        cert = self.certs[index]
        for other, candidate in enumerate(self.certs):
            if other == index or candidate.subject != cert.issuer:
                continue
            if signature_problem(cert, candidate) is None:
                return other
        return None

    def order_error(self, index: int, issuer_index: int) -> None:
        """``index``'s issuer is at ``issuer_index``, not right after it."""
        following = (
            f"is followed by certificate {index + 2}"
            if index + 1 < len(self.certs)
            else "is the last certificate"
        )
        self.add(
            "error",
            "order",
            index,
            f"{self.label(index)} {following}, but its issuer is certificate {issuer_index + 1}",
            "reorder the file: each certificate must be followed by its issuer's "
            "(leaf first, root last)",
        )

    def check_link(self, index: int, issuer_index: int) -> None:
        """``issuer_index`` comes right after ``index``: check names, signature, CA."""
        cert, issuer = self.certs[index], self.certs[issuer_index]
        if cert.issuer != issuer.subject:
            elsewhere = self.find_issuer(index)
            if elsewhere is not None:
                self.order_error(index, elsewhere)
            else:
                self.add(
                    "error",
                    "issuer-mismatch",
                    index,
                    f"{self.label(index)} names issuer {cert.issuer.rfc4514_string()!r}, but "
                    f"the next certificate ({issuer_index + 1}) is "
                    f"{issuer.subject.rfc4514_string()!r}",
                    "put the certificate of the CA that issued it right after it "
                    "(openssl x509 -noout -issuer shows which CA that is)",
                )
            return
        problem = signature_problem(cert, issuer)
        if problem is not None:
            self.add(
                "error",
                "bad-signature",
                index,
                f"{self.label(index)}: {problem} (issuer: certificate {issuer_index + 1}); "
                "the issuer DN matches, so this is another CA with the same name or the "
                "certificate was altered",
                "use the CA certificate whose key actually signed it (compare the "
                "authorityKeyIdentifier with the issuer's subjectKeyIdentifier)",
            )
        self.check_issuer_is_ca(issuer_index, f"it issued certificate {index + 1}")

    def check_issuer_is_ca(self, index: int, why: str) -> None:
        bc = _basic_constraints(self.certs[index])
        if bc is None or not bc.ca:
            state = "has no basicConstraints" if bc is None else "has CA:false"
            self.add(
                "error",
                "not-ca",
                index,
                f"{self.label(index)} {state}, but {why}; only CA certificates may issue",
                "re-issue this CA certificate with basicConstraints = critical, CA:true "
                "(the seed's root.conf sets CA:true in [v3_ca])",
            )
            return
        ku = _key_usage(self.certs[index])
        if ku is not None and not ku.key_cert_sign:
            self.add(
                "error",
                "no-keycertsign",
                index,
                f"{self.label(index)} has a keyUsage without keyCertSign, but {why}",
                "re-issue it with keyUsage = critical, keyCertSign, cRLSign",
            )

    def check_path_lengths(self, group: Sequence[int]) -> None:
        """``group`` is one chain's positions, leaf-most first, each followed by its issuer."""
        for depth, index in enumerate(group):
            bc = _basic_constraints(self.certs[index])
            if bc is None or not bc.ca or bc.path_length is None:
                continue
            # Intermediates below this CA, not counting self-issued ones (RFC 5280
            # 6.1.4). A leaf at the bottom is not an intermediate; a CA at the
            # bottom is (a device certificate will hang below it).
            first = 0 if _is_ca(self.certs[group[0]]) else 1
            below = [i for i in group[first:depth] if self.certs[i].issuer != self.certs[i].subject]
            if len(below) > bc.path_length:
                self.add(
                    "error",
                    "path-length-exceeded",
                    index,
                    f"{self.label(index)} allows {bc.path_length} intermediate CA(s) below "
                    f"it (pathlen:{bc.path_length}), but {len(below)} follow in this chain "
                    f"(certificates {', '.join(str(i + 1) for i in below)})",
                    "issue the device from a CA closer to this one, or re-issue this CA "
                    "with a larger pathlen",
                )

    def check_root(self, index: int) -> None:
        self.check_issuer_is_ca(index, "it is the root of the chain")


def _check_device(linter: _Linter) -> None:
    """The first certificate of a ``chain`` file, if a leaf, must allow clientAuth."""
    first = linter.certs[0]
    if _is_ca(first):
        return
    eku = _eku(first)
    if eku is not None and not (_CLIENT_EKUS & set(eku)):
        names = ", ".join(getattr(oid, "_name", oid.dotted_string) for oid in eku)
        linter.add(
            "error",
            "no-client-auth",
            0,
            f"{linter.label(0)} is a device certificate whose extendedKeyUsage ({names}) "
            "lacks clientAuth; the edge refuses it with unsupported_certificate",
            "re-issue it with extendedKeyUsage = clientAuth (or leave EKU out)",
        )


def _lint_as_chain(linter: _Linter) -> None:
    count = len(linter.certs)
    for index in range(count - 1):
        if linter.self_signed[index]:
            linter.add(
                "error",
                "order",
                index,
                f"{linter.label(index)} is a self-signed root, but certificate {index + 2} "
                "follows it; a chain ends at its root",
                "put the root last, or split independent chains into separate files",
            )
            continue
        linter.check_link(index, index + 1)
    linter.check_path_lengths(range(count))
    last = count - 1
    if linter.self_signed[last]:
        if count > 1 or _is_ca(linter.certs[last]):
            linter.check_root(last)
    elif linter.certs[last].issuer == linter.certs[last].subject:
        linter.add(
            "error",
            "bad-signature",
            last,
            f"{linter.label(last)} is self-issued but its signature does not verify with its "
            "own key",
            "re-create the root certificate from its key",
        )
    else:
        elsewhere = linter.find_issuer(last)
        if elsewhere is None:
            linter.add(
                "warning",
                "missing-root",
                last,
                f"{linter.label(last)} is issued by "
                f"{linter.certs[last].issuer.rfc4514_string()!r}, which is not in the file: "
                "the chain does not reach a root",
                "the root must be uploaded to the certificate set (or already be in the "
                "trust store) for devices to validate; append it to check the full chain",
            )
        else:
            linter.order_error(last, elsewhere)
    _check_device(linter)


def _lint_as_ca_set(linter: _Linter) -> None:
    for index, cert in enumerate(linter.certs):
        if not _is_ca(cert):
            linter.add(
                "error",
                "leaf-in-ca-set",
                index,
                f"{linter.label(index)} is not a CA certificate; a certificate set holds "
                "only the CAs that issue devices",
                "remove device/server certificates from the file; upload the root "
                "(and intermediates) only",
            )
    count = len(linter.certs)
    start = 0
    while start < count:
        group = [start]
        index = start
        # A group continues while the next certificate issued the current one.
        while not linter.self_signed[index] and index + 1 < count:
            if linter.certs[index].issuer != linter.certs[index + 1].subject:
                break
            linter.check_link(index, index + 1)
            index += 1
            group.append(index)
        last = group[-1]
        if linter.self_signed[last]:
            linter.check_root(last)
        else:
            elsewhere = linter.find_issuer(last)
            if elsewhere is not None:
                linter.order_error(last, elsewhere)
            else:
                linter.add(
                    "error",
                    "missing-root",
                    last,
                    f"{linter.label(last)} is issued by "
                    f"{linter.certs[last].issuer.rfc4514_string()!r}, which is not in the "
                    "set: this chain does not end at a self-signed root",
                    "append the root CA certificate after it; the edge anchors only on "
                    "self-signed roots",
                )
        linter.check_path_lengths(group)
        start = last + 1


def lint_chain(
    certs: Sequence[x509.Certificate],
    *,
    profile: Profile = "chain",
    at: dt.datetime | None = None,
    allow_sha1: bool = False,
    max_certificates: int | None = None,
) -> list[Finding]:
    """Lint ``certs`` (file order) and return every finding, errors and warnings.

    ``at`` is the time validity is checked at (default: now; a naive datetime is
    taken as UTC). ``allow_sha1`` turns SHA-1 signatures into warnings.
    ``max_certificates`` (if given) makes a longer list a ``too-many`` error.
    See the module docstring for the profiles.
    """
    if profile not in ("chain", "ca-set"):
        raise ValueError(f"unknown lint profile {profile!r} (expected 'chain' or 'ca-set')")
    if max_certificates is not None and max_certificates < 1:
        raise ValueError(f"max_certificates must be at least 1, got {max_certificates}")
    when = dt.datetime.now(dt.UTC) if at is None else at
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    linter = _Linter(certs, when, allow_sha1)
    if not linter.certs:
        linter.add(
            "error",
            "empty",
            None,
            "the file holds no certificate",
            "a PEM file must hold -----BEGIN CERTIFICATE----- blocks, leaf first",
        )
        return linter.findings
    if max_certificates is not None and len(linter.certs) > max_certificates:
        linter.add(
            "error",
            "too-many",
            None,
            f"the file holds {len(linter.certs)} certificates, more than the "
            f"{max_certificates} allowed",
            "upload only the CA certificates devices chain to",
        )
    linter.check_each()
    if profile == "chain":
        _lint_as_chain(linter)
    else:
        _lint_as_ca_set(linter)
    return linter.findings
