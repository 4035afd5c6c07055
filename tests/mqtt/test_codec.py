"""Unit tests of the sans-I/O MQTT codec: bytes in, packets out, and back."""

from __future__ import annotations

import pytest

from edge.mqtt.codec import (
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
    Unsuback,
    Unsubscribe,
    Will,
    encode,
    encode_varint,
    valid_topic_filter,
    valid_topic_name,
)

CLIENT_PACKETS: list[Packet] = [
    Connect(client_id="dev-1", keepalive=30, clean_session=False),
    Connect(
        client_id="dev-2",
        will=Will("devices/dev-2/status", b"offline", 1, True),
        username="u",
        password=b"\x00secret",
    ),
    Connect(client_id="old", protocol_name="MQIsdp", protocol_level=3),
    Publish("a/b", b"hello"),
    Publish("a/b", b"x" * 300, qos=1, retain=True, dup=True, packet_id=7),
    Publish("a/b", b"", qos=2, packet_id=65535),
    Puback(1),
    Pubrec(2),
    Pubrel(3),
    Pubcomp(4),
    Subscribe(5, [("a/+/c", 1), ("#", 2)]),
    Unsubscribe(6, ["a/+/c", "x"]),
    Pingreq(),
    Disconnect(),
]
SERVER_PACKETS: list[Packet] = [
    Connack(True, 0),
    Connack(False, 5),
    Publish("t", b"p", qos=1, packet_id=9),
    Puback(1),
    Pubrec(2),
    Pubrel(3),
    Pubcomp(4),
    Suback(5, [0, 1, 2, 0x80]),
    Unsuback(6),
    Pingresp(),
]


@pytest.mark.parametrize("packet", CLIENT_PACKETS, ids=repr)
def test_client_packets_round_trip_through_a_server_parser(packet: Packet) -> None:
    assert Parser(server_side=True).feed(encode(packet)) == [packet]


@pytest.mark.parametrize("packet", SERVER_PACKETS, ids=repr)
def test_server_packets_round_trip_through_a_client_parser(packet: Packet) -> None:
    assert Parser(server_side=False).feed(encode(packet)) == [packet]


def test_known_encodings() -> None:
    assert encode(Connack()) == b"\x20\x02\x00\x00"
    assert encode(Pubrel(1)) == b"\x62\x02\x00\x01"
    assert encode(Pingresp()) == b"\xd0\x00"
    assert encode(Publish("p", b"message")) == b"\x30\x0a\x00\x01pmessage"
    assert encode(Subscribe(0x1234, [("p", 1)])) == b"\x82\x06\x12\x34\x00\x01p\x01"
    assert (
        encode(Connect(client_id="p", keepalive=10))
        == b"\x10\x0d\x00\x04MQTT\x04\x02\x00\x0a\x00\x01p"
    )


def test_varint_boundaries() -> None:
    assert encode_varint(0) == b"\x00"
    assert encode_varint(127) == b"\x7f"
    assert encode_varint(128) == b"\x80\x01"
    assert encode_varint(16383) == b"\xff\x7f"
    assert encode_varint(268_435_455) == b"\xff\xff\xff\x7f"
    with pytest.raises(ValueError, match="out of range"):
        encode_varint(268_435_456)


def test_byte_at_a_time_and_several_packets_per_chunk() -> None:
    stream = b"".join(encode(p) for p in CLIENT_PACKETS)
    parser = Parser()
    got: list[Packet] = []
    for i in range(len(stream)):
        got.extend(parser.feed(stream[i : i + 1]))
    assert got == CLIENT_PACKETS
    assert parser.buffered == 0
    assert Parser().feed(stream) == CLIENT_PACKETS


def test_large_packet_in_chunks_is_reassembled() -> None:
    packet = Publish("big", bytes(range(256)) * 1000, qos=1, packet_id=3)
    data = encode(packet)
    parser = Parser()
    got: list[Packet] = []
    for i in range(0, len(data), 1000):
        got.extend(parser.feed(data[i : i + 1000]))
    assert got == [packet]


def test_oversized_packet_is_rejected_from_its_header_alone() -> None:
    parser = Parser(max_packet_size=100)
    # Only the fixed header of a 1 MB PUBLISH: refused before any body arrives.
    with pytest.raises(PacketTooLarge, match="exceeds the maximum of 100") as info:
        parser.feed(b"\x30" + encode_varint(1_000_000))
    assert info.value.size == 1_000_004
    assert isinstance(info.value, ProtocolViolation)


def _fails(data: bytes, error: type[MqttError], match: str, *, server_side: bool = True) -> None:
    with pytest.raises(error, match=match):
        Parser(server_side=server_side).feed(data)


