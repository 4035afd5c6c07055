"""certs.lint: every condition with a failing and a passing case."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from certs.lint import CODES, Finding, describe_certificate, has_errors, lint_chain
from certs.verify import verify_path
from edge.cli import main

from .chainfactory import (
    T0,
    chain3,
    duplicate_extension,
    key,
    make_cert,
    resign_weak,
    unknown_curve,
)
from .seedconf import SEED_ROOT_CONF


def codes(findings: list[Finding]) -> list[str]:
    return [f.code for f in findings]


def only(findings: list[Finding], code: str) -> Finding:
    matching = [f for f in findings if f.code == code]
    assert len(matching) == 1, findings
    return matching[0]


def test_good_chain_has_no_findings() -> None:
    leaf, inter, root = chain3()
    assert lint_chain([leaf.cert, inter.cert, root.cert], at=T0) == []


def test_good_ca_set_has_no_findings() -> None:
    _, inter, root = chain3()
    other_root = make_cert("Other Root")
    certs = [inter.cert, root.cert, other_root.cert]
    assert lint_chain(certs, profile="ca-set", at=T0) == []


def test_empty_file_is_an_error() -> None:
    findings = lint_chain([], at=T0)
    finding = only(findings, "empty")
    assert finding.position is None
    assert finding.severity == "error"
    assert has_errors(findings)


def test_issuer_mismatch_names_both_certificates() -> None:
    leaf, _, _ = chain3()
    stranger = make_cert("Stranger CA")
    finding = only(lint_chain([leaf.cert, stranger.cert], at=T0), "issuer-mismatch")
    assert finding.position == 1
    assert finding.subject == leaf.cert.subject.rfc4514_string()
    assert "certificate 1 (CN=device-1,O=edgesim test)" in finding.message
    assert "CN=Stranger CA" in finding.message
    assert finding.hint


def test_order_says_which_position_holds_the_issuer() -> None:
    leaf, inter, root = chain3()
    findings = lint_chain([leaf.cert, root.cert, inter.cert], at=T0)
    assert "order" in codes(findings)
    first = next(f for f in findings if f.code == "order" and f.position == 1)
    assert "its issuer is certificate 3" in first.message
    assert "issuer-mismatch" not in codes(findings)


def test_reversed_chain_reports_order() -> None:
    leaf, inter, _ = chain3()
    findings = lint_chain([inter.cert, leaf.cert], at=T0)
    finding = next(f for f in findings if f.code == "order")
    assert finding.position == 2
    assert "last certificate, but its issuer is certificate 1" in finding.message


def test_bad_signature_same_name_other_key() -> None:
    root = make_cert("Test Root")
    impostor = make_cert("Test Root")  # same DN, different key
    inter = make_cert("Test Int", issuer=root)
    finding = only(lint_chain([inter.cert, impostor.cert], at=T0), "bad-signature")
    assert finding.position == 1
    assert "does not verify" in finding.message
    assert lint_chain([inter.cert, root.cert], at=T0) == []


@pytest.mark.parametrize("kind", ["rsa2048", "ec384", "ed25519"])
def test_signatures_of_every_key_type_verify(kind: str) -> None:
    root = make_cert("Root", key_kind=kind, fresh_key=False)
    leaf = make_cert("dev", issuer=root, ca=False)
    assert lint_chain([leaf.cert, root.cert], at=T0) == []
    forged = make_cert("dev", issuer=root, ca=False, signing_key=key(kind, fresh=True))
    assert "bad-signature" in codes(lint_chain([forged.cert, root.cert], at=T0))


def test_self_issued_root_with_bad_signature() -> None:
    root = make_cert("Test Root")
    broken = make_cert("Test Root", signing_key=key("ec256", fresh=True))
    leaf = make_cert("dev", issuer=root, ca=False)
    findings = lint_chain([leaf.cert, broken.cert], at=T0)
    assert any(f.code == "bad-signature" and f.position == 2 for f in findings)


@pytest.mark.parametrize("ca", [False, None])
def test_issuer_without_ca_true(ca: bool | None) -> None:
    root = make_cert("Test Root")
    inter = make_cert("Not A CA", issuer=root, ca=ca, key_usage="none")
    leaf = make_cert("dev", issuer=inter, ca=False)
    finding = only(lint_chain([leaf.cert, inter.cert, root.cert], at=T0), "not-ca")
    assert finding.position == 2
    assert "it issued certificate 1" in finding.message


def test_root_without_ca_true() -> None:
    root = make_cert("Bad Root", ca=None, key_usage="none")
    leaf = make_cert("dev", issuer=root, ca=False)
    finding = only(lint_chain([leaf.cert, root.cert], at=T0), "not-ca")
    assert finding.position == 2


def test_issuer_without_keycertsign() -> None:
    root = make_cert("Test Root")
    inter = make_cert("Int", issuer=root, key_usage="no-certsign")
    leaf = make_cert("dev", issuer=inter, ca=False)
    finding = only(lint_chain([leaf.cert, inter.cert, root.cert], at=T0), "no-keycertsign")
    assert finding.position == 2
    # A CA without any keyUsage extension is accepted (RFC 5280 allows it; OpenSSL too).
    inter_no_ku = make_cert("Int", issuer=root, key_usage="none")
    leaf2 = make_cert("dev", issuer=inter_no_ku, ca=False)
    assert lint_chain([leaf2.cert, inter_no_ku.cert, root.cert], at=T0) == []


def test_path_length_exceeded() -> None:
    root = make_cert("Root", path_length=0)
    inter = make_cert("Int", issuer=root)
    leaf = make_cert("dev", issuer=inter, ca=False)
    finding = only(lint_chain([leaf.cert, inter.cert, root.cert], at=T0), "path-length-exceeded")
    assert finding.position == 3
    assert "pathlen:0" in finding.message


def test_path_length_respected() -> None:
    root = make_cert("Root", path_length=1)
    inter = make_cert("Int", issuer=root, path_length=0)
    leaf = make_cert("dev", issuer=inter, ca=False)
    assert lint_chain([leaf.cert, inter.cert, root.cert], at=T0) == []


def test_path_length_in_ca_set_counts_the_lowest_ca() -> None:
    # In a CA set the devices hang below the lowest CA, so it counts as an intermediate.
    root = make_cert("Root", path_length=0)
    inter = make_cert("Int", issuer=root)
    findings = lint_chain([inter.cert, root.cert], profile="ca-set", at=T0)
    assert only(findings, "path-length-exceeded").position == 2


def test_expired_and_not_yet_valid() -> None:
    leaf, inter, root = chain3()
    certs = [leaf.cert, inter.cert, root.cert]
    later = T0 + dt.timedelta(days=400)
    expired = lint_chain(certs, at=later)
    assert codes(expired).count("expired") == 3
    assert "expired on" in expired[0].message
    earlier = T0 - dt.timedelta(days=2)
    assert codes(lint_chain(certs, at=earlier)).count("not-yet-valid") == 3
    assert lint_chain(certs, at=T0) == []


def test_naive_time_is_taken_as_utc() -> None:
    leaf, inter, root = chain3()
    assert lint_chain([leaf.cert, inter.cert, root.cert], at=T0.replace(tzinfo=None)) == []


@pytest.mark.parametrize("digest", ["sha1", "md5"])
def test_weak_signature_hash_is_an_error(digest: str) -> None:
    root = make_cert("Root", key_kind="rsa2048", fresh_key=False)
    leaf = resign_weak(make_cert("dev", issuer=root, ca=False), root.key, digest)
    finding = only(lint_chain([leaf.cert, root.cert], at=T0), "weak-signature-hash")
    assert finding.severity == "error"
    assert digest in finding.message


def test_allow_sha1_makes_it_a_warning_but_not_md5() -> None:
    root = make_cert("Root", key_kind="rsa2048", fresh_key=False)
    sha1 = resign_weak(make_cert("dev", issuer=root, ca=False), root.key, "sha1")
    findings = lint_chain([sha1.cert, root.cert], at=T0, allow_sha1=True)
    assert only(findings, "weak-signature-hash").severity == "warning"
    assert not has_errors(findings)
    md5 = resign_weak(make_cert("dev", issuer=root, ca=False), root.key, "md5")
    findings = lint_chain([md5.cert, root.cert], at=T0, allow_sha1=True)
    assert only(findings, "weak-signature-hash").severity == "error"


def test_weak_hash_on_root_self_signature_is_a_warning() -> None:
    root_sha256 = make_cert("Root", key_kind="rsa2048", fresh_key=False)
    root = resign_weak(root_sha256, root_sha256.key, "sha1")
    leaf = make_cert("dev", issuer=root_sha256, ca=False)
    findings = lint_chain([leaf.cert, root.cert], at=T0)
    assert only(findings, "weak-signature-hash").severity == "warning"
    assert not has_errors(findings)


def test_weak_rsa_key() -> None:
    root = make_cert("Root")
    leaf = make_cert("dev", issuer=root, ca=False, key_kind="rsa1024", fresh_key=False)
    finding = only(lint_chain([leaf.cert, root.cert], at=T0), "weak-rsa-key")
    assert "1024-bit" in finding.message
    strong = make_cert("dev", issuer=root, ca=False, key_kind="rsa2048", fresh_key=False)
    assert lint_chain([strong.cert, root.cert], at=T0) == []


def test_weak_ec_key() -> None:
    root = make_cert("Root")
    leaf = make_cert("dev", issuer=root, ca=False, key_kind="ec192", fresh_key=False)
    finding = only(lint_chain([leaf.cert, root.cert], at=T0), "weak-ec-key")
    assert "secp192r1" in finding.message


def test_duplicate() -> None:
    leaf, inter, root = chain3()
    findings = lint_chain([leaf.cert, inter.cert, root.cert, root.cert], at=T0)
    finding = only(findings, "duplicate")
    assert finding.position == 4
    assert "certificate 3" in finding.message


def test_leaf_in_ca_set() -> None:
    leaf, inter, root = chain3()
    findings = lint_chain([leaf.cert, inter.cert, root.cert], profile="ca-set", at=T0)
    assert only(findings, "leaf-in-ca-set").position == 1
    assert "leaf-in-ca-set" not in codes(lint_chain([leaf.cert, inter.cert, root.cert], at=T0))


def test_no_client_auth() -> None:
    leaf, inter, root = chain3(leaf_eku=[ExtendedKeyUsageOID.SERVER_AUTH])
    finding = only(lint_chain([leaf.cert, inter.cert, root.cert], at=T0), "no-client-auth")
    assert finding.position == 1
    assert "serverAuth" in finding.message


@pytest.mark.parametrize(
    "eku",
    [
        [ExtendedKeyUsageOID.CLIENT_AUTH],
        [ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE],
        [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
    ],
)
def test_client_auth_accepted(eku: list[x509.ObjectIdentifier]) -> None:
    leaf, inter, root = chain3(leaf_eku=eku)
    assert lint_chain([leaf.cert, inter.cert, root.cert], at=T0) == []


def test_leaf_without_eku_is_accepted() -> None:
    root = make_cert("Root")
    leaf = make_cert("dev", issuer=root, ca=False)
    assert lint_chain([leaf.cert, root.cert], at=T0) == []


def test_missing_root_is_a_warning_in_chain_profile() -> None:
    leaf, inter, _ = chain3()
    findings = lint_chain([leaf.cert, inter.cert], at=T0)
    finding = only(findings, "missing-root")
    assert finding.severity == "warning"
    assert finding.position == 2
    assert "trust store" in finding.hint
    assert not has_errors(findings)


def test_missing_root_is_an_error_in_ca_set_profile() -> None:
    _, inter, _ = chain3()
    finding = only(lint_chain([inter.cert], profile="ca-set", at=T0), "missing-root")
    assert finding.severity == "error"


def test_ca_set_root_first_is_an_order_error() -> None:
    _, inter, root = chain3()
    findings = lint_chain([root.cert, inter.cert], profile="ca-set", at=T0)
    finding = only(findings, "order")
    assert finding.position == 2
    assert "its issuer is certificate 1" in finding.message


def test_ca_set_with_two_hierarchies() -> None:
    _, inter_a, root_a = chain3()
    _, inter_b, root_b = chain3()
    certs = [inter_a.cert, root_a.cert, inter_b.cert, root_b.cert]
    assert lint_chain(certs, profile="ca-set", at=T0) == []


def test_root_followed_by_more_certificates_in_chain_profile() -> None:
    leaf, inter, root = chain3()
    other = make_cert("Other Root")
    findings = lint_chain([leaf.cert, inter.cert, root.cert, other.cert], at=T0)
    assert any(f.code == "order" and f.position == 3 for f in findings)


def test_too_many() -> None:
    leaf, inter, root = chain3()
    certs = [leaf.cert, inter.cert, root.cert]
    finding = only(lint_chain(certs, at=T0, max_certificates=2), "too-many")
    assert finding.position is None
    assert lint_chain(certs, at=T0, max_certificates=3) == []


def test_bad_arguments_are_value_errors() -> None:
    with pytest.raises(ValueError, match="unknown lint profile"):
        lint_chain([], profile="bogus", at=T0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_certificates"):
        lint_chain([], at=T0, max_certificates=0)


def test_every_finding_code_is_documented() -> None:
    leaf, inter, root = chain3()
    findings = lint_chain([leaf.cert, root.cert, inter.cert, inter.cert], at=T0)
    assert findings
    assert all(f.code in CODES for f in findings)


def test_finding_and_certificate_dicts() -> None:
    leaf, _, root = chain3()
    finding = lint_chain([leaf.cert, root.cert], at=T0)[0]
    assert finding.to_dict() == {
        "severity": finding.severity,
        "code": finding.code,
        "position": finding.position,
        "subject": finding.subject,
        "message": finding.message,
        "hint": finding.hint,
    }
    described = describe_certificate(leaf.cert, 1)
    assert described["position"] == 1
    assert described["subject"] == "CN=device-1,O=edgesim test"
    assert described["serial"] == format(leaf.cert.serial_number, "x")
    assert described["not_after"] == leaf.cert.not_valid_after_utc.isoformat()
    assert isinstance(described["sha256"], str)
    assert len(described["sha256"]) == 64


# --- edgesim pki lint ----------------------------------------------------------


def write(path: Path, *certs: x509.Certificate) -> Path:
    path.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs))
    return path


AT = ["--at", T0.isoformat()]


def test_cli_lint_good_chain_exits_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    leaf, inter, root = chain3()
    path = write(tmp_path / "chain.pem", leaf.cert, inter.cert, root.cert)
    assert main(["pki", "lint", str(path), *AT]) == 0
    out = capsys.readouterr().out
    assert "1. CN=device-1,O=edgesim test" in out
    assert "OK:" in out


def test_cli_lint_json_shape(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    leaf, inter, root = chain3()
    path = write(tmp_path / "chain.pem", leaf.cert, root.cert, inter.cert)
    assert main(["pki", "lint", str(path), "--json", *AT]) == 1
    report = json.loads(capsys.readouterr().out)
    assert set(report) == {"file", "ok", "certificates", "findings"}
    assert report["file"] == str(path)
    assert report["ok"] is False
    assert [c["position"] for c in report["certificates"]] == [1, 2, 3]
    assert set(report["certificates"][0]) == {
        "position",
        "subject",
        "issuer",
        "serial",
        "not_before",
        "not_after",
        "sha256",
    }
    assert {f["code"] for f in report["findings"]} == {"order"}
    assert set(report["findings"][0]) == {
        "severity",
        "code",
        "position",
        "subject",
        "message",
        "hint",
    }


def test_cli_lint_warnings_alone_exit_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    leaf, inter, _ = chain3()
    path = write(tmp_path / "no-root.pem", leaf.cert, inter.cert)
    assert main(["pki", "lint", str(path), *AT]) == 0
    assert "warning: [missing-root]" in capsys.readouterr().out
    assert main(["pki", "lint", str(path), "--profile", "ca-set", *AT]) == 1


def test_cli_lint_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_cert("Root", key_kind="rsa2048", fresh_key=False)
    sha1 = resign_weak(make_cert("dev", issuer=root, ca=False), root.key, "sha1")
    path = write(tmp_path / "sha1.pem", sha1.cert, root.cert)
    assert main(["pki", "lint", str(path), *AT]) == 1
    assert main(["pki", "lint", str(path), "--allow-sha1", *AT]) == 0
    assert main(["pki", "lint", str(path), "--allow-sha1", "--max", "1", *AT]) == 1
    later = (T0 + dt.timedelta(days=500)).isoformat()
    assert main(["pki", "lint", str(path), "--allow-sha1", "--at", later]) == 1
    assert "[expired]" in capsys.readouterr().out


def test_cli_lint_empty_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "empty.pem"
    path.write_bytes(b"\n")
    assert main(["pki", "lint", str(path), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["certificates"] == []
    assert [f["code"] for f in report["findings"]] == ["empty"]


def test_cli_lint_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["pki", "lint", str(tmp_path / "missing.pem")]) == 1
    assert "missing.pem: cannot read" in capsys.readouterr().err
    not_a_cert = tmp_path / "key.pem"
    not_a_cert.write_bytes(
        key("ec256").private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    assert main(["pki", "lint", str(not_a_cert)]) == 1
    err = capsys.readouterr().err
    assert "key.pem" in err
    assert "private key" in err
    with pytest.raises(SystemExit) as exc:
        main(["pki", "lint", str(not_a_cert), "--at", "yesterday"])
    assert exc.value.code == 2
    assert "not an ISO 8601 time" in capsys.readouterr().err


# --- the same verdicts from openssl verify ------------------------------------

OPENSSL = shutil.which("openssl")


def openssl_accepts(tmp_path: Path, chain: list[x509.Certificate]) -> bool:
    """``openssl verify`` of chain[0] with chain[1:-1] untrusted and chain[-1] as the root."""
    assert OPENSSL is not None
    args = [OPENSSL, "verify", "-attime", str(int(T0.timestamp()))]
    args += ["-CAfile", str(write(tmp_path / "root.pem", chain[-1]))]
    if len(chain) > 2:
        args += ["-untrusted", str(write(tmp_path / "untrusted.pem", *chain[1:-1]))]
    args.append(str(write(tmp_path / "leaf.pem", chain[0])))
    proc = subprocess.run(args, capture_output=True, text=True, timeout=30, check=False)
    return proc.returncode == 0


@pytest.mark.interop
@pytest.mark.timeout(60)
@pytest.mark.skipif(OPENSSL is None, reason="openssl is not installed")
def test_openssl_verify_agrees_with_lint_errors(tmp_path: Path) -> None:
    root = make_cert("Root")
    good_leaf, good_inter, good_root = chain3()
    not_ca = make_cert("Not CA", issuer=root, ca=False, key_usage="none")
    no_sign = make_cert("No certsign", issuer=root, key_usage="no-certsign")
    pl_root = make_cert("Root pl0", path_length=0)
    pl_inter = make_cert("Int", issuer=pl_root)
    expired_inter = make_cert("Old Int", issuer=root, not_after=T0 - dt.timedelta(days=1))
    impostor = make_cert("Root")  # same name as root, another key
    chains = {
        "good": [good_leaf.cert, good_inter.cert, good_root.cert],
        "not-ca": [make_cert("d", issuer=not_ca, ca=False).cert, not_ca.cert, root.cert],
        "no-keycertsign": [make_cert("d", issuer=no_sign, ca=False).cert, no_sign.cert, root.cert],
        "path-length-exceeded": [
            make_cert("d", issuer=pl_inter, ca=False).cert,
            pl_inter.cert,
            pl_root.cert,
        ],
        "expired": [
            make_cert("d", issuer=expired_inter, ca=False).cert,
            expired_inter.cert,
            root.cert,
        ],
        "bad-signature": [make_cert("d", issuer=root, ca=False).cert, impostor.cert],
    }
    for expected, chain in chains.items():
        findings = lint_chain(chain, at=T0)
        if expected == "good":
            assert findings == []
        else:
            assert expected in codes(findings), (expected, findings)
        assert openssl_accepts(tmp_path, chain) is (not has_errors(findings)), expected


@pytest.mark.interop
@pytest.mark.timeout(60)
@pytest.mark.skipif(OPENSSL is None, reason="openssl is not installed")
def test_root_made_as_the_seed_says_lints_clean_and_issues(tmp_path: Path) -> None:
    """The seed's openssl commands: a root without keyUsage, then a device from it."""
    assert OPENSSL is not None

    def openssl(*args: str) -> None:
        subprocess.run([OPENSSL, *args], cwd=tmp_path, capture_output=True, timeout=30, check=True)

    (tmp_path / "root.conf").write_text(SEED_ROOT_CONF)
    openssl("genrsa", "-out", "rootCA.key", "2048")
    openssl(
        "req", "-x509", "-config", "root.conf", "-new", "-nodes", "-key", "rootCA.key",
        "-sha256", "-days", "1024", "-out", "rootCA.crt",
    )  # fmt: skip
    openssl("genrsa", "-out", "device.key", "2048")
    openssl("req", "-new", "-key", "device.key", "-subj", "/CN=device-1", "-out", "device.csr")
    (tmp_path / "device.ext").write_text("extendedKeyUsage = clientAuth\n")
    openssl(
        "x509", "-req", "-in", "device.csr", "-CA", "rootCA.crt", "-CAkey", "rootCA.key",
        "-CAcreateserial", "-days", "365", "-sha256", "-extfile", "device.ext",
        "-out", "device.crt",
    )  # fmt: skip
    root = x509.load_pem_x509_certificate((tmp_path / "rootCA.crt").read_bytes())
    device = x509.load_pem_x509_certificate((tmp_path / "device.crt").read_bytes())
    at = device.not_valid_before_utc + dt.timedelta(hours=1)
    assert lint_chain([root], profile="ca-set", at=at) == []
    assert lint_chain([device, root], at=at) == []
    assert verify_path(device, roots=[root], at=at).ok


def test_unreadable_extensions_are_a_finding_not_a_crash() -> None:
    root = make_cert("Root", key_kind="rsa2048", fresh_key=False)
    broken = duplicate_extension(root)
    finding = only(lint_chain([broken.cert, root.cert], at=T0), "bad-extensions")
    assert finding.position == 1
    assert "Duplicate" in finding.message
    result = verify_path(broken.cert, roots=[root.cert], at=T0)
    assert result.code == "invalid"
    assert "cannot be parsed" in result.reason


def test_unknown_key_algorithm_is_a_finding_not_a_crash() -> None:
    root = make_cert("Root", key_kind="rsa2048", fresh_key=False)
    odd = unknown_curve(root)
    finding = only(lint_chain([odd.cert, root.cert], at=T0), "unsupported-key")
    assert "1.2.840.10045.3.1.99" in finding.message
    result = verify_path(odd.cert, roots=[root.cert], at=T0)
    assert result.code == "invalid"
    assert "public key that cannot be used" in result.reason
