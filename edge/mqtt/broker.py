"""The MQTT 3.1/3.1.1/5.0 broker, sans-I/O: shared session state plus one state machine per connection.

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

MQTT 5 lives at the connection's edge: the CONNECT's level sets ``v5``, which selects
the CONNACK, the acknowledgements with reason codes (and Reason Strings from the same
decisions that produce events), the PUBLISH encoding with properties, and a
DISCONNECT with a reason code before every close the broker decides. Sessions,
routing and QoS flows are the same objects for every level; a session's
``expiry`` is MQTT 5's Session Expiry Interval (None: 3.1.1, the broker's
``session_expiry``).

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
  acknowledged but not routed, and wills there are refused;
- with a store (:mod:`edge.mqtt.store`), persistent sessions, their subscriptions and
  outbound messages, inbound QoS 2 messages awaiting PUBREL and retained messages are
  recorded as they change, and PUBACK/PUBREC/PUBREL/PUBCOMP wait until the store has
  committed what was recorded before them; without one (persistence off) none of
  this runs: the hot paths test one attribute.

Errors: every decoding or protocol error (:class:`~edge.mqtt.errors.MqttError`)
closes the connection with ``close_reason`` naming it; nothing escapes
``receive_data``.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from edge.core.hub import EdgeCore
from edge.core.router import Message, Metadata, split_shared
from edge.core.session import DeviceIdentity, SessionInfo
from edge.core.topics import matches
from edge.mqtt.codec import (
    CONNACK_BAD_PROTOCOL_VERSION,
    CONNACK_IDENTIFIER_REJECTED,
    CONNACK_NOT_AUTHORIZED,
    SUBACK_FAILURE,
    Auth,
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
    encode_publish5,
    encode_varint,
    encode_varint_prefix,
)
from edge.mqtt.errors import MqttConfigError, MqttError, ProtocolViolation
from edge.mqtt.profiles import apply_profile, mosquitto_code
from edge.mqtt.properties import Properties
from edge.mqtt.store import MqttStore, decode_meta, message_row

__all__ = ["NEVER", "MqttBroker", "MqttConfig", "MqttConnection", "MqttSession"]


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _capabilities(config: MqttConfig) -> bytes:
    """The CONNACK capability properties ``config`` states (without their length)."""
    parts: list[bytes] = []
    if config.connack_properties == "mosquitto":
        # Mosquitto's three, in its order (the conformance data expects these bytes).
        parts.append(b"\x22" + config.topic_alias_maximum.to_bytes(2, "big"))
        parts.append(b"\x27" + config.max_packet_size.to_bytes(4, "big"))
        parts.append(b"\x21" + config.receive_maximum.to_bytes(2, "big"))
    else:
        parts.append(b"\x21" + config.receive_maximum.to_bytes(2, "big"))
        parts.append(b"\x22" + config.topic_alias_maximum.to_bytes(2, "big"))
        if config.maximum_qos < 2:  # the value 2 may not be sent (3.2.2.3.4)
            parts.append(bytes((0x24, config.maximum_qos)))
        parts.append(bytes((0x25, int(config.retain_available))))
        parts.append(b"\x27" + config.max_packet_size.to_bytes(4, "big"))
        parts.append(bytes((0x28, int(config.wildcard_subscription_available))))
        parts.append(bytes((0x29, int(config.subscription_identifier_available))))
        parts.append(bytes((0x2A, int(config.shared_subscription_available))))
    return b"".join(parts)


def _props5(meta: Metadata | None, sub_ids: tuple[int, ...], alias: bytes, remaining: int) -> bytes:
    """The property block of an outgoing PUBLISH, in identifier order.

    ``remaining`` is the Message Expiry Interval left (0: the message has none).
    """
    parts: list[bytes] = []
    if meta is not None:
        if meta.payload_format is not None:
            parts.append(bytes((0x01, meta.payload_format)))
        if remaining:
            parts.append(b"\x02" + remaining.to_bytes(4, "big"))
        if meta.content_type is not None:
            parts.append(b"\x03" + _str(meta.content_type))
        if meta.response_topic is not None:
            parts.append(b"\x08" + _str(meta.response_topic))
        if meta.correlation_data is not None:
            data = meta.correlation_data
            parts.append(b"\x09" + len(data).to_bytes(2, "big") + data)
    for sub_id in sub_ids:
        parts.append(b"\x0b" + encode_varint(sub_id))
    if alias:
        parts.append(alias)
    if meta is not None:
        for key, value in meta.user_properties:
            parts.append(b"\x26" + _str(key) + _str(value))
    body = b"".join(parts)
    return encode_varint(len(body)) + body


def _str(text: str) -> bytes:
    raw = text.encode()
    return len(raw).to_bytes(2, "big") + raw


_PINGRESP = b"\xd0\x00"
#: What a client may send, by class, as the packet type numbers the metrics count by.
_PACKET_NUMBER: dict[type, int] = {
    Connect: 1,
    Publish: 3,
    Puback: 4,
    Pubrec: 5,
    Pubrel: 6,
    Pubcomp: 7,
    Subscribe: 8,
    Unsubscribe: 10,
    Pingreq: 12,
    Disconnect: 14,
    Auth: 15,
}
#: The Reason String of every refused AUTH packet or Authentication Method.
_CERT_ONLY = (
    "devices authenticate by certificate (mutual TLS) here: no AUTH exchange"
    " or Authentication Method is supported"
)
# Keys of this adapter's encodings in Message.encoded (strings: their hash is cached).
_KEY_Q0 = "mqtt:0"
_KEY_Q0R = "mqtt:0r"
_KEYS_HEAD = ("", "", "mqtt:1", "mqtt:1r", "mqtt:2", "mqtt:2r")
# MQTT 5 encodings: whole QoS 0 packets; for QoS 1/2 the head before the packet id
# (by qos, retain, dup) and the properties plus payload after it.
_KEY5_Q0 = "mqtt5:0"
_KEY5_Q0R = "mqtt5:0r"
_KEY5_TAIL = "mqtt5:tail"
_KEYS5_HEAD = tuple(f"mqtt5:h{i}" for i in range(12))  # by qos * 4 + retain * 2 + dup
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

    MQTT 5 only (announced in the CONNACK, enforced with the reason code the spec
    gives): ``receive_maximum`` QoS 2 messages a client may have unreleased
    (0x93 beyond); ``topic_alias_maximum`` client-to-edge aliases (0x94 beyond);
    ``topic_alias_out`` lets the edge send aliases too, up to the client's own
    Topic Alias Maximum (off by default, as Mosquitto: some clients mishandle them);
    ``maximum_qos`` (0x9B above), ``retain_available`` (0x9A), the
    ``*_available`` switches (SUBACK 0xA2 / 0x9E, DISCONNECT 0xA1);
    ``server_keep_alive`` overrides the client's keepalive when set;
    ``max_session_expiry`` caps the client's Session Expiry Interval (None: no cap);
    ``reason_strings`` adds a Reason String to refusals (the client may still
    opt out with Request Problem Information = 0); ``reason_codes`` is
    ``"spec"`` (OASIS text) or ``"mosquitto"`` (Mosquitto's choices where the two
    differ, :data:`edge.mqtt.profiles.MOSQUITTO_CODES`); ``connack_properties``
    is ``"all"`` (every capability stated) or ``"mosquitto"`` (the three Mosquitto
    sends, in its order). Profile limits (None: none; :mod:`edge.mqtt.profiles`):
    ``max_client_id_length``, ``max_topic_length`` bytes, ``max_topic_levels``,
    ``max_filters_per_subscribe``, ``max_payload`` bytes, ``max_publish_rate``
    PUBLISH per second and ``max_throughput`` bytes per second per connection;
    ``profile`` names the profile in effect (events carry it).

    ``queue_qos0_messages`` (Mosquitto's option of that name, off by default):
    QoS 0 messages for an offline persistent session are queued like QoS 1/2
    ones (within ``max_queued``, and persisted with them) instead of dropped.
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
    receive_maximum: int = 100
    topic_alias_maximum: int = 10
    topic_alias_out: bool = False
    maximum_qos: int = 2
    retain_available: bool = True
    wildcard_subscription_available: bool = True
    subscription_identifier_available: bool = True
    shared_subscription_available: bool = True
    server_keep_alive: int | None = None
    max_session_expiry: int | None = None
    reason_strings: bool = True
    reason_codes: str = "spec"
    connack_properties: str = "all"
    max_client_id_length: int | None = None
    max_topic_length: int | None = None
    max_topic_levels: int | None = None
    max_filters_per_subscribe: int | None = None
    max_payload: int | None = None
    max_publish_rate: float | None = None
    max_throughput: float | None = None
    profile: str = ""
    queue_qos0_messages: bool = False

    def __post_init__(self) -> None:
        for name in ("max_packet_size", "max_inflight", "max_write_buffer", "max_keepalive"):
            if getattr(self, name) < 1:
                raise MqttConfigError(f"mqtt.{name}: must be at least 1")
        if not 1 <= self.receive_maximum <= 65535:
            raise MqttConfigError("mqtt.receive_maximum: must be 1 to 65535")
        if not 0 <= self.topic_alias_maximum <= 65535:
            raise MqttConfigError("mqtt.topic_alias_maximum: must be 0 to 65535")
        if self.maximum_qos not in (0, 1, 2):
            raise MqttConfigError("mqtt.maximum_qos: must be 0, 1 or 2")
        if self.reason_codes not in ("spec", "mosquitto"):
            raise MqttConfigError("mqtt.reason_codes: must be 'spec' or 'mosquitto'")
        if self.connack_properties not in ("all", "mosquitto"):
            raise MqttConfigError("mqtt.connack_properties: must be 'all' or 'mosquitto'")
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
            if value is None and key in _OPTIONAL:
                values[key] = None
                continue
            # bool is an int in Python: refuse it where a number is meant, and vice versa.
            if isinstance(value, bool) != (expected == (bool,)) or not isinstance(value, expected):
                kind = "true or false" if expected == (bool,) else "a number"
                raise MqttConfigError(f"{where}.{key}: expected {kind}, got {value!r}")
            values[key] = value
        profile = values.pop("profile", "")
        try:
            if profile:
                # The profile's row first, then the table's own keys over it.
                base: MqttConfig = apply_profile(cls(), profile)
                return dataclasses.replace(base, **values)
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
    "receive_maximum": (int,),
    "topic_alias_maximum": (int,),
    "topic_alias_out": (bool,),
    "maximum_qos": (int,),
    "retain_available": (bool,),
    "wildcard_subscription_available": (bool,),
    "subscription_identifier_available": (bool,),
    "shared_subscription_available": (bool,),
    "server_keep_alive": (int,),
    "max_session_expiry": (int,),
    "reason_strings": (bool,),
    "reason_codes": (str,),
    "connack_properties": (str,),
    "max_client_id_length": (int,),
    "max_topic_length": (int,),
    "max_topic_levels": (int,),
    "max_filters_per_subscribe": (int,),
    "max_payload": (int,),
    "max_publish_rate": (int, float),
    "max_throughput": (int, float),
    "profile": (str,),
    "queue_qos0_messages": (bool,),
}
#: Keys whose value may be None (absent in TOML, or set by a profile).
_OPTIONAL = frozenset(
    {
        "retry_interval",
        "session_expiry",
        "server_keep_alive",
        "max_session_expiry",
        "max_client_id_length",
        "max_topic_length",
        "max_topic_levels",
        "max_filters_per_subscribe",
        "max_payload",
        "max_publish_rate",
        "max_throughput",
    }
)


class _Outgoing:
    """One outbound QoS 1/2 message in flight."""

    __slots__ = ("message", "qos", "retain", "sent_at", "seq", "state", "sub_ids")

    def __init__(
        self,
        message: Message,
        qos: int,
        retain: bool,
        sent_at: float,
        sub_ids: tuple[int, ...],
        seq: int = 0,
    ) -> None:
        self.message = message
        self.qos = qos
        self.retain = retain
        self.state = _AWAIT_ACK
        self.sent_at = sent_at
        self.sub_ids = sub_ids
        #: The store's row of this entry (0: not stored).
        self.seq = seq


class _Incoming:
    """One inbound QoS 2 message waiting for its PUBREL."""

    __slots__ = ("connection_id", "message", "resent")

    def __init__(self, message: Message, connection_id: int) -> None:
        self.message = message
        self.connection_id = connection_id
        self.resent = 0


#: The queue of every session that has queued nothing yet (never appended to:
#: MqttSession.deliver gives a session its own deque first).
_NO_QUEUE: deque[tuple[Message, int, bool, tuple[int, ...], int]] = deque(maxlen=0)
_NO_IDS: tuple[int, ...] = ()
#: The 0xFFFFFFFF Session Expiry Interval: the session never expires.
NEVER = 0xFFFFFFFF


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
        "durable",
        "expiry",
        "incoming_qos2",
        "inflight",
        "inflight_limit",
        "info",
        "key",
        "offline_since",
        "options5",
        "queue",
        "special5",
        "stored",
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
        # Entries: (message, qos, retain, subscription ids, store seq or 0).
        self.queue: deque[tuple[Message, int, bool, tuple[int, ...], int]] = _NO_QUEUE
        #: Seconds this session outlives its connection (MQTT 5's Session Expiry
        #: Interval); None: the broker's ``session_expiry`` (MQTT 3.1.1).
        self.expiry: float | None = None
        #: The receiving side's limit on messages in flight (MQTT 5 Receive Maximum).
        self.inflight_limit = broker.config.max_inflight
        #: MQTT 5 subscriptions: filter -> (options byte, subscription id, filter
        #: without its $share prefix). ``special5`` counts those with No Local,
        #: Retain As Published or an id: without any, delivery skips the lookup.
        self.options5: dict[str, tuple[int, int, str]] = {}
        self.special5 = 0
        # Inbound QoS 2 messages received, not yet released: packet id -> the message
        # and how often this connection re-sent it unchanged.
        self.incoming_qos2: dict[int, _Incoming] = {}
        self._next_pid = 1
        #: Persistence (a broker with a store): ``durable`` sessions store their
        #: subscriptions and outbound messages; ``stored`` says something of this
        #: session's (durable state, or an inbound QoS 2 message) is in the store.
        self.durable = False
        self.stored = False

    @property
    def online(self) -> bool:
        """True while a connection is attached (shared subscriptions prefer such members)."""
        return self.connection is not None

    def deliver(self, message: Message, qos: int, retained: bool) -> None:
        """Router entry point: send now, queue, or drop (QoS 0 while offline)."""
        conn = self.connection
        sub_ids = _NO_IDS
        # One test on the 3.1.1 hot path: metadata or MQTT 5 options take the slow one.
        if message.meta is not None or self.special5:
            meta = message.meta
            if (
                meta is not None
                and meta.expires_at is not None
                and conn is not None
                and meta.expires_at <= self.broker.clock()
            ):
                # Expired (MQTT 5 Message Expiry): never delivered, whatever the level.
                self.broker.core.metrics.messages_dropped += 1
                return
            if self.special5:
                resolved = self._resolve5(message, retained)
                if resolved is None:
                    return
                qos, retained, sub_ids = resolved
        if qos == 0:
            if conn is not None:
                if conn.v5:
                    conn.send5(message, 0, retained, None, sub_ids, False)
                else:
                    conn.send_qos0(message, retained)
            elif (
                self.broker.config.queue_qos0_messages
                and len(self.queue) < self.broker.config.max_queued
            ):
                self._enqueue(message, 0, retained, sub_ids)
            else:
                self.broker.core.metrics.messages_dropped += 1
            return
        if conn is not None and len(self.inflight) < self.inflight_limit:
            self._send_new(conn, message, qos, retained, sub_ids)
        elif len(self.queue) < self.broker.config.max_queued:
            self._enqueue(message, qos, retained, sub_ids)
        else:
            self.broker.core.metrics.messages_dropped += 1

    def _enqueue(self, message: Message, qos: int, retain: bool, sub_ids: tuple[int, ...]) -> None:
        if self.queue is _NO_QUEUE:
            self.queue = deque()
        seq = self._track(0, message, qos, retain, sub_ids, None) if self.durable else 0
        self.queue.append((message, qos, retain, sub_ids, seq))

    def _track(
        self,
        seq: int,
        message: Message,
        qos: int,
        retain: bool,
        sub_ids: tuple[int, ...],
        pid: int | None,
    ) -> int:
        """Store an outbound entry (or, with ``seq``, its new packet id); return its seq."""
        store = self.broker.store
        assert store is not None
        if seq:
            store.record(("outpid", seq, pid))
            return seq
        if not message.store_id:
            message.store_id = store.new_message_id()
            store.record(("msg", message.store_id, *message_row(message, self.broker.clock)))
        refs = self.broker.message_refs
        refs[message.store_id] = refs.get(message.store_id, 0) + 1
        seq = store.new_seq()
        key = self.key
        store.record(
            ("out", seq, key[0], key[1], message.store_id, qos, retain, sub_ids, pid, _AWAIT_ACK)
        )
        return seq

    def _untrack(self, seq: int, message: Message) -> None:
        """Remove a stored outbound entry, and its message when no entry needs it."""
        store = self.broker.store
        assert store is not None
        store.record(("delout", seq))
        self.broker.release_message(message)

    def _resolve5(
        self, message: Message, retained: bool
    ) -> tuple[int, bool, tuple[int, ...]] | None:
        """QoS, retain flag and subscription ids under this session's MQTT 5 options.

        None when only No Local subscriptions match a message of this session's own.
        """
        own = message.source == self.subscriber_id
        topic = message.topic
        best = -1
        rap = retained
        ids: list[int] = []
        for options, sub_id, pure in self.options5.values():
            if not matches(pure, topic):
                continue
            if options & 0x04 and own:  # No Local
                continue
            if options & 0x03 > best:
                best = options & 0x03
            if options & 0x08:  # Retain As Published
                rap = rap or message.retain
            if sub_id:
                ids.append(sub_id)
        if best < 0:
            return None
        return (best if best < message.qos else message.qos), rap, tuple(ids)

    def _allocate_pid(self) -> int:
        pid = self._next_pid
        inflight = self.inflight
        while pid in inflight:
            pid = pid + 1 if pid < 0xFFFF else 1
        self._next_pid = pid + 1 if pid < 0xFFFF else 1
        return pid

    def _send_new(
        self,
        conn: MqttConnection,
        message: Message,
        qos: int,
        retain: bool,
        sub_ids: tuple[int, ...] = _NO_IDS,
        seq: int = 0,
    ) -> None:
        pid = self._allocate_pid()
        if conn.v5:
            # Expired, or larger than the client takes: dropped, not in flight.
            if conn.send5(message, qos, retain, pid, sub_ids, False):
                if self.durable:
                    seq = self._track(seq, message, qos, retain, sub_ids, pid)
                self.inflight[pid] = _Outgoing(message, qos, retain, conn.now, sub_ids, seq)
            elif seq:
                self._untrack(seq, message)
            return
        meta = message.meta
        if (
            meta is not None
            and meta.expires_at is not None
            and meta.expires_at <= conn.broker.clock()
        ):
            self.broker.core.metrics.messages_dropped += 1  # expired while queued
            if seq:
                self._untrack(seq, message)
            return
        if self.durable:
            seq = self._track(seq, message, qos, retain, sub_ids, pid)
        self.inflight[pid] = _Outgoing(message, qos, retain, conn.now, sub_ids, seq)
        conn.send_qos12(message, qos, retain, pid)

    def pump(self) -> None:
        """Move queued messages into flight while there is room and a connection."""
        conn = self.connection
        limit = self.inflight_limit
        while self.queue and conn is not None and len(self.inflight) < limit:
            message, qos, retain, sub_ids, seq = self.queue.popleft()
            if qos == 0:  # queued under queue_qos0_messages
                if conn.v5:
                    conn.send5(message, 0, retain, None, sub_ids, False)
                else:
                    conn.send_qos0(message, retain)
                if seq:
                    self._untrack(seq, message)
                continue
            self._send_new(conn, message, qos, retain, sub_ids, seq)

    def resend_inflight(self, conn: MqttConnection) -> None:
        """After a reconnect: re-send unacknowledged PUBLISH (DUP) and PUBREL, in order."""
        for pid, entry in list(self.inflight.items()):
            entry.sent_at = conn.now
            if entry.state == _AWAIT_ACK and conn.v5:
                # An expired message is not re-sent (MQTT 5 section 3.3.2.3.3).
                if not conn.send5(entry.message, entry.qos, entry.retain, pid, entry.sub_ids, True):
                    del self.inflight[pid]
                    if entry.seq:
                        self._untrack(entry.seq, entry.message)
            elif entry.state == _AWAIT_ACK:
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
    ``store`` makes sessions, their messages and retained messages durable
    (:mod:`edge.mqtt.store`; call :meth:`restore` once before serving); None:
    persistence off.
    """

    def __init__(
        self,
        core: EdgeCore,
        config: MqttConfig | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        store: MqttStore | None = None,
    ) -> None:
        self.core = core
        self.config = config or MqttConfig()
        self.clock = clock
        self.store = store
        #: Stored message id -> how many stored outbound entries need it.
        self.message_refs: dict[int, int] = {}
        if store is not None:
            core.router.on_retain = self._on_retain
        #: Sessions by (identity string, client id).
        self.sessions: dict[tuple[str, str], MqttSession] = {}
        self.connections: set[MqttConnection] = set()
        #: MQTT 5 wills waiting for their Will Delay Interval, by session key:
        #: (due time, the message, the publisher's session, its client id).
        self.pending_wills: dict[tuple[str, str], tuple[float, Message, SessionInfo, str]] = {}
        self._next_check = 0.0
        c = self.config
        #: The capability properties of every MQTT 5 CONNACK, encoded once.
        self.connack5_properties = _capabilities(c)
        #: Whether a profile limit on PUBLISH is set (most edges: no check at all).
        self.publish_limits = any(
            value is not None
            for value in (
                c.max_topic_length,
                c.max_topic_levels,
                c.max_payload,
                c.max_publish_rate,
                c.max_throughput,
            )
        )

    def session(self, identity: object, client_id: str) -> MqttSession | None:
        """The session of ``client_id`` for the device ``identity`` (``set/name``), if any."""
        return self.sessions.get((str(identity), client_id))

    def expire_sessions(self, now: float) -> int:
        """Drop offline sessions past their expiry, publish due wills; return how many expired.

        A session's expiry is its MQTT 5 Session Expiry Interval, else the broker's
        ``session_expiry`` (MQTT 3.1.1: None keeps it until the client cleans it).
        Connections call this at most once a second (:meth:`maintain`).
        """
        default = self.config.session_expiry
        expired = []
        for session in self.sessions.values():
            if session.connection is not None or session.offline_since is None:
                continue
            limit = session.expiry if session.expiry is not None else default
            if limit is not None and limit < NEVER and now >= session.offline_since + limit:
                expired.append(session)
        for session in expired:
            self.core.unsubscribe_all(session)
            del self.sessions[session.key]
            if session.stored:
                self.drop_stored(session)
            self.core.metrics.messages_dropped += len(session.queue) + len(session.inflight)
            # A will still waiting goes out when its session ends (section 3.1.3.2.2).
            self._publish_will(session.key)
        if self.pending_wills:
            for key in [k for k, w in self.pending_wills.items() if now >= w[0]]:
                self._publish_will(key)
        return len(expired)

    # --- persistence -------------------------------------------------------------------

    def release_message(self, message: Message) -> None:
        """One stored entry fewer needs ``message``; delete it from the store at none."""
        store = self.store
        mid = message.store_id
        if store is None or not mid:
            return
        refs = self.message_refs
        left = refs.get(mid, 0) - 1
        if left > 0:
            refs[mid] = left
            return
        refs.pop(mid, None)
        store.record(("delmsg", mid))
        # A later durable delivery of the same object stores it again, afresh.
        message.store_id = 0

    def drop_stored(self, session: MqttSession) -> None:
        """Delete everything stored for ``session`` (it ended)."""
        store = self.store
        if store is None or not session.stored:
            return
        for entry in session.inflight.values():
            if entry.seq:
                entry.seq = 0
                self.release_message(entry.message)
        for queued in session.queue:
            if queued[4]:
                self.release_message(queued[0])
        session.queue = deque((*q[:4], 0) for q in session.queue) if session.queue else _NO_QUEUE
        store.record(("drop", session.key[0], session.key[1]))
        session.stored = False
        session.durable = False

    def _store_session(self, session: MqttSession) -> None:
        store = self.store
        assert store is not None
        identity = session.info.identity
        session.durable = session.stored = True
        store.record(
            ("session", session.key[0], session.key[1], identity.namespace, identity.name,
             session.expiry)
        )  # fmt: skip

    def _on_retain(self, topic: str, message: Message | None) -> None:
        store = self.store
        assert store is not None
        if message is None:
            store.record(("unretain", topic))
        else:
            row = message_row(message, self.clock)
            store.record(("retain", topic, row[1], row[2], row[4], row[5], row[6]))

    def _message(self, row: tuple[Any, ...], store_id: int = 0) -> Message:
        topic, payload, qos, retain, origin, protocol, meta = row
        message = Message(topic, bytes(payload), qos, bool(retain), origin, protocol, self.clock())
        message.meta = decode_meta(meta, self.clock)
        message.store_id = store_id
        return message

    def restore(self) -> dict[str, int]:
        """Load the store's state: sessions, subscriptions, messages, retained.

        Sessions come back offline, as of their stored offline time (now, for those
        that were connected when the edge stopped: a crash). Inbound QoS 2
        messages of sessions that did not persist were acknowledged (PUBREC) and are
        routed now: their publishers cannot release them any more. Returns counts.
        """
        store = self.store
        if store is None:
            return {}
        snap = store.load()
        now = self.clock()
        wall = time.time()
        messages = {mid: self._message(row, mid) for mid, row in snap.messages.items()}
        restored: dict[tuple[str, str], MqttSession] = {}
        for ident, cid, namespace, name, expiry, offline in snap.sessions:
            if expiry == 0:
                store.record(("drop", ident, cid))  # it ended as the edge stopped
                continue
            info = SessionInfo(
                identity=DeviceIdentity(namespace=namespace, name=name), peer="(restored)"
            )
            session = MqttSession(self, cid, False, info)
            session.expiry = expiry
            session.offline_since = now if offline is None else now - max(0.0, wall - offline)
            session.durable = session.stored = True
            restored[session.key] = session
            self.sessions[session.key] = session
        for ident, cid, topic_filter, qos, options, sub_id in snap.subscriptions:
            owner = restored.get((ident, cid))
            if owner is None:
                continue
            self.core.router.subscribe(owner, topic_filter, qos)
            if options >= 0:
                shared = split_shared(topic_filter)
                pure = topic_filter if shared is None else shared[1]
                owner.options5[topic_filter] = (options, sub_id, pure)
                if options & 0x0C or sub_id:
                    owner.special5 += 1
        refs = self.message_refs
        count_out = 0
        for seq, ident, cid, mid, qos, retain, sub_ids, pid, state in snap.outgoing:
            target = restored.get((ident, cid))
            message = messages.get(mid)
            if target is None or message is None:
                store.record(("delout", seq))
                continue
            refs[mid] = refs.get(mid, 0) + 1
            count_out += 1
            if pid is None:
                if target.queue is _NO_QUEUE:
                    target.queue = deque()
                target.queue.append((message, qos, retain, tuple(sub_ids), seq))
            else:
                entry = _Outgoing(message, qos, retain, now, tuple(sub_ids), seq)
                entry.state = state
                target.inflight[pid] = entry
                target._next_pid = pid + 1 if pid < 0xFFFF else 1
        for mid in messages:
            if mid not in refs:
                store.record(("delmsg", mid))
        routed = 0
        for ident, cid, pid, *row in snap.incoming:
            message = self._message(tuple(row))
            publisher = restored.get((ident, cid))
            if publisher is not None:
                publisher.incoming_qos2[pid] = _Incoming(message, 0)
                continue
            # The publisher's session did not persist: release the message ourselves
            # (it was acknowledged), then forget it.
            self.core.publish(message, None)
            store.record(("delin", ident, cid, pid))
            routed += 1
        for topic, payload, qos, origin, protocol, meta in snap.retained:
            message = self._message((topic, payload, qos, True, origin, protocol, meta))
            self.core.router.restore_retained(message)
        return {
            "sessions": len(restored),
            "subscriptions": len(snap.subscriptions),
            "messages": count_out,
            "incoming": len(snap.incoming) - routed,
            "released": routed,
            "retained": len(snap.retained),
        }

    def maintain(self, now: float) -> None:
        """Expire sessions, fire delayed wills and purge expired retained messages.

        At most once a second.
        """
        if now >= self._next_check:
            self._next_check = now + 1.0
            self.expire_sessions(now)
            self.core.purge_expired(now)

    def _publish_will(self, key: tuple[str, str]) -> None:
        pending = self.pending_wills.pop(key, None)
        if pending is not None:
            _, message, info, client_id = pending
            self.core.publish(message, info, client_id=client_id)

    def close(self, reason: str = "the edge is shutting down") -> int:
        """Close every connection (no wills: the devices did nothing wrong); return how many.

        Each connection's I/O layer is woken to flush and close its transport.
        """
        connections = list(self.connections)
        for conn in connections:
            conn.will = None
            conn.close(reason, 0x8B)  # MQTT 5: Server shutting down
            conn.wake()
        return len(connections)

    def disconnect_devices(
        self, matches: Callable[[SessionInfo], bool], reason: str, code: int = 0x98
    ) -> int:
        """Close the live connections whose session ``matches``; return how many.

        For administrative action (a revoked certificate, a deleted set): an MQTT 5
        client gets DISCONNECT ``code`` (0x98 Administrative action) with ``reason``;
        wills are published, as for any connection the edge ends.
        """
        chosen = [c for c in self.connections if c.connected and matches(c.info)]
        for conn in chosen:
            conn.close(reason, code)
            conn.wake()
        return len(chosen)

    def disconnect_each(
        self, reason_for: Callable[[SessionInfo], str | None], code: int = 0x98
    ) -> int:
        """Close each live connection given a reason by ``reason_for``; return how many.

        :meth:`disconnect_devices` with one reason per connection: a revocation
        names each device's own certificate (see :mod:`edge.trust.revoke`).
        """
        chosen: list[tuple[MqttConnection, str]] = []
        for conn in self.connections:
            if conn.connected:
                reason = reason_for(conn.info)
                if reason is not None:
                    chosen.append((conn, reason))
        # Closing edits self.connections: choose first, then close.
        for conn, reason in chosen:
            conn.close(reason, code)
            conn.wake()
        return len(chosen)

    def label_worker(self, worker: str) -> None:
        """Name this worker in every MQTT 5 CONNACK (user property ``edgesim-worker``).

        With several workers a device (or a test) can tell which one it reached; the
        property is encoded once here, so connects cost nothing more.
        """
        name = _str("edgesim-worker")
        value = _str(worker)
        self.connack5_properties = self.connack5_properties + b"\x26" + name + value

    def release(self, identity: str, client_id: str, reason: str) -> list[tuple[str, int]] | None:
        """Let go of the session ``(identity, client_id)``: another worker has taken it.

        Its live connection is closed (MQTT 5: DISCONNECT 0x8E Session taken over,
        and the will is published, as for a takeover on one worker) and the session
        is dropped here. Returns its subscriptions (filter, granted QoS) for the new
        owner to adopt, or None when this worker held no such session.
        """
        key = (identity, client_id)
        session = self.sessions.get(key)
        self.pending_wills.pop(key, None)
        if session is None:
            return None
        conn = session.connection
        if conn is not None:
            conn.close(reason, 0x8E)
            conn.wake()
        session = self.sessions.pop(key, None)
        if session is None:
            return []
        # The new owner stores the session in its own state file; this one forgets it.
        self.drop_stored(session)
        subscriptions = list(self.core.router.subscriptions(session.subscriber_id).items())
        self.core.unsubscribe_all(session)
        self.core.metrics.messages_dropped += len(session.queue) + len(session.inflight)
        return [] if session.clean else subscriptions

    def adopt(self, identity: str, client_id: str, subscriptions: list[tuple[str, int]]) -> int:
        """Add the subscriptions another worker's session of this client id held; return how many.

        Only a live, non-clean session here adopts them (a clean one starts empty, as
        it would on one worker); they were authorised where they were made.
        """
        session = self.sessions.get((identity, client_id))
        if session is None or session.clean:
            return 0
        router = self.core.router
        current = router.subscriptions(session.subscriber_id)
        added = 0
        for topic_filter, qos in subscriptions:
            if topic_filter not in current:
                self.core.subscribe(session, topic_filter, qos, None, send_retained=False)
                if session.durable and self.store is not None:
                    key = session.key
                    self.store.record(("sub", key[0], key[1], topic_filter, qos, -1, 0))
                added += 1
        return added

    def connection(self, session_info: SessionInfo) -> MqttConnection:
        """Create the state machine for a newly accepted connection."""
        return MqttConnection(self, session_info, self.clock())


