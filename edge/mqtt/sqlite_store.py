"""The default MQTT persistence back end: one SQLite file in WAL mode, written in batches.

:class:`SqliteMqttStore` implements :class:`~edge.mqtt.store.MqttStore`. The broker
records changes on the event loop; the store takes everything recorded so far as
one batch, writes it into one transaction on the loop (quick: no fsync), and
commits it on its writer thread, where the fsync runs while the loop carries on
and the next batch accumulates (group commit: one fsync for however many messages
arrived during the previous one). When the transaction has committed, the
acknowledgements held behind the batch are written, on the loop. With
``synchronous="normal"`` the COMMIT does not fsync, and runs on the loop too.

Durability (``synchronous``):

- ``"full"`` (default): SQLite's ``synchronous=FULL``; every batch is fsynced
  before its acknowledgements go out. Survives a crash of the process and of the
  machine.
- ``"normal"``: ``synchronous=NORMAL`` in WAL mode; a batch reaches the
  operating system before its acknowledgements go out, and is fsynced at WAL
  checkpoints. Survives ``kill -9`` of the edge, not a power cut.

``batch_delay`` (seconds, default 0) waits that long after the first change of a
batch before writing it: larger batches, later acknowledgements.

The file is locked (``flock``) while an edge has it open: two edges never share
MQTT state. Errors: :class:`MqttStoreError` names the file and what went wrong.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import fcntl
import json
import logging
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any

from edge.mqtt.errors import MqttStoreError
from edge.mqtt.store import OPS, AckTarget, Snapshot, StoreBase, coalesce

__all__ = ["MqttStoreError", "SqliteMqttStore"]

log = logging.getLogger("edgesim.mqtt.store")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    ident TEXT NOT NULL, client_id TEXT NOT NULL, namespace TEXT NOT NULL,
    name TEXT NOT NULL, expiry REAL, offline REAL, PRIMARY KEY (ident, client_id));
CREATE TABLE IF NOT EXISTS subscriptions (
    ident TEXT NOT NULL, client_id TEXT NOT NULL, filter TEXT NOT NULL,
    qos INTEGER NOT NULL, options INTEGER NOT NULL, sub_id INTEGER NOT NULL,
    PRIMARY KEY (ident, client_id, filter));
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY, topic TEXT NOT NULL, payload BLOB NOT NULL,
    qos INTEGER NOT NULL, retain INTEGER NOT NULL, origin TEXT NOT NULL,
    protocol TEXT NOT NULL, meta BLOB);
CREATE TABLE IF NOT EXISTS outgoing (
    seq INTEGER PRIMARY KEY, ident TEXT NOT NULL, client_id TEXT NOT NULL,
    msg_id INTEGER NOT NULL, qos INTEGER NOT NULL, retain INTEGER NOT NULL,
    sub_ids TEXT NOT NULL, pid INTEGER, state INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS outgoing_session ON outgoing (ident, client_id);
CREATE TABLE IF NOT EXISTS incoming (
    ident TEXT NOT NULL, client_id TEXT NOT NULL, pid INTEGER NOT NULL,
    topic TEXT NOT NULL, payload BLOB NOT NULL, qos INTEGER NOT NULL,
    retain INTEGER NOT NULL, origin TEXT NOT NULL, protocol TEXT NOT NULL, meta BLOB,
    PRIMARY KEY (ident, client_id, pid));
CREATE TABLE IF NOT EXISTS retained (
    topic TEXT PRIMARY KEY, payload BLOB NOT NULL, qos INTEGER NOT NULL,
    origin TEXT NOT NULL, protocol TEXT NOT NULL, meta BLOB);
"""
_VERSION = 1

