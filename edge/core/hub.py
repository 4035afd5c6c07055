"""EdgeCore: the one object every protocol adapter receives.

It bundles the :class:`~edge.core.router.Router`, the :class:`~edge.core.policy.Policy`,
the :class:`~edge.core.handlers.HandlerRegistry`, the
:class:`~edge.core.events.EventLog` and the :class:`~edge.core.metrics.Metrics`, and
applies them in one order for every protocol::

    publish:   policy -> (denied: event, result) -> router fan-out -> handlers
    subscribe: policy -> (denied: event, None) -> router -> retained delivery

``session`` is the authenticated connection (:class:`SessionInfo`); ``None`` means
the edge itself (its handlers, the admin API), to which device policy does not apply.
Devices never publish into the ``$`` namespace (``$SYS/...``): it is the edge's.
Adapters validate topic names before calling (:func:`edge.core.topics.valid_name`);
the MQTT codec already has.
Adapters pass the protocol's client id when they have one (MQTT); others leave it
``None`` and the identity's name stands in.

Nothing here raises on a denial: decisions are results and ``policy.denied`` events.
"""

from __future__ import annotations

from typing import NamedTuple

from edge.core.bus import Bus
from edge.core.events import EventLog
from edge.core.handlers import HandlerRegistry
from edge.core.metrics import Metrics
from edge.core.policy import Policy
from edge.core.router import Message, Router, Subscriber, split_shared
from edge.core.session import SessionInfo

#: After the first ``policy.denied`` event for a (connection, action, topic), only
#: every DENIAL_SUMMARY-th repeat becomes an event (with ``count``).
DENIAL_SUMMARY = 1000

#: The reason given when a device publishes into the edge's own ``$`` namespace.
RESERVED = "the $ namespace is reserved for the edge"


class PublishResult(NamedTuple):
    """The outcome of :meth:`EdgeCore.publish`."""

    allowed: bool
    reason: str
    delivered: int


