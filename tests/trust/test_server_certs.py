"""Server certificates in the store: uploads, keys at rest, deployments and SNI routes."""

from __future__ import annotations

import stat
from datetime import timedelta
from pathlib import Path

import pytest
from badcerts import pem as badcert_pem
from badcerts import with_bad_ip_san, with_version
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from trustpki import NOW, pem, root

from certs.authority import CertificateAuthority, IssuedCert
from edge.core.events import EventLog
from edge.trust.errors import ConflictError, NotFoundError, RefusedError, StoreError
from edge.trust.model import ServerSettings
from edge.trust.propagation import TrustService
from edge.trust.sqlite import SqliteTrustStore

CA = root("Server Root")


def server(*hosts: str, days: int = 90, ca: CertificateAuthority = CA) -> IssuedCert:
    """A server certificate for ``hosts``, valid from a day before ``NOW``."""
    return ca.issue_server(list(hosts), now=NOW - timedelta(days=1), days=days)


def fullchain(issued: IssuedCert) -> bytes:
    return issued.fullchain_pem


@pytest.fixture
def fleet(store: SqliteTrustStore) -> SqliteTrustStore:
    """The store with a set ``fleet`` (the server root as device CA, for simplicity)."""
    store.upload("fleet", CA.cert_pem)
    return store


def test_upload_stages_a_version_with_hostnames_from_the_sans(store: SqliteTrustStore) -> None:
    issued = server("Devices.Example.com", "*.edge.example.com")
    info = store.upload_server_cert("web", fullchain(issued), issued.key_pem())
    assert info.version == 1
    assert info.hostnames == ("devices.example.com", "*.edge.example.com")
    assert info.subject == "CN=Devices.Example.com"
    listed = store.get_server_cert("web")
    assert listed.deployment is None
    assert [v.version for v in listed.versions] == [1]
    # Staged, not deployed: handshakes do not see it.
    assert store.snapshot().route("devices.example.com") is None


def test_the_private_key_is_encrypted_at_rest_and_never_in_a_listing(
    store: SqliteTrustStore, store_path: Path
) -> None:
    issued = server("devices.example.com")
    key_pem = issued.key_pem()
    store.upload_server_cert("web", fullchain(issued), key_pem)
    store.deploy("web", ServerSettings(client_auth="none"))
    body = key_pem.split(b"\n")[1]
    assert body not in store_path.read_bytes()
    assert not any(body in p.read_bytes() for p in store_path.parent.glob("store.db-*"))
    key_file = Path(f"{store_path}.keys")
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    text = repr(store.server_certs()) + str(store.get_server_cert("web").to_dict(NOW))
    assert "PRIVATE" not in text
    assert body.decode() not in text
    deployed = store.snapshot().server_certs["web"]
    assert deployed.key_pem == key_pem
    assert "PRIVATE" not in repr(deployed)


def test_a_missing_key_file_is_an_error_naming_it(store_path: Path) -> None:
    issued = server("devices.example.com")
    with SqliteTrustStore(store_path, clock=lambda: NOW) as store:
        store.upload_server_cert("web", fullchain(issued), issued.key_pem())
        store.deploy("web", ServerSettings(client_auth="none"))
    Path(f"{store_path}.keys").unlink()
    with (
        SqliteTrustStore(store_path, clock=lambda: NOW) as store,
        pytest.raises(StoreError, match=r"store\.db\.keys is missing"),
    ):
        store.snapshot()


def test_a_wrong_key_is_refused_with_the_finding_and_nothing_is_stored(
    store: SqliteTrustStore,
) -> None:
    issued = server("devices.example.com")
    other = server("devices.example.com")
    with pytest.raises(RefusedError) as refused:
        store.upload_server_cert(
            "web", fullchain(issued), other.key_pem(), cert_source="web.pem", key_source="web.key"
        )
    (finding,) = refused.value.findings
    assert finding.code == "key-mismatch"
    assert finding.position == 1
    assert finding.subject == "CN=devices.example.com"
    assert "web.key is not the private key of certificate 1 (CN=devices.example.com)" in (
        finding.message
    )
    assert store.server_certs() == []


