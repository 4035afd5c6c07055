"""NIST PKITS (2011) through certs.verify.verify_path: how often the verdict agrees.

Every case of pyhanko-certvalidator's ``pkits.json`` is run with the suite's trust
anchor, the case's intermediates as untrusted certificates and its CRLs plus the
anchor's CRL, with revocation checked on the whole path (``crl_check="chain"``), at a fixed time inside
the certificates' validity, with purpose ``any`` (PKITS certificates carry no EKU).
Agreement is on the verdict (valid / invalid), not on the reason.

The measured agreement is 176 of 246 with cryptography 50.0. Every disagreement
falls in one of the categories below (the test fails if a new kind appears):

- ``policy``: certificate policies, policy mappings, requireExplicitPolicy and
  inhibitAnyPolicy (PKITS 4.8-4.12). The verifier does not process policies and
  refuses certificates whose policy extensions are critical; user-initial-policy
  parameters cannot be expressed. OpenSSL without ``-policy_check`` ignores them too.
- ``name-constraints``: directoryName and URI name constraints (4.13), which the
  verifier refuses as unsupported instead of evaluating.
- ``crl-scope``: distribution points, onlySomeReasons, indirect CRLs and cRLIssuer
  (4.14); our CRL check uses complete, direct CRLs only and does not match
  distribution point names.
- ``delta-crl``: delta CRLs (4.15) are not applied.
- ``crl-key-rollover``: a CA whose CRLs are signed by a different key of the same
  name, or paths through self-issued key-rollover certificates (4.4.19, 4.5, 4.6.15,
  4.6.17, 4.12.9): our CRL check requires the path's own issuer key, and the
  verifier does not chain through self-issued rollover certificates.
- ``name-normalisation``: names that match only after RFC 4518 normalisation
  (whitespace, case, PrintableString vs UTF8String, 4.3.3-5, 4.3.10-11): the verifier
  compares encoded names exactly (OpenSSL normalises).
- ``ca-as-leaf``: the end-entity of the case is a CA certificate, which the
  verifier refuses as a leaf (Web PKI profile; OpenSSL accepts).
- ``dsa``: DSA keys and DSA parameter inheritance (4.1.4-5), forbidden or unparseable.
- ``time-encoding``: a validity date in GeneralizedTime before 2050 (4.2.4),
  refused as mis-encoded.
"""

from __future__ import annotations

import collections

import pytest
from cryptography import x509

from certs.verify import verify_path

from .pkits_fixtures import (
    VALIDATION_TIME,
    PkitsCase,
    PkitsData,
    PkitsUnavailable,
    ensure_pkits,
    load_cases,
    load_certificate,
    load_crl,
)

#: Measured with cryptography 50.0.2 and pyhanko-certvalidator 0.33.0's cases.
MIN_AGREEMENT = 176
_ROOT = "TrustAnchorRootCertificate.crt"
_ROOT_CRL = "TrustAnchorRootCRL.crl"


def category(case: PkitsCase, leaf: x509.Certificate | None) -> str | None:
    """Which documented disagreement category ``case`` belongs to, if any."""
    section = case.section
    name = case.name
    if case.has_policy_params or section in ("4.8", "4.9", "4.10", "4.11", "4.12"):
        if "self_issued" in name and "inhibit_any_policy" in name:
            return "crl-key-rollover"
        return "policy"
    if section == "4.13":
        return "name-constraints"
    if section == "4.15":
        return "delta-crl"
    if leaf is not None and _is_ca(leaf):
        return "ca-as-leaf"
    if section == "4.14":
        return "crl-scope"
    if "self_issued" in name or "separate_certificate_and_crl_keys" in name:
        return "crl-key-rollover"
    if section == "4.3" and any(
        w in name for w in ("whitespace", "capitalization", "utf8", "rollover")
    ):
        return "name-normalisation"
    if "dsa" in name:
        return "dsa"
    if "generalizedtime" in name:
        return "time-encoding"
    return None


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def run_case(data: PkitsData, case: PkitsCase) -> tuple[bool, str, x509.Certificate | None]:
    """(valid?, code, leaf) for one case; a certificate that cannot be parsed is invalid."""
    try:
        leaf = load_certificate(data, case.cert)
        untrusted = [load_certificate(data, name) for name in case.other_certs]
    except ValueError:
        return False, "unparseable", None
    crls = [load_crl(data, _ROOT_CRL), *(load_crl(data, name) for name in case.crls)]
    result = verify_path(
        leaf,
        roots=[load_certificate(data, _ROOT)],
        untrusted=untrusted,
        at=VALIDATION_TIME,
        purpose="any",
        crls=crls,
        crl_check="chain",
    )
    return result.ok, result.code, leaf


