"""certs.verify: path validation results, codes, alerts, CRLs; cross-checked with openssl."""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from certs.authority import CertificateAuthority
from certs.lint import lint_chain
from certs.verify import ALERTS, CrlCheck, VerifyResult, verify_path
from edge.cli import main

from .chainfactory import T0, chain3, key, make_cert, resign_weak, revoke


def test_valid_chain() -> None:
    leaf, inter, root = chain3()
    result = verify_path(leaf.cert, roots=[root.cert], untrusted=[inter.cert], at=T0)
    assert result.ok
    assert result.code == "ok"
    assert result.alert is None
    assert result.openssl_code == 0
    assert result.chain == (leaf.cert, inter.cert, root.cert)
    assert "through 1 intermediate" in result.reason


def test_seed_style_root_without_key_usage_is_accepted() -> None:
    # The seed's root.conf writes basicConstraints only; OpenSSL (the edge) accepts it.
    root = make_cert("Seed Root", key_usage="none", key_kind="rsa2048", fresh_key=False)
    leaf = make_cert("dev", issuer=root, ca=False, aki=False)
    assert verify_path(leaf.cert, roots=[root.cert], at=T0).ok


def test_missing_intermediate_is_unknown_ca_with_untrusted_hint() -> None:
    leaf, _, root = chain3()
    result = verify_path(leaf.cert, roots=[root.cert], at=T0)
    assert not result.ok
    assert (result.code, result.alert, result.openssl_code) == ("unknown-ca", "unknown_ca", 20)
    assert "CN=Test Int" in result.reason
    assert "--untrusted" in result.hint
    assert result.chain == ()


def test_missing_root_names_it() -> None:
    leaf, inter, _ = chain3()
    other = make_cert("Other Root")
    result = verify_path(leaf.cert, roots=[other.cert], untrusted=[inter.cert], at=T0)
    assert result.code == "unknown-ca"
    assert "reaches the intermediate" in result.reason
    assert "CN=Test Root" in result.hint


def test_self_signed_leaf() -> None:
    root = make_cert("Root")
    lonely = make_cert("lonely", ca=False)
    result = verify_path(lonely.cert, roots=[root.cert], at=T0)
    assert (result.code, result.openssl_code) == ("unknown-ca", 18)
    assert "self-signed" in result.reason


def test_no_roots() -> None:
    leaf, _, _ = chain3()
    result = verify_path(leaf.cert, roots=[], at=T0)
    assert result.code == "unknown-ca"
    assert "--roots" in result.hint


@pytest.mark.parametrize(
    ("at", "code", "alert", "number"),
    [
        (T0 + dt.timedelta(days=400), "expired", "certificate_expired", 10),
        (T0 - dt.timedelta(days=3), "not-yet-valid", "bad_certificate", 9),
    ],
)
def test_validity(at: dt.datetime, code: str, alert: str, number: int) -> None:
    leaf, inter, root = chain3()
    result = verify_path(leaf.cert, roots=[root.cert], untrusted=[inter.cert], at=at)
    assert (result.code, result.alert, result.openssl_code) == (code, alert, number)
    assert "the leaf 'CN=device-1,O=edgesim test'" in result.reason


def test_expired_intermediate_is_named() -> None:
    root = make_cert("Root")
    inter = make_cert("Old Int", issuer=root, not_after=T0 - dt.timedelta(hours=1))
    leaf = make_cert("dev", issuer=inter, ca=False)
    result = verify_path(leaf.cert, roots=[root.cert], untrusted=[inter.cert], at=T0)
    assert result.code == "expired"
    assert "the CA 'CN=Old Int,O=edgesim test' expired" in result.reason


def test_bad_signature() -> None:
    leaf, inter, root = chain3()
    forged = make_cert("device-1", issuer=inter, ca=False, signing_key=key("ec256", fresh=True))
    result = verify_path(forged.cert, roots=[root.cert], untrusted=[inter.cert], at=T0)
    assert (result.code, result.alert, result.openssl_code) == ("bad-signature", "decrypt_error", 7)
    assert "CN=Test Int" in result.reason
    assert leaf.cert != forged.cert


