"""The device's MQTT 5 client fed with bytes: no broker.

A fake channel records what the device writes (decoded with the edge's server-side
parser) and the test plays the server by feeding encoded packets. Each test pins one
rule of MQTT 5 the client must follow or report: reason codes on every
acknowledgement, the server's DISCONNECT, Topic Aliases, Receive Maximum, Maximum
Packet Size, and a 3.1.1 server's answer to an MQTT 5 CONNECT. The last test runs
a whole device (``run_device``) against a scripted server over TLS on loopback.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from testmodules import load_device_support

from devices.device import DeviceSpec, Receive, Subscribe, Target, run_device
from devices.protocols import ProtocolError
from devices.protocols.mqtt import (
    MqttOptions,
    MqttSession,
    ServerDisconnect,
    parse_mqtt_version,
    properties_dict,
)
from devices.tlsclient import TlsFailure
from devices.trace import render
from edge.mqtt import codec
from edge.mqtt.properties import Properties

pytestmark = pytest.mark.timeout(10)


class FakeChannel:
    """Records the device's bytes and decodes them as a server would."""

    def __init__(self) -> None:
        self.parser = codec.Parser(server_side=True)
        self.packets: list[codec.Packet] = []
        self.raw: list[bytes] = []
        self.closed = False
        self.reader: Callable[[bytes], None] = lambda _data: None

    def write(self, data: bytes) -> None:
        self.raw.append(data)
        self.packets.extend(self.parser.feed(data))

    def set_reader(
        self, reader: Callable[[bytes], None], on_error: Callable[[TlsFailure], None]
    ) -> None:
        self.reader = reader

    def close(self) -> None:
        self.closed = True

    def send(self, packet: codec.Packet, level: int = 5) -> None:
        """The server sends ``packet``."""
        self.reader(codec.encode(packet, level))

    def take(self) -> list[codec.Packet]:
        out, self.packets = self.packets, []
        return out


async def settle() -> None:
    """Let the tasks that are ready run (no timing involved)."""
    for _ in range(5):
        await asyncio.sleep(0)


async def opened(
    options: MqttOptions | None = None, connack: codec.Connack | None = None
) -> tuple[MqttSession, FakeChannel]:
    channel = FakeChannel()
    session = MqttSession(
        channel,
        client_id="dev-1",
        clock=lambda: 1.0,
        keepalive=0,
        options=options or MqttOptions(version=5),
    )
    task = asyncio.ensure_future(session.open())
    await settle()
    channel.send(connack or codec.Connack())
    ack = await task
    assert ack.ok, ack.summary
    channel.take()
    return session, channel


async def test_connect_carries_the_properties_and_connack_reports_its_own() -> None:
    channel = FakeChannel()
    options = MqttOptions(
        version=5,
        session_expiry=300,
        receive_maximum=10,
        maximum_packet_size=4096,
        topic_alias_maximum=5,
        request_problem_information=True,
        user_properties=(("fw", "1.2"), ("fw", "1.3")),
    )
    session = MqttSession(channel, client_id="dev-1", clock=lambda: 0.0, options=options)
    task = asyncio.ensure_future(session.open())
    await settle()
    (connect,) = channel.take()
    assert isinstance(connect, codec.Connect)
    assert connect.protocol_level == 5
    assert connect.properties is not None
    assert connect.properties.session_expiry_interval == 300
    assert connect.properties.receive_maximum == 10
    assert connect.properties.maximum_packet_size == 4096
    assert connect.properties.topic_alias_maximum == 5
    assert connect.properties.request_problem_information == 1
    assert connect.properties.user_properties == [("fw", "1.2"), ("fw", "1.3")]
    props = Properties(
        receive_maximum=20,
        topic_alias_maximum=10,
        assigned_client_identifier="auto-1",
        reason_string="welcome",
        user_properties=[("region", "eu")],
    )
    channel.send(codec.Connack(False, 0, props))
    ack = await task
    assert (ack.ok, ack.reason_code, ack.reason_string) == (True, 0, "welcome")
    assert ack.user_properties == [("region", "eu")]
    assert ack.summary == "CONNACK 0x00 Success: welcome"
    assert ack.detail["properties"]["receive_maximum"] == 20
    assert ack.detail["properties"]["user_properties"] == [["region", "eu"]]
    assert ack.detail["mqtt_version"] == "5"
    assert session.client_id == "auto-1"
    assert session.send_quota == 20
    session.close()


