"""MqttServerProtocol over real loopback TCP, and over a fake transport for flow control."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest

from edge.core.deadlines import Deadlines
from edge.core.events import EventLog
from edge.core.hub import EdgeCore
from edge.core.policy import Policy
from edge.core.router import Message
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
    Publish,
    Suback,
    Subscribe,
    Will,
    encode,
)
from edge.mqtt.protocol import MqttServerProtocol


@dataclass
class Edge:
    broker: MqttBroker
    events: EventLog
    port: int
    #: Device names for the next connections (default: dev-1, dev-2, ...).
    names: list[str]


@contextlib.asynccontextmanager
async def serving(
    broker: MqttBroker,
    session_for: Callable[[], SessionInfo],
    connect_deadlines: Deadlines | None = None,
) -> AsyncIterator[int]:
    """Serve ``broker`` on 127.0.0.1:<free port> and yield the port.

    Each connection gets its session from ``session_for``; on exit the server stops
    listening and every connection is waited for until it has closed.
    """
    protocols: list[MqttServerProtocol] = []

    def factory() -> MqttServerProtocol:
        protocols.append(
            MqttServerProtocol(broker, session_for(), connect_deadlines=connect_deadlines)
        )
        return protocols[-1]

    server = await asyncio.get_running_loop().create_server(factory, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()
        async with asyncio.timeout(5):
            await asyncio.gather(*(p.closed for p in protocols if p.closed is not None))


@pytest.fixture(params=["own-timer", "shared-deadlines"])
async def edge(request: pytest.FixtureRequest) -> AsyncIterator[Edge]:
    """A broker with the default policy on 127.0.0.1:<free port>; every device is 'fleet/<n>'.

    Twice: with a loop timer per connection for the connect timeout, and with the
    listener-wide deadlines the edge server uses.
    """
    events = EventLog(log_events=False)
    broker = MqttBroker(EdgeCore(events, Policy.default()), MqttConfig(connect_timeout=2.0))
    counter = iter(range(1, 1000))
    names: list[str] = []

    def session_for() -> SessionInfo:
        # Stands in for the TLS layer, which names the device from its certificate.
        name = names.pop(0) if names else f"dev-{next(counter)}"
        return SessionInfo(identity=DeviceIdentity(namespace="fleet", name=name), peer="127.0.0.1")

    shared = Deadlines(2.0) if request.param == "shared-deadlines" else None
    async with serving(broker, session_for, shared) as port:
        yield Edge(broker, events, port, names)


class Device:
    """A raw MQTT client over asyncio streams, using the edge's own codec."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.parser = Parser(server_side=False)
        self.backlog: list[Packet] = []

    @classmethod
    async def open(cls, port: int) -> Device:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def send(self, *packets: Packet) -> None:
        self.writer.write(b"".join(encode(p) for p in packets))
        await self.writer.drain()

    async def next(self) -> Packet:
        async with asyncio.timeout(5):
            while not self.backlog:
                data = await self.reader.read(65536)
                if not data:
                    raise EOFError("the edge closed the connection")
                self.backlog.extend(self.parser.feed(data))
        return self.backlog.pop(0)

    async def eof(self) -> bool:
        async with asyncio.timeout(5):
            return await self.reader.read(65536) == b""

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


@pytest.mark.timeout(15)
async def test_connect_publish_subscribe_over_loopback(edge: Edge) -> None:
    a = await Device.open(edge.port)
    await a.send(Connect(client_id="dev-1"))
    assert await a.next() == Connack(False, 0)
    await a.send(Subscribe(1, [("devices/dev-1/#", 1)]))
    assert await a.next() == Suback(1, [1])
    await a.send(Publish("devices/dev-1/x", b"hello", qos=1, packet_id=7))
    got = [await a.next(), await a.next()]
    assert got == [Publish("devices/dev-1/x", b"hello", qos=1, packet_id=1), Puback(7)]
    await a.send(Puback(1), Pingreq())
    assert await a.next() == Pingresp()
    await a.send(Disconnect())
    assert await a.eof()
    event = await edge.events.wait_for(lambda e: e["kind"] == "mqtt.disconnected", timeout=5)
    assert event["reason"] == "client sent DISCONNECT"
    await a.close()


@pytest.mark.timeout(15)
async def test_refusal_is_sent_before_close_and_reported(edge: Edge) -> None:
    dev = await Device.open(edge.port)
    await dev.send(Connect(client_id="not-my-name"))
    assert await dev.next() == Connack(False, 5)
    assert await dev.eof()
    event = await edge.events.wait_for(lambda e: e["kind"] == "mqtt.refused", timeout=5)
    assert "must equal the identity 'dev-1'" in event["reason"]
    await dev.close()


@pytest.mark.timeout(15)
async def test_cross_connection_delivery_and_will_on_abrupt_close(edge: Edge) -> None:
    edge.broker.core.policy = Policy.open()
    watcher = await Device.open(edge.port)
    await watcher.send(Connect(client_id="watcher"), Subscribe(1, [("#", 0)]))
    assert [await watcher.next(), await watcher.next()] == [Connack(False, 0), Suback(1, [0])]
    dying = await Device.open(edge.port)
    await dying.send(Connect(client_id="dying", will=Will("status/dying", b"offline")))
    assert await dying.next() == Connack(False, 0)
    await dying.send(Publish("status/dying", b"online"))
    assert await watcher.next() == Publish("status/dying", b"online")
    # Abort the TCP connection without DISCONNECT: the edge publishes the will.
    dying.writer.transport.abort()
    assert await watcher.next() == Publish("status/dying", b"offline")
    await watcher.close()
    await dying.close()