def test_root_with_the_right_name_but_another_key() -> None:
    root = make_cert("Root")
    impostor = make_cert("Root")
    leaf = make_cert("dev", issuer=root, ca=False)
    result = verify_path(leaf.cert, roots=[impostor.cert], at=T0)
    # As OpenSSL (and so the edge) sees it: the impostor's key id differs from the leaf's
    # authority key id, so it is no issuer at all (test_openssl_verify_agrees checks this).
    assert (result.code, result.alert, result.openssl_code) == ("unknown-ca", "unknown_ca", 20)
    assert "another CA with the same name" in result.reason
    assert "'CN=dev,O=edgesim test'" in result.reason
    assert "subjectKeyIdentifier" in result.hint


def test_same_name_ca_without_key_ids_is_a_bad_signature() -> None:
    # Without an authority key id OpenSSL tries the same-name CA and the signature fails.
    root = make_cert("Root")
    leaf = make_cert("dev", issuer=root, ca=False)
    leaf_without_aki = make_cert("dev", issuer=root, ca=False, aki=False)
    impostor = make_cert("Root")
    assert leaf.cert != leaf_without_aki.cert
    result = verify_path(leaf_without_aki.cert, roots=[impostor.cert], at=T0)
    assert (result.code, result.alert, result.openssl_code) == ("bad-signature", "decrypt_error", 7)


@pytest.mark.parametrize("ca", [False, None])
def test_issuer_not_ca(ca: bool | None) -> None:
    root = make_cert("Root")
    inter = make_cert("Not CA", issuer=root, ca=ca, key_usage="none")
    leaf = make_cert("dev", issuer=inter, ca=False)
    result = verify_path(leaf.cert, roots=[root.cert], untrusted=[inter.cert], at=T0)
    assert (result.code, result.alert, result.openssl_code) == ("not-ca", "unknown_ca", 24)
    assert "the certificate 'CN=Not CA,O=edgesim test' is used as an issuer" in result.reason


def test_issuer_without_keycertsign() -> None:
    root = make_cert("Root")
    inter = make_cert("Int", issuer=root, key_usage="no-certsign")
    leaf = make_cert("dev", issuer=inter, ca=False)
    result = verify_path(leaf.cert, roots=[root.cert], untrusted=[inter.cert], at=T0)
    assert result.code == "not-ca"


def test_path_length() -> None:
    root = make_cert("Root", path_length=0)
    inter = make_cert("Int", issuer=root)
    leaf = make_cert("dev", issuer=inter, ca=False)
    result = verify_path(leaf.cert, roots=[root.cert], untrusted=[inter.cert], at=T0)
    assert (result.code, result.alert, result.openssl_code) == ("path-length", "unknown_ca", 25)
    assert "the CA 'CN=Root,O=edgesim test' (pathlen:0, 1 below it)" in result.reason


def test_client_purpose_needs_client_auth() -> None:
    leaf, inter, root = chain3(leaf_eku=[ExtendedKeyUsageOID.SERVER_AUTH])
    result = verify_path(leaf.cert, roots=[root.cert], untrusted=[inter.cert], at=T0)
    assert (result.code, result.alert, result.openssl_code) == (
        "purpose",
        "unsupported_certificate",
        26,
    )
    assert "clientAuth" in result.reason
    assert verify_path(
        leaf.cert, roots=[root.cert], untrusted=[inter.cert], at=T0, purpose="server"
    ).ok
    assert verify_path(
        leaf.cert, roots=[root.cert], untrusted=[inter.cert], at=T0, purpose="any"
    ).ok


def test_ca_eku_restricts_the_path() -> None:
    root = make_cert("Root")
    inter = make_cert("Server-only Int", issuer=root, eku=[ExtendedKeyUsageOID.SERVER_AUTH])
    leaf = make_cert("dev", issuer=inter, ca=False)
    result = verify_path(leaf.cert, roots=[root.cert], untrusted=[inter.cert], at=T0)
    assert result.code == "purpose"
    assert "the CA" in result.reason