def test_a_certificate_cryptography_cannot_read_is_refused_naming_the_block(
    store: SqliteTrustStore,
) -> None:
    # Version 126: cryptography raises InvalidVersion, which is no ValueError.
    issued = server("devices.example.com")
    der = issued.cert.public_bytes(serialization.Encoding.DER)
    bad = badcert_pem(with_version(der, 126))
    with pytest.raises(RefusedError) as refused:
        store.upload_server_cert("web", bad, issued.key_pem(), cert_source="web.pem")
    assert refused.value.message == (
        "upload refused: web.pem: PEM block 1 is not a valid certificate: "
        "126 is not a valid X509 version"
    )
    assert refused.value.findings[0].code == "format-pem-certificate"
    assert store.server_certs() == []


def test_extensions_cryptography_cannot_parse_are_refused_not_an_error(
    store: SqliteTrustStore,
) -> None:
    # An IP address SAN of 5 bytes: cryptography raises ValueError reading it.
    cert, key = with_bad_ip_san(
        CA, "devices.example.com", start=NOW - timedelta(days=1), end=NOW + timedelta(days=30)
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    with pytest.raises(RefusedError) as refused:
        store.upload_server_cert("web", cert_pem, key_pem, cert_source="web.pem")
    (finding,) = [f for f in refused.value.findings if f.code == "bad-extensions"]
    assert finding.position == 1
    assert "web.pem: certificate 1 (CN=devices.example.com) has extensions that cannot" in (
        finding.message
    )
    assert store.server_certs() == []


def test_an_encrypted_key_needs_its_passphrase(store: SqliteTrustStore) -> None:
    issued = server("devices.example.com")
    locked = issued.key_pem(b"s3cret")
    with pytest.raises(RefusedError) as missing:
        store.upload_server_cert("web", fullchain(issued), locked, key_source="web.key")
    assert missing.value.findings[0].code == "bad-key"
    assert "encrypted and no passphrase" in missing.value.findings[0].message
    with pytest.raises(RefusedError) as wrong:
        store.upload_server_cert("web", fullchain(issued), locked, passphrase=b"nope")
    assert "wrong passphrase" in wrong.value.findings[0].message
    info = store.upload_server_cert("web", fullchain(issued), locked, passphrase=b"s3cret")
    assert info.version == 1


def test_the_chain_after_the_leaf_gets_the_linters_findings(store: SqliteTrustStore) -> None:
    inter = CA.issue_intermediate("Server Intermediate", now=NOW - timedelta(days=1))
    issued = inter.issue_server(["devices.example.com"], now=NOW - timedelta(days=1))
    # The intermediate placed before the leaf: the seed's first condition fails.
    swapped = pem(*issued.chain) + issued.cert_pem
    with pytest.raises(RefusedError) as refused:
        store.upload_server_cert("web", swapped, issued.key_pem(), cert_source="web.pem")
    codes = {f.code for f in refused.value.findings}
    assert "order" in codes or "issuer-mismatch" in codes, refused.value.findings
    assert all(f.message.startswith("web.pem: ") for f in refused.value.findings)
    # In order (leaf, intermediate) it is accepted, without the root.
    assert store.upload_server_cert("web", issued.fullchain_pem, issued.key_pem()).version == 1


def test_a_certificate_without_server_auth_or_hostnames_is_refused(
    store: SqliteTrustStore,
) -> None:
    device = CA.issue_device("dev-1", now=NOW - timedelta(days=1))
    with pytest.raises(RefusedError) as refused:
        store.upload_server_cert("dev", device.fullchain_pem, device.key_pem())
    assert [f.code for f in refused.value.findings] == ["no-server-auth"]
    no_san = CA.issue_server([], common_name="devices.example.com", now=NOW - timedelta(days=1))
    with pytest.raises(RefusedError) as nameless:
        store.upload_server_cert("web", no_san.fullchain_pem, no_san.key_pem())
    assert [f.code for f in nameless.value.findings] == ["no-hostnames"]


def test_deploy_refuses_an_unknown_set_or_setting(fleet: SqliteTrustStore) -> None:
    issued = server("devices.example.com")
    fleet.upload_server_cert("web", fullchain(issued), issued.key_pem())
    generation = fleet.generation()
    with pytest.raises(NotFoundError, match="certificate set 'nope'"):
        fleet.deploy("web", {"set": "nope"})
    with pytest.raises(RefusedError) as refused:
        fleet.deploy("web", {"min_tls": "1.1", "colour": "red"})
    messages = [f.message for f in refused.value.findings]
    assert any("unknown deployment setting 'colour'" in m for m in messages)
    with pytest.raises(RefusedError, match="settings refused") as bad_value:
        fleet.deploy("web", {"min_tls": "1.1"})
    assert "min_tls '1.1'" in bad_value.value.findings[0].message
    with pytest.raises(NotFoundError):
        fleet.deploy("absent", {})
    assert fleet.generation() == generation
    assert fleet.get_server_cert("web").deployment is None


def test_deploy_changes_only_the_named_settings_and_rollback_goes_back(
    fleet: SqliteTrustStore,
) -> None:
    first = server("devices.example.com")
    fleet.upload_server_cert("web", fullchain(first), first.key_pem())
    one = fleet.deploy("web", {"set": "fleet", "min_tls": "1.3", "send_ca_names": False})
    second = server("devices.example.com")
    fleet.upload_server_cert("web", fullchain(second), second.key_pem())
    two = fleet.deploy("web")
    assert two.version == 2
    assert two.settings == one.settings
    assert fleet.snapshot().server_certs["web"].version == 2
    back = fleet.rollback_server_cert("web")
    assert back is not None
    assert back.id == one.id
    assert fleet.snapshot().server_certs["web"].version == 1
    # Deployment one had no earlier deployment: rolling it back undeploys.
    assert fleet.rollback_server_cert("web") is None
    assert "web" not in fleet.snapshot().server_certs
    with pytest.raises(ConflictError, match="not deployed"):
        fleet.rollback_server_cert("web")


def test_routes_exact_before_wildcard_certificate_over_binding_then_default(
    fleet: SqliteTrustStore,
) -> None:
    fleet.upload("legacy", root("Legacy Root").cert_pem)
    fleet.bind("legacy", "old.example.com")
    fleet.bind("legacy", "api.example.com")
    wild = server("*.example.com")
    exact = server("api.example.com")
    fallback = server("fallback.example.net")
    for name, issued in (("wild", wild), ("exact", exact), ("fallback", fallback)):
        fleet.upload_server_cert(name, fullchain(issued), issued.key_pem())
    fleet.deploy("wild", {"set": "fleet"})
    fleet.deploy("exact", {})  # no set named: the hostname's binding (legacy) verifies
    snap = fleet.snapshot()
    api = snap.route("API.example.com.")
    assert api is not None
    assert api.server is not None
    assert api.active is not None
    assert (api.server.name, api.active.name) == ("exact", "legacy")
    other = snap.route("any.example.com")
    assert other is not None
    assert other.server is not None
    assert other.active is not None
    assert (other.server.name, other.active.name) == ("wild", "fleet")
    # A bound name under the wildcard gets the certificate covering it (and, since
    # the wildcard's deployment names a set, that set).
    old = snap.route("old.example.com")
    assert old is not None
    assert old.server is not None
    assert old.server.name == "wild"
    assert snap.route("deep.any.example.com") is None
    assert snap.route(None) is None
    assert "matches no server certificate" in snap.explain_unrouted("deep.any.example.com")
    fleet.deploy("fallback", {"set": "fleet"}, default=True)
    snap = fleet.snapshot()
    for sni in ("deep.any.example.com", None, "unknown.test"):
        found = snap.route(sni)
        assert found is not None
        assert found.server is not None
        assert found.server.name == "fallback"


def test_a_binding_without_a_certificate_keeps_the_edges_own(fleet: SqliteTrustStore) -> None:
    fleet.bind("fleet", "*")
    issued = server("devices.example.com")
    fleet.upload_server_cert("web", fullchain(issued), issued.key_pem())
    fleet.deploy("web", {})
    snap = fleet.snapshot()
    legacy = snap.route("other.example.org")
    assert legacy is not None
    assert legacy.server is None
    assert legacy.active is snap.sets["fleet"]
    web = snap.route("devices.example.com")
    # No set named in the deployment: the default binding's set verifies devices.
    assert web is not None
    assert web.active is snap.sets["fleet"]


def test_routes_without_client_auth_or_without_an_active_set(fleet: SqliteTrustStore) -> None:
    fleet.upload("later", root("Later Root").cert_pem, activate=False)
    open_cert = server("open.example.com")
    strict = server("strict.example.com")
    fleet.upload_server_cert("open", fullchain(open_cert), open_cert.key_pem())
    fleet.upload_server_cert("strict", fullchain(strict), strict.key_pem())
    fleet.deploy("open", {"client_auth": "none"})
    fleet.deploy("strict", {"set": "later"})
    snap = fleet.snapshot()
    opened = snap.route("open.example.com")
    assert opened is not None
    assert opened.active is None
    assert opened.error is None
    refused = snap.route("strict.example.com")
    assert refused is not None
    assert refused.error is not None
    assert "'later'" in refused.error
    assert "no active version" in refused.error


async def test_expiring_certificates_are_reported(store_path: Path) -> None:
    events = EventLog(log_events=False)
    store = SqliteTrustStore(store_path, clock=lambda: NOW)
    soon = server("soon.example.com", days=10)
    later = server("later.example.com", days=300)
    store.upload_server_cert("soon", fullchain(soon), soon.key_pem())
    store.upload_server_cert("later", fullchain(later), later.key_pem())
    service = TrustService(store, events=events, expiry_warn_days=30)
    async with service:
        await events.wait_for(lambda e: e["kind"] == "cert.expiring", timeout=10)
        reported = await service.check_expiry()
        assert [r["cert"] for r in reported] == ["soon"]
        listed = {c.name: c.to_dict(NOW, 30) for c in await service.server_certs()}
        assert listed["soon"]["expiring"] is True
        assert listed["later"]["expiring"] is False
        assert 8 < listed["soon"]["days_left"] < 10


def test_a_key_of_another_type_still_matches_its_certificate(store: SqliteTrustStore) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    issued = CA.issue_server(["p384.example.com"], key=key, now=NOW - timedelta(days=1))
    der = key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    info = store.upload_server_cert("p384", fullchain(issued), der)
    assert info.key_type.startswith("EC")


async def test_the_expiry_check_repeats_every_interval(store_path: Path) -> None:
    events = EventLog(log_events=False)
    store = SqliteTrustStore(store_path, clock=lambda: NOW)
    soon = server("soon.example.com", days=3)
    store.upload_server_cert("soon", fullchain(soon), soon.key_pem())
    # A day in production; a twentieth of a second here, to see it come back.
    async with TrustService(store, events=events, expiry_interval=0.05):
        first = await events.wait_for(lambda e: e["kind"] == "cert.expiring", timeout=10)
        again = await events.wait_for(
            lambda e: e["kind"] == "cert.expiring", since=first["id"], timeout=10
        )
    assert again["cert"] == "soon"
    assert again["deployed"] is False