async def test_connack_refusal_gives_its_code_and_reason_string() -> None:
    channel = FakeChannel()
    session = MqttSession(channel, client_id="x", clock=lambda: 0.0, options=MqttOptions(version=5))
    task = asyncio.ensure_future(session.open())
    await settle()
    channel.send(codec.Connack(False, 0x87, Properties(reason_string="client id must equal CN")))
    ack = await task
    assert (ack.ok, ack.reason, ack.reason_code) == (False, "connack-0x87", 0x87)
    assert ack.summary == "CONNACK 0x87 Not authorized: client id must equal CN"
    assert ack.detail["reason_string"] == "client id must equal CN"


async def test_a_311_server_refusing_mqtt5_reads_as_0x84() -> None:
    channel = FakeChannel()
    session = MqttSession(channel, client_id="x", clock=lambda: 0.0, options=MqttOptions(version=5))
    task = asyncio.ensure_future(session.open())
    await settle()
    # What a 3.1.1-only edge answers, here one byte per TLS record at worst.
    for byte in b"\x20\x02\x00\x01":
        channel.reader(bytes((byte,)))
    ack = await task
    assert (ack.ok, ack.reason, ack.reason_code) == (False, "connack-0x84", 0x84)
    assert ack.detail["form"] == "MQTT 3.1.1"
    assert "does not speak MQTT 5" in ack.summary


async def test_puback_codes_success_and_refusal() -> None:
    session, channel = await opened()
    task = asyncio.ensure_future(session.publish("a/b", b"x", 1))
    await settle()
    (pub,) = channel.take()
    assert isinstance(pub, codec.Publish)
    assert pub.packet_id is not None
    channel.send(codec.Puback(pub.packet_id, 0x10))
    ack = await task
    assert (ack.ok, ack.reason_code, ack.summary) == (
        True,
        0x10,
        "PUBACK 0x10 No matching subscribers",
    )
    task = asyncio.ensure_future(session.publish("not/mine", b"x", 1))
    await settle()
    (pub,) = channel.take()
    assert isinstance(pub, codec.Publish)
    assert pub.packet_id is not None
    channel.send(
        codec.Puback(pub.packet_id, 0x87, Properties(reason_string="outside devices/dev-1/#"))
    )
    ack = await task
    assert (ack.ok, ack.reason, ack.reason_code) == (False, "puback-0x87", 0x87)
    assert ack.reason_string == "outside devices/dev-1/#"
    assert ack.summary == "PUBACK 0x87 Not authorized: outside devices/dev-1/#"


async def test_qos2_flow_and_a_refused_pubrec_ends_without_pubrel() -> None:
    session, channel = await opened()
    task = asyncio.ensure_future(session.publish("a/b", b"x", 2))
    await settle()
    (pub,) = channel.take()
    assert isinstance(pub, codec.Publish)
    assert pub.packet_id is not None
    channel.send(codec.Pubrec(pub.packet_id))
    await settle()
    (rel,) = channel.take()
    assert isinstance(rel, codec.Pubrel)
    channel.send(codec.Pubcomp(pub.packet_id))
    ack = await task
    assert (ack.ok, ack.reason_code) == (True, 0)
    assert ack.summary == "PUBREC 0x00 Success, PUBCOMP 0x00 Success"
    task = asyncio.ensure_future(session.publish("a/b", b"x", 2))
    await settle()
    (pub,) = channel.take()
    assert isinstance(pub, codec.Publish)
    assert pub.packet_id is not None
    channel.send(codec.Pubrec(pub.packet_id, 0x90))
    ack = await task
    assert (ack.ok, ack.reason) == (False, "pubrec-0x90")
    await settle()
    assert channel.take() == []  # no PUBREL after a refusal


