"""The issuing authority: extensions by default, validity, bulk issuance, openssl verify."""

from __future__ import annotations

import json
import stat
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store

from certs.authority import CertificateAuthority, general_name, random_serial
from certs.bundle import load_pem_certificates
from certs.errors import IssueError
from certs.keys import generate_key, write_private_key

# The same clock as conftest.NOW (mypy cannot follow relative imports of conftest).
NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
ATTIME = str(int(NOW.timestamp()) + 86400)
OpenSSL = Callable[..., subprocess.CompletedProcess[str]]


def ext(
    cert: x509.Certificate, cls: type[x509.ExtensionType]
) -> x509.Extension[x509.ExtensionType]:
    return cert.extensions.get_extension_for_class(cls)


def test_root_is_a_correct_ca(root_ca: CertificateAuthority) -> None:
    cert = root_ca.cert
    assert cert.subject == cert.issuer
    bc = ext(cert, x509.BasicConstraints)
    assert bc.critical
    assert bc.value == x509.BasicConstraints(ca=True, path_length=None)
    ku = ext(cert, x509.KeyUsage)
    assert ku.critical
    assert ku.value.key_cert_sign  # type: ignore[attr-defined]
    assert ku.value.crl_sign  # type: ignore[attr-defined]
    assert cert.not_valid_before_utc == NOW
    assert root_ca.chain_pem == b""
    assert root_ca.root == cert


