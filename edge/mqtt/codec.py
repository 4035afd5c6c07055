"""MQTT 3.1 / 3.1.1 wire format, sans-I/O: packets in, bytes out and back.

The edge and the device simulator share this codec. ``encode(packet)`` returns the
bytes of one control packet; :class:`Parser` is incremental: ``feed(data)`` returns
every packet completed by ``data`` and keeps the rest. A parser is built for one
side of the connection (``server_side=True`` accepts only client-to-server packets),
and rejects what the specification calls malformed with :class:`MalformedPacket`
and what it forbids with :class:`ProtocolViolation`::

    MqttError                 (edge.mqtt.errors)
    ├── MalformedPacket       bad remaining length, short/long body, bad UTF-8,
    │                         reserved flag bits, QoS 3, packet id 0, ...
    └── ProtocolViolation     wildcards in a PUBLISH topic, a packet meant for the
        │                     other side, DUP on QoS 0, ...
        └── PacketTooLarge    rejected as soon as the length is known, unbuffered

Strings follow Mosquitto's validation (MQTT 3.1.1 section 1.5.3): well-formed UTF-8
without U+0000, control characters (U+0001-U+001F, U+007F-U+009F) or
non-characters; passwords are binary and not checked. Where wildcards may stand in a
topic is the rule of :mod:`edge.core.topics` (pure, shared by every protocol); the
codec adds the wire's limits on top.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Final

from edge.core.topics import valid_filter, valid_name
from edge.mqtt.errors import MalformedPacket, MqttError, PacketTooLarge, ProtocolViolation

__all__ = [
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
    "ProtocolViolation",
    "Puback",
    "Pubcomp",
    "Publish",
    "Pubrec",
    "Pubrel",
    "Suback",
    "Subscribe",
    "Unsuback",
    "Unsubscribe",
    "Will",
    "encode",
    "encode_publish",
    "encode_varint",
    "encode_varint_prefix",
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

#: Connack return codes (MQTT 3.1.1 section 3.2.2.3).
CONNACK_ACCEPTED: Final = 0
CONNACK_BAD_PROTOCOL_VERSION: Final = 1
CONNACK_IDENTIFIER_REJECTED: Final = 2
CONNACK_SERVER_UNAVAILABLE: Final = 3
CONNACK_BAD_CREDENTIALS: Final = 4
CONNACK_NOT_AUTHORIZED: Final = 5
#: The SUBACK return code for a refused subscription.
SUBACK_FAILURE: Final = 0x80

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
    """The will message of a CONNECT: published by the broker on abnormal disconnect."""

    topic: str
    payload: bytes = b""
    qos: int = 0
    retain: bool = False


@dataclass(init=False, slots=True)
class Connect:
    """CONNECT (client to server). ``protocol_level`` 3 is MQTT 3.1 (``MQIsdp``), 4 is 3.1.1."""

    client_id: str
    clean_session: bool
    keepalive: int
    will: Will | None
    username: str | None
    password: bytes | None
    protocol_name: str
    protocol_level: int
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
    ) -> None:
        self.client_id = client_id
        self.clean_session = clean_session
        self.keepalive = keepalive
        self.will = will
        self.username = username
        self.password = password
        self.protocol_name = protocol_name
        self.protocol_level = protocol_level
        self.type = CONNECT


@dataclass(slots=True)
class Connack:
    """CONNACK (server to client)."""

    session_present: bool = False
    return_code: int = CONNACK_ACCEPTED
    type: int = field(default=CONNACK, init=False, repr=False)


@dataclass(slots=True)
class Publish:
    """PUBLISH (both directions). ``packet_id`` is ``None`` exactly when ``qos`` is 0."""

    topic: str
    payload: bytes = b""
    qos: int = 0
    retain: bool = False
    dup: bool = False
    packet_id: int | None = None
    #: The packet's bytes as received, set by the parser for QoS 0 without retain or
    #: DUP: exactly what a QoS 0 subscriber gets, so the broker forwards it unchanged.
    raw: bytes | None = field(default=None, compare=False, repr=False)
    type: int = field(default=PUBLISH, init=False, repr=False)


@dataclass(slots=True)
class Puback:
    """PUBACK: acknowledges a QoS 1 PUBLISH."""

    packet_id: int
    type: int = field(default=PUBACK, init=False, repr=False)


@dataclass(slots=True)
class Pubrec:
    """PUBREC: first acknowledgement of a QoS 2 PUBLISH."""

    packet_id: int
    type: int = field(default=PUBREC, init=False, repr=False)


@dataclass(slots=True)
class Pubrel:
    """PUBREL: releases a QoS 2 message (fixed-header flags must be 0010)."""

    packet_id: int
    type: int = field(default=PUBREL, init=False, repr=False)


@dataclass(slots=True)
class Pubcomp:
    """PUBCOMP: completes a QoS 2 exchange."""

    packet_id: int
    type: int = field(default=PUBCOMP, init=False, repr=False)


@dataclass(slots=True)
class Subscribe:
    """SUBSCRIBE: ``topics`` is a non-empty list of ``(filter, requested_qos)``."""

    packet_id: int
    topics: list[tuple[str, int]]
    type: int = field(default=SUBSCRIBE, init=False, repr=False)


@dataclass(slots=True)
class Suback:
    """SUBACK: one return code (granted QoS 0-2, or 0x80 failure) per requested filter."""

    packet_id: int
    return_codes: list[int]
    type: int = field(default=SUBACK, init=False, repr=False)


@dataclass(slots=True)
class Unsubscribe:
    """UNSUBSCRIBE: a non-empty list of filters."""

    packet_id: int
    topics: list[str]
    type: int = field(default=UNSUBSCRIBE, init=False, repr=False)


@dataclass(slots=True)
class Unsuback:
    """UNSUBACK."""

    packet_id: int
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
    """DISCONNECT: the client's clean goodbye (its will is discarded)."""

    type: int = field(default=DISCONNECT, init=False, repr=False)

    def __init__(self) -> None:  # native when compiled (see Connect)
        self.type = DISCONNECT


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


