"""Prometheus metrics for the admin listener's ``/metrics``, collected at scrape time.

Nothing here runs on the connect path. The edge already counts what matters in
plain attributes (:class:`~edge.core.metrics.Metrics`, the event log's
:attr:`~edge.core.events.EventLog.tally` and handshake histogram, the broker's
sessions, the router's retained store, the trust service's status);
:class:`EdgeCollector` turns them into metric families when Prometheus asks.
prometheus-client then writes the text format or OpenMetrics, whichever the
scraper's ``Accept`` header prefers.

Labels are bounded: protocol, set, outcome, alert, event kind, direction,
MQTT packet type and reason. No label names a device; a set name is chosen by
the admin.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from edge.core.metrics import MQTT_PACKET_TYPES
from edge.tls.connection import protocol_name

__all__ = ["EdgeCollector", "protocol_of", "registry_for"]

_PROPAGATION_STATES = ("active", "propagating", "pending", "error")


def protocol_of(proto: Any) -> str:
    """The protocol label of an edge connection (``EdgeTlsProtocol``).

    ``handshake`` (not yet accepted), ``tls`` (accepted, protocol not chosen yet),
    ``mqtt``, ``http``, ``ws`` (the ``/ws`` JSON protocol) or ``mqtt-ws`` (MQTT
    over WebSocket): :func:`edge.tls.connection.protocol_name`.
    """
    return protocol_name(proto)


class EdgeCollector(Collector):
    """Reads a running :class:`~edge.server.EdgeServer` (or its event log alone)."""

    def __init__(self, events: Any, server: Any = None) -> None:
        self.events = events
        self.server = server

    def collect(self) -> Iterator[Metric]:
        """Yield every family (called by prometheus-client on each scrape)."""
        yield from self._events()
        server = self.server
        if server is None:
            return
        yield from self._connections(server)
        core = server.core
        if core is not None:
            yield from self._core(core.snapshot())
        yield from self._broker(server.broker)
        yield from self._trust(server.trust)

    def _events(self) -> Iterator[Metric]:
        events = self.events
        handshakes = CounterMetricFamily(
            "edgesim_handshakes",
            "TLS handshakes by outcome, alert sent (empty when accepted) and certificate set",
            labels=("outcome", "alert", "set"),
        )
        by_kind = CounterMetricFamily(
            "edgesim_events",
            "Events written, by kind and outcome (MQTT connects, denials, trust changes...)",
            labels=("kind", "outcome"),
        )
        kinds: dict[tuple[str, str], int] = {}
        for (kind, outcome, alert, set_name), count in list(events.tally.items()):
            if kind in ("tls.accepted", "tls.refused"):
                handshakes.add_metric([outcome, alert or "", set_name or ""], count)
            kinds[(kind, outcome)] = kinds.get((kind, outcome), 0) + count
        for (kind, outcome), count in sorted(kinds.items()):
            by_kind.add_metric([kind, outcome], count)
        yield handshakes
        yield by_kind
        durations = HistogramMetricFamily(
            "edgesim_handshake_duration_seconds",
            "TLS handshakes' duration by outcome: from the first byte to the verified "
            "certificate (accepted) or to the refusal (refused)",
            labels=("outcome",),
        )
        for outcome, hist in (
            ("accepted", events.handshake_ms),
            ("refused", events.refused_handshake_ms),
        ):
            buckets: list[tuple[str, float]] = []
            running = 0
            for bound, count in zip((*hist.bounds, float("inf")), hist.counts, strict=True):
                running += count
                buckets.append(("+Inf" if bound == float("inf") else repr(bound / 1000), running))
            durations.add_metric([outcome], buckets, sum_value=hist.total / 1000)
        yield durations
        yield CounterMetricFamily(
            "edgesim_events_written", "Events written to the event log", value=events.last_id
        )
        yield CounterMetricFamily(
            "edgesim_events_dropped",
            "Events pushed out of the in-memory ring before anyone read them",
            value=events.dropped,
        )

    def _connections(self, server: Any) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "edgesim_connections_open",
            "Open device connections by protocol and certificate set",
            labels=("protocol", "set"),
        )
        counts: dict[tuple[str, str], int] = {}
        # [messages in, messages out, bytes in, bytes out] by protocol: the closed
        # connections' totals plus the open ones' own counters.
        traffic: dict[str, list[int]] = {}
        for endpoint in list(server.endpoints.values()):
            for protocol, totals in list(endpoint.closed_traffic.items()):
                into = traffic.setdefault(protocol, [0, 0, 0, 0])
                for i in range(4):
                    into[i] += totals[i]
            for proto in list(endpoint.open_protocols):
                info = proto.info
                protocol = protocol_of(proto)
                key = (protocol, info.set_name if info is not None else "")
                counts[key] = counts.get(key, 0) + 1
                if info is None:
                    continue
                into = traffic.setdefault(protocol, [0, 0, 0, 0])
                into[0] += info.messages_in
                into[1] += info.messages_out
                into[2] += proto.bytes_in
                into[3] += proto.bytes_out
        for (protocol, set_name), count in sorted(counts.items()):
            family.add_metric([protocol, set_name], count)
        yield family
        messages = CounterMetricFamily(
            "edgesim_device_messages",
            "Application messages by the device connection's protocol (in: published by "
            "the device, allowed or not; out: handed to the device)",
            labels=("protocol", "direction"),
        )
        data = CounterMetricFamily(
            "edgesim_bytes",
            "Application bytes (after TLS) by protocol and direction",
            labels=("protocol", "direction"),
        )
        for protocol, (m_in, m_out, b_in, b_out) in sorted(traffic.items()):
            messages.add_metric([protocol, "in"], m_in)
            messages.add_metric([protocol, "out"], m_out)
            data.add_metric([protocol, "in"], b_in)
            data.add_metric([protocol, "out"], b_out)
        yield messages
        yield data

    def _core(self, snap: dict[str, int]) -> Iterator[Metric]:
        messages = CounterMetricFamily(
            "edgesim_messages",
            "Application messages routed (in: published to the edge; out: delivered)",
            labels=("direction",),
        )
        messages.add_metric(["in"], snap["messages_in"])
        messages.add_metric(["out"], snap["messages_out"])
        yield messages
        dropped = CounterMetricFamily(
            "edgesim_messages_dropped",
            "Messages not delivered, by reason",
            labels=("reason",),
        )
        dropped.add_metric(["queue"], snap["messages_dropped"])
        dropped.add_metric(["publish_denied"], snap["publish_denied"])
        dropped.add_metric(["subscribe_denied"], snap["subscribe_denied"])
        dropped.add_metric(["handler_failed"], snap["handler_failures"])
        yield dropped
        yield GaugeMetricFamily(
            "edgesim_retained_messages", "Topics holding a retained message", value=snap["retained"]
        )
        yield GaugeMetricFamily(
            "edgesim_subscriptions", "Subscriptions in the router", value=snap["subscriptions"]
        )

    def _broker(self, broker: Any) -> Iterator[Metric]:
        if broker is None or not hasattr(broker, "sessions"):
            return
        core = getattr(broker, "core", None)
        metrics = getattr(core, "metrics", None)
        if metrics is not None:
            packets = CounterMetricFamily(
                "edgesim_mqtt_packets",
                "MQTT control packets by type (connect, publish, puback...) and direction "
                "(in: parsed from devices; out: written to them), MQTT over WebSocket included",
                labels=("type", "direction"),
            )
            for direction, counts in (
                ("in", metrics.mqtt_packets_in),
                ("out", metrics.mqtt_packets_out),
            ):
                for number, count in enumerate(counts):
                    if count:
                        packets.add_metric([MQTT_PACKET_TYPES[number], direction], count)
            yield packets
        depth = GaugeMetricFamily(
            "edgesim_queue_depth",
            "MQTT messages waiting: inflight (sent, unacknowledged) and queued (offline sessions)",
            labels=("queue",),
        )
        inflight = queued = 0
        sessions = list(broker.sessions.values())
        for session in sessions:
            inflight += len(session.inflight)
            queued += len(session.queue)
        depth.add_metric(["inflight"], inflight)
        depth.add_metric(["queued"], queued)
        yield depth
        yield GaugeMetricFamily("edgesim_mqtt_sessions", "MQTT sessions kept", value=len(sessions))

    def _trust(self, trust: Any) -> Iterator[Metric]:
        if trust is None:
            return
        try:
            status = trust.status()
        except Exception:  # not started yet, or closing: a scrape must still answer
            return
        overall = GaugeMetricFamily(
            "edgesim_trust_propagation_state",
            "1 for the propagation state the edge is in",
            labels=("state",),
        )
        for state in _PROPAGATION_STATES:
            overall.add_metric([state], 1.0 if status["state"] == state else 0.0)
        yield overall
        per_set = GaugeMetricFamily(
            "edgesim_trust_set_state",
            "1 for each certificate set's propagation state",
            labels=("set", "state"),
        )
        for entry in status["sets"]:
            for state in _PROPAGATION_STATES:
                per_set.add_metric([entry["name"], state], 1.0 if entry["state"] == state else 0.0)
        yield per_set
        generation = GaugeMetricFamily(
            "edgesim_trust_generation",
            "The trust generation wanted (desired) and applied (active)",
            labels=("which",),
        )
        generation.add_metric(["desired"], status["generation"])
        generation.add_metric(["active"], status["active_generation"])
        yield generation
        last = self.events.last_ns.get("trust.active")
        yield GaugeMetricFamily(
            "edgesim_trust_last_propagation_timestamp_seconds",
            "When the last change became active (0: none since start)",
            value=(last / 1e9) if last else 0.0,
        )


def registry_for(events: Any, server: Any = None) -> CollectorRegistry:
    """A registry of its own holding one :class:`EdgeCollector` (not the global default)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(EdgeCollector(events, server))
    return registry
