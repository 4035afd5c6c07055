"""The per-set ``disconnect_on_revoke`` option: stored, migrated, and planned (sans-I/O)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from trustpki import NOW, chain, crl_pem, pem, root

from edge.core.session import DeviceIdentity, PeerCertificate, SessionInfo
from edge.trust.model import TrustSnapshot
from edge.trust.revoke import plan_revocations
from edge.trust.sqlite import MIGRATIONS, SqliteTrustStore

pytestmark = pytest.mark.timeout(30)


def session(set_name: str, issuer: str, serial: int, name: str = "dev-1") -> SessionInfo:
    """A live session authenticated by ``set_name`` with a certificate (issuer, serial)."""
    cert = PeerCertificate(
        subject=f"CN={name}",
        issuer=issuer,
        serial=f"{serial:x}",
        sha256="00",
        not_before="",
        not_after="",
    )
    return SessionInfo(
        identity=DeviceIdentity(namespace=set_name, name=name),
        peer="127.0.0.1:1",
        certificate=cert,
        set_name=set_name,
        set_version=1,
    )


# --- the store ------------------------------------------------------------------------------


def test_the_option_is_off_by_default_and_set_in_one_change(store: SqliteTrustStore) -> None:
    store.upload("fleet", root().cert_pem)
    assert store.get_set("fleet").disconnect_on_revoke is False
    assert store.snapshot().sets["fleet"].disconnect_on_revoke is False
    before = store.generation()
    info = store.set_options("fleet", disconnect_on_revoke=True)
    assert info.disconnect_on_revoke is True
    assert info.to_dict()["disconnect_on_revoke"] is True
    assert store.generation() == before + 1  # propagated like any change
    assert store.snapshot().sets["fleet"].disconnect_on_revoke is True
    store.set_options("fleet", disconnect_on_revoke=True)
    assert store.generation() == before + 1  # no change, no new generation
    store.set_options("fleet", disconnect_on_revoke=False)
    assert store.snapshot().sets["fleet"].disconnect_on_revoke is False


def test_the_option_survives_reopening(store_path: Path) -> None:
    with SqliteTrustStore(store_path, clock=lambda: NOW) as first:
        first.upload("fleet", root().cert_pem)
        first.set_options("fleet", disconnect_on_revoke=True)
    with SqliteTrustStore(store_path, clock=lambda: NOW) as again:
        assert again.get_set("fleet").disconnect_on_revoke is True


def test_options_of_a_missing_set_are_refused(store: SqliteTrustStore) -> None:
    from edge.trust.errors import NotFoundError

    with pytest.raises(NotFoundError, match="ghost"):
        store.set_options("ghost", disconnect_on_revoke=True)


def test_a_store_from_before_the_option_opens_with_it_off(
    store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import edge.trust.sqlite as module

    ca = root()
    monkeypatch.setattr(module, "MIGRATIONS", MIGRATIONS[:2])  # the schema before the option
    with SqliteTrustStore(store_path, clock=lambda: NOW) as old:
        old.upload("fleet", ca.cert_pem)
    monkeypatch.setattr(module, "MIGRATIONS", MIGRATIONS)
    with SqliteTrustStore(store_path, clock=lambda: NOW) as migrated:
        assert migrated.get_set("fleet").disconnect_on_revoke is False
        assert migrated.snapshot().sets["fleet"].ca_certs == (ca.cert,)
        assert migrated.set_options("fleet", disconnect_on_revoke=True).disconnect_on_revoke
    db = sqlite3.connect(store_path)
    try:
        assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    finally:
        db.close()


# --- the plan -------------------------------------------------------------------------------


@pytest.fixture
def pki(store: SqliteTrustStore) -> tuple[SqliteTrustStore, object, TrustSnapshot]:
    """Set ``fleet`` (root + intermediate), option on, and the snapshot before any CRL."""
    cas = chain(2, prefix="Revoke")
    store.upload("fleet", pem(cas[1].cert, cas[0].cert))  # intermediate first
    store.set_options("fleet", disconnect_on_revoke=True)
    return store, cas[1], store.snapshot()


def test_a_new_crl_ends_the_sessions_it_revokes_and_only_those(
    pki: tuple[SqliteTrustStore, object, TrustSnapshot],
) -> None:
    store, ca, before = pki
    from certs.authority import CertificateAuthority

    assert isinstance(ca, CertificateAuthority)
    issuer = ca.cert.subject.rfc4514_string()
    store.add_crl("fleet", crl_pem(ca, 0x1234))
    after = store.snapshot()
    plan = plan_revocations(before, after)
    text = plan.reason_for(session("fleet", issuer, 0x1234))
    assert text == (
        f"certificate serial 1234 was revoked by the CRL of {issuer} (CRL number 1)"
        " in certificate set 'fleet'"
    )
    assert plan.reason_for(session("fleet", issuer, 0x9999)) is None  # not revoked
    assert plan.reason_for(session("fleet", "CN=Other CA", 0x1234)) is None  # other issuer
    assert plan.reason_for(session("other", issuer, 0x1234)) is None  # other set
    # The same CRL, already active: nothing new to end.
    assert not plan_revocations(after, after)


def test_with_the_option_off_a_new_crl_ends_nothing(
    pki: tuple[SqliteTrustStore, object, TrustSnapshot],
) -> None:
    store, ca, _ = pki
    from certs.authority import CertificateAuthority

    assert isinstance(ca, CertificateAuthority)
    store.set_options("fleet", disconnect_on_revoke=False)
    before = store.snapshot()
    store.add_crl("fleet", crl_pem(ca, 0x1234))
    plan = plan_revocations(before, store.snapshot())
    assert not plan
    assert plan.reason_for(session("fleet", ca.cert.subject.rfc4514_string(), 0x1234)) is None


def test_deleting_a_set_with_the_option_on_ends_its_sessions(store: SqliteTrustStore) -> None:
    store.upload("fleet", root("Fleet Root").cert_pem)
    store.upload("quiet", root("Quiet Root").cert_pem)
    store.set_options("fleet", disconnect_on_revoke=True)
    before = store.snapshot()
    store.delete("fleet")
    store.delete("quiet")  # option off: its sessions stay
    plan = plan_revocations(before, store.snapshot())
    assert plan.reason_for(session("fleet", "CN=Fleet Root", 7)) == (
        "certificate set 'fleet' was deleted"
    )
    assert plan.reason_for(session("quiet", "CN=Quiet Root", 7)) is None
