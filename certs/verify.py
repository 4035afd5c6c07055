"""Path validation as the edge does it, at a chosen time, with the reason when it fails.

:func:`verify_path` builds and validates the path from a device (or server)
certificate to one of the given roots with ``cryptography``'s verifier
(``x509.verification.PolicyBuilder``), then does what that verifier does not:
the purpose check the edge applies, OpenSSL's minimum key sizes, and CRL checks.
The answer is a :class:`VerifyResult` with a stable ``code``, the OpenSSL
``X509_V_ERR_*`` number and the TLS alert an OpenSSL-based edge sends for that
failure (OpenSSL's ``ssl_x509err2alert`` table), a plain-language reason and a
hint. Failing validation is a result, not an exception; ``ValueError`` is raised
only for a bad argument (unknown purpose, a server name that is not a DNS name or
IP address), which the CLI turns into a usage error.

Policy: what the edge accepts, not the Web PKI
----------------------------------------------
The edge terminates TLS with OpenSSL, so the verifier's Web-PKI profile is relaxed
where OpenSSL is lenient and device PKIs commonly rely on it:

- a CA's basicConstraints need not be critical (the seed's ``root.conf`` writes
  ``basicConstraints = CA:true``, which is not critical);
- a client (device) certificate needs no subjectAltName;
- authorityKeyIdentifier may be absent (leaf and CA);
- a CA without keyUsage is accepted (the seed's ``root.conf`` writes none); a CA
  *with* keyUsage must assert keyCertSign;
- EKU is checked here, the OpenSSL way: for purpose ``client`` every certificate
  in the path that carries an EKU must list clientAuth or anyExtendedKeyUsage
  (``server``: serverAuth); ``any`` checks none.

Known disagreements with ``openssl verify`` that remain (the verifier is stricter):
a CA certificate used as the leaf is refused (``invalid``); unknown critical
extensions, negative serials, validity dates not in the mandated time encoding,
name constraints on directory names, and RSA-PSS/DSA corner cases are refused;
SHA-1 signatures are refused (OpenSSL 3 at security level 2, the default on
current distributions, refuses them too: ``weak-signature``). Policy
constraints (certificatePolicies, policyMappings, inhibitAnyPolicy) are not
processed at all, as with OpenSSL without ``-policy_check``.

CRLs (``crls=``, ``crl_check=``)
--------------------------------
Once any CRL is given, revocation is checked the way the edge's ``ssl`` context
does it: ``crl_check="leaf"`` (the default, ``ssl.VERIFY_CRL_CHECK_LEAF``) requires
a current CRL from the leaf's issuer; ``crl_check="chain"`` (``VERIFY_CRL_CHECK_CHAIN``,
what nginx's ``ssl_crl`` sets) requires one for every certificate below the root.
A CRL counts when its issuer DN is the issuer's subject, its signature verifies
with the issuer's key, and its thisUpdate/nextUpdate bracket the validation time.
Delta CRLs and CRLs with an issuingDistributionPoint scoped to other certificates
(only CA / only user / some reasons / indirect) are not used for coverage. A CRL
with a critical extension other than those is refused.

Codes (``VerifyResult.code``) and what the edge sends:

=============================  ===  =======================
code                           ssl  alert
=============================  ===  =======================
ok                               0  -
unknown-ca                   20/18  unknown_ca
expired                         10  certificate_expired
not-yet-valid                    9  bad_certificate
revoked                         23  certificate_revoked
bad-signature                    7  decrypt_error
purpose                         26  unsupported_certificate
path-length                     25  unknown_ca
not-ca                          24  unknown_ca
name-mismatch                   62  bad_certificate
name-constraints             47/48  certificate_unknown
unhandled-critical-extension    34  certificate_unknown
weak-key                     66/67  bad_certificate
weak-signature                  68  bad_certificate
crl-missing                      3  unknown_ca
crl-expired                     12  certificate_expired
crl-not-yet-valid               11  bad_certificate
crl-bad-signature                8  decrypt_error
crl-invalid                  35/36  certificate_unknown
invalid                          -  bad_certificate
=============================  ===  =======================
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, cast

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, rsa, x448, x25519
from cryptography.x509 import DNSName, IPAddress
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    Policy,
    PolicyBuilder,
    Store,
    Subject,
    VerificationError,
)

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPublicKeyTypes

from certs.compat import certificate_public_key
from certs.lint import (
    describe_certificate,
    extension_value,
    extensions_problem,
    signature_problem,
)

__all__ = ["ALERTS", "CrlCheck", "Purpose", "VerifyResult", "verify_path"]

Purpose = Literal["client", "server", "any"]
CrlCheck = Literal["leaf", "chain"]

#: code -> (TLS alert the edge sends, usual OpenSSL X509_V_ERR number).
ALERTS: dict[str, tuple[str | None, int | None]] = {
    "ok": (None, 0),
    "unknown-ca": ("unknown_ca", 20),
    "expired": ("certificate_expired", 10),
    "not-yet-valid": ("bad_certificate", 9),
    "revoked": ("certificate_revoked", 23),
    "bad-signature": ("decrypt_error", 7),
    "purpose": ("unsupported_certificate", 26),
    "path-length": ("unknown_ca", 25),
    "not-ca": ("unknown_ca", 24),
    "name-mismatch": ("bad_certificate", 62),
    "name-constraints": ("certificate_unknown", 47),
    "unhandled-critical-extension": ("certificate_unknown", 34),
    "weak-key": ("bad_certificate", 66),
    "weak-signature": ("bad_certificate", 68),
    "crl-missing": ("unknown_ca", 3),
    "crl-expired": ("certificate_expired", 12),
    "crl-not-yet-valid": ("bad_certificate", 11),
    "crl-bad-signature": ("decrypt_error", 8),
    "crl-invalid": ("certificate_unknown", 36),
    "invalid": ("bad_certificate", None),
}

_PURPOSE_EKU = {
    "client": ExtendedKeyUsageOID.CLIENT_AUTH,
    "server": ExtendedKeyUsageOID.SERVER_AUTH,
}
# OpenSSL security level 2 (the default on current distributions): 112-bit security.
_MIN_RSA_BITS = 2048
_MIN_EC_BITS = 224
_MAX_DEPTH = 8
_KNOWN_CRL_EXTENSIONS = frozenset(
    {
        ExtensionOID.CRL_NUMBER,
        ExtensionOID.DELTA_CRL_INDICATOR,
        ExtensionOID.ISSUING_DISTRIBUTION_POINT,
        ExtensionOID.AUTHORITY_KEY_IDENTIFIER,
    }
)


@dataclass(frozen=True, slots=True, kw_only=True)
class VerifyResult:
    """The outcome of :func:`verify_path`.

    ``chain`` is the validated path, leaf first and root last (empty when no path
    was built). ``code`` is ``"ok"`` or a stable failure code (see the module
    docstring), ``alert`` the TLS alert the edge sends for it, ``openssl_code``
    the matching ``X509_V_ERR_*`` number, ``reason`` a plain-language sentence,
    ``hint`` how to fix it and ``detail`` the underlying verifier's own message.
    """

    ok: bool
    chain: tuple[x509.Certificate, ...]
    code: str
    alert: str | None
    openssl_code: int | None
    reason: str
    hint: str
    detail: str = ""

    def to_dict(self) -> dict[str, object]:
        """The result as a JSON-ready dictionary (the ``--json`` shape)."""
        return {
            "ok": self.ok,
            "code": self.code,
            "alert": self.alert,
            "openssl_code": self.openssl_code,
            "reason": self.reason,
            "hint": self.hint,
            "detail": self.detail,
            "chain": [describe_certificate(c, i) for i, c in enumerate(self.chain, start=1)],
        }


def _result(
    code: str,
    reason: str,
    hint: str,
    *,
    chain: Sequence[x509.Certificate] = (),
    detail: str = "",
    openssl_code: int | None = None,
) -> VerifyResult:
    alert, default_code = ALERTS[code]
    return VerifyResult(
        ok=code == "ok",
        chain=tuple(chain),
        code=code,
        alert=alert,
        openssl_code=default_code if openssl_code is None else openssl_code,
        reason=reason,
        hint=hint,
        detail=detail,
    )


def _who(cert: x509.Certificate) -> str:
    return repr(cert.subject.rfc4514_string())


# --- the verifier ---------------------------------------------------------------


def _ca_key_usage(policy: Policy, cert: x509.Certificate, ku: x509.KeyUsage | None) -> None:
    """A CA may omit keyUsage (OpenSSL accepts it); if present it must allow signing."""
    del policy, cert  # the signature is the verifier's callback protocol
    if ku is not None and not ku.key_cert_sign:
        raise ValueError("keyUsage.keyCertSign must be asserted in a CA certificate")


def _ca_basic_constraints(
    policy: Policy, cert: x509.Certificate, bc: x509.BasicConstraints
) -> None:
    """An issuer must say CA:true; critical or not, as OpenSSL (and the seed's root) has it."""
    del policy, cert  # the signature is the verifier's callback protocol
    if not bc.ca:
        raise ValueError("basicConstraints.cA must be asserted in a CA certificate")


def _policies(server: bool) -> tuple[ExtensionPolicy, ExtensionPolicy]:
    """(CA policy, EE policy): the Web-PKI defaults relaxed as the module docstring says."""
    ca = (
        ExtensionPolicy.webpki_defaults_ca()
        .require_present(x509.BasicConstraints, Criticality.AGNOSTIC, _ca_basic_constraints)
        .may_be_present(x509.KeyUsage, Criticality.AGNOSTIC, _ca_key_usage)
        .may_be_present(x509.AuthorityKeyIdentifier, Criticality.AGNOSTIC, None)
        .may_be_present(x509.ExtendedKeyUsage, Criticality.AGNOSTIC, None)
    )
    ee = (
        ExtensionPolicy.webpki_defaults_ee()
        .may_be_present(x509.AuthorityKeyIdentifier, Criticality.AGNOSTIC, None)
        .may_be_present(x509.ExtendedKeyUsage, Criticality.AGNOSTIC, None)
    )
    if not server:
        # Server verification must require a SAN (the name is matched against it).
        ee = ee.may_be_present(x509.SubjectAlternativeName, Criticality.AGNOSTIC, None)
    return ca, ee


def _subject(server_name: str) -> Subject:
    try:
        return IPAddress(ipaddress.ip_address(server_name))
    except ValueError:
        # Not an address: a DNS name, checked when the verifier is built.
        return DNSName(server_name)


def verify_path(
    leaf: x509.Certificate,
    *,
    roots: Sequence[x509.Certificate],
    untrusted: Sequence[x509.Certificate] = (),
    at: dt.datetime | None = None,
    purpose: Purpose = "client",
    server_name: str | None = None,
    crls: Sequence[x509.CertificateRevocationList] = (),
    crl_check: CrlCheck = "leaf",
) -> VerifyResult:
    """Validate ``leaf`` up to one of ``roots`` at ``at`` (default now, naive = UTC).

    ``untrusted`` are intermediates the peer would send. ``purpose`` is what the
    leaf is used for; with ``server_name`` (purpose ``server``) the leaf's SAN must
    match it. ``crls`` switch on revocation checking, of the leaf only or of the
    whole path below the root (``crl_check``, see the module docstring).
    """
    if purpose not in ("client", "server", "any"):
        raise ValueError(f"unknown purpose {purpose!r} (expected client, server or any)")
    if crl_check not in ("leaf", "chain"):
        raise ValueError(f"unknown crl_check {crl_check!r} (expected leaf or chain)")
    if server_name is not None and purpose != "server":
        raise ValueError("server_name is only meaningful with purpose='server'")
    when = dt.datetime.now(dt.UTC) if at is None else at
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    subject = _subject(server_name) if server_name is not None else None
    if not roots:
        return _result(
            "unknown-ca",
            "no trusted root was given, so no certificate can be trusted",
            "pass the root CA certificate(s) with --roots (the certificate set's contents)",
        )
    problem = extensions_problem(leaf)
    if problem is not None:
        return _result(
            "invalid",
            f"{_who(leaf)} has extensions that cannot be parsed ({problem})",
            "re-issue it; each extension may appear only once (RFC 5280 4.2)",
            detail=problem,
        )
    ca_policy, ee_policy = _policies(server=subject is not None)
    builder = (
        PolicyBuilder()
        .store(Store(list(roots)))
        .time(when)
        .max_chain_depth(_MAX_DEPTH)
        .extension_policies(ca_policy=ca_policy, ee_policy=ee_policy)
    )
    server_verifier = None
    if subject is not None:
        try:
            server_verifier = builder.build_server_verifier(subject)
        except ValueError as exc:
            raise ValueError(
                f"server name {server_name!r} is not a valid DNS name or IP address ({exc})"
            ) from exc
    try:
        if server_verifier is not None:
            chain = server_verifier.verify(leaf, list(untrusted))
        else:
            chain = builder.build_client_verifier().verify(leaf, list(untrusted)).chain
    except VerificationError as exc:
        return _diagnose(str(exc), leaf, roots, untrusted, when, server_name)
    for check in (_check_purpose(chain, purpose), _check_keys(chain)):
        if check is not None:
            return check
    if crls:
        checked = chain if crl_check == "chain" else chain[:2]
        revocation = _check_crls(checked, chain, crls, when)
        if revocation is not None:
            return revocation
    return _result(
        "ok",
        f"{_who(leaf)} chains to the root {_who(chain[-1])} through "
        f"{len(chain) - 2} intermediate(s) and is valid at {when.isoformat()}"
        + (" (revocation checked)" if crls else ""),
        "",
        chain=chain,
    )


# --- checks after the path is built ---------------------------------------------


def _check_purpose(chain: Sequence[x509.Certificate], purpose: Purpose) -> VerifyResult | None:
    if purpose == "any":
        return None
    wanted = _PURPOSE_EKU[purpose]
    for position, cert in enumerate(chain):
        eku = extension_value(cert, x509.ExtendedKeyUsage)
        if eku is None:
            continue
        if wanted in eku or ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE in eku:
            continue
        role = "the leaf" if position == 0 else "the CA"
        listed = ", ".join(getattr(oid, "_name", oid.dotted_string) for oid in eku)
        return _result(
            "purpose",
            f"{role} {_who(cert)} has extendedKeyUsage ({listed}) without "
            f"{getattr(wanted, '_name', wanted.dotted_string)}: it may not be used as a "
            f"TLS {purpose}",
            f"re-issue it with extendedKeyUsage = {'clientAuth' if purpose == 'client' else 'serverAuth'}"
            " (or without EKU)",
            chain=chain,
        )
    return None


def _check_keys(chain: Sequence[x509.Certificate]) -> VerifyResult | None:
    for position, cert in enumerate(chain):
        try:
            public = certificate_public_key(cert)
        except (UnsupportedAlgorithm, ValueError) as exc:
            return _result(
                "invalid",
                f"{_who(cert)} has a public key that cannot be used ({exc})",
                "re-issue it with an EC P-256 or RSA 2048+ key",
                chain=chain,
            )
        if isinstance(public, rsa.RSAPublicKey) and public.key_size < _MIN_RSA_BITS:
            kind, bits = "RSA", public.key_size
        elif isinstance(public, ec.EllipticCurvePublicKey) and public.key_size < _MIN_EC_BITS:
            kind, bits = "EC", public.key_size
        else:
            continue
        return _result(
            "weak-key",
            f"{_who(cert)} has a {bits}-bit {kind} key; the edge's OpenSSL (security "
            "level 2) refuses keys under 112-bit strength",
            "re-issue with an EC P-256 or RSA 2048+ key",
            chain=chain,
            openssl_code=66 if position == 0 else 67,
        )
    return None


def _crl_in_scope(crl: x509.CertificateRevocationList, cert: x509.Certificate) -> bool:
    """Whether ``crl`` is a complete CRL that covers ``cert`` (see module docstring)."""
    try:
        extensions = {ext.oid: ext.value for ext in crl.extensions}
    except (x509.DuplicateExtension, ValueError):
        return False  # an unreadable CRL covers nothing
    if ExtensionOID.DELTA_CRL_INDICATOR in extensions:
        return False
    idp = extensions.get(ExtensionOID.ISSUING_DISTRIBUTION_POINT)
    if isinstance(idp, x509.IssuingDistributionPoint):
        if (
            idp.indirect_crl
            or idp.only_some_reasons is not None
            or idp.only_contains_attribute_certs
        ):
            return False
        bc = extension_value(cert, x509.BasicConstraints)
        is_ca = bc is not None and bc.ca
        if (idp.only_contains_ca_certs and not is_ca) or (idp.only_contains_user_certs and is_ca):
            return False
    return True


def _crl_signed_by(crl: x509.CertificateRevocationList, issuer: x509.Certificate) -> bool:
    public = certificate_public_key(issuer)
    if isinstance(public, x25519.X25519PublicKey | x448.X448PublicKey):
        return False  # a key type that cannot sign
    try:
        # The cast covers key types newer releases add (ML-KEM keys cannot sign either:
        # they raise below), so mypy agrees with every cryptography the range allows.
        return crl.is_signature_valid(cast("CertificateIssuerPublicKeyTypes", public))
    except (TypeError, ValueError, UnsupportedAlgorithm):
        return False


def _check_crls(
    checked: Sequence[x509.Certificate],
    chain: Sequence[x509.Certificate],
    crls: Sequence[x509.CertificateRevocationList],
    at: dt.datetime,
) -> VerifyResult | None:
    """Revocation of each certificate of ``checked`` (a prefix of ``chain``) by the next."""
    for cert, issuer in itertools.pairwise(checked):
        named = [c for c in crls if c.issuer == issuer.subject and _crl_in_scope(c, cert)]
        if not named:
            return _result(
                "crl-missing",
                f"no CRL from {_who(issuer)} covers {_who(cert)}; with CRL checking on, "
                "the edge refuses a certificate whose issuer's CRL it does not have",
                f"pass the CRL issued by {_who(issuer)} with --crl",
                chain=chain,
            )
        signed = [c for c in named if _crl_signed_by(c, issuer)]
        if not signed:
            return _result(
                "crl-bad-signature",
                f"the CRL naming {_who(issuer)} as issuer is not signed by that CA's key",
                "re-generate the CRL with the issuing CA's key",
                chain=chain,
            )
        usage = extension_value(issuer, x509.KeyUsage)
        if usage is not None and not usage.crl_sign:
            return _result(
                "crl-invalid",
                f"{_who(issuer)} signs CRLs but its keyUsage lacks cRLSign",
                "re-issue the CA with keyUsage = keyCertSign, cRLSign",
                chain=chain,
                openssl_code=35,
            )
        current = [
            c
            for c in signed
            if c.last_update_utc <= at and (c.next_update_utc is None or at <= c.next_update_utc)
        ]
        if not current:
            newest = max(signed, key=lambda c: c.last_update_utc)
            if newest.last_update_utc > at:
                return _result(
                    "crl-not-yet-valid",
                    f"the CRL of {_who(issuer)} is not valid before "
                    f"{newest.last_update_utc.isoformat()} (validation time {at.isoformat()})",
                    "check the CA machine's clock, or validate at a later time",
                    chain=chain,
                )
            return _result(
                "crl-expired",
                f"the CRL of {_who(issuer)} expired at its nextUpdate "
                f"{newest.next_update_utc.isoformat() if newest.next_update_utc else '?'}",
                "publish a fresh CRL from that CA (edgesim pki crl ...)",
                chain=chain,
            )
        crl = max(current, key=lambda c: c.last_update_utc)
        unknown = [e for e in crl.extensions if e.critical and e.oid not in _KNOWN_CRL_EXTENSIONS]
        if unknown:
            return _result(
                "crl-invalid",
                f"the CRL of {_who(issuer)} has a critical extension this edge does not "
                f"understand ({unknown[0].oid.dotted_string}), so it cannot be used",
                "re-generate the CRL without that critical extension",
                chain=chain,
            )
        entry = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
        if entry is None:
            continue
        reason = extension_value(entry, x509.CRLReason)
        reason_flag = x509.ReasonFlags.unspecified if reason is None else reason.reason
        if reason_flag is x509.ReasonFlags.remove_from_crl:
            continue
        return _result(
            "revoked",
            f"{_who(cert)} (serial {cert.serial_number:x}) was revoked on "
            f"{entry.revocation_date_utc.isoformat()} (reason: {reason_flag.value}), "
            f"per the CRL of {_who(issuer)} dated {crl.last_update_utc.isoformat()}",
            "issue the device a new certificate; a revoked one cannot be reinstated",
            chain=chain,
        )
    return None


# --- explaining a failure ---------------------------------------------------------


def _candidate_path(
    leaf: x509.Certificate,
    roots: Sequence[x509.Certificate],
    untrusted: Sequence[x509.Certificate],
) -> tuple[list[x509.Certificate], str]:
    """A path built by names and signatures alone, to say *where* validation failed.

    Returns the path (leaf first) and how it ended: ``anchored`` (reached a root),
    ``no-issuer`` (nothing carries the issuer DN), ``bad-signature`` (a certificate
    carries the DN but its key did not sign) or ``too-deep``.
    """
    path = [leaf]
    current = leaf
    for _ in range(_MAX_DEPTH):
        if current in roots:
            return path, "anchored"
        named_roots = [r for r in roots if r.subject == current.issuer]
        for root in named_roots:
            if signature_problem(current, root) is None:
                path.append(root)
                return path, "anchored"
        named = [c for c in untrusted if c.subject == current.issuer and c not in path]
        good = [c for c in named if signature_problem(current, c) is None]
        if good:
            current = good[0]
            path.append(current)
            continue
        return path, "bad-signature" if named_roots or named else "no-issuer"
    return path, "too-deep"


def _key_ids_differ(cert: x509.Certificate, candidates: Sequence[x509.Certificate]) -> bool:
    """True when every CA named as ``cert``'s issuer has a key id other than its AKI's."""
    try:
        aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    except x509.ExtensionNotFound:
        return False
    if aki.key_identifier is None:
        return False
    named = [c for c in candidates if c.subject == cert.issuer]
    if not named:
        return False
    for ca in named:
        try:
            ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        except x509.ExtensionNotFound:
            return False  # OpenSSL then compares signatures: a bad-signature case
        if ski.digest == aki.key_identifier:
            return False
    return True


_CODE_PATTERNS: tuple[tuple[str, str], ...] = (
    ("not valid at validation time", "validity"),
    ("signature does not match", "bad-signature"),
    ("path length constraint", "path-length"),
    ("basicConstraints.cA must not be asserted in an EE", "ca-as-leaf"),
    ("basicConstraints.cA must be asserted", "not-ca"),
    ("CA certificate has no basicConstraints", "not-ca"),
    ("keyCertSign", "not-ca"),
    ("EKU", "purpose"),
    ("subjectAltName", "name-mismatch"),
    ("name constraint", "name-constraints"),
    ("nameConstraints", "name-constraints"),
    ("unaccounted-for critical extension", "unhandled-critical-extension"),
    ("Forbidden signature algorithm", "weak-signature"),
    ("Forbidden public key algorithm", "weak-key"),
    ("no interior errors", "unknown-ca"),
)


def _diagnose(
    message: str,
    leaf: x509.Certificate,
    roots: Sequence[x509.Certificate],
    untrusted: Sequence[x509.Certificate],
    at: dt.datetime,
    server_name: str | None,
) -> VerifyResult:
    """Turn the verifier's message into a code, a reason naming a certificate and a hint."""
    detail = message
    kind = next((code for pattern, code in _CODE_PATTERNS if pattern in message), "invalid")
    path, ending = _candidate_path(leaf, roots, untrusted)
    encountered = re.search(r"subject=<Name\((.*?)\)>", message)
    where = f" ({encountered.group(1)})" if encountered else ""
    if kind == "validity":
        return _validity(path, at, detail)
    if kind == "unknown-ca" or (kind == "invalid" and ending == "no-issuer"):
        return _unknown_ca(path, ending, untrusted, detail)
    if kind == "bad-signature":
        if ending == "bad-signature" and _key_ids_differ(path[-1], [*untrusted, *roots]):
            # OpenSSL does not even try a same-name CA whose subject key identifier
            # differs from the certificate's authority key identifier: for it (and so
            # for the edge) there is no issuer at all, X509_V_ERR 20, alert unknown_ca.
            return _unknown_ca(path, ending, untrusted, detail)
        signer = next(
            (
                c
                for c in [*untrusted, *roots]
                if c.subject == path[-1].issuer and signature_problem(path[-1], c) is not None
            ),
            None,
        )
        victim = path[-1] if ending == "bad-signature" else leaf
        return _result(
            "bad-signature",
            f"the signature on {_who(victim)} does not verify with the key of "
            f"{_who(signer) if signer else 'its issuer'}: a different CA with the same name, "
            "or the certificate was altered",
            "give the CA certificate whose key really signed it (compare the "
            "authorityKeyIdentifier with the CA's subjectKeyIdentifier)",
            detail=detail,
        )
    texts: dict[str, tuple[str, str]] = {
        "path-length": (
            f"{_path_length_culprit(path)} allows fewer intermediates below it than this path has",
            "issue the device from a CA closer to the root, or re-issue the CA with a "
            "larger pathlen",
        ),
        "not-ca": (
            f"{_not_ca_culprit(path, where)} is used as an issuer but is not a CA (no "
            "CA:true, or keyUsage without keyCertSign)",
            "re-issue the issuing certificate with basicConstraints CA:true and keyUsage "
            "keyCertSign",
        ),
        "ca-as-leaf": (
            f"the leaf {_who(leaf)} is a CA certificate (CA:true); it cannot identify a "
            "device or server (OpenSSL accepts it, this verifier does not)",
            "issue an end-entity certificate (CA:false) from that CA for the device",
        ),
        "purpose": (
            f"a certificate{where} has an extendedKeyUsage that does not allow this use",
            "re-issue it with the clientAuth (device) or serverAuth (server) EKU",
        ),
        "name-mismatch": (
            f"the certificate{where} does not carry the name {server_name!r} in its subjectAltName",
            "issue the server certificate with a SAN DNS entry for the hostname",
        ),
        "name-constraints": (
            f"a CA's nameConstraints exclude (or do not permit) the names of {where or 'a certificate'}",
            "issue the certificate with names inside the CA's permitted subtrees",
        ),
        "unhandled-critical-extension": (
            f"a certificate{where} has a critical extension the edge does not understand",
            "re-issue it without that critical extension (or mark it non-critical)",
        ),
        "weak-signature": (
            f"a certificate{where} is signed with a forbidden algorithm (SHA-1 or MD5)",
            "re-issue it signed with SHA-256",
        ),
        "weak-key": (
            f"a certificate{where} has a forbidden public key type or size",
            "re-issue it with an EC P-256 or RSA 2048+ key",
        ),
        "invalid": (
            f"the certificate path is not acceptable: {message.removeprefix('validation failed: ')}",
            "fix the certificate named above (lint it with: edgesim pki lint FILE)",
        ),
    }
    code = "invalid" if kind == "ca-as-leaf" else kind
    reason, hint = texts[kind]
    return _result(code, reason, hint, detail=detail)


def _not_ca_culprit(path: Sequence[x509.Certificate], where: str) -> str:
    """Name the first issuer on ``path`` that may not issue, for the reason text."""
    for cert in path[1:]:
        bc = extension_value(cert, x509.BasicConstraints)
        ku = extension_value(cert, x509.KeyUsage)
        if bc is None or not bc.ca or (ku is not None and not ku.key_cert_sign):
            return f"the certificate {_who(cert)}"
    return f"a certificate{where}"


def _path_length_culprit(path: Sequence[x509.Certificate]) -> str:
    """Name the CA on ``path`` whose pathLenConstraint the path exceeds."""
    for depth, cert in enumerate(path):
        bc = extension_value(cert, x509.BasicConstraints)
        if bc is None or not bc.ca or bc.path_length is None:
            continue
        below = [c for c in path[1:depth] if c.issuer != c.subject]
        if len(below) > bc.path_length:
            return f"the CA {_who(cert)} (pathlen:{bc.path_length}, {len(below)} below it)"
    return "a CA's pathLenConstraint"


def _validity(path: Sequence[x509.Certificate], at: dt.datetime, detail: str) -> VerifyResult:
    for position, cert in enumerate(path):
        role = "the leaf" if position == 0 else "the CA"
        if at > cert.not_valid_after_utc:
            return _result(
                "expired",
                f"{role} {_who(cert)} expired on {cert.not_valid_after_utc.isoformat()} "
                f"(validation time {at.isoformat()})",
                "renew it" + ("" if position == 0 else " and upload the new CA certificate"),
                detail=detail,
            )
        if at < cert.not_valid_before_utc:
            return _result(
                "not-yet-valid",
                f"{role} {_who(cert)} is not valid before "
                f"{cert.not_valid_before_utc.isoformat()} (validation time {at.isoformat()})",
                "check the clock of the machine that issued it, or of the device",
                detail=detail,
            )
    return _result(
        "expired",
        f"a certificate on the path is outside its validity at {at.isoformat()}",
        "renew the expired certificate",
        detail=detail,
    )


def _unknown_ca(
    path: Sequence[x509.Certificate],
    ending: str,
    untrusted: Sequence[x509.Certificate],
    detail: str,
) -> VerifyResult:
    top = path[-1]
    if len(path) == 1 and top.issuer == top.subject:
        return _result(
            "unknown-ca",
            f"{_who(top)} is self-signed and is not one of the roots",
            "issue the device certificate from your CA, or upload this certificate as a root",
            detail=detail,
            openssl_code=18,
        )
    issuer = repr(top.issuer.rfc4514_string())
    if ending == "bad-signature":
        reason = (
            f"a CA named {issuer} is given, but its key did not sign {_who(top)}: it is "
            "another CA with the same name"
        )
        hint = "give the CA certificate whose key signed it (match its subjectKeyIdentifier)"
    elif ending == "anchored":
        reason = f"a path to a root exists, but the verifier found none acceptable for {_who(top)}"
        hint = "lint the chain (edgesim pki lint) to see which certificate is refused"
    elif len(path) == 1:
        reason = f"{_who(top)} is issued by {issuer}, which is not among the roots"
        if untrusted:
            reason += " nor the untrusted intermediates"
        hint = (
            f"if {issuer} is an intermediate CA, pass its certificate with --untrusted "
            "(a device must send it with its own); if it is the root, add it to --roots "
            "(upload it to the certificate set)"
        )
    else:
        reason = (
            f"the path reaches the intermediate {_who(top)}, issued by {issuer}, which is "
            "not among the roots"
        )
        hint = f"add the root {issuer} to --roots (the certificate set must hold it)"
    return _result("unknown-ca", reason, hint, detail=detail)
