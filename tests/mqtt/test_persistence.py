"""Durable MQTT state, sans-I/O: held acks, and sessions, messages and retained across a restart.

A "restart" is a second :class:`MqttBroker` (on a fresh core) restored from the same
store; a "crash" drops what the store had not committed. The SQLite store gets the
same flows in tests/mqtt/test_sqlite_store.py, and a real edge process is killed in
tests/server/test_durability.py.
"""

from __future__ import annotations

from typing import Any

import pytest

from edge.core.events import EventLog
from edge.core.hub import EdgeCore
from edge.core.policy import Policy
from edge.core.session import DeviceIdentity, SessionInfo
from edge.mqtt.broker import MqttBroker, MqttConfig
from edge.mqtt.codec import (
    Connack,
    Connect,
    Disconnect,
    Packet,
    Parser,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Suback,
    Subscribe,
    SubscriptionOptions,
    Unsubscribe,
    encode,
)
from edge.mqtt.properties import Properties
from edge.mqtt.store import MemoryStore, MqttStore, coalesce

pytestmark = pytest.mark.timeout(30)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Client:
    """A test client speaking bytes (MQTT ``level``) to one MqttConnection."""

    def __init__(self, broker: MqttBroker, name: str, level: int = 4) -> None:
        self.info = SessionInfo(identity=DeviceIdentity(namespace="fleet", name=name), peer="p:1")
        self.level = level
        self.conn = broker.connection(self.info)
        self.parser = Parser(server_side=False, protocol_level=level)
        self.raw: list[bytes] = []
        self.backlog: list[Packet] = []

    def send(self, *packets: Packet) -> None:
        self.conn.receive_data(b"".join(encode(p, self.level) for p in packets))

    def recv(self) -> list[Packet]:
        data = self.conn.data_to_send()
        self.raw.append(data)
        got = self.backlog + self.parser.feed(data)
        self.backlog = []
        return got

    def connect(self, clean: bool = False, props: Properties | None = None) -> Connack:
        self.send(
            Connect(
                client_id=self.info.identity.name,
                clean_session=clean,
                protocol_level=self.level,
                properties=props,
            )
        )
        ack, *self.backlog = self.recv()
        assert isinstance(ack, Connack)
        return ack


def make(store: MqttStore | None, **config: Any) -> tuple[MqttBroker, Clock]:
    clock = Clock()
    core = EdgeCore(EventLog(log_events=False), Policy.open())
    broker = MqttBroker(core, MqttConfig(**config), clock=clock, store=store)
    broker.restore()
    return broker, clock


def subscribed(broker: MqttBroker, name: str = "sub", qos: int = 1, level: int = 4) -> Client:
    """A persistent session subscribed to ``t/#`` at ``qos``, then offline."""
    sub = Client(broker, name, level)
    props = Properties(session_expiry_interval=3600) if level == 5 else None
    sub.connect(props=props)
    sub.send(Subscribe(1, [("t/#", qos)]))
    assert isinstance(sub.recv()[0], Suback)
    return sub


def test_an_ack_waits_for_the_commit_of_its_message() -> None:
    store = MemoryStore()
    broker, _ = make(store)
    sub = subscribed(broker)
    store.commit()
    pub = Client(broker, "pub")
    pub.connect(clean=True)
    pub.send(Publish("t/1", b"one", qos=1, packet_id=7))
    # The subscriber has it at once; the publisher's PUBACK waits for the disk.
    (delivered,) = sub.recv()
    assert isinstance(delivered, Publish)
    assert delivered.payload == b"one"
    assert pub.recv() == []
    assert store.dirty
    store.commit()
    assert pub.recv() == [Puback(7)]
    # A crash now keeps the message for the subscriber, unacknowledged.
    assert [row[0] for row in store.messages.values()] == ["t/1"]


def test_a_crash_before_the_commit_loses_only_unacknowledged_messages() -> None:
    store = MemoryStore()
    broker, _ = make(store)
    subscribed(broker).conn.connection_lost()
    store.commit()
    pub = Client(broker, "pub")
    pub.connect(clean=True)
    pub.send(Publish("t/1", b"acked", qos=1, packet_id=1))
    store.commit()
    assert pub.recv() == [Puback(1)]
    pub.send(Publish("t/2", b"never acked", qos=1, packet_id=2))
    assert pub.recv() == []
    store.drop_uncommitted()  # kill -9 here

    again, _ = make(store)
    sub = Client(again, "sub")
    assert sub.connect().session_present
    (got,) = sub.recv()
    assert isinstance(got, Publish)
    assert got.payload == b"acked"


