"""One router: a message published on any protocol reaches subscribers on all of them.

Real edge (EdgeServer), real mutual TLS, one device per client. Subscribers:
paho-mqtt on the MQTT port, an SSE stream (aiohttp client) and a ``/ws``
connection (websockets client) on the HTTPS port. Each protocol publishes in
turn; every subscriber must receive every message (3 x 3), and a retained
message published over one protocol is read back over the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path

import aiohttp
import pytest
from testmodules import load_harness
from websockets.asyncio.client import connect

from certs.quickstart import quickstart
from edge.server import EdgeServer

pytestmark = [pytest.mark.interop, pytest.mark.timeout(60)]


harness = load_harness()


async def _sse_messages(
    response: aiohttp.ClientResponse, out: asyncio.Queue[tuple[str, bytes]]
) -> None:
    async for raw in response.content:
        line = raw.decode().strip()
        if line.startswith("data: "):
            data = json.loads(line.removeprefix("data: "))
            out.put_nowait((data["topic"], data["payload"].encode()))


async def _ws_messages(ws: object, out: asyncio.Queue[tuple[str, bytes]]) -> None:
    async for text in ws:  # type: ignore[attr-defined]
        data = json.loads(text)
        if data["op"] == "message":
            out.put_nowait((data["topic"], data["payload"].encode()))


async def test_every_protocol_reaches_every_protocol(tmp_path: Path) -> None:
    qs = quickstart(tmp_path / "pki", devices=6)
    async with EdgeServer(harness.edge_config(tmp_path, qs.out)) as edge:
        https = edge.ports["https"]
        received: dict[str, asyncio.Queue[tuple[str, bytes]]] = {
            "mqtt": asyncio.Queue(),
            "http": asyncio.Queue(),
            "ws": asyncio.Queue(),
        }
        # --- subscribers ---
        mqtt_sub = harness.PahoClient(
            edge.ports["mqtt"], "dev-00000", ssl_context=harness.device_context(qs, "dev-00000")
        )
        mqtt_pub = harness.PahoClient(
            edge.ports["mqtt"], "dev-00003", ssl_context=harness.device_context(qs, "dev-00003")
        )
        http_ctx = harness.device_context(qs, "dev-00001")
        pumps: list[asyncio.Task[None]] = []
        try:
            assert await mqtt_sub.connect(timeout=20) == 0
            assert await mqtt_sub.subscribe("x/#", 0) == [0]
            assert await mqtt_pub.connect(timeout=20) == 0
            async with (
                aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=http_ctx)) as http,
                http.get(f"https://localhost:{https}/subscribe?topic=x/%23") as sse,
                connect(
                    f"wss://localhost:{https}/ws", ssl=harness.device_context(qs, "dev-00002")
                ) as ws_sub,
                connect(
                    f"wss://localhost:{https}/ws", ssl=harness.device_context(qs, "dev-00004")
                ) as ws_pub,
            ):
                assert sse.status == 200
                assert (await sse.content.readline()).startswith(b": subscribed")
                await ws_sub.send(json.dumps({"op": "subscribe", "topic": "x/#", "id": 1}))
                assert json.loads(await asyncio.wait_for(ws_sub.recv(), 20))["op"] == "ack"
                pumps = [
                    asyncio.create_task(_sse_messages(sse, received["http"])),
                    asyncio.create_task(_ws_messages(ws_sub, received["ws"])),
                ]

                async def relay_mqtt() -> None:
                    while True:
                        topic, payload, _, _ = await mqtt_sub.messages.get()
                        received["mqtt"].put_nowait((topic, payload))

                pumps.append(asyncio.create_task(relay_mqtt()))

                # --- publishers: one message per protocol ---
                await mqtt_pub.publish("x/from-mqtt", b"m", qos=1)
                async with http.post(
                    f"https://localhost:{https}/topics/x/from-http?qos=1", data=b"h"
                ) as resp:
                    assert resp.status == 200
                    assert (await resp.json())["delivered"] == 3
                await ws_pub.send(
                    json.dumps(
                        {"op": "publish", "topic": "x/from-ws", "payload": "w", "qos": 1, "id": 7}
                    )
                )
                assert json.loads(await asyncio.wait_for(ws_pub.recv(), 20)) == {
                    "op": "ack",
                    "id": 7,
                    "delivered": 3,
                }
                expected = {("x/from-mqtt", b"m"), ("x/from-http", b"h"), ("x/from-ws", b"w")}
                for protocol, queue in received.items():
                    got = {await asyncio.wait_for(queue.get(), 20) for _ in range(3)}
                    assert got == expected, protocol

                # --- retained: published over /ws, read over HTTP and MQTT ---
                await ws_pub.send(
                    json.dumps(
                        {
                            "op": "publish",
                            "topic": "r/state",
                            "payload": "kept",
                            "retain": True,
                            "qos": 1,
                            "id": 8,
                        }
                    )
                )
                assert json.loads(await asyncio.wait_for(ws_pub.recv(), 20))["id"] == 8
                async with http.get(f"https://localhost:{https}/topics/r/state") as resp:
                    assert resp.status == 200
                    assert await resp.read() == b"kept"
                assert await mqtt_pub.subscribe("r/state", 1) == [1]
                topic, payload, _, retained = await asyncio.wait_for(mqtt_pub.messages.get(), 20)
                assert (topic, payload, retained) == ("r/state", b"kept", True)
        finally:
            for task in pumps:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            await mqtt_sub.close()
            await mqtt_pub.close()