def test_intermediate_chain_and_aki(
    root_ca: CertificateAuthority, intermediate_ca: CertificateAuthority
) -> None:
    cert = intermediate_ca.cert
    assert cert.issuer == root_ca.cert.subject
    assert ext(cert, x509.BasicConstraints).value == x509.BasicConstraints(ca=True, path_length=0)
    root_ski = ext(root_ca.cert, x509.SubjectKeyIdentifier).value
    aki = ext(cert, x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == root_ski.digest  # type: ignore[attr-defined]
    assert intermediate_ca.send_chain == (cert,)
    assert load_pem_certificates(intermediate_ca.chain_pem, source="x") == [cert]
    assert intermediate_ca.root == root_ca.cert
    cert.verify_directly_issued_by(root_ca.cert)


def test_device_defaults(intermediate_ca: CertificateAuthority) -> None:
    issued = intermediate_ca.issue_device(
        "dev-1", san_uri="spiffe://edge/dev-1", san_dns="dev-1.local", now=NOW
    )
    cert = issued.cert
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "dev-1"
    assert 0 < cert.serial_number < 2**159
    assert cert.not_valid_after_utc == NOW + timedelta(days=365)
    ku = ext(cert, x509.KeyUsage).value
    assert ku.digital_signature  # type: ignore[attr-defined]
    assert not ku.key_encipherment  # type: ignore[attr-defined]
    assert list(ext(cert, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.CLIENT_AUTH]  # type: ignore[call-overload]
    san = ext(cert, x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://edge/dev-1"]  # type: ignore[attr-defined]
    assert san.get_values_for_type(x509.DNSName) == ["dev-1.local"]  # type: ignore[attr-defined]
    assert isinstance(issued.key, ec.EllipticCurvePrivateKey)
    assert issued.chain == (intermediate_ca.cert,)
    assert issued.fullchain_pem == issued.cert_pem + intermediate_ca.cert_pem
    cert.verify_directly_issued_by(intermediate_ca.cert)


def test_device_rsa_has_key_encipherment(intermediate_ca: CertificateAuthority) -> None:
    issued = intermediate_ca.issue_device("dev-rsa", key_type="rsa2048", now=NOW)
    assert isinstance(issued.key, rsa.RSAPrivateKey)
    san = ext(issued.cert, x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [  # type: ignore[attr-defined]
        "urn:edgesim:device:dev-rsa"
    ]
    bare = intermediate_ca.issue_device("bare", default_san=False, now=NOW)
    with pytest.raises(x509.ExtensionNotFound):
        ext(bare.cert, x509.SubjectAlternativeName)
    assert ext(issued.cert, x509.KeyUsage).value.key_encipherment  # type: ignore[attr-defined]


def test_device_fault_injection_options(intermediate_ca: CertificateAuthority) -> None:
    server_only = intermediate_ca.issue_device("bad-eku", eku=("serverAuth",), now=NOW)
    assert list(ext(server_only.cert, x509.ExtendedKeyUsage).value) == [  # type: ignore[call-overload]
        ExtendedKeyUsageOID.SERVER_AUTH
    ]
    no_eku = intermediate_ca.issue_device("no-eku", eku=(), now=NOW)
    with pytest.raises(x509.ExtensionNotFound):
        ext(no_eku.cert, x509.ExtendedKeyUsage)
    expired = intermediate_ca.issue_device(
        "old", not_before=NOW - timedelta(days=30), not_after=NOW - timedelta(days=1)
    )
    assert expired.cert.not_valid_after_utc == NOW - timedelta(days=1)
    naive = intermediate_ca.issue_device("naive", not_before=datetime(2030, 1, 1), days=1)
    assert naive.cert.not_valid_before_utc.isoformat() == "2030-01-01T00:00:00+00:00"


def test_bad_parameters_are_named(intermediate_ca: CertificateAuthority) -> None:
    with pytest.raises(IssueError, match="must be after not_before"):
        intermediate_ca.issue_device("x", not_before=NOW, not_after=NOW - timedelta(days=1))
    with pytest.raises(IssueError, match="unknown extended key usage 'client'"):
        intermediate_ca.issue_device("x", eku=("client",), now=NOW)
    with pytest.raises(IssueError, match="positive number of days"):
        intermediate_ca.issue_device("x", days=0, now=NOW)
    with pytest.raises(IssueError, match="path length"):
        intermediate_ca.issue_intermediate("x", path_length=-1, now=NOW)


def test_server_sans_auto_detect(intermediate_ca: CertificateAuthority) -> None:
    issued = intermediate_ca.issue_server(["localhost", "127.0.0.1", "::1"], now=NOW)
    san = ext(issued.cert, x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]  # type: ignore[attr-defined]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "::1"]  # type: ignore[attr-defined]
    assert issued.cert.subject.rfc4514_string() == "CN=localhost"
    assert list(ext(issued.cert, x509.ExtendedKeyUsage).value) == [  # type: ignore[call-overload]
        ExtendedKeyUsageOID.SERVER_AUTH
    ]


def test_general_name_kinds() -> None:
    assert isinstance(general_name("10.0.0.1"), x509.IPAddress)
    assert isinstance(general_name("https://x"), x509.UniformResourceIdentifier)
    assert isinstance(general_name("a@b.c"), x509.RFC822Name)
    assert isinstance(general_name("a.example"), x509.DNSName)


def test_random_serials_are_distinct_and_bounded() -> None:
    serials = {random_serial() for _ in range(1000)}
    assert len(serials) == 1000
    assert all(0 < s < 2**159 for s in serials)


def test_cryptography_verifier_accepts_device_chain(
    root_ca: CertificateAuthority, intermediate_ca: CertificateAuthority
) -> None:
    issued = intermediate_ca.issue_device("dev-v", now=NOW)
    verifier = (
        PolicyBuilder()
        .store(Store([root_ca.cert]))
        .time(NOW + timedelta(days=1))
        .build_client_verifier()
    )
    result = verifier.verify(issued.cert, list(issued.chain))
    assert result.chain[-1] == root_ca.cert


def test_key_mismatch_and_non_ca_refused(root_ca: CertificateAuthority) -> None:
    with pytest.raises(IssueError, match="does not match"):
        CertificateAuthority(root_ca.cert, generate_key())
    leaf = root_ca.issue_device("leaf", now=NOW)
    with pytest.raises(IssueError, match="is not a CA"):
        CertificateAuthority(leaf.cert, leaf.key)


def test_load_from_files(
    tmp_path: Path, root_ca: CertificateAuthority, intermediate_ca: CertificateAuthority
) -> None:
    cert = tmp_path / "ca.pem"
    key = tmp_path / "ca.key"
    cert.write_bytes(intermediate_ca.cert_pem + root_ca.cert_pem)
    write_private_key(key, intermediate_ca.key, passphrase=b"pw")
    loaded = CertificateAuthority.load(cert, key, b"pw")
    assert loaded.cert == intermediate_ca.cert
    assert loaded.chain == intermediate_ca.chain
    other = tmp_path / "other.key"
    write_private_key(other, generate_key())
    with pytest.raises(IssueError, match=r"ca\.pem / .*other\.key: CA private key does not match"):
        CertificateAuthority.load(cert, other)


def test_bulk_manifest(tmp_path: Path, intermediate_ca: CertificateAuthority) -> None:
    manifest = intermediate_ca.issue_devices_bulk(
        tmp_path / "fleet",
        count=5,
        id_template="car-{i:03d}",
        start=7,
        san_uri="urn:dev:{id}",
        now=NOW,
    )
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert [r["id"] for r in rows] == [f"car-{i:03d}" for i in range(7, 12)]
    base = manifest.parent
    for row in rows:
        cert = x509.load_pem_x509_certificate((base / row["cert"]).read_bytes())
        assert format(cert.serial_number, "x") == row["serial"]
        assert row["not_after"] == "2027-03-01T12:00:00Z"
        assert stat.S_IMODE((base / row["key"]).stat().st_mode) == 0o600
        chain = load_pem_certificates((base / row["chain"]).read_bytes(), source="chain")
        assert chain == [intermediate_ca.cert]
        san = ext(cert, x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.UniformResourceIdentifier) == [f"urn:dev:{row['id']}"]  # type: ignore[attr-defined]


@pytest.mark.timeout(120)
def test_bulk_parallel_matches_serial_layout(
    tmp_path: Path, intermediate_ca: CertificateAuthority
) -> None:
    manifest = intermediate_ca.issue_devices_bulk(tmp_path, count=200, jobs=2, now=NOW)
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert [r["id"] for r in rows] == [f"dev-{i:05d}" for i in range(200)]
    assert len({r["serial"] for r in rows}) == 200
    last = x509.load_pem_x509_certificate((tmp_path / rows[-1]["cert"]).read_bytes())
    last.verify_directly_issued_by(intermediate_ca.cert)


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("dev-{j}", "invalid device id template"),
        ("dev", "same id"),
        ("../x{i}", "not a safe file name"),
        ("dev-{i:q}", "invalid device id template"),
    ],
)
def test_bulk_template_errors(
    tmp_path: Path, intermediate_ca: CertificateAuthority, template: str, message: str
) -> None:
    with pytest.raises(IssueError, match=message):
        intermediate_ca.issue_devices_bulk(tmp_path, count=2, id_template=template, now=NOW)


@pytest.mark.interop
@pytest.mark.timeout(60)
def test_openssl_verifies_our_chains(
    tmp_path: Path,
    root_ca: CertificateAuthority,
    intermediate_ca: CertificateAuthority,
    openssl: OpenSSL,
) -> None:
    root = tmp_path / "root.pem"
    inter = tmp_path / "inter.pem"
    root.write_bytes(root_ca.cert_pem)
    inter.write_bytes(intermediate_ca.chain_pem)
    device = tmp_path / "device.pem"
    device.write_bytes(intermediate_ca.issue_device("dev-o", now=NOW).cert_pem)
    server = tmp_path / "server.pem"
    server.write_bytes(intermediate_ca.issue_server(["localhost", "127.0.0.1"], now=NOW).cert_pem)
    common = ["-attime", ATTIME, "-CAfile", root, "-untrusted", inter]
    openssl("verify", *common, "-purpose", "sslclient", device)
    openssl("verify", *common, "-purpose", "sslserver", server)
    wrong = openssl("verify", *common, "-purpose", "sslserver", device, check=False)
    assert wrong.returncode != 0
    text = openssl("x509", "-in", device, "-noout", "-text").stdout
    assert "TLS Web Client Authentication" in text
    assert "CA:FALSE" in text
    expired = tmp_path / "expired.pem"
    expired.write_bytes(
        intermediate_ca.issue_device(
            "dev-x", not_before=NOW - timedelta(days=9), not_after=NOW - timedelta(days=2)
        ).cert_pem
    )
    result = openssl("verify", *common, expired, check=False)
    assert result.returncode != 0
    assert "certificate has expired" in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("ca_key", "device_key", "sans"),
    [
        ("ec256", "ec256", ("urn:edgesim:device:dev-7", None)),
        ("ec384", "rsa2048", ("spiffe://edge/dev-7", "dev-7.local")),
        ("ed25519", "ed25519", (None, "dev-7.local")),
        ("rsa2048", "ec256", ("urn:x", None)),
    ],
)
def test_bulk_fast_path_is_byte_identical_to_builder(
    ca_key: str, device_key: str, sans: tuple[str | None, str | None]
) -> None:
    from certs.authority import _device_sans, _DeviceTemplate

    root = CertificateAuthority.create_root("Fast Root", key_type=ca_key, now=NOW)
    end = NOW + timedelta(days=30)
    template = _DeviceTemplate(root, ("clientAuth",), NOW, end, device_key)
    key = generate_key(device_key)
    names = _device_sans("dev-7", *sans)
    fast = x509.load_der_x509_certificate(template.certificate_der("dev-7", key, 0x80FF, names))
    slow = root.issue_leaf(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dev-7")]),
        names,
        key=key,
        eku=("clientAuth",),
        start=NOW,
        end=end,
        serial=0x80FF,
    ).cert
    assert fast.tbs_certificate_bytes == slow.tbs_certificate_bytes
    assert fast.signature_algorithm_oid == slow.signature_algorithm_oid
    fast.verify_directly_issued_by(root.cert)


def test_subject_strings_and_display() -> None:
    from certs.names import display_name, parse_subject

    name = parse_subject("/C=US/O=Acme\\/Labs/CN=dev-1+UID=42/emailAddress=a@b.c")
    assert display_name(name) == "C=US, O=Acme/Labs, CN=dev-1 + UID=42, emailAddress=a@b.c"
    assert parse_subject("C=DE,CN=x") == parse_subject("/C=DE/CN=x")
    with pytest.raises(IssueError, match="lacks '='"):
        parse_subject("/CN")
    with pytest.raises(IssueError, match="unknown distinguished name field 'XX'"):
        parse_subject("/XX=1")
    with pytest.raises(IssueError, match="exactly 2 letters"):
        parse_subject("/C=USA")
