"""Two edge nodes (two supervisors, ``--cluster`` and their own ``--node-id``), two workers each.

Each node's workers join the bus through nats-servers started here: one server for
both nodes, or one server per node routed into one NATS cluster, so that cutting a
node's server cuts that node off (a partition) while the other keeps running. The
servers do not advertise each other to clients (``no_advertise``): a cut-off node's
workers do not fail over to the other node's server, which is what makes it a
partition.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from edgenodes import DEVICES, AdminEvents, EdgeNode, Mqtt, connect_on_each_worker, device_context
from websockets.asyncio.client import connect as ws_connect

from edge.cluster.natsserver import NatsServer, free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


@pytest.fixture
async def routed(tmp_path: Path) -> AsyncIterator[list[NatsServer]]:
    """Two nats-servers in one NATS cluster, one per edge node."""
    ports = [free_port(), free_port()]
    servers = [
        NatsServer(
            store_dir=tmp_path / f"nats{i}",
            name=f"s{i}",
            cluster_port=ports[i],
            routes=[f"nats://127.0.0.1:{ports[1 - i]}"],
            no_advertise=True,
        )
        for i in range(2)
    ]
    await asyncio.gather(*(asyncio.to_thread(s.start) for s in servers))
    try:
        yield servers
    finally:
        for server in servers:
            await asyncio.to_thread(server.stop)


@pytest.fixture
async def nodes(
    tmp_path: Path, pki: Path, routed: list[NatsServer]
) -> AsyncIterator[list[EdgeNode]]:
    a = EdgeNode(tmp_path / "a", pki, workers=2, node_id="a", cluster=routed[0].url)
    b = EdgeNode(tmp_path / "b", pki, workers=2, node_id="b", cluster=routed[1].url)
    await asyncio.gather(a.start(), b.start())
    try:
        yield [a, b]
    finally:
        codes = await asyncio.gather(a.stop(), b.stop())
        assert codes == [0, 0]


async def _next(client: Mqtt, timeout: float = 20) -> tuple[str, bytes]:
    topic, payload, _, _ = await asyncio.wait_for(client.messages.get(), timeout)
    return topic, payload


async def test_cross_node_delivery_and_takeover(nodes: list[EdgeNode], pki: Path) -> None:
    a, b = nodes
    subs = await connect_on_each_worker(
        a.ports["mqtt"], pki, DEVICES[:20], [a.label(0), a.label(1)]
    )
    try:
        for sub in subs.values():
            assert await sub.subscribe("n/#", 1) == [1]
        # Publishers on node b over every protocol: each reaches both workers of node a.
        v311 = Mqtt(b.ports["mqtt"], "dev-00030", device_context(pki, "dev-00030"), version=4)
        wss = Mqtt(
            b.ports["https"], "dev-00031", device_context(pki, "dev-00031"), transport="websockets"
        )
        assert await v311.connect() == 0
        assert await wss.connect() == 0
        https = b.ports["https"]
        async with (
            aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=device_context(pki, "dev-00032"))
            ) as http,
            ws_connect(f"wss://localhost:{https}/ws", ssl=device_context(pki, "dev-00033")) as ws,
        ):
            await v311.publish("n/mqtt", b"1", qos=1)
            await wss.publish("n/wss", b"2", qos=1)
            async with http.post(f"https://localhost:{https}/topics/n/http?qos=1", data=b"3") as r:
                assert r.status == 200
            await ws.send(
                json.dumps({"op": "publish", "topic": "n/ws", "payload": "4", "qos": 1, "id": 1})
            )
            assert json.loads(await asyncio.wait_for(ws.recv(), 20))["op"] == "ack"
        want = {("n/mqtt", b"1"), ("n/wss", b"2"), ("n/http", b"3"), ("n/ws", b"4")}
        for sub in subs.values():
            assert {await _next(sub) for _ in range(4)} == want, sub.worker
        await v311.close()
        await wss.close()

        # Session takeover across nodes: the same client id on node b ends node a's.
        async with AdminEvents(a) as events:
            old = Mqtt(a.ports["mqtt"], "dev-00034", device_context(pki, "dev-00034"))
            assert await old.connect() == 0
            new = Mqtt(b.ports["mqtt"], "dev-00034", device_context(pki, "dev-00034"))
            assert await new.connect() == 0
            assert str(new.worker).startswith("b/")
            assert await asyncio.wait_for(old.disconnected, 20) == 0x8E  # Session taken over
            # Node a's admin API shows node b's events too.
            seen = await events.wait(
                lambda e: (
                    e["kind"] == "mqtt.connected"
                    and e.get("client_id") == "dev-00034"
                    and str(e.get("worker", "")).startswith("b/")
                )
            )
            assert seen["worker"] == new.worker
            await old.close()
            await new.close()
    finally:
        for client in subs.values():
            await client.close()


async def test_a_partitioned_node_keeps_serving_and_heals(
    nodes: list[EdgeNode], routed: list[NatsServer], pki: Path
) -> None:
    a, b = nodes
    on_a = await connect_on_each_worker(a.ports["mqtt"], pki, DEVICES[:20], [a.label(0)])
    a0 = on_a[a.label(0)]
    b_sub = Mqtt(b.ports["mqtt"], "dev-00035", device_context(pki, "dev-00035"))
    a_pub = Mqtt(a.ports["mqtt"], "dev-00036", device_context(pki, "dev-00036"))
    try:
        assert await b_sub.connect() == 0
        assert await b_sub.subscribe("p/#", 1) == [1]
        assert await a0.subscribe("p/#", 1) == [1]
        assert await a_pub.connect() == 0
        await a_pub.publish("p/before", b"", qos=1)
        assert await _next(b_sub) == ("p/before", b"")
        assert await _next(a0) == ("p/before", b"")
        async with AdminEvents(a) as events:
            # The partition: node a's nats-server dies; node a's workers cannot reach b.
            await asyncio.to_thread(routed[0].kill)
            await events.wait(
                lambda e: (
                    e["kind"] == "cluster.bus"
                    and e.get("state") == "disconnected"
                    and e.get("worker") == a.label(0)
                )
            )
            # Node a still serves: new handshakes, and delivery between its own devices
            # on one worker (worker 0 holds a0; a_pub is wherever it landed).
            during = Mqtt(a.ports["mqtt"], "dev-00037", device_context(pki, "dev-00037"))
            assert await during.connect() == 0
            await a0.publish("p/during", b"local", qos=1)
            assert await _next(a0) == ("p/during", b"local")
            await during.close()
            # Heal: the server comes back on its port and rejoins the route.
            await asyncio.to_thread(routed[0].start)
            mark = len(events.events)
            await events.wait(
                lambda e: (
                    e["kind"] == "cluster.bus"
                    and e.get("state") == "connected"
                    and e.get("worker") == a.label(0)
                ),
                start=mark,
            )
        # Interest crosses the route again shortly after the reconnect: publish until
        # one arrives (each wait is an event with a timeout), then the flow is normal.
        async with asyncio.timeout(30):
            while True:
                await a0.publish("p/after", b"healed", qos=1)
                try:
                    got = await _next(b_sub, timeout=1)
                except TimeoutError:
                    continue
                # Nothing published during the partition reaches b, before or after:
                # core NATS does not buffer, and a worker drops what it cannot send.
                assert got[0] != "p/during"
                if got == ("p/after", b"healed"):
                    break
    finally:
        for client in [a_pub, b_sub, *on_a.values()]:
            await client.close()
