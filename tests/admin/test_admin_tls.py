"""The admin API over TLS with a required admin client certificate (real handshakes)."""

from __future__ import annotations

import asyncio
import json
import ssl
from pathlib import Path

import aiohttp
import pytest
from adminkit import TOKEN

from certs.authority import CertificateAuthority, IssuedCert
from edge.cli import main
from edge.core.events import EventLog
from edge.http.admin import admin_ssl_context, make_admin_app, start_admin
from edge.trust.propagation import TrustService
from edge.trust.sqlite import SqliteTrustStore

pytestmark = pytest.mark.timeout(30)


def client_context(
    ca: CertificateAuthority, tmp_path: Path, cert: IssuedCert | None = None
) -> ssl.SSLContext:
    """A client context trusting ``ca``, presenting ``cert`` when given."""
    context = ssl.create_default_context(cadata=ca.cert_pem.decode())
    if cert is not None:
        (tmp_path / "client.pem").write_bytes(cert.cert_pem)
        (tmp_path / "client.key").write_bytes(cert.key_pem())
        context.load_cert_chain(tmp_path / "client.pem", tmp_path / "client.key")
    return context


async def test_admin_client_certificate_is_required(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Real TLS validates against the real clock: these certificates start now.
    ca = CertificateAuthority.create_root("Admin CA")
    server = ca.issue_server(["127.0.0.1"])
    (tmp_path / "server.pem").write_bytes(server.cert_pem)
    (tmp_path / "server.key").write_bytes(server.key_pem())
    events = EventLog(log_events=False)
    trust = TrustService(SqliteTrustStore(tmp_path / "store.db"), events=events)
    await trust.start()
    app = make_admin_app(trust, events, token=TOKEN, admin_ca_pem=ca.cert_pem)
    runner, port = await start_admin(
        app,
        "127.0.0.1",
        0,
        admin_ssl_context(tmp_path / "server.pem", tmp_path / "server.key", ca.cert_pem),
    )
    url = f"https://127.0.0.1:{port}/v1/sets"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    try:
        async with aiohttp.ClientSession() as http:
            admin_cert = ca.issue_device("admin-1")
            with_cert = client_context(ca, tmp_path, admin_cert)
            async with http.get(url, headers=auth, ssl=with_cert) as resp:
                assert resp.status == 200
                assert await resp.json() == {"sets": []}
            async with http.get(url, ssl=with_cert) as resp:
                assert resp.status == 401, "a certificate does not replace the token"
            stranger = CertificateAuthority.create_root("Stranger").issue_device("x")
            for context in (client_context(ca, tmp_path), client_context(ca, tmp_path, stranger)):
                with pytest.raises(aiohttp.ClientError):
                    async with http.get(url, headers=auth, ssl=context) as resp:
                        await resp.read()
        # The CLI through the same listener, with the admin client certificate.
        (tmp_path / "ca.pem").write_bytes(ca.cert_pem)
        base = ["trust", "list", "--admin", f"https://127.0.0.1:{port}", "--token", TOKEN]
        tls = ["--admin-cacert", str(tmp_path / "ca.pem")]
        client = ["--admin-cert", str(tmp_path / "client.pem"), "--admin-key"]
        client.append(str(tmp_path / "client.key"))
        (tmp_path / "client.pem").write_bytes(admin_cert.cert_pem)
        (tmp_path / "client.key").write_bytes(admin_cert.key_pem())
        assert await asyncio.to_thread(main, [*base, *tls, *client, "--json"]) == 0
        assert json.loads(capsys.readouterr().out) == {"sets": []}
        assert await asyncio.to_thread(main, [*base, *tls]) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"edgesim: error: TLS with the admin API at https://127.0.0.1:{port}")
        assert "--admin-cert/--admin-key if it requires an admin client certificate" in err
        assert await asyncio.to_thread(main, [*base, *tls, "--admin-cert", "x"]) == 2
        assert "together" in capsys.readouterr().err
    finally:
        await runner.cleanup()
        await trust.close()
