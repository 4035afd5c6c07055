"""Durable MQTT state: the store interface the broker writes through, and an in-memory store.

The broker (:mod:`edge.mqtt.broker`) describes every change to durable state as an
*operation* (a tuple, see :data:`OPS`) and hands it to a store with
:meth:`MqttStore.record`; it never reads the store while running. At start it reads
everything back once with :meth:`MqttStore.load` (:meth:`MqttBroker.restore`).

What is durable: persistent sessions (3.1.1 clean session 0, MQTT 5 Session Expiry
Interval > 0) with their subscriptions and their outbound QoS 1/2 messages in flight
and queued (and queued QoS 0 ones under ``queue_qos0_messages``); inbound QoS 2
messages between PUBREC and PUBREL (of every session); retained messages.

Acknowledgements wait for the disk. While a store is :attr:`MqttStore.dirty`
(changes recorded but not yet committed), the broker passes a PUBACK, PUBREC,
PUBREL or PUBCOMP to :meth:`MqttStore.hold` instead of writing it; the store
writes it to its connection once every change recorded before it is committed.
So a message acknowledged to its publisher is on disk, in every matching
persistent session, before the publisher learns it was taken: group commit, one
transaction (and one fsync) per batch, so throughput holds.

Implementations: :class:`MemoryStore` (here: state in dicts, committed when
:meth:`MemoryStore.commit` is called; for sans-I/O tests and as the reference for
other back ends) and :class:`~edge.mqtt.sqlite_store.SqliteMqttStore` (the
default: an SQLite file in WAL mode, a batch per transaction, fsynced off the event loop).
No store at all (``MqttBroker(store=None)``) is persistence switched off: the
broker then runs exactly the code it ran before persistence existed.

Operations (``key`` below is the session's identity string and client id, two fields):

=============  ===============================================================
``session``    ident, client_id, namespace, name, expiry (None: the broker's)
``offline``    ident, client_id, wall-clock time the session went offline
``drop``       ident, client_id: the session and everything stored for it
``sub``        ident, client_id, filter, granted qos, MQTT 5 options (-1: none), id
``unsub``      ident, client_id, filter
``msg``        id, topic, payload, qos, retain, origin, protocol, meta
``delmsg``     id
``out``        seq, ident, client_id, message id, qos, retain, subscription ids,
               packet id (None: queued), state (0 PUBLISH sent, 1 PUBREL sent)
``outpid``     seq, packet id (a queued message went into flight)
``outstate``   seq, state
``delout``     seq
``in``         ident, client_id, packet id, topic, payload, qos, retain, origin,
               protocol, meta (an inbound QoS 2 message awaiting PUBREL)
``delin``      ident, client_id, packet id
``retain``     topic, payload, qos, origin, protocol, meta
``unretain``   topic
=============  ===============================================================

``meta`` is :func:`encode_meta`'s bytes (MQTT 5 properties, with the expiry as a
wall-clock time) or None.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from edge.core.router import Message, Metadata

__all__ = [
    "OPS",
    "AckTarget",
    "MemoryStore",
    "MqttStore",
    "Snapshot",
    "StoreBase",
    "coalesce",
    "decode_meta",
    "encode_meta",
]

#: The operation kinds a store must apply (see the module docstring).
OPS = frozenset(
    {
        "session",
        "offline",
        "drop",
        "sub",
        "unsub",
        "msg",
        "delmsg",
        "out",
        "outpid",
        "outstate",
        "delout",
        "in",
        "delin",
        "retain",
        "unretain",
    }
)


class AckTarget(Protocol):
    """Where a held acknowledgement goes: an :class:`~edge.mqtt.broker.MqttConnection`."""

    @property
    def should_close(self) -> bool:
        """True once the connection is closing (a held ack is then dropped)."""
        ...

    def write(self, data: bytes) -> None:
        """Queue bytes for the client."""
        ...

    def close(self, reason: str, code: int = 0) -> None:
        """Close the connection with a reason (and an MQTT 5 reason code)."""
        ...

    def wake(self) -> None:
        """Tell the I/O layer to look at the connection."""
        ...


@dataclass(slots=True)
class Snapshot:
    """Everything a store holds, as rows (see the operations' fields)."""

    #: (ident, client_id, namespace, name, expiry, offline wall time or None)
    sessions: list[tuple[Any, ...]] = field(default_factory=list)
    #: (ident, client_id, filter, qos, options5 or -1, subscription id)
    subscriptions: list[tuple[Any, ...]] = field(default_factory=list)
    #: message id -> (topic, payload, qos, retain, origin, protocol, meta)
    messages: dict[int, tuple[Any, ...]] = field(default_factory=dict)
    #: (seq, ident, client_id, message id, qos, retain, sub ids, pid, state), by seq
    outgoing: list[tuple[Any, ...]] = field(default_factory=list)
    #: (ident, client_id, pid, topic, payload, qos, retain, origin, protocol, meta)
    incoming: list[tuple[Any, ...]] = field(default_factory=list)
    #: (topic, payload, qos, origin, protocol, meta)
    retained: list[tuple[Any, ...]] = field(default_factory=list)


class MqttStore(Protocol):
    """What the broker needs from a persistence back end."""

    #: True while changes are recorded but not yet committed (acks are then held).
    dirty: bool

    def record(self, op: tuple[Any, ...]) -> None:
        """Queue one change; committed with the next batch, in recording order."""
        ...

    def hold(self, conn: AckTarget, data: bytes) -> None:
        """Write ``data`` to ``conn`` once every change recorded so far is committed."""
        ...

    def load(self) -> Snapshot:
        """Read the whole committed state (at start, before any :meth:`record`)."""
        ...

    def new_message_id(self) -> int:
        """A message id not used by any stored message."""
        ...

    def new_seq(self) -> int:
        """An outbound-entry sequence number above every stored one."""
        ...


def encode_meta(meta: Metadata | None, clock: Callable[[], float]) -> bytes | None:
    """``meta`` as bytes to store; the expiry deadline becomes a wall-clock time.

    ``clock`` is the monotonic clock ``meta.expires_at`` is on (it does not survive
    a restart; wall-clock time does).
    """
    if meta is None:
        return None
    data: dict[str, Any] = {}
    if meta.content_type is not None:
        data["ct"] = meta.content_type
    if meta.response_topic is not None:
        data["rt"] = meta.response_topic
    if meta.correlation_data is not None:
        data["cd"] = meta.correlation_data.hex()
    if meta.user_properties:
        data["up"] = [list(pair) for pair in meta.user_properties]
    if meta.payload_format is not None:
        data["pf"] = meta.payload_format
    if meta.expires_at is not None:
        data["exp"] = time.time() + (meta.expires_at - clock())
    return json.dumps(data, separators=(",", ":")).encode()


def decode_meta(raw: bytes | None, clock: Callable[[], float]) -> Metadata | None:
    """The inverse of :func:`encode_meta`, with the expiry back on ``clock``."""
    if raw is None:
        return None
    data = json.loads(raw)
    cd = data.get("cd")
    exp = data.get("exp")
    return Metadata(
        content_type=data.get("ct"),
        response_topic=data.get("rt"),
        correlation_data=None if cd is None else bytes.fromhex(cd),
        user_properties=[(k, v) for k, v in data.get("up", [])],
        payload_format=data.get("pf"),
        expires_at=None if exp is None else clock() + (exp - time.time()),
    )


def message_row(message: Message, clock: Callable[[], float]) -> tuple[Any, ...]:
    """(topic, payload, qos, retain, origin, protocol, meta) of ``message``."""
    return (
        message.topic,
        message.payload,
        message.qos,
        message.retain,
        message.origin,
        message.protocol,
        encode_meta(message.meta, clock),
    )


def coalesce(ops: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """``ops`` without the entries and messages both stored and deleted within them.

    An outbound entry acknowledged by its subscriber before its batch was written
    (the usual case with a subscriber online) never needs to reach the disk: its
    ``out`` (with any ``outpid``/``outstate``) and ``delout`` cancel, and so do a
    message's ``msg`` and ``delmsg``. The state after the batch is the same.
    """
    entries: dict[int, list[int]] = {}
    messages: dict[int, int] = {}
    dropped: set[int] = set()
    for i, op in enumerate(ops):
        kind = op[0]
        if kind == "out":
            entries[op[1]] = [i]
        elif kind == "outpid" or kind == "outstate":
            seen = entries.get(op[1])
            if seen is not None:
                seen.append(i)
        elif kind == "delout":
            seen = entries.pop(op[1], None)
            if seen is not None:
                dropped.update(seen)
                dropped.add(i)
        elif kind == "msg":
            messages[op[1]] = i
        elif kind == "delmsg":
            first = messages.pop(op[1], None)
            if first is not None:
                dropped.add(first)
                dropped.add(i)
        elif kind == "drop":
            # Deletes by session: entries of that session stored before it in this
            # batch go with it (and need not be written at all).
            key = (op[1], op[2])
            for seq in [s for s, seen in entries.items() if ops[seen[0]][2:4] == key]:
                dropped.update(entries.pop(seq))
    if not dropped:
        return ops
    return [op for i, op in enumerate(ops) if i not in dropped]


class StoreBase:
    """Bookkeeping every store shares: pending changes, held acks, id counters.

    Subclasses apply a batch in :meth:`_apply` (however they commit) and call
    :meth:`_committed` with the acks that batch released.
    """

    def __init__(self) -> None:
        self.dirty = False
        #: Changes recorded since the last batch was taken.
        self._pending: list[tuple[Any, ...]] = []
        #: Acks waiting for the changes recorded before them.
        self._held: list[tuple[AckTarget, bytes]] = []
        self._next_message = 1
        self._next_seq = 1

    def record(self, op: tuple[Any, ...]) -> None:
        """Queue one change (see :class:`MqttStore`)."""
        self._pending.append(op)
        if not self.dirty:
            self.dirty = True
            self._schedule()

    def hold(self, conn: AckTarget, data: bytes) -> None:
        """Hold an ack until the changes recorded before it are committed."""
        self._held.append((conn, data))
        if not self.dirty:
            self.dirty = True
            self._schedule()

    def new_message_id(self) -> int:
        """A fresh message id."""
        n = self._next_message
        self._next_message = n + 1
        return n

    def new_seq(self) -> int:
        """A fresh outbound-entry sequence number."""
        n = self._next_seq
        self._next_seq = n + 1
        return n

    def _counters_from(self, snap: Snapshot) -> None:
        if snap.messages:
            self._next_message = max(snap.messages) + 1
        if snap.outgoing:
            self._next_seq = max(row[0] for row in snap.outgoing) + 1

    def _take(self) -> tuple[list[tuple[Any, ...]], list[tuple[AckTarget, bytes]]]:
        """The next batch: the pending changes and the acks held behind them."""
        ops, held = self._pending, self._held
        self._pending, self._held = [], []
        return ops, held

    @staticmethod
    def _release(held: list[tuple[AckTarget, bytes]]) -> None:
        for conn, data in held:
            if not conn.should_close:
                conn.write(data)

    @staticmethod
    def _fail(held: list[tuple[AckTarget, bytes]], why: str) -> None:
        # The changes are not on disk: the publishers must not learn they were taken.
        # Closing makes them re-send (QoS 1/2) on their next connection.
        for conn, _ in held:
            if not conn.should_close:
                conn.close(f"the edge could not persist the message: {why}", 0x80)
                conn.wake()

    def _schedule(self) -> None:
        """Arrange for :meth:`commit`-like work to happen (subclasses)."""


class MemoryStore(StoreBase):
    """State in Python dicts; a batch commits when :meth:`commit` is called.

    It survives a broker but not the process: tests build a second
    :class:`~edge.mqtt.broker.MqttBroker` on the same store to play a restart,
    and call :meth:`commit` where a real store's writer would. ``drop_uncommitted``
    plays a crash: the changes recorded since the last commit are lost.
    """

    def __init__(self) -> None:
        super().__init__()
        self.sessions: dict[tuple[str, str], tuple[Any, ...]] = {}
        self.subscriptions: dict[tuple[str, str, str], tuple[Any, ...]] = {}
        self.messages: dict[int, tuple[Any, ...]] = {}
        self.outgoing: dict[int, list[Any]] = {}
        self.incoming: dict[tuple[str, str, int], tuple[Any, ...]] = {}
        self.retained: dict[str, tuple[Any, ...]] = {}
        #: How many batches were committed.
        self.commits = 0

    def load(self) -> Snapshot:
        """The committed state."""
        snap = Snapshot(
            sessions=list(self.sessions.values()),
            subscriptions=list(self.subscriptions.values()),
            messages=dict(self.messages),
            outgoing=[tuple(self.outgoing[s]) for s in sorted(self.outgoing)],
            incoming=list(self.incoming.values()),
            retained=list(self.retained.values()),
        )
        self._counters_from(snap)
        return snap

    def commit(self) -> int:
        """Apply the pending changes, then release the held acks; return how many were applied.

        Changes that cancel out (:func:`coalesce`) are not counted.
        """
        ops, held = self._take()
        ops = coalesce(ops)
        for op in ops:
            self._apply(op)
        self.dirty = False
        self.commits += 1
        self._release(held)
        return len(ops)

    def drop_uncommitted(self) -> None:
        """Forget pending changes and held acks (a crash before the commit)."""
        self._take()
        self.dirty = False

    def _apply(self, op: tuple[Any, ...]) -> None:
        kind = op[0]
        if kind == "session":
            _, ident, cid, ns, name, expiry = op
            # (Re)connected: online, so no offline time.
            self.sessions[(ident, cid)] = (ident, cid, ns, name, expiry, None)
        elif kind == "offline":
            _, ident, cid, wall = op
            row = self.sessions.get((ident, cid))
            if row is not None:
                self.sessions[(ident, cid)] = (*row[:5], wall)
        elif kind == "drop":
            _, ident, cid = op
            self.sessions.pop((ident, cid), None)
            for sub in [k for k in self.subscriptions if k[:2] == (ident, cid)]:
                del self.subscriptions[sub]
            for seq in [s for s, r in self.outgoing.items() if (r[1], r[2]) == (ident, cid)]:
                del self.outgoing[seq]
            for held in [k for k in self.incoming if k[:2] == (ident, cid)]:
                del self.incoming[held]
        elif kind == "sub":
            self.subscriptions[(op[1], op[2], op[3])] = op[1:]
        elif kind == "unsub":
            self.subscriptions.pop((op[1], op[2], op[3]), None)
        elif kind == "msg":
            self.messages[op[1]] = op[2:]
        elif kind == "delmsg":
            self.messages.pop(op[1], None)
        elif kind == "out":
            self.outgoing[op[1]] = list(op[1:])
        elif kind == "outpid":
            entry = self.outgoing.get(op[1])
            if entry is not None:
                entry[7] = op[2]
        elif kind == "outstate":
            entry = self.outgoing.get(op[1])
            if entry is not None:
                entry[8] = op[2]
        elif kind == "delout":
            self.outgoing.pop(op[1], None)
        elif kind == "in":
            self.incoming[(op[1], op[2], op[3])] = op[1:]
        elif kind == "delin":
            self.incoming.pop((op[1], op[2], op[3]), None)
        elif kind == "retain":
            self.retained[op[1]] = op[1:]
        elif kind == "unretain":
            self.retained.pop(op[1], None)
        else:
            raise ValueError(f"MemoryStore: unknown operation {kind!r}")
