"""The /ws JSON protocol codec, fed strings (no sockets)."""

from __future__ import annotations

import json

import pytest

from edge.ws.jsonproto import (
    OpError,
    Publish,
    Subscribe,
    Unsubscribe,
    WsCloseError,
    check_topic_filter,
    check_topic_name,
    decode_payload,
    encode_ack,
    encode_error,
    encode_message,
    encode_payload,
    parse_op,
)


def test_parse_the_three_ops() -> None:
    assert parse_op('{"op":"subscribe","topic":"a/+/c","id":1}') == Subscribe(1, "a/+/c")
    assert parse_op('{"op":"unsubscribe","topic":"a/#","id":2}') == Unsubscribe(2, "a/#")
    assert parse_op(
        '{"op":"publish","topic":"a/b","payload":"hi","qos":1,"retain":true,"id":3}'
    ) == Publish(3, "a/b", b"hi", 1, True)
    assert parse_op('{"op":"publish","topic":"a","payload":"/wA=","encoding":"base64"}') == Publish(
        None, "a", b"\xff\x00", 0, False
    )


@pytest.mark.parametrize(
    ("text", "code", "reason_part"),
    [
        ("not json", 1007, "not JSON"),
        ("[1, 2]", 1007, "JSON object"),
        ('{"id": 1}', 1007, '"op"'),
        ('{"op": "dance", "id": 1}', 1003, "unknown op 'dance'"),
    ],
)
def test_messages_that_are_not_the_protocol_close(text: str, code: int, reason_part: str) -> None:
    with pytest.raises(WsCloseError) as info:
        parse_op(text)
    assert info.value.code == code
    assert reason_part in info.value.reason


@pytest.mark.parametrize(
    ("obj", "reason_part"),
    [
        ({"op": "publish", "topic": "a/+", "id": 4}, "wildcards"),
        ({"op": "publish", "topic": "", "id": 4}, "empty"),
        ({"op": "publish", "topic": "a", "qos": 2, "id": 4}, '"qos" must be 0 or 1'),
        ({"op": "publish", "topic": "a", "qos": True, "id": 4}, '"qos" must be an integer'),
        (
            {"op": "publish", "topic": "a", "retain": "yes", "id": 4},
            '"retain" must be true or false',
        ),
        ({"op": "publish", "topic": "a", "payload": "!!", "encoding": "base64", "id": 4}, "base64"),
        ({"op": "publish", "topic": "a", "encoding": "latin-1", "id": 4}, "encoding must be"),
        ({"op": "subscribe", "id": 4}, '"topic" is required'),
        ({"op": "subscribe", "topic": "a/#/b", "id": 4}, "wildcard # must be"),
        ({"op": "subscribe", "topic": "a/b+", "id": 4}, "wildcard + must fill"),
        ({"op": "subscribe", "topic": 7, "id": 4}, '"topic" must be a string'),
    ],
)
def test_bad_fields_are_op_errors_naming_the_field(
    obj: dict[str, object], reason_part: str
) -> None:
    with pytest.raises(OpError) as info:
        parse_op(json.dumps(obj))
    assert info.value.op_id == 4
    assert reason_part in info.value.reason


def test_non_integer_id_is_an_op_error_without_id() -> None:
    with pytest.raises(OpError) as info:
        parse_op('{"op":"subscribe","topic":"a","id":"x"}')
    assert info.value.op_id is None


def test_topic_checks() -> None:
    assert check_topic_name("a/b/c") is None
    assert check_topic_name("x" * 11, max_bytes=10) is not None
    assert check_topic_name("\ud800") == "the topic is not valid UTF-8"
    assert check_topic_filter("#") is None
    assert check_topic_filter("+/b/#") is None
    assert check_topic_filter("a/#/b") is not None


def test_payload_round_trip() -> None:
    assert encode_payload(b"caf\xc3\xa9") == ("café", "utf-8")
    assert encode_payload(b"\xff") == ("/w==", "base64")
    assert decode_payload("café", "utf-8") == b"caf\xc3\xa9"
    assert decode_payload("/w==", "base64") == b"\xff"


def test_encoders() -> None:
    assert json.loads(encode_ack(1, granted_qos=0)) == {"op": "ack", "id": 1, "granted_qos": 0}
    assert json.loads(encode_error(2, "no")) == {"op": "error", "id": 2, "reason": "no"}
    assert json.loads(encode_message("t", b"\x00\xff", qos=0, retain=True)) == {
        "op": "message",
        "topic": "t",
        "payload": "AP8=",
        "encoding": "base64",
        "qos": 0,
        "retain": True,
    }
