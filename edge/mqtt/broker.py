"""The MQTT 3.1/3.1.1 broker, sans-I/O: shared session state plus one state machine per connection.

:class:`MqttBroker` holds what outlives a connection: sessions by (identity, client id) (clean
and persistent), their subscriptions (kept in the core's router), QoS 1/2 messages
in flight and queued while offline. :class:`MqttConnection` is one connection:
bytes in through :meth:`~MqttConnection.receive_data`, bytes out through
:meth:`~MqttConnection.data_to_send`, time through :meth:`~MqttConnection.tick`.
It never touches a socket; the I/O layer (:mod:`edge.mqtt.protocol`, or a test)
moves the bytes, closes when :attr:`~MqttConnection.should_close` is set, and
reports the end with :meth:`~MqttConnection.connection_lost`.

Deliveries routed from other connections land in this connection's output buffer
at any time; the connection then calls its ``wakeup`` callback (set by the I/O
layer) once, when the buffer goes from empty to non-empty.

Behaviour worth knowing:

- the first packet must be CONNECT; CONNACK codes: 1 unsupported protocol level,
  2 identifier rejected (empty client id with clean session 0, or MQTT 3.1),
  5 not authorized (client-id rule of the policy, or a will the policy denies);
  user name and password are ignored (devices authenticate by certificate);
- sessions belong to a device: the key is (identity, client id), so two devices
  with equal client ids (equal names under two certificate sets, or a free
  client-id policy) never see, resume or kick out each other's sessions; a second
  connection of the *same* device with the same client id takes the session over
  and the old connection is closed (its will is published: no DISCONNECT);
- keepalive: a client silent for 1.5 x its keepalive is disconnected;
- QoS 2 inbound is "method B": the message is stored on PUBLISH and routed once on
  PUBREL, so a re-sent PUBLISH (same packet id) is never routed twice; like
  Mosquitto, an unchanged re-send is accepted once per connection, a second one is a
  protocol error, and a different message under the same id replaces the first;
- in-flight outbound QoS 1/2 messages are re-sent with DUP on reconnect of a
  persistent session; beyond ``max_inflight`` messages wait in a queue of at most
  ``max_queued`` (then they are dropped and counted);
- the ``$`` namespace belongs to the edge: devices' publications there are
  acknowledged but not routed, and wills there are refused.

Errors: every decoding or protocol error (:class:`~edge.mqtt.errors.MqttError`)
closes the connection with ``close_reason`` naming it; nothing escapes
``receive_data``.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from edge.core.hub import EdgeCore
from edge.core.router import Message
from edge.core.session import SessionInfo
from edge.mqtt.codec import (
    CONNACK_BAD_PROTOCOL_VERSION,
    CONNACK_IDENTIFIER_REJECTED,
    CONNACK_NOT_AUTHORIZED,
    SUBACK_FAILURE,
    Connect,
    Disconnect,
    Packet,
    Parser,
    Pingreq,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Subscribe,
    Unsubscribe,
    Will,
    encode_publish,
    encode_varint_prefix,
)
from edge.mqtt.errors import MqttConfigError, MqttError, ProtocolViolation

__all__ = ["MqttBroker", "MqttConfig", "MqttConnection", "MqttSession"]

_PINGRESP = b"\xd0\x00"
# Keys of this adapter's encodings in Message.encoded (strings: their hash is cached).
_KEY_Q0 = "mqtt:0"
_KEY_Q0R = "mqtt:0r"
_KEYS_HEAD = ("", "", "mqtt:1", "mqtt:1r", "mqtt:2", "mqtt:2r")
# States of an outbound QoS 1/2 message.
_AWAIT_ACK = 0  # PUBLISH sent; waiting for PUBACK (QoS 1) or PUBREC (QoS 2)
_AWAIT_COMP = 1  # PUBREL sent; waiting for PUBCOMP


@dataclass(frozen=True, kw_only=True, slots=True)
class MqttConfig:
    """Broker limits and behaviour (the ``[mqtt]`` table of the server configuration).

    ``max_packet_size`` bytes per packet (fixed header included); ``connect_timeout``
    seconds for the CONNECT after accept; ``max_inflight`` unacknowledged outbound
    QoS 1/2 messages per session, then up to ``max_queued`` wait; ``retry_interval``
    re-sends unacknowledged messages while connected (None: only on reconnect, as
    MQTT 3.1.1 prescribes); ``allow_zero_length_client_id`` for clean sessions;
    ``max_keepalive`` caps the client's keepalive; ``max_write_buffer`` bytes of
    unsent output beyond which QoS 0 deliveries to that client are shed;
    ``session_expiry`` seconds an offline persistent session is kept (None:
    until the client cleans it), applied by :meth:`MqttBroker.expire_sessions`.
    """

    max_packet_size: int = 1 << 20
    connect_timeout: float = 10.0
    max_inflight: int = 20
    max_queued: int = 1000
    retry_interval: float | None = None
    allow_zero_length_client_id: bool = True
    max_keepalive: int = 65535
    max_write_buffer: int = 4 << 20
    session_expiry: float | None = None

    def __post_init__(self) -> None:
        for name in ("max_packet_size", "max_inflight", "max_write_buffer", "max_keepalive"):
            if getattr(self, name) < 1:
                raise MqttConfigError(f"mqtt.{name}: must be at least 1")
        if self.max_queued < 0:
            raise MqttConfigError("mqtt.max_queued: must not be negative")
        if self.connect_timeout <= 0:
            raise MqttConfigError("mqtt.connect_timeout: must be positive")
        for name in ("retry_interval", "session_expiry"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise MqttConfigError(f"mqtt.{name}: must be positive when set")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = "mqtt") -> MqttConfig:
        """Build from the server's ``[mqtt]`` TOML table; errors name the key."""
        kinds = _CONFIG_KINDS
        values: dict[str, Any] = {}
        for key, value in data.items():
            expected = kinds.get(key)
            if expected is None:
                raise MqttConfigError(
                    f"{where}: unknown key {key!r} (known: {', '.join(sorted(kinds))})"
                )
            if value is None and key in ("retry_interval", "session_expiry"):
                values[key] = None
                continue
            # bool is an int in Python: refuse it where a number is meant, and vice versa.
            if isinstance(value, bool) != (expected == (bool,)) or not isinstance(value, expected):
                kind = "true or false" if expected == (bool,) else "a number"
                raise MqttConfigError(f"{where}.{key}: expected {kind}, got {value!r}")
            values[key] = value
        try:
            return cls(**values)
        except MqttConfigError as exc:
            raise MqttConfigError(exc.reason.replace("mqtt.", f"{where}.", 1)) from None