@pytest.mark.parametrize(
    ("data", "error", "match"),
    [
        (b"\x30\xff\xff\xff\xff\x01", MalformedPacket, "longer than 4 bytes"),
        (b"\x00\x00", MalformedPacket, "reserved packet type 0"),
        (b"\xf0\x00", MalformedPacket, "reserved packet type 15"),
        (b"\x20\x02\x00\x00", ProtocolViolation, "CONNACK may not be sent by a client"),
        (b"\x90\x03\x00\x01\x00", ProtocolViolation, "SUBACK may not be sent by a client"),
        (b"\x63\x02\x00\x01", MalformedPacket, "PUBREL: fixed-header flags 0011"),
        (b"\x80\x06\x12\x34\x00\x01p\x00", MalformedPacket, "SUBSCRIBE: fixed-header flags"),
        (b"\xa0\x05\x12\x34\x00\x01p", MalformedPacket, "UNSUBSCRIBE: fixed-header flags"),
        (b"\xc0\x01\x00", MalformedPacket, "PINGREQ: remaining length 1"),
        (b"\x40\x03\x00\x01\x00", MalformedPacket, "PUBACK: remaining length 3"),
        (b"\x40\x02\x00\x00", MalformedPacket, "PUBACK: packet identifier 0"),
        (b"\x36\x0e\x00\x05topicpayload", MalformedPacket, "QoS 3"),
        (b"\x38\x0e\x00\x05topicpayload", ProtocolViolation, "DUP set on a QoS 0"),
        (b"\x30\x09\x00\x00payload", ProtocolViolation, "empty topic"),
        (b"\x30\x0e\x00\x05+opicpayload", ProtocolViolation, "wildcard"),
        (b"\x32\x07\x00\x05topic", MalformedPacket, "truncated before packet identifier"),
        (b"\x32\x10\x00\x05topic\x00\x00payload", MalformedPacket, "packet identifier 0"),
        (b"\x30\x0e\x00\x05top\x00\x00payload", MalformedPacket, "U\\+0000"),
        (b"\x30\x0e\x00\x05to\xed\xa0\x80payload", MalformedPacket, "invalid UTF-8"),
        (b"\x30\x0d\x00\x05to\xc2\x9fpayload", MalformedPacket, "U\\+009F"),
        (b"\x30\x0e\x00\x05to\xef\xbf\xbfpayload", MalformedPacket, "U\\+FFFF"),
        (b"\x82\x06\x12\x34\x00\x01p\x03", MalformedPacket, "requested QoS byte 0x03"),
        (b"\x82\x05\x12\x34\x00\x00\x00", MalformedPacket, "empty topic filter"),
        (b"\x82\x02\x12\x34", ProtocolViolation, "SUBSCRIBE: no topic filter"),
        (b"\x82\x06\x00\x00\x00\x01p\x00", MalformedPacket, "SUBSCRIBE: packet identifier 0"),
        (b"\x82\x0a\x12\x34\x00\x05ab/+e\x00", MalformedPacket, "invalid topic filter"),
        (b"\x82\x07\x12\x34\x00\x01p\x00\x00", MalformedPacket, "truncated"),
        (b"\xa2\x02\x12\x34", ProtocolViolation, "UNSUBSCRIBE: no topic filter"),
        (b"\xa2\x07\x12\x34\x00\x00\x00\x01q", MalformedPacket, "empty topic filter"),
        (b"\x10\x00", MalformedPacket, "CONNECT: truncated before protocol name length"),
        (b"\x10\x0c\x00\x03MQT\x04\x02\x00\x0a\x00\x01p", ProtocolViolation, "protocol name"),
        (b"\x11\x0d\x00\x04MQTT\x04\x02\x00\x0a\x00\x01p", MalformedPacket, "fixed-header flags"),
        (
            b"\x10\x0d\x00\x04MQTT\x04\x03\x00\x0a\x00\x01p",
            MalformedPacket,
            "reserved connect flag",
        ),
        (
            b"\x10\x0e\x00\x04MQTT\x04\x02\x00\x0a\x00\x01p\x00",
            MalformedPacket,
            "1 unexpected trailing",
        ),
        (
            b"\x10\x0d\x00\x04MQTT\x04\x0a\x00\x0a\x00\x01p",
            MalformedPacket,
            "without the will flag",
        ),
        (
            b"\x10\x10\x00\x04MQTT\x04\x42\x00\x0a\x00\x01p\x00\x01p",
            MalformedPacket,
            "password flag",
        ),
        (b"\x10\x0d\x00\x04MQTT\x04\x82\x00\x0a\x00\x01p", MalformedPacket, "user name length"),
        (b"\x10\x08\x00\x04MQTT\x04\xc2", MalformedPacket, "truncated before keep alive"),
    ],
)
def test_malformations_are_named(data: bytes, error: type[MqttError], match: str) -> None:
    _fails(data, error, match)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"\x10\x02\x00\x00", "CONNECT may not be sent by a server"),
        (b"\x21\x02\x00\x00", "CONNACK: fixed-header flags"),
        (b"\x20\x02\x02\x00", "reserved acknowledge flags"),
        (b"\x20\x02\x00\x06", "return code 6"),
        (b"\x90\x03\x00\x01\x03", "invalid return code 0x03"),
        (b"\x90\x02\x00\x01", "no return code"),
    ],
)
def test_client_side_malformations(data: bytes, match: str) -> None:
    _fails(data, MqttError, match, server_side=False)


