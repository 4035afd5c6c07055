"""CRLs: building, updating with incremented numbers, and openssl's view of them."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from certs.authority import CertificateAuthority
from certs.crl import (
    build_crl,
    crl_number,
    load_crls,
    parse_serial,
    read_crl,
    revoke,
    revoked_entries,
    update_crl,
)
from certs.errors import CrlError

OpenSSL = Callable[..., subprocess.CompletedProcess[str]]
NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
ATTIME = str(int(NOW.timestamp()) + 3600)


def test_build_crl_has_aki_number_and_reasons(intermediate_ca: CertificateAuthority) -> None:
    crl = build_crl(
        intermediate_ca,
        [(0x1F, NOW, "keyCompromise"), (0x20, NOW, None)],
        crl_number=7,
        last_update=NOW,
        days=2,
    )
    assert crl.issuer == intermediate_ca.cert.subject
    assert crl_number(crl) == 7
    assert crl.next_update_utc == NOW + timedelta(days=2)
    aki = crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki == intermediate_ca.authority_key_identifier
    assert revoked_entries(crl) == [(0x1F, NOW, "keyCompromise"), (0x20, NOW, None)]
    assert crl.is_signature_valid(intermediate_ca.cert.public_key())  # type: ignore[arg-type]


def test_build_crl_errors(intermediate_ca: CertificateAuthority) -> None:
    with pytest.raises(CrlError, match="unknown revocation reason 'oops'"):
        build_crl(intermediate_ca, [(1, NOW, "oops")], crl_number=1, last_update=NOW)
    with pytest.raises(CrlError, match="must be after last update"):
        build_crl(intermediate_ca, [], crl_number=1, last_update=NOW, next_update=NOW)


def test_update_increments_and_keeps_entries(intermediate_ca: CertificateAuthority) -> None:
    first = update_crl(intermediate_ca, None, [(5, NOW, None)], now=NOW)
    assert crl_number(first) == 1
    later = NOW + timedelta(hours=1)
    second = update_crl(
        intermediate_ca, first, [(5, later, "superseded"), (6, later, None)], now=later
    )
    assert crl_number(second) == 2
    assert revoked_entries(second) == [(5, NOW, None), (6, later, None)]


def test_update_refuses_foreign_crl(
    root_ca: CertificateAuthority, intermediate_ca: CertificateAuthority
) -> None:
    foreign = build_crl(root_ca, [], crl_number=1, last_update=NOW)
    with pytest.raises(CrlError, match=r"old\.crl: CRL was issued by CN=Test Root CA"):
        update_crl(intermediate_ca, foreign, [], now=NOW, source="old.crl")
    impostor = CertificateAuthority.create_root("Test Intermediate CA", now=NOW)
    forged = build_crl(impostor, [], crl_number=1, last_update=NOW)
    with pytest.raises(CrlError, match="signature does not verify"):
        update_crl(intermediate_ca, forged, [], now=NOW)


def test_revoke_file_round_trip(tmp_path: Path, intermediate_ca: CertificateAuthority) -> None:
    path = tmp_path / "ca.crl"
    dev = intermediate_ca.issue_device("dev-r", now=NOW)
    revoke(intermediate_ca, path, [dev.cert], reason="keyCompromise", now=NOW)
    revoke(intermediate_ca, path, serials=[0xABC], now=NOW + timedelta(minutes=1))
    crl = read_crl(path)
    assert crl_number(crl) == 2
    assert [e[0] for e in revoked_entries(crl)] == [dev.cert.serial_number, 0xABC]
    assert crl.get_revoked_certificate_by_serial_number(dev.cert.serial_number) is not None


def test_revoke_refuses_other_ca_certificate(
    tmp_path: Path, root_ca: CertificateAuthority, intermediate_ca: CertificateAuthority
) -> None:
    other = root_ca.issue_device("dev-root", now=NOW)
    with pytest.raises(CrlError, match="was issued by CN=Test Root CA, not by this CA"):
        revoke(intermediate_ca, tmp_path / "c.crl", [other.cert], now=NOW)


def test_load_crls_formats(intermediate_ca: CertificateAuthority) -> None:
    crl = build_crl(intermediate_ca, [], crl_number=1, last_update=NOW)
    pem = crl.public_bytes(serialization.Encoding.PEM)
    der = crl.public_bytes(serialization.Encoding.DER)
    assert load_crls(pem + pem, "two.pem") == [crl, crl]
    assert load_crls(der, "one.der") == [crl]
    with pytest.raises(
        CrlError, match=r"cert\.pem: expected a CRL, but the file is PEM certificate"
    ):
        load_crls(intermediate_ca.cert_pem, "cert.pem")


@pytest.mark.parametrize(
    ("text", "value"), [("1f", 0x1F), ("0x1F", 0x1F), ("ab:cd", 0xABCD), (" 10 ", 16)]
)
def test_parse_serial(text: str, value: int) -> None:
    assert parse_serial(text) == value


@pytest.mark.parametrize("text", ["xyz", "0", ""])
def test_parse_serial_errors(text: str) -> None:
    with pytest.raises(CrlError, match="invalid serial number"):
        parse_serial(text)


@pytest.mark.interop
@pytest.mark.timeout(60)
def test_openssl_honours_our_crl(
    tmp_path: Path,
    root_ca: CertificateAuthority,
    intermediate_ca: CertificateAuthority,
    openssl: OpenSSL,
) -> None:
    good = intermediate_ca.issue_device("dev-good", now=NOW)
    bad = intermediate_ca.issue_device("dev-bad", now=NOW)
    crl_path = tmp_path / "inter.crl"
    revoke(intermediate_ca, crl_path, [bad.cert], reason="keyCompromise", now=NOW)
    root_crl = tmp_path / "root.crl"
    revoke(root_ca, root_crl, [], now=NOW)
    ca_file = tmp_path / "root.pem"
    ca_file.write_bytes(root_ca.cert_pem)
    inter = tmp_path / "inter.pem"
    inter.write_bytes(intermediate_ca.cert_pem)
    out = openssl("crl", "-in", crl_path, "-CAfile", inter, "-noout", "-text")
    assert "verify OK" in out.stderr + out.stdout
    assert "Key Compromise" in out.stdout
    both = tmp_path / "crls.pem"
    both.write_bytes(crl_path.read_bytes() + root_crl.read_bytes())
    for issued, ok in ((good, True), (bad, False)):
        leaf = tmp_path / "leaf.pem"
        leaf.write_bytes(issued.cert_pem)
        result = openssl(
            "verify",
            "-attime",
            ATTIME,
            "-crl_check_all",
            "-CRLfile",
            both,
            "-CAfile",
            ca_file,
            "-untrusted",
            inter,
            leaf,
            check=False,
        )
        assert (result.returncode == 0) is ok, result.stdout + result.stderr
        if not ok:
            assert "certificate revoked" in result.stdout + result.stderr