async def test_suback_and_unsuback_codes() -> None:
    session, channel = await opened()
    task = asyncio.ensure_future(session.subscribe("secret/#", 1))
    await settle()
    (sub,) = channel.take()
    assert isinstance(sub, codec.Subscribe)
    channel.send(codec.Suback(sub.packet_id, [0x87], Properties(reason_string="denied by ACL")))
    ack = await task
    assert (ack.ok, ack.reason, ack.reason_code) == (False, "suback-0x87", 0x87)
    assert ack.detail["reason_codes"] == [0x87]
    assert ack.summary == "SUBACK 0x87 Not authorized: denied by ACL"
    task = asyncio.ensure_future(session.unsubscribe("never/subscribed"))
    await settle()
    (unsub,) = channel.take()
    assert isinstance(unsub, codec.Unsubscribe)
    channel.send(codec.Unsuback(unsub.packet_id, [0x11]))
    ack = await task
    assert (ack.ok, ack.reason_code) == (True, 0x11)
    assert ack.summary == "UNSUBACK 0x11 No subscription existed"


async def test_server_disconnect_fails_every_waiter_with_its_code() -> None:
    session, channel = await opened()
    waiting = asyncio.ensure_future(session.next_message())
    publishing = asyncio.ensure_future(session.publish("a/b", b"x", 1))
    await settle()
    channel.send(codec.Disconnect(0x8E, Properties(reason_string="another connection took over")))
    for fut in (waiting, publishing):
        with pytest.raises(ServerDisconnect) as info:
            await fut
        assert info.value.reason == "disconnect-0x8e"
        assert info.value.reason_code == 0x8E
        assert info.value.reason_string == "another connection took over"
    assert "Session taken over" in str(info.value)
    assert session.disconnect is not None
    assert channel.closed


async def test_received_topic_aliases_resolve_and_a_bad_one_disconnects_0x94() -> None:
    session, channel = await opened(MqttOptions(version=5, topic_alias_maximum=2))
    channel.send(codec.Publish("a/b", b"1", properties=Properties(topic_alias=1)))
    channel.send(codec.Publish("", b"2", properties=Properties(topic_alias=1, content_type="t")))
    first = await session.next_message()
    second = await session.next_message()
    assert (first.topic, second.topic) == ("a/b", "a/b")
    assert second.properties is not None
    assert second.properties.content_type == "t"
    channel.send(codec.Publish("c", b"3", properties=Properties(topic_alias=3)))
    with pytest.raises(ProtocolError) as info:
        await session.next_message()
    assert info.value.reason == "mqtt-0x94"
    (disconnect,) = channel.take()
    assert isinstance(disconnect, codec.Disconnect)
    assert disconnect.reason_code == 0x94


async def test_an_alias_never_set_is_refused() -> None:
    session, channel = await opened(MqttOptions(version=5, topic_alias_maximum=2))
    channel.send(codec.Publish("", b"1", properties=Properties(topic_alias=2)))
    with pytest.raises(ProtocolError, match="never set"):
        await session.next_message()


async def test_publish_properties_are_sent_and_received_ones_exposed() -> None:
    session, channel = await opened()
    props = Properties(
        content_type="application/json",
        message_expiry_interval=60,
        response_topic="r/t",
        correlation_data=b"\x01\x02",
        user_properties=[("k", "v")],
    )
    await session.publish("a/b", b"{}", 0, properties=props)
    (pub,) = channel.take()
    assert isinstance(pub, codec.Publish)
    assert pub.properties == props
    channel.send(
        codec.Publish(
            "a/b", b"{}", 1, packet_id=7, properties=Properties(message_expiry_interval=59)
        )
    )
    message = await session.next_message()
    assert message.properties is not None
    assert message.properties.message_expiry_interval == 59
    (puback,) = channel.take()
    assert isinstance(puback, codec.Puback)
    assert properties_dict(props) == {
        "message_expiry_interval": 60,
        "content_type": "application/json",
        "response_topic": "r/t",
        "correlation_data": "0102",
        "user_properties": [["k", "v"]],
    }