# The TOML types each MqttConfig field accepts, written out: the annotations are
# not available as types at run time once the module is compiled (edge.compiled).
_CONFIG_KINDS: dict[str, tuple[type, ...]] = {
    "max_packet_size": (int,),
    "connect_timeout": (int, float),
    "max_inflight": (int,),
    "max_queued": (int,),
    "retry_interval": (int, float),
    "allow_zero_length_client_id": (bool,),
    "max_keepalive": (int,),
    "max_write_buffer": (int,),
    "session_expiry": (int, float),
}


class _Outgoing:
    """One outbound QoS 1/2 message in flight."""

    __slots__ = ("message", "qos", "retain", "sent_at", "state")

    def __init__(self, message: Message, qos: int, retain: bool, sent_at: float) -> None:
        self.message = message
        self.qos = qos
        self.retain = retain
        self.state = _AWAIT_ACK
        self.sent_at = sent_at


class _Incoming:
    """One inbound QoS 2 message waiting for its PUBREL."""

    __slots__ = ("connection_id", "message", "resent")

    def __init__(self, message: Message, connection_id: int) -> None:
        self.message = message
        self.connection_id = connection_id
        self.resent = 0


#: The queue of every session that has queued nothing yet (never appended to:
#: MqttSession.deliver gives a session its own deque first).
_NO_QUEUE: deque[tuple[Message, int, bool]] = deque(maxlen=0)