def test_sessions_inflight_and_queued_messages_survive_in_order_with_their_packet_ids() -> None:
    store = MemoryStore()
    broker, _ = make(store, max_inflight=2)
    sub = subscribed(broker)
    pub = Client(broker, "pub")
    pub.connect(clean=True)
    for n in range(5):
        pub.send(Publish("t/x", b"m%d" % n, qos=1, packet_id=n + 1))
    store.commit()
    inflight = [p for p in sub.recv() if isinstance(p, Publish)]
    assert [p.payload for p in inflight] == [b"m0", b"m1"]
    sub.send(Puback(inflight[0].packet_id or 0))  # m0 done; m2 goes out
    (m2,) = sub.recv()
    assert isinstance(m2, Publish)
    store.commit()

    again, _ = make(store, max_inflight=2)
    session = again.session("fleet/sub", "sub")
    assert session is not None
    assert sorted(e.message.payload for e in session.inflight.values()) == [b"m1", b"m2"]
    assert [q[0].payload for q in session.queue] == [b"m3", b"m4"]
    back = Client(again, "sub")
    assert back.connect().session_present
    resent = back.recv()
    # In flight: re-sent with DUP and their packet ids; the queue follows as room frees.
    assert [(p.payload, p.dup, p.packet_id) for p in resent if isinstance(p, Publish)] == [
        (b"m1", True, inflight[1].packet_id),
        (b"m2", True, m2.packet_id),
    ]
    for p in resent:
        assert isinstance(p, Publish)
        back.send(Puback(p.packet_id or 0))
    rest = back.recv()
    assert [p.payload for p in rest if isinstance(p, Publish)] == [b"m3", b"m4"]
    for p in rest:
        assert isinstance(p, Publish)
        back.send(Puback(p.packet_id or 0))
    store.commit()
    assert store.outgoing == {}
    assert store.messages == {}  # no entry needs them any more


def test_subscriptions_come_back_and_unsubscribe_and_clean_session_remove_them() -> None:
    store = MemoryStore()
    broker, _ = make(store)
    sub = Client(broker, "sub")
    sub.connect()
    sub.send(Subscribe(1, [("a/#", 1), ("b/+", 2)]))
    sub.send(Unsubscribe(2, ["a/#"]))
    store.commit()
    again, _ = make(store)
    assert again.core.router.subscriptions("mqtt:fleet/sub:sub") == {"b/+": 2}
    # A clean session ends the stored one.
    Client(again, "sub").connect(clean=True)
    store.commit()
    assert store.sessions == {}
    assert store.subscriptions == {}
    third, _ = make(store)
    assert third.sessions == {}


def test_an_ended_session_with_expiry_is_dropped_from_the_store() -> None:
    store = MemoryStore()
    broker, clock = make(store)
    sub = subscribed(broker, level=5)  # Session Expiry Interval 3600
    sub.send(Disconnect())
    pub = Client(broker, "pub")
    pub.connect(clean=True)
    pub.send(Publish("t/1", b"x", qos=1, packet_id=1))
    store.commit()
    assert len(store.outgoing) == 1
    clock.now += 3601
    assert broker.expire_sessions(clock.now) == 1
    store.commit()
    assert (store.sessions, store.outgoing, store.messages) == ({}, {}, {})


