"""The admin API over a real loopback socket: auth, uploads, sets, bindings, CRLs, events."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from adminkit import TOKEN, Admin
from badcerts import pem as badcert_pem
from badcerts import with_version
from trustpki import NOW, chain, crl_pem, pem, root

from edge.core.events import EventLog
from edge.http.admin import ROUTES, load_or_create_token, make_admin_app
from edge.http.openapi import openapi_document

pytestmark = pytest.mark.timeout(30)


async def call(
    admin: Admin,
    method: str,
    path: str,
    *,
    expect: int,
    auth: bool = True,
    **kwargs: Any,
) -> Any:
    headers = dict(admin.auth) if auth else {}
    headers.update(kwargs.pop("headers", {}))
    async with admin.http.request(method, admin.url + path, headers=headers, **kwargs) as resp:
        body = await resp.read()
        assert resp.status == expect, body.decode(errors="replace")
        if resp.status >= 400:
            assert resp.content_type == "application/problem+json"
        if not body:
            return None
        return await resp.json(content_type=None)


# -- authentication ---------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "challenge"),
    [
        ({}, 'Bearer realm="edgesim-admin"'),
        ({"Authorization": "Bearer wrong"}, 'Bearer realm="edgesim-admin", error="invalid_token"'),
        (
            {"Authorization": f"Basic {TOKEN}"},
            'Bearer realm="edgesim-admin", error="invalid_token"',
        ),
        (
            {"Authorization": f"Bearer {TOKEN}x"},
            'Bearer realm="edgesim-admin", error="invalid_token"',
        ),
    ],
)
async def test_missing_or_wrong_token_is_401_and_changes_nothing(
    admin: Admin, headers: dict[str, str], challenge: str
) -> None:
    async with admin.http.post(
        admin.url + "/v1/sets?name=fleet", data=root().cert_pem, headers=headers
    ) as resp:
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"] == challenge
        assert resp.content_type == "application/problem+json"
        body = await resp.json(content_type=None)
        assert body["type"] == "urn:edgesim:problem:unauthorized"
        assert body["status"] == 401
    for path in ("/v1/sets", "/v1/status", "/v1/events"):
        async with admin.http.get(admin.url + path, headers=headers) as resp:
            assert resp.status == 401
    assert (await call(admin, "GET", "/v1/sets", expect=200))["sets"] == []
    assert admin.events.query(kind="trust.uploaded") == []
    denied = admin.events.query(kind="admin.denied")
    assert [(e["method"], e["path"], e["outcome"]) for e in denied] == [
        ("POST", "/v1/sets", "denied"),
        ("GET", "/v1/sets", "denied"),
        ("GET", "/v1/status", "denied"),
        ("GET", "/v1/events", "denied"),
    ]
    assert all(e["peer"] == "127.0.0.1" for e in denied)
    assert all(TOKEN not in str(e) for e in denied)


async def test_openapi_needs_no_token_and_describes_every_route(admin: Admin) -> None:
    doc = await call(admin, "GET", "/v1/openapi.json", expect=200, auth=False)
    assert doc["openapi"].startswith("3.1")
    for method, path, _ in ROUTES:
        assert path in doc["paths"], f"{path} is not described"
        assert method.lower() in doc["paths"][path], f"{method} {path} is not described"
    described = {
        (m.upper(), p)
        for p, item in doc["paths"].items()
        for m in item
        if m in ("get", "post", "put", "delete", "patch")
    }
    assert described == {(m, p) for m, p, _ in ROUTES}, "no stale paths in the document"
    assert doc == openapi_document()


def test_an_admin_api_without_credentials_is_refused(tmp_path: Path) -> None:
    from edge.trust.propagation import TrustService
    from edge.trust.sqlite import SqliteTrustStore

    store = SqliteTrustStore(tmp_path / "s.db")
    try:
        with pytest.raises(ValueError, match="needs a token or an admin CA"):
            make_admin_app(TrustService(store), EventLog(), token=None)
    finally:
        store.close()


def test_token_is_created_once_with_mode_0600(tmp_path: Path) -> None:
    store = tmp_path / "state" / "store.db"
    token, created = load_or_create_token(store)
    assert created
    assert len(token) >= 40
    path = Path(f"{store}.token")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_or_create_token(store) == (token, False)


# -- sets and versions ------------------------------------------------------


async def test_upload_raw_body_then_versions_activate_rollback(admin: Admin) -> None:
    first, second = root("First"), root("Second")
    async with admin.http.post(
        admin.url + "/v1/sets?name=fleet", data=first.cert_pem, headers=admin.auth
    ) as resp:
        assert resp.status == 201
        assert resp.headers["Location"] == "/v1/sets/fleet/versions/1"
        body = await resp.json()
        assert (body["version"], body["active"], body["certificate_count"]) == (1, True, 1)
    staged = await call(
        admin,
        "POST",
        "/v1/sets/fleet/versions?activate=false",
        expect=201,
        data=second.cert_pem,
    )
    assert (staged["version"], staged["active"], staged["state"]) == (2, False, "staged")
    await admin.trust.wait_active(timeout=5)
    versions = (await call(admin, "GET", "/v1/sets/fleet/versions", expect=200))["versions"]
    assert [(v["version"], v["state"]) for v in versions] == [(1, "active"), (2, "staged")]
    one = await call(admin, "GET", "/v1/sets/fleet/versions/2", expect=200)
    assert one["pem"] == second.cert_pem.decode()

    await call(admin, "POST", "/v1/sets/fleet/versions/2/activate", expect=200)
    assert (await admin.trust.wait_active(timeout=5)).sets["fleet"].version == 2
    rolled = await call(admin, "POST", "/v1/sets/fleet/rollback", expect=200)
    assert rolled["version"] == 1
    assert (await admin.trust.wait_active(timeout=5)).sets["fleet"].version == 1

    detail = await call(admin, "GET", "/v1/sets/fleet", expect=200)
    assert detail["active_version"] == 1
    assert detail["propagation"]["state"] == "active"
    assert [v["version"] for v in detail["versions"]] == [1, 2]


async def test_multipart_upload(admin: Admin) -> None:
    top, inter = chain(2)
    form = aiohttp.FormData()
    form.add_field("file", pem(inter.cert, top.cert), filename="chain.pem")
    body = await call(admin, "POST", "/v1/sets?name=fleet", expect=201, data=form)
    assert body["certificate_count"] == 2


async def test_multipart_with_two_files_is_a_bad_request(admin: Admin) -> None:
    form = aiohttp.FormData()
    form.add_field("a", root().cert_pem, filename="a.pem")
    form.add_field("b", root().cert_pem, filename="b.pem")
    body = await call(admin, "POST", "/v1/sets?name=fleet", expect=400, data=form)
    assert "exactly one file, this one holds 2" in body["detail"]


async def test_what_schemathesis_found_is_a_bad_request_not_a_server_error(
    admin: Admin,
) -> None:
    await call(admin, "POST", "/v1/sets?name=fleet", expect=201, data=root().cert_pem)
    # A version beyond SQLite's INTEGER made the store raise OverflowError (500).
    body = await call(
        admin, "POST", "/v1/sets/fleet/versions/16660361549837508608/activate", expect=400
    )
    assert "must be at most 9223372036854775807" in body["detail"]
    # A multipart part header aiohttp cannot parse raised out of the handler (500).
    raw = (
        b'--b\r\nContent-Disposition: form-data; name="\x07"\r\n\r\nx\r\n'
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.pem"\r\n\r\n'
        + root().cert_pem
        + b"\r\n--b--\r\n"
    )
    headers = {"Content-Type": "multipart/form-data; boundary=b"}
    body = await call(
        admin, "POST", "/v1/sets/fleet/versions", expect=400, data=raw, headers=headers
    )
    assert "the multipart body is malformed" in body["detail"]
    # A form field beside the file was silently ignored: invalid input accepted.
    form = aiohttp.FormData()
    form.add_field("note", "ignored?")
    form.add_field("file", root().cert_pem, filename="a.pem")
    body = await call(admin, "POST", "/v1/sets/fleet/versions", expect=400, data=form)
    assert "part 'note' is not a file" in body["detail"]
    # Query values outside their schema were taken as absent, or guessed at.
    for query, detail in (
        ("before=", "before=: expected an ISO-8601 time"),
        ("after=yesterday", "'after'='yesterday' is not an ISO-8601 time"),
        ("since=", "since='': expected an integer"),
    ):
        body = await call(admin, "GET", f"/v1/events?{query}", expect=400)
        assert detail in body["detail"], body
    body = await call(admin, "POST", "/v1/sets?name=x&activate=1", expect=400, data=b"")
    assert "activate='1': expected true or false" in body["detail"]
    after = await call(admin, "GET", "/v1/events?after=2000-01-01T00:00:00Z", expect=200)
    assert after["events"]
    body = await call(
        admin, "POST", "/v1/devices/disconnect", expect=400, json={"identity": None, "set": "a"}
    )
    assert "exactly one of 'identity'" in body["detail"]
    # 1.0 is the integer 1 in JSON Schema (and so in the OpenAPI description).
    check = {"certificate": root().cert_pem.decode(), "version": 1.0}
    await call(admin, "POST", "/v1/sets/fleet/check", expect=200, json=check)


async def test_refused_upload_is_a_problem_with_findings(admin: Admin) -> None:
    ca = root()
    device = ca.issue_device("device-1", now=NOW)
    body = await call(
        admin, "POST", "/v1/sets?name=fleet", expect=422, data=device.cert_pem + ca.cert_pem
    )
    assert body["type"] == "urn:edgesim:problem:refused"
    assert body["title"] == "Upload refused"
    finding = next(f for f in body["findings"] if f["code"] == "leaf-in-ca-set")
    assert (finding["position"], finding["subject"]) == (1, "CN=device-1")
    assert (await call(admin, "GET", "/v1/sets", expect=200))["sets"] == []


async def test_der_upload_is_refused_with_conversion_hint(admin: Admin) -> None:
    from cryptography.hazmat.primitives.serialization import Encoding

    body = await call(
        admin,
        "POST",
        "/v1/sets?name=fleet",
        expect=422,
        data=root().cert.public_bytes(Encoding.DER),
    )
    assert "edgesim pki convert" in body["findings"][0]["message"]


async def test_a_certificate_cryptography_cannot_read_is_refused_not_an_error(
    admin: Admin,
) -> None:
    # A version field of 126: cryptography raises InvalidVersion, no ValueError,
    # which once made this upload a 500 instead of a refusal naming the block.
    from cryptography.hazmat.primitives.serialization import Encoding

    data = badcert_pem(with_version(root().cert.public_bytes(Encoding.DER), 126))
    body = await call(admin, "POST", "/v1/sets?name=fleet", expect=422, data=root().cert_pem + data)
    assert body["type"] == "urn:edgesim:problem:refused"
    message = body["findings"][0]["message"]
    assert "PEM block 2 is not a valid certificate: 126 is not a valid X509 version" in message
    assert (await call(admin, "GET", "/v1/sets", expect=200))["sets"] == []
    await call(admin, "POST", "/v1/sets?name=fleet", expect=201, data=root().cert_pem)


async def test_set_limit_is_a_limit_problem(admin: Admin) -> None:
    for i in range(3):
        await call(admin, "POST", f"/v1/sets?name=s{i}", expect=201, data=root(f"R{i}").cert_pem)
    body = await call(admin, "POST", "/v1/sets?name=s3", expect=422, data=root("R3").cert_pem)
    assert body["type"] == "urn:edgesim:problem:limit"
    assert body["findings"][0]["code"] == "too-many-sets"


@pytest.mark.parametrize(
    ("method", "path", "status", "detail"),
    [
        ("GET", "/v1/sets/nope", 404, "no certificate set named 'nope'"),
        ("DELETE", "/v1/sets/nope", 404, "no certificate set named 'nope'"),
        ("POST", "/v1/sets/nope/versions/1/activate", 404, "no certificate set named 'nope'"),
        ("POST", "/v1/sets/nope/versions/x/activate", 400, "version='x': expected an integer"),
        ("GET", "/v1/sets/nope/versions/0", 400, "version='0': must be at least 1"),
        ("POST", "/v1/sets", 400, "query parameter 'name' (the certificate set) is required"),
        ("POST", "/v1/sets?name=a&activate=maybe", 400, "activate='maybe': expected true"),
        ("GET", "/v1/events?limit=0", 400, "limit='0': must be at least 1"),
        ("DELETE", "/v1/bindings/none.example", 404, "hostname 'none.example' is not bound"),
        ("GET", "/v1/no-such-thing", 404, "GET /v1/no-such-thing: Not Found"),
        ("PATCH", "/v1/sets", 405, "PATCH /v1/sets: Method Not Allowed"),
    ],
)
async def test_errors_are_problems(
    admin: Admin, method: str, path: str, status: int, detail: str
) -> None:
    body = await call(admin, method, path, expect=status, data=b"")
    assert detail in body["detail"]
    assert body["status"] == status


async def test_delete_set(admin: Admin) -> None:
    await call(admin, "POST", "/v1/sets?name=fleet", expect=201, data=root().cert_pem)
    await call(admin, "DELETE", "/v1/sets/fleet", expect=204)
    assert (await call(admin, "GET", "/v1/sets", expect=200))["sets"] == []


# -- bindings, status, CRLs, check, events ----------------------------------


async def test_bindings_and_status(admin: Admin) -> None:
    await call(admin, "POST", "/v1/sets?name=fleet", expect=201, data=root().cert_pem)
    bound = await call(
        admin, "PUT", "/v1/bindings/Devices.Example.com", expect=200, json={"set": "fleet"}
    )
    assert bound == {"host": "devices.example.com", "set": "fleet"}
    await call(admin, "PUT", "/v1/bindings/*", expect=200, json={"set": "fleet"})
    body = await call(admin, "PUT", "/v1/bindings/a.*.b", expect=409, json={"set": "fleet"})
    assert "wildcard" in body["detail"]
    body = await call(admin, "PUT", "/v1/bindings/x.example", expect=400, json=["fleet"])
    assert body["detail"] == "the body must be a JSON object"
    await admin.trust.wait_active(timeout=5)
    bindings = (await call(admin, "GET", "/v1/bindings", expect=200))["bindings"]
    assert bindings == [
        {"host": "*", "set": "fleet", "state": "active"},
        {"host": "devices.example.com", "set": "fleet", "state": "active"},
    ]
    status = await call(admin, "GET", "/v1/status", expect=200)
    assert status["state"] == "active"
    assert status["sets"][0]["name"] == "fleet"
    await call(admin, "DELETE", "/v1/bindings/*", expect=204)
    await admin.trust.wait_active(timeout=5)
    assert admin.trust.current().resolve(None) is None


async def test_crl_upload_and_list(admin: Admin) -> None:
    ca = root()
    await call(admin, "POST", "/v1/sets?name=fleet", expect=201, data=ca.cert_pem)
    crl = await call(admin, "POST", "/v1/sets/fleet/crls", expect=201, data=crl_pem(ca, 5, 6))
    assert crl["revoked_count"] == 2
    listed = await call(admin, "GET", "/v1/sets/fleet/crls", expect=200)
    assert [c["issuer"] for c in listed["crls"]] == ["CN=Test Root"]
    body = await call(
        admin, "POST", "/v1/sets/fleet/crls", expect=422, data=crl_pem(root("Other"), 1)
    )
    assert body["findings"][0]["code"] == "crl-issuer-unknown"


async def test_check_says_why(admin: Admin) -> None:
    top, inter = chain(2)
    await call(admin, "POST", "/v1/sets?name=fleet", expect=201, data=pem(inter.cert, top.cert))
    device = inter.issue_device("device-7", now=NOW)
    ok = await call(
        admin,
        "POST",
        "/v1/sets/fleet/check",
        expect=200,
        json={"certificate": device.cert_pem.decode(), "at": NOW.isoformat()},
    )
    assert (ok["ok"], ok["set"], ok["version"]) == (True, "fleet", 1)
    stranger = root("Stranger").issue_device("device-8", now=NOW)
    refused = await call(
        admin,
        "POST",
        "/v1/sets/fleet/check",
        expect=200,
        json={"certificate": stranger.cert_pem.decode(), "at": NOW.isoformat()},
    )
    assert (refused["ok"], refused["code"]) == (False, "unknown-ca")
    body = await call(admin, "POST", "/v1/sets/fleet/check", expect=400, json={"certificate": ""})
    assert "'certificate'" in body["detail"]
    body = await call(
        admin,
        "POST",
        "/v1/sets/fleet/check",
        expect=400,
        json={"certificate": device.cert_pem.decode(), "at": "yesterday"},
    )
    assert "'at'='yesterday' is not an ISO-8601 time" in body["detail"]


async def test_events_feed_filters(admin: Admin) -> None:
    await call(admin, "POST", "/v1/sets?name=fleet", expect=201, data=root().cert_pem)
    await call(admin, "POST", "/v1/sets?name=bad", expect=422, data=b"nope")
    refused = await call(admin, "GET", "/v1/events?outcome=refused", expect=200)
    assert [e["kind"] for e in refused["events"]] == ["trust.refused"]
    trust = await call(admin, "GET", "/v1/events?kind=trust.&limit=2", expect=200)
    assert len(trust["events"]) == 2
    since = trust["last_id"]
    assert (await call(admin, "GET", f"/v1/events?since={since}", expect=200))["events"] == []
    uploaded = await call(admin, "GET", "/v1/events?kind=trust.uploaded", expect=200)
    assert uploaded["events"][0]["set"] == "fleet"


async def test_a_bug_is_a_500_problem_not_a_traceback(
    admin: Admin, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken() -> None:
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(admin.trust.store, "list_sets", broken)
    body = await call(admin, "GET", "/v1/sets", expect=500)
    assert body["type"] == "urn:edgesim:problem:internal"
    assert "simulated bug" not in body["detail"]
    assert "simulated bug" in caplog.text


async def test_set_options_patch_validates_and_round_trips(admin: Admin) -> None:
    await call(admin, "POST", "/v1/sets?name=fleet", expect=201, data=root().cert_pem)
    got = await call(admin, "GET", "/v1/sets/fleet", expect=200)
    assert got["disconnect_on_revoke"] is False
    body = await call(
        admin, "PATCH", "/v1/sets/fleet/options", expect=200, json={"disconnect_on_revoke": True}
    )
    assert (body["name"], body["disconnect_on_revoke"]) == ("fleet", True)
    assert (await call(admin, "GET", "/v1/sets/fleet", expect=200))["disconnect_on_revoke"]
    bad = await call(
        admin, "PATCH", "/v1/sets/fleet/options", expect=400, json={"disconnect_on_revoke": "on"}
    )
    assert "disconnect_on_revoke" in bad["detail"]
    await call(
        admin, "PATCH", "/v1/sets/ghost/options", expect=404, json={"disconnect_on_revoke": True}
    )
    doc = openapi_document()
    assert "patch" in doc["paths"]["/v1/sets/{name}/options"]


def test_a_new_token_never_starts_with_a_dash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `--token T` would read such a token as an option (seen in a fleet test run).
    drawn = iter(["-looks-like-an-option", "plain-token"])
    monkeypatch.setattr("edge.http.admin.secrets.token_urlsafe", lambda n: next(drawn))
    token, created = load_or_create_token(tmp_path / "trust.db")
    assert (token, created) == ("plain-token", True)
