"""``edgesim pki``: the commands end to end, in process, with real files."""

from __future__ import annotations

import json
import stat
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from badcerts import with_bad_ip_san
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import CRLEntryExtensionOID

from certs.authority import CertificateAuthority
from certs.bundle import read_certificates
from certs.keys import read_private_key
from edge.cli import main

OpenSSL = Callable[..., subprocess.CompletedProcess[str]]
Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]) -> Run:
    """Run ``edgesim`` in process; return (status, stdout, stderr)."""

    def call(*argv: str | Path) -> tuple[int, str, str]:
        code = main([str(a) for a in argv])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return call


@pytest.fixture
def pki(tmp_path: Path, run: Run) -> Path:
    code, _, err = run("pki", "quickstart", "--out", tmp_path / "pki", "--devices", "1")
    assert code == 0, err
    return tmp_path / "pki"


def test_pki_alone_prints_help(run: Run) -> None:
    code, _, err = run("pki")
    assert code == 2
    assert "quickstart" in err


def test_quickstart_json(tmp_path: Path, run: Run) -> None:
    code, out, _ = run("pki", "quickstart", "--out", tmp_path, "--devices", "2", "--json")
    assert code == 0
    data = json.loads(out)
    assert data["device_count"] == 2
    assert Path(data["manifest"]).is_file()
    code, _, err = run("pki", "quickstart", "--out", tmp_path)
    assert code == 1
    assert "already holds a PKI" in err


def test_genkey_encrypted(tmp_path: Path, run: Run) -> None:
    pw = tmp_path / "pw"
    pw.write_text("pw1\n")
    key = tmp_path / "k.key"
    code, out, _ = run(
        "pki", "genkey", "--type", "ec384", "--out", key, "--passphrase-file", pw, "--json"
    )
    assert code == 0
    assert json.loads(out) == {"key": str(key), "type": "EC P-384", "encrypted": True}
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    read_private_key(key, b"pw1")


def test_issue_server_and_intermediate(tmp_path: Path, pki: Path, run: Run) -> None:
    ca = ["--ca-cert", pki / "root-ca.pem", "--ca-key", pki / "root-ca.key"]
    code, out, err = run(
        "pki",
        "issue",
        "intermediate",
        *ca,
        "--cn",
        "Sub CA",
        "--path-len",
        "1",
        "--out",
        tmp_path,
        "--json",
    )
    assert code == 0, err
    sub = read_certificates(json.loads(out)["cert"])
    bc = sub[0].extensions.get_extension_for_class(x509.BasicConstraints).value
    assert bc.path_length == 1
    ca2 = [
        "--ca-cert",
        tmp_path / "intermediate-ca.pem",
        "--ca-key",
        tmp_path / "intermediate-ca.key",
    ]
    code, out, err = run(
        "pki",
        "issue",
        "server",
        *ca2,
        "--san",
        "edge.test",
        "--san",
        "10.1.2.3",
        "--out",
        tmp_path,
        "--days",
        "30",
    )
    assert code == 0, err
    assert "issued CN=edge.test" in out
    chain = read_certificates(tmp_path / "server.pem")
    assert chain[1] == sub[0]
    san = chain[0].extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(v) for v in san.get_values_for_type(x509.IPAddress)] == ["10.1.2.3"]


def test_issue_devices_with_faults(tmp_path: Path, pki: Path, run: Run) -> None:
    ca = ["--ca-cert", pki / "intermediate-ca.pem", "--ca-key", pki / "intermediate-ca.key"]
    code, out, err = run(
        "pki",
        "issue",
        "device",
        *ca,
        "--count",
        "3",
        "--id-template",
        "bad-{i}",
        "--start",
        "5",
        "--no-client-auth",
        "--not-before",
        "2020-01-01T00:00:00Z",
        "--not-after",
        "2020-06-01T00:00:00Z",
        "--out",
        tmp_path / "d",
        "--json",
    )
    assert code == 0, err
    rows = [json.loads(x) for x in Path(json.loads(out)["manifest"]).read_text().splitlines()]
    assert [r["id"] for r in rows] == ["bad-5", "bad-6", "bad-7"]
    cert = read_certificates(tmp_path / "d" / "bad-6.pem")[0]
    assert cert.not_valid_after_utc.year == 2020
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert [o.dotted_string for o in eku] == ["1.3.6.1.5.5.7.3.1"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--id-template", "x"], "gives every device the same id"),
        (["--not-before", "2030-01-01", "--not-after", "2029-01-01"], "must be after"),
    ],
)
def test_issue_device_errors(
    pki: Path, tmp_path: Path, run: Run, argv: list[str], message: str
) -> None:
    ca = ["--ca-cert", pki / "intermediate-ca.pem", "--ca-key", pki / "intermediate-ca.key"]
    code, _, err = run("pki", "issue", "device", *ca, "--count", "2", *argv, "--out", tmp_path)
    assert code == 1
    assert message in err
    assert "Traceback" not in err