def test_server_name() -> None:
    root = make_cert("Root")
    server = make_cert(
        "edge", issuer=root, ca=False, eku=[ExtendedKeyUsageOID.SERVER_AUTH], san=["edge.test"]
    )
    ok = verify_path(
        server.cert, roots=[root.cert], at=T0, purpose="server", server_name="edge.test"
    )
    assert ok.ok
    wrong = verify_path(
        server.cert, roots=[root.cert], at=T0, purpose="server", server_name="other.test"
    )
    assert (wrong.code, wrong.openssl_code) == ("name-mismatch", 62)
    assert "other.test" in wrong.reason


def test_bad_arguments_raise_value_error() -> None:
    leaf, _, root = chain3()
    with pytest.raises(ValueError, match="unknown purpose"):
        verify_path(leaf.cert, roots=[root.cert], purpose="email")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown crl_check"):
        verify_path(leaf.cert, roots=[root.cert], crl_check="all")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="only meaningful"):
        verify_path(leaf.cert, roots=[root.cert], server_name="x.test")
    with pytest.raises(ValueError, match="not a valid DNS name"):
        verify_path(leaf.cert, roots=[root.cert], purpose="server", server_name="a b")


def test_weak_rsa_key() -> None:
    root = make_cert("Root")
    leaf = make_cert("dev", issuer=root, ca=False, key_kind="rsa1024", fresh_key=False)
    result = verify_path(leaf.cert, roots=[root.cert], at=T0)
    assert (result.code, result.openssl_code) == ("weak-key", 66)


def test_sha1_signature_is_refused() -> None:
    root = make_cert("Root", key_kind="rsa2048", fresh_key=False)
    leaf = resign_weak(make_cert("dev", issuer=root, ca=False), root.key, "sha1")
    result = verify_path(leaf.cert, roots=[root.cert], at=T0)
    assert (result.code, result.openssl_code) == ("weak-signature", 68)


def test_ca_as_leaf_is_invalid() -> None:
    root = make_cert("Root")
    sub = make_cert("Sub CA", issuer=root)
    result = verify_path(sub.cert, roots=[root.cert], at=T0)
    assert result.code == "invalid"
    assert "CA certificate" in result.reason


# --- CRLs ----------------------------------------------------------------------


def test_revoked_leaf() -> None:
    leaf, inter, root = chain3()
    crls = [revoke(inter, [leaf.cert.serial_number]), revoke(root, [])]
    result = verify_path(leaf.cert, roots=[root.cert], untrusted=[inter.cert], at=T0, crls=crls)
    assert (result.code, result.alert, result.openssl_code) == (
        "revoked",
        "certificate_revoked",
        23,
    )
    assert "keyCompromise" in result.reason
    assert (T0 - dt.timedelta(days=2)).isoformat() in result.reason
    assert result.chain == (leaf.cert, inter.cert, root.cert)


def test_revoked_intermediate_needs_chain_checking() -> None:
    leaf, inter, root = chain3()
    crls = [revoke(inter, []), revoke(root, [inter.cert.serial_number])]

    def check(crl_check: CrlCheck) -> VerifyResult:
        return verify_path(
            leaf.cert,
            roots=[root.cert],
            untrusted=[inter.cert],
            at=T0,
            crls=crls,
            crl_check=crl_check,
        )

    result = check("chain")
    assert result.code == "revoked"
    assert "CN=Test Int" in result.reason
    # The edge checks the leaf only (VERIFY_CRL_CHECK_LEAF): the revoked CA goes unnoticed.
    assert check("leaf").ok


def test_not_revoked_and_remove_from_crl() -> None:
    leaf, inter, root = chain3()
    other_serial = leaf.cert.serial_number + 1
    crls = [revoke(inter, [other_serial]), revoke(root, [])]
    result = verify_path(leaf.cert, roots=[root.cert], untrusted=[inter.cert], at=T0, crls=crls)
    assert result.ok
    assert "revocation checked" in result.reason
    removed = [
        revoke(inter, [leaf.cert.serial_number], reason=x509.ReasonFlags.remove_from_crl),
        revoke(root, []),
    ]
    assert verify_path(leaf.cert, roots=[root.cert], untrusted=[inter.cert], at=T0, crls=removed).ok


