"""/ws and the WebSocket endpoint over loopback TCP with the websockets client."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import socket
import struct
from types import ModuleType
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, ConnectionClosedError, InvalidStatus

from edge.core.policy import Policy
from edge.core.router import Message
from edge.http.device import DeviceApiConfig

pytestmark = pytest.mark.timeout(20)


async def call(ws: ClientConnection, op: dict[str, Any]) -> dict[str, Any]:
    await ws.send(json.dumps(op))
    reply: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), 5))
    return reply


async def test_subscribe_publish_round_trip(harness: ModuleType) -> None:
    async with (
        harness.EdgeHarness() as edge,
        connect(f"{edge.ws_url}/ws") as a,
        connect(f"{edge.ws_url}/ws") as b,
    ):
        assert await call(a, {"op": "subscribe", "topic": "room/+", "id": 1}) == {
            "op": "ack",
            "id": 1,
            "granted_qos": 0,
        }
        ack = await call(
            b, {"op": "publish", "topic": "room/1", "payload": "hello", "qos": 1, "id": 9}
        )
        assert ack == {"op": "ack", "id": 9, "delivered": 1}
        message = json.loads(await asyncio.wait_for(a.recv(), 5))
        assert message == {
            "op": "message",
            "topic": "room/1",
            "payload": "hello",
            "encoding": "utf-8",
            "qos": 0,
            "retain": False,
        }
        connected = edge.events.query(kind="ws.connected")
        assert [e["path"] for e in connected] == ["/ws", "/ws"]
        assert connected[0]["identity"] == "default/dev1"


async def test_close_reports_ws_closed_and_drops_subscriptions(harness: ModuleType) -> None:
    async with harness.EdgeHarness() as edge:
        async with connect(f"{edge.ws_url}/ws") as ws:
            await call(ws, {"op": "subscribe", "topic": "t", "id": 1})
            assert edge.core.router.subscription_count == 1
        closed = await edge.events.wait_for(lambda e: e["kind"] == "ws.closed", timeout=5)
        assert closed["code"] == 1000
        assert closed["closed_by"] == "device"
        assert edge.core.router.subscription_count == 0


@pytest.mark.parametrize(
    ("send", "code", "reason_part"),
    [
        (b"\x01\x02", 1003, "binary messages are not part of /ws"),
        ('{"op":"explode","id":1}', 1003, "unknown op"),
        ("{nope", 1007, "not JSON"),
        ("x" * 2000, 1009, "exceeds limit of 1024 bytes"),
    ],
)
async def test_bad_messages_close_with_the_right_code(
    harness: ModuleType, send: str | bytes, code: int, reason_part: str
) -> None:
    config = DeviceApiConfig(ws_max_message_bytes=1024)
    async with (
        harness.EdgeHarness(config=config) as edge,
        connect(f"{edge.ws_url}/ws") as bystander,
    ):
        await call(bystander, {"op": "subscribe", "topic": "t", "id": 1})
        async with connect(f"{edge.ws_url}/ws") as ws:
            await ws.send(send)
            with pytest.raises(ConnectionClosedError) as info:
                await asyncio.wait_for(ws.recv(), 5)
        assert info.value.rcvd is not None
        assert info.value.rcvd.code == code
        assert reason_part in info.value.rcvd.reason
        closed = await edge.events.wait_for(
            lambda e: e["kind"] == "ws.closed" and e["code"] == code, timeout=5
        )
        assert closed["closed_by"] == "edge"
        assert reason_part in closed["reason"]
        # Other clients are unaffected.
        edge.core.publish(Message("t", b"still here"), None)
        assert json.loads(await asyncio.wait_for(bystander.recv(), 5))["payload"] == "still here"


async def test_invalid_utf8_text_is_1007(harness: ModuleType) -> None:
    async with harness.EdgeHarness() as edge, connect(f"{edge.ws_url}/ws") as ws:
        await ws.send(b'{"op":"\xff"}', text=True)
        with pytest.raises(ConnectionClosedError) as info:
            await asyncio.wait_for(ws.recv(), 5)
        assert info.value.rcvd is not None
        assert info.value.rcvd.code == 1007
        assert "not UTF-8" in info.value.rcvd.reason


async def test_fragmented_message_is_assembled(harness: ModuleType) -> None:
    async with harness.EdgeHarness() as edge, connect(f"{edge.ws_url}/ws") as ws:
        text = json.dumps({"op": "subscribe", "topic": "frag/#", "id": 3})
        parts = [text[:5], text[5:12], text[12:]]

        async def fragments() -> Any:
            for part in parts:
                yield part

        await ws.send(fragments())
        assert json.loads(await asyncio.wait_for(ws.recv(), 5))["id"] == 3


async def raw_upgrade(
    port: int, path: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    return reader, writer, head


async def test_unmasked_frame_is_1002(harness: ModuleType) -> None:
    async with harness.EdgeHarness() as edge:
        reader, writer, head = await raw_upgrade(edge.port, "/ws")
        try:
            assert head.startswith(b"HTTP/1.1 101")
            writer.write(b"\x81\x02{}")  # a text frame without the mask clients must set
            frame = await asyncio.wait_for(reader.read(2), 5)
            assert frame[0] == 0x88  # close
            body = await asyncio.wait_for(reader.readexactly(frame[1]), 5)
            assert struct.unpack("!H", body[:2])[0] == 1002
            assert b"mask" in body[2:]
            assert await asyncio.wait_for(reader.read(), 5) == b""
        finally:
            writer.close()
            await writer.wait_closed()


async def test_unknown_websocket_path_is_404(harness: ModuleType) -> None:
    async with harness.EdgeHarness() as edge:
        with pytest.raises(InvalidStatus) as info:
            async with connect(f"{edge.ws_url}/nowhere"):
                pass
        assert info.value.response.status_code == 404
        refused = edge.events.query(kind="ws.refused")
        assert refused[0]["path"] == "/nowhere"


async def test_mqtt_path_requires_the_mqtt_subprotocol_when_served(harness: ModuleType) -> None:
    async with harness.EdgeHarness() as edge:
        # Without a broker, /mqtt is not a WebSocket endpoint at all.
        with pytest.raises(InvalidStatus) as info:
            async with connect(f"{edge.ws_url}/mqtt", subprotocols=["mqtt"]):  # type: ignore[list-item]
                pass
        assert info.value.response.status_code == 404


async def test_policy_denial_keeps_the_connection(harness: ModuleType) -> None:
    async with (
        harness.EdgeHarness(policy=Policy.default()) as edge,
        connect(f"{edge.ws_url}/ws") as ws,
    ):
        denied = await call(ws, {"op": "subscribe", "topic": "devices/#", "id": 1})
        assert denied == {
            "op": "error",
            "id": 1,
            "reason": "not authorized to subscribe to devices/#",
        }
        ok = await call(ws, {"op": "subscribe", "topic": "devices/dev1/#", "id": 2})
        assert ok["op"] == "ack"


async def test_frontend_close_sends_1001(harness: ModuleType) -> None:
    edge = harness.EdgeHarness()
    await edge.__aenter__()
    try:
        async with connect(f"{edge.ws_url}/ws") as ws:
            await call(ws, {"op": "subscribe", "topic": "t", "id": 1})
            await edge.frontend.close()
            with pytest.raises(ConnectionClosed) as info:
                await asyncio.wait_for(ws.recv(), 5)
            assert info.value.rcvd is not None
            assert info.value.rcvd.code == 1001
    finally:
        await edge.__aexit__(None, None, None)


def keepalive_requests(port: int, count: int) -> socket.socket:
    """A connection that has had ``count`` plain HTTP requests answered (kept alive)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    for _ in range(count):
        sock.sendall(b"GET /topics/nothing/here HTTP/1.1\r\nHost: edge\r\n\r\n")
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(4096)
            assert chunk, "the edge closed the keep-alive connection"
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        found = re.search(rb"(?im)^content-length:\s*(\d+)", head)
        assert found is not None
        while len(body) < int(found.group(1)):
            body += sock.recv(4096)
        assert head.startswith(b"HTTP/1.1 404"), head
        assert not re.search(rb"(?im)^connection:\s*close", head)
    return sock