def test_mqtt5_messages_and_retained_come_back_with_the_exact_bytes() -> None:
    store = MemoryStore()
    broker, _ = make(store)
    props = Properties(
        content_type="application/cbor",
        response_topic="reply/here",
        correlation_data=b"\x00\x01corr",
        user_properties=[("k", "v"), ("k", "v2"), ("z", "")],
        payload_format_indicator=0,
    )
    sub = Client(broker, "sub", level=5)
    sub.connect(props=Properties(session_expiry_interval=3600))
    sub.send(
        Subscribe(
            1,
            [("t/#", SubscriptionOptions(qos=1, retain_as_published=True).to_byte())],
            properties=Properties(subscription_identifiers=[42]),
        )
    )
    sub.recv()
    sub.conn.connection_lost()
    pub = Client(broker, "pub", level=5)
    pub.connect(clean=True)
    payload = bytes(range(256))
    pub.send(Publish("t/r", payload, qos=1, retain=True, packet_id=1, properties=props))
    pub.send(Publish("t/q", payload[::-1], qos=1, packet_id=2, properties=props))
    store.commit()
    # The bytes a fresh subscriber gets for the retained message, before the restart.
    before = Client(broker, "watch", level=5)
    before.connect(clean=True)
    before.recv()
    before.send(Subscribe(1, [("t/r", 1)]))
    _, retained_before = before.recv()
    assert isinstance(retained_before, Publish)

    again, _ = make(store)
    after = Client(again, "watch", level=5)
    after.connect(clean=True)
    after.send(Subscribe(1, [("t/r", 1)]))
    raw_before = before.raw[-1]
    after.recv()
    raw_after = after.raw[-1]
    assert raw_after == raw_before  # SUBACK + retained PUBLISH, byte for byte
    back = Client(again, "sub", level=5)
    assert back.connect(props=Properties(session_expiry_interval=3600)).session_present
    got = [p for p in back.recv() if isinstance(p, Publish)]
    assert [p.topic for p in got] == ["t/r", "t/q"]
    for p in got:
        assert p.properties is not None
        assert p.properties.user_properties == props.user_properties
        assert p.properties.correlation_data == props.correlation_data
        assert p.properties.content_type == props.content_type
        assert p.properties.response_topic == "reply/here"
        assert p.properties.subscription_identifiers == [42]
    assert got[0].payload == payload
    assert got[0].retain  # Retain As Published came back with the subscription
    assert got[1].payload == payload[::-1]


def test_message_expiry_counts_down_across_a_restart() -> None:
    store = MemoryStore()
    broker, _ = make(store)
    subscribed(broker, level=5).conn.connection_lost()
    pub = Client(broker, "pub", level=5)
    pub.connect(clean=True)
    pub.send(
        Publish("t/e", b"x", qos=1, packet_id=1, properties=Properties(message_expiry_interval=60))
    )
    store.commit()
    again, _ = make(store)
    back = Client(again, "sub", level=5)
    back.connect(props=Properties(session_expiry_interval=3600))
    (got,) = [p for p in back.recv() if isinstance(p, Publish)]
    assert got.properties is not None
    assert got.properties.message_expiry_interval is not None
    assert 58 <= got.properties.message_expiry_interval <= 60


def test_retained_clear_is_durable() -> None:
    store = MemoryStore()
    broker, _ = make(store)
    pub = Client(broker, "pub")
    pub.connect(clean=True)
    pub.send(Publish("r/1", b"keep", retain=True), Publish("r/2", b"gone", retain=True))
    pub.send(Publish("r/2", b"", retain=True))
    store.commit()
    again, _ = make(store)
    assert [m.payload for m in again.core.router.retained_matching("r/#")] == [b"keep"]


@pytest.mark.parametrize("queue_qos0", [False, True])
def test_queue_qos0_messages_option(queue_qos0: bool) -> None:
    store = MemoryStore()
    broker, _ = make(store, queue_qos0_messages=queue_qos0)
    sub = subscribed(broker, qos=1)
    sub.conn.connection_lost()
    pub = Client(broker, "pub")
    pub.connect(clean=True)
    pub.send(Publish("t/0", b"qos0"), Publish("t/1", b"qos1", qos=1, packet_id=1))
    store.commit()
    again, _ = make(store, queue_qos0_messages=queue_qos0)
    back = Client(again, "sub")
    back.connect()
    got = [(p.payload, p.qos) for p in back.recv() if isinstance(p, Publish)]
    expected = [(b"qos1", 1)]
    if queue_qos0:
        expected.insert(0, (b"qos0", 0))
    assert got == expected


def test_queue_qos0_without_a_store_still_queues_while_the_broker_runs() -> None:
    broker, _ = make(None, queue_qos0_messages=True)
    sub = subscribed(broker, qos=0)
    sub.conn.connection_lost()
    pub = Client(broker, "pub")
    pub.connect(clean=True)
    pub.send(Publish("t/0", b"a"), Publish("t/0", b"b"))
    back = Client(broker, "sub")
    back.connect()
    assert [p.payload for p in back.recv() if isinstance(p, Publish)] == [b"a", b"b"]


def test_persistence_off_acks_at_once() -> None:
    broker, _ = make(None)
    subscribed(broker).conn.connection_lost()
    pub = Client(broker, "pub")
    pub.connect(clean=True)
    pub.send(Publish("t/1", b"x", qos=1, packet_id=3))
    assert pub.recv() == [Puback(3)]