_SQL: dict[str, str] = {
    "session": "INSERT OR REPLACE INTO sessions VALUES (?, ?, ?, ?, ?, NULL)",
    "offline": "UPDATE sessions SET offline = ?3 WHERE ident = ?1 AND client_id = ?2",
    "sub": "INSERT OR REPLACE INTO subscriptions VALUES (?, ?, ?, ?, ?, ?)",
    "unsub": "DELETE FROM subscriptions WHERE ident = ? AND client_id = ? AND filter = ?",
    "msg": "INSERT OR REPLACE INTO messages VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    "delmsg": "DELETE FROM messages WHERE id = ?",
    "out": "INSERT OR REPLACE INTO outgoing VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
    "outpid": "UPDATE outgoing SET pid = ?2 WHERE seq = ?1",
    "outstate": "UPDATE outgoing SET state = ?2 WHERE seq = ?1",
    "delout": "DELETE FROM outgoing WHERE seq = ?",
    "in": "INSERT OR REPLACE INTO incoming VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    "delin": "DELETE FROM incoming WHERE ident = ? AND client_id = ? AND pid = ?",
    "retain": "INSERT OR REPLACE INTO retained VALUES (?, ?, ?, ?, ?, ?)",
    "unretain": "DELETE FROM retained WHERE topic = ?",
}
#: Kinds written grouped, in this order (see SqliteMqttStore._write).
_GROUPED = ("msg", "out", "outpid", "outstate", "delout", "delmsg")
_DROP = (
    "DELETE FROM sessions WHERE ident = ? AND client_id = ?",
    "DELETE FROM subscriptions WHERE ident = ? AND client_id = ?",
    "DELETE FROM outgoing WHERE ident = ? AND client_id = ?",
    "DELETE FROM incoming WHERE ident = ? AND client_id = ?",
)
assert set(_SQL) | {"drop"} == OPS


