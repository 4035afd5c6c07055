"""The embedded trust store: one SQLite file in WAL mode.

Every change runs in one ``BEGIN IMMEDIATE`` transaction, so a crash or a
``kill -9`` in the middle of an upload leaves the previous state intact, and
concurrent writers (threads or processes on the same file) queue on SQLite's
write lock instead of interleaving. The schema version is ``PRAGMA
user_version``; :data:`MIGRATIONS` holds every step and a store is migrated
forward when opened.

``sqlite3`` errors are translated to :class:`~edge.trust.errors.StoreError`
naming the file; validation failures are
:class:`~edge.trust.errors.RefusedError` raised before anything is written.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from edge.trust.errors import (
    ConflictError,
    LimitError,
    NotFoundError,
    RefusedError,
    StoreError,
)
from edge.trust.model import (
    ActiveSet,
    CrlInfo,
    DeployedCert,
    Finding,
    ServerSettings,
    SetInfo,
    TrustSnapshot,
    VersionInfo,
    build_routes,
    normalize_host,
)
from edge.trust.servercerts import (
    DeploymentInfo,
    KeyVault,
    ServerCertInfo,
    ServerCertVersion,
    merge_settings,
    validate_cert_name,
    validate_server_cert,
    validate_settings,
)
from edge.trust.validate import (
    crl_issuer_in,
    describe_name,
    parse_crl,
    validate_set_name,
    validate_upload,
)

__all__ = ["MIGRATIONS", "SqliteTrustStore", "StoreLimits"]

#: Schema steps; ``PRAGMA user_version`` is the number applied. Append only.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE sets (
            name TEXT PRIMARY KEY,
            created_at TEXT NOT NULL,
            active_version INTEGER,
            previous_version INTEGER
        )""",
        """CREATE TABLE versions (
            set_name TEXT NOT NULL REFERENCES sets(name) ON DELETE CASCADE,
            version INTEGER NOT NULL,
            created_at TEXT NOT NULL,
            pem BLOB NOT NULL,
            sha256 TEXT NOT NULL,
            certificate_count INTEGER NOT NULL,
            subjects TEXT NOT NULL,
            allow_sha1 INTEGER NOT NULL,
            activated_at TEXT,
            PRIMARY KEY (set_name, version)
        )""",
        """CREATE TABLE bindings (
            host TEXT PRIMARY KEY,
            set_name TEXT NOT NULL REFERENCES sets(name) ON DELETE CASCADE
        )""",
        """CREATE TABLE crls (
            set_name TEXT NOT NULL REFERENCES sets(name) ON DELETE CASCADE,
            issuer TEXT NOT NULL,
            der BLOB NOT NULL,
            sha256 TEXT NOT NULL,
            this_update TEXT NOT NULL,
            next_update TEXT,
            revoked_count INTEGER NOT NULL,
            added_at TEXT NOT NULL,
            PRIMARY KEY (set_name, issuer)
        )""",
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)",
        "INSERT INTO meta (key, value) VALUES ('generation', 0)",
    ),
    (
        # Server certificates: versions are uploads (immutable), deployments are
        # (version, settings) pairs; the active deployment is what handshakes use.
        """CREATE TABLE server_certs (
            name TEXT PRIMARY KEY,
            created_at TEXT NOT NULL,
            active_deployment INTEGER,
            previous_deployment INTEGER
        )""",
        """CREATE TABLE server_cert_versions (
            name TEXT NOT NULL REFERENCES server_certs(name) ON DELETE CASCADE,
            version INTEGER NOT NULL,
            created_at TEXT NOT NULL,
            chain_pem BLOB NOT NULL,
            key_blob BLOB NOT NULL,
            sha256 TEXT NOT NULL,
            hostnames TEXT NOT NULL,
            subject TEXT NOT NULL,
            issuer TEXT NOT NULL,
            not_after TEXT NOT NULL,
            key_type TEXT NOT NULL,
            PRIMARY KEY (name, version)
        )""",
        """CREATE TABLE deployments (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            name TEXT NOT NULL REFERENCES server_certs(name) ON DELETE CASCADE,
            version INTEGER NOT NULL,
            settings TEXT NOT NULL,
            created_at TEXT NOT NULL
        )""",
        """CREATE TABLE server_default (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            name TEXT NOT NULL REFERENCES server_certs(name) ON DELETE CASCADE
        )""",
    ),
    (
        # Per-set option (issue 13): close live sessions on revocation or deletion.
        # The default 0 makes every set of an older store file read as "off".
        "ALTER TABLE sets ADD COLUMN disconnect_on_revoke INTEGER NOT NULL DEFAULT 0",
    ),
)


