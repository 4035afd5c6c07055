"""The identity rule: which certificate field names the device, namespaced by its set."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from badcerts import with_bad_ip_san, with_version
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from certs.authority import CertificateAuthority
from edge.core.session import DeviceIdentity
from edge.identity import (
    IdentityRule,
    derive_identity,
    describe_certificate,
    inspect_certificate,
    parse_rule,
)
from edge.tls.errors import IdentityError

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.create_root("Identity Test Root", now=T0)


def leaf(ca: CertificateAuthority, *, sans: list[x509.GeneralName], cn: str | None) -> bytes:
    names = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Acme")]
    if cn is not None:
        names.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    issued = ca.issue_leaf(
        x509.Name(names),
        sans,
        key=ca.key,
        eku=("clientAuth",),
        start=T0 - timedelta(days=1),
        end=T0 + timedelta(days=30),
    )
    return issued.cert.public_bytes(serialization.Encoding.DER)


@pytest.fixture(scope="module")
def full(ca: CertificateAuthority) -> bytes:
    return leaf(
        ca,
        cn="sensor-7",
        sans=[
            x509.DNSName("sensor-7.devices.example"),
            x509.UniformResourceIdentifier("urn:dev:sensor-7"),
            x509.RFC822Name("sensor-7@example.com"),
        ],
    )


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        (IdentityRule.CN, "sensor-7"),
        (IdentityRule.SAN_DNS, "sensor-7.devices.example"),
        (IdentityRule.SAN_URI, "urn:dev:sensor-7"),
        (IdentityRule.SAN_EMAIL, "sensor-7@example.com"),
        (IdentityRule.SUBJECT, "CN=sensor-7,O=Acme"),
    ],
)
def test_each_rule_names_the_device(full: bytes, rule: IdentityRule, expected: str) -> None:
    identity = derive_identity(full, namespace="fleet-a", rule=rule)
    assert identity == DeviceIdentity(namespace="fleet-a", name=expected)
    assert str(identity) == f"fleet-a/{expected}"


def test_sha256_rule_is_the_fingerprint(full: bytes) -> None:
    identity = derive_identity(full, namespace="s", rule=IdentityRule.SHA256)
    assert identity.name == hashlib.sha256(full).hexdigest()


def test_same_name_in_two_sets_is_two_devices(full: bytes) -> None:
    a = derive_identity(full, namespace="a", rule=IdentityRule.CN)
    b = derive_identity(full, namespace="b", rule=IdentityRule.CN)
    assert a != b


def test_missing_field_names_the_rule_and_the_certificate(ca: CertificateAuthority) -> None:
    der = leaf(ca, cn="plain", sans=[])
    with pytest.raises(IdentityError) as exc:
        derive_identity(der, namespace="s", rule=IdentityRule.SAN_URI)
    assert "identity rule `san-uri`" in str(exc.value)
    assert "CN=plain,O=Acme" in str(exc.value)


def test_no_common_name(ca: CertificateAuthority) -> None:
    der = leaf(ca, cn=None, sans=[x509.DNSName("x.example")])
    with pytest.raises(IdentityError, match="identity rule `cn`"):
        derive_identity(der, namespace="s", rule=IdentityRule.CN)


def test_garbage_is_an_identity_error() -> None:
    with pytest.raises(IdentityError, match="cannot be parsed"):
        derive_identity(b"not a certificate", namespace="s", rule=IdentityRule.CN)
    assert describe_certificate(b"not a certificate") is None


def test_a_version_cryptography_refuses_is_an_identity_error(full: bytes) -> None:
    # cryptography raises InvalidVersion, which is no ValueError, for a version
    # field other than v1-v3; OpenSSL parses and sends such a certificate.
    bad = with_version(full, 126)
    with pytest.raises(IdentityError, match="cannot be parsed: 126 is not a valid X509 version"):
        derive_identity(bad, namespace="s", rule=IdentityRule.CN)
    with pytest.raises(IdentityError, match="cannot be parsed"):
        inspect_certificate(bad, namespace="s", rule=IdentityRule.CN)
    assert describe_certificate(bad) is None


def test_extensions_cryptography_cannot_parse_are_an_identity_error_for_san_rules(
    ca: CertificateAuthority,
) -> None:
    cert, _ = with_bad_ip_san(
        ca, "sensor-9", start=T0 - timedelta(days=1), end=T0 + timedelta(days=1)
    )
    der = cert.public_bytes(serialization.Encoding.DER)
    for rule in (IdentityRule.SAN_DNS, IdentityRule.SAN_URI, IdentityRule.SAN_EMAIL):
        with pytest.raises(IdentityError) as caught:
            inspect_certificate(der, namespace="s", rule=rule)
        message = str(caught.value)
        assert message.startswith(f"identity rule `{rule.value}`: certificate `CN=sensor-9`")
        assert "has extensions that cannot be parsed" in message
    # The rules that read no extension still name the device; the facts parse too.
    identity, facts = inspect_certificate(der, namespace="s", rule=IdentityRule.CN)
    assert identity.name == "sensor-9"
    assert describe_certificate(der) == facts


def test_a_name_cryptography_cannot_read_is_an_identity_error() -> None:
    # A BitString attribute under another OID: OpenSSL accepts any string type
    # there, cryptography raises TypeError when the subject is first read (found
    # by the atheris target `inspect`; the DER is from its corpus).
    der = (
        Path(__file__).parents[1] / "fuzz" / "corpus" / "inspect" / "cert-name-bitstring-oid"
    ).read_bytes()
    with pytest.raises(IdentityError, match="cannot be parsed: a name cannot be read"):
        inspect_certificate(der, namespace="s", rule=IdentityRule.CN)
    assert describe_certificate(der) is None


def test_inspect_gives_identity_and_facts(full: bytes) -> None:
    identity, facts = inspect_certificate(full, namespace="n", rule=IdentityRule.CN)
    assert identity.name == "sensor-7"
    assert facts.subject == "CN=sensor-7,O=Acme"
    assert facts.issuer == "CN=Identity Test Root"
    assert facts.sha256 == hashlib.sha256(full).hexdigest()
    assert facts.not_before == (T0 - timedelta(days=1)).isoformat()
    assert facts == describe_certificate(full)


@pytest.mark.parametrize(
    ("text", "rule"),
    [("cn", IdentityRule.CN), ("SAN_URI", IdentityRule.SAN_URI), (" sha256 ", IdentityRule.SHA256)],
)
def test_parse_rule(text: str, rule: IdentityRule) -> None:
    assert parse_rule(text) is rule


def test_parse_rule_lists_the_choices() -> None:
    with pytest.raises(ValueError, match=r"choose one of: cn, san-dns, san-uri, san-email"):
        parse_rule("serial")