@pytest.mark.timeout(15)
async def test_takeover_closes_the_first_socket(edge: Edge) -> None:
    edge.broker.core.policy = Policy.open()
    edge.names.extend(["same-device", "same-device"])
    first = await Device.open(edge.port)
    await first.send(Connect(client_id="same"))
    assert await first.next() == Connack(False, 0)
    second = await Device.open(edge.port)
    await second.send(Connect(client_id="same"))
    assert await second.next() == Connack(False, 0)
    assert await first.eof()
    await first.close()
    await second.close()


@pytest.mark.timeout(15)
async def test_keepalive_timeout_closes_a_silent_client(edge: Edge) -> None:
    dev = await Device.open(edge.port)
    await dev.send(Connect(client_id="dev-1", keepalive=1))
    assert await dev.next() == Connack(False, 0)
    assert await dev.eof()  # after 1.5 s of silence
    event = await edge.events.wait_for(lambda e: e["kind"] == "mqtt.disconnected", timeout=5)
    assert "keepalive timeout" in event["reason"]
    await dev.close()


@pytest.mark.timeout(15)
async def test_connect_timeout(edge: Edge) -> None:
    dev = await Device.open(edge.port)
    assert await dev.eof()  # no CONNECT within 2 s
    await dev.close()


@pytest.mark.timeout(15)
async def test_connect_timeout_spares_a_device_that_connected(edge: Edge) -> None:
    connected = await Device.open(edge.port)
    await connected.send(Connect(client_id="dev-1"))
    assert await connected.next() == Connack(False, 0)
    silent = await Device.open(edge.port)
    assert await silent.eof()  # its connect timeout came after the first device's
    await connected.send(Pingreq())
    assert await connected.next() == Pingresp()
    await connected.close()
    await silent.close()


class RecordingTransport(asyncio.Transport):
    """A transport of our own, standing in for the TLS layer's."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.reading = True
        self.closed = False
        self.protocol: asyncio.Protocol | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            assert self.protocol is not None
            asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)

    def is_closing(self) -> bool:
        return self.closed


@pytest.mark.timeout(10)
async def test_flow_control_on_a_custom_transport() -> None:
    events = EventLog(log_events=False)
    broker = MqttBroker(EdgeCore(events, Policy.open()))
    session = SessionInfo(identity=DeviceIdentity(namespace="s", name="d"), peer="fake")
    protocol = MqttServerProtocol(broker, session)
    transport = RecordingTransport()
    transport.protocol = protocol
    protocol.connection_made(transport)
    protocol.data_received(encode(Connect(client_id="d")) + encode(Subscribe(1, [("t", 0)])))
    assert bytes(transport.written) == encode(Connack()) + encode(Suback(1, [0]))
    transport.written.clear()
    protocol.pause_writing()
    assert not transport.reading
    broker.core.publish(Message("t", b"x", 0, False, "edge", "internal", 0.0), None)
    # call_soon is FIFO: once this callback has run, the flush scheduled by the
    # delivery has run too, and it must have held the data back.
    flushed = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().call_soon(flushed.set_result, None)
    await flushed
    assert transport.written == b""
    assert protocol.connection is not None
    assert protocol.connection.pending_bytes == len(encode(Publish("t", b"x")))
    protocol.resume_writing()
    assert transport.reading
    assert bytes(transport.written) == encode(Publish("t", b"x"))
    protocol.data_received(encode(Disconnect()))
    assert transport.closed
    assert protocol.closed is not None
    async with asyncio.timeout(5):
        await protocol.closed


@pytest.mark.timeout(15)
def test_works_on_uvloop_transports() -> None:
    uvloop = pytest.importorskip("uvloop")

    async def scenario() -> None:
        broker = MqttBroker(EdgeCore(EventLog(log_events=False), Policy.open()))
        session = SessionInfo(identity=DeviceIdentity(namespace="s", name="d"), peer="uv")
        async with serving(broker, lambda: session) as port:
            dev = await Device.open(port)
            await dev.send(Connect(client_id="uv"), Subscribe(1, [("t", 0)]), Publish("t", b"x"))
            got = [await dev.next(), await dev.next(), await dev.next()]
            assert got == [Connack(False, 0), Suback(1, [0]), Publish("t", b"x")]
            await dev.send(Disconnect())
            assert await dev.eof()
            await dev.close()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(scenario())


@pytest.mark.timeout(15)
async def test_retry_timer_resends_to_a_client_without_keepalive() -> None:
    broker = MqttBroker(
        EdgeCore(EventLog(log_events=False), Policy.open()), MqttConfig(retry_interval=0.3)
    )
    names = iter(["sub", "pub"])

    def session_for() -> SessionInfo:
        return SessionInfo(identity=DeviceIdentity(namespace="s", name=next(names)), peer="lo")

    async with serving(broker, session_for) as port:
        sub = await Device.open(port)
        await sub.send(Connect(client_id="sub", keepalive=0), Subscribe(1, [("t", 1)]))
        assert [await sub.next(), await sub.next()] == [Connack(False, 0), Suback(1, [1])]
        pub = await Device.open(port)
        await pub.send(Connect(client_id="pub"), Publish("t", b"x", qos=1, packet_id=1))
        assert [await pub.next(), await pub.next()] == [Connack(False, 0), Puback(1)]
        assert await sub.next() == Publish("t", b"x", qos=1, packet_id=1)
        # Not acknowledged: re-sent with DUP once the retry interval has passed.
        assert await sub.next() == Publish("t", b"x", qos=1, dup=True, packet_id=1)
        await sub.send(Puback(1))
        for dev in (sub, pub):
            await dev.send(Disconnect())
            assert await dev.eof()
            await dev.close()
