"""Clients nobody here wrote (paho-mqtt, amqtt) against MqttServerProtocol on plain loopback TCP."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from edge.core.events import EventLog
from edge.core.hub import EdgeCore
from edge.core.policy import Policy
from edge.core.session import DeviceIdentity, SessionInfo
from edge.mqtt.broker import MqttBroker, MqttConfig
from edge.mqtt.protocol import MqttServerProtocol

pytestmark = pytest.mark.interop


@pytest.fixture
async def port() -> AsyncIterator[int]:
    """An open-policy broker on 127.0.0.1:<free port>."""
    broker = MqttBroker(EdgeCore(EventLog(log_events=False), Policy.open()), MqttConfig())
    protocols: list[MqttServerProtocol] = []

    def factory() -> MqttServerProtocol:
        session = SessionInfo(identity=DeviceIdentity(namespace="interop", name="c"), peer="lo")
        protocols.append(MqttServerProtocol(broker, session))
        return protocols[-1]

    server = await asyncio.get_running_loop().create_server(factory, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    async with asyncio.timeout(5):
        await asyncio.gather(*(p.closed for p in protocols if p.closed is not None))


@pytest.mark.timeout(20)
async def test_paho_publish_subscribe_qos_0_1_2_and_retained(port: int) -> None:
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    loop = asyncio.get_running_loop()
    connected: asyncio.Future[Any] = loop.create_future()
    subscribed: asyncio.Future[Any] = loop.create_future()
    received: asyncio.Queue[tuple[str, bytes, int, bool]] = asyncio.Queue()

    # paho runs its network loop in its own thread: hand results to ours.
    def on_connect(client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        loop.call_soon_threadsafe(connected.set_result, reason)

    def on_subscribe(client: Any, userdata: Any, mid: int, reasons: Any, props: Any) -> None:
        loop.call_soon_threadsafe(subscribed.set_result, [int(r.value) for r in reasons])

    def on_message(client: Any, userdata: Any, msg: Any) -> None:
        item = (msg.topic, bytes(msg.payload), msg.qos, bool(msg.retain))
        loop.call_soon_threadsafe(received.put_nowait, item)

    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="paho-1", protocol=paho.MQTTv311)
    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    client.connect("127.0.0.1", port, keepalive=30)
    client.loop_start()
    try:
        async with asyncio.timeout(10):
            assert not (await connected).is_failure
            client.publish("paho/retained", b"kept", qos=1, retain=True)
            client.subscribe([("paho/#", 2)])
            assert await subscribed == [2]
            assert await received.get() == ("paho/retained", b"kept", 1, True)
            for qos in (0, 1, 2):
                client.publish("paho/t", b"q%d" % qos, qos=qos)
                assert await received.get() == ("paho/t", b"q%d" % qos, qos, False)
    finally:
        client.disconnect()
        await asyncio.to_thread(client.loop_stop)


@pytest.mark.timeout(20)
async def test_amqtt_client_round_trip(port: int) -> None:
    from amqtt.client import MQTTClient
    from amqtt.mqtt.constants import QOS_1, QOS_2

    client = MQTTClient(client_id="amqtt-1", config={"auto_reconnect": False})
    await client.connect(f"mqtt://127.0.0.1:{port}/")
    try:
        await client.subscribe([("amqtt/#", QOS_2)])
        await client.publish("amqtt/x", b"hello", qos=QOS_1)
        message = await client.deliver_message(timeout_duration=5)
        assert message is not None
        assert message.topic == "amqtt/x"
        assert bytes(message.data) == b"hello"
        assert message.qos == QOS_1
        await client.publish("amqtt/y", b"twice", qos=QOS_2)
        message = await client.deliver_message(timeout_duration=5)
        assert message is not None
        assert (message.topic, bytes(message.data), message.qos) == ("amqtt/y", b"twice", QOS_2)
    finally:
        await client.disconnect()