def test_crl_missing() -> None:
    leaf, inter, root = chain3()

    def check(crls: list[x509.CertificateRevocationList], crl_check: CrlCheck) -> VerifyResult:
        return verify_path(
            leaf.cert,
            roots=[root.cert],
            untrusted=[inter.cert],
            at=T0,
            crls=crls,
            crl_check=crl_check,
        )

    only_root = check([revoke(root, [])], "leaf")
    assert (only_root.code, only_root.openssl_code) == ("crl-missing", 3)
    assert "CN=Test Int" in only_root.reason
    only_inter = [revoke(inter, [])]
    assert check(only_inter, "leaf").ok
    chain_checked = check(only_inter, "chain")
    assert chain_checked.code == "crl-missing"
    assert "CN=Test Root" in chain_checked.reason


def test_crl_with_bad_signature() -> None:
    leaf, inter, root = chain3()
    forged = revoke(inter, [], signing_key=key("ec256", fresh=True))
    result = verify_path(
        leaf.cert,
        roots=[root.cert],
        untrusted=[inter.cert],
        at=T0,
        crls=[forged, revoke(root, [])],
    )
    assert (result.code, result.alert) == ("crl-bad-signature", "decrypt_error")


def test_crl_expired_and_not_yet_valid() -> None:
    leaf, inter, root = chain3()
    stale = revoke(
        inter, [], this_update=T0 - dt.timedelta(days=10), next_update=T0 - dt.timedelta(days=1)
    )
    result = verify_path(
        leaf.cert, roots=[root.cert], untrusted=[inter.cert], at=T0, crls=[stale, revoke(root, [])]
    )
    assert (result.code, result.openssl_code) == ("crl-expired", 12)
    future = revoke(inter, [], this_update=T0 + dt.timedelta(hours=1))
    result = verify_path(
        leaf.cert, roots=[root.cert], untrusted=[inter.cert], at=T0, crls=[future, revoke(root, [])]
    )
    assert (result.code, result.openssl_code) == ("crl-not-yet-valid", 11)


def test_result_dict_and_alert_table() -> None:
    leaf, inter, root = chain3()
    result = verify_path(leaf.cert, roots=[root.cert], untrusted=[inter.cert], at=T0)
    data = result.to_dict()
    assert data["ok"] is True
    assert data["code"] == "ok"
    chain = data["chain"]
    assert isinstance(chain, list)
    assert [c["position"] for c in chain] == [1, 2, 3]
    assert chain[0]["subject"] == "CN=device-1,O=edgesim test"
    assert set(ALERTS) >= {"ok", "unknown-ca", "expired", "revoked", "bad-signature", "purpose"}
    assert isinstance(result, VerifyResult)


# --- the same verdicts from openssl verify ------------------------------------

OPENSSL = shutil.which("openssl")


def write_pem(path: Path, *certs: x509.Certificate) -> Path:
    path.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs))
    return path


@dataclass(frozen=True)
class Scenario:
    """One verification both verify_path and openssl verify run."""

    expected: str
    leaf: x509.Certificate
    roots: list[x509.Certificate]
    untrusted: list[x509.Certificate]
    at: dt.datetime = T0
    crls: list[x509.CertificateRevocationList] = field(default_factory=list)
    crl_check: CrlCheck = "leaf"


def openssl_verify(tmp_path: Path, case: Scenario) -> int:
    """Run ``openssl verify`` on ``case`` and return its X509_V_ERR number (0: verified)."""
    assert OPENSSL is not None
    args = [
        OPENSSL,
        "verify",
        "-purpose",
        "sslclient",
        "-attime",
        str(int(case.at.timestamp())),
        "-CAfile",
        str(write_pem(tmp_path / "roots.pem", *case.roots)),
    ]
    if case.untrusted:
        args += ["-untrusted", str(write_pem(tmp_path / "untrusted.pem", *case.untrusted))]
    for index, crl in enumerate(case.crls):
        crl_path = tmp_path / f"crl{index}.pem"
        crl_path.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
        args += ["-CRLfile", str(crl_path)]
    if case.crls:
        args.append("-crl_check_all" if case.crl_check == "chain" else "-crl_check")
    args.append(str(write_pem(tmp_path / "leaf.pem", case.leaf)))
    proc = subprocess.run(args, capture_output=True, text=True, timeout=30, check=False)
    if proc.returncode == 0:
        return 0
    match = re.search(r"error (\d+) at", proc.stdout + proc.stderr)
    assert match, proc.stdout + proc.stderr
    return int(match.group(1))


