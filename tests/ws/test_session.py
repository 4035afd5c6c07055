"""JsonWsSession against the real core, fed text (no sockets)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from edge.core.events import EventLog
from edge.core.hub import EdgeCore
from edge.core.policy import Policy
from edge.core.router import Message, Metadata
from edge.core.session import DeviceIdentity, SessionInfo
from edge.ws.jsonproto import WsCloseError
from edge.ws.session import JsonWsSession


def make_session(name: str = "dev1") -> SessionInfo:
    return SessionInfo(identity=DeviceIdentity(namespace="default", name=name), peer="test")


def replies(session: JsonWsSession) -> list[dict[str, Any]]:
    return [json.loads(text) for text in session.data_to_send()]


def test_subscribe_ack_precedes_retained_then_live() -> None:
    core = EdgeCore(EventLog(log_events=False), Policy.open())
    core.publish(Message("s/1", b"old", 1, True), None)
    ws = JsonWsSession(core, make_session())
    ws.receive_text('{"op":"subscribe","topic":"s/#","id":1}')
    assert replies(ws) == [
        {"op": "ack", "id": 1, "granted_qos": 0},
        {
            "op": "message",
            "topic": "s/1",
            "payload": "old",
            "encoding": "utf-8",
            "qos": 0,
            "retain": True,
        },
    ]
    woken: list[int] = []
    ws.wakeup = lambda: woken.append(1)
    core.publish(Message("s/2", b"new", 1, False), None)
    assert woken == [1]
    assert replies(ws)[0]["payload"] == "new"


def test_publish_acks_and_unsubscribe() -> None:
    core = EdgeCore(EventLog(log_events=False), Policy.open())
    ws = JsonWsSession(core, make_session())
    ws.receive_text('{"op":"subscribe","topic":"t","id":1}')
    ws.receive_text('{"op":"publish","topic":"t","payload":"x","qos":1,"id":2}')
    ws.receive_text('{"op":"publish","topic":"t","payload":"y"}')
    out = replies(ws)
    assert out[0] == {"op": "ack", "id": 1, "granted_qos": 0}
    # The session's own delivery comes before the QoS 1 ack (routing is synchronous).
    assert out[1]["op"] == "message"
    assert out[2] == {"op": "ack", "id": 2, "delivered": 1}
    assert out[3]["payload"] == "y"
    assert len(out) == 4  # no ack for a QoS 0 publish without id
    ws.receive_text('{"op":"unsubscribe","topic":"t","id":3}')
    assert replies(ws) == [{"op": "ack", "id": 3}]
    assert core.router.subscription_count == 0


def test_policy_denials_are_error_ops() -> None:
    events = EventLog(log_events=False)
    core = EdgeCore(events, Policy.default())
    ws = JsonWsSession(core, make_session("dev1"))
    ws.receive_text('{"op":"publish","topic":"devices/dev2/x","payload":"1","id":5}')
    ws.receive_text('{"op":"subscribe","topic":"devices/#","id":6}')
    ws.receive_text('{"op":"publish","topic":"a/+","id":7}')
    out = replies(ws)
    assert out[0]["op"] == "error"
    assert out[0]["id"] == 5
    assert "no publish rule" in out[0]["reason"]
    assert out[1] == {"op": "error", "id": 6, "reason": "not authorized to subscribe to devices/#"}
    assert out[2]["id"] == 7
    assert "wildcards" in out[2]["reason"]
    assert [e["action"] for e in events.query(kind="policy.denied")] == ["publish", "subscribe"]


def test_not_the_protocol_raises_close() -> None:
    core = EdgeCore(EventLog(log_events=False), Policy.open())
    ws = JsonWsSession(core, make_session())
    with pytest.raises(WsCloseError) as info:
        ws.receive_text('{"op":"nope"}')
    assert info.value.code == 1003


def test_overflow_asks_for_1008_and_close_unsubscribes() -> None:
    events = EventLog(log_events=False)
    core = EdgeCore(events, Policy.open())
    ws = JsonWsSession(core, make_session(), events=events, max_queue=2)
    ws.receive_text('{"op":"subscribe","topic":"t","id":1}')  # the ack is one queued text
    for i in range(3):
        core.publish(Message("t", str(i).encode()), None)
    assert ws.close_request is not None
    assert ws.close_request[0] == 1008
    assert ws.dropped == 2
    assert events.query(kind="ws.overflow")[0]["topic"] == "t"
    ws.close()
    assert core.router.subscription_count == 0
    assert ws.data_to_send() == []


def test_metadata_fields_travel_as_json_and_as_core_metadata() -> None:
    core = EdgeCore(EventLog(log_events=False), Policy.open())
    ws = JsonWsSession(core, make_session())
    ws.receive_text('{"op":"subscribe","topic":"m","id":1}')
    ws.data_to_send()
    fields = {
        "content_type": "application/json",
        "response_topic": "m/reply",
        "correlation_data": "AAE=",
        "user_properties": [["b", "2"], ["a", "1"]],
        "message_expiry": 30,
    }
    ws.receive_text(json.dumps({"op": "publish", "topic": "m", "payload": "{}", **fields}))
    (message,) = replies(ws)
    assert message["op"] == "message"
    assert {k: message[k] for k in fields if k != "message_expiry"} == {
        k: v for k, v in fields.items() if k != "message_expiry"
    }
    assert 0 < message["message_expiry"] <= 30
    ws.receive_text('{"op":"publish","topic":"m","user_properties":[["x"]],"id":3}')
    (error,) = replies(ws)
    assert error["op"] == "error"
    assert "user_properties" in error["reason"]
    # An expired message is not delivered.
    expired = Message("m", b"old", 0, False)
    expired.meta = Metadata(expires_at=0.0)
    core.publish(expired, None)
    assert replies(ws) == []
