"""``edgesim cert`` on a store file: every verb, refusals and exit codes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from certs.quickstart import QuickstartResult, quickstart
from edge.cli import main
from edge.trust.errors import StoreError
from edge.trust.sqlite import SqliteTrustStore

pytestmark = pytest.mark.timeout(60)


class Cli:
    """Runs ``edgesim cert VERB ... --store PATH`` and captures its output."""

    def __init__(self, store: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.store = store
        self.capsys = capsys

    def __call__(self, *argv: str, expect: int = 0, group: str = "cert") -> tuple[str, str]:
        code = main([group, *argv, "--store", str(self.store)])
        out, err = self.capsys.readouterr()
        assert code == expect, f"exit {code}\nstdout: {out}\nstderr: {err}"
        return out, err

    def json(self, *argv: str, expect: int = 0) -> Any:
        out, _ = self(*argv, "--json", expect=expect)
        return json.loads(out)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> QuickstartResult:
    return quickstart(tmp_path_factory.mktemp("cli-pki") / "pki", devices=0)


@pytest.fixture
def cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(tmp_path / "trust.db", capsys)


def _files(tmp_path: Path, pki: QuickstartResult, name: str, *hosts: str) -> tuple[str, str]:
    issued = pki.intermediate.issue_server(list(hosts))
    cert, key = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
    cert.write_bytes(issued.fullchain_pem)
    key.write_bytes(issued.key_pem(b"pw"))
    return str(cert), str(key)


def test_upload_deploy_list_show_status_rollback_delete(
    cli: Cli, tmp_path: Path, pki: QuickstartResult
) -> None:
    cli("upload", "fleet", str(pki.ca_chain), group="trust")
    cert, key = _files(tmp_path, pki, "web", "devices.example.com", "*.devices.example.com")
    passphrase = tmp_path / "pass.txt"
    passphrase.write_text("pw\n")
    out, _ = cli(
        "upload", "web", "--cert", cert, "--key", key, "--passphrase-file", str(passphrase)
    )
    assert out.startswith("web version 1: devices.example.com, *.devices.example.com (expires ")
    assert "staged; deploy it with 'edgesim cert deploy web'" in out
    out, _ = cli("deploy", "web", "--set", "fleet", "--min-tls", "1.3", "--no-ca-names")
    assert out == "web: deployment 1 of version 1 stored\n"
    listed = cli.json("list")
    (entry,) = listed["certs"]
    assert entry["deployment"]["settings"] == {
        "set": "fleet",
        "client_auth": "required",
        "min_tls": "1.3",
        "send_ca_names": False,
        "identity_rule": None,
    }
    out, _ = cli("list")
    assert out.splitlines()[1].split()[:5] == [
        "web",
        "devices.example.com,*.devices.example.com",
        "v1",
        "fleet",
        "stored",
    ]
    out, _ = cli("show", "web")
    assert "set fleet, client certificate required, TLS >= 1.3, CA names not sent" in out
    assert "PRIVATE" not in out
    issued, _ = cli("issue", "web", "--host", "devices.example.com", "--pki", str(pki.out))
    assert issued.startswith("web version 2: devices.example.com")
    out, _ = cli("deploy", "web", "--client-auth", "none")
    assert out == "web: deployment 2 of version 2 stored\n"
    status = cli.json("status")
    assert status["server_certs"][0]["settings"]["client_auth"] == "none"
    assert status["server_certs"][0]["settings"]["min_tls"] == "1.3"  # kept
    out, _ = cli("status", group="trust")
    assert "SERVER CERT" in out
    out, _ = cli("rollback", "web")
    assert out == "web: back to deployment 1 (version 1), stored\n"
    out, _ = cli("rollback", "web")
    assert out == "web: undeployed (it had no earlier deployment)\n"
    out, _ = cli("delete", "web")
    assert out == "deleted server certificate web\n"
    assert cli("list")[0] == "no server certificates\n"


def test_a_wrong_key_exits_1_with_the_finding(
    cli: Cli, tmp_path: Path, pki: QuickstartResult
) -> None:
    cert, _ = _files(tmp_path, pki, "web", "devices.example.com")
    out, err = cli("upload", "web", "--cert", cert, "--key", str(pki.intermediate_key), expect=1)
    assert out == ""
    assert f"{pki.intermediate_key} is not the private key of certificate 1" in err
    assert "hint: upload the key that was generated with this certificate's request" in err
    assert cli.json("list")["certs"] == []


def test_an_encrypted_key_without_a_passphrase_says_how_to_give_one(
    cli: Cli, tmp_path: Path, pki: QuickstartResult, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("EDGESIM_KEY_PASSPHRASE", raising=False)
    cert, key = _files(tmp_path, pki, "web", "devices.example.com")
    _, err = cli("upload", "web", "--cert", cert, "--key", key, expect=1)
    assert "private key is encrypted and no passphrase was given" in err


def test_deploy_errors_name_what_is_wrong(cli: Cli, tmp_path: Path, pki: QuickstartResult) -> None:
    _, err = cli("deploy", "nothing", expect=1)
    assert "no server certificate named 'nothing'" in err
    cert, key = _files(tmp_path, pki, "web", "devices.example.com")
    (tmp_path / "pass").write_text("pw")
    cli("upload", "web", "--cert", cert, "--key", key, "--passphrase-file", str(tmp_path / "pass"))
    _, err = cli("deploy", "web", "--set", "absent", expect=1)
    assert "certificate set 'absent', which does not exist" in err
    _, err = cli("deploy", "web", "--set", "x", "--binding-set", expect=2)
    assert "--set SET or --binding-set" in err
    with pytest.raises(SystemExit) as usage:
        main(["cert", "deploy", "web", "--min-tls", "1.1"])
    assert usage.value.code == 2
    _, err = cli("issue", "x", "--host", "a.example.com", expect=2)
    assert "give --pki DIR, or --ca-cert FILE and --ca-key FILE" in err


def test_the_key_file_is_0600_and_a_store_opened_with_another_cannot_decrypt(
    cli: Cli, tmp_path: Path, pki: QuickstartResult
) -> None:
    cli("issue", "web", "--host", "devices.example.com", "--pki", str(pki.out))
    cli("deploy", "web", "--client-auth", "none")
    key_file = Path(f"{cli.store}.keys")
    assert key_file.stat().st_mode & 0o777 == 0o600
    other = tmp_path / "other.keys"
    other.write_text("00" * 32 + "\n")
    with (
        SqliteTrustStore(cli.store, key_file=other) as store,
        pytest.raises(StoreError, match="does not decrypt with key file"),
    ):
        store.snapshot()


def test_help_lists_the_verbs(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["cert", "--help"])
    out = capsys.readouterr().out
    for verb in ("upload", "issue", "list", "show", "delete", "deploy", "rollback", "status"):
        assert verb in out