def test_bad_ca_key_and_time(pki: Path, tmp_path: Path, run: Run) -> None:
    ca = ["--ca-cert", pki / "intermediate-ca.pem", "--ca-key", pki / "root-ca.key"]
    code, _, err = run("pki", "issue", "device", *ca, "--out", tmp_path)
    assert code == 1
    assert "does not match" in err
    with pytest.raises(SystemExit) as exc:
        run("pki", "issue", "device", *ca, "--not-after", "yesterday", "--out", tmp_path)
    assert exc.value.code == 2


def test_encrypted_ca_key_from_env(
    pki: Path, tmp_path: Path, run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    from certs.keys import write_private_key

    enc = tmp_path / "enc.key"
    write_private_key(enc, read_private_key(pki / "intermediate-ca.key"), passphrase=b"envpw")
    ca = ["--ca-cert", pki / "intermediate-ca.pem", "--ca-key", enc]
    monkeypatch.delenv("EDGESIM_KEY_PASSPHRASE", raising=False)
    code, _, err = run("pki", "issue", "device", *ca, "--out", tmp_path / "a")
    assert code == 1
    assert "enc.key: private key is encrypted and no passphrase was given" in err
    monkeypatch.setenv("EDGESIM_KEY_PASSPHRASE", "wrong")
    code, _, err = run("pki", "issue", "device", *ca, "--out", tmp_path / "a")
    assert "enc.key: wrong passphrase" in err
    monkeypatch.setenv("EDGESIM_KEY_PASSPHRASE", "envpw")
    code, _, err = run("pki", "issue", "device", *ca, "--out", tmp_path / "a")
    assert code == 0, err


def test_convert_and_inspect(tmp_path: Path, pki: Path, run: Run) -> None:
    der = tmp_path / "root.der"
    code, _, err = run("pki", "convert", pki / "root-ca.pem", "--to", "der", "-o", der)
    assert code == 0, err
    code, out, _ = run("pki", "inspect", der, "--json")
    assert code == 0
    (item,) = json.loads(out)
    assert item["kind"] == "certificate"
    assert item["subject"] == "CN=edgesim Root CA"
    assert item["self_signed"] is True
    assert {e["name"] for e in item["extensions"]} >= {"basicConstraints", "keyUsage"}
    back = tmp_path / "root.pem"
    code, _, _ = run("pki", "convert", der, "--to", "pem", "-o", back)
    assert back.read_bytes() == (pki / "root-ca.pem").read_bytes()
    code, _, err = run("pki", "convert", pki / "server.pem", "--to", "der", "-o", tmp_path / "x")
    assert code == 1
    assert "holds 2 certificates but DER holds exactly one; use --to pem" in err
    code, out, _ = run("pki", "inspect", pki / "server.key")
    assert "EC P-256" in out
    junk = tmp_path / "junk.txt"
    junk.write_text("hello\n")
    code, out, _ = run("pki", "inspect", junk)
    assert code == 1
    assert "a text file without any PEM block" in out
    code, _, err = run("pki", "convert", pki / "server.key", "--to", "pem")
    assert code == 1
    assert "must not hold a private key" in err


def test_inspect_reports_extensions_that_cannot_be_parsed(tmp_path: Path, run: Run) -> None:
    ca = CertificateAuthority.create_root("Inspect Root")
    now = datetime.now(UTC)
    cert, _ = with_bad_ip_san(ca, "odd", start=now, end=now + timedelta(days=1))
    path = tmp_path / "odd.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    code, out, err = run("pki", "inspect", path, "--json")
    assert code == 0, err
    (item,) = json.loads(out)
    assert item["subject"] == "CN=odd"
    assert item["extensions"] == []
    assert "does not appear to be an IPv4 or IPv6 address" in item["extensions_error"]
    code, out, _ = run("pki", "lint", path)
    assert code == 1
    assert "[bad-extensions] certificate 1 (CN=odd) has extensions that cannot be parsed" in out


def test_inspect_lists_a_crl_entry_whose_reason_cannot_be_read(tmp_path: Path, run: Run) -> None:
    ca = CertificateAuthority.create_root("Inspect Root")
    now = datetime.now(UTC)
    odd_reason = x509.UnrecognizedExtension(CRLEntryExtensionOID.CRL_REASON, b"\x0a\x01\x63")
    entry = (
        x509.RevokedCertificateBuilder()
        .serial_number(0x42)
        .revocation_date(now)
        .add_extension(odd_reason, critical=False)
        .build()
    )
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.cert.subject)
        .last_update(now)
        .next_update(now + timedelta(days=1))
        .add_revoked_certificate(entry)
        .add_extension(x509.CRLNumber(5), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    path = tmp_path / "odd.crl"
    path.write_bytes(crl.public_bytes(serialization.Encoding.DER))
    code, out, err = run("pki", "inspect", path, "--json")
    assert code == 0, err
    (item,) = json.loads(out)
    assert item["crl_number"] == 5
    assert item["extensions_error"] == "a revoked entry: Unsupported reason code: 99"
    assert [(r["serial"], r["reason"]) for r in item["revoked"]] == [("42", None)]


# Files the atheris target `inspect` found crashing `pki inspect` (with a traceback).
DAMAGED = Path(__file__).parents[1] / "fuzz" / "corpus" / "inspect"


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("cert-key-invalid", "key: unusable (Invalid key)"),
        ("csr-key-invalid", "signature valid: False"),
        ("cert-subject-unparseable", "cannot parse a DER (binary) certificate: error parsing"),
        ("cert-name-bitstring-oid", "a name cannot be read: oid must be X500_UNIQUE_IDENTIFIER"),
        ("crl-issuer-unparseable", "malformed CRL: error parsing asn1 value"),
        ("crl-version-61", "malformed CRL: 61 is not a valid CRL version"),
        ("csr-name-bitstring-oid", "cannot parse a DER certificate signing request (CSR): oid"),
        ("csr-version-43", "(CSR): 43 is not a valid CSR version"),
    ],
)
def test_inspect_describes_or_refuses_damaged_files(run: Run, name: str, says: str) -> None:
    code, out, err = run("pki", "inspect", DAMAGED / name)
    if "unusable" in says or "signature valid" in says:
        assert code == 0, err
        assert says in out
    else:
        assert code == 1
        assert err.startswith(f"edgesim: error: {DAMAGED / name}: ")
        assert says in err