def test_mqtt31_connect_allows_header_flags_and_unknown_levels_parse_for_connack() -> None:
    old = Parser().feed(b"\x14\x0f\x00\x06MQIsdp\x03\x01\x00\x0a\x00\x01p")
    assert old == [
        Connect(
            client_id="p",
            clean_session=False,
            keepalive=10,
            protocol_name="MQIsdp",
            protocol_level=3,
        )
    ]
    (future,) = Parser().feed(b"\x10\x0d\x00\x04MQTT\x06\x00\x00\x0a\x00\x01p")
    assert isinstance(future, Connect)
    assert future.protocol_level == 6


def test_four_byte_utf8_in_topic_is_valid() -> None:
    (packet,) = Parser().feed(b"\x30\x0e\x00\x05A\xf0\xaa\x9b\x94payload")
    assert isinstance(packet, Publish)
    assert packet.topic == "A\U0002a6d4"


@pytest.mark.parametrize(
    ("topic_filter", "ok"),
    [
        ("a/b", True),
        ("+", True),
        ("#", True),
        ("a/#", True),
        ("+/+/#", True),
        ("/", True),
        ("a/#/b", False),
        ("a#", False),
        ("a/b+", False),
        ("", False),
        ("a\x00b", False),
    ],
)
def test_valid_topic_filter(topic_filter: str, ok: bool) -> None:
    assert valid_topic_filter(topic_filter) is ok


def test_valid_topic_name() -> None:
    assert valid_topic_name("a/b/c")
    assert valid_topic_name("$SYS/x")
    assert not valid_topic_name("")
    assert not valid_topic_name("a/+")
    assert not valid_topic_name("a/#")
    assert not valid_topic_name("x" * 65536)


def test_encode_refuses_unencodable_values() -> None:
    with pytest.raises(ValueError, match="packet id 0"):
        encode(Puback(0))
    with pytest.raises(ValueError, match="packet id None"):
        encode(Publish("t", b"", qos=1))
    with pytest.raises(ValueError, match="qos 3"):
        encode(Publish("t", b"", qos=3, packet_id=1))
    with pytest.raises(ValueError, match="SUBSCRIBE qos 3 for 't'"):
        encode(Subscribe(1, [("t", 3)]))
    with pytest.raises(ValueError, match="will qos 3"):
        encode(Connect(client_id="c", will=Will("t", b"", 3)))
    with pytest.raises(ValueError, match="topic of 65536 bytes exceeds 65535"):
        encode(Publish("t" * 65536, b""))
    with pytest.raises(ValueError, match="string of 65536 bytes"):
        encode(Unsubscribe(1, ["t" * 65536]))


def test_mutated_packets_raise_only_mqtt_errors() -> None:
    # Seeded mutation fuzzing: any byte string either parses or raises an MqttError
    # (never IndexError, UnicodeDecodeError, ...).
    import random

    rng = random.Random(1234)
    seeds = [encode(p) for p in CLIENT_PACKETS + SERVER_PACKETS]
    outcomes = {"parsed": 0, "rejected": 0}
    for _ in range(20_000):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 4)):
            action = rng.random()
            if action < 0.5 and data:
                data[rng.randrange(len(data))] = rng.randrange(256)
            elif action < 0.75 and data:
                del data[rng.randrange(len(data))]
            else:
                data.insert(rng.randrange(len(data) + 1), rng.randrange(256))
        for server_side in (True, False):
            try:
                Parser(max_packet_size=4096, server_side=server_side).feed(bytes(data))
                outcomes["parsed"] += 1
            except MqttError:
                outcomes["rejected"] += 1
    assert outcomes["parsed"] > 1000
    assert outcomes["rejected"] > 1000