class EdgeCore:
    """Router + policy + handlers + events + metrics, shared by all adapters."""

    __slots__ = ("_denials", "bus", "events", "handlers", "metrics", "policy", "router")

    def __init__(
        self,
        events: EventLog,
        policy: Policy,
        *,
        handlers: HandlerRegistry | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.events = events
        self.policy = policy
        self.handlers = handlers if handlers is not None else HandlerRegistry()
        self.metrics = metrics if metrics is not None else Metrics()
        self.router = Router()
        #: The bus to the other workers (:mod:`edge.core.bus`); None in one process.
        self.bus: Bus | None = None
        # Denials seen per (connection, action, topic): repeats are summarized.
        self._denials: dict[tuple[int, str, str], int] = {}

    def check_client_id(self, session: SessionInfo, client_id: str) -> str | None:
        """None if ``session`` may use ``client_id``, else the reason (also an event)."""
        reason = self.policy.check_client_id(session.identity, client_id)
        if reason is not None:
            self._denied(session, "connect", client_id, reason)
        return reason

    def check_publish(
        self, session: SessionInfo, topic: str, client_id: str | None = None
    ) -> str | None:
        """None if ``session`` may publish to ``topic``, else the reason (also an event).

        For adapters that must answer before routing (an MQTT 5 PUBREC); :meth:`publish`
        applies the same checks.
        """
        if topic[:1] == "$":
            self._denied(session, "publish", topic, RESERVED)
            return RESERVED
        if self.policy.open_access:
            return None
        identity = session.identity
        reason = self.policy.may_publish(
            identity, client_id if client_id is not None else identity.name, topic
        )
        if reason is not None:
            self._denied(session, "publish", topic, reason)
        return reason

    def publish(
        self, message: Message, session: SessionInfo | None, *, client_id: str | None = None
    ) -> PublishResult:
        """Authorize and route ``message``; run matching handlers."""
        metrics = self.metrics
        metrics.messages_in += 1
        if session is not None:
            session.messages_in += 1
        if session is not None and message.topic[:1] == "$":
            # The "$" namespace belongs to the edge, whatever the policy says.
            metrics.publish_denied += 1
            self._denied(session, "publish", message.topic, RESERVED)
            return PublishResult(False, RESERVED, 0)
        if session is not None and not self.policy.open_access:
            identity = session.identity
            reason = self.policy.may_publish(
                identity, client_id if client_id is not None else identity.name, message.topic
            )
            if reason is not None:
                metrics.publish_denied += 1
                self._denied(session, "publish", message.topic, reason)
                return PublishResult(False, reason, 0)
        delivered = self.router.publish(message)
        metrics.messages_out += delivered
        bus = self.bus
        if bus is not None:
            bus.forward(message)
        if len(self.handlers):
            self.handlers.dispatch(self, message, session)
        return PublishResult(True, "", delivered)

    def subscribe(
        self,
        subscriber: Subscriber,
        topic_filter: str,
        qos: int,
        session: SessionInfo | None,
        *,
        client_id: str | None = None,
        send_retained: bool = True,
    ) -> int | None:
        """Authorize and add a subscription; return the granted QoS, or None if denied.

        With ``send_retained`` the matching retained messages are delivered at once;
        MQTT passes False and calls :meth:`deliver_retained` after its SUBACK, which
        must precede them on the wire.
        """
        if session is not None and not self.policy.open_access:
            identity = session.identity
            # A shared subscription is judged by its filter, not its group name.
            shared = split_shared(topic_filter)
            reason = self.policy.may_subscribe(
                identity,
                client_id if client_id is not None else identity.name,
                topic_filter if shared is None else shared[1],
            )
            if reason is not None:
                self.metrics.subscribe_denied += 1
                self._denied(session, "subscribe", topic_filter, reason)
                return None
        granted = min(qos, 2)
        if self.router.subscribe(subscriber, topic_filter, granted) and self.bus is not None:
            self.bus.watch(topic_filter)
        if send_retained:
            self.router.deliver_retained(subscriber, topic_filter, granted)
        return granted

    def deliver_retained(self, subscriber: Subscriber, topic_filter: str, qos: int) -> int:
        """Deliver the retained messages matching ``topic_filter``; return the count."""
        return self.router.deliver_retained(subscriber, topic_filter, qos)

    def unsubscribe(self, subscriber: Subscriber, topic_filter: str) -> bool:
        """Remove one subscription; True if it existed."""
        removed = self.router.unsubscribe(subscriber, topic_filter)
        if removed and self.bus is not None:
            self.bus.unwatch(topic_filter)
        return removed

    def unsubscribe_all(self, subscriber: Subscriber) -> int:
        """Remove every subscription of ``subscriber``."""
        bus = self.bus
        if bus is None:
            return self.router.unsubscribe_all(subscriber)
        filters = self.router.subscriptions(subscriber.subscriber_id)
        count = self.router.unsubscribe_all(subscriber)
        for topic_filter in filters:
            bus.unwatch(topic_filter)
        return count

    def purge_expired(self, now: float) -> int:
        """Drop retained messages whose Message Expiry passed at ``now``; return how many.

        ``now`` is monotonic seconds, the clock every adapter sets deadlines on.
        """
        return self.router.purge_expired(now)

    def retained(self, topic: str) -> Message | None:
        """The retained message on ``topic``, if any."""
        return self.router.retained(topic)

    def snapshot(self) -> dict[str, int]:
        """Counters plus gauges (subscriptions, retained topics, handlers) for the admin API."""
        out = self.metrics.snapshot()
        out["subscriptions"] = self.router.subscription_count
        out["retained"] = self.router.retained_count
        out["handlers"] = len(self.handlers)
        return out

    def _denied(self, session: SessionInfo, action: str, target: str, reason: str) -> None:
        # A device looping on a forbidden topic must not flood the event log: the
        # first denial per connection, action and topic is an event, then every
        # DENIAL_SUMMARY-th with the running count (metrics count every one).
        key = (session.connection_id, action, target)
        count = self._denials.get(key, 0) + 1
        if len(self._denials) >= 10_000 and count == 1:
            self._denials.clear()
        self._denials[key] = count
        if count != 1 and count % DENIAL_SUMMARY:
            return
        self.events.emit(
            "policy.denied",
            "denied",
            identity=str(session.identity),
            peer=session.peer,
            action=action,
            topic=target,
            reason=reason,
            count=count,
        )
