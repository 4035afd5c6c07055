"""``edgesim trust --admin URL``: the same verbs through a running admin API."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path
from typing import Any

import pytest
from adminkit import TOKEN, Admin
from trustpki import NOW, crl_pem, root

from edge.cli import main

pytestmark = pytest.mark.timeout(60)


async def run(
    admin: Admin, capsys: pytest.CaptureFixture[str], *argv: str, expect: int = 0
) -> tuple[str, str]:
    # The CLI is synchronous: run it off the loop that serves the admin API.
    code = await asyncio.to_thread(main, ["trust", *argv, "--admin", admin.url])
    out, err = capsys.readouterr()
    assert code == expect, f"exit {code}\nstdout: {out}\nstderr: {err}"
    return out, err


async def run_json(
    admin: Admin, capsys: pytest.CaptureFixture[str], *argv: str, expect: int = 0
) -> Any:
    out, _ = await run(admin, capsys, *argv, "--json", expect=expect)
    return json.loads(out)


async def test_upload_bind_status_through_the_admin_api(
    admin: Admin, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    ca = root()
    path = tmp_path / "root.pem"
    path.write_bytes(ca.cert_pem)
    out, _ = await run(admin, capsys, "upload", "fleet", str(path), "--token", TOKEN)
    assert out.startswith("fleet version 1: 1 certificate(s), ")
    await run(admin, capsys, "bind", "fleet", "--default", "--token", TOKEN)
    await admin.trust.wait_active(timeout=5)
    status = await run_json(admin, capsys, "status", "--token", TOKEN)
    assert status["state"] == "active"
    assert status["bindings"] == [{"host": "*", "set": "fleet", "state": "active"}]
    out, _ = await run(admin, capsys, "show", "fleet", "--token", TOKEN)
    assert "propagation: active" in out
    crl = tmp_path / "c.crl"
    crl.write_bytes(crl_pem(ca, 9))
    out, _ = await run(admin, capsys, "crl", "fleet", str(crl), "--token", TOKEN)
    assert out == "CRL from CN=Test Root attached to fleet: 1 revoked\n"
    device = tmp_path / "d.pem"
    device.write_bytes(ca.issue_device("dev", now=NOW).cert_pem)
    result = await run_json(
        admin,
        capsys,
        "check",
        "fleet",
        str(device),
        "--at",
        NOW.isoformat(),
        "--token",
        TOKEN,
    )
    assert result["ok"] is True
    out, _ = await run(
        admin, capsys, "set-option", "fleet", "--disconnect-on-revoke", "on", "--token", TOKEN
    )
    assert out == "set fleet: disconnect on revoke on\n"
    await admin.trust.wait_active(timeout=5)
    out, _ = await run(admin, capsys, "show", "fleet", "--token", TOKEN)
    assert "disconnect on revoke: on\n" in out
    status = await run_json(admin, capsys, "status", "--token", TOKEN)
    assert [s["disconnect_on_revoke"] for s in status["sets"]] == [True]
    await run(admin, capsys, "unbind", "--default", "--token", TOKEN)
    await run(admin, capsys, "delete", "fleet", "--token", TOKEN)
    assert (await run_json(admin, capsys, "list", "--token", TOKEN))["sets"] == []


async def test_token_from_the_environment(
    admin: Admin, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGESIM_ADMIN_TOKEN", TOKEN)
    assert (await run_json(admin, capsys, "list"))["sets"] == []


async def test_wrong_token_says_how_to_fix_it(
    admin: Admin, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "root.pem"
    path.write_bytes(root().cert_pem)
    _, err = await run(admin, capsys, "upload", "fleet", str(path), "--token", "wrong", expect=1)
    assert err == (
        "edgesim: error: the bearer token is wrong (pass --token or set EDGESIM_ADMIN_TOKEN)\n"
    )
    assert await admin.trust.list_sets() == []


async def test_refusal_through_the_api_prints_findings(
    admin: Admin, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    ca = root()
    path = tmp_path / "mixed.pem"
    path.write_bytes(ca.issue_device("device-1", now=NOW).cert_pem + ca.cert_pem)
    _, err = await run(admin, capsys, "upload", "fleet", str(path), "--token", TOKEN, expect=1)
    lines = err.splitlines()
    assert lines[0] == "edgesim: error: upload refused: 1 problem"
    assert lines[1].startswith("  certificate 1 (CN=device-1) is not a CA certificate")
    garbage = tmp_path / "garbage.txt"
    garbage.write_bytes(b"hello")
    _, err = await run(admin, capsys, "upload", "fleet", str(garbage), "--token", TOKEN, expect=1)
    assert f"{garbage}: expected PEM certificate(s), but the file is a text file" in err


async def test_unreachable_admin_api(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code = await asyncio.to_thread(
        main, ["trust", "list", "--admin", f"http://127.0.0.1:{port}", "--token", "t"]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert f"cannot reach the admin API at http://127.0.0.1:{port}" in err
    assert "use --store PATH" in err


async def test_cert_verbs_through_the_admin_api(
    admin: Admin, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from datetime import timedelta

    ca = root("Remote Server Root")
    (tmp_path / "root.pem").write_bytes(ca.cert_pem)
    await run(admin, capsys, "upload", "fleet", str(tmp_path / "root.pem"), "--token", TOKEN)
    issued = ca.issue_server(["devices.example.com"], now=NOW - timedelta(days=1))
    cert, key = tmp_path / "web.pem", tmp_path / "web.key"
    cert.write_bytes(issued.fullchain_pem)
    key.write_bytes(issued.key_pem())

    async def cert_cli(*argv: str, expect: int = 0) -> tuple[str, str]:
        code = await asyncio.to_thread(
            main, ["cert", *argv, "--admin", admin.url, "--token", TOKEN]
        )
        out, err = capsys.readouterr()
        assert code == expect, f"exit {code}\nstdout: {out}\nstderr: {err}"
        return out, err

    wrong = tmp_path / "wrong.key"
    wrong.write_bytes(ca.issue_server(["x.example.com"], now=NOW).key_pem())
    _, err = await cert_cli("upload", "web", "--cert", str(cert), "--key", str(wrong), expect=1)
    assert "wrong.key is not the private key of certificate 1" in err
    out, _ = await cert_cli("upload", "web", "--cert", str(cert), "--key", str(key))
    assert out.startswith("web version 1: devices.example.com")
    out, _ = await cert_cli("deploy", "web", "--set", "fleet", "--wait")
    assert out == "web: deployment 1 of version 1 active\n"
    out, _ = await cert_cli("status")
    assert out.splitlines()[0] == "state: active"
    assert out.splitlines()[2].split()[:4] == ["web", "1", "devices.example.com", "active"]
    out, _ = await cert_cli("rollback", "web", "--wait")
    assert out == "web: undeployed (it had no earlier deployment)\n"
    _, err = await cert_cli("deploy", "web", "--set", "absent", expect=1)
    assert "certificate set 'absent', which does not exist" in err
