"""Property tests of the MQTT codec (edge.mqtt.codec), 3.1.1 and 5.0.

- round trips: a packet encoded at a level parses back to an equal packet;
- arbitrary bytes raise only ``MqttError`` (its documented subclasses), never
  anything else, on either side and at either level;
- feeding in chunks gives what feeding at once gives: the same packets, then the
  same error, if any. One documented difference: ``feed`` that raises returns
  nothing, so packets completed earlier in the same call are not seen (the
  connection is closed on the error anyway); fed in pieces, those arrive first.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge.mqtt.codec import (
    Connect,
    Disconnect,
    Packet,
    Parser,
    Pingreq,
    Puback,
    Publish,
    Subscribe,
    Unsubscribe,
    Will,
    encode,
    valid_topic_filter,
    valid_topic_name,
)
from edge.mqtt.errors import MqttError

# `make fuzz` (HYPOTHESIS_PROFILE=long) runs many more examples: a longer bound there.
pytestmark = pytest.mark.timeout(1800 if os.environ.get("HYPOTHESIS_PROFILE") == "long" else 120)

_text = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cc", "Cs", "Cn", "Co")), max_size=30
)
topic_names = _text.filter(lambda t: bool(t) and valid_topic_name(t))
topic_filters = st.one_of(
    topic_names,
    st.sampled_from(["#", "+", "a/+/b", "a/#", "+/+", "$SYS/#"]),
).filter(valid_topic_filter)
packet_ids = st.integers(1, 65535)
client_ids = st.text("abcdefghijklmnopqrstuvwxyz0123456789-", max_size=23)


@st.composite
def publishes(draw: st.DrawFn) -> Publish:
    qos = draw(st.integers(0, 2))
    return Publish(
        topic=draw(topic_names),
        payload=draw(st.binary(max_size=200)),
        qos=qos,
        retain=draw(st.booleans()),
        dup=draw(st.booleans()) if qos else False,
        packet_id=draw(packet_ids) if qos else None,
    )


@st.composite
def connects(draw: st.DrawFn, level: int) -> Connect:
    will = None
    if draw(st.booleans()):
        will = Will(
            topic=draw(topic_names),
            payload=draw(st.binary(max_size=50)),
            qos=draw(st.integers(0, 2)),
            retain=draw(st.booleans()),
        )
    username = draw(st.none() | client_ids)
    return Connect(
        client_id=draw(client_ids),
        clean_session=draw(st.booleans()),
        keepalive=draw(st.integers(0, 65535)),
        will=will,
        username=username,
        password=draw(st.none() | st.binary(max_size=20)) if username is not None else None,
        protocol_level=level,
    )


def client_packets(level: int) -> st.SearchStrategy[Packet]:
    """Packets a client sends, without MQTT 5 properties (the same classes at both levels)."""
    return st.one_of(
        publishes(),
        st.builds(
            Subscribe,
            packet_id=packet_ids,
            topics=st.lists(st.tuples(topic_filters, st.integers(0, 2)), min_size=1, max_size=4),
        ),
        st.builds(
            Unsubscribe,
            packet_id=packet_ids,
            topics=st.lists(topic_filters, min_size=1, max_size=4),
        ),
        st.builds(Puback, packet_id=packet_ids),
        st.just(Pingreq()),
        st.just(Disconnect()),
    )


def _parse_all(
    parser: Parser, chunks: list[bytes]
) -> tuple[list[Packet], type[BaseException] | None]:
    """Feed ``chunks`` in order: the packets parsed, and the error type that ended it."""
    packets: list[Packet] = []
    try:
        for chunk in chunks:
            packets.extend(parser.feed(chunk))
    except MqttError as exc:
        return packets, type(exc)
    return packets, None


def _same_outcome(
    whole: tuple[list[Packet], type[BaseException] | None],
    chunked: tuple[list[Packet], type[BaseException] | None],
) -> None:
    assert chunked[1] == whole[1]
    if whole[1] is None:
        assert chunked[0] == whole[0]
    else:
        # The whole feed's packets before the error are lost with the raise.
        assert chunked[0][: len(whole[0])] == whole[0]


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, start = [], 0
    for point in [*points, len(data)]:
        pieces.append(data[start:point])
        start = point
    return pieces


@pytest.mark.parametrize("level", [4, 5])
@given(data=st.data())
def test_client_packets_round_trip(level: int, data: st.DataObject) -> None:
    connect = data.draw(connects(level))
    packets = data.draw(st.lists(client_packets(level), max_size=5))
    stream = encode(connect) + b"".join(encode(p, protocol_level=level) for p in packets)
    parsed = Parser(server_side=True).feed(stream)
    assert parsed == [connect, *packets]


@pytest.mark.parametrize("level", [4, 5])
@given(data=st.data())
def test_chunked_feeding_equals_whole_feeding(level: int, data: st.DataObject) -> None:
    connect = data.draw(connects(level))
    packets = data.draw(st.lists(client_packets(level), max_size=5))
    stream = encode(connect) + b"".join(encode(p, protocol_level=level) for p in packets)
    # Valid streams with arbitrary bytes appended: the same packets, then the same error.
    stream += data.draw(st.binary(max_size=20))
    cuts = data.draw(st.lists(st.integers(0, 10_000), max_size=12))
    whole = _parse_all(Parser(server_side=True), [stream])
    chunked = _parse_all(Parser(server_side=True), _split(stream, cuts))
    _same_outcome(whole, chunked)


@pytest.mark.parametrize(("server_side", "level"), [(True, 4), (True, 5), (False, 4), (False, 5)])
@given(blob=st.binary(max_size=400), cuts=st.lists(st.integers(0, 400), max_size=6))
def test_arbitrary_bytes_raise_only_mqtt_errors(
    server_side: bool, level: int, blob: bytes, cuts: list[int]
) -> None:
    whole = _parse_all(Parser(server_side=server_side, protocol_level=level), [blob])
    chunked = _parse_all(Parser(server_side=server_side, protocol_level=level), _split(blob, cuts))
    _same_outcome(whole, chunked)


@given(blob=st.binary(min_size=2, max_size=400))
def test_packet_too_large_is_an_mqtt_error_whatever_follows(blob: bytes) -> None:
    packets, error = _parse_all(Parser(max_packet_size=16, server_side=True), [blob])
    assert error is None or issubclass(error, MqttError)
    assert all(
        len(encode(p, protocol_level=4)) <= 16 for p in packets if not isinstance(p, Connect)
    )