async def test_the_servers_receive_maximum_bounds_publishes_in_flight() -> None:
    session, channel = await opened(connack=codec.Connack(False, 0, Properties(receive_maximum=2)))
    tasks = [asyncio.ensure_future(session.publish("a/b", b"x", 1)) for _ in range(4)]
    await settle()
    sent = channel.take()
    assert len(sent) == 2
    assert session.send_quota == 0
    first = sent[0]
    assert isinstance(first, codec.Publish)
    assert first.packet_id is not None
    channel.send(codec.Puback(first.packet_id))
    await settle()
    (third,) = channel.take()  # one acknowledged, one more may go
    assert isinstance(third, codec.Publish)
    for packet in (sent[1], third):
        assert isinstance(packet, codec.Publish)
        assert packet.packet_id is not None
        channel.send(codec.Puback(packet.packet_id))
    await settle()
    (fourth,) = channel.take()
    assert isinstance(fourth, codec.Publish)
    assert fourth.packet_id is not None
    channel.send(codec.Puback(fourth.packet_id))
    acks = await asyncio.gather(*tasks)
    assert all(a.ok for a in acks)
    assert session.send_quota == 2


async def test_a_packet_over_the_servers_maximum_is_not_sent() -> None:
    session, channel = await opened(
        connack=codec.Connack(False, 0, Properties(maximum_packet_size=64))
    )
    with pytest.raises(ProtocolError) as info:
        await session.publish("a/b", b"x" * 100, 1)
    assert info.value.reason == "packet-too-large"
    assert "Maximum Packet Size 64" in str(info.value)
    assert channel.take() == []
    assert session.send_quota is None
    await session.publish("a/b", b"small", 0)
    assert len(channel.take()) == 1


async def test_a_packet_over_the_devices_maximum_disconnects_0x95() -> None:
    session, channel = await opened(MqttOptions(version=5, maximum_packet_size=32))
    channel.send(codec.Publish("a/b", b"y" * 64))
    with pytest.raises(ProtocolError) as info:
        await session.next_message()
    assert info.value.reason == "mqtt-malformed"
    (disconnect,) = channel.take()
    assert isinstance(disconnect, codec.Disconnect)
    assert disconnect.reason_code == 0x95


async def test_sent_topic_aliases_stay_within_the_servers_maximum() -> None:
    session, channel = await opened(
        MqttOptions(version=5, topic_aliases=True),
        codec.Connack(False, 0, Properties(topic_alias_maximum=1)),
    )
    for topic in ("a/b", "a/b", "c/d"):
        await session.publish(topic, b"x", 0)
    first, second, third = channel.take()
    assert isinstance(first, codec.Publish)
    assert isinstance(second, codec.Publish)
    assert isinstance(third, codec.Publish)
    assert first.topic == "a/b"
    assert first.properties is not None
    assert first.properties.topic_alias == 1
    assert second.topic == ""
    assert second.properties is not None
    assert second.properties.topic_alias == 1
    assert (third.topic, third.properties) == ("c/d", None)  # aliases used up


async def test_mqtt311_sessions_are_unchanged() -> None:
    channel = FakeChannel()
    session = MqttSession(channel, client_id="dev-1", clock=lambda: 0.0, keepalive=30)
    task = asyncio.ensure_future(session.open())
    await settle()
    assert channel.raw == [codec.encode(codec.Connect("dev-1", True, 30))]
    channel.send(codec.Connack(), 4)
    ack = await task
    assert (ack.summary, ack.reason_code, ack.properties) == ("CONNACK 0 (accepted)", None, None)
    with pytest.raises(ProtocolError, match="need MQTT 5"):
        await session.publish("a", b"x", 0, properties=Properties(content_type="t"))
    session.close()


def test_options_and_versions() -> None:
    assert parse_mqtt_version("3.1.1") == 4
    assert parse_mqtt_version(5) == 5
    with pytest.raises(ValueError, match=r"expected 3\.1\.1 or 5"):
        parse_mqtt_version("3.1")
    with pytest.raises(ValueError, match="need MQTT 5"):
        MqttOptions(session_expiry=10)
    assert MqttOptions(version=5).connect_properties() is None