def encode_varint(value: int) -> bytes:
    """Encode a remaining length (0 to 268,435,455) as the MQTT variable byte integer."""
    if value < 128:
        return bytes((value,))
    if not 0 <= value <= 268_435_455:
        raise ValueError(f"remaining length {value} out of range 0..268435455")
    out = bytearray()
    while True:
        digit = value & 0x7F
        value >>= 7
        if value:
            out.append(digit | 0x80)
        else:
            out.append(digit)
            return bytes(out)


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


def encode(packet: Packet) -> bytes:
    """Return the wire bytes of ``packet``.

    Raises ``ValueError`` for values that cannot be encoded (a packet id outside
    1..65535, a string over 65535 bytes, QoS outside 0..2).
    """
    if isinstance(packet, Publish):
        if packet.qos not in (0, 1, 2):
            raise ValueError(f"PUBLISH qos {packet.qos} not in 0..2")
        if packet.qos and not (packet.packet_id and 0 < packet.packet_id <= 0xFFFF):
            raise ValueError(f"PUBLISH packet id {packet.packet_id} not in 1..65535")
        return encode_publish(
            packet.topic.encode("utf-8"),
            packet.payload,
            packet.qos,
            packet.retain,
            packet.dup,
            packet.packet_id if packet.qos else None,
        )
    if isinstance(packet, Puback | Pubrec | Pubrel | Pubcomp | Unsuback):
        _check_id(packet.packet_id)
        flags = 0x02 if packet.type == PUBREL else 0
        return bytes((packet.type << 4 | flags, 2)) + packet.packet_id.to_bytes(2, "big")
    if isinstance(packet, Pingreq):
        return b"\xc0\x00"
    if isinstance(packet, Pingresp):
        return b"\xd0\x00"
    if isinstance(packet, Disconnect):
        return b"\xe0\x00"
    if isinstance(packet, Connack):
        return bytes((0x20, 2, 1 if packet.session_present else 0, packet.return_code))
    if isinstance(packet, Suback):
        _check_id(packet.packet_id)
        return _fixed(0x90, packet.packet_id.to_bytes(2, "big") + bytes(packet.return_codes))
    if isinstance(packet, Subscribe):
        _check_id(packet.packet_id)
        parts = [packet.packet_id.to_bytes(2, "big")]
        for topic_filter, qos in packet.topics:
            if qos not in (0, 1, 2):
                raise ValueError(f"SUBSCRIBE qos {qos} for {topic_filter!r} not in 0..2")
            parts.append(_string(topic_filter))
            parts.append(bytes((qos,)))
        return _fixed(0x82, b"".join(parts))
    if isinstance(packet, Unsubscribe):
        _check_id(packet.packet_id)
        parts = [packet.packet_id.to_bytes(2, "big")]
        parts.extend(_string(t) for t in packet.topics)
        return _fixed(0xA2, b"".join(parts))
    return _encode_connect(packet)


