"""The protocol-agnostic topic router: subscriptions, retained messages, fan-out.

Every protocol adapter (MQTT, HTTP, WebSocket) publishes :class:`Message` objects
here and registers :class:`Subscriber` objects; a message published over HTTP
reaches MQTT and WebSocket subscribers alike. The router decides nothing about
authorization (that is :mod:`edge.core.policy`, applied by :mod:`edge.core.hub`).

A :class:`Message` may carry :class:`Metadata` (MQTT 5's content type, user
properties, response topic, correlation data, payload format and expiry) whatever
protocol it came from; an adapter that cannot express it (MQTT 3.1.1) delivers the
payload alone.

Shared subscriptions (``$share/{group}/{filter}``) are kept here, so members may sit
on any protocol: the tree holds one :class:`SharedGroup` per (group, filter), and
each message goes to one member of each group, in turn.

Delivery is synchronous and must not block: ``Subscriber.deliver`` queues or writes
and returns. A subscriber holding several matching subscriptions receives one copy
at the highest granted QoS (the choice Mosquitto makes by default).

The router raises no exceptions of its own; a subscriber whose ``deliver`` raises
(an adapter's bug) is logged and skipped, so the publisher and the other
subscribers are not affected.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from edge.core.topics import TopicTree, matches

log = logging.getLogger("edgesim.router")


@dataclass(slots=True, eq=False)
class Metadata:
    """What travels with a message beside its payload (MQTT 5's application properties).

    ``expires_at`` is a deadline on the publisher's adapter clock (monotonic
    seconds; None: never); an expired message is never delivered. ``user_properties``
    keep their order and repeats. ``payload_format`` 1 means UTF-8 text.
    """

    content_type: str | None = None
    response_topic: str | None = None
    correlation_data: bytes | None = None
    user_properties: list[tuple[str, str]] = field(default_factory=list)
    payload_format: int | None = None
    expires_at: float | None = None


@dataclass(init=False, slots=True, eq=False)
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
    #: MQTT 5 style metadata, None for most messages (3.1.1, plain HTTP).
    meta: Metadata | None = None
    #: The publishing subscriber's id when it is one (MQTT's No Local needs it).
    source: str = ""
    #: The id a persistence store gave this message (0: not stored); set by the
    #: store when a durable session first takes the message, so that a fan-out to
    #: several durable sessions stores the message once.
    store_id: int = 0

    def __init__(  # written out: compiled, it is native; dataclass's would be interpreted
        self,
        topic: str,
        payload: bytes,
        qos: int = 0,
        retain: bool = False,
        origin: str = "",
        protocol: str = "",
        published_at: float = 0.0,
        encoded: dict[object, bytes] | None = None,
        meta: Metadata | None = None,
        source: str = "",
        store_id: int = 0,
    ) -> None:
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain
        self.origin = origin
        self.protocol = protocol
        self.published_at = published_at
        self.encoded = encoded
        self.meta = meta
        self.source = source
        self.store_id = store_id


SHARE_PREFIX = "$share/"


def split_shared(topic_filter: str) -> tuple[str, str] | None:
    """``(group, filter)`` of a ``$share/{group}/{filter}``; None for other filters."""
    if not topic_filter.startswith(SHARE_PREFIX):
        return None
    group, sep, rest = topic_filter[len(SHARE_PREFIX) :].partition("/")
    if not sep or not group or not rest or "+" in group or "#" in group:
        return None
    return group, rest


class SharedGroup:
    """The members of one shared subscription; a message goes to one of them, in turn."""

    __slots__ = ("_next", "members", "subscriber_id")

    def __init__(self, subscriber_id: str) -> None:
        self.subscriber_id = subscriber_id
        #: subscriber id -> (subscriber, granted QoS), in joining order.
        self.members: dict[str, tuple[Subscriber, int]] = {}
        self._next = 0

    def deliver(self, message: Message, qos: int, retained: bool) -> None:
        """Give ``message`` to the next member that is online (round robin).

        A member whose ``online`` attribute is False (an MQTT session kept for a
        disconnected client) is passed over while another member is online; when
        none is, the turn's member takes it (a persistent session queues it).
        Members without the attribute count as online.
        """
        members = list(self.members.values())
        count = len(members)
        if not count:
            return
        index = self._next % count
        for step in range(count):
            candidate = (index + step) % count
            if getattr(members[candidate][0], "online", True):
                index = candidate
                break
        self._next = index + 1
        subscriber, granted = members[index]
        mqos = message.qos
        subscriber.deliver(message, granted if granted < mqos else mqos, retained)


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

    __slots__ = (
        "_expiring",
        "_fanout_cache",
        "_retained",
        "_sequence",
        "_shared",
        "_subscriptions",
        "_tree",
        "on_retain",
        "shared_by_bus",
    )

    def __init__(self) -> None:
        #: Called with (topic, message or None) whenever the retained copy of a topic
        #: is set or cleared; a persistence store records it (None: nobody listens).
        self.on_retain: Callable[[str, Message | None], None] | None = None
        self._tree: TopicTree[str, tuple[Subscriber, int]] = TopicTree()
        self._subscriptions: dict[str, dict[str, int]] = {}
        self._retained: dict[str, Message] = {}
        # Retained messages with a Message Expiry, soonest first: (deadline, sequence,
        # topic, message); the sequence keeps the tuples from comparing further.
        self._expiring: list[tuple[float, int, str, Message]] = []
        self._sequence = 0
        # topic -> deduplicated [(subscriber, qos)], valid until subscriptions change.
        self._fanout_cache: dict[str, list[tuple[Subscriber, int]]] = {}
        # "$share/group/filter" -> its group (also in the tree, under "filter").
        self._shared: dict[str, SharedGroup] = {}
        #: Set by a bus between workers: shared groups then stay out of the fan-out,
        #: and the bus hands each message to one group member in the whole cluster
        #: (:meth:`deliver_shared`), not one per worker.
        self.shared_by_bus = False

    # --- subscriptions -----------------------------------------------------------------

    def subscribe(self, subscriber: Subscriber, topic_filter: str, qos: int) -> bool:
        """Subscribe (or update the QoS of) ``subscriber`` on ``topic_filter``; True if new."""
        sid = subscriber.subscriber_id
        shared = split_shared(topic_filter)
        if shared is not None:
            group = self._shared.get(topic_filter)
            if group is None:
                group = self._shared[topic_filter] = SharedGroup(topic_filter)
                if not self.shared_by_bus:
                    self._tree.add(shared[1], topic_filter, (group, 2))
            new = sid not in group.members
            group.members[sid] = (subscriber, qos)
        else:
            new = self._tree.add(topic_filter, sid, (subscriber, qos))
        self._subscriptions.setdefault(sid, {})[topic_filter] = qos
        self._fanout_cache.clear()
        return new

    def _remove(self, topic_filter: str, sid: str) -> bool:
        group = self._shared.get(topic_filter)
        if group is None:
            return self._tree.remove(topic_filter, sid)
        removed = group.members.pop(sid, None) is not None
        if not group.members:
            del self._shared[topic_filter]
            shared = split_shared(topic_filter)
            assert shared is not None
            if not self.shared_by_bus:
                self._tree.remove(shared[1], topic_filter)
        return removed

    def unsubscribe(self, subscriber: Subscriber, topic_filter: str) -> bool:
        """Remove one subscription; True if it existed."""
        sid = subscriber.subscriber_id
        removed = self._remove(topic_filter, sid)
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
            self._remove(topic_filter, sid)
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
                meta = message.meta
                if meta is not None and meta.expires_at is not None:
                    self._sequence += 1
                    heapq.heappush(
                        self._expiring, (meta.expires_at, self._sequence, message.topic, message)
                    )
            else:
                # An empty retained payload clears the topic (and is still delivered).
                self._retained.pop(message.topic, None)
            if self.on_retain is not None:
                self.on_retain(message.topic, message if message.payload else None)
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

    def deliver_shared(self, topic_filter: str, message: Message) -> int:
        """Give ``message`` to one member of the shared group ``topic_filter`` (1 if one took it).

        The bus calls this when the cluster chose this worker for the group's copy;
        the topic is checked here, since the bus's interest is coarser than MQTT's.
        """
        group = self._shared.get(topic_filter)
        shared = split_shared(topic_filter)
        if group is None or shared is None or not group.members:
            return 0
        if not matches(shared[1], message.topic):
            return 0
        try:
            group.deliver(message, message.qos, False)
        except Exception:
            log.exception("shared group %s failed to take a message", topic_filter)
            return 0
        return 1

    # --- retained ----------------------------------------------------------------------

    def purge_expired(self, now: float) -> int:
        """Drop the retained messages whose Message Expiry has passed at ``now``.

        ``now`` is on the clock of the messages' deadlines (monotonic seconds; see
        :class:`Metadata`). Returns how many were dropped. Cheap when none is due:
        one comparison.
        """
        expiring = self._expiring
        dropped = 0
        while expiring and expiring[0][0] <= now:
            _, _, topic, message = heapq.heappop(expiring)
            # Only if it is still the topic's retained message (not replaced or cleared).
            if self._retained.get(topic) is message:
                del self._retained[topic]
                dropped += 1
        return dropped

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
        """Send ``subscriber`` the retained messages matching ``topic_filter``; return the count.

        None for a shared subscription (MQTT 5 section 4.8.2: retained messages are
        not sent to its members on subscribing).
        """
        if topic_filter.startswith(SHARE_PREFIX):
            return 0
        found = self.retained_matching(topic_filter)
        for message in found:
            subscriber.deliver(message, min(qos, message.qos), True)
        return len(found)

    def restore_retained(self, message: Message) -> None:
        """Put back a retained message from a persistence store, delivering nothing."""
        self._retained[message.topic] = message

    @property
    def retained_count(self) -> int:
        """How many topics hold a retained message."""
        return len(self._retained)
