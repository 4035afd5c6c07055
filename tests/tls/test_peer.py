"""The fast path from ``getpeercert()``'s dict gives what parsing the DER gives, or nothing."""

from __future__ import annotations

import ssl
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from certs.authority import CertificateAuthority
from edge.identity import IdentityRule, inspect_certificate
from edge.tls.peer import fast_inspect

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
A = x509.NameAttribute


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    # A comma in its name: every issuer DN it writes needs an RFC 4514 escape.
    return CertificateAuthority.create_root("Peer Test Root, Inc.", now=T0)


@pytest.fixture(scope="module")
def plain_ca() -> CertificateAuthority:
    return CertificateAuthority.create_root("Peer Test Root", now=T0)


def issue(
    ca: CertificateAuthority,
    tmp_path: Path,
    rdns: list[x509.RelativeDistinguishedName],
    *,
    serial: int | None = None,
    start: datetime = T0 - timedelta(days=1),
    end: datetime = T0 + timedelta(days=30),
) -> tuple[bytes, dict[str, Any]]:
    """Return the DER of a new leaf and the dict ``getpeercert()`` gives for it."""
    issued = ca.issue_leaf(
        x509.Name(rdns),
        [x509.DNSName("peer.example")],
        key=ca.key,
        eku=("clientAuth",),
        start=start,
        end=end,
        serial=serial,
    )
    pem = tmp_path / "leaf.pem"
    pem.write_bytes(issued.cert.public_bytes(serialization.Encoding.PEM))
    # The decoder behind SSLObject.getpeercert(), fed from a file.
    decoded: dict[str, Any] = ssl._ssl._test_decode_cert(str(pem))  # type: ignore[attr-defined]
    return issued.cert.public_bytes(serialization.Encoding.DER), decoded


def rdn(*attrs: x509.NameAttribute[Any]) -> x509.RelativeDistinguishedName:
    return x509.RelativeDistinguishedName(attrs)


COMMON = [
    [rdn(A(NameOID.COMMON_NAME, "dev-1"))],
    [
        rdn(A(NameOID.COUNTRY_NAME, "DE")),
        rdn(A(NameOID.STATE_OR_PROVINCE_NAME, "Berlin")),
        rdn(A(NameOID.LOCALITY_NAME, "Berlin")),
        rdn(A(NameOID.ORGANIZATION_NAME, "Acme")),
        rdn(A(NameOID.ORGANIZATIONAL_UNIT_NAME, "Sensors")),
        rdn(A(NameOID.COMMON_NAME, "dev-2")),
    ],
    [
        rdn(A(NameOID.DOMAIN_COMPONENT, "example")),
        rdn(A(NameOID.USER_ID, "u42")),
        rdn(A(NameOID.STREET_ADDRESS, "Main St 1")),
        rdn(A(NameOID.COMMON_NAME, "dev 3")),
    ],
]


@pytest.mark.parametrize("rdns", COMMON)
@pytest.mark.parametrize("rule", [IdentityRule.CN, IdentityRule.SUBJECT, IdentityRule.SHA256])
def test_common_certificates_match_the_der_parse(
    plain_ca: CertificateAuthority,
    tmp_path: Path,
    rdns: list[x509.RelativeDistinguishedName],
    rule: IdentityRule,
) -> None:
    der, decoded = issue(plain_ca, tmp_path, rdns)
    fast = fast_inspect(decoded, der, namespace="set-a", rule=rule)
    assert fast is not None
    assert fast == inspect_certificate(der, namespace="set-a", rule=rule)


UNCOMMON = [
    # A comma, a plus sign, a leading '#', a trailing space: RFC 4514 escapes.
    [rdn(A(NameOID.COMMON_NAME, "a,b"))],
    [rdn(A(NameOID.COMMON_NAME, "a+b"))],
    [rdn(A(NameOID.COMMON_NAME, "#dev"))],
    [rdn(A(NameOID.COMMON_NAME, "dev "))],
    # Not ASCII; an attribute without a short name; a multi-valued RDN; no CN.
    [rdn(A(NameOID.COMMON_NAME, "gerät"))],
    [rdn(A(NameOID.EMAIL_ADDRESS, "d@example.com")), rdn(A(NameOID.COMMON_NAME, "dev"))],
    [rdn(A(NameOID.COMMON_NAME, "dev"), A(NameOID.ORGANIZATION_NAME, "Acme"))],
    [rdn(A(NameOID.ORGANIZATION_NAME, "Acme"))],
]