class SqliteMqttStore(StoreBase):
    """MQTT state in an SQLite file (see the module docstring)."""

    def __init__(
        self, path: Path | str, *, synchronous: str = "full", batch_delay: float = 0.0
    ) -> None:
        super().__init__()
        if synchronous not in ("full", "normal"):
            raise MqttStoreError(
                f"persistence.synchronous: must be 'full' or 'normal', got {synchronous!r}"
            )
        self.path = Path(path)
        self.synchronous = synchronous
        self.batch_delay = batch_delay
        #: Batches committed, changes written, and the largest batch (for benchmarks).
        self.commits = 0
        self.changes = 0
        self.largest_batch = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._writer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="mqtt-store")
        self._busy = False
        self._scheduled = False
        self._closed = False
        self._lock_fd = -1
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock_fd = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(self._lock_fd)
                self._lock_fd = -1
                raise MqttStoreError(
                    f"MQTT state file {self.path} is in use by another edge process;"
                    " give each edge its own [persistence] path"
                ) from None
            self._db = sqlite3.connect(
                str(self.path), isolation_level=None, check_same_thread=False
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={synchronous.upper()}")
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, _VERSION):
                raise MqttStoreError(
                    f"MQTT state file {self.path} has schema version {version};"
                    f" this edge reads version {_VERSION}"
                )
            self._db.executescript(_SCHEMA)
            self._db.execute(f"PRAGMA user_version={_VERSION}")
        except (OSError, sqlite3.Error) as exc:
            self._unlock()
            raise MqttStoreError(f"cannot open MQTT state file {self.path}: {exc}") from None
        except MqttStoreError:
            self._unlock()
            raise

    def _unlock(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    # --- the interface -----------------------------------------------------------------

    def load(self) -> Snapshot:
        """Read the committed state (before the broker records anything)."""
        db = self._db
        try:
            snap = Snapshot(
                sessions=db.execute("SELECT * FROM sessions").fetchall(),
                subscriptions=db.execute("SELECT * FROM subscriptions").fetchall(),
                messages={
                    row[0]: (row[1], row[2], row[3], bool(row[4]), *row[5:])
                    for row in db.execute("SELECT * FROM messages")
                },
                outgoing=[
                    (*row[:5], bool(row[5]), tuple(json.loads(row[6])), *row[7:])
                    for row in db.execute("SELECT * FROM outgoing ORDER BY seq")
                ],
                incoming=[
                    (*row[:6], bool(row[6]), *row[7:])
                    for row in db.execute("SELECT * FROM incoming")
                ],
                retained=db.execute("SELECT * FROM retained").fetchall(),
            )
        except (sqlite3.Error, ValueError) as exc:
            raise MqttStoreError(f"cannot read MQTT state file {self.path}: {exc}") from None
        self._counters_from(snap)
        return snap

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Commit on ``loop`` from now on (before this, changes wait)."""
        self._loop = loop
        if self.dirty and not self._busy:
            self._schedule()

    def _schedule(self) -> None:
        loop = self._loop
        if loop is None or self._scheduled or self._busy or self._closed:
            return
        self._scheduled = True
        # call_soon: everything this loop iteration records joins the batch.
        if self.batch_delay > 0:
            loop.call_later(self.batch_delay, self._commit)
        else:
            loop.call_soon(self._commit)

    def _commit(self) -> None:
        self._scheduled = False
        if self._busy or self._closed:
            return
        ops, held = self._take()
        ops = coalesce(ops)
        if not ops:
            # Acks held only to keep their order behind an earlier batch: nothing to wait for.
            self.dirty = False
            self._release(held)
            return
        # The statements run here, on the loop: a writer thread would wait for the
        # GIL at every row while the loop is busy (CPython's switch interval is 5 ms),
        # which made batches take tens of milliseconds under load. The fsync is what
        # takes long, and it needs no GIL: only COMMIT goes to the writer thread.
        try:
            self._write(ops)
        except Exception as exc:  # sqlite3.Error, or a full disk
            log.error(
                "MQTT state file %s: a batch of %d changes failed: %s", self.path, len(ops), exc
            )
            self._fail(held, str(exc))
            self.dirty = bool(self._pending or self._held)
            if self.dirty:
                self._schedule()
            return
        self._busy = True
        if self.synchronous == "normal":
            # No fsync at COMMIT in WAL mode with synchronous=NORMAL: quick, so inline.
            future: concurrent.futures.Future[None] = concurrent.futures.Future()
            try:
                self._finish()
                future.set_result(None)
            except Exception as exc:
                future.set_exception(exc)
            self._done(future, held, len(ops))
            return
        future = self._writer.submit(self._finish)
        future.add_done_callback(lambda f: self._on_written(f, held, len(ops)))

    def _finish(self) -> None:
        """COMMIT the transaction :meth:`_write` filled (the fsync, off the loop)."""
        try:
            self._db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
            raise

    def _on_written(
        self,
        future: concurrent.futures.Future[None],
        held: list[tuple[AckTarget, bytes]],
        count: int,
    ) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(self._done, future, held, count)

    def _done(
        self,
        future: concurrent.futures.Future[None],
        held: list[tuple[AckTarget, bytes]],
        count: int,
    ) -> None:
        self._busy = False
        exc = future.exception()
        if exc is not None:
            log.error("MQTT state file %s: a batch of %d changes failed: %s", self.path, count, exc)
            self._fail(held, str(exc))
        else:
            self.commits += 1
            self.changes += count
            self.largest_batch = max(self.largest_batch, count)
            self._release(held)
        if self._pending or self._held:
            self._schedule()
        else:
            self.dirty = False

    def _write(self, ops: list[tuple[Any, ...]]) -> None:
        """Apply one batch in an open transaction; :meth:`_finish` commits it.

        Session, subscription, inbound and retained changes run in their order.
        Messages and outbound entries, whose ids are never reused and whose
        store-then-delete pairs :func:`~edge.mqtt.store.coalesce` removed, run after
        them grouped by kind (inserts, updates, deletes), each group in one
        ``executemany``: most of a batch is these, and one call per group costs
        less than one per row.
        """
        db = self._db
        groups: dict[str, list[tuple[Any, ...]]] = {k: [] for k in _GROUPED}
        db.execute("BEGIN")
        try:
            for op in ops:
                kind = op[0]
                group = groups.get(kind)
                if group is not None:
                    if kind == "out":
                        ids = op[7]
                        text = json.dumps(list(ids)) if ids else "[]"
                        group.append((*op[1:7], text, op[8], op[9]))
                    else:
                        group.append(op[1:])
                elif kind == "drop":
                    for sql in _DROP:
                        db.execute(sql, op[1:])
                else:
                    db.execute(_SQL[kind], op[1:])
            for kind in _GROUPED:
                rows = groups[kind]
                if rows:
                    db.executemany(_SQL[kind], rows)
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise

    # --- lifecycle ---------------------------------------------------------------------

    def flush(self) -> None:
        """Commit everything recorded so far, now, on this thread; release held acks.

        For shutdown and tests: it waits for a batch already on the writer thread.
        """
        if self._closed:
            return
        # Wait for the writer's batch; its acks are released by _done on the loop, or
        # (loop gone) dropped with the connections.
        done = threading.Event()
        self._writer.submit(done.set)
        done.wait()
        ops, held = self._take()
        ops = coalesce(ops)
        if ops:
            self._write(ops)
            self._finish()
            self.commits += 1
            self.changes += len(ops)
        self._release(held)
        if not self._busy:
            self.dirty = False

    def close(self) -> None:
        """Flush, then close the file and release its lock; safe to call twice."""
        if self._closed:
            return
        try:
            self.flush()
        finally:
            self._closed = True
            self._writer.shutdown(wait=True)
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
            self._unlock()
