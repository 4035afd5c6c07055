"""MQTT 3.1 / 3.1.1 / 5.0 wire format, sans-I/O: packets in, bytes out and back.

The edge and the device simulator share this codec. ``encode(packet)`` returns the
bytes of one control packet; :class:`Parser` is incremental: ``feed(data)`` returns
every packet completed by ``data`` and keeps the rest. A parser is built for one
side of the connection (``server_side=True`` accepts only client-to-server packets),
and rejects what the specification calls malformed with :class:`MalformedPacket`
and what it forbids with :class:`ProtocolViolation`::

    MqttError                 (edge.mqtt.errors)                     reason_code
    ├── MalformedPacket       bad remaining length, short/long body,        0x81
    │                         bad UTF-8, reserved flag bits, QoS 3, packet
    │                         id 0, an unknown property or one the packet
    │                         may not carry, ...
    └── ProtocolViolation     wildcards in a PUBLISH topic, a packet meant  0x82
        │                     for the other side, DUP on QoS 0, a property
        │                     given twice, Receive Maximum 0, ...
        └── PacketTooLarge    rejected as soon as the length is known,      0x95
                              unbuffered

Every error carries ``reason`` (words for the event log) and ``reason_code`` (the
MQTT 5 code a server sends in its DISCONNECT, or CONNACK for a bad CONNECT).

**Protocol levels.** 3 (3.1) and 4 (3.1.1) share one wire format apart from
CONNECT; 5 (5.0) adds properties and reason codes to nearly every packet, and the
AUTH packet. The level belongs to the connection and is fixed by its CONNECT:

- a server-side :class:`Parser` starts at level 4 and parses a CONNECT of level 3, 4
  or 5; from then on it parses at that CONNECT's level (``parser.protocol_level``);
- a client-side parser sees no CONNECT: its owner says the level,
  ``Parser(server_side=False, protocol_level=5)`` or ``parser.set_protocol_level(5)``;
- ``encode(packet, protocol_level=5)`` writes the 5.0 form; the default (4) writes
  exactly the bytes 3.1.1 always did. A :class:`Connect` is written at its own
  ``protocol_level``.

MQTT 5 fields live on the same packet classes, with defaults that mean "nothing to
say": ``properties=None`` (:class:`~edge.mqtt.properties.Properties` otherwise) and
``reason_code=0`` (:mod:`edge.mqtt.reasons` names them). Encoding a packet that
carries them at level 3/4 raises ``ValueError`` rather than dropping them silently.

Strings follow Mosquitto's validation (MQTT 3.1.1 section 1.5.3, 5.0 section 1.5.4):
well-formed UTF-8 without U+0000, control characters (U+0001-U+001F,
U+007F-U+009F) or non-characters; passwords, binary data and payloads are not
checked. Where wildcards may stand in a topic is the rule of :mod:`edge.core.topics`
(pure, shared by every protocol); the codec adds the wire's limits on top.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Final

from edge.core.topics import valid_filter, valid_name
from edge.mqtt.errors import MalformedPacket, MqttError, PacketTooLarge, ProtocolViolation
from edge.mqtt.properties import (
    ASSIGNED_CLIENT_IDENTIFIER,
    AUTHENTICATION_METHOD,
    BINARY,
    BYTE,
    CONTENT_TYPE,
    CORRELATION_DATA,
    FOUR_BYTE_INT,
    MAXIMUM_QOS,
    MESSAGE_EXPIRY_INTERVAL,
    PAYLOAD_FORMAT_INDICATOR,
    PROPERTIES,
    RECEIVE_MAXIMUM,
    REQUEST_PROBLEM_INFORMATION,
    REQUEST_RESPONSE_INFORMATION,
    RESPONSE_INFORMATION,
    RESPONSE_TOPIC,
    RETAIN_AVAILABLE,
    SERVER_KEEP_ALIVE,
    SERVER_REFERENCE,
    SESSION_EXPIRY_INTERVAL,
    STRING,
    STRING_PAIR,
    SUBSCRIPTION_IDENTIFIER,
    SUBSCRIPTION_IDENTIFIER_AVAILABLE,
    TOPIC_ALIAS_MAXIMUM,
    TWO_BYTE_INT,
    USER_PROPERTY,
    VARIABLE_BYTE_INT,
    WILDCARD_SUBSCRIPTION_AVAILABLE,
    WILL_DELAY_INTERVAL,
    WILL_PROPERTIES,
    Properties,
    encode_properties,
    encode_varint,
)
from edge.mqtt.reasons import CLIENT_IDENTIFIER_NOT_VALID, allowed_in, reason_name

__all__ = [
    "AUTH",
    "CONNACK",
    "CONNECT",
    "DISCONNECT",
    "PINGREQ",
    "PINGRESP",
    "PUBACK",
    "PUBCOMP",
    "PUBLISH",
    "PUBREC",
    "PUBREL",
    "SUBACK",
    "SUBSCRIBE",
    "UNSUBACK",
    "UNSUBSCRIBE",
    "Auth",
    "Connack",
    "Connect",
    "Disconnect",
    "MalformedPacket",
    "MqttError",
    "Packet",
    "PacketTooLarge",
    "Parser",
    "Pingreq",
    "Pingresp",
    "Properties",
    "ProtocolViolation",
    "Puback",
    "Pubcomp",
    "Publish",
    "Pubrec",
    "Pubrel",
    "Suback",
    "Subscribe",
    "SubscriptionOptions",
    "Unsuback",
    "Unsubscribe",
    "Will",
    "encode",
    "encode_publish",
    "encode_publish5",
    "encode_varint",
    "encode_varint_prefix",
    "reason_name",
    "valid_topic_filter",
    "valid_topic_name",
    "validate_string",
]

# Control packet types (the high nibble of the first byte).
CONNECT: Final = 1
CONNACK: Final = 2
PUBLISH: Final = 3
PUBACK: Final = 4
PUBREC: Final = 5
PUBREL: Final = 6
PUBCOMP: Final = 7
SUBSCRIBE: Final = 8
SUBACK: Final = 9
UNSUBSCRIBE: Final = 10
UNSUBACK: Final = 11
PINGREQ: Final = 12
PINGRESP: Final = 13
DISCONNECT: Final = 14
#: MQTT 5 only; in 3.1/3.1.1 type 15 is reserved (malformed).
AUTH: Final = 15

#: Connack return codes (MQTT 3.1.1 section 3.2.2.3).
CONNACK_ACCEPTED: Final = 0
CONNACK_BAD_PROTOCOL_VERSION: Final = 1
CONNACK_IDENTIFIER_REJECTED: Final = 2
CONNACK_SERVER_UNAVAILABLE: Final = 3
CONNACK_BAD_CREDENTIALS: Final = 4
CONNACK_NOT_AUTHORIZED: Final = 5
#: The SUBACK return code for a refused subscription.
SUBACK_FAILURE: Final = 0x80

#: Subscription options (MQTT 5 section 3.8.3.1): the byte after each topic filter,
#: which in 3.1/3.1.1 holds only the requested QoS.
NO_LOCAL: Final = 0x04
RETAIN_AS_PUBLISHED: Final = 0x08

_NAMES: Final = {
    0: "reserved type 0",
    CONNECT: "CONNECT",
    CONNACK: "CONNACK",
    PUBLISH: "PUBLISH",
    PUBACK: "PUBACK",
    PUBREC: "PUBREC",
    PUBREL: "PUBREL",
    PUBCOMP: "PUBCOMP",
    SUBSCRIBE: "SUBSCRIBE",
    SUBACK: "SUBACK",
    UNSUBSCRIBE: "UNSUBSCRIBE",
    UNSUBACK: "UNSUBACK",
    PINGREQ: "PINGREQ",
    PINGRESP: "PINGRESP",
    DISCONNECT: "DISCONNECT",
    15: "reserved type 15",
}
# MQTT 5 gave type 15 a name.
_NAMES5: Final = {**_NAMES, AUTH: "AUTH"}

# Characters Mosquitto refuses in MQTT strings: NUL and C0/C1 controls, U+FDD0-U+FDEF,
# and the two non-characters at the end of every plane.
_BAD_CHARS: Final = re.compile(
    "[\x00-\x1f\x7f-\x9f\ufdd0-\ufdef"
    + "".join(f"{chr(p * 0x10000 + 0xFFFE)}{chr(p * 0x10000 + 0xFFFF)}" for p in range(17))
    + "]"
)


# --- packets ---------------------------------------------------------------------------


@dataclass(slots=True)
class Will:
    """The will message of a CONNECT: published by the broker on abnormal disconnect.

    ``properties`` are the MQTT 5 will properties (Will Delay Interval, Payload
    Format Indicator, Message Expiry Interval, Content Type, Response Topic,
    Correlation Data, User Property).
    """

    topic: str
    payload: bytes = b""
    qos: int = 0
    retain: bool = False
    properties: Properties | None = None


@dataclass(init=False, slots=True)
class Connect:
    """CONNECT (client to server).

    ``protocol_level`` 3 is MQTT 3.1 (``MQIsdp``), 4 is 3.1.1, 5 is 5.0.
    ``clean_session`` is the same bit that MQTT 5 calls Clean Start (in 5.0 the
    session's lifetime is the Session Expiry Interval property). ``properties`` is
    MQTT 5 only.
    """

    client_id: str
    clean_session: bool
    keepalive: int
    will: Will | None
    username: str | None
    password: bytes | None
    protocol_name: str
    protocol_level: int
    properties: Properties | None
    type: int = field(default=CONNECT, init=False, repr=False)

    # Written out, not generated: one per connect, and compiled (edge.compiled) a
    # hand-written __init__ is native where the generated one stays interpreted.
    def __init__(
        self,
        client_id: str = "",
        clean_session: bool = True,
        keepalive: int = 60,
        will: Will | None = None,
        username: str | None = None,
        password: bytes | None = None,
        protocol_name: str = "MQTT",
        protocol_level: int = 4,
        properties: Properties | None = None,
    ) -> None:
        self.client_id = client_id
        self.clean_session = clean_session
        self.keepalive = keepalive
        self.will = will
        self.username = username
        self.password = password
        self.protocol_name = protocol_name
        self.protocol_level = protocol_level
        self.properties = properties
        self.type = CONNECT


@dataclass(slots=True)
class Connack:
    """CONNACK (server to client).

    ``return_code`` is the 3.1.1 return code (0-5) or, in MQTT 5, the reason code
    (:attr:`reason_code` is the same value under its MQTT 5 name).
    """

    session_present: bool = False
    return_code: int = CONNACK_ACCEPTED
    properties: Properties | None = None
    type: int = field(default=CONNACK, init=False, repr=False)

    @property
    def reason_code(self) -> int:
        """The MQTT 5 name of :attr:`return_code`."""
        return self.return_code


@dataclass(init=False, slots=True)
class Publish:
    """PUBLISH (both directions). ``packet_id`` is ``None`` exactly when ``qos`` is 0.

    In MQTT 5 ``topic`` may be empty when ``properties.topic_alias`` is set: the
    codec only parses; mapping aliases to topics (and refusing an unknown alias or
    one above the Topic Alias Maximum with 0x94) is the receiver's job, per
    connection and direction. Nor does it hold the payload to its Payload Format
    Indicator (a receiver MAY, answering 0x99 Payload format invalid).
    """

    topic: str
    payload: bytes
    qos: int
    retain: bool
    dup: bool
    packet_id: int | None
    #: The packet's bytes as received, set by the parser for QoS 0 without retain or
    #: DUP (and, in MQTT 5, without properties): exactly what a QoS 0 subscriber of
    #: the same protocol level gets, so the broker forwards it unchanged.
    raw: bytes | None = field(default=None, compare=False, repr=False)
    properties: Properties | None = None
    type: int = field(default=PUBLISH, init=False, repr=False)

    def __init__(  # native when compiled (see Connect); one per message
        self,
        topic: str,
        payload: bytes = b"",
        qos: int = 0,
        retain: bool = False,
        dup: bool = False,
        packet_id: int | None = None,
        raw: bytes | None = None,
        properties: Properties | None = None,
    ) -> None:
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain
        self.dup = dup
        self.packet_id = packet_id
        self.raw = raw
        self.properties = properties
        self.type = PUBLISH


@dataclass(slots=True)
class Puback:
    """PUBACK: acknowledges a QoS 1 PUBLISH (MQTT 5: with a reason code)."""

    packet_id: int
    reason_code: int = 0
    properties: Properties | None = None
    type: int = field(default=PUBACK, init=False, repr=False)


@dataclass(slots=True)
class Pubrec:
    """PUBREC: first acknowledgement of a QoS 2 PUBLISH (MQTT 5: with a reason code)."""

    packet_id: int
    reason_code: int = 0
    properties: Properties | None = None
    type: int = field(default=PUBREC, init=False, repr=False)


@dataclass(slots=True)
class Pubrel:
    """PUBREL: releases a QoS 2 message (fixed-header flags must be 0010)."""

    packet_id: int
    reason_code: int = 0
    properties: Properties | None = None
    type: int = field(default=PUBREL, init=False, repr=False)


@dataclass(slots=True)
class Pubcomp:
    """PUBCOMP: completes a QoS 2 exchange."""

    packet_id: int
    reason_code: int = 0
    properties: Properties | None = None
    type: int = field(default=PUBCOMP, init=False, repr=False)


@dataclass(slots=True)
class Subscribe:
    """SUBSCRIBE: ``topics`` is a non-empty list of ``(filter, options)``.

    ``options`` is the byte after the filter: in 3.1/3.1.1 the requested QoS; in
    MQTT 5 the subscription options (QoS in bits 0-1, :data:`NO_LOCAL`,
    :data:`RETAIN_AS_PUBLISHED`, Retain Handling in bits 4-5), which
    :class:`SubscriptionOptions` takes apart.
    """

    packet_id: int
    topics: list[tuple[str, int]]
    properties: Properties | None = None
    type: int = field(default=SUBSCRIBE, init=False, repr=False)


@dataclass(frozen=True, slots=True)
class SubscriptionOptions:
    """The MQTT 5 subscription options byte, taken apart (section 3.8.3.1)."""

    qos: int = 0
    no_local: bool = False
    retain_as_published: bool = False
    #: 0: send retained messages on subscribe; 1: only if the subscription is new;
    #: 2: never.
    retain_handling: int = 0

    @staticmethod
    def from_byte(options: int) -> SubscriptionOptions:
        """Split an options byte (not validated: the parser already did)."""
        return SubscriptionOptions(
            options & 0x03,
            bool(options & NO_LOCAL),
            bool(options & RETAIN_AS_PUBLISHED),
            (options >> 4) & 0x03,
        )

    def to_byte(self) -> int:
        """The byte as it goes on the wire."""
        return (
            self.qos
            | (NO_LOCAL if self.no_local else 0)
            | (RETAIN_AS_PUBLISHED if self.retain_as_published else 0)
            | self.retain_handling << 4
        )


@dataclass(slots=True)
class Suback:
    """SUBACK: one code per requested filter.

    3.1/3.1.1: granted QoS 0-2 or 0x80 failure; MQTT 5: a reason code (0x00-0x02
    granted QoS, 0x80 and above refused).
    """

    packet_id: int
    return_codes: list[int]
    properties: Properties | None = None
    type: int = field(default=SUBACK, init=False, repr=False)


@dataclass(slots=True)
class Unsubscribe:
    """UNSUBSCRIBE: a non-empty list of filters."""

    packet_id: int
    topics: list[str]
    properties: Properties | None = None
    type: int = field(default=UNSUBSCRIBE, init=False, repr=False)


@dataclass(slots=True)
class Unsuback:
    """UNSUBACK. ``reason_codes`` (one per filter) and ``properties`` are MQTT 5 only."""

    packet_id: int
    reason_codes: list[int] = field(default_factory=list)
    properties: Properties | None = None
    type: int = field(default=UNSUBACK, init=False, repr=False)


@dataclass(slots=True)
class Pingreq:
    """PINGREQ."""

    type: int = field(default=PINGREQ, init=False, repr=False)


@dataclass(slots=True)
class Pingresp:
    """PINGRESP."""

    type: int = field(default=PINGRESP, init=False, repr=False)


@dataclass(init=False, slots=True)
class Disconnect:
    """DISCONNECT: the client's clean goodbye (its will is discarded).

    MQTT 5: either side may send it, with a reason code (0x00 "Normal
    disconnection"; 0x04 asks the server to publish the will anyway) and properties.
    """

    reason_code: int
    properties: Properties | None
    type: int = field(default=DISCONNECT, init=False, repr=False)

    def __init__(  # native when compiled (see Connect)
        self, reason_code: int = 0, properties: Properties | None = None
    ) -> None:
        self.reason_code = reason_code
        self.properties = properties
        self.type = DISCONNECT


@dataclass(slots=True)
class Auth:
    """AUTH (MQTT 5 only, both directions): a step of enhanced authentication.

    ``reason_code`` is 0x00 Success, 0x18 Continue authentication or 0x19
    Re-authenticate; the properties must name the Authentication Method.
    """

    reason_code: int = 0
    properties: Properties | None = None
    type: int = field(default=AUTH, init=False, repr=False)


Packet = (
    Connect
    | Connack
    | Publish
    | Puback
    | Pubrec
    | Pubrel
    | Pubcomp
    | Subscribe
    | Suback
    | Unsubscribe
    | Unsuback
    | Pingreq
    | Pingresp
    | Disconnect
    | Auth
)

# --- validation helpers ----------------------------------------------------------------


def validate_string(raw: bytes, what: str) -> str:
    """Decode an MQTT UTF-8 string, raising :class:`MalformedPacket` naming ``what``."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        # Python's strict codec also refuses encoded surrogates (U+D800-U+DFFF).
        raise MalformedPacket(f"{what}: invalid UTF-8 at byte {exc.start}") from None
    if _BAD_CHARS.search(text) is not None:
        bad = _BAD_CHARS.search(text)
        assert bad is not None
        raise MalformedPacket(
            f"{what}: forbidden character U+{ord(bad.group()):04X} at position {bad.start()}"
        )
    return text


def valid_topic_name(topic: str) -> bool:
    """True if ``topic`` may be published to: non-empty, no wildcards, at most 65535 bytes."""
    return (
        valid_name(topic)
        and len(topic.encode("utf-8")) <= 0xFFFF
        and _BAD_CHARS.search(topic) is None
    )


def valid_topic_filter(topic_filter: str) -> bool:
    """True if ``topic_filter`` is a valid subscription filter.

    ``+`` must fill a whole level; ``#`` must fill the last level.
    """
    # The wildcard rules belong to edge.core (every protocol shares them); the codec
    # adds only what the wire imposes: the 16-bit length and the forbidden characters.
    return (
        len(topic_filter.encode("utf-8")) <= 0xFFFF
        and _BAD_CHARS.search(topic_filter) is None
        and valid_filter(topic_filter)
    )


# --- encoding --------------------------------------------------------------------------


def _string(text: str) -> bytes:
    raw = text.encode("utf-8")
    if len(raw) > 0xFFFF:
        raise ValueError(f"string of {len(raw)} bytes exceeds 65535")
    return len(raw).to_bytes(2, "big") + raw


def _binary(data: bytes) -> bytes:
    if len(data) > 0xFFFF:
        raise ValueError(f"binary field of {len(data)} bytes exceeds 65535")
    return len(data).to_bytes(2, "big") + data


def encode_publish(
    topic: bytes, payload: bytes, qos: int, retain: bool, dup: bool, packet_id: int | None
) -> bytes:
    """Encode a PUBLISH from an already UTF-8 encoded ``topic`` (the broker's fast path)."""
    first = 0x30 | (qos << 1) | (0x01 if retain else 0) | (0x08 if dup else 0)
    tlen = len(topic)
    if tlen > 0xFFFF:
        raise ValueError(f"topic of {tlen} bytes exceeds 65535")
    if qos:
        if packet_id is None:
            raise ValueError("a QoS 1/2 PUBLISH needs a packet id")
        body_len = 4 + tlen + len(payload)
        return b"".join(
            (
                encode_varint_prefix(first, body_len),
                tlen.to_bytes(2, "big"),
                topic,
                packet_id.to_bytes(2, "big"),
                payload,
            )
        )
    body_len = 2 + tlen + len(payload)
    return b"".join(
        (encode_varint_prefix(first, body_len), tlen.to_bytes(2, "big"), topic, payload)
    )


def encode_varint_prefix(first: int, remaining: int) -> bytes:
    """The fixed header: the first byte followed by the remaining length."""
    if remaining < 128:
        return bytes((first, remaining))
    return bytes((first,)) + encode_varint(remaining)


def _fixed(first: int, body: bytes) -> bytes:
    return encode_varint_prefix(first, len(body)) + body


def encode(packet: Packet, protocol_level: int = 4) -> bytes:
    """Return the wire bytes of ``packet`` at ``protocol_level`` (3/4: MQTT 3.1/3.1.1, 5).

    A :class:`Connect` is written at its own ``protocol_level``, whatever the argument.
    MQTT 5 acknowledgements use the short forms where the reason code is 0 and there
    are no properties (PUBACK and friends of remaining length 2, DISCONNECT and AUTH
    of remaining length 0). Raises ``ValueError`` for values that cannot be encoded
    (a packet id outside 1..65535, a string over 65535 bytes, QoS outside 0..2, a
    property the packet may not carry) and for MQTT 5 fields (properties, a non-zero
    reason code, AUTH) at level 3/4.
    """
    if protocol_level == 5:
        return _encode5(packet)
    if isinstance(packet, Publish):
        if packet.qos not in (0, 1, 2):
            raise ValueError(f"PUBLISH qos {packet.qos} not in 0..2")
        if packet.qos and not (packet.packet_id and 0 < packet.packet_id <= 0xFFFF):
            raise ValueError(f"PUBLISH packet id {packet.packet_id} not in 1..65535")
        if packet.properties is not None:
            raise ValueError("PUBLISH properties need MQTT 5")
        return encode_publish(
            packet.topic.encode("utf-8"),
            packet.payload,
            packet.qos,
            packet.retain,
            packet.dup,
            packet.packet_id if packet.qos else None,
        )
    if isinstance(packet, Puback | Pubrec | Pubrel | Pubcomp):
        _check_id(packet.packet_id)
        if packet.reason_code or packet.properties is not None:
            raise ValueError(f"{_NAMES[packet.type]} reason code and properties need MQTT 5")
        flags = 0x02 if packet.type == PUBREL else 0
        return bytes((packet.type << 4 | flags, 2)) + packet.packet_id.to_bytes(2, "big")
    if isinstance(packet, Unsuback):
        _check_id(packet.packet_id)
        if packet.reason_codes or packet.properties is not None:
            raise ValueError("UNSUBACK reason codes and properties need MQTT 5")
        return b"\xb0\x02" + packet.packet_id.to_bytes(2, "big")
    if isinstance(packet, Pingreq):
        return b"\xc0\x00"
    if isinstance(packet, Pingresp):
        return b"\xd0\x00"
    if isinstance(packet, Disconnect):
        if packet.reason_code or packet.properties is not None:
            raise ValueError("DISCONNECT reason code and properties need MQTT 5")
        return b"\xe0\x00"
    if isinstance(packet, Auth):
        raise ValueError("AUTH needs MQTT 5")
    if isinstance(packet, Connack):
        if packet.properties is not None:
            raise ValueError("CONNACK properties need MQTT 5")
        return bytes((0x20, 2, 1 if packet.session_present else 0, packet.return_code))
    if isinstance(packet, Suback):
        _check_id(packet.packet_id)
        if packet.properties is not None:
            raise ValueError("SUBACK properties need MQTT 5")
        return _fixed(0x90, packet.packet_id.to_bytes(2, "big") + bytes(packet.return_codes))
    if isinstance(packet, Subscribe):
        _check_id(packet.packet_id)
        if packet.properties is not None:
            raise ValueError("SUBSCRIBE properties need MQTT 5")
        parts = [packet.packet_id.to_bytes(2, "big")]
        for topic_filter, qos in packet.topics:
            if qos not in (0, 1, 2):
                raise ValueError(f"SUBSCRIBE qos {qos} for {topic_filter!r} not in 0..2")
            parts.append(_string(topic_filter))
            parts.append(bytes((qos,)))
        return _fixed(0x82, b"".join(parts))
    if isinstance(packet, Unsubscribe):
        _check_id(packet.packet_id)
        if packet.properties is not None:
            raise ValueError("UNSUBSCRIBE properties need MQTT 5")
        parts = [packet.packet_id.to_bytes(2, "big")]
        parts.extend(_string(t) for t in packet.topics)
        return _fixed(0xA2, b"".join(parts))
    return _encode_connect(packet)


def _check_id(packet_id: int) -> None:
    if not 0 < packet_id <= 0xFFFF:
        raise ValueError(f"packet id {packet_id} not in 1..65535")


def _encode_connect(p: Connect) -> bytes:
    if p.protocol_level == 5:
        return _encode_connect5(p)
    if p.properties is not None or (p.will is not None and p.will.properties is not None):
        raise ValueError("CONNECT properties need MQTT 5")
    flags = 0x02 if p.clean_session else 0
    payload = [_string(p.client_id)]
    if p.will is not None:
        if p.will.qos not in (0, 1, 2):
            raise ValueError(f"CONNECT will qos {p.will.qos} not in 0..2")
        flags |= 0x04 | (p.will.qos << 3) | (0x20 if p.will.retain else 0)
        payload.append(_string(p.will.topic))
        payload.append(_binary(p.will.payload))
    if p.username is not None:
        flags |= 0x80
        payload.append(_string(p.username))
    if p.password is not None:
        flags |= 0x40
        payload.append(_binary(p.password))
    body = b"".join(
        (
            _string(p.protocol_name),
            bytes((p.protocol_level, flags)),
            p.keepalive.to_bytes(2, "big"),
            *payload,
        )
    )
    return _fixed(0x10, body)


# --- encoding, MQTT 5 ------------------------------------------------------------------


def encode_publish5(
    topic: bytes,
    payload: bytes,
    qos: int,
    retain: bool,
    dup: bool,
    packet_id: int | None,
    properties: bytes = b"\x00",
) -> bytes:
    """Encode an MQTT 5 PUBLISH from an encoded ``topic`` and encoded ``properties``.

    ``properties`` is the output of :func:`~edge.mqtt.properties.encode_properties`
    (property length included), so a broker can encode them once per message.
    """
    first = 0x30 | (qos << 1) | (0x01 if retain else 0) | (0x08 if dup else 0)
    tlen = len(topic)
    if tlen > 0xFFFF:
        raise ValueError(f"topic of {tlen} bytes exceeds 65535")
    if qos:
        if packet_id is None:
            raise ValueError("a QoS 1/2 PUBLISH needs a packet id")
        head = tlen.to_bytes(2, "big") + topic + packet_id.to_bytes(2, "big")
    else:
        head = tlen.to_bytes(2, "big") + topic
    body_len = len(head) + len(properties) + len(payload)
    return b"".join((encode_varint_prefix(first, body_len), head, properties, payload))


def _check_reason(code: int, kind: int) -> None:
    if not allowed_in(code, kind):
        raise ValueError(f"{_NAMES5[kind]}: reason code {code:#04x} is not allowed")


def _encode5(packet: Packet) -> bytes:
    if isinstance(packet, Publish):
        if packet.qos not in (0, 1, 2):
            raise ValueError(f"PUBLISH qos {packet.qos} not in 0..2")
        if packet.qos and not (packet.packet_id and 0 < packet.packet_id <= 0xFFFF):
            raise ValueError(f"PUBLISH packet id {packet.packet_id} not in 1..65535")
        return encode_publish5(
            packet.topic.encode("utf-8"),
            packet.payload,
            packet.qos,
            packet.retain,
            packet.dup,
            packet.packet_id if packet.qos else None,
            encode_properties(packet.properties, PUBLISH),
        )
    if isinstance(packet, Puback | Pubrec | Pubrel | Pubcomp):
        _check_id(packet.packet_id)
        _check_reason(packet.reason_code, packet.type)
        first = packet.type << 4 | (0x02 if packet.type == PUBREL else 0)
        pid = packet.packet_id.to_bytes(2, "big")
        props = encode_properties(packet.properties, packet.type)
        if props == b"\x00":  # the short forms (section 3.4.2.1)
            if packet.reason_code == 0:
                return bytes((first, 2)) + pid
            return bytes((first, 3)) + pid + bytes((packet.reason_code,))
        return _fixed(first, pid + bytes((packet.reason_code,)) + props)
    if isinstance(packet, Pingreq):
        return b"\xc0\x00"
    if isinstance(packet, Pingresp):
        return b"\xd0\x00"
    if isinstance(packet, Disconnect | Auth):
        _check_reason(packet.reason_code, packet.type)
        first = packet.type << 4
        props = encode_properties(packet.properties, packet.type)
        if props == b"\x00":
            if packet.reason_code == 0:
                return bytes((first, 0))
            if packet.type == DISCONNECT:  # may stop after the reason code (3.14.2.2.1)
                return bytes((first, 1, packet.reason_code))
        return _fixed(first, bytes((packet.reason_code,)) + props)
    if isinstance(packet, Connack):
        _check_reason(packet.return_code, CONNACK)
        flags = 1 if packet.session_present else 0
        props = encode_properties(packet.properties, CONNACK)
        return _fixed(0x20, bytes((flags, packet.return_code)) + props)
    if isinstance(packet, Suback):
        _check_id(packet.packet_id)
        for code in packet.return_codes:
            _check_reason(code, SUBACK)
        props = encode_properties(packet.properties, SUBACK)
        return _fixed(
            0x90, packet.packet_id.to_bytes(2, "big") + props + bytes(packet.return_codes)
        )
    if isinstance(packet, Unsuback):
        _check_id(packet.packet_id)
        for code in packet.reason_codes:
            _check_reason(code, UNSUBACK)
        props = encode_properties(packet.properties, UNSUBACK)
        return _fixed(
            0xB0, packet.packet_id.to_bytes(2, "big") + props + bytes(packet.reason_codes)
        )
    if isinstance(packet, Subscribe):
        _check_id(packet.packet_id)
        parts = [
            packet.packet_id.to_bytes(2, "big"),
            encode_properties(packet.properties, SUBSCRIBE),
        ]
        for topic_filter, options in packet.topics:
            if options & 0xC0 or options & 0x03 == 3 or options & 0x30 == 0x30:
                raise ValueError(f"SUBSCRIBE options {options:#04x} for {topic_filter!r} invalid")
            parts.append(_string(topic_filter))
            parts.append(bytes((options,)))
        return _fixed(0x82, b"".join(parts))
    if isinstance(packet, Unsubscribe):
        _check_id(packet.packet_id)
        parts = [
            packet.packet_id.to_bytes(2, "big"),
            encode_properties(packet.properties, UNSUBSCRIBE),
        ]
        parts.extend(_string(t) for t in packet.topics)
        return _fixed(0xA2, b"".join(parts))
    return _encode_connect(packet)


def _encode_connect5(p: Connect) -> bytes:
    flags = 0x02 if p.clean_session else 0
    payload = [_string(p.client_id)]
    if p.will is not None:
        if p.will.qos not in (0, 1, 2):
            raise ValueError(f"CONNECT will qos {p.will.qos} not in 0..2")
        flags |= 0x04 | (p.will.qos << 3) | (0x20 if p.will.retain else 0)
        payload.append(encode_properties(p.will.properties, WILL_PROPERTIES))
        payload.append(_string(p.will.topic))
        payload.append(_binary(p.will.payload))
    if p.username is not None:
        flags |= 0x80
        payload.append(_string(p.username))
    if p.password is not None:  # MQTT 5 allows a password without a user name
        flags |= 0x40
        payload.append(_binary(p.password))
    body = b"".join(
        (
            _string(p.protocol_name),
            bytes((5, flags)),
            p.keepalive.to_bytes(2, "big"),
            encode_properties(p.properties, CONNECT),
            *payload,
        )
    )
    return _fixed(0x10, body)


# --- decoding --------------------------------------------------------------------------

_CLIENT_TO_SERVER: Final = frozenset(
    {CONNECT, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP, SUBSCRIBE, UNSUBSCRIBE, PINGREQ, DISCONNECT}
)
_SERVER_TO_CLIENT: Final = frozenset(
    {CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK, UNSUBACK, PINGRESP}
)
# MQTT 5 adds AUTH both ways and lets the server send DISCONNECT.
_CLIENT_TO_SERVER5: Final = _CLIENT_TO_SERVER | {AUTH}
_SERVER_TO_CLIENT5: Final = _SERVER_TO_CLIENT | {DISCONNECT, AUTH}
# Fixed-header flags each packet type must carry (PUBLISH and CONNECT are handled apart).
_REQUIRED_FLAGS: Final = {
    CONNACK: 0,
    PUBACK: 0,
    PUBREC: 0,
    PUBREL: 2,
    PUBCOMP: 0,
    SUBSCRIBE: 2,
    SUBACK: 0,
    UNSUBSCRIBE: 2,
    UNSUBACK: 0,
    PINGREQ: 0,
    PINGRESP: 0,
    DISCONNECT: 0,
    AUTH: 0,
}


class _Reader:
    """A cursor over one packet body; every read names the field it was reading."""

    __slots__ = ("data", "end", "name", "pos")

    def __init__(self, data: bytes, start: int, end: int, name: str) -> None:
        self.data = data
        self.pos = start
        self.end = end
        self.name = name

    def u8(self, what: str) -> int:
        if self.pos >= self.end:
            raise MalformedPacket(f"{self.name}: truncated before {what}")
        value = self.data[self.pos]
        self.pos += 1
        return value

    def u16(self, what: str) -> int:
        pos = self.pos
        if pos + 2 > self.end:
            raise MalformedPacket(f"{self.name}: truncated before {what}")
        self.pos = pos + 2
        return (self.data[pos] << 8) | self.data[pos + 1]

    def binary(self, what: str) -> bytes:
        size = self.u16(f"{what} length")
        pos = self.pos
        if pos + size > self.end:
            raise MalformedPacket(
                f"{self.name}: {what} length {size} runs past the end of the packet"
            )
        self.pos = pos + size
        return self.data[pos : pos + size]

    def string(self, what: str) -> str:
        return validate_string(self.binary(what), f"{self.name} {what}")

    def u32(self, what: str) -> int:
        pos = self.pos
        if pos + 4 > self.end:
            raise MalformedPacket(f"{self.name}: truncated before {what}")
        self.pos = pos + 4
        return int.from_bytes(self.data[pos : pos + 4], "big")

    def varint(self, what: str) -> int:
        """A variable byte integer: at most 4 bytes, and no longer than needed."""
        value = 0
        shift = 0
        for _ in range(4):
            byte = self.u8(what)
            value |= (byte & 0x7F) << shift
            if byte < 128:
                if byte == 0 and shift:
                    # 0x80 0x00 and the like: section 1.5.5 demands the shortest form.
                    raise MalformedPacket(f"{self.name}: {what} is not minimally encoded")
                return value
            shift += 7
        raise MalformedPacket(f"{self.name}: {what} longer than 4 bytes")

    def packet_id(self) -> int:
        value = self.u16("packet identifier")
        if value == 0:
            raise MalformedPacket(f"{self.name}: packet identifier 0")
        return value

    def done(self) -> None:
        if self.pos != self.end:
            raise MalformedPacket(f"{self.name}: {self.end - self.pos} unexpected trailing bytes")


class Parser:
    """Incremental MQTT 3.1/3.1.1/5.0 parser for one direction of one connection.

    ``server_side=True`` parses what a client sends (CONNECT, PUBLISH, SUBSCRIBE, ...);
    ``False`` parses what a broker sends. A packet larger than ``max_packet_size``
    (fixed header included) raises :class:`PacketTooLarge` as soon as its remaining
    length is read; its body is never buffered. After an error the parser is
    unusable (the connection must be closed).

    ``protocol_level`` (3, 4 or 5; default 4) is the format of every packet but
    CONNECT, which states its own. A server-side parser takes the level of each
    CONNECT it parses, so the packets after it (even in the same ``feed``) are
    read at that level; a client-side parser is told (here, or with
    :meth:`set_protocol_level`).
    """

    __slots__ = (
        "_buf",
        "_level",
        "_need",
        "_topics",
        "allowed",
        "max_packet_size",
        "server_side",
    )

    def __init__(
        self,
        max_packet_size: int = 268_435_460,
        server_side: bool = True,
        protocol_level: int = 4,
    ) -> None:
        self.max_packet_size = max_packet_size
        self.server_side = server_side
        self.allowed = _CLIENT_TO_SERVER if server_side else _SERVER_TO_CLIENT
        self._level = 4
        self._buf = bytearray()
        self._need = 0  # bytes the buffered partial packet needs before parsing again
        # Validated PUBLISH topics by their raw bytes: devices repeat a few topics.
        self._topics: dict[bytes, str] = {}
        self.set_protocol_level(protocol_level)

    @property
    def buffered(self) -> int:
        """How many bytes of an incomplete packet are held."""
        return len(self._buf)

    @property
    def protocol_level(self) -> int:
        """The level packets other than CONNECT are parsed at: 3, 4 or 5."""
        return self._level

    def set_protocol_level(self, level: int) -> None:
        """Parse the packets from now on at ``level`` (3, 4 or 5)."""
        if level not in (3, 4, 5):
            raise ValueError(f"protocol level {level} not in 3, 4, 5")
        self._level = level
        if level == 5:
            self.allowed = _CLIENT_TO_SERVER5 if self.server_side else _SERVER_TO_CLIENT5
        else:
            self.allowed = _CLIENT_TO_SERVER if self.server_side else _SERVER_TO_CLIENT

    def feed(self, data: bytes) -> list[Packet]:
        """Consume ``data``; return the packets it completes, in order."""
        if self._buf:
            self._buf += data
            if len(self._buf) < self._need:
                return []
            buf: bytes = bytes(self._buf)
            self._buf.clear()
        else:
            buf = data if type(data) is bytes else bytes(data)
        out: list[Packet] = []
        pos = 0
        size = len(buf)
        while pos < size:
            if size - pos < 2:
                self._need = 2
                break
            first = buf[pos]
            # Decode the remaining length (1-4 bytes, 7 bits each, low group first).
            byte = buf[pos + 1]
            if byte < 128:
                remaining = byte
                header = 2
            else:
                remaining = byte & 0x7F
                multiplier = 128
                header = 2
                complete = False
                while True:
                    if pos + header >= size:
                        break
                    byte = buf[pos + header]
                    header += 1
                    remaining += (byte & 0x7F) * multiplier
                    if byte < 128:
                        complete = True
                        break
                    if header == 5:
                        raise MalformedPacket(
                            f"{_NAMES[first >> 4]}: remaining length longer than 4 bytes"
                        )
                    multiplier *= 128
                if not complete:
                    self._need = size - pos + 1
                    break
            total = header + remaining
            if total > self.max_packet_size:
                raise PacketTooLarge(total, self.max_packet_size)
            end = pos + total
            if end > size:
                self._need = total
                break
            if first >> 4 == PUBLISH:  # the hot path skips the general dispatch
                out.append(self._publish(first & 0x0F, buf, pos + header, end, pos))
            else:
                out.append(self._decode(first, buf, pos + header, end))
            pos = end
        if pos < size:
            self._buf += memoryview(buf)[pos:]
        return out

    def _decode(self, first: int, buf: bytes, start: int, end: int) -> Packet:
        kind = first >> 4
        flags = first & 0x0F
        if kind not in self.allowed:
            if kind == 0 or kind == 15:
                raise MalformedPacket(f"reserved packet type {kind}")
            side = "client" if self.server_side else "server"
            raise ProtocolViolation(f"{_NAMES[kind]} may not be sent by a {side}")
        if kind == CONNECT:
            connect = _connect(flags, buf, start, end)
            level = connect.protocol_level
            if level in (3, 4) or (level == 5 and connect.protocol_name == "MQTT"):
                # Parsed in full: the rest of the connection speaks this level.
                self.set_protocol_level(level)
            return connect
        if self._level == 5:
            return self._decode5(kind, flags, buf, start, end)
        required = _REQUIRED_FLAGS[kind]
        if flags != required:
            raise MalformedPacket(
                f"{_NAMES[kind]}: fixed-header flags {flags:04b}, expected {required:04b}"
            )
        length = end - start
        if kind in (PUBACK, PUBREC, PUBREL, PUBCOMP, UNSUBACK):
            if length != 2:
                raise MalformedPacket(f"{_NAMES[kind]}: remaining length {length}, expected 2")
            packet_id = (buf[start] << 8) | buf[start + 1]
            if packet_id == 0:
                raise MalformedPacket(f"{_NAMES[kind]}: packet identifier 0")
            if kind == PUBACK:
                return Puback(packet_id)
            if kind == PUBREC:
                return Pubrec(packet_id)
            if kind == PUBREL:
                return Pubrel(packet_id)
            if kind == PUBCOMP:
                return Pubcomp(packet_id)
            return Unsuback(packet_id)
        if kind in (PINGREQ, PINGRESP, DISCONNECT):
            if length:
                raise MalformedPacket(f"{_NAMES[kind]}: remaining length {length}, expected 0")
            if kind == PINGREQ:
                return Pingreq()
            if kind == PINGRESP:
                return Pingresp()
            return Disconnect()
        reader = _Reader(buf, start, end, _NAMES[kind])
        if kind == SUBSCRIBE:
            return _subscribe(reader)
        if kind == UNSUBSCRIBE:
            return _unsubscribe(reader)
        if kind == SUBACK:
            return _suback(reader)
        return _connack(reader)

    def _publish(self, flags: int, buf: bytes, start: int, end: int, first: int) -> Publish:
        """PUBLISH at any level: the hot path, kept out of the general dispatch.

        MQTT 5 adds only the property block after the packet id; an empty one
        (what most devices send) is one byte checked here, and the packet then
        takes the same steps as a 3.1.1 one.
        """
        qos = (flags >> 1) & 0x03
        if qos == 3:
            raise MalformedPacket("PUBLISH: QoS 3")
        dup = bool(flags & 0x08)
        if dup and not qos:
            raise ProtocolViolation("PUBLISH: DUP set on a QoS 0 message")
        if end - start < 2:
            raise MalformedPacket("PUBLISH: truncated before topic length")
        tlen = (buf[start] << 8) | buf[start + 1]
        pos = start + 2 + tlen
        if pos > end:
            raise MalformedPacket(f"PUBLISH: topic length {tlen} runs past the end of the packet")
        raw = buf[start + 2 : pos]
        topic = self._topics.get(raw)
        if topic is None:
            topic = validate_string(raw, "PUBLISH topic")
            if "+" in topic or "#" in topic:
                raise ProtocolViolation(f"PUBLISH: wildcard in topic name {topic!r}")
            if topic:
                if len(self._topics) >= 64:  # per connection: keep it small
                    self._topics.clear()
                self._topics[raw] = topic
            elif self._level != 5:  # MQTT 5: allowed with a Topic Alias (checked below)
                raise ProtocolViolation("PUBLISH: empty topic name")
        packet_id: int | None = None
        if qos:
            if pos + 2 > end:
                raise MalformedPacket("PUBLISH: truncated before packet identifier")
            packet_id = (buf[pos] << 8) | buf[pos + 1]
            if packet_id == 0:
                raise MalformedPacket("PUBLISH: packet identifier 0")
            pos += 2
        if self._level == 5:
            if pos >= end:
                raise MalformedPacket("PUBLISH: truncated before property length")
            if buf[pos]:
                r = _Reader(buf, pos, end, "PUBLISH")
                props = _properties(r, PUBLISH, self.server_side)
                if not topic and (props is None or props.topic_alias is None):
                    raise ProtocolViolation("PUBLISH: empty topic name and no Topic Alias")
                return Publish(
                    topic, buf[r.pos : end], qos, bool(flags & 0x01), dup, packet_id, None, props
                )
            if not topic:
                raise ProtocolViolation("PUBLISH: empty topic name and no Topic Alias")
            pos += 1
        if qos:
            return Publish(topic, buf[pos:end], qos, bool(flags & 0x01), dup, packet_id)
        if flags:
            return Publish(topic, buf[pos:end], 0, True)
        # QoS 0, no retain (nor, in MQTT 5, properties): what a subscriber of the same
        # level gets is this packet, byte for byte, so the broker forwards it.
        return Publish(topic, buf[pos:end], 0, False, False, None, buf[first:end])

    # --- MQTT 5 ------------------------------------------------------------------------

    def _decode5(self, kind: int, flags: int, buf: bytes, start: int, end: int) -> Packet:
        name = _NAMES5[kind]  # never PUBLISH: feed() hands that to _publish
        required = _REQUIRED_FLAGS[kind]
        if flags != required:
            raise MalformedPacket(
                f"{name}: fixed-header flags {flags:04b}, expected {required:04b}"
            )
        length = end - start
        r = _Reader(buf, start, end, name)
        if kind in (PUBACK, PUBREC, PUBREL, PUBCOMP):
            packet_id = r.packet_id()
            code = 0
            props: Properties | None = None
            # Remaining length 2: success, no properties; 3: a reason code alone.
            if length > 2:
                code = _reason(r, kind)
                if length > 3:
                    props = _properties(r, kind, self.server_side)
            r.done()
            if kind == PUBACK:
                return Puback(packet_id, code, props)
            if kind == PUBREC:
                return Pubrec(packet_id, code, props)
            if kind == PUBREL:
                return Pubrel(packet_id, code, props)
            return Pubcomp(packet_id, code, props)
        if kind in (PINGREQ, PINGRESP):
            if length:
                raise MalformedPacket(f"{name}: remaining length {length}, expected 0")
            return Pingreq() if kind == PINGREQ else Pingresp()
        if kind in (DISCONNECT, AUTH):
            # Remaining length 0: reason code 0 and no properties; 1: no properties.
            code = _reason(r, kind) if length else 0
            props = _properties(r, kind, self.server_side) if length > 1 else None
            r.done()
            if kind == DISCONNECT:
                return Disconnect(code, props)
            if props is None or props.authentication_method is None:
                raise ProtocolViolation("AUTH: no Authentication Method")
            return Auth(code, props)
        if kind == SUBSCRIBE:
            return _subscribe5(r)
        if kind == UNSUBSCRIBE:
            packet_id = r.packet_id()
            props = _properties(r, UNSUBSCRIBE, True)
            unsubscribe = _unsubscribe(r, packet_id)
            unsubscribe.properties = props
            return unsubscribe
        if kind in (SUBACK, UNSUBACK):
            packet_id = r.packet_id()
            props = _properties(r, kind, False)
            codes = list(r.data[r.pos : r.end])
            if not codes:
                raise MalformedPacket(f"{name}: no reason code")
            for code in codes:
                if not allowed_in(code, kind):
                    raise ProtocolViolation(f"{name}: reason code {code:#04x} is not allowed")
            if kind == SUBACK:
                return Suback(packet_id, codes, props)
            return Unsuback(packet_id, codes, props)
        return _connack5(r)


def _connect(flags: int, buf: bytes, start: int, end: int) -> Connect:
    r = _Reader(buf, start, end, "CONNECT")
    protocol_name = r.string("protocol name")
    level = r.u8("protocol level")
    if protocol_name not in ("MQTT", "MQIsdp"):
        raise ProtocolViolation(f"CONNECT: unknown protocol name {protocol_name!r}")
    # MQTT 3.1 did not reserve the fixed-header flags of CONNECT; 3.1.1 does.
    if flags and not (protocol_name == "MQIsdp" and level == 3):
        raise MalformedPacket(f"CONNECT: fixed-header flags {flags:04b}, expected 0000")
    connect_flags = r.u8("connect flags")
    keepalive = r.u16("keep alive")
    if level == 5 and protocol_name == "MQTT":
        return _connect5(r, connect_flags, keepalive)
    if level not in (3, 4):
        # The broker answers CONNACK 1 for an unknown level; the rest may be a
        # different format (MQTT 5 properties), so it is not parsed.
        return Connect(
            client_id="",
            clean_session=bool(connect_flags & 0x02),
            keepalive=keepalive,
            protocol_name=protocol_name,
            protocol_level=level,
        )
    if connect_flags & 0x01 and level == 4:
        # MQTT 3.1 clients in the wild set this bit; 3.1.1 made it a protocol error.
        raise MalformedPacket("CONNECT: reserved connect flag bit 0 set")
    client_id = r.string("client identifier")
    will: Will | None = None
    will_qos = (connect_flags >> 3) & 0x03
    will_retain = bool(connect_flags & 0x20)
    if connect_flags & 0x04:
        if will_qos == 3:
            raise MalformedPacket("CONNECT: will QoS 3")
        will_topic = r.string("will topic")
        will_payload = r.binary("will message")
        if not valid_topic_name(will_topic):
            raise ProtocolViolation(f"CONNECT: invalid will topic {will_topic!r}")
        will = Will(will_topic, will_payload, will_qos, will_retain)
    elif will_qos or will_retain:
        raise MalformedPacket("CONNECT: will QoS/retain set without the will flag")
    username: str | None = None
    password: bytes | None = None
    if connect_flags & 0x80:
        username = r.string("user name")
    elif connect_flags & 0x40 and level == 4:
        raise MalformedPacket("CONNECT: password flag set without the user name flag")
    if connect_flags & 0x40:
        password = r.binary("password")
    r.done()
    return Connect(
        client_id=client_id,
        clean_session=bool(connect_flags & 0x02),
        keepalive=keepalive,
        will=will,
        username=username,
        password=password,
        protocol_name=protocol_name,
        protocol_level=level,
    )


def _reason(r: _Reader, kind: int) -> int:
    code = r.u8("reason code")
    if not allowed_in(code, kind):
        # Section 2.4 lists the codes each packet may carry; anything else is an
        # error of the peer's protocol logic, not of the packet's form.
        raise ProtocolViolation(f"{r.name}: reason code {code:#04x} is not allowed")
    return code


# Properties that may be given more than once (User Property everywhere; Subscription
# Identifier only in a PUBLISH from the server, one per matching subscription).
_REPEATABLE: Final = 1 << USER_PROPERTY
_REPEATABLE_SERVER_PUBLISH: Final = _REPEATABLE | 1 << SUBSCRIPTION_IDENTIFIER


def _skip_value(r: _Reader, wire: int, what: str) -> None:
    if wire == BYTE:
        r.u8(what)
    elif wire == TWO_BYTE_INT:
        r.u16(what)
    elif wire == FOUR_BYTE_INT:
        r.u32(what)
    elif wire == VARIABLE_BYTE_INT:
        r.varint(what)
    else:
        r.binary(what)
        if wire == STRING_PAIR:
            r.binary(what)


def _properties(r: _Reader, kind: int, server_side: bool) -> Properties | None:
    """Read a property length and the properties of a packet of ``kind``.

    ``kind`` is a packet type or WILL_PROPERTIES; ``server_side`` says the packet came
    from a client. ``None`` when the property length is 0.
    """
    length = r.varint("property length")
    end = r.pos + length
    if end > r.end:
        raise MalformedPacket(f"{r.name}: property length {length} runs past the end of the packet")
    if not length:
        return None
    packet_end = r.end
    r.end = end  # no value may run past the properties
    where = "will properties" if kind == WILL_PROPERTIES else r.name
    repeatable = _REPEATABLE_SERVER_PUBLISH if kind == PUBLISH and not server_side else _REPEATABLE
    props = Properties()
    seen = 0
    while r.pos < end:
        ident = r.varint("property identifier")
        info = PROPERTIES.get(ident)
        if info is None:
            raise MalformedPacket(f"{where}: unknown property identifier {ident:#04x}")
        what = info.name
        if kind not in info.packets:
            # The value is read first: a value cut short is malformed whatever its
            # identifier (0x81 either way; Mosquitto, which checks in this order,
            # answers only a complete one with Protocol Error).
            _skip_value(r, info.kind, what)
            raise MalformedPacket(f"{where}: {what} ({ident:#04x}) is not allowed here")
        bit = 1 << ident
        if seen & bit and not repeatable & bit:
            raise ProtocolViolation(f"{where}: {what} ({ident:#04x}) given more than once")
        seen |= bit
        wire = info.kind
        if wire == BYTE:
            flag = r.u8(what)
            if flag > 1:  # every byte property is a 0/1 flag (or a QoS of 0/1)
                raise ProtocolViolation(f"{where}: {what} {flag}, expected 0 or 1")
            if ident == PAYLOAD_FORMAT_INDICATOR:
                props.payload_format_indicator = flag
            elif ident == REQUEST_PROBLEM_INFORMATION:
                props.request_problem_information = flag
            elif ident == REQUEST_RESPONSE_INFORMATION:
                props.request_response_information = flag
            elif ident == MAXIMUM_QOS:
                props.maximum_qos = flag
            elif ident == RETAIN_AVAILABLE:
                props.retain_available = flag
            elif ident == WILDCARD_SUBSCRIPTION_AVAILABLE:
                props.wildcard_subscription_available = flag
            elif ident == SUBSCRIPTION_IDENTIFIER_AVAILABLE:
                props.subscription_identifier_available = flag
            else:
                props.shared_subscription_available = flag
        elif wire == TWO_BYTE_INT:
            value = r.u16(what)
            if ident == SERVER_KEEP_ALIVE:
                props.server_keep_alive = value
            elif ident == TOPIC_ALIAS_MAXIMUM:
                props.topic_alias_maximum = value
            elif value == 0:  # Receive Maximum and Topic Alias start at 1
                raise ProtocolViolation(f"{where}: {what} 0")
            elif ident == RECEIVE_MAXIMUM:
                props.receive_maximum = value
            else:
                props.topic_alias = value
        elif wire == FOUR_BYTE_INT:
            value = r.u32(what)
            if ident == MESSAGE_EXPIRY_INTERVAL:
                props.message_expiry_interval = value
            elif ident == SESSION_EXPIRY_INTERVAL:
                if kind == DISCONNECT and not server_side:
                    raise ProtocolViolation(f"{where}: {what} sent by the server")
                props.session_expiry_interval = value
            elif ident == WILL_DELAY_INTERVAL:
                props.will_delay_interval = value
            elif value == 0:
                raise ProtocolViolation(f"{where}: {what} 0")
            else:
                props.maximum_packet_size = value
        elif wire == STRING:
            text = r.string(what)
            if ident == CONTENT_TYPE:
                props.content_type = text
            elif ident == RESPONSE_TOPIC:
                if not valid_topic_name(text):
                    raise ProtocolViolation(f"{where}: {what} {text!r} is not a topic name")
                props.response_topic = text
            elif ident == ASSIGNED_CLIENT_IDENTIFIER:
                props.assigned_client_identifier = text
            elif ident == AUTHENTICATION_METHOD:
                props.authentication_method = text
            elif ident == RESPONSE_INFORMATION:
                props.response_information = text
            elif ident == SERVER_REFERENCE:
                props.server_reference = text
            else:
                props.reason_string = text
        elif wire == BINARY:
            data = r.binary(what)
            if ident == CORRELATION_DATA:
                props.correlation_data = data
            else:
                props.authentication_data = data
        elif ident == SUBSCRIPTION_IDENTIFIER:
            value = r.varint(what)
            if value == 0:
                raise ProtocolViolation(f"{where}: {what} 0")
            if kind == PUBLISH and server_side:
                raise ProtocolViolation(f"{where}: {what} sent by a client")
            props.subscription_identifiers.append(value)
        else:  # USER_PROPERTY, the only string pair
            key = r.string(f"{what} name")
            props.user_properties.append((key, r.string(f"{what} value")))
    r.end = packet_end
    if props.authentication_data is not None and props.authentication_method is None:
        raise ProtocolViolation(f"{where}: Authentication Data without Authentication Method")
    return props


def _connect5(r: _Reader, connect_flags: int, keepalive: int) -> Connect:
    if connect_flags & 0x01:
        raise MalformedPacket("CONNECT: reserved connect flag bit 0 set")
    props = _properties(r, CONNECT, True)
    raw_id = r.binary("client identifier")  # cut short: 0x81 like any other field
    try:
        client_id = validate_string(raw_id, "CONNECT client identifier")
    except MalformedPacket as exc:
        # Section 3.1.3.1 lets the server answer a client identifier it rejects with
        # 0x85 rather than 0x81 (Mosquitto does, for bad UTF-8 too).
        raise MalformedPacket(exc.reason, CLIENT_IDENTIFIER_NOT_VALID) from None
    will: Will | None = None
    will_qos = (connect_flags >> 3) & 0x03
    will_retain = bool(connect_flags & 0x20)
    if connect_flags & 0x04:
        if will_qos == 3:
            raise MalformedPacket("CONNECT: will QoS 3")
        will_props = _properties(r, WILL_PROPERTIES, True)
        will_topic = r.string("will topic")
        will_payload = r.binary("will payload")
        if not valid_topic_name(will_topic):
            raise ProtocolViolation(f"CONNECT: invalid will topic {will_topic!r}")
        will = Will(will_topic, will_payload, will_qos, will_retain, will_props)
    elif will_qos or will_retain:
        raise MalformedPacket("CONNECT: will QoS/retain set without the will flag")
    username = r.string("user name") if connect_flags & 0x80 else None
    # Unlike 3.1.1, MQTT 5 allows a password without a user name (section 3.1.2.9).
    password = r.binary("password") if connect_flags & 0x40 else None
    r.done()
    return Connect(
        client_id=client_id,
        clean_session=bool(connect_flags & 0x02),
        keepalive=keepalive,
        will=will,
        username=username,
        password=password,
        protocol_name="MQTT",
        protocol_level=5,
        properties=props,
    )


def _subscribe5(r: _Reader) -> Subscribe:
    packet_id = r.packet_id()
    props = _properties(r, SUBSCRIBE, True)
    topics: list[tuple[str, int]] = []
    while r.pos < r.end:
        topic_filter = r.string("topic filter")
        options = r.u8("subscription options")
        if not topic_filter:
            raise MalformedPacket("SUBSCRIBE: empty topic filter")
        if options & 0xC0:  # [MQTT-3.8.3-5]
            raise MalformedPacket(
                f"SUBSCRIBE: reserved bits of subscription options {options:#04x} set"
                f" for {topic_filter!r}"
            )
        # QoS 3 and Retain Handling 3 are Protocol Errors in 5.0 (section 3.8.3.1),
        # where 3.1.1 called QoS 3 malformed.
        if options & 0x03 == 3:
            raise ProtocolViolation(f"SUBSCRIBE: maximum QoS 3 for {topic_filter!r}")
        if options & 0x30 == 0x30:
            raise ProtocolViolation(f"SUBSCRIBE: retain handling 3 for {topic_filter!r}")
        if not valid_topic_filter(topic_filter):
            raise MalformedPacket(f"SUBSCRIBE: invalid topic filter {topic_filter!r}")
        if options & NO_LOCAL and topic_filter.startswith("$share/"):  # [MQTT-3.8.3-4]
            raise ProtocolViolation(f"SUBSCRIBE: No Local on shared subscription {topic_filter!r}")
        topics.append((topic_filter, options))
    if not topics:
        raise ProtocolViolation("SUBSCRIBE: no topic filter")
    return Subscribe(packet_id, topics, props)


def _connack5(r: _Reader) -> Connack:
    ack_flags = r.u8("acknowledge flags")
    if ack_flags & 0xFE:
        raise MalformedPacket(f"CONNACK: reserved acknowledge flags {ack_flags:#04x}")
    code = _reason(r, CONNACK)
    if code >= 0x80 and ack_flags:  # [MQTT-3.2.2-6]
        raise ProtocolViolation(f"CONNACK: session present with reason code {code:#04x}")
    props = _properties(r, CONNACK, False)
    r.done()
    return Connack(bool(ack_flags), code, props)


def _subscribe(r: _Reader) -> Subscribe:
    packet_id = r.packet_id()
    topics: list[tuple[str, int]] = []
    while r.pos < r.end:
        topic_filter = r.string("topic filter")
        qos = r.u8("requested QoS")
        if not topic_filter:
            raise MalformedPacket("SUBSCRIBE: empty topic filter")
        if qos > 2:
            raise MalformedPacket(f"SUBSCRIBE: requested QoS byte {qos:#04x} for {topic_filter!r}")
        if not valid_topic_filter(topic_filter):
            raise MalformedPacket(f"SUBSCRIBE: invalid topic filter {topic_filter!r}")
        topics.append((topic_filter, qos))
    if not topics:
        raise ProtocolViolation("SUBSCRIBE: no topic filter")
    return Subscribe(packet_id, topics)


def _unsubscribe(r: _Reader, packet_id: int = 0) -> Unsubscribe:
    if not packet_id:  # 3.1.1; MQTT 5 read it before the properties
        packet_id = r.packet_id()
    topics: list[str] = []
    while r.pos < r.end:
        topic_filter = r.string("topic filter")
        if not topic_filter:
            raise MalformedPacket("UNSUBSCRIBE: empty topic filter")
        if not valid_topic_filter(topic_filter):
            raise MalformedPacket(f"UNSUBSCRIBE: invalid topic filter {topic_filter!r}")
        topics.append(topic_filter)
    if not topics:
        raise ProtocolViolation("UNSUBSCRIBE: no topic filter")
    return Unsubscribe(packet_id, topics)


def _suback(r: _Reader) -> Suback:
    packet_id = r.packet_id()
    codes = list(r.data[r.pos : r.end])
    if not codes:
        raise MalformedPacket("SUBACK: no return code")
    for code in codes:
        if code not in (0, 1, 2, SUBACK_FAILURE):
            raise MalformedPacket(f"SUBACK: invalid return code {code:#04x}")
    return Suback(packet_id, codes)


def _connack(r: _Reader) -> Connack:
    ack_flags = r.u8("acknowledge flags")
    code = r.u8("return code")
    r.done()
    if ack_flags & 0xFE:
        raise MalformedPacket(f"CONNACK: reserved acknowledge flags {ack_flags:#04x}")
    if code > 5:
        raise MalformedPacket(f"CONNACK: return code {code} not in 0..5")
    return Connack(bool(ack_flags & 0x01), code)
