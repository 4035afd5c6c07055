"""Certificate login on the admin listener ([admin] client_ca): an admin client
certificate alone logs in, over real TLS; other certificates, cross-site requests and
plain-HTTP configurations are refused with a reason."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from consolekit import AdminEdge, start_admin_edge

from certs.authority import CertificateAuthority
from edge.config import EdgeConfigError, config_from_dict

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def admin_edge(tmp_path: Path) -> Iterator[AdminEdge]:
    edge = start_admin_edge(tmp_path)
    try:
        yield edge
    finally:
        edge.handle.stop()


async def _get(url: str, context: ssl.SSLContext, headers: dict[str, str] | None = None) -> Any:
    async with (
        aiohttp.ClientSession() as http,
        http.get(url, ssl=context, headers=headers or {}) as r,
    ):
        return r.status, await r.json(content_type=None)


async def test_an_admin_certificate_alone_logs_in(admin_edge: AdminEdge) -> None:
    admin = admin_edge.client(admin_edge.ca.issue_device("admin-1"), "admin")
    status, body = await _get(admin_edge.base + "/v1/whoami", admin)
    assert (status, body) == (200, {"admin": "certificate CN=admin-1"})
    status, body = await _get(admin_edge.base + "/v1/sets", admin)
    assert status == 200
    assert [s["name"] for s in body["sets"]] == ["default"]
    # Without a certificate the token still works, and nothing else does.
    anonymous = admin_edge.client(None)
    status, body = await _get(admin_edge.base + "/v1/whoami", anonymous)
    assert status == 401
    assert "admin client certificate" in body["detail"]
    auth = {"Authorization": f"Bearer {admin_edge.token}"}
    assert await _get(admin_edge.base + "/v1/whoami", anonymous, auth) == (200, {"admin": "token"})
    # A wrong token is wrong even next to a good certificate: the header is not ignored.
    status, _ = await _get(admin_edge.base + "/v1/whoami", admin, {"Authorization": "Bearer x"})
    assert status == 401


async def test_other_certificates_do_not_get_through_the_handshake(
    admin_edge: AdminEdge,
) -> None:
    # Same name, another CA; and the admin CA's own certificate for servers only.
    stranger = CertificateAuthority.create_root("Stranger").issue_device("admin-1")
    server_only = admin_edge.ca.issue_device("not-a-client", eku=("serverAuth",))
    for cert in (stranger, server_only):
        with pytest.raises(aiohttp.ClientError):
            await _get(admin_edge.base + "/v1/whoami", admin_edge.client(cert, "bad"))


async def test_cross_site_requests_cannot_use_the_certificate(admin_edge: AdminEdge) -> None:
    admin = admin_edge.client(admin_edge.ca.issue_device("admin-1"), "admin")
    body = {"topic": "devices/x/cmd", "payload": "reboot"}
    async with aiohttp.ClientSession() as http:
        for headers in (
            {"Origin": "https://evil.example"},
            {"Sec-Fetch-Site": "cross-site"},
            {"Sec-Fetch-Site": "same-site", "Origin": admin_edge.base},
        ):
            url = admin_edge.base + "/v1/publish"
            async with http.post(url, json=body, ssl=admin, headers=headers) as r:
                assert r.status == 403, headers
                problem = await r.json(content_type=None)
                assert "cannot use the admin client certificate" in problem["detail"]
        # The console itself: same origin.
        same = {"Sec-Fetch-Site": "same-origin", "Origin": admin_edge.base}
        async with http.post(
            admin_edge.base + "/v1/publish", json=body, ssl=admin, headers=same
        ) as r:
            assert r.status == 200
            assert (await r.json())["ok"] is True
    events = admin_edge.handle.server.events.query(kind="admin.denied")
    assert len(events) == 3
    assert all(e["path"] == "/v1/publish" for e in events)


async def test_required_client_certificates_refuse_the_handshake_without_one(
    tmp_path: Path,
) -> None:
    edge = start_admin_edge(tmp_path, client_cert="required")
    try:
        with pytest.raises(aiohttp.ClientError):
            await _get(edge.base + "/v1/whoami", edge.client(None))
        admin = edge.client(edge.ca.issue_device("admin-2"), "admin")
        assert await _get(edge.base + "/v1/whoami", admin) == (
            200,
            {"admin": "certificate CN=admin-2"},
        )
    finally:
        edge.handle.stop()


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"client_ca": "ca.pem"}, "client certificates need HTTPS: set cert and key as well"),
        ({"cert": "a.pem"}, "cert and key go together"),
        ({"client_cert": "sometimes"}, 'expected "optional" or "required"'),
        ({"client_ca": 1}, "client_ca: expected str"),
        ({"token": "x"}, "unknown key(s) token in [admin]"),
    ],
)
def test_bad_admin_tables_name_the_key(tmp_path: Path, table: dict[str, Any], message: str) -> None:
    with pytest.raises(EdgeConfigError) as caught:
        config_from_dict({"admin": table}, base=tmp_path, source="edge.toml")
    assert message in str(caught.value)
    assert "edge.toml" in str(caught.value)


def test_the_openapi_document_lists_whoami() -> None:
    from edge.http.openapi import openapi_document

    assert "/v1/whoami" in openapi_document()["paths"]