# --------------------------------------------------------------------------- over TLS
#
# A scripted MQTT 5 server over real TLS: what Mosquitto 2.0.11 never sends (a SUBACK
# 0x87 with a Reason String, Topic Aliases, a DISCONNECT with a reason code), so that
# run_device's whole trace is checked with them.


@pytest.fixture(scope="module")
def tls_pki(tmp_path_factory: pytest.TempPathFactory) -> Any:
    support = load_device_support()
    return support.make_pki(tmp_path_factory.mktemp("pki5"), datetime.now(UTC))


async def scripted_server(pki: Any) -> asyncio.Server:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(pki.server.cert), str(pki.server.key))

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        parser = codec.Parser(server_side=True)

        def send(packet: codec.Packet) -> None:
            writer.write(codec.encode(packet, 5))

        try:
            while data := await reader.read(4096):
                for packet in parser.feed(data):
                    if isinstance(packet, codec.Connect):
                        props = Properties(
                            reason_string="welcome",
                            assigned_client_identifier="given-1",
                            user_properties=[("site", "lab")],
                        )
                        send(codec.Connack(False, 0, props))
                    elif isinstance(packet, codec.Subscribe):
                        (topic_filter, _options) = packet.topics[0]
                        if topic_filter.startswith("denied"):
                            why = Properties(reason_string="policy: not under devices/dev-1/#")
                            send(codec.Suback(packet.packet_id, [0x87], why))
                            continue
                        send(codec.Suback(packet.packet_id, [1]))
                        send(codec.Publish("ok/a", b"1", properties=Properties(topic_alias=1)))
                        send(codec.Publish("", b"2", properties=Properties(topic_alias=1)))
                        bye = Properties(reason_string="certificate set deleted")
                        send(codec.Disconnect(0x98, bye))
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(serve, "127.0.0.1", 0, ssl=ctx)


async def test_run_device_traces_aliases_suback_refusal_and_disconnect(tls_pki: Any) -> None:
    server = await scripted_server(tls_pki)
    port = server.sockets[0].getsockname()[1]
    target = Target(
        url=f"mqtts://127.0.0.1:{port}",
        ca_pem=tls_pki.ca_pem.read_text(),
        mqtt=MqttOptions(version=5, topic_alias_maximum=4),
    )
    spec = DeviceSpec(
        id="dev-1", cert_path=str(tls_pki.device.cert), key_path=str(tls_pki.device.key)
    )
    async with server:
        ended = await run_device(
            spec, target, actions=[Subscribe("ok/#", 1), Receive(2), Receive(1)], timeout=5
        )
        denied = await run_device(spec, target, actions=[Subscribe("denied/#", 1)], timeout=5)
    assert (ended.outcome, ended.reason) == ("error", "disconnect-0x98")
    (connack,) = [s for s in ended.steps if s.name == "mqtt_connack"]
    assert connack.detail["summary"] == "CONNACK 0x00 Success: welcome"
    assert connack.detail["properties"]["assigned_client_identifier"] == "given-1"
    messages = [s for s in ended.steps if s.name == "message"]
    assert [(m.detail["topic"], m.detail["payload"]) for m in messages] == [
        ("ok/a", "1"),
        ("ok/a", "2"),
    ]
    (bye,) = [s for s in ended.steps if s.name == "mqtt_disconnect"]
    assert bye.ok is False
    assert bye.detail["reason_code"] == 0x98
    assert bye.detail["summary"] == "DISCONNECT 0x98 Administrative action: certificate set deleted"
    text = render(ended)
    assert "✗ MQTT DISCONNECT (server)     DISCONNECT 0x98 Administrative action" in text
    assert "properties: assigned client identifier=given-1, user property site=lab" in text
    assert "hint: the server ended the MQTT 5 session with DISCONNECT" in text
    assert (denied.outcome, denied.reason) == ("refused", "suback-0x87")
    assert denied.message == "SUBACK 0x87 Not authorized: policy: not under devices/dev-1/#"
