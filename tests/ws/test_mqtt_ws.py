"""/mqtt: MQTT over WebSocket with paho-mqtt, and the adapter fed frames directly."""

from __future__ import annotations

import asyncio
from types import ModuleType

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, ConnectionClosedError, InvalidStatus

from edge.core.router import Message
from edge.mqtt.codec import Connect, Publish, encode

pytestmark = pytest.mark.timeout(30)


async def test_paho_over_websocket_publish_and_subscribe(harness: ModuleType) -> None:
    async with harness.EdgeHarness(mqtt=True) as edge:
        client = harness.PahoClient(edge.port, "dev1", transport="websockets")
        try:
            assert await client.connect() == 0
            assert await client.subscribe("ws/+", 1) == [1]
            await client.publish("ws/a", b"over websocket", qos=1)
            topic, payload, qos, _ = await asyncio.wait_for(client.messages.get(), 10)
            assert (topic, payload, qos) == ("ws/a", b"over websocket", 1)
            # A message published elsewhere (the core) reaches the WebSocket session too.
            edge.core.publish(Message("ws/b", b"from core", 0), None)
            topic, payload, _, _ = await asyncio.wait_for(client.messages.get(), 10)
            assert (topic, payload) == ("ws/b", b"from core")
            connected = edge.events.query(kind="ws.connected")
            assert connected[0]["subprotocol"] == "mqtt"
        finally:
            await client.close()
        closed = await edge.events.wait_for(lambda e: e["kind"] == "mqtt.disconnected", timeout=10)
        assert closed["graceful"] is True


async def test_packets_spanning_frames_and_frames_holding_packets(harness: ModuleType) -> None:
    connect_packet = encode(Connect(client_id="raw1", keepalive=0, clean_session=True))
    publish_packet = encode(Publish(topic="raw/t", payload=b"x", qos=0))
    async with (
        harness.EdgeHarness(mqtt=True) as edge,
        connect(f"{edge.ws_url}/mqtt", subprotocols=["mqtt"]) as ws,  # type: ignore[list-item]
    ):
        # CONNECT split across two binary messages.
        await ws.send(connect_packet[:3])
        await ws.send(connect_packet[3:])
        connack = await asyncio.wait_for(ws.recv(), 5)
        assert connack == b"\x20\x02\x00\x00"
        received: asyncio.Queue[Message] = asyncio.Queue()

        class Sink:
            subscriber_id = "test:sink"

            def deliver(self, message: Message, qos: int, retained: bool) -> None:
                received.put_nowait(message)

        edge.core.subscribe(Sink(), "raw/#", 0, None)
        # Two PUBLISH packets in one binary message.
        await ws.send(publish_packet + publish_packet)
        for _ in range(2):
            message = await asyncio.wait_for(received.get(), 5)
            assert message.topic == "raw/t"
            assert message.protocol == "mqtt"


async def test_text_frame_on_mqtt_is_1003(harness: ModuleType) -> None:
    async with (
        harness.EdgeHarness(mqtt=True) as edge,
        connect(f"{edge.ws_url}/mqtt", subprotocols=["mqtt"]) as ws,  # type: ignore[list-item]
    ):
        await ws.send("CONNECT")
        with pytest.raises(ConnectionClosedError) as info:
            await asyncio.wait_for(ws.recv(), 5)
        assert info.value.rcvd is not None
        assert info.value.rcvd.code == 1003


async def test_mqtt_without_the_subprotocol_is_refused(harness: ModuleType) -> None:
    async with harness.EdgeHarness(mqtt=True) as edge:
        with pytest.raises(InvalidStatus) as info:
            async with connect(f"{edge.ws_url}/mqtt"):
                pass
        assert info.value.response.status_code == 400
        refused = await edge.events.wait_for(lambda e: e["kind"] == "ws.refused", timeout=5)
        assert "subprotocol" in refused["reason"]


async def test_malformed_mqtt_closes_the_websocket_with_the_reason(harness: ModuleType) -> None:
    async with (
        harness.EdgeHarness(mqtt=True) as edge,
        connect(f"{edge.ws_url}/mqtt", subprotocols=["mqtt"]) as ws,  # type: ignore[list-item]
    ):
        await ws.send(b"\x30\x00")  # a PUBLISH without its topic
        with pytest.raises(ConnectionClosed) as info:
            await asyncio.wait_for(ws.recv(), 5)
        assert info.value.rcvd is not None
        assert info.value.rcvd.code == 1002  # protocol error, with the parser's reason
        assert "truncated" in info.value.rcvd.reason
        closed = await edge.events.wait_for(lambda e: e["kind"] == "ws.closed", timeout=5)
        assert closed["closed_by"] == "edge"
        assert closed["code"] == 1002
        assert "truncated" in closed["reason"]


async def test_a_clean_mqtt_disconnect_closes_the_websocket_with_1000(
    harness: ModuleType,
) -> None:
    async with (
        harness.EdgeHarness(mqtt=True) as edge,
        connect(f"{edge.ws_url}/mqtt", subprotocols=["mqtt"]) as ws,  # type: ignore[list-item]
    ):
        await ws.send(encode(Connect(client_id="ws-clean", keepalive=30)))
        assert (await asyncio.wait_for(ws.recv(), 5))[:1] == b"\x20"  # CONNACK
        await ws.send(b"\xe0\x00")  # DISCONNECT
        with pytest.raises(ConnectionClosed) as info:
            await asyncio.wait_for(ws.recv(), 5)
        assert info.value.rcvd is not None
        assert info.value.rcvd.code == 1000
        closed = await edge.events.wait_for(lambda e: e["kind"] == "ws.closed", timeout=5)
        assert closed["code"] == 1000


async def test_mqtt5_over_websocket_gets_reason_codes(harness: ModuleType) -> None:
    # The same broker connection, so MQTT 5 is chosen by the CONNECT here too.
    from edge.mqtt.codec import Connack, Parser, Puback, Suback, Subscribe
    from edge.mqtt.properties import Properties

    parser = Parser(server_side=False, protocol_level=5)
    async with (
        harness.EdgeHarness(mqtt=True) as edge,
        connect(f"{edge.ws_url}/mqtt", subprotocols=["mqtt"]) as ws,  # type: ignore[list-item]
    ):
        await ws.send(encode(Connect(client_id="ws5", protocol_level=5), 5))
        (connack,) = parser.feed(await asyncio.wait_for(ws.recv(), 5))  # type: ignore[arg-type]
        assert isinstance(connack, Connack)
        assert connack.reason_code == 0
        assert connack.properties is not None
        assert connack.properties.topic_alias_maximum == 10
        await ws.send(encode(Subscribe(1, [("ws5/#", 1)]), 5))
        (suback,) = parser.feed(await asyncio.wait_for(ws.recv(), 5))  # type: ignore[arg-type]
        assert suback == Suback(1, [1])
        props = Properties(user_properties=[("k", "v")])
        await ws.send(encode(Publish("ws5/a", b"x", qos=1, packet_id=2, properties=props), 5))
        got = parser.feed(await asyncio.wait_for(ws.recv(), 5))  # type: ignore[arg-type]
        while len(got) < 2:
            got += parser.feed(await asyncio.wait_for(ws.recv(), 5))  # type: ignore[arg-type]
        delivered, ack = got
        assert isinstance(delivered, Publish)
        assert delivered.properties is not None
        assert delivered.properties.user_properties == [("k", "v")]
        assert ack == Puback(2)
        assert edge.events.query(kind="mqtt.connected")[0]["protocol_level"] == 5
