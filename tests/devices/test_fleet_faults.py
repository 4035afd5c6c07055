"""Fault mixes: parsing, exact seeded selection, and the defective material itself."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from certs.authority import CertificateAuthority
from devices.faults import FaultError, FaultMaker, parse_faults, select_faults

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def test_percentages_give_exact_counts() -> None:
    shares = parse_faults("expired=1%,wrong-ca=1%,no-cert=0.5%,revoked=0.5%,wrong-eku=0.5%")
    plan = select_faults(shares, 1000, seed=7)
    assert Counter(plan.values()) == {
        "expired": 10,
        "wrong-ca": 10,
        "no-cert": 5,
        "revoked": 5,
        "wrong-eku": 5,
    }
    assert all(0 <= i < 1000 for i in plan)


def test_absolute_counts_and_rounding_half_up() -> None:
    plan = select_faults(parse_faults("expired=3, revoked=2.5%"), 100, seed=1)
    # 2.5 % of 100 is 2.5, rounded half up to 3.
    assert Counter(plan.values()) == {"expired": 3, "revoked": 3}


def test_selection_depends_only_on_the_seed() -> None:
    shares = parse_faults("expired=5%,wrong-ca=5%")
    assert select_faults(shares, 200, seed=3) == select_faults(shares, 200, seed=3)
    assert select_faults(shares, 200, seed=3) != select_faults(shares, 200, seed=4)


def test_empty_mix_is_no_faults() -> None:
    assert parse_faults("") == ()
    assert select_faults((), 10, seed=1) == {}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("expired", r"item 1 'expired': expected KIND=PERCENT% or KIND=COUNT"),
        ("late=1%", r"unknown kind 'late'"),
        ("expired=1%,expired=2", r"item 2: 'expired' is given twice"),
        ("expired=101%", r"more than 100 %"),
        ("expired=1.5", r"a count is a whole number"),
    ],
)
def test_bad_mix_names_the_item(text: str, message: str) -> None:
    with pytest.raises(FaultError, match=message):
        parse_faults(text)


def test_more_faults_than_devices_is_refused() -> None:
    with pytest.raises(FaultError, match="ask for 12 faulty devices but the fleet has 10"):
        select_faults(parse_faults("expired=6,wrong-ca=6"), 10, seed=1)


@pytest.fixture
def issuing_ca(tmp_path: Path) -> tuple[CertificateAuthority, Path, Path]:
    root = CertificateAuthority.create_root("test root", now=NOW - timedelta(days=10))
    inter = root.issue_intermediate("test issuing", now=NOW - timedelta(days=10))
    cert, key = tmp_path / "ca.pem", tmp_path / "ca.key"
    cert.write_bytes(inter.cert_pem + inter.chain_pem)
    key.write_bytes(inter.key_pem())
    return inter, cert, key


def _load(path: Path | None) -> x509.Certificate:
    assert path is not None
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_faulty_material_is_faulty_as_asked(
    issuing_ca: tuple[CertificateAuthority, Path, Path], tmp_path: Path
) -> None:
    ca, cert, key = issuing_ca
    maker = FaultMaker(ca_cert=cert, ca_key=key, out_dir=tmp_path / "faults", now=NOW)

    expired = _load(maker.make("expired", "dev-1").cert)
    assert expired.not_valid_after_utc < NOW
    assert expired.issuer == ca.cert.subject

    rogue = _load(maker.make("wrong-ca", "dev-2").cert)
    assert rogue.issuer != ca.cert.subject
    assert rogue.subject.rfc4514_string() == "CN=dev-2"

    eku = _load(maker.make("wrong-eku", "dev-3").cert)
    usages = eku.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usages) == [ExtendedKeyUsageOID.SERVER_AUTH]

    none = maker.make("no-cert", "dev-4")
    assert (none.cert, none.key) == (None, None)

    revoked_material = maker.make("revoked", "dev-5")
    revoked = _load(revoked_material.cert)
    assert revoked_material.chain is not None  # the intermediate travels with the leaf
    crl_path = maker.write_crl(tmp_path / "crl.pem")
    crl = x509.load_pem_x509_crl(crl_path.read_bytes())
    assert crl.issuer == ca.cert.subject
    assert crl.is_signature_valid(ca.cert.public_key())  # type: ignore[arg-type]
    assert crl.get_revoked_certificate_by_serial_number(revoked.serial_number) is not None
    assert len(list(crl)) == 1


def test_material_is_reused_so_the_crl_stays_right(
    issuing_ca: tuple[CertificateAuthority, Path, Path], tmp_path: Path
) -> None:
    _, cert, key = issuing_ca
    first = FaultMaker(ca_cert=cert, ca_key=key, out_dir=tmp_path, now=NOW)
    serial = _load(first.make("revoked", "dev-9").cert).serial_number
    again = FaultMaker(ca_cert=cert, ca_key=key, out_dir=tmp_path, now=NOW)
    assert _load(again.make("revoked", "dev-9").cert).serial_number == serial
    assert again.revoked_serials == (serial,)


@pytest.mark.parametrize("kind", ["expired", "revoked", "wrong-eku"])
def test_material_of_another_pki_is_issued_anew(
    issuing_ca: tuple[CertificateAuthority, Path, Path], tmp_path: Path, kind: str
) -> None:
    # A work directory kept from a run against another PKI (same CA name, other key):
    # reusing its certificate would make the edge refuse it as unknown_ca.
    old_root = CertificateAuthority.create_root("test root", now=NOW - timedelta(days=10))
    old = old_root.issue_intermediate("test issuing", now=NOW - timedelta(days=10))
    old_cert, old_key = tmp_path / "old-ca.pem", tmp_path / "old-ca.key"
    old_cert.write_bytes(old.cert_pem + old.chain_pem)
    old_key.write_bytes(old.key_pem())
    work = tmp_path / "work"
    stale = FaultMaker(ca_cert=old_cert, ca_key=old_key, out_dir=work, now=NOW)
    stale_serial = _load(stale.make(kind, "dev-7").cert).serial_number
    ca, cert, key = issuing_ca
    maker = FaultMaker(ca_cert=cert, ca_key=key, out_dir=work, now=NOW)
    fresh = _load(maker.make(kind, "dev-7").cert)
    assert fresh.serial_number != stale_serial
    fresh.verify_directly_issued_by(ca.cert)
    if kind == "revoked":
        assert maker.revoked_serials == (fresh.serial_number,)
    # The fresh material is what the next run reuses.
    again = FaultMaker(ca_cert=cert, ca_key=key, out_dir=work, now=NOW)
    assert _load(again.make(kind, "dev-7").cert).serial_number == fresh.serial_number


def test_missing_issuing_ca_is_explained(tmp_path: Path) -> None:
    maker = FaultMaker(ca_cert=None, ca_key=None, out_dir=tmp_path, now=NOW)
    with pytest.raises(FaultError, match="need the issuing CA: give --pki DIR or --ca-cert"):
        maker.make("expired", "dev-1")
    broken = tmp_path / "broken.pem"
    broken.write_text("not a certificate")
    maker = FaultMaker(ca_cert=broken, ca_key=broken, out_dir=tmp_path, now=NOW)
    with pytest.raises(FaultError, match=r"cannot load the issuing CA .*broken\.pem"):
        maker.make("revoked", "dev-1")
