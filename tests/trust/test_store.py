"""The SQLite store: versions, activation, rollback, bindings, CRLs, snapshots, schema."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from trustpki import NOW, chain, crl_pem, pem, root

from edge.trust.errors import ConflictError, NotFoundError, RefusedError, StoreError
from edge.trust.model import TrustSnapshot, normalize_host
from edge.trust.sqlite import MIGRATIONS, SqliteTrustStore


def test_first_upload_creates_and_activates(store: SqliteTrustStore) -> None:
    top, inter = chain(2)
    info = store.upload("fleet", pem(inter.cert, top.cert))
    assert (info.version, info.active, info.state, info.certificate_count) == (1, True, "active", 2)
    assert info.subjects == (
        inter.cert.subject.rfc4514_string(),
        top.cert.subject.rfc4514_string(),
    )
    assert info.created_at == "2026-06-01T12:00:00Z"
    got = store.get_set("fleet")
    assert (got.active_version, got.latest_version, got.hosts) == (1, 1, ())
    snap = store.snapshot()
    active = snap.sets["fleet"]
    assert active.version == 1
    assert active.ca_certs == (inter.cert, top.cert)
    assert active.ca_pem == pem(inter.cert, top.cert)
    assert (active.crls, active.crl_pem, active.allow_sha1) == ((), b"", False)


def test_staged_upload_does_not_change_the_active_version(store: SqliteTrustStore) -> None:
    first, second = root("First"), root("Second")
    store.upload("fleet", first.cert_pem)
    generation = store.generation()
    staged = store.upload("fleet", second.cert_pem, activate=False)
    assert (staged.version, staged.active, staged.state) == (2, False, "staged")
    assert store.generation() == generation, "staging affects no handshake"
    assert store.snapshot().sets["fleet"].version == 1
    assert store.get_set("fleet").latest_version == 2


def test_activate_and_rollback_are_one_call(store: SqliteTrustStore) -> None:
    store.upload("fleet", root("First").cert_pem)
    store.upload("fleet", root("Second").cert_pem, activate=False)
    assert store.activate("fleet", 2).active
    states = {v.version: v.state for v in store.versions("fleet")}
    assert states == {1: "inactive", 2: "active"}
    assert store.rollback("fleet").version == 1
    assert store.snapshot().sets["fleet"].version == 1
    # Rolling back again goes forward to what was active before the rollback.
    assert store.rollback("fleet").version == 2


def test_activating_the_active_version_changes_nothing(store: SqliteTrustStore) -> None:
    store.upload("fleet", root().cert_pem)
    generation = store.generation()
    store.activate("fleet", 1)
    assert store.generation() == generation


def test_versions_are_immutable(store: SqliteTrustStore) -> None:
    first = root("First")
    store.upload("fleet", first.cert_pem)
    store.upload("fleet", root("Second").cert_pem)
    store.activate("fleet", 1)
    number, data, _ = store.version_pem("fleet", 1)
    assert (number, data) == (1, first.cert_pem)


def test_rollback_without_history_is_a_conflict(store: SqliteTrustStore) -> None:
    store.upload("fleet", root().cert_pem)
    with pytest.raises(ConflictError, match="no previously active version"):
        store.rollback("fleet")


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda s: s.get_set("nope"), "no certificate set named 'nope'"),
        (lambda s: s.versions("nope"), "no certificate set named 'nope'"),
        (lambda s: s.activate("fleet", 9), "certificate set 'fleet' has no version 9"),
        (lambda s: s.activate("nope", 1), "no certificate set named 'nope'"),
        (lambda s: s.bind("nope", "a.example"), "no certificate set named 'nope'"),
        (lambda s: s.unbind("a.example"), "hostname 'a.example' is not bound"),
        (lambda s: s.delete("nope"), "no certificate set named 'nope'"),
        (lambda s: s.version_pem("staged"), "certificate set 'staged' has no active version"),
    ],
)
def test_missing_things_are_named(store: SqliteTrustStore, call: object, message: str) -> None:
    store.upload("fleet", root().cert_pem)
    store.upload("staged", root("Staged").cert_pem, activate=False)
    assert callable(call)
    with pytest.raises(NotFoundError) as info:
        call(store)
    assert str(info.value) == message


def test_bindings_and_resolution(store: SqliteTrustStore) -> None:
    store.upload("a", root("A").cert_pem)
    store.upload("b", root("B").cert_pem)
    store.upload("staged", root("S").cert_pem, activate=False)
    assert store.bind("a", "Devices.Example.COM.") == "devices.example.com"
    store.bind("b", "*.example.com")
    store.bind("staged", "staged.example.org")
    snap = store.snapshot()
    assert snap.bindings == {
        "devices.example.com": "a",
        "*.example.com": "b",
        "staged.example.org": "staged",
    }
    assert snap.resolve("devices.example.com") is snap.sets["a"]
    assert snap.resolve("DEVICES.example.com") is snap.sets["a"]
    assert snap.resolve("other.example.com") is snap.sets["b"]
    assert snap.resolve("deep.other.example.com") is None, "a wildcard covers one label"
    assert snap.resolve(None) is None
    assert "no default binding" in snap.explain_unbound(None)
    assert "'deep.other.example.com' is not bound" in snap.explain_unbound("deep.other.example.com")
    assert snap.resolve("staged.example.org") is None
    assert "'staged' (via binding 'staged.example.org') has no active version" in (
        snap.explain_unbound("staged.example.org")
    )
    store.bind("a", "*")
    snap = store.snapshot()
    assert snap.resolve(None) is snap.sets["a"]
    assert snap.resolve("unbound.test") is snap.sets["a"]
    store.unbind("*")
    assert "*" not in store.bindings()


def test_rebinding_a_host_moves_it(store: SqliteTrustStore) -> None:
    store.upload("a", root("A").cert_pem)
    store.upload("b", root("B").cert_pem)
    store.bind("a", "h.example")
    generation = store.generation()
    store.bind("a", "h.example")
    assert store.generation() == generation, "an unchanged binding is no change"
    store.bind("b", "h.example")
    assert store.bindings() == {"h.example": "b"}
    assert store.get_set("a").hosts == ()


@pytest.mark.parametrize("host", ["", "a..b", "*.com", "a.*.example", "x*.example.com", "a b.c"])
def test_bad_hostnames_are_refused(store: SqliteTrustStore, host: str) -> None:
    store.upload("a", root().cert_pem)
    with pytest.raises(ConflictError):
        store.bind("a", host)
    assert store.bindings() == {}


def test_normalize_host_messages() -> None:
    with pytest.raises(ValueError, match="wildcard must be the whole leftmost label"):
        normalize_host("a.*.example.com")
    assert normalize_host(" * ") == "*"


def test_delete_removes_versions_bindings_and_crls(store: SqliteTrustStore) -> None:
    ca = root()
    store.upload("fleet", ca.cert_pem)
    store.bind("fleet", "*")
    store.add_crl("fleet", crl_pem(ca, 7))
    store.delete("fleet")
    assert store.list_sets() == []
    assert store.bindings() == {}
    assert store.snapshot().sets == {}
    # The name is free again; numbering starts over.
    assert store.upload("fleet", ca.cert_pem).version == 1
    assert store.crls("fleet") == []


@pytest.mark.parametrize("encoding", ["pem", "der"])
def test_crl_signed_by_the_set_is_attached(store: SqliteTrustStore, encoding: str) -> None:
    top, inter = chain(2)
    store.upload("fleet", pem(inter.cert, top.cert))
    generation = store.generation()
    info = store.add_crl("fleet", crl_pem(inter, 1, 2, encoding=encoding))
    assert (info.issuer, info.revoked_count) == (inter.cert.subject.rfc4514_string(), 2)
    assert store.generation() == generation + 1
    active = store.snapshot().sets["fleet"]
    assert len(active.crls) == 1
    assert active.crl_pem.startswith(b"-----BEGIN X509 CRL-----")
    # A newer CRL from the same issuer replaces the old one.
    store.add_crl("fleet", crl_pem(inter, 1, 2, 3))
    assert [c.revoked_count for c in store.crls("fleet")] == [3]


# Damaged CRLs the atheris target `inspect` found (tests/fuzz/corpus/inspect).
DAMAGED = Path(__file__).parents[1] / "fuzz" / "corpus" / "inspect"


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("crl-version-61", "61 is not a valid CRL version"),
        ("crl-issuer-unparseable", "error parsing asn1 value"),
    ],
)
def test_a_crl_cryptography_cannot_read_is_refused_not_an_error(
    store: SqliteTrustStore, name: str, why: str
) -> None:
    # Before, the version escaped as InvalidVersion (no ValueError) and the issuer,
    # parsed when first asked, as a ValueError after loading: both a 500 upstream.
    store.upload("fleet", root("Fuzz Root").cert_pem)
    generation = store.generation()
    with pytest.raises(RefusedError) as info:
        store.add_crl("fleet", (DAMAGED / name).read_bytes())
    (finding,) = info.value.findings
    assert finding.code == "crl-malformed"
    assert why in finding.message
    assert store.crls("fleet") == []
    assert store.generation() == generation


def test_crl_from_a_foreign_ca_is_refused(store: SqliteTrustStore) -> None:
    store.upload("fleet", root("Mine").cert_pem)
    with pytest.raises(RefusedError) as info:
        store.add_crl("fleet", crl_pem(root("Theirs"), 1))
    assert info.value.findings[0].code == "crl-issuer-unknown"
    assert "CN=Theirs" in info.value.findings[0].message
    assert store.crls("fleet") == []


def test_crl_with_a_forged_signature_is_refused(store: SqliteTrustStore) -> None:
    mine = root("Same Name")
    impostor = root("Same Name")
    store.upload("fleet", mine.cert_pem)
    with pytest.raises(RefusedError) as info:
        store.add_crl("fleet", crl_pem(impostor, 1))
    assert info.value.findings[0].code == "crl-bad-signature"


def test_crl_that_is_not_a_crl_is_refused(store: SqliteTrustStore) -> None:
    ca = root()
    store.upload("fleet", ca.cert_pem)
    with pytest.raises(RefusedError) as info:
        store.add_crl("fleet", ca.cert_pem)
    assert info.value.findings[0].message == (
        "expected a CRL (PEM or DER), but the file is PEM certificate(s)"
    )


def test_crl_needs_an_active_version(store: SqliteTrustStore) -> None:
    ca = root()
    store.upload("fleet", ca.cert_pem, activate=False)
    with pytest.raises(NotFoundError, match="no active version"):
        store.add_crl("fleet", crl_pem(ca, 1))


def test_crl_of_an_issuer_outside_the_active_version_is_not_used(
    store: SqliteTrustStore,
) -> None:
    old = root("Old")
    store.upload("fleet", old.cert_pem)
    store.add_crl("fleet", crl_pem(old, 1))
    store.upload("fleet", root("New").cert_pem)
    assert store.snapshot().sets["fleet"].crls == ()
    store.rollback("fleet")
    assert len(store.snapshot().sets["fleet"].crls) == 1


def test_state_survives_reopening(store_path: Path) -> None:
    ca = root()
    with SqliteTrustStore(store_path, clock=lambda: NOW) as first:
        first.upload("fleet", ca.cert_pem)
        first.bind("fleet", "*")
        generation = first.generation()
    with SqliteTrustStore(store_path, clock=lambda: NOW) as second:
        assert second.generation() == generation
        snap = second.snapshot()
        assert isinstance(snap, TrustSnapshot)
        assert snap.resolve(None) is not None
        assert snap.sets["fleet"].ca_certs == (ca.cert,)


def test_schema_is_versioned_and_in_wal_mode(store: SqliteTrustStore, store_path: Path) -> None:
    db = sqlite3.connect(store_path)
    try:
        assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        db.close()


def test_a_newer_schema_is_refused(store_path: Path) -> None:
    db = sqlite3.connect(store_path)
    db.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="newer than this edgesim knows"):
        SqliteTrustStore(store_path)


def test_a_file_that_is_not_a_store_is_refused(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.db"
    bogus.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match=r"bogus\.db"):
        SqliteTrustStore(bogus)


def test_a_store_in_a_missing_directory_is_created(tmp_path: Path) -> None:
    with SqliteTrustStore(tmp_path / "a" / "b" / "store.db") as created:
        assert created.list_sets() == []


def test_status_reports_generation_and_active_versions(store: SqliteTrustStore) -> None:
    store.upload("a", root("A").cert_pem)
    store.upload("b", root("B").cert_pem, activate=False)
    assert store.status() == {"generation": 1, "sets": {"a": 1, "b": None}}


def test_an_older_schema_is_migrated_forward(
    store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store written by an older edgesim gains the newer steps and keeps its data."""
    import edge.trust.sqlite as module

    ca = root()
    with SqliteTrustStore(store_path, clock=lambda: NOW) as old:
        old.upload("fleet", ca.cert_pem)
    newer = (*MIGRATIONS, ("ALTER TABLE sets ADD COLUMN note TEXT",))
    monkeypatch.setattr(module, "MIGRATIONS", newer)
    with SqliteTrustStore(store_path, clock=lambda: NOW) as migrated:
        assert migrated.snapshot().sets["fleet"].ca_certs == (ca.cert,)
    db = sqlite3.connect(store_path)
    try:
        assert db.execute("PRAGMA user_version").fetchone()[0] == len(newer)
        columns = [row[1] for row in db.execute("PRAGMA table_info(sets)")]
        assert "note" in columns
    finally:
        db.close()


def test_sqlite_store_implements_the_protocol(store: SqliteTrustStore) -> None:
    from edge.trust.store import TrustStore

    def use(backend: TrustStore) -> int:
        return backend.generation()

    # mypy checks the structural match; at run time the call must simply work.
    assert use(store) == 0