class MqttConnection:
    """One client connection, sans-I/O (see the module docstring)."""

    __slots__ = (
        "_alias_room",
        "_aliases",
        "_aliases_out",
        "_connect_deadline",
        "_graceful",
        "_head",
        "_out",
        "_out_len",
        "_rate_bytes",
        "_rate_count",
        "_rate_window",
        "_shut",
        "broker",
        "client_id",
        "close_by",
        "close_code",
        "close_reason",
        "close_sent",
        "connected",
        "core",
        "corked",
        "info",
        "keepalive",
        "last_received",
        "max_out_packet",
        "now",
        "origin",
        "parser",
        "problem_info",
        "protocol_error",
        "protocol_level",
        "session",
        "should_close",
        "v5",
        "wakeup",
        "will",
        "will_delay",
        "will_meta",
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
        #: True when the connection ends on a malformed packet or a protocol violation
        #: (``/mqtt`` then closes its WebSocket with 1002, not 1000).
        self.protocol_error = False
        self.connected = False
        self.client_id = ""
        self.protocol_level = 4
        self.keepalive = 0
        self.will: Will | None = None
        self.session: MqttSession | None = None
        self.wakeup: Callable[[], None] | None = None
        self._graceful = False
        self._shut = False
        #: Output held back until the cluster bus has this connection's new
        #: subscriptions in place (see :meth:`_settle`); never set in one process.
        self.corked = False
        #: MQTT 5 state: the level of this connection's CONNECT, the client's
        #: Request Problem Information and Maximum Packet Size, its topic aliases.
        self.v5 = False
        self.problem_info = True
        self.max_out_packet = 0
        self._aliases: dict[int, str] = {}
        # Edge-to-client aliases (topic_alias_out): topic -> alias, and how many the
        # client takes (its Topic Alias Maximum).
        self._aliases_out: dict[str, int] = {}
        self._alias_room = 0
        self.will_delay = 0
        self.will_meta: Metadata | None = None
        #: Why this connection ended, as an MQTT 5 reason code, whatever the level: the
        #: code of the edge's decision (an MQTT 5 client is sent it in a DISCONNECT, a
        #: 3.1.1 one is closed), the code of the client's DISCONNECT, or None when the
        #: connection was lost without one. ``close_by`` says which ("edge", "client",
        #: "network"), ``close_sent`` whether a DISCONNECT carried the code.
        self.close_code: int | None = None
        self.close_by = ""
        self.close_sent = False
        # The first bytes received, until the CONNECT is parsed: an unparsable
        # CONNECT still gets an answer at its own protocol level.
        self._head = b""
        # Profile rate limits: the current one-second window, PUBLISH and bytes in it.
        self._rate_window = 0.0
        self._rate_count = 0
        self._rate_bytes = 0
        broker.connections.add(self)
        broker.core.metrics.connections_opened += 1

    # --- I/O facing API ----------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Process bytes from the client; replies and deliveries go to the output buffer."""
        if self.should_close:
            return
        now = self.now = self.broker.clock()
        self.last_received = now
        if not self.connected and len(self._head) < 16:
            self._head += data[:16]
        try:
            packets = self.parser.feed(data)
            counts = self.core.metrics.mqtt_packets_in
            for packet in packets:
                counts[_PACKET_NUMBER.get(type(packet), 0)] += 1
                self._handle(packet)
                if self.should_close:
                    return
        except MqttError as exc:
            self._fail(exc)

    def _fail(self, exc: MqttError) -> None:
        """Close on a packet or protocol error, telling an MQTT 5 client the reason code."""
        self.protocol_error = True
        code = exc.reason_code
        if self.broker.config.reason_codes == "mosquitto":
            code = mosquitto_code(exc.reason, code)
        if self.connected:
            self.close(exc.reason, code)
        elif self._head_is_v5():
            # Section 4.13.1: an error in CONNECT may be answered with a CONNACK.
            self._refuse(code, code, exc.reason, v5=True)
        else:
            self.close(exc.reason)

    def _head_is_v5(self) -> bool:
        head = self._head
        if len(head) < 2 or head[0] != 0x10:
            return False
        i = 1
        while i < len(head) and head[i] & 0x80 and i < 5:
            i += 1
        return head[i + 1 : i + 8] == b"\x00\x04MQTT\x05"

    def data_to_send(self) -> bytes:
        """Take every byte waiting to go to the client."""
        out = self._out
        if not out or self.corked:
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
        self.broker.maintain(now)
        deadline: float | None = None
        if self.keepalive:
            deadline = self.last_received + self.keepalive * 1.5
            if now >= deadline:
                self.close(f"keepalive timeout ({self.keepalive} s x 1.5 without a packet)", 0x8D)
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
            self.close_by = "network"
        self._shutdown()

    def close(self, reason: str, code: int = 0) -> None:
        """Close the connection from the broker's side (the will is published).

        ``code`` is the MQTT 5 reason code of the decision. An MQTT 5 client is first
        sent a DISCONNECT with it (when not 0) and ``reason`` as its Reason String;
        MQTT 3.1.1 has no such packet, but the ``mqtt.disconnected`` event records the
        code all the same, so the log says why at either level.
        """
        if self.should_close:
            return
        if code and self.v5 and self.connected:
            self.write(self._disconnect_packet(code, reason))
            self.close_sent = True
        self._end(reason, code, "edge")

    def _end(self, reason: str, code: int, by: str) -> None:
        self.should_close = True
        self.close_reason = reason
        self.close_code = code
        self.close_by = by
        self._shutdown()

    def _disconnect_packet(self, code: int, reason: str) -> bytes:
        props = self._reason_props(reason, always=True)
        if not props:
            return bytes((0xE0, 1, code))
        body = bytes((code,)) + props
        return encode_varint_prefix(0xE0, len(body)) + body

    def _reason_props(self, reason: str, *, always: bool = False) -> bytes:
        """A property block holding ``reason`` as the Reason String, or b"" when none is due.

        None is due when the profile gives none, or (on acknowledgements, where
        ``always`` is False) when the client asked for no problem information.
        """
        if not reason or not self.broker.config.reason_strings:
            return b""
        if not always and not self.problem_info:
            return b""
        raw = reason.encode()[:1024]
        if self.max_out_packet and len(raw) + 16 > self.max_out_packet:
            return b""  # section 3.1.2.11.4: never exceed the client's limit for it
        prop = b"\x1f" + len(raw).to_bytes(2, "big") + raw
        return encode_varint(len(prop)) + prop

    # --- output ------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Append bytes for the client and wake the I/O layer if the buffer was empty."""
        out = self._out
        out.append(data)
        self._out_len += len(data)
        # Every write is one whole packet: its first byte names the type.
        kind = data[0] >> 4
        self.core.metrics.mqtt_packets_out[kind] += 1
        if kind == 3:  # PUBLISH, re-sends included: the device list's "messages out"
            self.info.messages_out += 1
        if len(out) == 1 and self.wakeup is not None:
            self.wakeup()

    def _ack(self, data: bytes) -> None:
        """Write an acknowledgement of the publish flow, after the store commits.

        With persistence on and changes not yet committed, the store holds the ack
        until they are (group commit): an acknowledged message is on disk.
        """
        store = self.broker.store
        if store is not None and store.dirty:
            store.hold(self, data)
        else:
            self.write(data)

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
            if self.v5:
                self._on_publish5(packet)
            else:
                self._on_publish(packet)
        elif isinstance(packet, Puback):
            self._on_puback(packet.packet_id)
        elif isinstance(packet, Pubrec):
            self._on_pubrec(packet.packet_id, packet.reason_code)
        elif isinstance(packet, Pubrel):
            self._on_pubrel(packet.packet_id)
        elif isinstance(packet, Pubcomp):
            self._on_pubcomp(packet.packet_id)
        elif isinstance(packet, Pingreq):
            self.write(_PINGRESP)
        elif isinstance(packet, Subscribe):
            if self.v5:
                self._on_subscribe5(packet)
            else:
                self._on_subscribe(packet)
        elif isinstance(packet, Unsubscribe):
            self._on_unsubscribe(packet)
        elif isinstance(packet, Disconnect):
            self._on_disconnect(packet)
        elif isinstance(packet, Auth):
            raise ProtocolViolation(_CERT_ONLY, 0x8C)
        else:  # CONNECT again (the server-side parser yields nothing else)
            raise ProtocolViolation(f"unexpected {type(packet).__name__} (second CONNECT?)")

    def _on_disconnect(self, p: Disconnect) -> None:
        props = p.properties
        session = self.session
        if props is not None and props.session_expiry_interval is not None and session:
            if session.expiry == 0 and props.session_expiry_interval:
                # Section 3.14.2.2.2: 0 at CONNECT cannot become non-zero.
                raise ProtocolViolation(
                    "DISCONNECT: Session Expiry Interval set where CONNECT had 0"
                )
            if session.expiry is not None:
                session.expiry = self._cap_expiry(props.session_expiry_interval)
                session.clean = session.expiry == 0
                if session.durable and not session.clean:
                    self.broker._store_session(session)
        if p.reason_code != 0x04:  # 0x04: Disconnect with Will Message
            self._graceful = True
            self.will = None
        if not self.should_close:
            self._end(
                "client sent DISCONNECT"
                if not p.reason_code
                else f"client sent DISCONNECT {p.reason_code:#04x}",
                p.reason_code,
                "client",
            )

    def _not_found(self) -> int:
        """The code for a PUBREC/PUBREL naming no message: the spec's 0x92, Mosquitto's 0."""
        return 0 if self.broker.config.reason_codes == "mosquitto" else 0x92

    def _cap_expiry(self, interval: int) -> float:
        cap = self.broker.config.max_session_expiry
        return float(interval if cap is None or interval <= cap else cap)

    def _refuse(self, code: int, code5: int, reason: str, *, v5: bool | None = None) -> None:
        if self.v5 if v5 is None else v5:
            props = self._reason_props(reason, always=True) or b"\x00"
            body = b"\x00" + bytes((code5,)) + props
            self.write(encode_varint_prefix(0x20, len(body)) + body)
            code = code5
        else:
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

    def _limit(self, limit: str, reason: str) -> str:
        """Record an ``mqtt.limit`` event for a profile limit; return the reason."""
        self.core.events.emit(
            "mqtt.limit",
            "denied",
            identity=self.origin,
            peer=self.info.peer,
            client_id=self.client_id,
            limit=limit,
            profile=self.broker.config.profile,
            reason=reason,
        )
        return reason

    def _on_connect(self, p: Connect) -> None:
        broker = self.broker
        config = broker.config
        v5 = p.protocol_level == 5
        if v5:
            self.v5 = True
            self._on_connect5_props(p)
            if self.should_close:
                return
        else:
            expected = 3 if p.protocol_name == "MQIsdp" else 4
            if p.protocol_level != expected:
                self._refuse(
                    CONNACK_BAD_PROTOCOL_VERSION,
                    0x84,
                    f"unsupported protocol {p.protocol_name!r} level {p.protocol_level}",
                )
                return
        self.protocol_level = p.protocol_level
        client_id = p.client_id
        assigned = ""
        if not client_id:
            if p.protocol_level == 3 or (not v5 and not p.clean_session):
                self._refuse(CONNACK_IDENTIFIER_REJECTED, 0x85, "empty client id")
                return
            if not config.allow_zero_length_client_id:
                self._refuse(CONNACK_IDENTIFIER_REJECTED, 0x85, "empty client id not allowed")
                return
            # The identity is the natural id for a device; "free" policies get a unique one.
            client_id = (
                f"auto-{self.info.connection_id}"
                if broker.core.policy.config.client_id == "free"
                else self.info.identity.name
            )
            assigned = client_id
        limit = config.max_client_id_length
        if limit is not None and len(client_id.encode()) > limit:
            too_long = self._limit(
                "max_client_id_length",
                f"client id is {len(client_id.encode())} bytes; the {config.profile or 'edge'}"
                f" limit is {limit}",
            )
            self._refuse(CONNACK_IDENTIFIER_REJECTED, 0x85, too_long)
            return
        rule = self.core.check_client_id(self.info, client_id)
        if rule is not None:
            self._refuse(CONNACK_NOT_AUTHORIZED, 0x87, rule)
            return
        if p.will is not None:
            if p.will.topic.startswith("$"):
                raise ProtocolViolation(
                    f"will topic {p.will.topic!r} is in the $ namespace reserved for the edge"
                )
            denied = self.core.policy.may_publish(self.info.identity, client_id, p.will.topic)
            if denied is not None:
                self._refuse(CONNACK_NOT_AUTHORIZED, 0x87, f"will: {denied}")
                return
            if v5:
                self.will_meta, self.will_delay = self._will5(p.will)
                if self.should_close:
                    return
        self.client_id = client_id
        self.will = p.will
        self.keepalive = min(p.keepalive, config.max_keepalive)
        if v5 and config.server_keep_alive is not None:
            self.keepalive = config.server_keep_alive
        self._connect_deadline = None
        self.connected = True

        key = (self.origin, client_id)
        # A will waiting for its delay is cancelled when the session resumes.
        broker.pending_wills.pop(key, None)
        previous = broker.sessions.get(key)
        if previous is not None and previous.connection is not None:
            old = previous.connection
            old.close(f"session taken over by connection {self.info.peer}", 0x8E)
            old.wake()
            # Closing a clean session's connection discarded that session.
            previous = broker.sessions.get(key)
        expiry: float | None = None
        clean = p.clean_session
        if v5:
            props = p.properties
            interval = 0 if props is None else props.session_expiry_interval or 0
            expiry = self._cap_expiry(interval)
            clean = expiry == 0
        present = False
        if previous is not None and (p.clean_session or previous.clean):
            self.core.unsubscribe_all(previous)
            del broker.sessions[key]
            if previous.stored:
                broker.drop_stored(previous)
            previous = None
        if previous is None:
            session = MqttSession(broker, client_id, clean, self.info)
            broker.sessions[key] = session
        else:
            session = previous
            session.info = self.info
            session.offline_since = None
            session.clean = clean
            present = True
        session.expiry = expiry
        session.connection = self
        self.session = session
        if not clean and broker.store is not None:
            broker._store_session(session)
        bus = self.core.bus
        if bus is not None:
            # Other workers end their session of this client id (cluster takeover).
            bus.claim(self.origin, client_id)
        if v5:
            props = p.properties
            rm = None if props is None else props.receive_maximum
            session.inflight_limit = min(config.max_inflight, rm or 65535)
            connack = self._connack5(present, assigned, p.keepalive)
            if self.max_out_packet and len(connack) > self.max_out_packet:
                # Section 3.1.2.11.4: nothing larger than the client's limit is sent,
                # not even the CONNACK; the client cannot be served.
                self._end(
                    f"the CONNACK ({len(connack)} bytes) exceeds the client's Maximum Packet"
                    f" Size {self.max_out_packet}",
                    0x95,  # Packet too large; not sent: no DISCONNECT would fit either
                    "edge",
                )
                return
            self.write(connack)
        else:
            session.inflight_limit = config.max_inflight
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

    # --- MQTT 5 ------------------------------------------------------------------------

    def _on_connect5_props(self, p: Connect) -> None:
        """Take the CONNECT's MQTT 5 properties; refuse what the edge does not do."""
        props = p.properties
        if props is None:
            return
        if props.authentication_method is not None:
            self._refuse(0x86, 0x8C, _CERT_ONLY)
            return
        if props.request_problem_information == 0:
            self.problem_info = False
        if props.maximum_packet_size is not None:
            self.max_out_packet = props.maximum_packet_size
        if props.topic_alias_maximum and self.broker.config.topic_alias_out:
            self._alias_room = props.topic_alias_maximum

    def _will5(self, will: Will) -> tuple[Metadata | None, int]:
        """The will's metadata and delay; refuses (0x99) a UTF-8 will that is not UTF-8."""
        props = will.properties
        if props is None:
            return None, 0
        if props.payload_format_indicator == 1 and not _is_utf8(will.payload):
            self._refuse(0x05, 0x99, "will payload is marked UTF-8 but is not valid UTF-8")
            return None, 0
        return self._meta(props), props.will_delay_interval or 0

    def _meta(self, props: Properties) -> Metadata | None:
        """The routable metadata of a PUBLISH's (or will's) properties, None when none."""
        expiry = props.message_expiry_interval
        if (
            props.content_type is None
            and props.response_topic is None
            and props.correlation_data is None
            and not props.user_properties
            and props.payload_format_indicator is None
            and expiry is None
        ):
            return None
        return Metadata(
            content_type=props.content_type,
            response_topic=props.response_topic,
            correlation_data=props.correlation_data,
            user_properties=list(props.user_properties),
            payload_format=props.payload_format_indicator,
            expires_at=None if expiry is None else self.now + expiry,
        )

    def _connack5(self, present: bool, assigned: str, requested_keepalive: int) -> bytes:
        """The CONNACK of an accepted MQTT 5 connection, with the edge's capabilities."""
        parts: list[bytes] = [self.broker.connack5_properties]
        if assigned:
            raw = assigned.encode()
            parts.append(b"\x12" + len(raw).to_bytes(2, "big") + raw)
        if self.keepalive != requested_keepalive:
            parts.append(b"\x13" + self.keepalive.to_bytes(2, "big"))
        props = b"".join(parts)
        body = bytes((1 if present else 0, 0)) + encode_varint(len(props)) + props
        return encode_varint_prefix(0x20, len(body)) + body

    def _ack5(self, first: int, pid: int, code: int, reason: str) -> None:
        """Write a PUBACK/PUBREC/PUBREL/PUBCOMP with ``code`` (and a Reason String)."""
        props = self._reason_props(reason) if code else b""
        if props:
            body = pid.to_bytes(2, "big") + bytes((code,)) + props
            self._ack(encode_varint_prefix(first, len(body)) + body)
        elif code:
            self._ack(bytes((first, 3)) + pid.to_bytes(2, "big") + bytes((code,)))
        else:
            self._ack(bytes((first, 2)) + pid.to_bytes(2, "big"))

    def _check_limits(self, p: Publish, topic: str) -> tuple[int, str]:
        """A profile limit this PUBLISH breaks, as (reason code, reason); (0, "") if none."""
        config = self.broker.config
        if config.max_topic_length is not None and len(topic.encode()) > config.max_topic_length:
            return 0x90, self._limit(
                "max_topic_length",
                f"topic is {len(topic.encode())} bytes; the {config.profile} limit is"
                f" {config.max_topic_length}",
            )
        levels = topic.count("/") + 1
        if config.max_topic_levels is not None and levels > config.max_topic_levels:
            return 0x90, self._limit(
                "max_topic_levels",
                f"topic has {levels} levels; the {config.profile} limit is"
                f" {config.max_topic_levels} ({config.max_topic_levels - 1} slashes)",
            )
        if config.max_payload is not None and len(p.payload) > config.max_payload:
            raise ProtocolViolation(
                self._limit(
                    "max_payload",
                    f"payload is {len(p.payload)} bytes; the {config.profile} limit is"
                    f" {config.max_payload}",
                ),
                0x95,
            )
        if config.max_publish_rate is not None or config.max_throughput is not None:
            now = self.now
            if now >= self._rate_window + 1.0:
                self._rate_window = now
                self._rate_count = 0
                self._rate_bytes = 0
            self._rate_count += 1
            self._rate_bytes += len(p.payload)
            rate = config.max_publish_rate
            if rate is not None and self._rate_count > rate:
                raise ProtocolViolation(
                    self._limit(
                        "max_publish_rate",
                        f"more than {rate:g} PUBLISH per second; the {config.profile} limit",
                    ),
                    0x96,
                )
            through = config.max_throughput
            if through is not None and self._rate_bytes > through:
                raise ProtocolViolation(
                    self._limit(
                        "max_throughput",
                        f"more than {through:g} bytes per second; the {config.profile} limit",
                    ),
                    0x97,
                )
        return 0, ""

    def _on_publish5(self, p: Publish) -> None:
        config = self.broker.config
        props = p.properties
        topic = p.topic
        meta: Metadata | None = None
        qos = p.qos
        if qos > config.maximum_qos:
            raise ProtocolViolation(
                f"PUBLISH QoS {qos} above the Maximum QoS {config.maximum_qos}", 0x9B
            )
        if p.retain and not config.retain_available:
            raise ProtocolViolation("PUBLISH with retain where Retain Available is 0", 0x9A)
        if props is not None:
            alias = props.topic_alias
            if alias is not None:
                if alias > config.topic_alias_maximum:
                    raise ProtocolViolation(
                        f"Topic Alias {alias} above the Topic Alias Maximum"
                        f" {config.topic_alias_maximum}",
                        0x94,
                    )
                if topic:
                    self._aliases[alias] = topic
                else:
                    known = self._aliases.get(alias)
                    if known is None:
                        raise ProtocolViolation(f"Topic Alias {alias} was never set")
                    topic = known
            meta = self._meta(props)
        code, reason = self._check_limits(p, topic) if self.broker.publish_limits else (0, "")
        if not code and meta is not None and meta.payload_format == 1 and not _is_utf8(p.payload):
            code, reason = 0x99, "payload is marked UTF-8 but is not valid UTF-8"
        pid = p.packet_id
        session = self.session
        assert session is not None
        if (
            qos == 2
            and pid is not None
            and pid not in session.incoming_qos2
            and len(session.incoming_qos2) >= config.receive_maximum
        ):
            raise ProtocolViolation(
                f"more than the Receive Maximum {config.receive_maximum} QoS 2 messages unreleased",
                0x93,
            )
        if code:
            if qos == 0:
                raise ProtocolViolation(reason, code)
            assert pid is not None
            self._ack5(0x40 if qos == 1 else 0x50, pid, code, reason)
            return
        # The codec keeps the bytes of a property-less QoS 0 PUBLISH: what send5 would
        # encode for an MQTT 5 subscriber (3.1.1 ones get their own).
        raw = p.raw
        message = Message(
            topic, p.payload, qos, p.retain, self.origin, "mqtt", self.now,
            None if raw is None else {_KEY5_Q0: raw}, meta, session.subscriber_id,
        )  # fmt: skip
        if qos == 0:
            self.core.publish(message, self.info, client_id=self.client_id)
            return
        assert pid is not None
        if qos == 1:
            result = self.core.publish(message, self.info, client_id=self.client_id)
            if not result.allowed:
                self._ack5(0x40, pid, 0x87, result.reason)
            else:
                self._ack5(0x40, pid, 0 if result.delivered else 0x10, "")
            return
        # QoS 2: authorized now (PUBREC carries the verdict), routed on PUBREL.
        denied = self.core.check_publish(self.info, topic, self.client_id)
        if denied is not None:
            if session.incoming_qos2.pop(pid, None) is not None and self.broker.store is not None:
                self.broker.store.record(("delin", session.key[0], session.key[1], pid))
            self._ack5(0x50, pid, 0x87, denied)
            return
        held = session.incoming_qos2.get(pid)
        if held is None or held.message.payload != p.payload or held.message.topic != topic:
            session.incoming_qos2[pid] = _Incoming(message, self.info.connection_id)
            if self.broker.store is not None:
                self._store_incoming(pid, message)
        self._ack5(0x50, pid, 0, "")

    def send5(
        self,
        message: Message,
        qos: int,
        retain: bool,
        pid: int | None,
        sub_ids: tuple[int, ...],
        dup: bool,
    ) -> bool:
        """Write an MQTT 5 PUBLISH; False when it is dropped (expired, too large, shed)."""
        metrics = self.core.metrics
        if qos == 0 and self._out_len > self.broker.config.max_write_buffer:
            metrics.messages_dropped += 1
            return False
        meta = message.meta
        if not sub_ids and not self._alias_room and (meta is None or meta.expires_at is None):
            # The common case: the same bytes for every such subscriber, encoded once
            # per message (the head before the packet id, and what follows it).
            cache = message.encoded
            if cache is None:
                cache = message.encoded = {}
            if qos == 0:
                key = _KEY5_Q0R if retain else _KEY5_Q0
                packet = cache.get(key)
                if packet is None:
                    packet = cache[key] = encode_publish5(
                        message.topic.encode(), message.payload, 0, retain, False, None,
                        b"\x00" if meta is None else _props5(meta, (), b"", 0),
                    )  # fmt: skip
            else:
                assert pid is not None
                tail = cache.get(_KEY5_TAIL)
                if tail is None:
                    props = b"\x00" if meta is None else _props5(meta, (), b"", 0)
                    tail = cache[_KEY5_TAIL] = props + message.payload
                key = _KEYS5_HEAD[qos * 4 + (2 if retain else 0) + (1 if dup else 0)]
                head = cache.get(key)
                if head is None:
                    topic = message.topic.encode()
                    first = 0x30 | (qos << 1) | (1 if retain else 0) | (0x08 if dup else 0)
                    head = cache[key] = (
                        encode_varint_prefix(first, 4 + len(topic) + len(tail))
                        + len(topic).to_bytes(2, "big")
                        + topic
                    )
                packet = b"".join((head, pid.to_bytes(2, "big"), tail))
            if self.max_out_packet and len(packet) > self.max_out_packet:
                # Section 3.1.2.11.4: a message larger than the client takes is dropped.
                metrics.messages_dropped += 1
                return False
            self.write(packet)
            return True
        topic = message.topic.encode()
        alias = b""
        fresh = False
        if self._alias_room:
            # Topic Alias (edge to client): the first message on a topic carries the
            # topic and its new alias, later ones only the alias.
            number = self._aliases_out.get(message.topic)
            if number is not None:
                topic = b""
            elif len(self._aliases_out) < self._alias_room:
                number = self._aliases_out[message.topic] = len(self._aliases_out) + 1
                fresh = True
            if number is not None:
                alias = b"\x23" + number.to_bytes(2, "big")
        remaining = 0
        if meta is not None and meta.expires_at is not None:
            # The clock, not self.now: an idle subscriber's now is stale.
            remaining = math.ceil(meta.expires_at - self.broker.clock())
            if remaining <= 0:
                metrics.messages_dropped += 1
                return False
        props = _props5(meta, sub_ids, alias, remaining)
        packet = encode_publish5(topic, message.payload, qos, retain, dup, pid, props)
        if self.max_out_packet and len(packet) > self.max_out_packet:
            # Section 3.1.2.11.4: a message larger than the client takes is dropped.
            metrics.messages_dropped += 1
            if fresh:  # the client never learned this alias
                del self._aliases_out[message.topic]
            return False
        self.write(packet)
        return True

    def _on_subscribe5(self, p: Subscribe) -> None:
        session = self.session
        assert session is not None
        config = self.broker.config
        props = p.properties
        sub_id = 0
        if props is not None and props.subscription_identifiers:
            if not config.subscription_identifier_available:
                raise ProtocolViolation(
                    "SUBSCRIBE with a Subscription Identifier where they are not available"
                    + (f" ({config.profile})" if config.profile else ""),
                    0xA1,
                )
            sub_id = props.subscription_identifiers[0]
        codes: list[int] = []
        reasons: list[str] = []
        limit = config.max_filters_per_subscribe
        for n, (topic_filter, options) in enumerate(p.topics):
            shared = split_shared(topic_filter)
            qos = options & 0x03
            if qos > config.maximum_qos:
                qos = config.maximum_qos
            if limit is not None and n >= limit:
                codes.append(0x97)
                reasons.append(
                    self._limit(
                        "max_filters_per_subscribe",
                        f"{topic_filter}: more than {limit} filters in one SUBSCRIBE"
                        f" ({config.profile} limit)",
                    )
                )
                continue
            if topic_filter.startswith("$share/") and (
                shared is None or not config.shared_subscription_available
            ):
                codes.append(0x9E if shared is not None else 0x8F)
                reasons.append(f"{topic_filter}: shared subscriptions are not available")
                continue
            pure = topic_filter if shared is None else shared[1]
            if not config.wildcard_subscription_available and ("+" in pure or "#" in pure):
                codes.append(0xA2)
                reasons.append(f"{topic_filter}: wildcard subscriptions are not available")
                continue
            existed = topic_filter in session.options5
            granted = self.core.subscribe(
                session, topic_filter, qos, self.info, client_id=self.client_id, send_retained=False
            )
            if granted is None:
                codes.append(0x87)
                # The policy's own words, as in the policy.denied event.
                denial = self.core.policy.may_subscribe(self.info.identity, self.client_id, pure)
                reasons.append(f"{topic_filter}: {denial or 'not authorized'}")
                continue
            old = session.options5.get(topic_filter)
            if old is not None and (old[0] & 0x0C or old[1]):
                session.special5 -= 1
            stored = (options & 0x3C) | granted
            session.options5[topic_filter] = (stored, sub_id, pure)
            if session.durable:
                self._store_sub(topic_filter, granted, stored, sub_id)
            if options & 0x0C or sub_id:
                session.special5 += 1
            codes.append(granted)
            # Retain Handling: 0 always, 1 only for a new subscription, 2 never.
            handling = (options >> 4) & 0x03
            if handling == 0 or (handling == 1 and not existed):
                reasons.append("")
            else:
                reasons.append("-")
        why = "; ".join(r for r in reasons if r and r != "-")
        if self.core.bus is not None:
            self._settle()
        props_bytes = self._reason_props(why) or b"\x00"
        body = p.packet_id.to_bytes(2, "big") + props_bytes + bytes(codes)
        self.write(encode_varint_prefix(0x90, len(body)) + body)
        self.core.purge_expired(self.now)
        for (topic_filter, _), code, note in zip(p.topics, codes, reasons, strict=True):
            if code < 0x80 and note != "-":
                self.core.deliver_retained(session, topic_filter, code)

    def _settle(self) -> None:
        """Hold the SUBACK (and all output after it) until other workers can reach us.

        With a cluster bus, a new filter becomes a NATS subscription asynchronously;
        a SUBACK sent before it is in place would let a device publish, on another
        worker, a message its subscriber here never gets.
        """
        bus = self.core.bus
        if bus is not None and not self.corked and bus.settle(self._uncork):
            self.corked = True

    def _uncork(self) -> None:
        if self.corked:
            self.corked = False
            self.wake()

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
            self._ack(b"\x40\x02" + p.packet_id.to_bytes(2, "big"))
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
                if self.broker.store is not None:
                    self._store_incoming(pid, message)
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
            self._ack(b"\x50\x02" + pid.to_bytes(2, "big"))

    def _store_incoming(self, pid: int, message: Message) -> None:
        store = self.broker.store
        assert store is not None
        session = self.session
        assert session is not None
        session.stored = True
        row = message_row(message, self.broker.clock)
        store.record(("in", session.key[0], session.key[1], pid, *row))

    def _on_pubrel(self, pid: int) -> None:
        session = self.session
        assert session is not None
        held = session.incoming_qos2.pop(pid, None)
        store = self.broker.store
        if self.v5:
            if held is not None:
                self.core.publish(held.message, self.info, client_id=self.client_id)
                if store is not None:
                    # After routing: a crash in between re-routes rather than loses.
                    store.record(("delin", session.key[0], session.key[1], pid))
            # 0x92: Packet Identifier not found (section 3.7.2.1); Mosquitto says 0.
            self._ack5(0x70, pid, 0 if held is not None else self._not_found(), "")
            return
        if held is not None:
            message = held.message
            self._route(message.topic, message.payload, 2, message.retain)
            if store is not None:
                store.record(("delin", session.key[0], session.key[1], pid))
        self._ack(b"\x70\x02" + pid.to_bytes(2, "big"))

    def _on_puback(self, pid: int) -> None:
        session = self.session
        assert session is not None
        entry = session.inflight.get(pid)
        if entry is None:
            return  # unknown id: an old duplicate; harmless
        if entry.qos != 1:
            raise ProtocolViolation(f"PUBACK for QoS 2 message {pid}")
        del session.inflight[pid]
        if entry.seq:
            session._untrack(entry.seq, entry.message)
        if session.queue:
            session.pump()

    def _on_pubrec(self, pid: int, code: int = 0) -> None:
        session = self.session
        assert session is not None
        entry = session.inflight.get(pid)
        if entry is not None:
            if entry.qos != 2:
                raise ProtocolViolation(f"PUBREC for QoS 1 message {pid}")
            if code >= 0x80:
                # MQTT 5: the client refused the message; the exchange ends here.
                del session.inflight[pid]
                if entry.seq:
                    session._untrack(entry.seq, entry.message)
                if session.queue:
                    session.pump()
                return
            if entry.seq and entry.state != _AWAIT_COMP:
                store = self.broker.store
                assert store is not None
                store.record(("outstate", entry.seq, _AWAIT_COMP))
            entry.state = _AWAIT_COMP
        if self.v5:
            if code < 0x80:
                self._ack5(0x62, pid, 0 if entry is not None else self._not_found(), "")
            return
        # Unknown ids get a PUBREL too, so a client that lost our state can finish.
        self._ack(bytes((0x62, 2)) + pid.to_bytes(2, "big"))

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
        if entry.seq:
            session._untrack(entry.seq, entry.message)
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
            if granted is not None and session.durable:
                self._store_sub(topic_filter, granted, -1, 0)
        if self.core.bus is not None:
            self._settle()
        body = p.packet_id.to_bytes(2, "big") + bytes(codes)
        self.write(encode_varint_prefix(0x90, len(body)) + body)
        # Retained messages follow the SUBACK (MQTT 3.1.1 section 3.8.4).
        self.core.purge_expired(self.now)
        for (topic_filter, _), code in zip(p.topics, codes, strict=True):
            if code != SUBACK_FAILURE:
                self.core.deliver_retained(session, topic_filter, code)

    def _store_sub(self, topic_filter: str, qos: int, options: int, sub_id: int) -> None:
        store = self.broker.store
        session = self.session
        assert store is not None
        assert session is not None
        store.record(("sub", session.key[0], session.key[1], topic_filter, qos, options, sub_id))

    def _on_unsubscribe(self, p: Unsubscribe) -> None:
        session = self.session
        assert session is not None
        if session.durable:
            store = self.broker.store
            assert store is not None
            for topic_filter in p.topics:
                store.record(("unsub", session.key[0], session.key[1], topic_filter))
        if not self.v5:
            for topic_filter in p.topics:
                self.core.unsubscribe(session, topic_filter)
            self.write(b"\xb0\x02" + p.packet_id.to_bytes(2, "big"))
            return
        codes = []
        for topic_filter in p.topics:
            existed = self.core.unsubscribe(session, topic_filter)
            old = session.options5.pop(topic_filter, None)
            if old is not None and (old[0] & 0x0C or old[1]):
                session.special5 -= 1
            codes.append(0 if existed else 0x11)  # 0x11: No subscription existed
        body = p.packet_id.to_bytes(2, "big") + b"\x00" + bytes(codes)
        self.write(encode_varint_prefix(0xB0, len(body)) + body)

    # --- teardown ----------------------------------------------------------------------

    def _shutdown(self) -> None:
        if self._shut:
            return
        self._shut = True
        self.corked = False
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
                if session.stored:
                    broker.drop_stored(session)
            elif session.durable:
                store = broker.store
                assert store is not None
                store.record(("offline", session.key[0], session.key[1], time.time()))
        if self.connected:
            self.core.events.emit(
                "mqtt.disconnected",
                "closed",
                identity=self.origin,
                peer=self.info.peer,
                client_id=self.client_id,
                reason=self.close_reason,
                graceful=self._graceful,
                reason_code=self.close_code,
                by=self.close_by,
                disconnect_sent=self.close_sent,
                protocol_level=self.protocol_level,
            )
        will = self.will
        self.will = None
        if will is not None and not self._graceful:
            message = Message(
                will.topic, will.payload, will.qos, will.retain, self.origin, "mqtt", self.now
            )
            message.meta = self.will_meta
            delay = self.will_delay
            if delay and session is not None and not session.clean:
                # MQTT 5 Will Delay: published after the delay, or when the session
                # ends, whichever is first; a reconnect in between cancels it.
                expiry = session.expiry if session.expiry is not None else delay
                broker.pending_wills[session.key] = (
                    self.now + min(delay, expiry),
                    message,
                    self.info,
                    self.client_id,
                )
                return
            self.core.publish(message, self.info, client_id=self.client_id)
