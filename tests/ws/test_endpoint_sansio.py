"""WebSocketConnection fed bytes from websockets' own sans-I/O client (no sockets)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri

from edge.core.events import EventLog
from edge.core.hub import EdgeCore
from edge.core.policy import Policy
from edge.core.session import DeviceIdentity, SessionInfo
from edge.ws.endpoint import WebSocketConnection, WsRoute, WsSender
from edge.ws.jsonapp import JsonWsApp


class FakeTransport(asyncio.Transport):
    """Collects what the connection writes."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def take(self) -> bytes:
        data = bytes(self.written)
        self.written.clear()
        return data


def make_pair(
    core: EdgeCore, events: EventLog, max_size: int = 2**20
) -> tuple[WebSocketConnection, FakeTransport, ClientProtocol]:
    session = SessionInfo(identity=DeviceIdentity(namespace="default", name="dev1"), peer="t")

    def app(s: SessionInfo, sender: WsSender, subprotocol: str | None) -> JsonWsApp:
        return JsonWsApp(core, s, sender, events=events)

    server = WebSocketConnection(
        session, {"/ws": WsRoute(name="ws", app=app)}, events=events, max_size=max_size
    )
    transport = FakeTransport()
    server.connection_made(transport)
    client = ClientProtocol(parse_uri("ws://edge/ws"))
    request = client.connect()
    client.send_request(request)
    return server, transport, client


def pump(
    server: WebSocketConnection, transport: FakeTransport, client: ClientProtocol
) -> list[Any]:
    """Move bytes client -> server -> client; return the client's events."""
    for chunk in client.data_to_send():
        if chunk:
            server.data_received(chunk)
    client.receive_data(transport.take())
    return client.events_received()


async def test_handshake_ops_and_close_fed_as_bytes() -> None:
    events = EventLog(log_events=False)
    core = EdgeCore(events, Policy.open())
    server, transport, client = make_pair(core, events)
    [response] = pump(server, transport, client)
    assert isinstance(response, Response)
    assert response.status_code == 101
    client.send_text(json.dumps({"op": "subscribe", "topic": "a/#", "id": 1}).encode())
    [frame] = pump(server, transport, client)
    assert json.loads(frame.data) == {"op": "ack", "id": 1, "granted_qos": 0}
    # A fragmented publish: three frames, one message.
    text = json.dumps({"op": "publish", "topic": "a/b", "payload": "p", "qos": 1, "id": 2})
    client.send_text(text[:4].encode(), fin=False)
    client.send_continuation(text[4:10].encode(), fin=False)
    assert pump(server, transport, client) == []
    client.send_continuation(text[10:].encode(), fin=True)
    frames = pump(server, transport, client)
    assert [json.loads(f.data)["op"] for f in frames] == ["message", "ack"]
    client.send_close(1000, "bye")
    [close] = pump(server, transport, client)
    assert isinstance(close, Frame)
    assert close.opcode is Opcode.CLOSE
    assert transport.closed
    server.connection_lost(None)
    closed = events.query(kind="ws.closed")[0]
    assert (closed["code"], closed["reason"], closed["closed_by"]) == (1000, "bye", "device")
    assert core.router.subscription_count == 0


async def test_oversized_message_fails_with_1009_from_bytes() -> None:
    events = EventLog(log_events=False)
    core = EdgeCore(events, Policy.open())
    server, transport, client = make_pair(core, events, max_size=64)
    pump(server, transport, client)
    client.send_text(b"x" * 65)
    [close] = pump(server, transport, client)
    assert close.opcode is Opcode.CLOSE
    assert int.from_bytes(close.data[:2], "big") == 1009
    assert transport.closed
    server.connection_lost(None)
    assert events.query(kind="ws.closed")[0]["closed_by"] == "edge"