def scenarios() -> list[Scenario]:
    leaf, inter, root = chain3()
    r0 = make_cert("Root pl0", path_length=0)
    i0 = make_cert("Int under pl0", issuer=r0)
    l0 = make_cert("dev", issuer=i0, ca=False)
    forged = make_cert("device-1", issuer=inter, ca=False, signing_key=key("ec256", fresh=True))
    s_leaf, s_inter, s_root = chain3(leaf_eku=[ExtendedKeyUsageOID.SERVER_AUTH])
    revoked_crls = [revoke(inter, [leaf.cert.serial_number]), revoke(root, [])]
    ca_revoked = [revoke(inter, []), revoke(root, [inter.cert.serial_number])]
    good = ([root.cert], [inter.cert])
    real_root, impostor = make_cert("Root"), make_cert("Root")
    leaf_of_root = make_cert("dev", issuer=real_root, ca=False)
    leaf_without_aki = make_cert("dev", issuer=real_root, ca=False, aki=False)
    return [
        Scenario("ok", leaf.cert, *good),
        Scenario("unknown-ca", leaf.cert, [root.cert], []),
        Scenario("expired", leaf.cert, *good, at=T0 + dt.timedelta(days=400)),
        Scenario("not-yet-valid", leaf.cert, *good, at=T0 - dt.timedelta(days=3)),
        Scenario("bad-signature", forged.cert, *good),
        # A root with the issuer's name but another key: OpenSSL skips it (its subject key
        # id differs from the leaf's authority key id) and finds no issuer at all.
        Scenario("unknown-ca", leaf_of_root.cert, [impostor.cert], []),
        # Without an authority key id OpenSSL tries that CA, and its signature check fails.
        Scenario("bad-signature", leaf_without_aki.cert, [impostor.cert], []),
        Scenario("path-length", l0.cert, [r0.cert], [i0.cert]),
        Scenario("purpose", s_leaf.cert, [s_root.cert], [s_inter.cert]),
        Scenario("revoked", leaf.cert, *good, crls=revoked_crls),
        Scenario("crl-missing", leaf.cert, *good, crls=[revoke(root, [])]),
        Scenario("revoked", leaf.cert, *good, crls=ca_revoked, crl_check="chain"),
        Scenario("ok", leaf.cert, *good, crls=ca_revoked),
    ]


@pytest.mark.interop
@pytest.mark.timeout(60)
@pytest.mark.skipif(OPENSSL is None, reason="openssl is not installed")
def test_openssl_verify_agrees(tmp_path: Path) -> None:
    for case in scenarios():
        result = verify_path(
            case.leaf,
            roots=case.roots,
            untrusted=case.untrusted,
            at=case.at,
            crls=case.crls,
            crl_check=case.crl_check,
        )
        assert result.code == case.expected, result
        assert openssl_verify(tmp_path, case) == result.openssl_code, (case.expected, result)


# --- edgesim pki verify --------------------------------------------------------

AT = ["--at", T0.isoformat()]


def test_cli_verify_ok_with_chain_in_cert_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    leaf, inter, root = chain3()
    fullchain = write_pem(tmp_path / "device.pem", leaf.cert, inter.cert)
    roots = write_pem(tmp_path / "roots.pem", root.cert)
    assert main(["pki", "verify", str(fullchain), "--roots", str(roots), *AT]) == 0
    assert capsys.readouterr().out.startswith("OK: ")