def test_a_plain_certificate_takes_the_fast_path_with_openssl_formats_rewritten(
    plain_ca: CertificateAuthority, tmp_path: Path
) -> None:
    der, decoded = issue(
        plain_ca, tmp_path, COMMON[0], serial=0x00F1, start=datetime(2026, 2, 3, 4, 5, 6)
    )
    assert decoded["serialNumber"] == "F1"
    assert decoded["notBefore"] == "Feb  3 04:05:06 2026 GMT"
    fast = fast_inspect(decoded, der, namespace="set-a", rule=IdentityRule.CN)
    assert fast is not None
    assert fast == inspect_certificate(der, namespace="set-a", rule=IdentityRule.CN)
    identity, facts = fast
    assert str(identity) == "set-a/dev-1"
    assert facts.serial == "f1"
    assert facts.not_before == "2026-02-03T04:05:06+00:00"
    assert facts.issuer == "CN=Peer Test Root"


@pytest.mark.parametrize(
    ("start", "end"),
    [
        (datetime(2026, 2, 3, 4, 5, 6), datetime(2026, 12, 25, 23, 59, 59)),
        (datetime(1999, 7, 9, 0, 0, 0), datetime(2049, 12, 31, 23, 59, 59)),
        # From 2050 on a certificate carries GeneralizedTime instead of UTCTime.
        (datetime(2026, 10, 10, 10, 10, 10), datetime(2051, 1, 1, 0, 0, 0)),
        (datetime(2026, 10, 10, 10, 10, 10), datetime(9999, 12, 31, 23, 59, 59)),
    ],
)
def test_validity_dates_match_the_der_parse(
    plain_ca: CertificateAuthority, tmp_path: Path, start: datetime, end: datetime
) -> None:
    der, decoded = issue(plain_ca, tmp_path, COMMON[0], start=start, end=end)
    fast = fast_inspect(decoded, der, namespace="set-a", rule=IdentityRule.CN)
    assert fast is not None
    assert fast == inspect_certificate(der, namespace="set-a", rule=IdentityRule.CN)
    assert fast[1].not_before == start.strftime("%Y-%m-%dT%H:%M:%S+00:00")
    assert fast[1].not_after == end.strftime("%Y-%m-%dT%H:%M:%S+00:00")


@pytest.mark.parametrize("rdns", UNCOMMON)
def test_uncommon_certificates_fall_back(
    plain_ca: CertificateAuthority, tmp_path: Path, rdns: list[x509.RelativeDistinguishedName]
) -> None:
    der, decoded = issue(plain_ca, tmp_path, rdns)
    assert fast_inspect(decoded, der, namespace="s", rule=IdentityRule.CN) is None


def test_an_issuer_needing_escapes_falls_back(ca: CertificateAuthority, tmp_path: Path) -> None:
    der, decoded = issue(ca, tmp_path, COMMON[0])
    assert fast_inspect(decoded, der, namespace="s", rule=IdentityRule.CN) is None


def test_san_rules_and_odd_dicts_fall_back(plain_ca: CertificateAuthority, tmp_path: Path) -> None:
    der, decoded = issue(plain_ca, tmp_path, COMMON[0])
    assert fast_inspect(decoded, der, namespace="s", rule=IdentityRule.SAN_DNS) is None
    assert fast_inspect(None, der, namespace="s", rule=IdentityRule.CN) is None
    assert fast_inspect({}, der, namespace="s", rule=IdentityRule.CN) is None
    odd = dict(decoded, notAfter="2027-01-01")
    assert fast_inspect(odd, der, namespace="s", rule=IdentityRule.CN) is None
    odd = dict(decoded, serialNumber="-01")
    assert fast_inspect(odd, der, namespace="s", rule=IdentityRule.CN) is None