@pytest.fixture(scope="module")
def pkits() -> PkitsData:
    try:
        return ensure_pkits()
    except PkitsUnavailable as exc:
        pytest.skip(f"PKITS data not cached and the package registry is unreachable: {exc}")


# The first run downloads about 57 MB; later runs read the cache (under a second).
@pytest.mark.timeout(600)
def test_pkits_agreement(pkits: PkitsData, request: pytest.FixtureRequest) -> None:
    cases = load_cases(pkits)
    assert len(cases) > 200
    agree = 0
    per_section: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
    disagreements: dict[str, list[str]] = collections.defaultdict(list)
    unexplained = []
    for case in cases:
        valid, code, leaf = run_case(pkits, case)
        per_section[case.section][1] += 1
        if valid == case.expect_valid:
            agree += 1
            per_section[case.section][0] += 1
            continue
        why = category(case, leaf)
        label = f"{case.id} {case.name} (expected {'valid' if case.expect_valid else 'invalid'}, got {code})"
        if why is None:
            unexplained.append(label)
        else:
            disagreements[why].append(label)

    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    lines = [f"pkits-agreement: {agree}/{len(cases)} (minimum {MIN_AGREEMENT})"]
    lines.append(
        "  by section: "
        + ", ".join(
            f"{s} {a}/{n}"
            for s, (a, n) in sorted(
                per_section.items(), key=lambda kv: [int(x) for x in kv[0].split(".")]
            )
        )
    )
    for why, labels in sorted(disagreements.items()):
        lines.append(f"  disagree [{why}]: {len(labels)}")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        # Written past output capture so the summary shows without -s.
        with capture.global_and_fixture_disabled():
            reporter.write_line("")
            for line in lines:
                reporter.write_line(line)

    assert not unexplained, "disagreements outside the documented categories:\n" + "\n".join(
        unexplained
    )
    assert agree >= MIN_AGREEMENT, "\n".join(lines)


@pytest.mark.timeout(600)
def test_pkits_basic_cases_agree(pkits: PkitsData) -> None:
    """The sections the edge relies on most agree case by case."""
    cases = {case.name: case for case in load_cases(pkits)}
    expected = {
        "valid_signatures_test1": (True, "ok"),
        "invalid_ca_signature_test2": (False, "bad-signature"),
        "invalid_ee_signature_test3": (False, "bad-signature"),
        "invalid_ca_notbefore_date_test1": (False, "not-yet-valid"),
        "invalid_ee_notafter_date_test6": (False, "expired"),
        "invalid_bad_crl_issuer_name_test5": (False, "crl-missing"),
        "invalid_keyusage_critical_crlsign_false_test4": (False, "crl-invalid"),
        "invalid_revoked_ca_test2": (False, "revoked"),
        "invalid_revoked_ee_test3": (False, "revoked"),
        "invalid_bad_crl_signature_test4": (False, "crl-bad-signature"),
        "invalid_old_crl_nextupdate_test11": (False, "crl-expired"),
        "invalid_missing_basicconstraints_test1": (False, "not-ca"),
        "invalid_pathlenconstraint_test5": (False, "path-length"),
        "missing_crl_test1": (False, "crl-missing"),
        "invalid_keyusage_critical_keycertsign_false_test1": (False, "not-ca"),
    }
    missing = sorted(set(expected) - set(cases))
    assert not missing, f"case names changed in pkits.json: {missing}"
    got = {name: run_case(pkits, cases[name])[:2] for name in expected}
    assert got == expected
