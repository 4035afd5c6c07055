"""The sans-I/O broker: sessions, QoS flows, wills, takeover and timeouts, fed bytes."""

from __future__ import annotations

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
    Pingreq,
    Pingresp,
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
)
from edge.mqtt.errors import MqttConfigError


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Client:
    """A test client speaking bytes to one MqttConnection."""

    def __init__(self, broker: MqttBroker, name: str = "dev-1", namespace: str = "fleet") -> None:
        self.info = SessionInfo(
            identity=DeviceIdentity(namespace=namespace, name=name), peer=f"{name}:1"
        )
        self.conn = broker.connection(self.info)
        self.parser = Parser(server_side=False)
        self.wakeups = 0
        self.backlog: list[Packet] = []
        self.conn.wakeup = self._wake

    def _wake(self) -> None:
        self.wakeups += 1

    def send(self, *packets: Packet) -> None:
        self.conn.receive_data(b"".join(encode(p) for p in packets))

    def recv(self) -> list[Packet]:
        got = self.backlog + self.parser.feed(self.conn.data_to_send())
        self.backlog = []
        return got

    def connect(self, client_id: str | None = None, **kwargs: object) -> Connack:
        cid = self.info.identity.name if client_id is None else client_id
        self.send(Connect(client_id=cid, **kwargs))  # type: ignore[arg-type]
        (ack, *self.backlog) = self.recv()
        assert isinstance(ack, Connack)
        return ack


def make(policy: Policy | None = None, **config: object) -> tuple[MqttBroker, EventLog, Clock]:
    events = EventLog(log_events=False)
    clock = Clock()
    core = EdgeCore(events, policy or Policy.default())
    return MqttBroker(core, MqttConfig(**config), clock=clock), events, clock  # type: ignore[arg-type]


def test_connect_accepted_and_client_id_rule_refusal() -> None:
    broker, events, _ = make()
    ok = Client(broker)
    assert ok.connect() == Connack(False, 0)
    (event,) = events.query(kind="mqtt.connected")
    assert event["identity"] == "fleet/dev-1"
    assert event["client_id"] == "dev-1"

    bad = Client(broker, "dev-2")
    assert bad.connect("someone-else") == Connack(False, 5)
    assert bad.conn.should_close
    assert "must equal the identity 'dev-2'" in bad.conn.close_reason
    (refused,) = events.query(kind="mqtt.refused")
    assert refused["return_code"] == 5


def test_empty_client_id_takes_the_identity_and_protocol_levels() -> None:
    broker, _, _ = make()
    client = Client(broker)
    assert client.connect("") == Connack(False, 0)
    assert client.conn.client_id == "dev-1"
    assert Client(broker).connect("", clean_session=False).return_code == 2
    old = Client(broker)
    assert old.connect(protocol_name="MQIsdp", protocol_level=4).return_code == 1
    assert "unsupported protocol 'MQIsdp' level 4" in old.conn.close_reason


def test_mqtt5_connect_is_accepted_and_a_bad_one_gets_a_connack_reason_code() -> None:
    # MQTT 5 is chosen per connection by its CONNECT (tests/mqtt/test_broker5.py has
    # the rest). A CONNECT malformed by MQTT 5 rules is answered at its own level.
    broker, events, _ = make()
    client = Client(broker)
    client.parser.set_protocol_level(5)
    client.conn.receive_data(encode(Connect(client_id="dev-1", protocol_level=5), 5))
    (ack,) = client.recv()
    assert isinstance(ack, Connack)
    assert ack.reason_code == 0
    assert client.conn.v5
    assert not client.conn.should_close
    (connected,) = events.query(kind="mqtt.connected")
    assert connected["protocol_level"] == 5
    bad = Client(broker)
    bad.parser.set_protocol_level(5)
    # Receive Maximum 0 is a protocol error (MQTT 5 section 3.1.2.11.3).
    bad.conn.receive_data(b"\x10\x11\x00\x04MQTT\x05\x02\x00\x0a\x03\x21\x00\x00\x00\x01p")
    (refusal,) = bad.recv()
    assert isinstance(refusal, Connack)
    assert refusal.reason_code == 0x82
    assert refusal.properties is not None
    assert refusal.properties.reason_string == "CONNECT: Receive Maximum 0"
    assert bad.conn.close_reason == "CONNECT: Receive Maximum 0"


