"""The sans-I/O broker speaking MQTT 5: reason codes and strings, flow control, expiry,
aliases, subscription options, shared subscriptions and profiles, fed bytes."""

from __future__ import annotations

from edge.core.events import EventLog
from edge.core.hub import EdgeCore
from edge.core.policy import Policy
from edge.core.session import DeviceIdentity, SessionInfo
from edge.mqtt.broker import MqttBroker, MqttConfig
from edge.mqtt.codec import (
    Auth,
    Connack,
    Connect,
    Disconnect,
    Packet,
    Parser,
    Pingreq,
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
from edge.mqtt.profiles import PROFILES, apply_profile, mosquitto_code
from edge.mqtt.properties import Properties

# Subscription option bits (MQTT 5 section 3.8.3.1).
NO_LOCAL, RAP = 0x04, 0x08


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Client:
    """A test client speaking bytes to one MqttConnection at ``level``."""

    def __init__(
        self, broker: MqttBroker, name: str = "dev-1", level: int = 5, namespace: str = "fleet"
    ) -> None:
        self.info = SessionInfo(
            identity=DeviceIdentity(namespace=namespace, name=name), peer=f"{name}:1"
        )
        self.level = level
        self.conn = broker.connection(self.info)
        self.parser = Parser(server_side=False, protocol_level=level)
        self.backlog: list[Packet] = []

    def send(self, *packets: Packet) -> None:
        self.conn.receive_data(b"".join(encode(p, self.level) for p in packets))

    def recv(self) -> list[Packet]:
        got = self.backlog + self.parser.feed(self.conn.data_to_send())
        self.backlog = []
        return got

    def connect(
        self, client_id: str | None = None, props: Properties | None = None, **kwargs: object
    ) -> Connack:
        cid = self.info.identity.name if client_id is None else client_id
        self.send(
            Connect(client_id=cid, protocol_level=self.level, properties=props, **kwargs)  # type: ignore[arg-type]
        )
        (ack, *self.backlog) = self.recv()
        assert isinstance(ack, Connack)
        return ack


def make(
    policy: Policy | None = None, profile: str = "", **config: object
) -> tuple[MqttBroker, EventLog, Clock]:
    events = EventLog(log_events=False)
    clock = Clock()
    core = EdgeCore(events, policy or Policy.default())
    cfg = MqttConfig(**config)  # type: ignore[arg-type]
    if profile:
        cfg = apply_profile(cfg, profile)
    return MqttBroker(core, cfg, clock=clock), events, clock


def reason(packet: Packet) -> str | None:
    props = getattr(packet, "properties", None)
    return None if props is None else props.reason_string


# --- CONNECT / CONNACK ------------------------------------------------------------------


def test_connack_states_the_capabilities_and_assigns_a_client_id() -> None:
    broker, events, _ = make(server_keep_alive=30)
    client = Client(broker)
    ack = client.connect("", keepalive=600)
    assert ack.reason_code == 0
    props = ack.properties
    assert props is not None
    assert props.receive_maximum == 100
    assert props.topic_alias_maximum == 10
    assert props.maximum_packet_size == 1 << 20
    assert props.maximum_qos is None  # 2 is never sent (section 3.2.2.3.4)
    assert props.retain_available == 1
    assert props.wildcard_subscription_available == 1
    assert props.subscription_identifier_available == 1
    assert props.shared_subscription_available == 1
    assert props.assigned_client_identifier == "dev-1"
    assert props.server_keep_alive == 30
    assert client.conn.keepalive == 30
    (event,) = events.query(kind="mqtt.connected")
    assert event["protocol_level"] == 5


def test_client_id_rule_refusal_says_why_in_connack_and_event() -> None:
    broker, events, _ = make()
    client = Client(broker, "dev-00001")
    ack = client.connect("someone-else")
    assert ack.reason_code == 0x87
    assert "must equal the identity 'dev-00001'" in (reason(ack) or "")
    assert client.conn.should_close
    (refused,) = events.query(kind="mqtt.refused")
    assert refused["return_code"] == 0x87
    assert refused["reason"] == reason(ack)


def test_invalid_client_id_is_0x85_and_auth_method_0x8c() -> None:
    broker, _, _ = make()
    bad = Client(broker)
    bad.conn.receive_data(b"\x10\x12\x00\x04MQTT\x05\x02\x00\x0a\x00\x00\x05top\x00\x00")
    (ack,) = bad.recv()
    assert isinstance(ack, Connack)
    assert ack.reason_code == 0x85
    auth = Client(broker)
    ack = auth.connect(props=Properties(authentication_method="SCRAM-SHA-1"))
    assert ack.reason_code == 0x8C
    assert "authenticate by certificate" in (reason(ack) or "")
    # An AUTH packet after CONNECT: DISCONNECT 0x8C.
    late = Client(broker)
    late.connect()
    late.send(Auth(0x18, Properties(authentication_method="X")))
    (disc,) = late.recv()
    assert isinstance(disc, Disconnect)
    assert disc.reason_code == 0x8C
    assert late.conn.should_close


def test_a_3_1_1_client_still_gets_3_1_1_codes() -> None:
    broker, _, _ = make()
    client = Client(broker, "dev-2", level=4)
    assert client.connect("other") == Connack(False, 5)


# --- PUBLISH, acknowledgements ------------------------------------------------------------


def test_policy_denied_publish_gets_0x87_with_the_reason_unless_problem_info_is_off() -> None:
    broker, events, _ = make()
    dev = Client(broker)
    dev.connect()
    dev.send(Publish("devices/dev-2/t", b"x", qos=1, packet_id=7))
    (ack,) = dev.recv()
    assert isinstance(ack, Puback)
    assert ack.reason_code == 0x87
    (denied,) = events.query(kind="policy.denied")
    assert reason(ack) == denied["reason"]
    dev.send(Publish("devices/dev-2/t", b"x", qos=2, packet_id=8))
    (rec,) = dev.recv()
    assert isinstance(rec, Pubrec)
    assert rec.reason_code == 0x87
    assert reason(rec)
    # Allowed, nobody subscribed: 0x10 No matching subscribers.
    dev.send(Publish("devices/dev-1/t", b"x", qos=1, packet_id=9))
    assert dev.recv() == [Puback(9, 0x10)]

    quiet = Client(broker, "dev-3")
    quiet.connect(props=Properties(request_problem_information=0))
    quiet.send(Publish("devices/dev-2/t", b"x", qos=1, packet_id=1))
    (ack,) = quiet.recv()
    assert isinstance(ack, Puback)
    assert ack.reason_code == 0x87
    assert reason(ack) is None


def test_suback_0x87_per_denied_filter_and_unsuback_codes() -> None:
    broker, events, _ = make()
    dev = Client(broker)
    dev.connect()
    dev.send(Subscribe(1, [("devices/dev-1/#", 1), ("devices/+/x", 0)]))
    (ack,) = dev.recv()
    assert isinstance(ack, Suback)
    assert ack.return_codes == [1, 0x87]
    (denied,) = events.query(kind="policy.denied")
    assert reason(ack) == f"devices/+/x: {denied['reason']}"  # the event's own words
    dev.send(Unsubscribe(2, ["devices/dev-1/#", "never/subscribed"]))
    (unack,) = dev.recv()
    assert isinstance(unack, Unsuback)
    assert unack.reason_codes == [0, 0x11]


def test_invalid_topic_and_payload_format() -> None:
    broker, _, _ = make(policy=Policy.open())
    dev = Client(broker)
    dev.connect()
    dev.send(
        Publish(
            "a", b"\xff\xfe", qos=1, packet_id=1, properties=Properties(payload_format_indicator=1)
        )
    )
    (ack,) = dev.recv()
    assert isinstance(ack, Puback)
    assert ack.reason_code == 0x99
    dev.conn.receive_data(b"\x30\x08\x00\x03a/+\x00hi")  # a wildcard in a topic name
    (disc,) = dev.recv()
    assert isinstance(disc, Disconnect)
    assert disc.reason_code == 0x82


# --- server-sent DISCONNECT -------------------------------------------------------------


def test_topic_aliases_client_to_edge_and_0x94_beyond_the_maximum() -> None:
    broker, _, _ = make(policy=Policy.open(), topic_alias_maximum=2)
    sub = Client(broker, "sub")
    sub.connect()
    sub.send(Subscribe(1, [("t/#", 0)]))
    sub.recv()
    pub = Client(broker, "pub")
    pub.connect()
    pub.send(Publish("t/long/topic", b"1", properties=Properties(topic_alias=1)))
    pub.send(Publish("", b"2", properties=Properties(topic_alias=1)))
    got = sub.recv()
    assert [(p.topic, p.payload) for p in got if isinstance(p, Publish)] == [
        ("t/long/topic", b"1"),
        ("t/long/topic", b"2"),
    ]
    pub.send(Publish("t/x", b"3", properties=Properties(topic_alias=3)))
    (disc,) = pub.recv()
    assert isinstance(disc, Disconnect)
    assert disc.reason_code == 0x94
    assert "Topic Alias Maximum 2" in (reason(disc) or "")


def test_receive_maximum_exceeded_is_0x93() -> None:
    broker, events, _ = make(policy=Policy.open(), receive_maximum=2)
    dev = Client(broker)
    dev.connect()
    dev.send(*(Publish("a", b"x", qos=2, packet_id=i) for i in (1, 2)))
    assert dev.recv() == [Pubrec(1), Pubrec(2)]
    dev.send(Publish("a", b"x", qos=2, packet_id=3))
    (disc,) = dev.recv()
    assert isinstance(disc, Disconnect)
    assert disc.reason_code == 0x93
    (closed,) = events.query(kind="mqtt.disconnected")
    assert closed["reason_code"] == 0x93


def test_takeover_keepalive_and_shutdown_disconnects() -> None:
    broker, events, clock = make()
    first = Client(broker)
    first.connect()
    second = Client(broker)
    second.connect(keepalive=10)
    (disc,) = first.recv()
    assert isinstance(disc, Disconnect)
    assert disc.reason_code == 0x8E
    clock.now += 16
    second.conn.tick(clock.now)
    (disc,) = second.recv()
    assert isinstance(disc, Disconnect)
    assert disc.reason_code == 0x8D
    third = Client(broker, "dev-3")
    third.connect()
    assert broker.close() == 1
    (disc,) = third.recv()
    assert isinstance(disc, Disconnect)
    assert disc.reason_code == 0x8B
    codes = [e["reason_code"] for e in events.query(kind="mqtt.disconnected")]
    assert codes == [0x8E, 0x8D, 0x8B]


# --- outbound flow control and packet size -----------------------------------------------


def test_receive_maximum_and_maximum_packet_size_of_the_client() -> None:
    broker, _, _ = make(policy=Policy.open())
    sub = Client(broker, "sub")
    sub.connect(props=Properties(receive_maximum=1, maximum_packet_size=64))
    sub.send(Subscribe(1, [("t", 1)]))
    sub.recv()
    pub = Client(broker, "pub")
    pub.connect()
    pub.send(Publish("t", b"a", qos=1, packet_id=1), Publish("t", b"b", qos=1, packet_id=2))
    got = [p for p in sub.recv() if isinstance(p, Publish)]
    assert [p.payload for p in got] == [b"a"]  # one in flight
    sub.send(Puback(got[0].packet_id or 0))
    got = [p for p in sub.recv() if isinstance(p, Publish)]
    assert [p.payload for p in got] == [b"b"]
    sub.send(Puback(got[0].packet_id or 0))
    pub.send(Publish("t", b"x" * 100, qos=0))  # over the client's 64 bytes: dropped
    pub.send(Publish("t", b"small", qos=0))
    assert [p.payload for p in sub.recv() if isinstance(p, Publish)] == [b"small"]


# --- metadata, expiry ----------------------------------------------------------------------


def test_metadata_passes_through_in_order_and_a_3_1_1_subscriber_gets_the_payload() -> None:
    broker, _, _clock = make(policy=Policy.open())
    v5 = Client(broker, "v5")
    v5.connect()
    v5.send(Subscribe(1, [("m", 0)]))
    v5.recv()
    old = Client(broker, "old", level=4)
    old.connect()
    old.send(Subscribe(1, [("m", 0)]))
    old.recv()
    props = Properties(
        payload_format_indicator=1,
        message_expiry_interval=60,
        content_type="application/json",
        response_topic="reply/here",
        correlation_data=b"\x01\x02",
        user_properties=[("b", "2"), ("a", "1"), ("b", "3")],
    )
    pub = Client(broker, "pub")
    pub.connect()
    pub.send(Publish("m", b"{}", properties=props))
    (got,) = v5.recv()
    assert isinstance(got, Publish)
    assert got.properties is not None
    assert got.properties.user_properties == [("b", "2"), ("a", "1"), ("b", "3")]
    assert got.properties.content_type == "application/json"
    assert got.properties.response_topic == "reply/here"
    assert got.properties.correlation_data == b"\x01\x02"
    assert got.properties.payload_format_indicator == 1
    assert got.properties.message_expiry_interval == 60
    (plain,) = old.recv()
    assert plain == Publish("m", b"{}")


def test_expired_messages_are_never_delivered_retained_included() -> None:
    broker, _, clock = make(policy=Policy.open())
    pub = Client(broker, "pub")
    pub.connect()
    pub.send(Publish("r", b"soon", retain=True, properties=Properties(message_expiry_interval=10)))
    clock.now += 4
    early = Client(broker, "early")
    early.connect()
    early.send(Subscribe(1, [("r", 0)]))
    (_, got) = early.recv()
    assert isinstance(got, Publish)
    assert got.properties is not None
    assert got.properties.message_expiry_interval == 6
    clock.now += 7
    late = Client(broker, "late")
    late.connect()
    late.send(Subscribe(1, [("r", 0)]))
    assert [type(p) for p in late.recv()] == [Suback]


# --- sessions and wills ---------------------------------------------------------------------


def test_session_expiry_interval_ends_a_persistent_session_and_3_1_1_keeps_its_own() -> None:
    broker, _, clock = make(policy=Policy.open())
    dev = Client(broker)
    dev.connect(clean_session=False, props=Properties(session_expiry_interval=30))
    dev.send(Subscribe(1, [("a", 1)]))
    dev.recv()
    dev.send(Disconnect(0, None))
    old = Client(broker, "old", level=4)
    old.connect(clean_session=False)
    old.send(Disconnect(0, None))
    clock.now += 10
    again = Client(broker)
    assert again.connect(
        clean_session=False, props=Properties(session_expiry_interval=30)
    ).session_present
    again.send(Disconnect(0, None))
    clock.now += 31
    broker.expire_sessions(clock.now)
    assert broker.session("fleet/dev-1", "dev-1") is None
    assert broker.session("fleet/old", "old") is not None  # 3.1.1: until cleaned
    fresh = Client(broker)
    assert not fresh.connect(clean_session=False).session_present


def test_will_delay_interval_and_a_reconnect_cancelling_it() -> None:
    broker, _, clock = make(policy=Policy.open())
    watcher = Client(broker, "watcher")
    watcher.connect()
    watcher.send(Subscribe(1, [("wills/#", 0)]))
    watcher.recv()
    will = Will("wills/dev-1", b"gone", properties=Properties(will_delay_interval=5))
    dev = Client(broker)
    dev.connect(clean_session=False, will=will, props=Properties(session_expiry_interval=60))
    dev.conn.connection_lost()
    assert watcher.recv() == []
    clock.now += 6
    broker.expire_sessions(clock.now)
    assert [p.payload for p in watcher.recv() if isinstance(p, Publish)] == [b"gone"]
    # Back within the delay: no will.
    dev = Client(broker)
    dev.connect(clean_session=False, will=will, props=Properties(session_expiry_interval=60))
    dev.conn.connection_lost()
    clock.now += 1
    dev = Client(broker)
    dev.connect(clean_session=False, props=Properties(session_expiry_interval=60))
    clock.now += 10
    broker.expire_sessions(clock.now)
    assert watcher.recv() == []


# --- subscription options, identifiers, shared subscriptions --------------------------------


def test_subscription_identifiers_no_local_retain_as_published_and_handling() -> None:
    broker, _, _ = make(policy=Policy.open())
    dev = Client(broker)
    dev.connect()
    dev.send(Subscribe(1, [("s/#", 1 | RAP)], Properties(subscription_identifiers=[7])))
    dev.send(Subscribe(2, [("s/x", 0 | NO_LOCAL)], Properties(subscription_identifiers=[9])))
    dev.recv()
    other = Client(broker, "other")
    other.connect()
    other.send(Publish("s/x", b"r", retain=True))
    got = [p for p in dev.recv() if isinstance(p, Publish)]
    assert len(got) == 1
    assert got[0].retain
    assert got[0].properties is not None
    assert sorted(got[0].properties.subscription_identifiers) == [7, 9]
    dev.send(Publish("s/x", b"own"))
    got = [p for p in dev.recv() if isinstance(p, Publish)]
    assert [
        (p.payload, p.properties.subscription_identifiers if p.properties else []) for p in got
    ] == [(b"own", [7])]
    # Retain Handling 1: retained only for a new subscription; 2: never.
    dev.send(Subscribe(3, [("s/x", 0x10)]))
    assert [type(p) for p in dev.recv()] == [Suback]  # s/x existed
    dev.send(Subscribe(4, [("s/+", 0x20)]))
    assert [type(p) for p in dev.recv()] == [Suback]
    dev.send(Subscribe(5, [("s/+", 0)]))  # Retain Handling 0: sent again
    assert Publish in [type(p) for p in dev.recv()]


def test_shared_subscription_one_member_per_group_across_protocols() -> None:
    broker, _, _ = make(policy=Policy.open())
    a = Client(broker, "a")
    a.connect()
    a.send(Subscribe(1, [("$share/g/jobs/#", 1)]))
    b = Client(broker, "b", level=4)
    b.connect()
    b.send(Subscribe(1, [("$share/g/jobs/#", 1)]))
    a.recv()
    b.recv()
    pub = Client(broker, "pub")
    pub.connect()
    for n in range(4):
        pub.send(Publish("jobs/x", str(n).encode()))
    got_a = [p.payload for p in a.recv() if isinstance(p, Publish)]
    got_b = [p.payload for p in b.recv() if isinstance(p, Publish)]
    assert sorted(got_a + got_b) == [b"0", b"1", b"2", b"3"]
    assert len(got_a) == 2
    assert len(got_b) == 2


def test_shared_subscription_passes_over_an_offline_member_while_one_is_online() -> None:
    broker, _, _ = make(policy=Policy.open())
    members = []
    for name in ("m1", "m2", "m3"):
        member = Client(broker, name)
        member.connect(clean_session=False, props=Properties(session_expiry_interval=600))
        member.send(Subscribe(1, [("$share/g/jobs/#", 1)]))
        member.recv()
        members.append(member)
    members[1].send(Disconnect())  # m2's session stays, offline
    pub = Client(broker, "pub")
    pub.connect()
    for n in range(6):
        pub.send(Publish("jobs/x", str(n).encode(), qos=1, packet_id=n + 1))
    got = [
        [p.payload for p in m.recv() if isinstance(p, Publish)] for m in (members[0], members[2])
    ]
    # Every message reached an online member, turn by turn; none waits in m2's queue.
    assert sorted(got[0] + got[1]) == [str(n).encode() for n in range(6)]
    assert len(got[0]) == 3
    session = broker.session("fleet/m2", "m2")
    assert session is not None
    assert not session.online
    assert len(session.queue) == 0
    # With every member offline, the turn's member queues it (nothing is lost).
    members[0].send(Disconnect())
    members[2].send(Disconnect())
    pub.send(Publish("jobs/x", b"later", qos=1, packet_id=7))
    queued = [broker.session(f"fleet/{m}", m) for m in ("m1", "m2", "m3")]
    assert sum(len(s.queue) for s in queued if s is not None) == 1


def test_expired_retained_messages_are_purged_from_the_store() -> None:
    broker, _, clock = make(policy=Policy.open())
    pub = Client(broker, "pub")
    pub.connect()
    props = Properties(message_expiry_interval=10)
    pub.send(Publish("r/soon", b"x", retain=True, properties=props))
    pub.send(Publish("r/kept", b"y", retain=True))
    # Replaced before it expires: the newer message (no expiry) must stay.
    pub.send(Publish("r/replaced", b"old", retain=True, properties=props))
    pub.send(Publish("r/replaced", b"new", retain=True))
    router = broker.core.router
    assert router.retained_count == 3
    clock.now += 9
    pub.conn.tick(clock.now)
    assert router.retained_count == 3
    clock.now += 2  # past the deadline: the next maintenance pass drops it
    pub.send(Pingreq())
    pub.conn.tick(clock.now)
    assert router.retained_count == 2
    assert broker.core.retained("r/soon") is None
    kept = broker.core.retained("r/replaced")
    assert kept is not None
    assert kept.payload == b"new"


# --- profiles ----------------------------------------------------------------------------------


def test_aws_profile_limits_meet_the_production_codes_and_name_the_limit() -> None:
    broker, events, _ = make(policy=Policy.open(), profile="aws-iot-core")
    assert broker.config.maximum_qos == 1
    long_id = Client(broker, "x" * 130)
    ack = long_id.connect()
    assert ack.reason_code == 0x85
    assert "limit is 128" in (reason(ack) or "")
    dev = Client(broker)
    ack = dev.connect()
    assert ack.properties is not None
    assert ack.properties.maximum_qos == 1
    assert ack.properties.subscription_identifier_available == 0
    assert ack.properties.topic_alias_maximum == 8
    dev.send(Subscribe(1, [(f"t/{n}", 1) for n in range(9)]))
    (sub,) = dev.recv()
    assert isinstance(sub, Suback)
    assert sub.return_codes == [1] * 8 + [0x97]
    dev.send(Publish("a/b/c/d/e/f/g/h/i", b"x", qos=1, packet_id=1))
    (ack1,) = dev.recv()
    assert isinstance(ack1, Puback)
    assert ack1.reason_code == 0x90
    dev.send(Subscribe(2, [("t", 1)], Properties(subscription_identifiers=[1])))
    (disc,) = dev.recv()
    assert isinstance(disc, Disconnect)
    assert disc.reason_code == 0xA1
    limits = {e["limit"] for e in events.query(kind="mqtt.limit")}
    assert limits == {"max_client_id_length", "max_filters_per_subscribe", "max_topic_levels"}
    q2 = Client(broker, "q2")
    q2.connect()
    q2.send(Publish("a", b"x", qos=2, packet_id=1))
    (disc,) = q2.recv()
    assert isinstance(disc, Disconnect)
    assert disc.reason_code == 0x9B


def test_mosquitto_profile_codes_are_a_table_and_default_follows_the_spec() -> None:
    assert set(PROFILES) == {"aws-iot-core", "mosquitto", "emqx"}
    assert mosquitto_code("PUBLISH: Content Type (0x03) is not allowed here", 0x81) == 0x82
    assert mosquitto_code("SUBSCRIBE: Content Type (0x03) is not allowed here", 0x81) == 0x81
    broker, _, _ = make(policy=Policy.open())
    spec = Client(broker, "spec")
    spec.connect()
    spec.conn.receive_data(b"\xe0\x03\x00\x01\x03")  # DISCONNECT with a Content Type id
    (disc,) = spec.recv()
    assert isinstance(disc, Disconnect)
    assert disc.reason_code == 0x81
    mbroker, _, _ = make(policy=Policy.open(), profile="mosquitto")
    mosq = Client(mbroker, "mosq")
    ack = mosq.connect()
    assert ack.properties is not None
    assert ack.properties.retain_available is None
    mosq.conn.receive_data(b"\xe0\x04\x00\x02\x01\x01")
    (disc,) = mosq.recv()
    assert disc == Disconnect(0x82, None)


def test_pubrec_failure_ends_the_exchange_and_pubrel_for_nothing_is_0x92() -> None:
    broker, _, _ = make(policy=Policy.open())
    sub = Client(broker, "sub")
    sub.connect()
    sub.send(Subscribe(1, [("q", 2)]))
    sub.recv()
    pub = Client(broker, "pub")
    pub.connect()
    pub.send(Publish("q", b"1", qos=2, packet_id=1))
    pub.recv()
    pub.send(Pubrel(1))
    assert pub.recv() == [Pubcomp(1)]
    pub.send(Pubrel(5))
    assert pub.recv() == [Pubcomp(5, 0x92)]
    (msg,) = [p for p in sub.recv() if isinstance(p, Publish)]
    sub.send(Pubrec(msg.packet_id or 0, 0x80))
    assert sub.recv() == []
    assert not broker.session("fleet/sub", "sub").inflight  # type: ignore[union-attr]


def test_edge_to_client_topic_aliases_when_configured() -> None:
    broker, _, _ = make(policy=Policy.open(), topic_alias_out=True)
    sub = Client(broker, "sub")
    sub.connect(props=Properties(topic_alias_maximum=1))
    sub.send(Subscribe(1, [("a/#", 0)]))
    sub.recv()
    pub = Client(broker, "pub")
    pub.connect()
    for topic in ("a/long/name", "a/long/name", "a/other"):
        pub.send(Publish(topic, b"x"))
    raw = sub.conn.data_to_send()
    # Parsed raw: the second PUBLISH has an empty topic and alias 1; the third (no room
    # for a second alias) has its topic and no alias.
    first, second, third = Parser(server_side=False, protocol_level=5).feed(raw)
    assert isinstance(first, Publish)
    assert first.properties is not None
    assert first.properties.topic_alias == 1
    assert isinstance(second, Publish)
    assert second.topic == ""
    assert second.properties is not None
    assert second.properties.topic_alias == 1
    assert isinstance(third, Publish)
    assert third.topic == "a/other"
    assert third.properties is None


def test_administrative_disconnect_is_0x98_for_the_matching_devices() -> None:
    broker, events, _ = make()
    target, other, old = (
        Client(broker, "dev-1"),
        Client(broker, "dev-2"),
        Client(broker, "dev-3", 4),
    )
    for client in (target, other, old):
        client.connect()
    count = broker.disconnect_devices(
        lambda info: info.identity.name in ("dev-1", "dev-3"), "certificate revoked by the CRL"
    )
    assert count == 2
    (disc,) = target.recv()
    assert isinstance(disc, Disconnect)
    assert disc.reason_code == 0x98
    assert reason(disc) == "certificate revoked by the CRL"
    assert old.conn.should_close  # 3.1.1: closed without a DISCONNECT
    assert old.recv() == []
    assert not other.conn.should_close
    codes = {
        e["client_id"]: (e["reason_code"], e["disconnect_sent"])
        for e in events.query(kind="mqtt.disconnected")
    }
    # The 3.1.1 device was closed for the same reason; only no DISCONNECT could say so.
    assert codes == {"dev-1": (0x98, True), "dev-3": (0x98, False)}


def test_capability_switches_answer_with_their_codes() -> None:
    broker, _, _ = make(
        policy=Policy.open(),
        shared_subscription_available=False,
        wildcard_subscription_available=False,
        retain_available=False,
    )
    dev = Client(broker)
    ack = dev.connect(props=Properties(request_problem_information=0))
    assert ack.properties is not None
    assert ack.properties.shared_subscription_available == 0
    assert ack.properties.retain_available == 0
    dev.send(Subscribe(1, [("$share/g/a", 0), ("a/+", 0), ("a/b", 1)]))
    (suback,) = dev.recv()
    assert isinstance(suback, Suback)
    assert suback.return_codes == [0x9E, 0xA2, 1]
    assert suback.properties is None  # Request Problem Information 0: no Reason String
    dev.send(Publish("a/b", b"x", retain=True))
    (disc,) = dev.recv()
    assert isinstance(disc, Disconnect)
    assert disc.reason_code == 0x9A
    assert reason(disc)  # DISCONNECT keeps its Reason String whatever the client asked


def test_packet_over_the_maximum_size_is_disconnect_0x95() -> None:
    broker, events, _ = make(policy=Policy.open(), max_packet_size=64)
    dev = Client(broker)
    ack = dev.connect()
    assert ack.properties is not None
    assert ack.properties.maximum_packet_size == 64
    dev.send(Publish("a", b"x" * 100))
    (disc,) = dev.recv()
    assert isinstance(disc, Disconnect)
    assert disc.reason_code == 0x95
    (closed,) = events.query(kind="mqtt.disconnected")
    assert closed["reason_code"] == 0x95


def test_aws_profile_publish_rate_and_payload_limits_disconnect() -> None:
    broker, events, clock = make(policy=Policy.open(), profile="aws-iot-core")
    fast = Client(broker, "fast")
    fast.connect()
    fast.send(*(Publish("t", b"x") for _ in range(100)))
    assert not fast.conn.should_close  # 100 in one second is the limit, not over it
    clock.now += 1.5
    fast.send(*(Publish("t", b"x") for _ in range(101)))
    (disc,) = fast.recv()
    assert isinstance(disc, Disconnect)
    assert disc.reason_code == 0x96
    big = Client(broker, "big")
    big.connect()
    big.send(Publish("t", b"x" * (128 * 1024 + 1), qos=1, packet_id=1))
    (disc,) = big.recv()
    assert isinstance(disc, Disconnect)
    assert disc.reason_code == 0x95
    assert "131072" in (reason(disc) or "")
    limits = [e["limit"] for e in events.query(kind="mqtt.limit")]
    assert limits == ["max_publish_rate", "max_payload"]


def test_a_property_less_qos0_publish_is_forwarded_byte_for_byte() -> None:
    broker, _, _clock = make(policy=Policy.open())
    v5, old, ided = Client(broker, "v5"), Client(broker, "old", level=4), Client(broker, "ids")
    for client in (v5, old):
        client.connect()
        client.send(Subscribe(1, [("m", 0)]))
        client.recv()
    ided.connect()
    ided.send(Subscribe(1, [("m", 0)], properties=Properties(subscription_identifiers=[7])))
    ided.recv()
    pub = Client(broker, "pub")
    pub.connect()
    sent = encode(Publish("m", b"hello"), 5)
    pub.conn.receive_data(sent)
    # The MQTT 5 subscriber gets the publisher's bytes; the others their own encoding.
    assert v5.conn.data_to_send() == sent
    assert old.recv() == [Publish("m", b"hello")]
    (with_id,) = ided.recv()
    assert isinstance(with_id, Publish)
    assert with_id.properties is not None
    assert with_id.properties.subscription_identifiers == [7]


def test_disconnect_each_gives_each_connection_its_own_reason() -> None:
    broker, events, _ = make()
    first, second, kept = Client(broker, "dev-1"), Client(broker, "dev-2"), Client(broker, "dev-3")
    for client in (first, second, kept):
        client.connect()
    reasons = {"dev-1": "serial 1 revoked", "dev-2": "serial 2 revoked"}
    count = broker.disconnect_each(lambda info: reasons.get(info.identity.name))
    assert count == 2
    for client, text in ((first, "serial 1 revoked"), (second, "serial 2 revoked")):
        (disc,) = client.recv()
        assert isinstance(disc, Disconnect)
        assert (disc.reason_code, reason(disc)) == (0x98, text)
    assert not kept.conn.should_close
    got = {
        e["client_id"]: (e["reason_code"], e["reason"])
        for e in events.query(kind="mqtt.disconnected")
    }
    assert got == {"dev-1": (0x98, "serial 1 revoked"), "dev-2": (0x98, "serial 2 revoked")}
