"""The edge's event log: every handshake outcome, connection and policy decision.

Events are plain dicts of JSON-safe values so that the log, the admin API's
``/v1/events`` feed and the tests all see the same thing (the log stores them
more compactly, and hands out dicts whenever they are read). The log keeps the last
``capacity`` events in memory (a ring), numbers them with an increasing ``id`` so
that feeds can resume (``since``), and wakes waiters when an event arrives, so
tests wait on events instead of sleeping.

Required keys of every event: ``id`` (set by the log), ``time`` (ISO-8601 UTC, set
by the log unless given), ``kind`` (for example ``tls.refused``, ``tls.accepted``,
``mqtt.connected``, ``mqtt.disconnected``, ``policy.denied``, ``trust.activated``),
``outcome`` (``accepted``, ``refused``, ``denied``, ``closed``, ``info``, ``error``).
Optional, by convention: ``identity`` (``set/name``), ``peer``, ``sni``, ``reason``,
``hint``, and any kind-specific fields.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

from edge.core.metrics import HANDSHAKE_MS_BUCKETS, Histogram
from edge.core.session import PeerCertificate

Event = dict[str, Any]
#: A listener called with an event as emitted: ``(kind, outcome, time, fields)``, where
#: ``time`` is nanoseconds since the epoch (or the text the emitter gave) and
#: ``fields`` the emitter's keyword arguments, not to be changed (the listener
#: may keep it). No dict is built for it, no time formatted.
RawListener = Callable[[str, str, "int | str", dict[str, Any]], None]

log = logging.getLogger("edgesim.events")


def _iso(when: int | str) -> str:
    """An event's ``time`` as ``2026-01-31T12:00:00.123Z``; stored as nanoseconds since the epoch.

    Every connect emits several events, and most are never read: the log stores
    ``time.time_ns()`` and formats it when the event is read. The date and time
    up to the second are formatted once per second and reused (same text as
    ``datetime.now(UTC).isoformat(...)``, a third of the cost).
    """
    if isinstance(when, str):
        return when  # given by the emitter
    global _second_cache
    seconds, nanos = divmod(when, 1_000_000_000)
    cached_second, prefix = _second_cache
    if seconds != cached_second:
        prefix = datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")[:-6]
        # One tuple, replaced whole: a thread emitting at the same time reads a consistent pair.
        _second_cache = (seconds, prefix)
    return f"{prefix}.{nanos // 1_000_000:03d}Z"


_second_cache: tuple[int, str] = (-1, "")


class _Shape:
    """The keys of events emitted with the same fields, shared by all of them."""

    __slots__ = ("index", "keys")

    def __init__(self, names: tuple[str, ...]) -> None:
        self.keys = ("id", "time", "kind", "outcome", *names)
        self.index = {key: i for i, key in enumerate(self.keys)}


# A stored event: (shape, id, time, kind, outcome, *field values), the time in
# nanoseconds (or the text the emitter gave). Stored as a tuple
# rather than a dict: the log keeps up to `capacity` events, two for every
# connected device, and a dict of a dozen keys is 464 bytes where the tuple is
# half that (events are dicts again whenever they are read).
_Record = tuple[Any, ...]
# Shapes are per call site (a few dozen); a caller building fields dynamically
# must not grow the cache without bound.
_MAX_SHAPES = 1024
# Tally keys are (kind, outcome, alert, set): bounded by the code's kinds and the
# admin's sets, but a store with thousands of sets must not grow /metrics without end.
_MAX_TALLY = 4096
#: Where tallies beyond ``_MAX_TALLY`` keys go.
TALLY_OVERFLOW: tuple[str, str, None, None] = ("other", "other", None, None)


def _materialize(record: _Record) -> Event:
    shape: _Shape = record[0]
    event = dict(zip(shape.keys, record[1:], strict=True))
    event["time"] = _iso(record[2])
    cert = event.get("certificate")
    if isinstance(cert, PeerCertificate):
        event["certificate"] = cert.as_dict()
    return event


class EventLog:
    """An in-memory, bounded, numbered event log with async waiters and listeners."""

    def __init__(self, capacity: int = 10_000, *, log_events: bool = True) -> None:
        self._events: collections.deque[_Record] = collections.deque(maxlen=capacity)
        self._next_id = 1
        self._shapes: dict[tuple[str, ...], _Shape] = {}
        self._listeners: list[Callable[[Event], None]] = []
        self._raw_listeners: list[RawListener] = []
        self._waiters: set[asyncio.Future[None]] = set()
        self._log_events = log_events
        #: Events counted by (kind, outcome, alert, set), for the Prometheus exporter,
        #: which reads them at scrape time: one dict update per event, no labels built.
        self.tally: dict[tuple[str, str, str | None, str | None], int] = {}
        #: The time (ns since the epoch) of the newest event of each kind.
        self.last_ns: dict[str, int] = {}
        #: Durations of accepted handshakes (``tls.accepted``'s ``handshake_ms``).
        self.handshake_ms = Histogram(HANDSHAKE_MS_BUCKETS)
        #: Durations of refused ones (``tls.refused``'s ``handshake_ms``): from the
        #: first byte to the refusal, so a stalled device shows as a slow refusal.
        self.refused_handshake_ms = Histogram(HANDSHAKE_MS_BUCKETS)

    def emit(self, kind: str, outcome: str, **fields: Any) -> int:
        """Record an event; return its ``id`` (``time`` is filled in unless given).

        A ``certificate`` field may be a :class:`~edge.core.session.PeerCertificate`:
        readers get it as a dict (it is kept as the object, which the connection
        holds anyway).
        """
        when = fields.pop("time", None) or time.time_ns()
        names = tuple(fields)
        shape = self._shapes.get(names)
        if shape is None:
            shape = _Shape(names)
            if len(self._shapes) < _MAX_SHAPES:
                self._shapes[names] = shape
        event_id = self._next_id
        self._next_id = event_id + 1
        record = (shape, event_id, when, kind, outcome, *fields.values())
        self._events.append(record)
        key = (kind, outcome, fields.get("alert"), fields.get("set"))
        tally = self.tally
        count = tally.get(key)
        if count is None:
            count = 0
            if len(tally) >= _MAX_TALLY:
                key = TALLY_OVERFLOW
                count = tally.get(key, 0)
        tally[key] = count + 1
        if isinstance(when, int):
            self.last_ns[kind] = when
        if kind == "tls.accepted":
            ms = fields.get("handshake_ms")
            if ms is not None:
                self.handshake_ms.observe(ms)
        elif kind == "tls.refused":
            ms = fields.get("handshake_ms")
            if ms is not None:
                self.refused_handshake_ms.observe(ms)
        # The message is built only when it is logged: every connect emits several events.
        if self._log_events and log.isEnabledFor(logging.INFO):
            log.info(
                "%s %s %s",
                kind,
                outcome,
                " ".join(f"{k}={v!r}" for k, v in fields.items() if k in _LOGGED_KEYS),
            )
        # Usually no one listens or waits: no copies, no loops then.
        if self._raw_listeners:
            for raw in tuple(self._raw_listeners):
                try:
                    raw(kind, outcome, when, fields)
                except Exception:  # a broken listener must not stop the edge
                    log.exception("event listener failed")
        if self._listeners:
            event = _materialize(record)
            for listener in tuple(self._listeners):
                try:
                    listener(event)
                except Exception:  # a broken listener must not stop the edge
                    log.exception("event listener failed")
        if self._waiters:
            for waiter in tuple(self._waiters):
                if not waiter.done():
                    waiter.get_loop().call_soon_threadsafe(_set_done, waiter)
        return event_id

    def add_listener(self, listener: Callable[[Event], None]) -> Callable[[], None]:
        """Call ``listener(event)`` for every new event; returns a function that removes it."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def add_raw_listener(self, listener: RawListener) -> Callable[[], None]:
        """Call ``listener`` with every new event as emitted (see :data:`RawListener`).

        For listeners that pass events on rather than read them (the cluster bus):
        a dict per event, with its time formatted, cost a worker more than the
        event itself. Returns a function that removes the listener.
        """
        self._raw_listeners.append(listener)
        return lambda: self._raw_listeners.remove(listener)

    @property
    def capacity(self) -> int:
        """How many events the ring keeps."""
        return self._events.maxlen or 0

    @property
    def dropped(self) -> int:
        """Events pushed out of the ring by newer ones (no longer readable)."""
        return self.last_id - len(self._events)

    @property
    def last_id(self) -> int:
        """The id of the newest event (0 when there is none)."""
        return self._next_id - 1

    def __iter__(self) -> Iterator[Event]:
        return iter([_materialize(r) for r in self._events])

    def query(
        self,
        *,
        since: int = 0,
        kind: str | None = None,
        outcome: str | None = None,
        identity: str | None = None,
        after_time: str | None = None,
        before_time: str | None = None,
        limit: int | None = None,
    ) -> list[Event]:
        """Return the events matching every given filter, oldest first.

        ``kind`` matches exactly or as a prefix ending in ``.`` (``"tls."``);
        times compare as ISO-8601 strings (all events are UTC).
        """
        out: list[_Record] = []
        prefix = kind is not None and kind.endswith(".")
        for record in self._events:
            if record[1] <= since:
                continue
            if kind is not None and not (
                record[3] == kind or (prefix and record[3].startswith(kind))
            ):
                continue
            if outcome is not None and record[4] != outcome:
                continue
            if identity is not None:
                at = record[0].index.get("identity")
                if at is None or record[at + 1] != identity:
                    continue
            if after_time is not None and _iso(record[2]) < after_time:
                continue
            if before_time is not None and _iso(record[2]) > before_time:
                continue
            out.append(record)
        if limit is not None:
            out = out[-limit:]
        return [_materialize(r) for r in out]

    async def wait_for(
        self,
        predicate: Callable[[Event], bool],
        *,
        timeout: float = 10.0,
        since: int = 0,
    ) -> Event:
        """Wait until an event with id > ``since`` satisfies ``predicate``; return it.

        Raises ``TimeoutError`` after ``timeout`` seconds. Safe to call from a loop
        other than the one emitting, since wake-ups go through ``call_soon_threadsafe``.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        seen = since
        while True:
            for record in list(self._events):
                if record[1] > seen:
                    seen = record[1]
                    event = _materialize(record)
                    if predicate(event):
                        return event
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"no matching event within {timeout:.1f} s")
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.add(waiter)
            try:
                await asyncio.wait_for(waiter, remaining)
            except TimeoutError:
                pass
            finally:
                self._waiters.discard(waiter)


def _set_done(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


_LOGGED_KEYS = frozenset({"identity", "peer", "sni", "reason", "hint", "set", "version", "topic"})


def matching(events: Iterable[Event], **fields: Any) -> list[Event]:
    """Return the events whose fields equal all of ``fields`` (a helper for tests and CLI)."""
    return [e for e in events if all(e.get(k) == v for k, v in fields.items())]