def _check_id(packet_id: int) -> None:
    if not 0 < packet_id <= 0xFFFF:
        raise ValueError(f"packet id {packet_id} not in 1..65535")


def _encode_connect(p: Connect) -> bytes:
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


# --- decoding --------------------------------------------------------------------------

_CLIENT_TO_SERVER: Final = frozenset(
    {CONNECT, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP, SUBSCRIBE, UNSUBSCRIBE, PINGREQ, DISCONNECT}
)
_SERVER_TO_CLIENT: Final = frozenset(
    {CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK, UNSUBACK, PINGRESP}
)
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

    def packet_id(self) -> int:
        value = self.u16("packet identifier")
        if value == 0:
            raise MalformedPacket(f"{self.name}: packet identifier 0")
        return value

    def done(self) -> None:
        if self.pos != self.end:
            raise MalformedPacket(f"{self.name}: {self.end - self.pos} unexpected trailing bytes")


class Parser:
    """Incremental MQTT 3.1/3.1.1 parser for one direction of one connection.

    ``server_side=True`` parses what a client sends (CONNECT, PUBLISH, SUBSCRIBE, ...);
    ``False`` parses what a broker sends. A packet larger than ``max_packet_size``
    (fixed header included) raises :class:`PacketTooLarge` as soon as its remaining
    length is read; its body is never buffered. After an error the parser is
    unusable (the connection must be closed).
    """

    __slots__ = ("_buf", "_need", "_topics", "allowed", "max_packet_size", "server_side")

    def __init__(self, max_packet_size: int = 268_435_460, server_side: bool = True) -> None:
        self.max_packet_size = max_packet_size
        self.server_side = server_side
        self.allowed = _CLIENT_TO_SERVER if server_side else _SERVER_TO_CLIENT
        self._buf = bytearray()
        self._need = 0  # bytes the buffered partial packet needs before parsing again
        # Validated PUBLISH topics by their raw bytes: devices repeat a few topics.
        self._topics: dict[bytes, str] = {}

    @property
    def buffered(self) -> int:
        """How many bytes of an incomplete packet are held."""
        return len(self._buf)

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
            return _connect(flags, buf, start, end)
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
            if not topic:
                raise ProtocolViolation("PUBLISH: empty topic name")
            if "+" in topic or "#" in topic:
                raise ProtocolViolation(f"PUBLISH: wildcard in topic name {topic!r}")
            if len(self._topics) >= 64:  # per connection: keep it small
                self._topics.clear()
            self._topics[raw] = topic
        if qos:
            if pos + 2 > end:
                raise MalformedPacket("PUBLISH: truncated before packet identifier")
            packet_id = (buf[pos] << 8) | buf[pos + 1]
            if packet_id == 0:
                raise MalformedPacket("PUBLISH: packet identifier 0")
            return Publish(topic, buf[pos + 2 : end], qos, bool(flags & 0x01), dup, packet_id)
        if flags:
            return Publish(topic, buf[pos:end], 0, True)
        return Publish(topic, buf[pos:end], 0, False, False, None, buf[first:end])


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


def _unsubscribe(r: _Reader) -> Unsubscribe:
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
