"""Counters cheap enough to bump on the hot path, and a fixed-bucket histogram.

Plain integer attributes on a ``__slots__`` object: an increment is one attribute
store, no lock (the edge runs on one event loop), no label lookup. ``snapshot()``
returns them as a dict for the admin API, events and benchmarks. Nothing here raises.
"""

from __future__ import annotations

from bisect import bisect_left

_FIELDS = (
    "connections_opened",
    "connections_closed",
    "messages_in",
    "messages_out",
    "publish_denied",
    "subscribe_denied",
    "messages_dropped",
    "handler_failures",
)


#: MQTT control packet names by type number (the fixed header's high nibble); 0 and
#: anything unnamed count as ``reserved``. The label set is these 16 values at most.
MQTT_PACKET_TYPES: tuple[str, ...] = (
    "reserved",
    "connect",
    "connack",
    "publish",
    "puback",
    "pubrec",
    "pubrel",
    "pubcomp",
    "subscribe",
    "suback",
    "unsubscribe",
    "unsuback",
    "pingreq",
    "pingresp",
    "disconnect",
    "auth",
)


class Metrics:
    """The edge's counters (all start at 0).

    ``mqtt_packets_in`` and ``mqtt_packets_out`` count MQTT control packets by
    type number (index into :data:`MQTT_PACKET_TYPES`): a list index, not a dict
    of labels, so that counting one costs the broker one indexed store.
    """

    __slots__ = (*_FIELDS, "mqtt_packets_in", "mqtt_packets_out")

    connections_opened: int
    connections_closed: int
    messages_in: int
    messages_out: int
    publish_denied: int
    subscribe_denied: int
    messages_dropped: int
    handler_failures: int
    mqtt_packets_in: list[int]
    mqtt_packets_out: list[int]

    def __init__(self) -> None:
        for name in _FIELDS:
            setattr(self, name, 0)
        self.mqtt_packets_in = [0] * 16
        self.mqtt_packets_out = [0] * 16

    def snapshot(self) -> dict[str, int]:
        """All counters by name, plus ``connections_open``."""
        out = {name: int(getattr(self, name)) for name in _FIELDS}
        out["connections_open"] = self.connections_opened - self.connections_closed
        return out


#: Handshake durations' bucket bounds, in milliseconds (Prometheus reports seconds).
HANDSHAKE_MS_BUCKETS: tuple[float, ...] = (1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)


class Histogram:
    """Fixed buckets over plain lists: ``observe`` is a bisect and two stores.

    The Prometheus exporter (``edge.http.metrics_export``) reads it at scrape time,
    so the hot path does not touch prometheus-client's locks and label dicts.
    ``counts[i]`` counts observations ``<= bounds[i]`` not counted before (the last
    slot is ``+Inf``); the exporter makes them cumulative.
    """

    __slots__ = ("bounds", "count", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.count = 0
        self.total = 0.0

    def observe(self, value: float) -> None:
        """Count one observation."""
        self.counts[bisect_left(self.bounds, value)] += 1
        self.count += 1
        self.total += value