def test_revoke_and_crl(tmp_path: Path, pki: Path, run: Run) -> None:
    ca = ["--ca-cert", pki / "intermediate-ca.pem", "--ca-key", pki / "intermediate-ca.key"]
    crl = tmp_path / "ca.crl"
    code, out, err = run(
        "pki",
        "revoke",
        *ca,
        "--crl",
        crl,
        pki / "devices" / "dev-00000.pem",
        "--reason",
        "keyCompromise",
        "--json",
    )
    assert code == 0, err
    first = json.loads(out)
    assert first["crl_number"] == 1
    assert first["revoked"][0]["reason"] == "keyCompromise"
    code, out, err = run(
        "pki", "crl", *ca, "--revoked-serial", "ab:cd", "--out", crl, "--days", "3"
    )
    assert code == 0, err
    assert "number 2, 2 revoked" in out
    code, out, _ = run("pki", "inspect", crl, "--json")
    (item,) = json.loads(out)
    assert item["kind"] == "crl"
    assert [r["serial"] for r in item["revoked"]][1] == "abcd"
    code, _, err = run("pki", "crl", *ca, "--revoked-serial", "zz", "--out", crl)
    assert code == 1
    assert "invalid serial number 'zz'" in err
    root = ["--ca-cert", pki / "root-ca.pem", "--ca-key", pki / "root-ca.key"]
    code, _, err = run("pki", "crl", *root, "--out", crl)
    assert code == 1
    assert "not by this CA" in err