def test_publish_subscribe_under_the_default_policy() -> None:
    broker, events, _ = make()
    dev = Client(broker)
    dev.connect()
    dev.send(Subscribe(1, [("devices/dev-1/#", 1), ("devices/+/x", 0), ("broadcast/#", 0)]))
    assert dev.recv() == [Suback(1, [1, 0x80, 0])]
    dev.send(Publish("devices/dev-1/t", b"hi", qos=1, packet_id=5))
    assert dev.recv() == [Publish("devices/dev-1/t", b"hi", qos=1, packet_id=1), Puback(5)]
    dev.send(Publish("devices/dev-2/t", b"no"))
    assert dev.recv() == []
    denied = events.query(kind="policy.denied")
    assert [e["action"] for e in denied] == ["subscribe", "publish"]
    dev.send(Unsubscribe(2, ["devices/dev-1/#"]), Pingreq())
    assert dev.recv() == [Unsuback(2), Pingresp()]


def test_inflight_limit_queues_and_puback_releases() -> None:
    broker, _, _ = make(Policy.open(), max_inflight=2)
    sub, pub = Client(broker, "sub"), Client(broker, "pub")
    sub.connect()
    pub.connect()
    sub.send(Subscribe(1, [("t", 1)]))
    sub.recv()
    for i in range(3):
        pub.send(Publish("t", b"%d" % i, qos=1, packet_id=i + 1))
    got = sub.recv()
    assert [p.payload for p in got if isinstance(p, Publish)] == [b"0", b"1"]
    sub.send(Puback(1))
    assert sub.recv() == [Publish("t", b"2", qos=1, packet_id=3)]
    # A PUBACK for an unknown id is a harmless duplicate.
    sub.send(Puback(77))
    assert not sub.conn.should_close


def test_persistent_session_queues_offline_and_redelivers_with_dup() -> None:
    broker, _, _ = make(Policy.open())
    sub = Client(broker, "sub")
    sub.connect(clean_session=False)
    sub.send(Subscribe(1, [("t", 2)]))
    sub.recv()
    pub = Client(broker, "pub")
    pub.connect()
    pub.send(Publish("t", b"unacked", qos=1, packet_id=1))
    assert sub.recv() == [Publish("t", b"unacked", qos=1, packet_id=1)]
    sub.conn.connection_lost("network down")
    pub.send(Publish("t", b"queued", qos=2, packet_id=2), Publish("t", b"lost", qos=0))
    pub.send(Pubrel(2))
    again = Client(broker, "sub")
    assert again.connect(clean_session=False) == Connack(True, 0)
    assert again.recv() == [
        Publish("t", b"unacked", qos=1, dup=True, packet_id=1),
        Publish("t", b"queued", qos=2, packet_id=2),
    ]
    again.send(Puback(1), Pubrec(2))
    assert again.recv() == [Pubrel(2)]
    # Lost again while waiting for PUBCOMP: the PUBREL is re-sent on reconnect.
    again.conn.connection_lost()
    third = Client(broker, "sub")
    third.connect(clean_session=False)
    assert third.recv() == [Pubrel(2)]
    third.send(Pubcomp(2))
    session = broker.session("fleet/sub", "sub")
    assert session is not None
    assert session.inflight == {}
    assert broker.core.metrics.messages_dropped == 1  # the QoS 0 while offline