def test_cli_verify_failure_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    leaf, inter, root = chain3()
    device = write_pem(tmp_path / "device.pem", leaf.cert)
    roots = write_pem(tmp_path / "roots.pem", root.cert)
    assert main(["pki", "verify", str(device), "--roots", str(roots), "--json", *AT]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False
    assert (report["code"], report["alert"], report["openssl_code"]) == (
        "unknown-ca",
        "unknown_ca",
        20,
    )
    assert "--untrusted" in report["hint"]
    untrusted = write_pem(tmp_path / "int.pem", inter.cert)
    args = ["pki", "verify", str(device), "--roots", str(roots), "--untrusted", str(untrusted)]
    assert main([*args, *AT]) == 0
    capsys.readouterr()
    later = (T0 + dt.timedelta(days=400)).isoformat()
    assert main([*args, "--at", later]) == 1
    out = capsys.readouterr().out
    assert "FAILED [expired]" in out
    assert "certificate_expired" in out


def test_cli_verify_crl(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    leaf, inter, root = chain3()
    device = write_pem(tmp_path / "device.pem", leaf.cert, inter.cert)
    roots = write_pem(tmp_path / "roots.pem", root.cert)
    pem_crls = tmp_path / "crls.pem"
    pem_crls.write_bytes(
        revoke(inter, [leaf.cert.serial_number]).public_bytes(serialization.Encoding.PEM)
        + revoke(root, []).public_bytes(serialization.Encoding.PEM)
    )
    args = ["pki", "verify", str(device), "--roots", str(roots), *AT]
    assert main([*args, "--crl", str(pem_crls), "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["code"] == "revoked"
    der_crl = tmp_path / "int.crl"
    der_crl.write_bytes(revoke(inter, []).public_bytes(serialization.Encoding.DER))
    root_crl = tmp_path / "root.crl"
    root_crl.write_bytes(revoke(root, []).public_bytes(serialization.Encoding.DER))
    assert main([*args, "--crl", str(der_crl), "--crl", str(root_crl)]) == 0
    capsys.readouterr()
    ca_revoked = tmp_path / "root-revokes-int.crl"
    ca_revoked.write_bytes(
        revoke(root, [inter.cert.serial_number]).public_bytes(serialization.Encoding.DER)
    )
    with_ca_crl = [*args, "--crl", str(der_crl), "--crl", str(ca_revoked)]
    assert main(with_ca_crl) == 0
    assert main([*with_ca_crl, "--crl-check", "chain"]) == 1
    assert "FAILED [revoked]" in capsys.readouterr().out


def test_cli_verify_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    leaf, _, root = chain3()
    device = write_pem(tmp_path / "device.pem", leaf.cert)
    roots = write_pem(tmp_path / "roots.pem", root.cert)
    assert main(["pki", "verify", str(device), "--roots", str(tmp_path / "nope.pem")]) == 1
    assert "nope.pem: cannot read" in capsys.readouterr().err
    assert main(["pki", "verify", str(device), "--roots", str(roots), "--crl", str(roots)]) == 1
    assert "not a CRL" in capsys.readouterr().err
    bad_name = ["--purpose", "server", "--server-name", "not a name"]
    assert main(["pki", "verify", str(device), "--roots", str(roots), *bad_name]) == 2
    assert "not a valid DNS name" in capsys.readouterr().err


# --- certificates from the project's own authority ----------------------------


@pytest.mark.parametrize("key_type", ["ec256", "rsa2048"])
def test_authority_chain_lints_clean_and_verifies(key_type: str) -> None:
    root = CertificateAuthority.create_root("Fleet Root", key_type=key_type, now=T0)
    inter = root.issue_intermediate("Fleet Int", key_type=key_type, now=T0)
    device = inter.issue_device("dev-00001", key_type=key_type, now=T0)
    at = T0 + dt.timedelta(hours=1)
    assert lint_chain([device.cert, inter.cert, root.cert], at=at) == []
    assert lint_chain([inter.cert, root.cert], profile="ca-set", at=at) == []
    result = verify_path(device.cert, roots=[root.cert], untrusted=[inter.cert], at=at)
    assert result.ok, result
    assert result.chain == (device.cert, inter.cert, root.cert)
