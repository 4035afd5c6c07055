"""``edgesim trust`` on a store file: every verb, refusals and exit codes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from trustpki import NOW, chain, crl_pem, pem, root

from edge.cli import main


class Cli:
    """Runs ``edgesim trust VERB ... --store PATH`` and captures its output."""

    def __init__(self, store: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.store = store
        self.capsys = capsys

    def __call__(self, *argv: str, expect: int = 0) -> tuple[str, str]:
        code = main(["trust", *argv, "--store", str(self.store)])
        out, err = self.capsys.readouterr()
        assert code == expect, f"exit {code}\nstdout: {out}\nstderr: {err}"
        return out, err

    def json(self, *argv: str, expect: int = 0) -> Any:
        out, _ = self(*argv, "--json", expect=expect)
        return json.loads(out)


@pytest.fixture
def cli(store_path: Path, capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(store_path, capsys)


def write(tmp_path: Path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def test_upload_list_show_versions_activate_rollback(cli: Cli, tmp_path: Path) -> None:
    top, inter = chain(2)
    first = write(tmp_path, "chain.pem", pem(inter.cert, top.cert))
    second = write(tmp_path, "other.pem", root("Other").cert_pem)
    out, _ = cli("upload", "fleet", first)
    assert out == "fleet version 1: 2 certificate(s), active\n"
    out, _ = cli("upload", "fleet", second, "--no-activate")
    assert out == "fleet version 2: 1 certificate(s), staged\n"
    listed = cli.json("list")
    assert [(s["name"], s["active_version"], s["latest_version"]) for s in listed["sets"]] == [
        ("fleet", 1, 2)
    ]
    out, _ = cli("list")
    assert out.splitlines()[0].split() == ["NAME", "ACTIVE", "LATEST", "HOSTS", "CRLS"]
    out, _ = cli("show", "fleet")
    assert out.startswith("set fleet: active version 1, latest 2\nhosts: none\n")
    versions = cli.json("versions", "fleet")["versions"]
    assert [(v["version"], v["state"]) for v in versions] == [(1, "active"), (2, "staged")]
    out, _ = cli("activate", "fleet", "2")
    assert out == "fleet version 2: 1 certificate(s), active\n"
    out, _ = cli("rollback", "fleet")
    assert out == "fleet version 1: 2 certificate(s), active\n"


def test_refused_upload_prints_each_finding_and_exits_1(cli: Cli, tmp_path: Path) -> None:
    ca = root()
    device = ca.issue_device("device-1", now=NOW)
    bad = write(tmp_path, "bad.pem", device.cert_pem + ca.cert_pem)
    out, err = cli("upload", "fleet", bad, expect=1)
    assert out == ""
    lines = err.splitlines()
    assert lines[0] == "edgesim: error: upload refused: 1 problem"
    assert lines[1].startswith("  certificate 1 (CN=device-1) is not a CA certificate")
    assert " hint: remove device/server certificates" in lines[1]
    doc = cli.json("upload", "fleet", bad, expect=1)
    assert doc["ok"] is False
    assert doc["findings"][0]["code"] == "leaf-in-ca-set"
    assert cli.json("list")["sets"] == []


def test_der_upload_names_the_format_and_the_conversion(cli: Cli, tmp_path: Path) -> None:
    der = write(tmp_path, "root.der", root().cert.public_bytes(Encoding.DER))
    _, err = cli("upload", "fleet", der, expect=1)
    assert "upload refused: the file is a DER (binary) certificate, not PEM certificates" in err
    assert f"run: edgesim pki convert {der} --to pem" in err


def test_unreadable_file_is_an_error_without_traceback(cli: Cli, tmp_path: Path) -> None:
    _, err = cli("upload", "fleet", str(tmp_path / "missing.pem"), expect=1)
    assert err.startswith("edgesim: error: cannot read certificate file ")
    assert "No such file or directory" in err
    assert "Traceback" not in err


def test_bind_unbind_default_and_status(cli: Cli, tmp_path: Path) -> None:
    cli("upload", "fleet", write(tmp_path, "r.pem", root().cert_pem))
    out, _ = cli("bind", "fleet", "--host", "Devices.Example.com")
    assert out == "devices.example.com -> set fleet\n"
    out, _ = cli("bind", "fleet", "--default")
    assert out == "* -> set fleet\n"
    status = cli.json("status")
    assert status["bindings"] == [
        {"host": "*", "set": "fleet", "state": "stored"},
        {"host": "devices.example.com", "set": "fleet", "state": "stored"},
    ]
    out, _ = cli("status")
    assert "no edge contacted" in out
    out, _ = cli("unbind", "--default")
    assert out == "unbound *\n"
    _, err = cli("unbind", "--host", "devices.example.com", "--default", expect=2)
    assert "not both" in err
    _, err = cli("bind", "fleet", expect=2)
    assert "give --host HOST (or --default" in err
    _, err = cli("unbind", "--host", "nothing.example", expect=1)
    assert err == "edgesim: error: hostname 'nothing.example' is not bound\n"
    _, err = cli("bind", "fleet", "--host", "a.*.example", expect=1)
    assert "wildcard must be the whole leftmost label" in err


def test_crl_and_delete(cli: Cli, tmp_path: Path) -> None:
    ca = root()
    cli("upload", "fleet", write(tmp_path, "r.pem", ca.cert_pem))
    out, _ = cli("crl", "fleet", write(tmp_path, "c.crl", crl_pem(ca, 3, encoding="der")))
    assert out == "CRL from CN=Test Root attached to fleet: 1 revoked\n"
    _, err = cli("crl", "fleet", write(tmp_path, "x.crl", crl_pem(root("X"), 3)), expect=1)
    assert "the CRL's issuer CN=X is not a CA of the set's active version" in err
    out, _ = cli("delete", "fleet")
    assert out == "deleted set fleet\n"
    _, err = cli("show", "fleet", expect=1)
    assert err == "edgesim: error: no certificate set named 'fleet'\n"


def test_check_accepts_and_refuses_with_exit_codes(cli: Cli, tmp_path: Path) -> None:
    top, inter = chain(2)
    cli("upload", "fleet", write(tmp_path, "chain.pem", pem(inter.cert, top.cert)))
    device = inter.issue_device("device-1", now=NOW)
    leaf = write(tmp_path, "device.pem", device.cert_pem)
    at = "2026-06-01T12:00:00Z"
    out, _ = cli("check", "fleet", leaf, "--at", at)
    assert out == "accepted by set fleet version 1\n"
    result = cli.json("check", "fleet", leaf, "--at", "2040-01-01T00:00:00Z", expect=1)
    assert (result["ok"], result["code"], result["alert"]) == (
        False,
        "expired",
        "certificate_expired",
    )
    stranger = write(tmp_path, "s.pem", root("Stranger").issue_device("d", now=NOW).cert_pem)
    out, _ = cli("check", "fleet", stranger, "--at", at, expect=1)
    assert out.startswith("refused by set fleet version 1: ")
    assert "unknown-ca" in out
    _, err = cli("check", "fleet", leaf, "--at", "tomorrow", expect=2)
    assert "--at 'tomorrow' is not an ISO-8601 time" in err
    _, err = cli("check", "fleet", leaf, "--version", "7", expect=1)
    assert err == "edgesim: error: certificate set 'fleet' has no version 7\n"


def test_check_honours_the_set_crl(cli: Cli, tmp_path: Path) -> None:
    ca = root()
    cli("upload", "fleet", write(tmp_path, "r.pem", ca.cert_pem))
    device = ca.issue_device("device-2", now=NOW)
    leaf = write(tmp_path, "d.pem", device.cert_pem)
    at = "2026-06-01T12:00:00Z"
    cli("check", "fleet", leaf, "--at", at)
    cli("crl", "fleet", write(tmp_path, "c.crl", crl_pem(ca, device.cert.serial_number)))
    result = cli.json("check", "fleet", leaf, "--at", at, expect=1)
    assert result["code"] == "revoked"


def test_group_without_verb_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["trust"]) == 2
    assert "upload" in capsys.readouterr().err


def test_set_option_disconnect_on_revoke_is_off_by_default_and_shown(
    cli: Cli, tmp_path: Path
) -> None:
    cli("upload", "fleet", write(tmp_path, "root.pem", root().cert_pem))
    out, _ = cli("show", "fleet")
    assert "disconnect on revoke: off\n" in out
    assert cli.json("show", "fleet")["disconnect_on_revoke"] is False
    out, _ = cli("set-option", "fleet", "--disconnect-on-revoke", "on")
    assert out == "set fleet: disconnect on revoke on\n"
    out, _ = cli("show", "fleet")
    assert "disconnect on revoke: on\n" in out
    status = cli.json("status")
    assert [(s["name"], s["disconnect_on_revoke"]) for s in status["sets"]] == [("fleet", True)]
    out, _ = cli("status")
    assert ["SET", "VERSION", "STATE", "DISCONNECT", "ON", "REVOKE"] in [
        line.split() for line in out.splitlines()
    ]
    cli("set-option", "fleet", "--disconnect-on-revoke", "off")
    assert cli.json("show", "fleet")["disconnect_on_revoke"] is False
    _, err = cli("set-option", "ghost", "--disconnect-on-revoke", "on", expect=1)
    assert "ghost" in err