@pytest.mark.parametrize("earlier", [1, 3])
async def test_upgrade_works_on_a_later_request_of_a_keep_alive_connection(
    harness: ModuleType, earlier: int
) -> None:
    async with harness.EdgeHarness(mqtt=True) as edge:
        sock = await asyncio.to_thread(keepalive_requests, edge.port, earlier)
        async with connect(f"{edge.ws_url}/ws", sock=sock) as ws:
            reply = await call(ws, {"op": "subscribe", "topic": "later/+", "id": 7})
            assert reply == {"op": "ack", "id": 7, "granted_qos": 0}
            edge.core.publish(Message("later/a", b"hi", 0), None)
            message = json.loads(await asyncio.wait_for(ws.recv(), 5))
            assert (message["topic"], message["payload"]) == ("later/a", "hi")
        closed = await edge.events.wait_for(lambda e: e["kind"] == "ws.closed", timeout=5)
        assert closed["path"] == "/ws"
        # /mqtt the same way: CONNECT -> CONNACK over the upgraded connection.
        sock = await asyncio.to_thread(keepalive_requests, edge.port, earlier)
        async with connect(
            f"{edge.ws_url}/mqtt",
            sock=sock,
            subprotocols=["mqtt"],  # type: ignore[list-item]
        ) as ws:
            await ws.send(bytes.fromhex("101000044d5154540402003c000464657631"))
            assert await asyncio.wait_for(ws.recv(), 5) == b"\x20\x02\x00\x00"


async def test_later_upgrade_to_an_unknown_path_is_404_and_plain_get_is_426(
    harness: ModuleType,
) -> None:
    async with harness.EdgeHarness() as edge:
        sock = await asyncio.to_thread(keepalive_requests, edge.port, 1)
        with pytest.raises(InvalidStatus) as info:
            async with connect(f"{edge.ws_url}/nowhere", sock=sock):
                pass
        assert info.value.response.status_code == 404
        refused = await edge.events.wait_for(lambda e: e["kind"] == "ws.refused", timeout=5)
        assert refused["path"] == "/nowhere"
        sock = await asyncio.to_thread(keepalive_requests, edge.port, 1)
        with sock:
            sock.sendall(b"GET /ws HTTP/1.1\r\nHost: edge\r\n\r\n")
            answer = await asyncio.to_thread(sock.recv, 4096)
        assert answer.startswith(b"HTTP/1.1 426")
        assert b"Upgrade: websocket" in answer