@pytest.mark.interop
@pytest.mark.timeout(60)
def test_convert_openssl_containers(tmp_path: Path, pki: Path, run: Run, openssl: OpenSSL) -> None:
    p12 = tmp_path / "server.p12"
    openssl(
        "pkcs12",
        "-export",
        "-in",
        pki / "server.pem",
        "-inkey",
        pki / "server.key",
        "-passout",
        "pass:p12",
        "-out",
        p12,
    )
    pw = tmp_path / "pw"
    pw.write_text("p12\n")
    out_pem = tmp_path / "from-p12.pem"
    code, _, err = run("pki", "convert", p12, "--to", "pem", "--passphrase-file", pw, "-o", out_pem)
    assert code == 0, err
    assert read_certificates(out_pem) == read_certificates(pki / "server.pem")
    code, _, err = run("pki", "convert", p12, "--to", "pem", "-o", out_pem)
    assert code == 1
    assert "needs a passphrase" in err
    p7 = tmp_path / "chain.p7b"
    openssl("crl2pkcs7", "-nocrl", "-certfile", pki / "ca-chain.pem", "-outform", "DER", "-out", p7)
    code, _, err = run("pki", "convert", p7, "--to", "pem", "-o", tmp_path / "chain.pem")
    assert code == 0, err
    assert read_certificates(tmp_path / "chain.pem") == read_certificates(pki / "ca-chain.pem")


class _FakeTty:
    """A stdin that claims to be a terminal (getpass itself is replaced)."""

    def isatty(self) -> bool:
        return True


def test_passphrase_prompt_on_a_terminal(
    pki: Path, tmp_path: Path, run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    from certs.keys import write_private_key

    enc = tmp_path / "enc.key"
    write_private_key(enc, read_private_key(pki / "intermediate-ca.key"), passphrase=b"typed")
    prompts: list[str] = []

    def fake_getpass(prompt: str) -> str:
        prompts.append(prompt)
        return "typed"

    monkeypatch.delenv("EDGESIM_KEY_PASSPHRASE", raising=False)
    monkeypatch.setattr("sys.stdin", _FakeTty())
    monkeypatch.setattr("getpass.getpass", fake_getpass)
    ca = ["--ca-cert", pki / "intermediate-ca.pem", "--ca-key", enc]
    code, _, err = run("pki", "issue", "device", *ca, "--out", tmp_path / "d")
    assert code == 0, err
    assert prompts == [f"Passphrase for {enc}: "]


def test_init_root_generates_key_from_default_bits(tmp_path: Path, run: Run) -> None:
    conf = tmp_path / "root.conf"
    conf.write_text(
        "[req]\ndefault_bits = 2048\nprompt = no\ndistinguished_name = dn\n"
        "x509_extensions = v3\n[dn]\nCN = Generated Root\n[v3]\nbasicConstraints = CA:true\n"
    )
    code, out, err = run("pki", "init-root", "--config", conf, "--out", tmp_path / "o", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["subject"] == "CN=Generated Root"
    assert data["extensions"] == ["basicConstraints", "subjectKeyIdentifier"]
    key = Path(data["key"])
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert "RSA" in type(read_private_key(key)).__name__


def test_init_root_config_error_names_line(tmp_path: Path, run: Run) -> None:
    conf = tmp_path / "bad.conf"
    conf.write_text(
        "[req]\nprompt = no\ndistinguished_name = dn\nx509_extensions = v3\n"
        "[dn]\nCN = x\n[v3]\nbasicConstraints = CA:sometimes\n"
    )
    code, _, err = run(
        "pki", "init-root", "--config", conf, "--key-type", "ec256", "--out", tmp_path
    )
    assert code == 1
    assert f"{conf}:8: basicConstraints: CA must be true or false" in err
