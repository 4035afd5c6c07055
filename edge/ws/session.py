"""One ``/ws`` connection against the core, sans-I/O: text in, texts out.

The protocol is documented in :mod:`edge.ws.jsonproto`. :class:`JsonWsSession`
takes each client text message (:meth:`JsonWsSession.receive_text`), asks the
core, and queues the replies; it is also the connection's subscriber, so the
router's deliveries queue ``message`` ops. :meth:`JsonWsSession.data_to_send`
drains the queue; ``wakeup`` (if set) is called when deliveries arrive between
two client messages, so the I/O layer knows to drain.

Deliveries are at most once: the granted QoS is 0 whatever was published. A
client that does not read falls behind; past ``max_queue`` unsent messages the
session asks to close with 1008 (see :attr:`JsonWsSession.close_request`).
"""

from __future__ import annotations

import collections
import itertools
import time
from collections.abc import Callable

from edge.core.events import EventLog
from edge.core.hub import EdgeCore
from edge.core.router import Message
from edge.core.session import SessionInfo
from edge.ws.coreops import publish_bytes
from edge.ws.jsonproto import (
    CLOSE_POLICY,
    MAX_TOPIC_BYTES,
    OpError,
    Publish,
    Subscribe,
    Unsubscribe,
    encode_ack,
    encode_error,
    encode_message,
    parse_op,
)

__all__ = ["JsonWsSession"]

_ids = itertools.count(1)


class JsonWsSession:
    """The ``/ws`` JSON protocol for one connection (see :mod:`edge.ws.jsonproto`).

    :meth:`receive_text` raises :class:`~edge.ws.jsonproto.WsCloseError` when a
    message is not the protocol; the I/O layer closes with its code.
    """

    def __init__(
        self,
        core: EdgeCore,
        session: SessionInfo,
        *,
        events: EventLog | None = None,
        max_queue: int = 1000,
        max_topic_bytes: int = MAX_TOPIC_BYTES,
    ) -> None:
        self._core = core
        self._session = session
        self._events = events
        self._max_queue = max_queue
        self._max_topic_bytes = max_topic_bytes
        self._out: collections.deque[str] = collections.deque()
        self._filters: set[str] = set()
        self._closed = False
        self._in_call = False
        #: Unique id of this subscriber in the router.
        self.subscriber_id = f"ws:{session.connection_id}:{next(_ids)}"
        #: Called when deliveries were queued outside :meth:`receive_text`.
        self.wakeup: Callable[[], None] | None = None
        #: ``(code, reason)`` once the session wants the connection closed.
        self.close_request: tuple[int, str] | None = None
        #: Deliveries dropped because the client fell behind.
        self.dropped = 0

    @property
    def subscriptions(self) -> frozenset[str]:
        """The filters this connection is subscribed to."""
        return frozenset(self._filters)

    def receive_text(self, text: str) -> None:
        """Handle one client message; replies are queued for :meth:`data_to_send`."""
        if self._closed:
            return
        try:
            op = parse_op(text, max_topic_bytes=self._max_topic_bytes)
        except OpError as exc:
            self._out.append(encode_error(exc.op_id, exc.reason))
            return
        self._in_call = True
        try:
            self._handle(op)
        finally:
            self._in_call = False

    def _handle(self, op: Subscribe | Unsubscribe | Publish) -> None:
        if isinstance(op, Subscribe):
            before = len(self._out)
            granted = self._core.subscribe(self, op.topic, 0, self._session)
            if granted is None:
                self._out.append(encode_error(op.id, f"not authorized to subscribe to {op.topic}"))
            else:
                self._filters.add(op.topic)
                # The client must see the ack before the retained messages the
                # core delivered during subscribe(), so the ack goes in front.
                self._out.insert(before, encode_ack(op.id, granted_qos=0))
        elif isinstance(op, Unsubscribe):
            if op.topic in self._filters:
                self._core.unsubscribe(self, op.topic)
                self._filters.discard(op.topic)
            self._out.append(encode_ack(op.id))
        elif isinstance(op, Publish):
            result = publish_bytes(
                self._core,
                self._session,
                op.topic,
                op.payload,
                qos=op.qos,
                retain=op.retain,
                protocol="ws",
                meta=op.meta,
            )
            if not result.allowed:
                reason = result.reason or "refused"
                self._out.append(encode_error(op.id, reason))
            elif op.qos == 1:
                self._out.append(encode_ack(op.id, delivered=result.delivered))
            elif op.id is not None:
                self._out.append(encode_ack(op.id))

    def deliver(self, message: Message, qos: int, retained: bool) -> None:
        """Queue a ``message`` op (the core calls this; it never blocks)."""
        if self._closed:
            return
        if len(self._out) >= self._max_queue:
            self.dropped += 1
            if self.close_request is None:
                self.close_request = (
                    CLOSE_POLICY,
                    f"client too slow: more than {self._max_queue} messages unsent",
                )
                if self._events is not None:
                    self._events.emit(
                        "ws.overflow",
                        "error",
                        identity=str(self._session.identity),
                        peer=self._session.peer,
                        topic=message.topic,
                        reason=self.close_request[1],
                    )
            self._wake()
            return
        meta = message.meta
        now = 0.0
        if meta is not None and meta.expires_at is not None:
            now = time.monotonic()
            if meta.expires_at <= now:
                return  # expired: never delivered (MQTT 5 Message Expiry)
        self._out.append(
            encode_message(
                message.topic, message.payload, qos=0, retain=retained, meta=meta, now=now
            )
        )
        self._session.messages_out += 1
        self._wake()

    def _wake(self) -> None:
        # Inside receive_text the I/O layer drains afterwards anyway; waking it
        # there would send deliveries ahead of the reply they belong after.
        if self.wakeup is not None and not self._in_call:
            self.wakeup()

    def data_to_send(self) -> list[str]:
        """Return and clear the queued texts, in order."""
        out = list(self._out)
        self._out.clear()
        return out

    def close(self) -> None:
        """Drop every subscription (the connection ended); idempotent."""
        if self._closed:
            return
        self._closed = True
        for topic_filter in sorted(self._filters):
            self._core.unsubscribe(self, topic_filter)
        self._filters.clear()
        self._out.clear()