class MqttSession:
    """The state of one client id: what survives reconnects when clean session is 0.

    It is the router's :class:`~edge.core.router.Subscriber` for this client.
    """

    __slots__ = (
        "_next_pid",
        "broker",
        "clean",
        "client_id",
        "connection",
        "incoming_qos2",
        "inflight",
        "info",
        "key",
        "offline_since",
        "queue",
        "subscriber_id",
    )

    def __init__(self, broker: MqttBroker, client_id: str, clean: bool, info: SessionInfo) -> None:
        self.broker = broker
        self.client_id = client_id
        self.key = (str(info.identity), client_id)
        self.subscriber_id = f"mqtt:{info.identity}:{client_id}"
        self.clean = clean
        self.info = info
        self.connection: MqttConnection | None = None
        self.offline_since: float | None = None
        self.inflight: dict[int, _Outgoing] = {}
        # Most sessions never queue: they share one empty deque until their first
        # offline message (an empty deque is about 600 bytes per connected device).
        self.queue: deque[tuple[Message, int, bool]] = _NO_QUEUE
        # Inbound QoS 2 messages received, not yet released: packet id -> the message
        # and how often this connection re-sent it unchanged.
        self.incoming_qos2: dict[int, _Incoming] = {}
        self._next_pid = 1

    def deliver(self, message: Message, qos: int, retained: bool) -> None:
        """Router entry point: send now, queue, or drop (QoS 0 while offline)."""
        conn = self.connection
        if qos == 0:
            if conn is not None:
                conn.send_qos0(message, retained)
            else:
                self.broker.core.metrics.messages_dropped += 1
            return
        if conn is not None and len(self.inflight) < self.broker.config.max_inflight:
            self._send_new(conn, message, qos, retained)
        elif len(self.queue) < self.broker.config.max_queued:
            if self.queue is _NO_QUEUE:
                self.queue = deque()
            self.queue.append((message, qos, retained))
        else:
            self.broker.core.metrics.messages_dropped += 1

    def _allocate_pid(self) -> int:
        pid = self._next_pid
        inflight = self.inflight
        while pid in inflight:
            pid = pid + 1 if pid < 0xFFFF else 1
        self._next_pid = pid + 1 if pid < 0xFFFF else 1
        return pid

    def _send_new(self, conn: MqttConnection, message: Message, qos: int, retain: bool) -> None:
        pid = self._allocate_pid()
        self.inflight[pid] = _Outgoing(message, qos, retain, conn.now)
        conn.send_qos12(message, qos, retain, pid)

    def pump(self) -> None:
        """Move queued messages into flight while there is room and a connection."""
        conn = self.connection
        limit = self.broker.config.max_inflight
        while self.queue and conn is not None and len(self.inflight) < limit:
            message, qos, retain = self.queue.popleft()
            self._send_new(conn, message, qos, retain)

    def resend_inflight(self, conn: MqttConnection) -> None:
        """After a reconnect: re-send unacknowledged PUBLISH (DUP) and PUBREL, in order."""
        for pid, entry in self.inflight.items():
            entry.sent_at = conn.now
            if entry.state == _AWAIT_ACK:
                conn.write(
                    encode_publish(
                        entry.message.topic.encode(),
                        entry.message.payload,
                        entry.qos,
                        entry.retain,
                        True,
                        pid,
                    )
                )
            else:
                conn.write(bytes((0x62, 2)) + pid.to_bytes(2, "big"))


