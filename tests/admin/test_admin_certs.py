"""The admin API's server certificates: upload, deploy, rollback, list, delete, problems."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from adminkit import Admin
from test_admin_api import call
from trustpki import NOW, root

from certs.authority import IssuedCert

pytestmark = pytest.mark.timeout(30)

CA = root("API Server Root")


def _server(*hosts: str, days: int = 90) -> IssuedCert:
    return CA.issue_server(list(hosts), now=NOW - timedelta(days=1), days=days)


def _upload_body(issued: IssuedCert, key: bytes | None = None, **extra: Any) -> str:
    body = {
        "certificate": issued.fullchain_pem.decode(),
        "key": (key if key is not None else issued.key_pem()).decode(),
        **extra,
    }
    return json.dumps(body)


async def test_upload_deploy_list_show_rollback_delete(admin: Admin) -> None:
    await call(admin, "POST", "/v1/sets?name=fleet", expect=201, data=CA.cert_pem)
    first = _server("devices.example.com", days=20)
    version = await call(admin, "POST", "/v1/certs/web", expect=201, data=_upload_body(first))
    assert version["version"] == 1
    assert version["hostnames"] == ["devices.example.com"]
    deployment = await call(
        admin,
        "POST",
        "/v1/certs/web/deploy?wait=true",
        expect=201,
        json={"settings": {"set": "fleet", "min_tls": "1.3"}},
    )
    assert deployment["state"] == "active"
    assert deployment["settings"]["set"] == "fleet"
    listed = await call(admin, "GET", "/v1/certs", expect=200)
    (cert,) = listed["certs"]
    assert cert["expiring"] is True  # 20 days, under the 30-day default
    assert listed["expiry_warn_days"] == 30
    second = _server("devices.example.com")
    await call(admin, "POST", "/v1/certs/web", expect=201, data=_upload_body(second))
    rotated = await call(admin, "POST", "/v1/certs/web/deploy?wait=true", expect=201)
    assert (rotated["version"], rotated["settings"]["min_tls"]) == (2, "1.3")
    shown = await call(admin, "GET", "/v1/certs/web", expect=200)
    assert shown["deployment"]["version"] == 2
    assert shown["expiring"] is False
    assert "PRIVATE" not in json.dumps(shown)
    status = await call(admin, "GET", "/v1/status", expect=200)
    assert [(c["name"], c["version"], c["state"]) for c in status["server_certs"]] == [
        ("web", 2, "active")
    ]
    back = await call(admin, "POST", "/v1/certs/web/rollback?wait=true", expect=200)
    assert back["deployment"]["version"] == 1
    assert back["deployment"]["state"] == "active"
    await call(admin, "DELETE", "/v1/certs/web", expect=204)
    await call(admin, "GET", "/v1/certs/web", expect=404)
    kinds = [e["kind"] for e in admin.events.query() if e["kind"].startswith("cert.")]
    assert kinds[:3] == ["cert.uploaded", "cert.deployed", "cert.uploaded"]
    assert kinds[-1] == "cert.deleted"


async def test_a_wrong_key_is_a_problem_with_the_finding(admin: Admin) -> None:
    issued, other = _server("devices.example.com"), _server("devices.example.com")
    body = await call(
        admin,
        "POST",
        "/v1/certs/web",
        expect=422,
        data=_upload_body(issued, other.key_pem(), key_filename="web.key"),
    )
    assert body["type"] == "urn:edgesim:problem:refused"
    (finding,) = body["findings"]
    assert finding["code"] == "key-mismatch"
    assert (finding["position"], finding["subject"]) == (1, "CN=devices.example.com")
    assert "web.key is not the private key" in finding["message"]
    assert (await call(admin, "GET", "/v1/certs", expect=200))["certs"] == []
    refused = [e for e in admin.events.query() if e["kind"] == "cert.refused"]
    assert refused[-1]["findings"][0]["code"] == "key-mismatch"


async def test_an_encrypted_key_with_its_passphrase(admin: Admin) -> None:
    issued = _server("devices.example.com")
    locked = issued.key_pem(b"pw")
    await call(admin, "POST", "/v1/certs/web", expect=422, data=_upload_body(issued, locked))
    body = _upload_body(issued, locked, passphrase="pw")
    assert (await call(admin, "POST", "/v1/certs/web", expect=201, data=body))["version"] == 1
    # The passphrase is not in any event.
    assert "pw" not in json.dumps([e for e in admin.events.query() if "cert" in e["kind"]])


@pytest.mark.parametrize(
    ("path", "body", "status", "detail"),
    [
        ("/v1/certs/web", {"certificate": "x"}, 400, "'key' must be a non-empty string"),
        ("/v1/certs/none/deploy", {}, 404, "no server certificate named 'none'"),
        ("/v1/certs/web/deploy", {"settings": []}, 400, "'settings' must be a JSON object"),
        ("/v1/certs/web/deploy", {"version": 0}, 400, "'version' must be an integer from 1 to"),
        ("/v1/certs/web/deploy", {"settings": {"set": "gone"}}, 404, "'gone'"),
        ("/v1/certs/web/deploy", {"settings": {"client_auth": "maybe"}}, 422, "refused"),
    ],
)
async def test_bad_requests_are_problems(
    admin: Admin, path: str, body: dict[str, Any], status: int, detail: str
) -> None:
    issued = _server("devices.example.com")
    await call(admin, "POST", "/v1/certs/web", expect=201, data=_upload_body(issued))
    problem = await call(admin, "POST", path, expect=status, json=body)
    assert detail in problem["detail"]
