"""Counters cheap enough to bump on the hot path.

Plain integer attributes on a ``__slots__`` object: an increment is one attribute
store, no lock (the edge runs on one event loop), no label lookup. ``snapshot()``
returns them as a dict for the admin API, events and benchmarks. Nothing here raises.
"""

from __future__ import annotations

_FIELDS = (
    "connections_opened",
    "connections_closed",
    "messages_in",
    "messages_out",
    "bytes_in",
    "bytes_out",
    "publish_denied",
    "subscribe_denied",
    "messages_dropped",
    "handler_failures",
)


class Metrics:
    """The edge's counters (all start at 0)."""

    __slots__ = _FIELDS

    connections_opened: int
    connections_closed: int
    messages_in: int
    messages_out: int
    bytes_in: int
    bytes_out: int
    publish_denied: int
    subscribe_denied: int
    messages_dropped: int
    handler_failures: int

    def __init__(self) -> None:
        for name in _FIELDS:
            setattr(self, name, 0)

    def snapshot(self) -> dict[str, int]:
        """All counters by name, plus ``connections_open``."""
        out = {name: int(getattr(self, name)) for name in _FIELDS}
        out["connections_open"] = self.connections_opened - self.connections_closed
        return out