class MqttBroker:
    """Sessions and connections of one MQTT endpoint, on top of an :class:`EdgeCore`.

    ``clock`` gives the current time in seconds (monotonic); tests pass a fake one.
    """

    def __init__(
        self,
        core: EdgeCore,
        config: MqttConfig | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.core = core
        self.config = config or MqttConfig()
        self.clock = clock
        #: Sessions by (identity string, client id).
        self.sessions: dict[tuple[str, str], MqttSession] = {}
        self.connections: set[MqttConnection] = set()

    def session(self, identity: object, client_id: str) -> MqttSession | None:
        """The session of ``client_id`` for the device ``identity`` (``set/name``), if any."""
        return self.sessions.get((str(identity), client_id))

    def expire_sessions(self, now: float) -> int:
        """Drop persistent sessions offline for ``session_expiry`` seconds; return how many.

        The server calls this now and then (it is cheap when nothing expires).
        """
        expiry = self.config.session_expiry
        if expiry is None:
            return 0
        expired = [
            session
            for session in self.sessions.values()
            if session.connection is None
            and session.offline_since is not None
            and now >= session.offline_since + expiry
        ]
        for session in expired:
            self.core.unsubscribe_all(session)
            del self.sessions[session.key]
            self.core.metrics.messages_dropped += len(session.queue) + len(session.inflight)
        return len(expired)

    def close(self, reason: str = "the edge is shutting down") -> int:
        """Close every connection (no wills: the devices did nothing wrong); return how many.

        Each connection's I/O layer is woken to flush and close its transport.
        """
        connections = list(self.connections)
        for conn in connections:
            conn.will = None
            conn.close(reason)
            conn.wake()
        return len(connections)

    def connection(self, session_info: SessionInfo) -> MqttConnection:
        """Create the state machine for a newly accepted connection."""
        return MqttConnection(self, session_info, self.clock())


class MqttConnection:
    """One client connection, sans-I/O (see the module docstring)."""

    __slots__ = (
        "_connect_deadline",
        "_graceful",
        "_out",
        "_out_len",
        "_shut",
        "broker",
        "client_id",
        "close_reason",
        "connected",
        "core",
        "info",
        "keepalive",
        "last_received",
        "now",
        "origin",
        "parser",
        "protocol_level",
        "session",
        "should_close",
        "wakeup",
        "will",
    )

    def __init__(self, broker: MqttBroker, session_info: SessionInfo, now: float) -> None:
        self.broker = broker
        self.core = broker.core
        self.info = session_info
        self.origin = str(session_info.identity)
        self.now = now
        self.last_received = now
        self._connect_deadline: float | None = now + broker.config.connect_timeout
        self.parser = Parser(broker.config.max_packet_size, server_side=True)
        self._out: list[bytes] = []
        self._out_len = 0
        self.should_close = False
        self.close_reason = ""
        self.connected = False
        self.client_id = ""
        self.protocol_level = 4
        self.keepalive = 0
        self.will: Will | None = None
        self.session: MqttSession | None = None
        self.wakeup: Callable[[], None] | None = None
        self._graceful = False
        self._shut = False
        broker.connections.add(self)
        broker.core.metrics.connections_opened += 1

    # --- I/O facing API ----------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Process bytes from the client; replies and deliveries go to the output buffer."""
        if self.should_close:
            return
        now = self.now = self.broker.clock()
        self.last_received = now
        try:
            packets = self.parser.feed(data)
            for packet in packets:
                self._handle(packet)
                if self.should_close:
                    return
        except MqttError as exc:
            self.close(exc.reason)

    def data_to_send(self) -> bytes:
        """Take every byte waiting to go to the client."""
        out = self._out
        if not out:
            return b""
        # One chunk (the usual case) goes out without a copy.
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        self._out_len = 0
        return data

    @property
    def pending_bytes(self) -> int:
        """How many bytes wait in the output buffer."""
        return self._out_len

    def tick(self, now: float) -> float | None:
        """Apply timeouts at time ``now``; return the next deadline (None: none)."""
        self.now = now
        if self.should_close:
            return None
        if self._connect_deadline is not None:
            if now >= self._connect_deadline:
                self.close("no CONNECT within the connect timeout")
                return None
            return self._connect_deadline
        deadline: float | None = None
        if self.keepalive:
            deadline = self.last_received + self.keepalive * 1.5
            if now >= deadline:
                self.close(f"keepalive timeout ({self.keepalive} s x 1.5 without a packet)")
                return None
        retry = self.broker.config.retry_interval
        session = self.session
        if retry is not None and session is not None and session.inflight:
            oldest = min(e.sent_at for e in session.inflight.values())
            if now >= oldest + retry:
                session.resend_inflight(self)
                oldest = now
            due = oldest + retry
            deadline = due if deadline is None else min(deadline, due)
        return deadline

    def connection_lost(self, reason: str = "connection lost") -> None:
        """The transport is gone; publishes the will unless the client sent DISCONNECT."""
        if not self.should_close:
            self.should_close = True
            self.close_reason = reason
        self._shutdown()

    def close(self, reason: str) -> None:
        """Close the connection from the broker's side (the will is published)."""
        if self.should_close:
            return
        self.should_close = True
        self.close_reason = reason
        self._shutdown()

    # --- output ------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Append bytes for the client and wake the I/O layer if the buffer was empty."""
        out = self._out
        out.append(data)
        self._out_len += len(data)
        if len(out) == 1 and self.wakeup is not None:
            self.wakeup()

    def send_qos0(self, message: Message, retain: bool) -> None:
        """Write a QoS 0 PUBLISH of ``message``, encoded once per message and retain flag."""
        if self._out_len > self.broker.config.max_write_buffer:
            # The client is not reading: QoS 0 is best effort, so shed it here.
            self.core.metrics.messages_dropped += 1
            return
        cache = message.encoded
        if cache is None:
            cache = message.encoded = {}
        key = _KEY_Q0R if retain else _KEY_Q0
        data = cache.get(key)
        if data is None:
            data = cache[key] = encode_publish(
                message.topic.encode(), message.payload, 0, retain, False, None
            )
        self.write(data)

    def send_qos12(self, message: Message, qos: int, retain: bool, pid: int) -> None:
        """Write a QoS 1/2 PUBLISH; the part before the packet id is encoded once."""
        cache = message.encoded
        if cache is None:
            cache = message.encoded = {}
        key = _KEYS_HEAD[qos * 2 + retain]
        head = cache.get(key)
        if head is None:
            topic = message.topic.encode()
            remaining = 4 + len(topic) + len(message.payload)
            first = 0x30 | (qos << 1) | (1 if retain else 0)
            head = cache[key] = (
                encode_varint_prefix(first, remaining) + len(topic).to_bytes(2, "big") + topic
            )
        self.write(b"".join((head, pid.to_bytes(2, "big"), message.payload)))

    # --- packet handling ---------------------------------------------------------------

    def _handle(self, packet: Packet) -> None:
        if not self.connected:
            if not isinstance(packet, Connect):
                raise ProtocolViolation(f"first packet was {type(packet).__name__}, not CONNECT")
            self._on_connect(packet)
            return
        # Most frequent first: PUBLISH and its acknowledgements.
        if isinstance(packet, Publish):
            self._on_publish(packet)
        elif isinstance(packet, Puback):
            self._on_puback(packet.packet_id)
        elif isinstance(packet, Pubrec):
            self._on_pubrec(packet.packet_id)
        elif isinstance(packet, Pubrel):
            self._on_pubrel(packet.packet_id)
        elif isinstance(packet, Pubcomp):
            self._on_pubcomp(packet.packet_id)
        elif isinstance(packet, Pingreq):
            self.write(_PINGRESP)
        elif isinstance(packet, Subscribe):
            self._on_subscribe(packet)
        elif isinstance(packet, Unsubscribe):
            self._on_unsubscribe(packet)
        elif isinstance(packet, Disconnect):
            self._graceful = True
            self.will = None
            self.close("client sent DISCONNECT")
        else:  # CONNECT again (the server-side parser yields nothing else)
            raise ProtocolViolation(f"unexpected {type(packet).__name__} (second CONNECT?)")

    def _refuse(self, code: int, reason: str) -> None:
        self.write(bytes((0x20, 2, 0, code)))
        self.core.events.emit(
            "mqtt.refused",
            "refused",
            identity=self.origin,
            peer=self.info.peer,
            return_code=code,
            reason=reason,
        )
        self.close(reason)

    def _on_connect(self, p: Connect) -> None:
        broker = self.broker
        expected = 3 if p.protocol_name == "MQIsdp" else 4
        if p.protocol_level != expected:
            self._refuse(
                CONNACK_BAD_PROTOCOL_VERSION,
                f"unsupported protocol {p.protocol_name!r} level {p.protocol_level}",
            )
            return
        self.protocol_level = p.protocol_level
        client_id = p.client_id
        if not client_id:
            if p.protocol_level == 3 or not p.clean_session:
                self._refuse(CONNACK_IDENTIFIER_REJECTED, "empty client id")
                return
            if not broker.config.allow_zero_length_client_id:
                self._refuse(CONNACK_IDENTIFIER_REJECTED, "empty client id not allowed")
                return
            # The identity is the natural id for a device; "free" policies get a unique one.
            client_id = (
                f"auto-{self.info.connection_id}"
                if broker.core.policy.config.client_id == "free"
                else self.info.identity.name
            )
        reason = self.core.check_client_id(self.info, client_id)
        if reason is not None:
            self._refuse(CONNACK_NOT_AUTHORIZED, reason)
            return
        if p.will is not None:
            if p.will.topic.startswith("$"):
                raise ProtocolViolation(
                    f"will topic {p.will.topic!r} is in the $ namespace reserved for the edge"
                )
            denied = self.core.policy.may_publish(self.info.identity, client_id, p.will.topic)
            if denied is not None:
                self._refuse(CONNACK_NOT_AUTHORIZED, f"will: {denied}")
                return
        self.client_id = client_id
        self.will = p.will
        self.keepalive = min(p.keepalive, broker.config.max_keepalive)
        self._connect_deadline = None
        self.connected = True

        key = (self.origin, client_id)
        previous = broker.sessions.get(key)
        if previous is not None and previous.connection is not None:
            old = previous.connection
            old.close(f"session taken over by connection {self.info.peer}")
            old.wake()
            # Closing a clean session's connection discarded that session.
            previous = broker.sessions.get(key)
        present = False
        if previous is not None and (p.clean_session or previous.clean):
            self.core.unsubscribe_all(previous)
            del broker.sessions[key]
            previous = None
        if previous is None:
            session = MqttSession(broker, client_id, p.clean_session, self.info)
            broker.sessions[key] = session
        else:
            session = previous
            session.info = self.info
            session.offline_since = None
            present = True
        session.connection = self
        self.session = session
        # MQTT 3.1 has no session-present flag: its CONNACK byte 1 is reserved (0).
        self.write(bytes((0x20, 2, 1 if present and p.protocol_level == 4 else 0, 0)))
        self.core.events.emit(
            "mqtt.connected",
            "accepted",
            identity=self.origin,
            peer=self.info.peer,
            client_id=client_id,
            clean_session=p.clean_session,
            session_present=present,
            keepalive=self.keepalive,
            protocol_level=p.protocol_level,
        )
        if present:
            session.resend_inflight(self)
            session.pump()

    def wake(self) -> None:
        """Tell the I/O layer to look at this connection (output or close pending)."""
        if self.wakeup is not None:
            self.wakeup()

    def _route(
        self, topic: str, payload: bytes, qos: int, retain: bool, raw: bytes | None = None
    ) -> None:
        message = Message(topic, payload, qos, retain, self.origin, "mqtt", self.now)
        if raw is not None:
            message.encoded = {_KEY_Q0: raw}
        self.core.publish(message, self.info, client_id=self.client_id)

    def _on_publish(self, p: Publish) -> None:
        qos = p.qos
        if qos == 0:
            self._route(p.topic, p.payload, 0, p.retain, p.raw)
        elif qos == 1:
            self._route(p.topic, p.payload, 1, p.retain)
            assert p.packet_id is not None  # the parser guarantees it for QoS > 0
            self.write(b"\x40\x02" + p.packet_id.to_bytes(2, "big"))
        else:
            pid = p.packet_id
            assert pid is not None
            session = self.session
            assert session is not None
            held = session.incoming_qos2.get(pid)
            conn_id = self.info.connection_id
            if (
                held is None
                or held.message.topic != p.topic
                or held.message.payload != p.payload
                or held.message.retain != p.retain
            ):
                # New, or the id reused for another message before PUBREL: the client
                # gave up on the old one, and the newer message is the one released.
                message = Message(p.topic, p.payload, 2, p.retain, self.origin, "mqtt", self.now)
                session.incoming_qos2[pid] = _Incoming(message, conn_id)
            elif held.connection_id != conn_id:
                # Re-sent after a reconnect: expected, and the count starts again.
                held.connection_id = conn_id
                held.resent = 0
            else:
                held.resent += 1
                if held.resent > 1:
                    # One re-send is a lost PUBREC; more is a client looping on us.
                    raise ProtocolViolation(
                        f"QoS 2 message {pid} re-sent {held.resent} times before PUBREL"
                    )
            self.write(b"\x50\x02" + pid.to_bytes(2, "big"))

    def _on_pubrel(self, pid: int) -> None:
        session = self.session
        assert session is not None
        held = session.incoming_qos2.pop(pid, None)
        if held is not None:
            message = held.message
            self._route(message.topic, message.payload, 2, message.retain)
        self.write(b"\x70\x02" + pid.to_bytes(2, "big"))

    def _on_puback(self, pid: int) -> None:
        session = self.session
        assert session is not None
        entry = session.inflight.get(pid)
        if entry is None:
            return  # unknown id: an old duplicate; harmless
        if entry.qos != 1:
            raise ProtocolViolation(f"PUBACK for QoS 2 message {pid}")
        del session.inflight[pid]
        if session.queue:
            session.pump()

    def _on_pubrec(self, pid: int) -> None:
        session = self.session
        assert session is not None
        entry = session.inflight.get(pid)
        if entry is not None:
            if entry.qos != 2:
                raise ProtocolViolation(f"PUBREC for QoS 1 message {pid}")
            entry.state = _AWAIT_COMP
        # Unknown ids get a PUBREL too, so a client that lost our state can finish.
        self.write(bytes((0x62, 2)) + pid.to_bytes(2, "big"))

    def _on_pubcomp(self, pid: int) -> None:
        session = self.session
        assert session is not None
        entry = session.inflight.get(pid)
        if entry is None:
            return
        if entry.qos != 2:
            raise ProtocolViolation(f"PUBCOMP for QoS 1 message {pid}")
        if entry.state != _AWAIT_COMP:
            raise ProtocolViolation(f"PUBCOMP before PUBREC for message {pid}")
        del session.inflight[pid]
        if session.queue:
            session.pump()

    def _on_subscribe(self, p: Subscribe) -> None:
        session = self.session
        assert session is not None
        codes: list[int] = []
        for topic_filter, qos in p.topics:
            granted = self.core.subscribe(
                session, topic_filter, qos, self.info, client_id=self.client_id, send_retained=False
            )
            codes.append(SUBACK_FAILURE if granted is None else granted)
        body = p.packet_id.to_bytes(2, "big") + bytes(codes)
        self.write(encode_varint_prefix(0x90, len(body)) + body)
        # Retained messages follow the SUBACK (MQTT 3.1.1 section 3.8.4).
        for (topic_filter, _), code in zip(p.topics, codes, strict=True):
            if code != SUBACK_FAILURE:
                self.core.deliver_retained(session, topic_filter, code)

    def _on_unsubscribe(self, p: Unsubscribe) -> None:
        session = self.session
        assert session is not None
        for topic_filter in p.topics:
            self.core.unsubscribe(session, topic_filter)
        self.write(b"\xb0\x02" + p.packet_id.to_bytes(2, "big"))

    # --- teardown ----------------------------------------------------------------------

    def _shutdown(self) -> None:
        if self._shut:
            return
        self._shut = True
        broker = self.broker
        broker.connections.discard(self)
        broker.core.metrics.connections_closed += 1
        session = self.session
        if session is not None and session.connection is self:
            session.connection = None
            session.offline_since = self.now
            if session.clean:
                self.core.unsubscribe_all(session)
                if broker.sessions.get(session.key) is session:
                    del broker.sessions[session.key]
        if self.connected:
            self.core.events.emit(
                "mqtt.disconnected",
                "closed",
                identity=self.origin,
                peer=self.info.peer,
                client_id=self.client_id,
                reason=self.close_reason,
                graceful=self._graceful,
            )
        will = self.will
        self.will = None
        if will is not None and not self._graceful:
            self.core.publish(
                Message(
                    will.topic, will.payload, will.qos, will.retain, self.origin, "mqtt", self.now
                ),
                self.info,
                client_id=self.client_id,
            )
