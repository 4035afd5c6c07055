"""Unit tests of the codec's MQTT 5.0 side: bytes in, packets out, and back.

Expected bytes are written by hand from the OASIS MQTT 5.0 text (section numbers in
the comments), not produced by the encoder under test.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from edge.mqtt import reasons
from edge.mqtt.codec import (
    NO_LOCAL,
    RETAIN_AS_PUBLISHED,
    Auth,
    Connack,
    Connect,
    Disconnect,
    MalformedPacket,
    MqttError,
    Packet,
    PacketTooLarge,
    Parser,
    Pingreq,
    Pingresp,
    ProtocolViolation,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Suback,
    Subscribe,
    SubscriptionOptions,
    Unsuback,
    Unsubscribe,
    Will,
    encode,
    encode_publish5,
)
from edge.mqtt.errors import MqttConfigError
from edge.mqtt.properties import (
    BINARY,
    BYTE,
    FOUR_BYTE_INT,
    PROPERTIES,
    STRING,
    STRING_PAIR,
    SUBSCRIPTION_IDENTIFIER,
    TWO_BYTE_INT,
    USER_PROPERTY,
    VARIABLE_BYTE_INT,
    WILL_PROPERTIES,
    Properties,
    encode_properties,
)

# --- every property of every packet ------------------------------------------------

_SAMPLES: dict[int, Any] = {
    BYTE: 1,
    TWO_BYTE_INT: 0x1234,
    FOUR_BYTE_INT: 0x12345678,
    VARIABLE_BYTE_INT: 268_435_455,
    STRING: "text/ünïcode",
    BINARY: b"\x00\xffbinary",
}


def _attr(ident: int) -> str:
    return PROPERTIES[ident].name.lower().replace(" ", "_")


def full_properties(kind: int, *, from_server: bool) -> Properties:
    """Every property a packet of ``kind`` may carry, repeatable ones twice."""
    props = Properties()
    for ident, info in PROPERTIES.items():
        if kind not in info.packets:
            continue
        if ident == USER_PROPERTY:
            props.user_properties = [("k", "v1"), ("", ""), ("k", "v0")]
        elif ident == SUBSCRIPTION_IDENTIFIER:
            if kind == 3 and not from_server:
                continue  # a client may not send one in PUBLISH [MQTT-3.3.4-6]
            props.subscription_identifiers = [1, 268_435_455] if kind == 3 else [77]
        elif ident == 0x08:  # Response Topic must be a topic name
            props.response_topic = "reply/to"
        elif ident == 0x11 and kind == 14 and from_server:
            continue  # [MQTT-3.14.2-2]
        else:
            assert info.kind != STRING_PAIR
            setattr(props, _attr(ident), _SAMPLES[info.kind])
    return props


def _sub(kind: int) -> Properties:
    return full_properties(kind, from_server=False)


def _srv(kind: int) -> Properties:
    return full_properties(kind, from_server=True)


CLIENT_PACKETS: list[Packet] = [
    Connect(client_id="dev-1", protocol_level=5),
    Connect(
        client_id="dev-2",
        clean_session=False,
        keepalive=0,
        will=Will("devices/dev-2/status", b"offline", 2, True, _sub(WILL_PROPERTIES)),
        username="u",
        password=b"\x00secret",
        protocol_level=5,
        properties=_sub(1),
    ),
    # MQTT 5 allows a password without a user name (section 3.1.2.9).
    Connect(client_id="", password=b"pw", protocol_level=5),
    Publish("a/b", b"hello"),
    Publish("a/b", b"x" * 300, 1, True, True, 7, properties=_sub(3)),
    Publish("", b"", 2, False, False, 65535, properties=Properties(topic_alias=3)),
    Puback(1),
    Puback(2, 0x10),
    Puback(3, 0x97, _sub(4)),
    Pubrec(4, 0x80, _sub(5)),
    Pubrel(5, 0x92, _sub(6)),
    Pubcomp(6, 0, _sub(7)),
    Subscribe(7, [("a/+/c", 1), ("#", 0x2E), ("$share/g/x", 0x1A)], _sub(8)),
    Unsubscribe(8, ["a/+/c", "x"], _sub(10)),
    Pingreq(),
    Disconnect(),
    Disconnect(0x04),
    Disconnect(0x80, _sub(14)),
    Auth(0x18, _sub(15)),
]
SERVER_PACKETS: list[Packet] = [
    Connack(True, 0),
    Connack(False, 0x87, _srv(2)),
    Publish("t", b"p", 1, packet_id=9, properties=_srv(3)),
    Puback(1, 0x87, _srv(4)),
    Pubrec(2, 0x10),
    Pubrel(3),
    Pubcomp(4, 0x92),
    Suback(5, [0, 1, 2, 0x80, 0x87, 0xA2], _srv(9)),
    Unsuback(6, [0x00, 0x11, 0x8F], _srv(11)),
    Pingresp(),
    Disconnect(0x8E, _srv(14)),
    Auth(0x00, _srv(15)),
]


def test_the_samples_cover_all_27_properties_and_every_packet_that_has_them() -> None:
    assert len(PROPERTIES) == 27
    seen: set[int] = set()
    for packet in CLIENT_PACKETS + SERVER_PACKETS:
        props = getattr(packet, "properties", None)
        seen |= {ident for ident, _ in props.items()} if props else set()
        will = getattr(packet, "will", None)
        seen |= {ident for ident, _ in will.properties.items()} if will else set()
    assert seen == set(PROPERTIES)


@pytest.mark.parametrize("packet", CLIENT_PACKETS, ids=repr)
def test_client_packets_round_trip_through_a_v5_server_parser(packet: Packet) -> None:
    parser = Parser(server_side=True, protocol_level=5)
    assert parser.feed(encode(packet, protocol_level=5)) == [packet]


@pytest.mark.parametrize("packet", SERVER_PACKETS, ids=repr)
def test_server_packets_round_trip_through_a_v5_client_parser(packet: Packet) -> None:
    parser = Parser(server_side=False, protocol_level=5)
    assert parser.feed(encode(packet, protocol_level=5)) == [packet]


def test_user_properties_keep_their_order_and_repeat() -> None:
    props = Properties(user_properties=[("b", "2"), ("a", "1"), ("b", "0")])
    (packet,) = Parser(protocol_level=5).feed(encode(Puback(1, 0, props), 5))
    assert isinstance(packet, Puback)
    assert packet.properties is not None
    assert packet.properties.user_properties == [("b", "2"), ("a", "1"), ("b", "0")]


# --- byte-exact vectors, written from the specification ------------------------------


def test_connack_with_receive_maximum() -> None:
    # 3.2: flags 00, reason 00, property length 3, Receive Maximum (0x21) = 20.
    data = b"\x20\x06\x00\x00\x03\x21\x00\x14"
    packet = Connack(False, 0, Properties(receive_maximum=20))
    assert encode(packet, 5) == data
    assert Parser(server_side=False, protocol_level=5).feed(data) == [packet]


def test_mosquittos_connack_parses() -> None:
    # The success CONNACK of the conformance data: Topic Alias Maximum 10, Maximum
    # Packet Size 2,000,000 and Receive Maximum 20, in Mosquitto's order.
    data = bytes.fromhex("200e00000b22000a27001e8480210014")
    (packet,) = Parser(server_side=False, protocol_level=5).feed(data)
    assert packet == Connack(
        False,
        0,
        Properties(topic_alias_maximum=10, maximum_packet_size=2_000_000, receive_maximum=20),
    )
    # Encoded by identifier order: the same properties, another order.
    assert encode(packet, 5) == bytes.fromhex("200e00000b21001422000a27001e8480")


def test_connect_vectors() -> None:
    # 3.1: "MQTT", level 5, clean start, keep alive 10, no properties, client id "p".
    assert (
        encode(Connect(client_id="p", keepalive=10, protocol_level=5))
        == b"\x10\x0e\x00\x04MQTT\x05\x02\x00\x0a\x00\x00\x01p"
    )
    # Session Expiry 1 h, will (QoS 1, retain) with Will Delay 5 s, user name "u".
    data = (
        b"\x10\x27\x00\x04MQTT\x05\xae\x00\x3c"  # 39 bytes follow
        b"\x05\x11\x00\x00\x0e\x10"  # properties: Session Expiry Interval 3600
        b"\x00\x02id"
        b"\x05\x18\x00\x00\x00\x05"  # will properties: Will Delay Interval 5
        b"\x00\x03w/t\x00\x03bye"
        b"\x00\x01u"
    )
    packet = Connect(
        client_id="id",
        will=Will("w/t", b"bye", 1, True, Properties(will_delay_interval=5)),
        username="u",
        protocol_level=5,
        properties=Properties(session_expiry_interval=3600),
    )
    assert encode(packet) == data
    assert Parser().feed(data) == [packet]


def test_publish_vectors() -> None:
    # 3.3: QoS 1, topic "topic", packet id 0x04d2, Payload Format Indicator 1.
    data = b"\x32\x13\x00\x05topic\x04\xd2\x02\x01\x01payload"
    packet = Publish(
        "topic", b"payload", 1, False, False, 1234, None, Properties(payload_format_indicator=1)
    )
    assert encode(packet, 5) == data
    assert Parser(protocol_level=5).feed(data) == [packet]
    # QoS 0 with no properties: a single 0 byte of property length.
    assert encode(Publish("t", b"x"), 5) == b"\x30\x05\x00\x01t\x00x"
    assert encode_publish5(b"t", b"x", 0, False, False, None) == b"\x30\x05\x00\x01t\x00x"
    props = encode_properties(Properties(topic_alias=1), 3)
    assert encode_publish5(b"", b"x", 1, True, False, 2, props) == (
        b"\x33\x09\x00\x00\x00\x02\x03\x23\x00\x01x"
    )


def test_subscribe_and_suback_vectors() -> None:
    # 3.8: packet id 0x1234, Subscription Identifier 268435455 (ff ff ff 7f), filter
    # "p" with QoS 1 + No Local + Retain As Published + Retain Handling 2 (0x2d).
    data = b"\x82\x0c\x12\x34\x05\x0b\xff\xff\xff\x7f\x00\x01p\x2d"
    packet = Subscribe(0x1234, [("p", 0x2D)], Properties(subscription_identifiers=[268_435_455]))
    assert encode(packet, 5) == data
    assert Parser(protocol_level=5).feed(data) == [packet]
    # 3.9: reason codes granted QoS 1 and Not authorized, no properties.
    suback = b"\x90\x05\x12\x34\x00\x01\x87"
    assert encode(Suback(0x1234, [1, 0x87]), 5) == suback
    assert Parser(server_side=False, protocol_level=5).feed(suback) == [Suback(0x1234, [1, 0x87])]


def test_unsubscribe_and_unsuback_vectors() -> None:
    assert encode(Unsubscribe(2, ["a"]), 5) == b"\xa2\x06\x00\x02\x00\x00\x01a"
    unsuback = b"\xb0\x05\x00\x02\x00\x00\x11"
    assert encode(Unsuback(2, [0x00, 0x11]), 5) == unsuback
    assert Parser(server_side=False, protocol_level=5).feed(unsuback) == [Unsuback(2, [0, 0x11])]


@pytest.mark.parametrize(
    ("packet", "data"),
    [
        # 3.4.2.1: reason code 0 and no properties: remaining length 2.
        (Puback(1), b"\x40\x02\x00\x01"),
        (Pubrec(1), b"\x50\x02\x00\x01"),
        (Pubrel(1), b"\x62\x02\x00\x01"),
        (Pubcomp(1), b"\x70\x02\x00\x01"),
        # A reason code and no properties: the property length may be omitted.
        (Puback(1, 0x10), b"\x40\x03\x00\x01\x10"),
        (Pubrel(2, 0x92), b"\x62\x03\x00\x02\x92"),
        # Properties: reason code, property length, properties.
        (
            Pubcomp(3, 0, Properties(reason_string="ok")),
            b"\x70\x09\x00\x03\x00\x05\x1f\x00\x02ok",
        ),
        # 3.14.2.1: Normal disconnection and no properties: remaining length 0.
        (Disconnect(), b"\xe0\x00"),
        (Disconnect(0x04), b"\xe0\x01\x04"),
        (Disconnect(0x8E, Properties(reason_string="x")), b"\xe0\x06\x8e\x04\x1f\x00\x01x"),
        (
            Auth(0x18, Properties(authentication_method="m")),
            b"\xf0\x06\x18\x04\x15\x00\x01m",
        ),
        (Pingreq(), b"\xc0\x00"),
    ],
    ids=repr,
)
def test_short_forms_and_acks_byte_exact(packet: Packet, data: bytes) -> None:
    assert encode(packet, 5) == data
    parser = Parser(server_side=not isinstance(packet, Pingresp), protocol_level=5)
    assert parser.feed(data) == [packet]


@pytest.mark.parametrize(
    ("data", "packet"),
    [
        # Every form a receiver must accept, including an explicit empty property list.
        (b"\x40\x04\x00\x01\x00\x00", Puback(1)),
        (b"\x40\x04\x00\x01\x10\x00", Puback(1, 0x10)),
        (b"\xe0\x01\x00", Disconnect()),
        (b"\xe0\x02\x82\x00", Disconnect(0x82)),
    ],
)
def test_long_forms_of_success_parse_to_the_same_packet(data: bytes, packet: Packet) -> None:
    assert Parser(protocol_level=5).feed(data) == [packet]


# --- the protocol level --------------------------------------------------------------


def test_the_connect_sets_the_level_for_the_rest_of_the_connection() -> None:
    connect = Connect(client_id="c", protocol_level=5)
    # PUBLISH with a property right behind the CONNECT, in the same chunk.
    publish = Publish("t", b"x", 0, properties=Properties(content_type="a"))
    parser = Parser()
    assert parser.protocol_level == 4
    assert parser.feed(encode(connect) + encode(publish, 5)) == [connect, publish]
    assert parser.protocol_level == 5
    (again,) = parser.feed(encode(publish, 5))
    assert isinstance(again, Publish)
    assert again.raw is None  # properties: the broker encodes for each subscriber
    # QoS 0 without retain or properties: the bytes an MQTT 5 subscriber gets.
    plain = encode(Publish("t", b"x"), 5)
    (bare,) = parser.feed(plain)
    assert isinstance(bare, Publish)
    assert bare.raw == plain
    (kept,) = parser.feed(encode(Publish("t", b"x", retain=True), 5))
    assert isinstance(kept, Publish)
    assert kept.raw is None


def test_a_311_connection_stays_311() -> None:
    parser = Parser()
    parser.feed(encode(Connect(client_id="c")))
    assert parser.protocol_level == 4
    (publish,) = parser.feed(b"\x30\x05\x00\x01t\x00x")
    # At 3.1.1 the byte after the topic is payload, not a property length.
    assert publish == Publish("t", b"\x00x")
    assert isinstance(publish, Publish)
    assert publish.raw == b"\x30\x05\x00\x01t\x00x"
    # AUTH does not exist below 5.
    with pytest.raises(MalformedPacket, match="reserved packet type 15"):
        parser.feed(b"\xf0\x00")


def test_an_unsupported_level_leaves_the_parser_alone() -> None:
    parser = Parser()
    (connect,) = parser.feed(b"\x10\x0d\x00\x04MQTT\x06\x00\x00\x0a\x00\x01p")
    assert isinstance(connect, Connect)
    assert connect.protocol_level == 6
    assert parser.protocol_level == 4


def test_client_side_parsers_are_told_the_level() -> None:
    parser = Parser(server_side=False)
    parser.set_protocol_level(5)
    assert parser.feed(b"\xe0\x01\x8b") == [Disconnect(0x8B)]
    with pytest.raises(ValueError, match="protocol level 6"):
        parser.set_protocol_level(6)
    # At 3.1.1 a server never sends DISCONNECT.
    with pytest.raises(ProtocolViolation, match="DISCONNECT may not be sent by a server"):
        Parser(server_side=False).feed(b"\xe0\x00")


def test_byte_at_a_time() -> None:
    stream = encode(Connect(client_id="c", protocol_level=5)) + b"".join(
        encode(p, 5) for p in CLIENT_PACKETS[3:]
    )
    parser = Parser()
    got: list[Packet] = []
    for i in range(len(stream)):
        got.extend(parser.feed(stream[i : i + 1]))
    assert got[1:] == CLIENT_PACKETS[3:]
    assert parser.buffered == 0


# --- malformed packets and protocol errors -------------------------------------------

M, P = MalformedPacket, ProtocolViolation
_V5_CONNECT = b"\x00\x04MQTT\x05"


def _connect(flags: int, props: bytes, rest: bytes) -> bytes:
    body = _V5_CONNECT + bytes((flags,)) + b"\x00\x0a" + props + rest
    return b"\x10" + bytes((len(body),)) + body


def _puback_props(props: bytes) -> bytes:
    body = b"\x00\x01\x00" + bytes((len(props),)) + props
    return b"\x40" + bytes((len(body),)) + body


def _publish_props(props: bytes, first: int = 0x32) -> bytes:
    body = b"\x00\x01t" + (b"\x00\x07" if first & 0x06 else b"") + bytes((len(props),)) + props
    return bytes((first, len(body))) + body + b"pay"


@pytest.mark.parametrize(
    ("data", "error", "code", "match"),
    [
        # Section 2.2.2.2: an unknown identifier, or one not valid for the packet type,
        # makes the packet malformed.
        (_puback_props(b"\x04\x01"), M, 0x81, "unknown property identifier 0x04"),
        (_puback_props(b"\x80\x01\x01"), M, 0x81, "unknown property identifier 0x80"),
        (_puback_props(b"\x80\x00\x01"), M, 0x81, "property identifier is not minimally"),
        (_puback_props(b"\x24\x00"), M, 0x81, r"Maximum QoS \(0x24\) is not allowed"),
        (_publish_props(b"\x1f\x00\x01p"), M, 0x81, "Reason String .* is not allowed"),
        (_connect(0x02, b"\x02\x01\x01", b"\x00\x01p"), M, 0x81, "Payload Format Indicator"),
        # Given twice where once is the rule: a protocol error.
        (_puback_props(b"\x1f\x00\x01p\x1f\x00\x01q"), P, 0x82, "Reason String .* more than once"),
        (_publish_props(b"\x23\x00\x01\x23\x00\x02"), P, 0x82, "Topic Alias .* more than once"),
        (
            _connect(0x02, b"\x06\x21\x00\x01\x21\x00\x01", b"\x00\x01p"),
            P,
            0x82,
            "Receive Maximum .* more than once",
        ),
        # Wrong lengths: a value cut short, a property length past the packet.
        (_publish_props(b"\x01"), M, 0x81, "truncated before Payload Format Indicator"),
        (_publish_props(b"\x02\x00\x00"), M, 0x81, "truncated before Message Expiry"),
        (_puback_props(b"\x26\x00\x01p"), M, 0x81, "User Property value length"),
        (b"\x40\x04\x00\x01\x00\x05", M, 0x81, "property length 5 runs past the end"),
        (b"\x40\x04\x00\x01\x00\x01", M, 0x81, "property length 1 runs past"),
        (b"\x40\x05\x00\x01\x00\x00\x00", M, 0x81, "1 unexpected trailing"),
        (b"\x40\x01\x01", M, 0x81, "truncated before packet identifier"),
        (b"\x40\x05\x00\x01\x00\x80\x80", M, 0x81, "property length"),
        # Values the specification rules out: protocol errors.
        (_publish_props(b"\x01\x02"), P, 0x82, "Payload Format Indicator 2, expected 0 or 1"),
        (_connect(0x02, b"\x02\x17\x02", b"\x00\x01p"), P, 0x82, "Request Problem Information 2"),
        (
            _connect(0x02, b"\x02\x19\x05", b"\x00\x01p"),
            P,
            0x82,
            "Request Response Information 5",
        ),
        (_connect(0x02, b"\x03\x21\x00\x00", b"\x00\x01p"), P, 0x82, "Receive Maximum 0"),
        (_connect(0x02, b"\x05\x27\x00\x00\x00\x00", b"\x00\x01p"), P, 0x82, "Packet Size 0"),
        (_publish_props(b"\x23\x00\x00"), P, 0x82, "Topic Alias 0"),
        (_publish_props(b"\x08\x00\x03a/+"), P, 0x82, "Response Topic 'a/\\+' is not a topic"),
        (
            b"\x82\x07\x00\x01\x02\x0b\x00\x00\x00",
            P,
            0x82,
            "Subscription Identifier 0",
        ),
        (
            b"\x82\x0b\x00\x01\x04\x0b\x01\x0b\x02\x00\x01p\x00",
            P,
            0x82,
            "Subscription Identifier .* more than once",
        ),
        (_publish_props(b"\x0b\x01"), P, 0x82, "Subscription Identifier sent by a client"),
        (
            _connect(0x02, b"\x03\x16\x00\x00", b"\x00\x01p"),
            P,
            0x82,
            "Authentication Data without Authentication Method",
        ),
        # PUBLISH: an empty topic needs a Topic Alias.
        (b"\x30\x05\x00\x00\x00ab", P, 0x82, "empty topic name and no Topic Alias"),
        # Reason codes: one the packet may not carry is a protocol error.
        (b"\x40\x03\x00\x01\xff", P, 0x82, "PUBACK: reason code 0xff is not allowed"),
        (b"\x62\x03\x00\x01\x10", P, 0x82, "PUBREL: reason code 0x10"),
        (b"\xe0\x01\x05", P, 0x82, "DISCONNECT: reason code 0x05"),
        (b"\xf0\x01\x01", P, 0x82, "AUTH: reason code 0x01"),
        (b"\xf0\x00", P, 0x82, "AUTH: no Authentication Method"),
        (b"\xf1\x00", M, 0x81, "AUTH: fixed-header flags 0001"),
        (b"\xe2\x00", M, 0x81, "DISCONNECT: fixed-header flags 0010"),
        # SUBSCRIBE options (section 3.8.3.1).
        (b"\x82\x07\x00\x01\x00\x00\x01p\x40", M, 0x81, "reserved bits of subscription options"),
        (b"\x82\x07\x00\x01\x00\x00\x01p\x80", M, 0x81, "reserved bits"),
        (b"\x82\x07\x00\x01\x00\x00\x01p\x30", P, 0x82, "retain handling 3"),
        (b"\x82\x07\x00\x01\x00\x00\x01p\x03", P, 0x82, "maximum QoS 3"),
        (
            b"\x82\x10\x00\x01\x00\x00\x0a$share/g/x\x04",
            P,
            0x82,
            "No Local on shared subscription",
        ),
        (b"\x82\x03\x00\x01\x00", P, 0x82, "SUBSCRIBE: no topic filter"),
        (b"\xa2\x03\x00\x01\x00", P, 0x82, "UNSUBSCRIBE: no topic filter"),
        (b"\xa2\x07\x00\x01\x00\x00\x02a#", M, 0x81, "invalid topic filter"),
        # A property the packet may not carry: its value is read first, so one cut
        # short by the property length is named as such (0x81 either way).
        (b"\xa2\x06\x00\x01\x01\x0b\x01\x00", M, 0x81, "truncated before Subscription Identifier"),
        (
            b"\xa2\x08\x00\x01\x02\x0b\x01\x00\x01p",
            M,
            0x81,
            "Subscription Identifier .* not allowed",
        ),
        # CONNECT specifics.
        (_connect(0x03, b"\x00", b"\x00\x01p"), M, 0x81, "reserved connect flag bit 0"),
        (_connect(0x1E, b"\x00", b"\x00\x01p\x00\x00\x01t\x00\x00"), M, 0x81, "will QoS 3"),
        (_connect(0x0A, b"\x00", b"\x00\x01p"), M, 0x81, "without the will flag"),
        (_connect(0x06, b"\x00", b"\x00\x01p\x00\x00\x01t"), M, 0x81, "will payload length"),
        (_connect(0x06, b"\x00", b"\x00\x01p\x00\x00\x01#\x00\x00"), P, 0x82, "invalid will topic"),
        (_connect(0x06, b"\x00", b"\x00\x01p\x02\x17\x01\x00\x01t\x00\x00"), M, 0x81, "will prop"),
        (_connect(0x82, b"\x00", b"\x00\x01p"), M, 0x81, "user name length"),
        (_connect(0x02, b"\x00", b"\x00\x01p\x00"), M, 0x81, "1 unexpected trailing"),
        # A client identifier that is not valid UTF-8 gets 0x85 (section 3.1.3.1).
        (_connect(0x02, b"\x00", b"\x00\x02p\x00"), M, 0x85, "client identifier.*U\\+0000"),
        (_connect(0x02, b"\x00", b"\x00\x02\xed\xa0"), M, 0x85, "client identifier.*UTF-8"),
        (_connect(0x02, b"\x00", b"\x00\x03p"), M, 0x81, "client identifier length 3 runs past"),
        # Packets a client may not send.
        (b"\x20\x03\x00\x00\x00", P, 0x82, "CONNACK may not be sent by a client"),
        (b"\xd0\x00", P, 0x82, "PINGRESP may not be sent by a client"),
    ],
)
def test_v5_errors_are_named_and_carry_their_reason_code(
    data: bytes, error: type[MqttError], code: int, match: str
) -> None:
    parser = Parser(server_side=True, protocol_level=5)
    with pytest.raises(error, match=match) as info:
        parser.feed(data)
    assert info.value.reason_code == code
    assert type(info.value) is error


@pytest.mark.parametrize(
    ("data", "error", "match"),
    [
        (b"\x20\x03\x02\x00\x00", M, "reserved acknowledge flags"),
        (b"\x20\x03\x00\x10\x00", P, "CONNACK: reason code 0x10"),
        (b"\x20\x03\x01\x87\x00", P, "session present with reason code 0x87"),
        (b"\x20\x02\x00\x00", M, "truncated before property length"),
        (b"\x90\x03\x00\x01\x00", M, "SUBACK: no reason code"),
        (b"\x90\x04\x00\x01\x00\x11", P, "SUBACK: reason code 0x11"),
        (b"\xb0\x04\x00\x01\x00\x01", P, "UNSUBACK: reason code 0x01"),
        (b"\xb0\x03\x00\x01\x00", M, "UNSUBACK: no reason code"),
        (b"\xe0\x07\x00\x05\x11\x00\x00\x00\x01", P, "Session Expiry Interval sent by the server"),
        (b"\x10\x00", P, "CONNECT may not be sent by a server"),
        (b"\x80\x00", P, "SUBSCRIBE may not be sent by a server"),
        (b"\x30\x06\x00\x01t\x02\x0b\x00", P, "Subscription Identifier 0"),
        (b"\x20\x05\x00\x00\x02\x13\x00", M, "truncated before Server Keep Alive"),
        (b"\x20\x05\x00\x00\x02\x24\x02", P, "Maximum QoS 2, expected 0 or 1"),
        (b"\x20\x05\x00\x00\x02\x2a\x03", P, "Shared Subscription Available 3"),
    ],
)
def test_v5_errors_on_the_client_side(data: bytes, error: type[MqttError], match: str) -> None:
    with pytest.raises(error, match=match):
        Parser(server_side=False, protocol_level=5).feed(data)


def test_subscription_identifiers_may_repeat_in_a_publish_from_the_server() -> None:
    data = b"\x30\x09\x00\x01t\x04\x0b\x01\x0b\x7fx"  # identifiers 1 and 127
    (packet,) = Parser(server_side=False, protocol_level=5).feed(data)
    assert isinstance(packet, Publish)
    assert packet.properties == Properties(subscription_identifiers=[1, 127])


def test_variable_byte_integers_in_properties() -> None:
    parser = Parser(server_side=True, protocol_level=5)
    # 0x80 0x01 is 128 in two bytes: fine. 0xff 0xff 0xff 0x7f is the maximum.
    for raw, value in ((b"\x80\x01", 128), (b"\xff\xff\xff\x7f", 268_435_455)):
        body = b"\x00\x01" + bytes((1 + len(raw),)) + b"\x0b" + raw + b"\x00\x01p\x00"
        (packet,) = parser.feed(bytes((0x82, len(body))) + body)
        assert isinstance(packet, Subscribe)
        assert packet.properties == Properties(subscription_identifiers=[value])
    # Five bytes is too long.
    body = b"\x00\x01\x06\x0b\x80\x80\x80\x80\x01\x00\x01p\x00"
    with pytest.raises(MalformedPacket, match="longer than 4 bytes"):
        Parser(protocol_level=5).feed(bytes((0x82, len(body))) + body)


def test_oversized_v5_packet_carries_0x95() -> None:
    with pytest.raises(PacketTooLarge) as info:
        Parser(max_packet_size=10, protocol_level=5).feed(b"\x30\x20")
    assert info.value.reason_code == 0x95


# --- reason codes and errors ---------------------------------------------------------


def test_reason_names() -> None:
    assert reasons.reason_name(0x87) == "Not authorized"
    assert reasons.reason_name(0x00) == "Success"
    assert reasons.reason_name(0x00, 14) == "Normal disconnection"
    assert reasons.reason_name(0x00, 9) == "Granted QoS 0"
    assert reasons.reason_name(0x8E) == "Session taken over"
    assert reasons.reason_name(0xA2) == "Wildcard Subscriptions not supported"
    assert reasons.reason_name(0x03) == "unknown reason code 0x03"
    assert len(reasons.REASONS) == 43
    assert reasons.is_error(0x80)
    assert not reasons.is_error(0x10)


@pytest.mark.parametrize(
    ("code", "packet_type", "ok"),
    [
        (0x10, 4, True),  # No matching subscribers: PUBACK
        (0x10, 7, False),  # ... not PUBCOMP
        (0x92, 6, True),  # Packet Identifier not found: PUBREL
        (0x92, 4, False),
        (0x04, 14, True),  # Disconnect with Will Message
        (0x18, 15, True),  # Continue authentication: AUTH only
        (0x18, 2, False),
        (0x8B, 14, True),  # Server shutting down: DISCONNECT only
        (0x8B, 2, False),
        (0x02, 9, True),  # Granted QoS 2: SUBACK only
        (0x02, 4, False),
        (0xFF, 14, False),
    ],
)
def test_which_packet_may_carry_which_reason(code: int, packet_type: int, ok: bool) -> None:
    assert reasons.allowed_in(code, packet_type) is ok


def test_errors_carry_the_reason_code_a_server_sends() -> None:
    assert MalformedPacket("x").reason_code == 0x81
    assert ProtocolViolation("x").reason_code == 0x82
    assert PacketTooLarge(10, 5).reason_code == 0x95
    assert MqttError("x").reason_code == 0x80
    assert MqttConfigError("mqtt.x: bad").reason_code == 0x80
    assert MalformedPacket("x", 0x85).reason_code == 0x85
    # The existing attribute keeps its meaning.
    assert ProtocolViolation("why").reason == "why"


def test_subscription_options() -> None:
    options = SubscriptionOptions(2, no_local=True, retain_as_published=True, retain_handling=1)
    assert options.to_byte() == 0x1E == 2 | NO_LOCAL | RETAIN_AS_PUBLISHED | 0x10
    assert SubscriptionOptions.from_byte(0x1E) == options
    assert SubscriptionOptions.from_byte(0x01) == SubscriptionOptions(1)


# --- encoding refuses what cannot be said --------------------------------------------


def test_encode_refuses_v5_fields_at_311() -> None:
    with pytest.raises(ValueError, match="PUBLISH properties need MQTT 5"):
        encode(Publish("t", b"", properties=Properties(topic_alias=1)))
    with pytest.raises(ValueError, match="PUBACK reason code and properties need MQTT 5"):
        encode(Puback(1, 0x10))
    with pytest.raises(ValueError, match="DISCONNECT reason code"):
        encode(Disconnect(0x8E))
    with pytest.raises(ValueError, match="AUTH needs MQTT 5"):
        encode(Auth())
    with pytest.raises(ValueError, match="UNSUBACK reason codes"):
        encode(Unsuback(1, [0]))
    with pytest.raises(ValueError, match="CONNECT properties need MQTT 5"):
        encode(Connect(client_id="c", properties=Properties(receive_maximum=1)))


def test_encode_refuses_invalid_v5_values() -> None:
    with pytest.raises(ValueError, match="Maximum QoS may not be sent in packet type 3"):
        encode(Publish("t", b"", properties=Properties(maximum_qos=1)), 5)
    with pytest.raises(ValueError, match="PUBACK: reason code 0x92 is not allowed"):
        encode(Puback(1, 0x92), 5)
    with pytest.raises(ValueError, match="SUBSCRIBE options 0x03"):
        encode(Subscribe(1, [("t", 3)]), 5)
    with pytest.raises(ValueError, match="Receive Maximum 65536 does not fit"):
        encode(Connect(protocol_level=5, properties=Properties(receive_maximum=65536)))
    with pytest.raises(ValueError, match="Subscription Identifier 0 is not allowed"):
        encode(Subscribe(1, [("t", 0)], Properties(subscription_identifiers=[0])), 5)
    with pytest.raises(ValueError, match="Payload Format Indicator 2 is not 0 or 1"):
        encode(Publish("t", b"", properties=Properties(payload_format_indicator=2)), 5)
    with pytest.raises(ValueError, match="Topic Alias 0 is not allowed"):
        encode(Publish("t", b"", properties=Properties(topic_alias=0)), 5)
    with pytest.raises(ValueError, match="Maximum Packet Size 0 is not allowed"):
        encode(Connect(protocol_level=5, properties=Properties(maximum_packet_size=0)))
    with pytest.raises(ValueError, match="Will Delay Interval may not be sent"):
        encode(Connect(protocol_level=5, properties=Properties(will_delay_interval=1)))


def test_properties_repr_shows_only_what_is_set() -> None:
    props = Properties(receive_maximum=5, user_properties=[("a", "b")])
    assert repr(props) == "Properties(receive_maximum=5, user_properties=[('a', 'b')])"
    assert Properties().is_empty()
    assert encode_properties(Properties(), 4) == b"\x00"


def test_mutated_v5_packets_raise_only_mqtt_errors() -> None:
    # Seeded mutation fuzzing, as for 3.1.1: anything either parses or raises MqttError.
    rng = random.Random(5)
    seeds = [(encode(p, 5), True) for p in CLIENT_PACKETS] + [
        (encode(p, 5), False) for p in SERVER_PACKETS
    ]
    outcomes = {"parsed": 0, "rejected": 0}
    for _ in range(20_000):
        seed, server_side = rng.choice(seeds)
        data = bytearray(seed)
        for _ in range(rng.randint(1, 4)):
            action = rng.random()
            if action < 0.5 and data:
                data[rng.randrange(len(data))] = rng.randrange(256)
            elif action < 0.75 and data:
                del data[rng.randrange(len(data))]
            else:
                data.insert(rng.randrange(len(data) + 1), rng.randrange(256))
        try:
            Parser(4096, server_side, 5).feed(bytes(data))
            outcomes["parsed"] += 1
        except MqttError:
            outcomes["rejected"] += 1
    assert outcomes["parsed"] > 1000
    assert outcomes["rejected"] > 1000