def test_offline_persistent_sessions_expire() -> None:
    broker, _, clock = make(Policy.open(), session_expiry=60.0)
    sub = Client(broker, "sub")
    sub.connect(clean_session=False)
    sub.send(Subscribe(1, [("t", 1)]))
    sub.conn.connection_lost()
    pub = Client(broker, "pub")
    pub.connect()
    pub.send(Publish("t", b"q", qos=1, packet_id=1))
    assert broker.expire_sessions(clock.now + 59.0) == 0
    assert broker.expire_sessions(clock.now + 60.0) == 1
    assert broker.session("fleet/sub", "sub") is None
    assert broker.core.router.subscription_count == 0
    assert broker.core.metrics.messages_dropped == 1
    assert Client(broker, "sub").connect(clean_session=False) == Connack(False, 0)


def test_mqtt31_connack_never_sets_session_present() -> None:
    broker, _, _ = make(Policy.open())
    first = Client(broker, "old")
    first.connect(clean_session=False, protocol_name="MQIsdp", protocol_level=3)
    first.send(Disconnect())
    again = Client(broker, "old")
    assert again.connect(clean_session=False, protocol_name="MQIsdp", protocol_level=3) == (
        Connack(False, 0)
    )
    assert broker.session("fleet/old", "old") is not None


def test_clean_session_discards_state() -> None:
    broker, _, _ = make(Policy.open())
    sub = Client(broker, "sub")
    sub.connect(clean_session=False)
    sub.send(Subscribe(1, [("t", 1)]))
    sub.send(Disconnect())
    fresh = Client(broker, "sub")
    assert fresh.connect(clean_session=True) == Connack(False, 0)
    assert broker.core.router.subscriptions("mqtt:fleet/sub:sub") == {}


def test_inbound_qos2_is_routed_once_on_pubrel() -> None:
    broker, _, _ = make(Policy.open())
    sub, pub = Client(broker, "sub"), Client(broker, "pub")
    sub.connect()
    pub.connect()
    sub.send(Subscribe(1, [("t", 0)]))
    sub.recv()
    pub.send(Publish("t", b"once", qos=2, packet_id=9))
    pub.send(Publish("t", b"once", qos=2, dup=True, packet_id=9))
    assert pub.recv() == [Pubrec(9), Pubrec(9)]
    assert sub.recv() == []
    pub.send(Pubrel(9), Pubrel(9))
    assert pub.recv() == [Pubcomp(9), Pubcomp(9)]
    assert sub.recv() == [Publish("t", b"once")]


def test_inbound_qos2_resend_rules() -> None:
    broker, _, _ = make(Policy.open())
    sub = Client(broker, "sub")
    sub.connect()
    sub.send(Subscribe(1, [("t", 0)]))
    sub.recv()
    pub = Client(broker, "pub")
    pub.connect(clean_session=False)
    # A different message under an unreleased id replaces the first.
    pub.send(
        Publish("t", b"first", qos=2, packet_id=4), Publish("t", b"second", qos=2, packet_id=4)
    )
    pub.send(Pubrel(4))
    assert sub.recv() == [Publish("t", b"second")]
    # One unchanged re-send per connection is fine; after a reconnect, one more.
    pub.send(
        Publish("t", b"x", qos=2, packet_id=5), Publish("t", b"x", qos=2, dup=True, packet_id=5)
    )
    pub.conn.connection_lost()
    again = Client(broker, "pub")
    again.connect(clean_session=False)
    again.send(Publish("t", b"x", qos=2, dup=True, packet_id=5))
    assert not again.conn.should_close
    again.send(Publish("t", b"x", qos=2, dup=True, packet_id=5))
    assert not again.conn.should_close
    again.send(Publish("t", b"x", qos=2, dup=True, packet_id=5))
    assert again.conn.close_reason == "QoS 2 message 5 re-sent 2 times before PUBREL"