def test_qos2_acknowledged_by_pubrec_survives_for_a_persistent_publisher() -> None:
    store = MemoryStore()
    broker, _ = make(store)
    subscribed(broker, qos=2).conn.connection_lost()
    pub = Client(broker, "pub")
    pub.connect()  # persistent
    pub.send(Publish("t/2", b"exactly once", qos=2, packet_id=9))
    assert pub.recv() == []
    store.commit()
    assert pub.recv() == [Pubrec(9)]
    store.drop_uncommitted()

    again, _ = make(store)
    back = Client(again, "pub")
    assert back.connect().session_present
    back.send(Pubrel(9))
    store.commit()
    assert back.recv() == [Pubcomp(9)]
    sub = Client(again, "sub")
    sub.connect()
    got = [p for p in sub.recv() if isinstance(p, Publish)]
    assert [(p.payload, p.qos) for p in got] == [(b"exactly once", 2)]
    assert store.incoming == {}


def test_qos2_acknowledged_for_a_clean_publisher_is_released_at_restore() -> None:
    store = MemoryStore()
    broker, _ = make(store)
    subscribed(broker, qos=2).conn.connection_lost()
    pub = Client(broker, "pub")
    pub.connect(clean=True)
    pub.send(Publish("t/2", b"taken", qos=2, packet_id=4))
    store.commit()
    assert pub.recv() == [Pubrec(4)]
    store.drop_uncommitted()  # the edge dies before PUBREL

    again, _ = make(store)
    store.commit()
    assert store.incoming == {}
    sub = Client(again, "sub")
    sub.connect()
    assert [p.payload for p in sub.recv() if isinstance(p, Publish)] == [b"taken"]


def test_outbound_qos2_state_survives_between_pubrec_and_pubcomp() -> None:
    store = MemoryStore()
    broker, _ = make(store)
    sub = subscribed(broker, qos=2)
    pub = Client(broker, "pub")
    pub.connect(clean=True)
    pub.send(Publish("t/2", b"q2", qos=2, packet_id=1), Pubrel(1))
    (out,) = [p for p in sub.recv() if isinstance(p, Publish)]
    assert out.packet_id is not None
    sub.send(Pubrec(out.packet_id))
    store.commit()  # the PUBREL too waits for the state it announces
    assert sub.recv() == [Pubrel(out.packet_id)]

    again, _ = make(store)
    back = Client(again, "sub")
    back.connect()
    # Only the PUBREL is re-sent: the message itself was received.
    assert back.recv() == [Pubrel(out.packet_id)]
    back.send(Pubcomp(out.packet_id))
    store.commit()
    assert store.outgoing == {}


def test_entries_stored_and_deleted_in_one_batch_never_reach_the_store() -> None:
    ops: list[tuple[Any, ...]] = [
        ("msg", 1, "t", b"x", 1, False, "o", "mqtt", None),
        ("out", 1, "i", "c", 1, 1, False, (), None, 0),
        ("outpid", 1, 5),
        ("out", 2, "i", "c", 1, 1, False, (), 6, 0),
        ("delout", 1),
        ("delout", 9),  # stored by an earlier batch: kept
        ("delmsg", 7),
    ]
    assert coalesce(ops) == [ops[0], ops[3], ops[5], ops[6]]
    assert coalesce([*ops, ("delout", 2), ("delmsg", 1)]) == [ops[5], ops[6]]
    # A session dropped in the same batch takes its new entries with it.
    assert coalesce([ops[3], ("drop", "i", "c"), ("delout", 2)]) == [
        ("drop", "i", "c"),
        ("delout", 2),
    ]
    nothing: list[tuple[Any, ...]] = [("retain", "t", b"x", 0, "o", "mqtt", None)]
    assert coalesce(nothing) is nothing


def test_a_subscriber_acking_before_the_commit_leaves_nothing_to_write() -> None:
    store = MemoryStore()
    broker, _ = make(store)
    sub = subscribed(broker)
    store.commit()
    pub = Client(broker, "pub")
    pub.connect(clean=True)
    pub.send(Publish("t/1", b"x", qos=1, packet_id=1))
    (got,) = sub.recv()
    assert isinstance(got, Publish)
    sub.send(Puback(got.packet_id or 0))
    assert store.commit() == 0  # four changes that cancel out
    assert pub.recv() == [Puback(1)]
