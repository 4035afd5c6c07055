"""Deadlines that share one loop timer: the per-connection timeouts every connection has.

asyncio only; used by the TLS listener (handshake timeout) and the MQTT
protocol (connect timeout).
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable

__all__ = ["Deadline", "Deadlines"]

log = logging.getLogger("edgesim.deadlines")


class Deadline:
    """One pending deadline of a :class:`Deadlines` queue; ``cancel()`` as on a timer handle."""

    __slots__ = ("callback", "when")

    def __init__(self, when: float, callback: Callable[[], object]) -> None:
        self.when = when
        self.callback: Callable[[], object] | None = callback

    def cancel(self) -> None:
        """Do not call the callback (the queue drops the deadline when its time comes)."""
        self.callback = None


class Deadlines:
    """Deadlines that all lie ``delay`` seconds after they were added, behind one loop timer.

    For timeouts every connection of a listener has, such as the TLS handshake
    timeout and the MQTT connect timeout: their deadlines come in the order they
    were added, a FIFO that a single timer walks. A loop timer per connection,
    made on every connect and cancelled a few milliseconds later, cost about
    1 % of the edge's CPU per connect. A
    deadline may fire up to ``delay / 20`` (at most 0.5 s) late, so that a busy
    listener wakes its timer a few times per second, not once per connection;
    a cancelled one is dropped when its time comes.
    """

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self._slack = min(delay / 20, 0.5)
        self._queue: collections.deque[Deadline] = collections.deque()
        self._timer: asyncio.TimerHandle | None = None

    def add(self, callback: Callable[[], object]) -> Deadline:
        """Call ``callback`` after ``delay`` seconds, unless the returned deadline is cancelled."""
        loop = asyncio.get_running_loop()
        entry = Deadline(loop.time() + self.delay, callback)
        self._queue.append(entry)
        if self._timer is None:
            self._timer = loop.call_at(entry.when, self._fire)
        return entry

    def __len__(self) -> int:
        return len(self._queue)

    def _fire(self) -> None:
        self._timer = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        queue = self._queue
        while queue and queue[0].when <= now:
            callback = queue.popleft().callback
            if callback is not None:
                try:
                    callback()
                except Exception:  # one connection's bug must not stop the others' deadlines
                    log.exception("deadline callback failed")
        if queue:
            self._timer = loop.call_at(max(queue[0].when, now + self._slack), self._fire)