def test_wrong_acknowledgement_is_a_protocol_violation() -> None:
    broker, _, _ = make(Policy.open())
    sub, pub = Client(broker, "sub"), Client(broker, "pub")
    sub.connect()
    pub.connect()
    sub.send(Subscribe(1, [("t", 2)]))
    sub.recv()
    pub.send(Publish("t", b"x", qos=2, packet_id=1), Pubrel(1))
    assert sub.recv() == [Publish("t", b"x", qos=2, packet_id=1)]
    sub.send(Puback(1))
    assert sub.conn.should_close
    assert sub.conn.close_reason == "PUBACK for QoS 2 message 1"


def test_will_on_abnormal_close_not_on_disconnect() -> None:
    broker, events, _ = make(Policy.open())
    watcher = Client(broker, "watcher")
    watcher.connect()
    watcher.send(Subscribe(1, [("wills/#", 0)]))
    watcher.recv()
    polite = Client(broker, "polite")
    polite.connect(will=Will("wills/polite", b"gone"))
    polite.send(Disconnect())
    assert watcher.recv() == []
    rude = Client(broker, "rude")
    rude.connect(will=Will("wills/rude", b"gone", 1, True))
    rude.conn.connection_lost("reset by peer")
    assert watcher.recv() == [Publish("wills/rude", b"gone")]
    retained = broker.core.retained("wills/rude")
    assert retained is not None
    assert retained.payload == b"gone"
    reasons = [e["reason"] for e in events.query(kind="mqtt.disconnected")]
    assert reasons == ["client sent DISCONNECT", "reset by peer"]


def test_will_in_dollar_namespace_or_denied_by_policy_is_refused() -> None:
    broker, _, _ = make(Policy.open())
    client = Client(broker, "x")
    client.send(Connect(client_id="x", will=Will("$SYS/w", b"")))
    assert client.conn.should_close
    assert "reserved for the edge" in client.conn.close_reason
    strict, _, _ = make()
    dev = Client(strict)
    assert dev.connect(will=Will("elsewhere", b"")).return_code == 5


def test_takeover_closes_the_old_connection() -> None:
    broker, _, _ = make(Policy.open())
    first = Client(broker, "dup")
    first.connect(will=Will("w", b"old"))
    second = Client(broker, "dup")
    assert second.connect() == Connack(False, 0)
    assert first.conn.should_close
    assert "taken over" in first.conn.close_reason
    assert first.wakeups >= 1
    session = broker.session("fleet/dup", "dup")
    assert session is not None
    assert session.connection is second.conn


def test_equal_client_ids_of_different_devices_do_not_share_sessions() -> None:
    broker, _, _ = make()
    first = Client(broker, "dev-1", namespace="set-a")
    other = Client(broker, "dev-1", namespace="set-b")
    first.connect(clean_session=False)
    first.send(Subscribe(1, [("devices/dev-1/#", 1)]))
    first.recv()
    assert other.connect(clean_session=False) == Connack(False, 0)
    assert not first.conn.should_close
    other.send(Publish("devices/dev-1/x", b"b"))
    assert first.recv() == [Publish("devices/dev-1/x", b"b")]
    assert other.recv() == []


def test_broker_close_ends_every_connection_without_wills() -> None:
    broker, events, _ = make(Policy.open())
    watcher, other = Client(broker, "watcher"), Client(broker, "other")
    watcher.connect()
    watcher.send(Subscribe(1, [("#", 0)]))
    other.connect(will=Will("w", b"will"))
    assert broker.close() == 2
    assert watcher.conn.should_close
    assert other.conn.should_close
    assert other.wakeups >= 1
    assert broker.core.metrics.messages_in == 0  # the will was not published
    assert {e["reason"] for e in events.query(kind="mqtt.disconnected")} == {
        "the edge is shutting down"
    }
    assert broker.connections == set()


