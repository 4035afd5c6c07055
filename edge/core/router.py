"""The protocol-agnostic topic router: subscriptions, retained messages, fan-out.

Every protocol adapter (MQTT, HTTP, WebSocket) publishes :class:`Message` objects
here and registers :class:`Subscriber` objects; a message published over HTTP
reaches MQTT and WebSocket subscribers alike. The router decides nothing about
authorization (that is :mod:`edge.core.policy`, applied by :mod:`edge.core.hub`).

Delivery is synchronous and must not block: ``Subscriber.deliver`` queues or writes
and returns. A subscriber holding several matching subscriptions receives one copy
at the highest granted QoS (the choice Mosquitto makes by default).

The router raises no exceptions of its own; a subscriber whose ``deliver`` raises
(an adapter's bug) is logged and skipped, so the publisher and the other
subscribers are not affected.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Protocol

from edge.core.topics import TopicTree, matches

log = logging.getLogger("edgesim.router")


@dataclass(slots=True, eq=False)
class Message:
    """One application message as the core routes it.

    ``origin`` is the publisher's identity string (``set/name``, or ``edge`` for the
    edge's own services), ``protocol`` the adapter it came from (``mqtt``, ``http``,
    ``ws``, ``internal``), ``published_at`` a monotonic timestamp for latency.
    ``encoded`` is scratch space where adapters cache the wire form of this message
    per (adapter, qos, retain), so that a fan-out to many subscribers encodes once;
    it is None until an adapter needs it (most messages have few subscribers).
    """

    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False
    origin: str = ""
    protocol: str = ""
    published_at: float = 0.0
    encoded: dict[object, bytes] | None = field(default=None, repr=False)


class Subscriber(Protocol):
    """Anything that receives routed messages (an MQTT session, a WebSocket, ...)."""

    @property
    def subscriber_id(self) -> str:
        """A key unique among live subscribers (for example ``mqtt:<client id>``)."""
        ...

    def deliver(self, message: Message, qos: int, retained: bool) -> None:
        """Take ``message`` at ``qos`` (already the minimum of the two); never block.

        ``retained`` is True when the message comes from the retained store on
        subscription, False for a live publication.
        """
        ...


class Router:
    """Subscriptions and retained messages, shared by every protocol adapter."""

    __slots__ = ("_fanout_cache", "_retained", "_subscriptions", "_tree")

    def __init__(self) -> None:
        self._tree: TopicTree[str, tuple[Subscriber, int]] = TopicTree()
        self._subscriptions: dict[str, dict[str, int]] = {}
        self._retained: dict[str, Message] = {}
        # topic -> deduplicated [(subscriber, qos)], valid until subscriptions change.
        self._fanout_cache: dict[str, list[tuple[Subscriber, int]]] = {}

    # --- subscriptions -----------------------------------------------------------------

    def subscribe(self, subscriber: Subscriber, topic_filter: str, qos: int) -> bool:
        """Subscribe (or update the QoS of) ``subscriber`` on ``topic_filter``; True if new."""
        sid = subscriber.subscriber_id
        new = self._tree.add(topic_filter, sid, (subscriber, qos))
        self._subscriptions.setdefault(sid, {})[topic_filter] = qos
        self._fanout_cache.clear()
        return new

    def unsubscribe(self, subscriber: Subscriber, topic_filter: str) -> bool:
        """Remove one subscription; True if it existed."""
        sid = subscriber.subscriber_id
        removed = self._tree.remove(topic_filter, sid)
        filters = self._subscriptions.get(sid)
        if filters is not None:
            filters.pop(topic_filter, None)
            if not filters:
                del self._subscriptions[sid]
        if removed:
            self._fanout_cache.clear()
        return removed

    def unsubscribe_all(self, subscriber: Subscriber) -> int:
        """Remove every subscription of ``subscriber``; return how many there were."""
        sid = subscriber.subscriber_id
        filters = self._subscriptions.pop(sid, {})
        for topic_filter in filters:
            self._tree.remove(topic_filter, sid)
        if filters:
            self._fanout_cache.clear()
        return len(filters)

    def subscriptions(self, subscriber_id: str) -> dict[str, int]:
        """The filters (with granted QoS) of one subscriber (a copy)."""
        return dict(self._subscriptions.get(subscriber_id, {}))

    @property
    def subscription_count(self) -> int:
        """The number of (subscriber, filter) subscriptions."""
        return len(self._tree)

    def subscribers_of(self, topic: str) -> list[tuple[Subscriber, int]]:
        """Every subscriber matching ``topic`` once, at its highest granted QoS."""
        cached = self._fanout_cache.get(topic)
        if cached is not None:
            return cached
        best: dict[str, tuple[Subscriber, int]] = {}
        for sid, (subscriber, qos) in self._tree.match(topic):
            seen = best.get(sid)
            if seen is None or seen[1] < qos:
                best[sid] = (subscriber, qos)
        out = list(best.values())
        if len(self._fanout_cache) >= 50_000:
            self._fanout_cache.clear()
        self._fanout_cache[topic] = out
        return out

    # --- publishing --------------------------------------------------------------------

    def publish(self, message: Message) -> int:
        """Store/clear the retained copy if asked, deliver to subscribers; return the count."""
        if message.retain:
            if message.payload:
                self._retained[message.topic] = message
            else:
                # An empty retained payload clears the topic (and is still delivered).
                self._retained.pop(message.topic, None)
        targets = self.subscribers_of(message.topic)
        mqos = message.qos
        delivered = 0
        for subscriber, qos in targets:
            try:
                subscriber.deliver(message, qos if qos < mqos else mqos, False)
            except Exception:
                # One adapter's bug must not cost the publisher or other subscribers.
                log.exception("subscriber %s failed to take a message", subscriber.subscriber_id)
                continue
            delivered += 1
        return delivered

    # --- retained ----------------------------------------------------------------------

    def retained(self, topic: str) -> Message | None:
        """The retained message of ``topic``, if any."""
        return self._retained.get(topic)

    def retained_matching(self, topic_filter: str) -> list[Message]:
        """Every retained message whose topic matches ``topic_filter``, sorted by topic."""
        if "+" not in topic_filter and "#" not in topic_filter:
            found = self._retained.get(topic_filter)
            return [] if found is None else [found]
        return [
            self._retained[topic]
            for topic in sorted(self._retained)
            if matches(topic_filter, topic)
        ]

    def deliver_retained(self, subscriber: Subscriber, topic_filter: str, qos: int) -> int:
        """Send ``subscriber`` the retained messages matching ``topic_filter``; return the count."""
        found = self.retained_matching(topic_filter)
        for message in found:
            subscriber.deliver(message, min(qos, message.qos), True)
        return len(found)

    @property
    def retained_count(self) -> int:
        """How many topics hold a retained message."""
        return len(self._retained)
