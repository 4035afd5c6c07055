"""Certificate files: format detection, strict PEM loading, any-format loading."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from badcerts import pem, with_version
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs7, pkcs12
from cryptography.x509.oid import NameOID

from certs.authority import CertificateAuthority
from certs.bundle import (
    FORMATS,
    detect_format,
    load_any_certificates,
    load_pem_certificates,
    pem_blocks,
    pem_bundle,
    read_certificates,
)
from certs.errors import BundleError, PassphraseError
from certs.keys import generate_key, key_pem

OpenSSL = Callable[..., subprocess.CompletedProcess[str]]
NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def samples(
    root_ca: CertificateAuthority, intermediate_ca: CertificateAuthority
) -> dict[str, bytes]:
    """One sample of every format, keyed like :data:`FORMATS`."""
    leaf = intermediate_ca.issue_device("dev-b", now=NOW)
    key = generate_key()
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "csr")]))
        .sign(key, hashes.SHA256())
    )
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(root_ca.cert.subject)
        .last_update(NOW)
        .next_update(NOW)
        .sign(root_ca.key, hashes.SHA256())
    )
    certs = [leaf.cert, intermediate_ca.cert]
    der = serialization.Encoding.DER
    return {
        "empty": b"  \n",
        "text": b"hello, this is not a certificate\n",
        "binary": b"\x00\x01\x02\xff\xfe",
        "pem-certificate": pem_bundle(certs),
        "pem-pkcs7": pkcs7.serialize_certificates(certs, serialization.Encoding.PEM),
        "der-pkcs7": pkcs7.serialize_certificates(certs, der),
        "pem-private-key": key_pem(key),
        "pem-encrypted-private-key": key_pem(key, b"pw"),
        "pem-public-key": key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        "pem-csr": csr.public_bytes(serialization.Encoding.PEM),
        "der-csr": csr.public_bytes(der),
        "pem-crl": crl.public_bytes(serialization.Encoding.PEM),
        "der-crl": crl.public_bytes(der),
        "der-certificate": leaf.cert.public_bytes(der),
        "der-pkcs12": pkcs12.serialize_key_and_certificates(
            b"dev",
            leaf.key,
            leaf.cert,
            [intermediate_ca.cert],
            serialization.BestAvailableEncryption(b"p12pw"),
        ),
        "der-private-key": key.private_bytes(
            der, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
    }


def test_detect_every_format(samples: dict[str, bytes]) -> None:
    for kind, data in samples.items():
        assert detect_format(data) == kind, kind
    assert set(samples) <= set(FORMATS)


def test_mixed_pem_reports_the_key(samples: dict[str, bytes]) -> None:
    mixed = samples["pem-certificate"] + samples["pem-private-key"]
    assert detect_format(mixed) == "pem-private-key"
    assert [label for label, _ in pem_blocks(mixed)] == ["CERTIFICATE"] * 2 + ["PRIVATE KEY"]


def test_strict_pem_loads_in_order(
    samples: dict[str, bytes], intermediate_ca: CertificateAuthority
) -> None:
    text = b"subject=CN=dev-b\n" + samples["pem-certificate"]
    certs = load_pem_certificates(text, source="chain.pem")
    assert [c.subject.rfc4514_string() for c in certs] == ["CN=dev-b", "CN=Test Intermediate CA"]
    assert certs[1] == intermediate_ca.cert


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        (
            "der-certificate",
            r"is a DER \(binary\) certificate; run: edgesim pki convert f --to pem",
        ),
        ("der-pkcs7", r"DER PKCS#7 bundle; run: edgesim pki convert f --to pem"),
        ("pem-pkcs7", r"PEM PKCS#7 bundle; run: edgesim pki convert f --to pem"),
        ("der-pkcs12", r"PKCS#12 .*--passphrase-file"),
        ("empty", r"f: expected PEM certificate\(s\), but the file is an empty file"),
        ("text", "a text file without any PEM block"),
        ("pem-csr", r"signing request \(CSR\); a CSR must first be signed"),
        ("der-crl", r"revocation list \(CRL\)"),
    ],
)
def test_strict_pem_explains_other_formats(
    samples: dict[str, bytes], kind: str, message: str
) -> None:
    with pytest.raises(BundleError, match=message):
        load_pem_certificates(samples[kind], source="f")


def test_strict_pem_names_the_offending_block(samples: dict[str, bytes]) -> None:
    mixed = samples["pem-certificate"] + samples["pem-private-key"]
    with pytest.raises(
        BundleError, match=r"f \(PEM block 3, PRIVATE KEY\).*must not hold a private key"
    ):
        load_pem_certificates(mixed, source="f")


def test_corrupt_pem_block() -> None:
    bad = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    with pytest.raises(BundleError, match="PEM block 1 is not a valid certificate"):
        load_pem_certificates(bad, source="bad.pem")


@pytest.mark.parametrize("encoding", ["der", "pem", "der-pkcs7"])
def test_a_certificate_version_cryptography_refuses_is_a_bundle_error(
    samples: dict[str, bytes], encoding: str
) -> None:
    # cryptography's InvalidVersion is no ValueError; it once escaped as itself
    # (found by tests/fuzz, in a PKCS#7 bundle).
    bad = with_version(samples["der-certificate"], 126)
    if encoding == "pem":
        data = pem(bad)
        where = "bad: PEM block 1 is not a valid certificate"
    elif encoding == "der-pkcs7":
        data = samples["der-pkcs7"]
        good = samples["der-certificate"]
        assert data.count(good) == 1
        data = data.replace(good, bad)
        where = "bad: cannot parse a DER PKCS#7 bundle"
    else:
        data = bad
        where = "bad: cannot parse a DER (binary) certificate"
    assert detect_format(data) == {"der": "der-certificate", "pem": "pem-certificate"}.get(
        encoding, "der-pkcs7"
    )
    with pytest.raises(BundleError, match="126 is not a valid X509 version") as caught:
        load_any_certificates(data, source="bad")
    assert str(caught.value).startswith(where)


@pytest.mark.parametrize(
    "kind", ["pem-certificate", "pem-pkcs7", "der-pkcs7", "der-certificate", "der-pkcs12"]
)
def test_load_any(samples: dict[str, bytes], kind: str) -> None:
    certs = load_any_certificates(samples[kind], source="f", passphrase=b"p12pw")
    assert certs[0].subject.rfc4514_string() == "CN=dev-b"


def test_pkcs12_passphrase_errors(samples: dict[str, bytes]) -> None:
    with pytest.raises(PassphraseError, match="needs a passphrase"):
        load_any_certificates(samples["der-pkcs12"], source="f.p12")
    with pytest.raises(PassphraseError, match="wrong passphrase"):
        load_any_certificates(samples["der-pkcs12"], source="f.p12", passphrase=b"no")


def test_load_any_refuses_keys(samples: dict[str, bytes]) -> None:
    with pytest.raises(BundleError, match="the file is a PEM private key"):
        load_any_certificates(samples["pem-private-key"], source="k")


def test_read_certificates(tmp_path: Path, samples: dict[str, bytes]) -> None:
    der = tmp_path / "c.der"
    der.write_bytes(samples["der-certificate"])
    assert len(read_certificates(der)) == 1
    with pytest.raises(BundleError, match="convert"):
        read_certificates(der, strict=True)
    with pytest.raises(BundleError, match="cannot read"):
        read_certificates(tmp_path / "missing.pem")


@pytest.mark.interop
@pytest.mark.timeout(60)
def test_openssl_containers(
    tmp_path: Path, intermediate_ca: CertificateAuthority, openssl: OpenSSL
) -> None:
    issued = intermediate_ca.issue_device("dev-p12", now=NOW)
    cert = tmp_path / "d.pem"
    key = tmp_path / "d.key"
    chain = tmp_path / "chain.pem"
    cert.write_bytes(issued.cert_pem)
    key.write_bytes(issued.key_pem())
    chain.write_bytes(issued.chain_pem)
    p12 = tmp_path / "d.p12"
    openssl(
        "pkcs12",
        "-export",
        "-in",
        cert,
        "-inkey",
        key,
        "-certfile",
        chain,
        "-passout",
        "pass:exp",
        "-out",
        p12,
    )
    assert detect_format(p12.read_bytes()) == "der-pkcs12"
    got = load_any_certificates(p12.read_bytes(), source="d.p12", passphrase=b"exp")
    assert got == [issued.cert, intermediate_ca.cert]
    p7 = tmp_path / "d.p7b"
    openssl("crl2pkcs7", "-nocrl", "-certfile", cert, "-certfile", chain, "-out", p7)
    assert detect_format(p7.read_bytes()) == "pem-pkcs7"
    assert set(load_any_certificates(p7.read_bytes(), source="d.p7b")) == {
        issued.cert,
        intermediate_ca.cert,
    }
    p7der = tmp_path / "d.p7b.der"
    openssl("pkcs7", "-in", p7, "-outform", "DER", "-out", p7der)
    assert detect_format(p7der.read_bytes()) == "der-pkcs7"


def test_inspect_every_sample(samples: dict[str, bytes]) -> None:
    from certs.inspect import inspect_data, render

    expected = {
        "pem-certificate": ["certificate", "certificate"],
        "der-pkcs12": ["certificate", "certificate", "private-key"],
        "pem-crl": ["crl"],
        "pem-private-key": ["private-key"],
        "pem-encrypted-private-key": ["private-key"],
        "pem-csr": ["csr"],
        "pem-public-key": ["public-key"],
        "text": ["unknown"],
    }
    for kind, kinds in expected.items():
        items = inspect_data(samples[kind], source=kind, passphrase=b"p12pw")
        assert [i["kind"] for i in items] == kinds, kind
        assert render(items).startswith("[1] ")
    leaf = inspect_data(samples["der-certificate"], source="d")[0]
    assert leaf["subject"] == "CN=dev-b"
    assert leaf["key"] == "EC P-256"
    assert len(leaf["sha256_fingerprint"].split(":")) == 32
    locked = inspect_data(samples["pem-encrypted-private-key"], source="k")[0]
    assert locked["encrypted"] is True
    assert "no passphrase" in locked["note"]