def test_keepalive_and_connect_timeouts() -> None:
    broker, events, clock = make(Policy.open(), connect_timeout=5.0)
    silent = Client(broker, "silent")
    assert silent.conn.tick(clock.now) == clock.now + 5.0
    clock.now += 5.0
    assert silent.conn.tick(clock.now) is None
    assert silent.conn.close_reason == "no CONNECT within the connect timeout"

    client = Client(broker, "k")
    client.connect(keepalive=10)
    assert client.conn.tick(clock.now) == clock.now + 15.0
    clock.now += 14.0
    client.send(Pingreq())
    assert client.conn.tick(clock.now) == clock.now + 15.0
    clock.now += 15.0
    client.conn.tick(clock.now)
    assert client.conn.should_close
    assert "keepalive timeout" in client.conn.close_reason
    assert events.query(kind="mqtt.disconnected")[-1]["client_id"] == "k"


def test_disconnected_events_of_311_say_who_ended_it_and_why() -> None:
    # MQTT 3.1.1 has no server DISCONNECT, but the event still names the decision with
    # the code an MQTT 5 client would get, and says that none was sent.
    broker, events, clock = make(Policy.open())
    polite, lost, idle = Client(broker, "polite"), Client(broker, "lost"), Client(broker, "idle")
    polite.connect()
    lost.connect()
    idle.connect(keepalive=10)
    taken = Client(broker, "taken")
    taken.connect()
    Client(broker, "taken").connect()
    polite.send(Disconnect())
    lost.conn.connection_lost("reset by peer")
    clock.now += 15.0
    idle.conn.tick(clock.now)
    got = {
        e["client_id"]: (e["reason_code"], e["by"], e["disconnect_sent"], e["protocol_level"])
        for e in events.query(kind="mqtt.disconnected")
    }
    assert got == {
        "taken": (0x8E, "edge", False, 4),  # session taken over
        "polite": (0, "client", False, 4),  # normal disconnection, by the client
        "lost": (None, "network", False, 4),  # no code: nobody decided
        "idle": (0x8D, "edge", False, 4),  # keep alive timeout
    }
    assert idle.recv() == []  # and nothing was written to the 3.1.1 client


def test_retry_interval_resends_with_dup_while_connected() -> None:
    broker, _, clock = make(Policy.open(), retry_interval=20.0)
    sub, pub = Client(broker, "sub"), Client(broker, "pub")
    sub.connect(keepalive=0)
    pub.connect()
    sub.send(Subscribe(1, [("t", 1)]))
    sub.recv()
    pub.send(Publish("t", b"x", qos=1, packet_id=1))
    assert sub.recv() == [Publish("t", b"x", qos=1, packet_id=1)]
    assert sub.conn.tick(clock.now) == clock.now + 20.0
    clock.now += 20.0
    sub.conn.tick(clock.now)
    assert sub.recv() == [Publish("t", b"x", qos=1, dup=True, packet_id=1)]


def test_retained_follow_suback_with_retain_flag_and_dollar_topics_are_not_routed() -> None:
    broker, events, _ = make(Policy.open())
    pub = Client(broker, "pub")
    pub.connect()
    pub.send(Publish("r/a", b"kept", retain=True), Publish("$SYS/x", b"no", qos=1, packet_id=3))
    assert pub.recv() == [Puback(3)]
    assert events.query(kind="policy.denied")[0]["topic"] == "$SYS/x"
    sub = Client(broker, "sub")
    sub.connect()
    sub.send(Subscribe(1, [("r/#", 1), ("$SYS/#", 0)]))
    assert sub.recv() == [Suback(1, [1, 0]), Publish("r/a", b"kept", retain=True)]


def test_protocol_errors_close_with_a_reason() -> None:
    broker, _, _ = make(Policy.open(), max_packet_size=64)
    client = Client(broker, "c")
    client.send(Publish("t", b""))
    assert client.conn.close_reason == "first packet was Publish, not CONNECT"
    big = Client(broker, "big")
    big.connect()
    big.send(Publish("t", b"x" * 100))
    assert big.conn.close_reason == "packet of 105 bytes exceeds the maximum of 64 bytes"
    again = Client(broker, "again")
    again.connect()
    again.send(Connect(client_id="again"))
    assert "second CONNECT" in again.conn.close_reason