@dataclass(frozen=True, slots=True, kw_only=True)
class StoreLimits:
    """Upload limits; the defaults are the product's."""

    max_sets: int = 200
    max_certificates: int = 300
    #: Larger uploads are refused before parsing (300 big certificates fit easily).
    max_upload_bytes: int = 4 * 1024 * 1024


_VERSION_COLUMNS = (
    "name, version, created_at, sha256, hostnames, subject, issuer, not_after, key_type"
)


def _cert_version_from(row: tuple[Any, ...]) -> ServerCertVersion:
    name, version, created, digest, hostnames, subject, issuer, not_after, key_type = row
    return ServerCertVersion(
        name=str(name),
        version=int(version),
        created_at=str(created),
        sha256=str(digest),
        hostnames=tuple(json.loads(hostnames)),
        subject=str(subject),
        issuer=str(issuer),
        not_after=str(not_after),
        key_type=str(key_type),
    )


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class SqliteTrustStore:
    """A :class:`~edge.trust.store.TrustStore` in one SQLite file.

    ``clock`` supplies "now" (UTC) for validity checks and timestamps, so tests
    pass times in. ``fault_hook(point)`` is called at named points inside write
    transactions (``"upload:written"``, after the rows are written and before the
    commit); crash tests use it to stop a writer mid-transaction.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        limits: StoreLimits | None = None,
        clock: Callable[[], datetime] | None = None,
        fault_hook: Callable[[str], None] | None = None,
        busy_timeout: float = 30.0,
        key_file: str | Path | None = None,
    ) -> None:
        self.path = Path(path)
        #: Encrypts server certificates' private keys (``<store>.keys`` by default).
        self.keys = KeyVault(key_file if key_file is not None else f"{self.path}.keys")
        self._keys_plain: dict[tuple[str, int], bytes] = {}
        self.limits = limits or StoreLimits()
        self._clock = clock or (lambda: datetime.now(UTC))
        self._fault_hook = fault_hook
        self._lock = threading.RLock()
        self._parsed: dict[str, tuple[x509.Certificate, ...]] = {}
        self._parsed_crls: dict[str, x509.CertificateRevocationList] = {}
        try:
            if self.path.parent and not self.path.parent.exists():
                self.path.parent.mkdir(parents=True, exist_ok=True)
            # Autocommit mode: transactions are explicit (BEGIN IMMEDIATE) below.
            self._db = sqlite3.connect(
                self.path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
            )
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot open trust store {self.path}: {exc}") from exc
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._migrate()
        except sqlite3.Error as exc:
            self._db.close()
            raise StoreError(f"trust store {self.path} is not usable: {exc}") from exc
        except StoreError:
            self._db.close()
            raise

    # -- plumbing -------------------------------------------------------------

    def _migrate(self) -> None:
        with self._write():
            current = int(self._db.execute("PRAGMA user_version").fetchone()[0])
            if current > len(MIGRATIONS):
                raise StoreError(
                    f"trust store {self.path} has schema version {current}, newer than this "
                    f"edgesim knows ({len(MIGRATIONS)}); upgrade edgesim"
                )
            for step in MIGRATIONS[current:]:
                for statement in step:
                    self._db.execute(statement)
            if current < len(MIGRATIONS):
                # PRAGMA takes no parameters; the value is an int we computed.
                self._db.execute(f"PRAGMA user_version = {len(MIGRATIONS)}")

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """Run the block as one ``BEGIN IMMEDIATE`` transaction (rolled back on any error)."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise StoreError(f"cannot write trust store {self.path}: {exc}") from exc
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            try:
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._db.execute("ROLLBACK")
                raise StoreError(f"cannot commit to trust store {self.path}: {exc}") from exc

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """Run the block in one read transaction, so it sees one consistent state."""
        with self._lock:
            try:
                self._db.execute("BEGIN")
            except sqlite3.Error as exc:
                raise StoreError(f"cannot read trust store {self.path}: {exc}") from exc
            try:
                yield self._db
            finally:
                self._db.execute("COMMIT")

    def _bump(self, db: sqlite3.Connection) -> None:
        db.execute("UPDATE meta SET value = value + 1 WHERE key = 'generation'")

    def _hook(self, point: str) -> None:
        if self._fault_hook is not None:
            self._fault_hook(point)

    def now(self) -> datetime:
        """Return the store's notion of the current time (UTC)."""
        return self._clock()

    def close(self) -> None:
        """Close the database connection."""
        with self._lock:
            self._db.close()

    def __enter__(self) -> SqliteTrustStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- sets and versions ----------------------------------------------------

    def upload(
        self,
        name: str,
        data: bytes,
        *,
        activate: bool = True,
        allow_sha1: bool = False,
        source: str = "FILE",
    ) -> VersionInfo:
        """Validate ``data`` and store it as the set's next version (creating the set).

        Raises :class:`RefusedError` (or :class:`LimitError`) with findings; nothing
        is stored then.
        """
        validate_set_name(name)
        now = self._clock()
        if len(data) > self.limits.max_upload_bytes:
            raise LimitError(
                f"upload refused: {len(data)} bytes is over the limit of "
                f"{self.limits.max_upload_bytes} bytes",
                [
                    Finding(
                        severity="error",
                        code="too-large",
                        message=f"the file is {len(data)} bytes; at most "
                        f"{self.limits.max_upload_bytes} are accepted",
                    )
                ],
            )
        certs, warnings = validate_upload(
            data,
            allow_sha1=allow_sha1,
            at=now,
            max_certificates=self.limits.max_certificates,
            source=source,
        )
        pem = b"".join(c.public_bytes(Encoding.PEM) for c in certs)
        digest = hashlib.sha256(pem).hexdigest()
        subjects = [describe_name(c.subject) for c in certs]
        stamp = _iso(now)
        with self._write() as db:
            row = db.execute("SELECT active_version FROM sets WHERE name = ?", (name,)).fetchone()
            if row is None:
                count = int(db.execute("SELECT COUNT(*) FROM sets").fetchone()[0])
                if count >= self.limits.max_sets:
                    raise LimitError(
                        f"upload refused: the store already holds {count} certificate sets "
                        f"(limit {self.limits.max_sets})",
                        [
                            Finding(
                                severity="error",
                                code="too-many-sets",
                                message=f"at most {self.limits.max_sets} certificate sets; "
                                f"set {name!r} would be number {count + 1}",
                                hint="delete an unused set with 'edgesim trust delete NAME'",
                            )
                        ],
                    )
                db.execute(
                    "INSERT INTO sets (name, created_at) VALUES (?, ?)",
                    (name, stamp),
                )
            same = db.execute(
                "SELECT version FROM versions WHERE set_name = ? AND sha256 = ? AND allow_sha1 = ?",
                (name, digest, int(allow_sha1)),
            ).fetchone()
            if same is not None:
                raise RefusedError(
                    f"upload refused: identical to version {same[0]} of set {name!r}",
                    [
                        Finding(
                            severity="error",
                            code="duplicate-version",
                            message=f"the file holds the same certificates as version {same[0]}",
                            hint=f"activate it instead: 'edgesim trust activate {name} {same[0]}'",
                        )
                    ],
                )
            version = 1 + int(
                db.execute(
                    "SELECT COALESCE(MAX(version), 0) FROM versions WHERE set_name = ?", (name,)
                ).fetchone()[0]
            )
            db.execute(
                "INSERT INTO versions (set_name, version, created_at, pem, sha256,"
                " certificate_count, subjects, allow_sha1) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    name,
                    version,
                    stamp,
                    pem,
                    digest,
                    len(certs),
                    json.dumps(subjects),
                    int(allow_sha1),
                ),
            )
            if activate:
                self._activate_in(db, name, version, stamp)
            self._hook("upload:written")
            info = self._version_row(db, name, version)
        self._parsed[digest] = tuple(certs)
        return dataclasses.replace(info, warnings=tuple(warnings))

    def _activate_in(self, db: sqlite3.Connection, name: str, version: int, stamp: str) -> None:
        current = db.execute("SELECT active_version FROM sets WHERE name = ?", (name,)).fetchone()
        if current is None:
            raise NotFoundError(f"no certificate set named {name!r}")
        if current[0] == version:
            return
        db.execute(
            "UPDATE sets SET previous_version = active_version, active_version = ? WHERE name = ?",
            (version, name),
        )
        db.execute(
            "UPDATE versions SET activated_at = COALESCE(activated_at, ?)"
            " WHERE set_name = ? AND version = ?",
            (stamp, name, version),
        )
        self._bump(db)

    def _version_row(self, db: sqlite3.Connection, name: str, version: int) -> VersionInfo:
        row = db.execute(
            "SELECT v.version, v.created_at, v.sha256, v.certificate_count, v.subjects,"
            " v.activated_at, s.active_version, v.allow_sha1 FROM versions v JOIN sets s ON s.name = v.set_name"
            " WHERE v.set_name = ? AND v.version = ?",
            (name, version),
        ).fetchone()
        if row is None:
            self._require_set(db, name)
            raise NotFoundError(f"certificate set {name!r} has no version {version}")
        return self._version_from(name, row)

    @staticmethod
    def _version_from(name: str, row: tuple[Any, ...]) -> VersionInfo:
        version, created, digest, count, subjects, activated, active_version, sha1 = row
        active = active_version == version
        state = "active" if active else ("inactive" if activated else "staged")
        return VersionInfo(
            set_name=name,
            version=int(version),
            created_at=created,
            sha256=digest,
            certificate_count=int(count),
            subjects=tuple(json.loads(subjects)),
            activated_at=activated,
            active=active,
            allow_sha1=bool(sha1),
            state=state,
        )

    @staticmethod
    def _require_set(db: sqlite3.Connection, name: str) -> tuple[Any, ...]:
        row = db.execute(
            "SELECT name, created_at, active_version, previous_version FROM sets WHERE name = ?",
            (name,),
        ).fetchone()
        if row is None:
            raise NotFoundError(f"no certificate set named {name!r}")
        return tuple(row)

    def list_sets(self) -> list[SetInfo]:
        """Return every set, ordered by name."""
        with self._read() as db:
            names = [r[0] for r in db.execute("SELECT name FROM sets ORDER BY name")]
            return [self._set_info(db, n) for n in names]

    def get_set(self, name: str) -> SetInfo:
        """Return one set; raises :class:`NotFoundError`."""
        with self._read() as db:
            return self._set_info(db, name)

    def _set_info(self, db: sqlite3.Connection, name: str) -> SetInfo:
        _, created, active, _ = self._require_set(db, name)
        option = db.execute(
            "SELECT disconnect_on_revoke FROM sets WHERE name = ?", (name,)
        ).fetchone()[0]
        latest = db.execute(
            "SELECT COALESCE(MAX(version), 0) FROM versions WHERE set_name = ?", (name,)
        ).fetchone()[0]
        hosts = tuple(
            r[0]
            for r in db.execute(
                "SELECT host FROM bindings WHERE set_name = ? ORDER BY host", (name,)
            )
        )
        return SetInfo(
            name=name,
            created_at=created,
            active_version=active,
            latest_version=int(latest),
            hosts=hosts,
            crls=tuple(self._crls_in(db, name)),
            disconnect_on_revoke=bool(option),
        )

    def versions(self, name: str) -> list[VersionInfo]:
        """Return a set's versions, oldest first."""
        with self._read() as db:
            self._require_set(db, name)
            rows = db.execute(
                "SELECT v.version, v.created_at, v.sha256, v.certificate_count, v.subjects,"
                " v.activated_at, s.active_version, v.allow_sha1 FROM versions v"
                " JOIN sets s ON s.name = v.set_name WHERE v.set_name = ? ORDER BY v.version",
                (name,),
            ).fetchall()
            return [self._version_from(name, tuple(r)) for r in rows]

    def version_pem(self, name: str, version: int | None = None) -> tuple[int, bytes, bool]:
        """Return ``(version, pem, allow_sha1)``; ``version`` defaults to the active one."""
        with self._read() as db:
            _, _, active, _ = self._require_set(db, name)
            if version is None:
                if active is None:
                    raise NotFoundError(f"certificate set {name!r} has no active version")
                version = int(active)
            row = db.execute(
                "SELECT pem, allow_sha1 FROM versions WHERE set_name = ? AND version = ?",
                (name, version),
            ).fetchone()
            if row is None:
                raise NotFoundError(f"certificate set {name!r} has no version {version}")
            return version, bytes(row[0]), bool(row[1])

    def activate(self, name: str, version: int) -> VersionInfo:
        """Make ``version`` the active version of set ``name``."""
        with self._write() as db:
            self._version_row(db, name, version)  # raises NotFoundError
            self._activate_in(db, name, version, _iso(self._clock()))
            return self._version_row(db, name, version)

    def rollback(self, name: str) -> VersionInfo:
        """Re-activate the version that was active before the current one."""
        with self._write() as db:
            _, _, _active, previous = self._require_set(db, name)
            if previous is None:
                raise ConflictError(
                    f"certificate set {name!r} has no previously active version to roll back to"
                )
            self._activate_in(db, name, int(previous), _iso(self._clock()))
            return self._version_row(db, name, int(previous))

    def delete(self, name: str) -> None:
        """Delete a set with its versions, CRLs and bindings."""
        with self._write() as db:
            self._require_set(db, name)
            db.execute("DELETE FROM sets WHERE name = ?", (name,))
            self._bump(db)

    def set_options(self, name: str, *, disconnect_on_revoke: bool) -> SetInfo:
        """Set a set's options; returns the set.

        A change bumps the generation: the option travels in the snapshot, so an
        edge acts on it only once the change is active there.
        """
        with self._write() as db:
            self._require_set(db, name)
            current = db.execute(
                "SELECT disconnect_on_revoke FROM sets WHERE name = ?", (name,)
            ).fetchone()[0]
            if bool(current) != disconnect_on_revoke:
                db.execute(
                    "UPDATE sets SET disconnect_on_revoke = ? WHERE name = ?",
                    (int(disconnect_on_revoke), name),
                )
                self._bump(db)
            return self._set_info(db, name)

    # -- bindings -------------------------------------------------------------

    def bind(self, name: str, host: str) -> str:
        """Bind ``host`` to set ``name`` (replacing its previous binding)."""
        try:
            normalized = normalize_host(host)
        except ValueError as exc:
            raise ConflictError(str(exc)) from exc
        with self._write() as db:
            self._require_set(db, name)
            row = db.execute("SELECT set_name FROM bindings WHERE host = ?", (normalized,))
            existing = row.fetchone()
            if existing is not None and existing[0] == name:
                return normalized
            db.execute(
                "INSERT INTO bindings (host, set_name) VALUES (?, ?)"
                " ON CONFLICT(host) DO UPDATE SET set_name = excluded.set_name",
                (normalized, name),
            )
            self._bump(db)
        return normalized

    def unbind(self, host: str) -> None:
        """Remove the binding of ``host``."""
        try:
            normalized = normalize_host(host)
        except ValueError as exc:
            raise ConflictError(str(exc)) from exc
        with self._write() as db:
            cursor = db.execute("DELETE FROM bindings WHERE host = ?", (normalized,))
            if cursor.rowcount == 0:
                raise NotFoundError(f"hostname {normalized!r} is not bound")
            self._bump(db)

    def bindings(self) -> dict[str, str]:
        """Return every binding: host -> set name."""
        with self._read() as db:
            return {
                h: s for h, s in db.execute("SELECT host, set_name FROM bindings ORDER BY host")
            }

    # -- CRLs -----------------------------------------------------------------

    def add_crl(self, name: str, data: bytes) -> CrlInfo:
        """Attach a CRL signed by a CA of the set's active version (replacing that CA's CRL)."""
        crl = parse_crl(data)
        _, pem, _ = self.version_pem(name)
        issuer = crl_issuer_in(crl, self._certs(pem))
        der = crl.public_bytes(Encoding.DER)
        next_update = crl.next_update_utc
        with self._write() as db:
            _, _, active, _ = self._require_set(db, name)
            current_pem = db.execute(
                "SELECT pem FROM versions WHERE set_name = ? AND version = ?", (name, active)
            ).fetchone()
            if current_pem is None or bytes(current_pem[0]) != pem:
                raise ConflictError(
                    f"the active version of set {name!r} changed while the CRL was checked; retry"
                )
            db.execute(
                "INSERT INTO crls (set_name, issuer, der, sha256, this_update, next_update,"
                " revoked_count, added_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT(set_name, issuer) DO UPDATE SET der = excluded.der,"
                " sha256 = excluded.sha256, this_update = excluded.this_update,"
                " next_update = excluded.next_update, revoked_count = excluded.revoked_count,"
                " added_at = excluded.added_at",
                (
                    name,
                    describe_name(issuer.subject),
                    der,
                    hashlib.sha256(der).hexdigest(),
                    _iso(crl.last_update_utc),
                    _iso(next_update) if next_update else None,
                    len(list(crl)),
                    _iso(self._clock()),
                ),
            )
            self._bump(db)
            return next(
                c for c in self._crls_in(db, name) if c.issuer == describe_name(issuer.subject)
            )

    def crls(self, name: str) -> list[CrlInfo]:
        """Return the CRLs attached to a set."""
        with self._read() as db:
            self._require_set(db, name)
            return self._crls_in(db, name)

    def crl_objects(self, name: str) -> list[x509.CertificateRevocationList]:
        """Return the CRLs attached to a set, parsed."""
        with self._read() as db:
            self._require_set(db, name)
            rows = db.execute(
                "SELECT sha256, der FROM crls WHERE set_name = ? ORDER BY issuer", (name,)
            ).fetchall()
        return [self._crl(digest, bytes(der)) for digest, der in rows]

    @staticmethod
    def _crls_in(db: sqlite3.Connection, name: str) -> list[CrlInfo]:
        rows = db.execute(
            "SELECT issuer, sha256, this_update, next_update, revoked_count, added_at"
            " FROM crls WHERE set_name = ? ORDER BY issuer",
            (name,),
        ).fetchall()
        return [
            CrlInfo(
                set_name=name,
                issuer=r[0],
                sha256=r[1],
                this_update=r[2],
                next_update=r[3],
                revoked_count=int(r[4]),
                added_at=r[5],
            )
            for r in rows
        ]

    # -- what the edge uses ---------------------------------------------------

    def generation(self) -> int:
        """Return the change counter (grows with every change affecting handshakes)."""
        with self._read() as db:
            return int(db.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()[0])

    def status(self) -> dict[str, Any]:
        """Return the generation and each set's active version as stored."""
        with self._read() as db:
            generation = int(
                db.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()[0]
            )
            sets = {
                n: a for n, a in db.execute("SELECT name, active_version FROM sets ORDER BY name")
            }
            return {"generation": generation, "sets": sets}

    def _certs(self, pem: bytes) -> tuple[x509.Certificate, ...]:
        digest = hashlib.sha256(pem).hexdigest()
        certs = self._parsed.get(digest)
        if certs is None:
            certs = tuple(x509.load_pem_x509_certificates(pem))
            self._parsed[digest] = certs
        return certs

    def _crl(self, digest: str, der: bytes) -> x509.CertificateRevocationList:
        crl = self._parsed_crls.get(digest)
        if crl is None:
            crl = x509.load_der_x509_crl(der)
            self._parsed_crls[digest] = crl
        return crl

    def snapshot(self) -> TrustSnapshot:
        """Return every set's active version and the bindings, read in one transaction."""
        with self._read() as db:
            generation = int(
                db.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()[0]
            )
            rows = db.execute(
                "SELECT s.name, v.version, v.pem, v.allow_sha1, s.disconnect_on_revoke"
                " FROM sets s JOIN versions v"
                " ON v.set_name = s.name AND v.version = s.active_version ORDER BY s.name"
            ).fetchall()
            crl_rows = db.execute("SELECT set_name, issuer, sha256, der FROM crls").fetchall()
            binding_rows = db.execute("SELECT host, set_name FROM bindings").fetchall()
            cert_rows = db.execute(
                "SELECT c.name, v.version, d.id, d.settings, v.chain_pem, v.key_blob,"
                " v.hostnames, v.not_after, v.sha256 FROM server_certs c"
                " JOIN deployments d ON d.id = c.active_deployment"
                " JOIN server_cert_versions v ON v.name = c.name AND v.version = d.version"
                " ORDER BY c.name"
            ).fetchall()
            default_row = db.execute(
                "SELECT d.name FROM server_default d JOIN server_certs c ON c.name = d.name"
                " WHERE c.active_deployment IS NOT NULL"
            ).fetchone()
        sets: dict[str, ActiveSet] = {}
        for name, version, pem, allow_sha1, disconnect_on_revoke in rows:
            certs = self._certs(bytes(pem))
            subjects = {describe_name(c.subject) for c in certs}
            # A CRL stays attached when its issuer leaves the active version (a
            # rollback may bring it back) but only the issuers present are used.
            crls = tuple(
                self._crl(digest, bytes(der))
                for set_name, issuer, digest, der in crl_rows
                if set_name == name and issuer in subjects
            )
            sets[name] = ActiveSet(
                name=name,
                version=int(version),
                ca_certs=certs,
                ca_pem=bytes(pem),
                crls=crls,
                crl_pem=b"".join(c.public_bytes(Encoding.PEM) for c in crls),
                allow_sha1=bool(allow_sha1),
                disconnect_on_revoke=bool(disconnect_on_revoke),
            )
        bindings = {h: s for h, s in binding_rows}
        server_certs = {row[0]: self._deployed(row) for row in cert_rows}
        default_cert = default_row[0] if default_row is not None else None
        return TrustSnapshot(
            generation=generation,
            sets=sets,
            bindings=bindings,
            server_certs=server_certs,
            default_cert=default_cert,
            routes=build_routes(sets, bindings, server_certs, default_cert),
        )

    def _deployed(self, row: tuple[Any, ...]) -> DeployedCert:
        name, version, deployment, settings, chain, key_blob, hostnames, not_after, digest = row
        cache_key = (str(name), int(version))
        key_pem = self._keys_plain.get(cache_key)
        if key_pem is None:
            key_pem = self.keys.decrypt(bytes(key_blob), name=str(name), version=int(version))
            self._keys_plain[cache_key] = key_pem
        return DeployedCert(
            name=str(name),
            version=int(version),
            deployment=int(deployment),
            hostnames=tuple(json.loads(hostnames)),
            chain_pem=bytes(chain),
            key_pem=key_pem,
            settings=ServerSettings.from_dict(json.loads(settings)),
            not_after=str(not_after),
            sha256=str(digest),
        )

    # -- server certificates --------------------------------------------------

    def upload_server_cert(
        self,
        name: str,
        cert_data: bytes,
        key_data: bytes,
        *,
        passphrase: bytes | None = None,
        cert_source: str = "CERT",
        key_source: str = "KEY",
    ) -> ServerCertVersion:
        """Validate a server certificate (leaf, chain) and its key; store it as a new version.

        The new version is *staged*: handshakes use it after ``deploy``. The key is
        stored encrypted (:class:`~edge.trust.servercerts.KeyVault`). Raises
        :class:`RefusedError` with findings; nothing is stored then.
        """
        validate_cert_name(name)
        for data, source in ((cert_data, cert_source), (key_data, key_source)):
            if len(data) > self.limits.max_upload_bytes:
                raise LimitError(
                    f"upload refused: {source} is {len(data)} bytes, over the limit of "
                    f"{self.limits.max_upload_bytes}",
                    [Finding(severity="error", code="too-large", message=f"{source} is too large")],
                )
        now = self._clock()
        checked = validate_server_cert(
            cert_data,
            key_data,
            passphrase=passphrase,
            at=now,
            cert_source=cert_source,
            key_source=key_source,
        )
        stamp = _iso(now)
        with self._write() as db:
            if db.execute("SELECT 1 FROM server_certs WHERE name = ?", (name,)).fetchone() is None:
                db.execute(
                    "INSERT INTO server_certs (name, created_at) VALUES (?, ?)", (name, stamp)
                )
            same = db.execute(
                "SELECT version FROM server_cert_versions WHERE name = ? AND sha256 = ?",
                (name, checked.sha256),
            ).fetchone()
            if same is not None:
                raise RefusedError(
                    f"upload refused: identical to version {same[0]} of server certificate "
                    f"{name!r}",
                    [
                        Finding(
                            severity="error",
                            code="duplicate-version",
                            message=f"the certificate is the same as version {same[0]}",
                            hint=f"deploy it instead: 'edgesim cert deploy {name} "
                            f"--version {same[0]}'",
                        )
                    ],
                )
            version = 1 + int(
                db.execute(
                    "SELECT COALESCE(MAX(version), 0) FROM server_cert_versions WHERE name = ?",
                    (name,),
                ).fetchone()[0]
            )
            blob = self.keys.encrypt(checked.key_pem, name=name, version=version)
            db.execute(
                "INSERT INTO server_cert_versions (name, version, created_at, chain_pem,"
                " key_blob, sha256, hostnames, subject, issuer, not_after, key_type)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    name,
                    version,
                    stamp,
                    checked.chain_pem,
                    blob,
                    checked.sha256,
                    json.dumps(list(checked.hostnames)),
                    checked.subject,
                    checked.issuer,
                    _iso(checked.not_after),
                    checked.key_type,
                ),
            )
            self._hook("cert-upload:written")
        self._keys_plain[(name, version)] = checked.key_pem
        info = self._cert_version(name, version)
        return dataclasses.replace(info, warnings=checked.warnings)

    def _cert_version(self, name: str, version: int) -> ServerCertVersion:
        with self._read() as db:
            row = db.execute(
                f"SELECT {_VERSION_COLUMNS} FROM server_cert_versions"
                " WHERE name = ? AND version = ?",
                (name, version),
            ).fetchone()
        if row is None:
            raise NotFoundError(f"server certificate {name!r} has no version {version}")
        return _cert_version_from(tuple(row))

    def deploy(
        self,
        name: str,
        settings: ServerSettings | Mapping[str, Any] | None = None,
        *,
        version: int | None = None,
        default: bool | None = None,
    ) -> DeploymentInfo:
        """Store a new deployment of ``name`` (its latest version unless told) and activate it.

        ``settings`` is the full :class:`ServerSettings`, or a mapping of the
        settings to change (keys of :meth:`ServerSettings.to_dict`) on top of the
        current deployment's (the defaults for a first deployment); ``None``
        changes none, which is how a new version is rolled out with the same
        settings. ``default`` true makes it the default server certificate, false
        stops it being the default, ``None`` leaves that as it is. Refused (nothing
        stored) when a setting is unknown or the named set does not exist.
        """
        stamp = _iso(self._clock())
        with self._write() as db:
            row = db.execute(
                "SELECT active_deployment FROM server_certs WHERE name = ?", (name,)
            ).fetchone()
            if row is None:
                raise NotFoundError(f"no server certificate named {name!r}")
            if not isinstance(settings, ServerSettings):
                current = (
                    self._deployment(db, int(row[0])).settings
                    if row[0] is not None
                    else ServerSettings()
                )
                settings = merge_settings(current, settings or {})
            validate_settings(settings)
            if version is None:
                version = int(
                    db.execute(
                        "SELECT MAX(version) FROM server_cert_versions WHERE name = ?", (name,)
                    ).fetchone()[0]
                )
            elif (
                db.execute(
                    "SELECT 1 FROM server_cert_versions WHERE name = ? AND version = ?",
                    (name, version),
                ).fetchone()
                is None
            ):
                raise NotFoundError(f"server certificate {name!r} has no version {version}")
            if settings.set_name is not None and (
                db.execute("SELECT 1 FROM sets WHERE name = ?", (settings.set_name,)).fetchone()
                is None
            ):
                raise NotFoundError(
                    f"deployment settings name certificate set {settings.set_name!r}, "
                    "which does not exist (see 'edgesim trust list')"
                )
            cursor = db.execute(
                "INSERT INTO deployments (name, version, settings, created_at) VALUES (?, ?, ?, ?)",
                (name, version, json.dumps(settings.to_dict()), stamp),
            )
            deployment = int(cursor.lastrowid or 0)
            db.execute(
                "UPDATE server_certs SET previous_deployment = active_deployment,"
                " active_deployment = ? WHERE name = ?",
                (deployment, name),
            )
            if default is True:
                db.execute(
                    "INSERT INTO server_default (id, name) VALUES (1, ?)"
                    " ON CONFLICT(id) DO UPDATE SET name = excluded.name",
                    (name,),
                )
            elif default is False:
                db.execute("DELETE FROM server_default WHERE name = ?", (name,))
            self._hook("deploy:written")
            self._bump(db)
            return self._deployment(db, deployment)

    @staticmethod
    def _deployment(db: sqlite3.Connection, deployment: int) -> DeploymentInfo:
        row = db.execute(
            "SELECT id, name, version, settings, created_at FROM deployments WHERE id = ?",
            (deployment,),
        ).fetchone()
        if row is None:
            raise NotFoundError(f"no deployment {deployment}")
        return DeploymentInfo(
            id=int(row[0]),
            name=str(row[1]),
            version=int(row[2]),
            settings=ServerSettings.from_dict(json.loads(row[3])),
            created_at=str(row[4]),
        )

    def rollback_server_cert(self, name: str) -> DeploymentInfo | None:
        """Re-activate the deployment active before the current one.

        When there was none (the first deployment), the certificate is undeployed
        and ``None`` returned: the names it covered go back to what served them
        before (another certificate, a binding, the default).
        """
        with self._write() as db:
            row = db.execute(
                "SELECT active_deployment, previous_deployment FROM server_certs WHERE name = ?",
                (name,),
            ).fetchone()
            if row is None:
                raise NotFoundError(f"no server certificate named {name!r}")
            active, previous = row
            if active is None:
                raise ConflictError(f"server certificate {name!r} is not deployed")
            db.execute(
                "UPDATE server_certs SET active_deployment = ?, previous_deployment = NULL"
                " WHERE name = ?",
                (previous, name),
            )
            self._bump(db)
            return None if previous is None else self._deployment(db, int(previous))

    def delete_server_cert(self, name: str) -> None:
        """Delete a server certificate with its versions, keys and deployments."""
        with self._write() as db:
            cursor = db.execute("DELETE FROM server_certs WHERE name = ?", (name,))
            if cursor.rowcount == 0:
                raise NotFoundError(f"no server certificate named {name!r}")
            self._bump(db)
        for key in [k for k in self._keys_plain if k[0] == name]:
            del self._keys_plain[key]

    def server_certs(self) -> list[ServerCertInfo]:
        """Return every server certificate (versions, active deployment), ordered by name."""
        with self._read() as db:
            names = [r[0] for r in db.execute("SELECT name FROM server_certs ORDER BY name")]
            return [self._server_cert_in(db, n) for n in names]

    def get_server_cert(self, name: str) -> ServerCertInfo:
        """Return one server certificate; raises :class:`NotFoundError`."""
        with self._read() as db:
            return self._server_cert_in(db, name)

    def _server_cert_in(self, db: sqlite3.Connection, name: str) -> ServerCertInfo:
        row = db.execute(
            "SELECT created_at, active_deployment, previous_deployment FROM server_certs"
            " WHERE name = ?",
            (name,),
        ).fetchone()
        if row is None:
            raise NotFoundError(f"no server certificate named {name!r}")
        created, active, previous = row
        versions = tuple(
            _cert_version_from(tuple(r))
            for r in db.execute(
                f"SELECT {_VERSION_COLUMNS} FROM server_cert_versions WHERE name = ?"
                " ORDER BY version",
                (name,),
            )
        )
        default = db.execute("SELECT name FROM server_default WHERE id = 1").fetchone()
        return ServerCertInfo(
            name=name,
            created_at=str(created),
            versions=versions,
            deployment=None if active is None else self._deployment(db, int(active)),
            previous_deployment=None if previous is None else int(previous),
            default=default is not None and default[0] == name,
        )
