"""The edge's event log: every handshake outcome, connection and policy decision.

Events are plain dicts of JSON-safe values so that the log, the admin API's
``/v1/events`` feed and the tests all see the same thing. The log keeps the last
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

Event = dict[str, Any]

log = logging.getLogger("edgesim.events")


def _now_iso() -> str:
    """The current UTC time as ``2026-01-31T12:00:00.123Z`` (what every event's ``time`` holds).

    Every connect emits several events: the date and time up to the second are
    formatted once per second and reused (about 1.2 us per event instead of 4 us
    for ``datetime.now(UTC).isoformat(...)``, same text).
    """
    global _second_cache
    seconds, nanos = divmod(time.time_ns(), 1_000_000_000)
    cached_second, prefix = _second_cache
    if seconds != cached_second:
        prefix = datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")[:-6]
        # One tuple, replaced whole: a thread emitting at the same time reads a consistent pair.
        _second_cache = (seconds, prefix)
    return f"{prefix}.{nanos // 1_000_000:03d}Z"


_second_cache: tuple[int, str] = (-1, "")


class EventLog:
    """An in-memory, bounded, numbered event log with async waiters and listeners."""

    def __init__(self, capacity: int = 10_000, *, log_events: bool = True) -> None:
        self._events: collections.deque[Event] = collections.deque(maxlen=capacity)
        self._next_id = 1
        self._listeners: list[Callable[[Event], None]] = []
        self._waiters: set[asyncio.Future[None]] = set()
        self._log_events = log_events

    def emit(self, kind: str, outcome: str, **fields: Any) -> Event:
        """Record an event and return it (with ``id`` and ``time`` filled in)."""
        event: Event = {"id": self._next_id, "time": fields.pop("time", None) or _now_iso()}
        event["kind"] = kind
        event["outcome"] = outcome
        event.update(fields)
        self._next_id += 1
        self._events.append(event)
        # The message is built only when it is logged: every connect emits several events.
        if self._log_events and log.isEnabledFor(logging.INFO):
            log.info(
                "%s %s %s",
                kind,
                outcome,
                " ".join(f"{k}={v!r}" for k, v in fields.items() if k in _LOGGED_KEYS),
            )
        # Usually no one listens or waits: no copies, no loops then.
        if self._listeners:
            for listener in tuple(self._listeners):
                try:
                    listener(event)
                except Exception:  # a broken listener must not stop the edge
                    log.exception("event listener failed")
        if self._waiters:
            for waiter in tuple(self._waiters):
                if not waiter.done():
                    waiter.get_loop().call_soon_threadsafe(_set_done, waiter)
        return event

    def add_listener(self, listener: Callable[[Event], None]) -> Callable[[], None]:
        """Call ``listener(event)`` for every new event; returns a function that removes it."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    @property
    def last_id(self) -> int:
        """The id of the newest event (0 when there is none)."""
        return self._next_id - 1

    def __iter__(self) -> Iterator[Event]:
        return iter(list(self._events))

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
        out: list[Event] = []
        for event in self._events:
            if event["id"] <= since:
                continue
            if kind is not None and not (
                event["kind"] == kind or (kind.endswith(".") and event["kind"].startswith(kind))
            ):
                continue
            if outcome is not None and event.get("outcome") != outcome:
                continue
            if identity is not None and event.get("identity") != identity:
                continue
            if after_time is not None and event["time"] < after_time:
                continue
            if before_time is not None and event["time"] > before_time:
                continue
            out.append(event)
        if limit is not None:
            out = out[-limit:]
        return out

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
            for event in self._events:
                if event["id"] > seen:
                    seen = event["id"]
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