def test_slow_reader_sheds_qos0_beyond_the_write_buffer() -> None:
    broker, _, _ = make(Policy.open(), max_write_buffer=100)
    sub, pub = Client(broker, "sub"), Client(broker, "pub")
    sub.connect()
    pub.connect()
    sub.send(Subscribe(1, [("t", 0)]))
    sub.recv()
    for _ in range(10):
        pub.send(Publish("t", b"x" * 40))
    assert 100 < sub.conn.pending_bytes <= 150
    assert broker.core.metrics.messages_dropped == 7


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_inflight": 0}, "mqtt.max_inflight: must be at least 1"),
        ({"max_queued": -1}, "mqtt.max_queued: must not be negative"),
        ({"connect_timeout": 0}, "mqtt.connect_timeout: must be positive"),
        ({"retry_interval": 0.0}, "mqtt.retry_interval: must be positive"),
        ({"session_expiry": -1}, "mqtt.session_expiry: must be positive"),
        ({"max_inflight": "20"}, "mqtt.max_inflight: expected a number, got '20'"),
        ({"max_inflight": True}, "mqtt.max_inflight: expected a number, got True"),
        ({"allow_zero_length_client_id": 1}, "allow_zero_length_client_id: expected true or false"),
        ({"max_infligt": 3}, "mqtt: unknown key 'max_infligt'"),
    ],
)
def test_config_from_dict_names_the_bad_key(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(MqttConfigError, match=message):
        MqttConfig.from_dict(kwargs)


def test_config_from_dict() -> None:
    config = MqttConfig.from_dict({"max_inflight": 5, "connect_timeout": 3, "retry_interval": None})
    assert config == MqttConfig(max_inflight=5, connect_timeout=3, retry_interval=None)
    assert MqttConfig.from_dict({"retry_interval": 2.5}).retry_interval == 2.5


def test_random_packet_streams_never_escape_receive_data() -> None:
    # Seeded fuzzing of whole connections: valid packets in random order with random
    # corruption. The broker may close a connection; it must never raise.
    import random

    rng = random.Random(99)
    broker, _, clock = make(Policy.open(), max_inflight=3, max_queued=5)
    pool: list[Packet] = [
        Subscribe(1, [("a/#", 2), ("+/b", 1)]),
        Unsubscribe(2, ["a/#"]),
        Publish("a/b", b"0"),
        Publish("a/b", b"1", qos=1, packet_id=3),
        Publish("a/b", b"2", qos=2, packet_id=4, retain=True),
        Publish("a/b", b"", qos=1, packet_id=5, retain=True),
        Pubrel(4),
        Puback(1),
        Pubrec(2),
        Pubcomp(2),
        Pingreq(),
        Disconnect(),
        Connect(client_id="again"),
    ]
    closed = 0
    for round_no in range(300):
        client = Client(broker, f"c{round_no % 7}")
        client.connect(clean_session=rng.random() < 0.5, will=Will("a/w", b"w"))
        for _ in range(rng.randint(1, 30)):
            data = bytearray(encode(rng.choice(pool)))
            if rng.random() < 0.1:
                data[rng.randrange(len(data))] = rng.randrange(256)
            for start in range(0, len(data), rng.randint(1, 8)):
                client.conn.receive_data(bytes(data[start : start + 8]))
            client.conn.data_to_send()
        clock.now += rng.random() * 100
        client.conn.tick(clock.now)
        closed += client.conn.should_close
        if rng.random() < 0.7:
            client.conn.connection_lost("fuzz")
    assert closed > 0
    assert broker.core.metrics.messages_in > 100


def test_config_kinds_cover_every_field() -> None:
    # from_dict checks TOML types against a written-out table: a new field must be in it.
    from dataclasses import fields

    from edge.mqtt.broker import _CONFIG_KINDS

    assert set(_CONFIG_KINDS) == {f.name for f in fields(MqttConfig)}
