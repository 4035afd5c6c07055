"""MQTT 5.0 properties (section 2.2.2): the model, the identifier table and the encoder.

A packet's properties are one :class:`Properties` object with one typed attribute per
property identifier, ``None`` when absent. The two that may repeat are lists:
``user_properties`` (``(key, value)`` pairs in wire order; they may repeat in every
packet that allows them) and ``subscription_identifiers`` (several only in a PUBLISH
sent by a server, one per matching subscription). Packets carry ``properties=None``
when they have none; the parser never returns an empty :class:`Properties`.

:data:`PROPERTIES` describes the 27 identifiers: name, wire type and the packets
that may carry each (:data:`WILL_PROPERTIES` stands for the will properties of a
CONNECT). Decoding lives in :mod:`edge.mqtt.codec` next to the other readers; the
rules it applies:

- an identifier that does not exist, or that the packet may not carry, makes the
  packet malformed (section 2.2.2.2: "a Control Packet which contains an
  Identifier which is not valid for its packet type ... is a Malformed Packet");
  so do a value cut short, a non-minimal variable byte integer and a property
  length running past the packet;
- a property given twice where only one is allowed, and the value rules of
  section 3 (0/1 bytes, Receive Maximum 0, Maximum Packet Size 0, Topic Alias 0,
  Subscription Identifier 0, ...) are protocol errors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = [
    "ASSIGNED_CLIENT_IDENTIFIER",
    "AUTHENTICATION_DATA",
    "AUTHENTICATION_METHOD",
    "BINARY",
    "BYTE",
    "CONTENT_TYPE",
    "CORRELATION_DATA",
    "FOUR_BYTE_INT",
    "MAXIMUM_PACKET_SIZE",
    "MAXIMUM_QOS",
    "MESSAGE_EXPIRY_INTERVAL",
    "PAYLOAD_FORMAT_INDICATOR",
    "PROPERTIES",
    "REASON_STRING",
    "RECEIVE_MAXIMUM",
    "REQUEST_PROBLEM_INFORMATION",
    "REQUEST_RESPONSE_INFORMATION",
    "RESPONSE_INFORMATION",
    "RESPONSE_TOPIC",
    "RETAIN_AVAILABLE",
    "SERVER_KEEP_ALIVE",
    "SERVER_REFERENCE",
    "SESSION_EXPIRY_INTERVAL",
    "SHARED_SUBSCRIPTION_AVAILABLE",
    "STRING",
    "STRING_PAIR",
    "SUBSCRIPTION_IDENTIFIER",
    "SUBSCRIPTION_IDENTIFIER_AVAILABLE",
    "TOPIC_ALIAS",
    "TOPIC_ALIAS_MAXIMUM",
    "TWO_BYTE_INT",
    "USER_PROPERTY",
    "VARIABLE_BYTE_INT",
    "WILDCARD_SUBSCRIPTION_AVAILABLE",
    "WILL_DELAY_INTERVAL",
    "WILL_PROPERTIES",
    "Properties",
    "PropertyInfo",
    "encode_properties",
    "encode_varint",
]

# Property identifiers (section 2.2.2.2).
PAYLOAD_FORMAT_INDICATOR: Final = 0x01
MESSAGE_EXPIRY_INTERVAL: Final = 0x02
CONTENT_TYPE: Final = 0x03
RESPONSE_TOPIC: Final = 0x08
CORRELATION_DATA: Final = 0x09
SUBSCRIPTION_IDENTIFIER: Final = 0x0B
SESSION_EXPIRY_INTERVAL: Final = 0x11
ASSIGNED_CLIENT_IDENTIFIER: Final = 0x12
SERVER_KEEP_ALIVE: Final = 0x13
AUTHENTICATION_METHOD: Final = 0x15
AUTHENTICATION_DATA: Final = 0x16
REQUEST_PROBLEM_INFORMATION: Final = 0x17
WILL_DELAY_INTERVAL: Final = 0x18
REQUEST_RESPONSE_INFORMATION: Final = 0x19
RESPONSE_INFORMATION: Final = 0x1A
SERVER_REFERENCE: Final = 0x1C
REASON_STRING: Final = 0x1F
RECEIVE_MAXIMUM: Final = 0x21
TOPIC_ALIAS_MAXIMUM: Final = 0x22
TOPIC_ALIAS: Final = 0x23
MAXIMUM_QOS: Final = 0x24
RETAIN_AVAILABLE: Final = 0x25
USER_PROPERTY: Final = 0x26
MAXIMUM_PACKET_SIZE: Final = 0x27
WILDCARD_SUBSCRIPTION_AVAILABLE: Final = 0x28
SUBSCRIPTION_IDENTIFIER_AVAILABLE: Final = 0x29
SHARED_SUBSCRIPTION_AVAILABLE: Final = 0x2A

# Wire types (section 1.5).
BYTE: Final = 1
TWO_BYTE_INT: Final = 2
FOUR_BYTE_INT: Final = 4
VARIABLE_BYTE_INT: Final = 5
STRING: Final = 6
BINARY: Final = 7
STRING_PAIR: Final = 8

# Packet types, as in edge.mqtt.codec (this module imports nothing of the package).
_CONNECT: Final = 1
_CONNACK: Final = 2
_PUBLISH: Final = 3
_PUBACK: Final = 4
_PUBREC: Final = 5
_PUBREL: Final = 6
_PUBCOMP: Final = 7
_SUBSCRIBE: Final = 8
_SUBACK: Final = 9
_UNSUBSCRIBE: Final = 10
_UNSUBACK: Final = 11
_DISCONNECT: Final = 14
_AUTH: Final = 15
#: Stands for the will properties of a CONNECT in :attr:`PropertyInfo.packets`
#: (not a packet type: those are 0-15).
WILL_PROPERTIES: Final = 16


class PropertyInfo:
    """One property identifier: ``ident``, ``name``, wire ``kind`` and allowed ``packets``."""

    __slots__ = ("ident", "kind", "name", "packets")

    def __init__(self, ident: int, name: str, kind: int, packets: frozenset[int]) -> None:
        self.ident = ident
        self.name = name
        self.kind = kind
        self.packets = packets

    def __repr__(self) -> str:
        return f"PropertyInfo({self.ident:#04x}, {self.name!r})"


def _info(ident: int, name: str, kind: int, *packets: int) -> PropertyInfo:
    return PropertyInfo(ident, name, kind, frozenset(packets))


_ACKS: Final = (_PUBACK, _PUBREC, _PUBREL, _PUBCOMP, _SUBACK, _UNSUBACK)

#: The 27 property identifiers of MQTT 5.0 (section 2.2.2.2), by identifier.
PROPERTIES: Final[dict[int, PropertyInfo]] = {
    p.ident: p
    for p in (
        _info(0x01, "Payload Format Indicator", BYTE, _PUBLISH, WILL_PROPERTIES),
        _info(0x02, "Message Expiry Interval", FOUR_BYTE_INT, _PUBLISH, WILL_PROPERTIES),
        _info(0x03, "Content Type", STRING, _PUBLISH, WILL_PROPERTIES),
        _info(0x08, "Response Topic", STRING, _PUBLISH, WILL_PROPERTIES),
        _info(0x09, "Correlation Data", BINARY, _PUBLISH, WILL_PROPERTIES),
        _info(0x0B, "Subscription Identifier", VARIABLE_BYTE_INT, _PUBLISH, _SUBSCRIBE),
        _info(0x11, "Session Expiry Interval", FOUR_BYTE_INT, _CONNECT, _CONNACK, _DISCONNECT),
        _info(0x12, "Assigned Client Identifier", STRING, _CONNACK),
        _info(0x13, "Server Keep Alive", TWO_BYTE_INT, _CONNACK),
        _info(0x15, "Authentication Method", STRING, _CONNECT, _CONNACK, _AUTH),
        _info(0x16, "Authentication Data", BINARY, _CONNECT, _CONNACK, _AUTH),
        _info(0x17, "Request Problem Information", BYTE, _CONNECT),
        _info(0x18, "Will Delay Interval", FOUR_BYTE_INT, WILL_PROPERTIES),
        _info(0x19, "Request Response Information", BYTE, _CONNECT),
        _info(0x1A, "Response Information", STRING, _CONNACK),
        _info(0x1C, "Server Reference", STRING, _CONNACK, _DISCONNECT),
        _info(0x1F, "Reason String", STRING, _CONNACK, *_ACKS, _DISCONNECT, _AUTH),
        _info(0x21, "Receive Maximum", TWO_BYTE_INT, _CONNECT, _CONNACK),
        _info(0x22, "Topic Alias Maximum", TWO_BYTE_INT, _CONNECT, _CONNACK),
        _info(0x23, "Topic Alias", TWO_BYTE_INT, _PUBLISH),
        _info(0x24, "Maximum QoS", BYTE, _CONNACK),
        _info(0x25, "Retain Available", BYTE, _CONNACK),
        _info(
            0x26,
            "User Property",
            STRING_PAIR,
            _CONNECT,
            _CONNACK,
            _PUBLISH,
            WILL_PROPERTIES,
            *_ACKS,
            _SUBSCRIBE,
            _UNSUBSCRIBE,
            _DISCONNECT,
            _AUTH,
        ),
        _info(0x27, "Maximum Packet Size", FOUR_BYTE_INT, _CONNECT, _CONNACK),
        _info(0x28, "Wildcard Subscription Available", BYTE, _CONNACK),
        _info(0x29, "Subscription Identifier Available", BYTE, _CONNACK),
        _info(0x2A, "Shared Subscription Available", BYTE, _CONNACK),
    )
}


# Attribute of Properties per identifier (the names of PROPERTIES, in snake case).
_ATTRS: Final = {
    ident: info.name.lower().replace(" ", "_").replace("-", "_")
    for ident, info in PROPERTIES.items()
}


@dataclass(init=False, repr=False, slots=True)
class Properties:
    """The properties of one MQTT 5 packet (or of a CONNECT's will).

    Every attribute is named after its property and is ``None`` when the property is
    absent, except the two lists (empty when absent). Integers are unsigned and
    range-checked when encoded; ``*_available``, ``maximum_qos``, the two
    ``request_*`` flags and ``payload_format_indicator`` are 0 or 1.
    """

    payload_format_indicator: int | None
    message_expiry_interval: int | None
    content_type: str | None
    response_topic: str | None
    correlation_data: bytes | None
    subscription_identifiers: list[int]
    session_expiry_interval: int | None
    assigned_client_identifier: str | None
    server_keep_alive: int | None
    authentication_method: str | None
    authentication_data: bytes | None
    request_problem_information: int | None
    will_delay_interval: int | None
    request_response_information: int | None
    response_information: str | None
    server_reference: str | None
    reason_string: str | None
    receive_maximum: int | None
    topic_alias_maximum: int | None
    topic_alias: int | None
    maximum_qos: int | None
    retain_available: int | None
    user_properties: list[tuple[str, str]]
    maximum_packet_size: int | None
    wildcard_subscription_available: int | None
    subscription_identifier_available: int | None
    shared_subscription_available: int | None

    # Written out (keyword-only) rather than generated: native when compiled, and
    # the lists get a fresh default each.
    def __init__(
        self,
        *,
        payload_format_indicator: int | None = None,
        message_expiry_interval: int | None = None,
        content_type: str | None = None,
        response_topic: str | None = None,
        correlation_data: bytes | None = None,
        subscription_identifiers: list[int] | None = None,
        session_expiry_interval: int | None = None,
        assigned_client_identifier: str | None = None,
        server_keep_alive: int | None = None,
        authentication_method: str | None = None,
        authentication_data: bytes | None = None,
        request_problem_information: int | None = None,
        will_delay_interval: int | None = None,
        request_response_information: int | None = None,
        response_information: str | None = None,
        server_reference: str | None = None,
        reason_string: str | None = None,
        receive_maximum: int | None = None,
        topic_alias_maximum: int | None = None,
        topic_alias: int | None = None,
        maximum_qos: int | None = None,
        retain_available: int | None = None,
        user_properties: list[tuple[str, str]] | None = None,
        maximum_packet_size: int | None = None,
        wildcard_subscription_available: int | None = None,
        subscription_identifier_available: int | None = None,
        shared_subscription_available: int | None = None,
    ) -> None:
        self.payload_format_indicator = payload_format_indicator
        self.message_expiry_interval = message_expiry_interval
        self.content_type = content_type
        self.response_topic = response_topic
        self.correlation_data = correlation_data
        self.subscription_identifiers = (
            [] if subscription_identifiers is None else subscription_identifiers
        )
        self.session_expiry_interval = session_expiry_interval
        self.assigned_client_identifier = assigned_client_identifier
        self.server_keep_alive = server_keep_alive
        self.authentication_method = authentication_method
        self.authentication_data = authentication_data
        self.request_problem_information = request_problem_information
        self.will_delay_interval = will_delay_interval
        self.request_response_information = request_response_information
        self.response_information = response_information
        self.server_reference = server_reference
        self.reason_string = reason_string
        self.receive_maximum = receive_maximum
        self.topic_alias_maximum = topic_alias_maximum
        self.topic_alias = topic_alias
        self.maximum_qos = maximum_qos
        self.retain_available = retain_available
        self.user_properties = [] if user_properties is None else user_properties
        self.maximum_packet_size = maximum_packet_size
        self.wildcard_subscription_available = wildcard_subscription_available
        self.subscription_identifier_available = subscription_identifier_available
        self.shared_subscription_available = shared_subscription_available

    def items(self) -> list[tuple[int, int | str | bytes | tuple[str, str]]]:
        """Every property present as ``(identifier, value)``, by identifier.

        Repeated properties (User Property, Subscription Identifier) appear once per
        value, in order. This is the order :func:`encode_properties` writes.
        """
        out: list[tuple[int, int | str | bytes | tuple[str, str]]] = []
        if self.payload_format_indicator is not None:
            out.append((PAYLOAD_FORMAT_INDICATOR, self.payload_format_indicator))
        if self.message_expiry_interval is not None:
            out.append((MESSAGE_EXPIRY_INTERVAL, self.message_expiry_interval))
        if self.content_type is not None:
            out.append((CONTENT_TYPE, self.content_type))
        if self.response_topic is not None:
            out.append((RESPONSE_TOPIC, self.response_topic))
        if self.correlation_data is not None:
            out.append((CORRELATION_DATA, self.correlation_data))
        for sub_id in self.subscription_identifiers:
            out.append((SUBSCRIPTION_IDENTIFIER, sub_id))
        if self.session_expiry_interval is not None:
            out.append((SESSION_EXPIRY_INTERVAL, self.session_expiry_interval))
        if self.assigned_client_identifier is not None:
            out.append((ASSIGNED_CLIENT_IDENTIFIER, self.assigned_client_identifier))
        if self.server_keep_alive is not None:
            out.append((SERVER_KEEP_ALIVE, self.server_keep_alive))
        if self.authentication_method is not None:
            out.append((AUTHENTICATION_METHOD, self.authentication_method))
        if self.authentication_data is not None:
            out.append((AUTHENTICATION_DATA, self.authentication_data))
        if self.request_problem_information is not None:
            out.append((REQUEST_PROBLEM_INFORMATION, self.request_problem_information))
        if self.will_delay_interval is not None:
            out.append((WILL_DELAY_INTERVAL, self.will_delay_interval))
        if self.request_response_information is not None:
            out.append((REQUEST_RESPONSE_INFORMATION, self.request_response_information))
        if self.response_information is not None:
            out.append((RESPONSE_INFORMATION, self.response_information))
        if self.server_reference is not None:
            out.append((SERVER_REFERENCE, self.server_reference))
        if self.reason_string is not None:
            out.append((REASON_STRING, self.reason_string))
        if self.receive_maximum is not None:
            out.append((RECEIVE_MAXIMUM, self.receive_maximum))
        if self.topic_alias_maximum is not None:
            out.append((TOPIC_ALIAS_MAXIMUM, self.topic_alias_maximum))
        if self.topic_alias is not None:
            out.append((TOPIC_ALIAS, self.topic_alias))
        if self.maximum_qos is not None:
            out.append((MAXIMUM_QOS, self.maximum_qos))
        if self.retain_available is not None:
            out.append((RETAIN_AVAILABLE, self.retain_available))
        for pair in self.user_properties:
            out.append((USER_PROPERTY, pair))
        if self.maximum_packet_size is not None:
            out.append((MAXIMUM_PACKET_SIZE, self.maximum_packet_size))
        if self.wildcard_subscription_available is not None:
            out.append((WILDCARD_SUBSCRIPTION_AVAILABLE, self.wildcard_subscription_available))
        if self.subscription_identifier_available is not None:
            out.append((SUBSCRIPTION_IDENTIFIER_AVAILABLE, self.subscription_identifier_available))
        if self.shared_subscription_available is not None:
            out.append((SHARED_SUBSCRIPTION_AVAILABLE, self.shared_subscription_available))
        return out

    def __repr__(self) -> str:
        # Only what is set: 27 mostly-None fields would drown a packet's repr.
        parts: list[str] = []
        for ident, value in self.items():
            if ident in (USER_PROPERTY, SUBSCRIPTION_IDENTIFIER):
                continue
            parts.append(f"{_ATTRS[ident]}={value!r}")
        if self.subscription_identifiers:
            parts.append(f"subscription_identifiers={self.subscription_identifiers!r}")
        if self.user_properties:
            parts.append(f"user_properties={self.user_properties!r}")
        return f"Properties({', '.join(parts)})"

    def is_empty(self) -> bool:
        """True when no property is set (encoded as a property length of 0)."""
        return not self.items()


def encode_varint(value: int, what: str = "remaining length") -> bytes:
    """Encode ``value`` (0 to 268,435,455) as an MQTT variable byte integer.

    ``what`` names the field in the error for a value out of range. The codec's
    remaining lengths and the property block's lengths and values share it.
    """
    if value < 128:
        if value < 0:
            raise ValueError(f"{what} {value} out of range 0..268435455")
        return bytes((value,))
    if value > 268_435_455:
        raise ValueError(f"{what} {value} out of range 0..268435455")
    out = bytearray()
    while True:
        digit = value & 0x7F
        value >>= 7
        if value:
            out.append(digit | 0x80)
        else:
            out.append(digit)
            return bytes(out)


def _string(text: str, what: str) -> bytes:
    raw = text.encode("utf-8")
    if len(raw) > 0xFFFF:
        raise ValueError(f"{what}: string of {len(raw)} bytes exceeds 65535")
    return len(raw).to_bytes(2, "big") + raw


def _binary(data: bytes, what: str) -> bytes:
    if len(data) > 0xFFFF:
        raise ValueError(f"{what}: binary data of {len(data)} bytes exceeds 65535")
    return len(data).to_bytes(2, "big") + data


def _uint(value: int, size: int, what: str) -> bytes:
    if not 0 <= value < 1 << (8 * size):
        raise ValueError(f"{what} {value} does not fit in {size} byte(s)")
    return value.to_bytes(size, "big")


# Integer properties whose value 0 is a protocol error.
_NOT_ZERO: Final = frozenset({RECEIVE_MAXIMUM, TOPIC_ALIAS, MAXIMUM_PACKET_SIZE})


def encode_properties(properties: Properties | None, packet_type: int) -> bytes:
    """The property length and the properties, as they follow a packet's variable header.

    ``None`` (or no property set) gives ``b"\\x00"``. Raises ``ValueError`` for a
    property ``packet_type`` may not carry (:data:`WILL_PROPERTIES` for a will) or a
    value that does not fit its wire type or is ruled out (a 0/1 flag of 2, Receive
    Maximum 0, ...): the encoder refuses to write what the parser would refuse to
    read, except the rules that depend on the direction, which it does not know (a
    client's PUBLISH carries no Subscription Identifier, a server's DISCONNECT no
    Session Expiry Interval).
    """
    if properties is None:
        return b"\x00"
    parts: list[bytes] = []
    for ident, value in properties.items():
        info = PROPERTIES[ident]
        if packet_type not in info.packets:
            raise ValueError(f"{info.name} may not be sent in packet type {packet_type}")
        parts.append(bytes((ident,)))
        kind = info.kind
        if isinstance(value, tuple):
            parts.append(_string(value[0], info.name) + _string(value[1], info.name))
        elif isinstance(value, str):
            parts.append(_string(value, info.name))
        elif isinstance(value, bytes):
            parts.append(_binary(value, info.name))
        elif kind == VARIABLE_BYTE_INT:
            if value == 0:
                raise ValueError(f"{info.name} 0 is not allowed")
            parts.append(encode_varint(value, info.name))
        else:
            if kind == BYTE and value not in (0, 1):
                raise ValueError(f"{info.name} {value} is not 0 or 1")
            if value == 0 and ident in _NOT_ZERO:
                raise ValueError(f"{info.name} 0 is not allowed")
            # The integer wire types are numbered by their size in bytes.
            parts.append(_uint(value, kind, info.name))
    body = b"".join(parts)
    return encode_varint(len(body), "property length") + body
