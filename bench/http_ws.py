"""HTTPS and WebSocket against MQTT on the same edge: publish and delivery rates.

One real edge (``EdgeServer`` in its own thread and event loop, real mutual TLS,
the quickstart PKI, open policy) and clients on the main loop, measured side by
side in one run:

- *acknowledged publish rate*: one device publishes ``n`` messages one after the
  other, each waiting for its acknowledgement: MQTT QoS 1 (PUBACK), HTTPS
  ``POST /topics`` on a keep-alive connection (200), ``/ws`` QoS 1 (``ack``);
- *delivery rate*: an MQTT device publishes ``n`` QoS 0 messages back to back;
  one subscriber per protocol (MQTT, ``/ws``, SSE) counts until it has them all.

Figures are medians over rounds (messages per second) and ratios to MQTT.
The clients run in a separate process (one client process, one edge thread),
on the same machine, so absolute rates are lower than a dedicated edge would
reach; the ratios are the point.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import ssl
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp
from websockets.asyncio.client import connect

from certs.quickstart import QuickstartResult, quickstart
from edge.config import EdgeConfig, HostPort, ListenersConfig, TrustConfig
from edge.mqtt.codec import Connect, Parser, Publish, Subscribe, encode
from edge.server import EdgeServer


def _context(qs: QuickstartResult | _Pki, device: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=str(qs.root_cert))
    ctx.load_cert_chain(
        str(qs.devices_dir / f"{device}.pem"), str(qs.devices_dir / f"{device}.key")
    )
    return ctx


class _MqttClient:
    """A minimal MQTT 3.1.1 client over asyncio streams (CONNECT, PUBLISH, SUBSCRIBE)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.parser = Parser(1 << 20, server_side=False)

    @classmethod
    async def open(cls, port: int, ctx: ssl.SSLContext, client_id: str) -> _MqttClient:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=ctx, server_hostname="localhost"
        )
        client = cls(reader, writer)
        writer.write(encode(Connect(client_id=client_id, keepalive=0)))
        await client.packets(1)
        return client

    async def packets(self, count: int) -> list[Any]:
        out: list[Any] = []
        while len(out) < count:
            data = await self.reader.read(65536)
            if not data:
                raise ConnectionError("edge closed the MQTT connection")
            out.extend(self.parser.feed(data))
        return out

    async def close(self) -> None:
        self.writer.write(b"\xe0\x00")  # DISCONNECT
        self.writer.close()
        with contextlib.suppress(ssl.SSLError, ConnectionError):
            await self.writer.wait_closed()


async def _mqtt_acked(port: int, qs: QuickstartResult | _Pki, n: int) -> float:
    client = await _MqttClient.open(port, _context(qs, "dev-00000"), "bench-mqtt-pub")
    try:
        start = time.perf_counter()
        for i in range(n):
            pid = i % 65535 + 1
            client.writer.write(
                encode(Publish(topic="bench/a", payload=b"x" * 32, qos=1, packet_id=pid))
            )
            await client.packets(1)
        return n / (time.perf_counter() - start)
    finally:
        await client.close()


async def _http_acked(port: int, qs: QuickstartResult | _Pki, n: int) -> float:
    connector = aiohttp.TCPConnector(ssl=_context(qs, "dev-00001"), limit=1)
    async with aiohttp.ClientSession(connector=connector) as http:
        url = f"https://localhost:{port}/topics/bench/a?qos=1"
        start = time.perf_counter()
        for _ in range(n):
            async with http.post(url, data=b"x" * 32) as resp:
                if resp.status != 200:
                    raise RuntimeError(f"HTTP publish answered {resp.status}")
                await resp.read()
        return n / (time.perf_counter() - start)


async def _ws_acked(port: int, qs: QuickstartResult | _Pki, n: int) -> float:
    async with connect(f"wss://localhost:{port}/ws", ssl=_context(qs, "dev-00002")) as ws:
        start = time.perf_counter()
        for i in range(n):
            await ws.send(
                json.dumps(
                    {"op": "publish", "topic": "bench/a", "payload": "x" * 32, "qos": 1, "id": i}
                )
            )
            await ws.recv()
        return n / (time.perf_counter() - start)


async def _deliveries(
    mqtt_port: int,
    qs: QuickstartResult | _Pki,
    n: int,
    subscribe: Callable[[], Awaitable[Callable[[], Awaitable[None]]]],
) -> float:
    """Publish ``n`` QoS 0 messages over MQTT; time until ``subscribe``'s waiter has them."""
    wait_all = await subscribe()
    publisher = await _MqttClient.open(mqtt_port, _context(qs, "dev-00003"), "bench-fanout-pub")
    try:
        packet = encode(Publish(topic="fan/a", payload=b"y" * 32, qos=0))
        start = time.perf_counter()
        for i in range(n):
            publisher.writer.write(packet)
            if i % 100 == 99:
                await publisher.writer.drain()
        await wait_all()
        return n / (time.perf_counter() - start)
    finally:
        await publisher.close()


async def _rates(
    qs: QuickstartResult | _Pki, ports: dict[str, int], n: int
) -> dict[str, dict[str, float]]:
    mqtt_port, https = ports["mqtt"], ports["https"]
    acked = {
        "mqtt": await _mqtt_acked(mqtt_port, qs, n),
        "http": await _http_acked(https, qs, n),
        "ws": await _ws_acked(https, qs, n),
    }

    async def mqtt_sub() -> Callable[[], Awaitable[None]]:
        sub = await _MqttClient.open(mqtt_port, _context(qs, "dev-00004"), "bench-sub")
        sub.writer.write(encode(Subscribe(packet_id=1, topics=[("fan/#", 0)])))
        await sub.packets(1)

        async def wait() -> None:
            await sub.packets(n)
            await sub.close()

        return wait

    async def ws_sub() -> Callable[[], Awaitable[None]]:
        ws = await connect(
            f"wss://localhost:{https}/ws", ssl=_context(qs, "dev-00005"), max_queue=None
        )
        await ws.send(json.dumps({"op": "subscribe", "topic": "fan/#", "id": 1}))
        await ws.recv()

        async def wait() -> None:
            for _ in range(n):
                await ws.recv()
            await ws.close()

        return wait

    async def sse_sub() -> Callable[[], Awaitable[None]]:
        connector = aiohttp.TCPConnector(ssl=_context(qs, "dev-00006"))
        session = aiohttp.ClientSession(connector=connector)
        resp = await session.get(f"https://localhost:{https}/subscribe?topic=fan/%23")
        await resp.content.readline()

        async def wait() -> None:
            seen = 0
            async for line in resp.content:
                if line.startswith(b"event: message"):
                    seen += 1
                    if seen == n:
                        break
            resp.close()
            await session.close()

        return wait

    delivered = {
        "mqtt": await _deliveries(mqtt_port, qs, n, mqtt_sub),
        "ws": await _deliveries(mqtt_port, qs, n, ws_sub),
        "http_sse": await _deliveries(mqtt_port, qs, n, sse_sub),
    }
    return {"acked_publish": acked, "delivery": delivered}


def _rates_in_process(pki_dir: Path, ports: dict[str, int], n: int) -> dict[str, dict[str, float]]:
    return asyncio.run(_rates(_Pki(pki_dir), ports, n))


class _Pki:
    """The two quickstart paths the clients need (picklable, unlike the result)."""

    def __init__(self, out: Path) -> None:
        self.root_cert = out / "root-ca.pem"
        self.devices_dir = out / "devices"


def run(quick: bool = False) -> dict[str, object]:
    """Measure and print; return medians (messages/s) and ratios to MQTT."""
    n = 300 if quick else 2000
    rounds = 1 if quick else 3
    with tempfile.TemporaryDirectory(prefix="edgesim-bench-http-ws-") as tmp:
        folder = Path(tmp)
        qs = quickstart(folder / "pki", devices=7)
        anywhere = HostPort(host="127.0.0.1", port=0)
        config = EdgeConfig(
            state_dir=folder / "state",
            listeners=ListenersConfig(mqtt=anywhere, https=anywhere, admin=None),
            trust=TrustConfig(store=folder / "trust.db", watch_interval=None),
            pki_dir=qs.out,
            policy="open",
        )
        handle = EdgeServer.run_in_thread(config)
        try:
            # The clients run in another process: in a second thread of this one
            # every round trip would wait for the GIL's switch interval (5 ms).
            spawn = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
                samples = [
                    pool.submit(_rates_in_process, qs.out, handle.ports, n).result()
                    for _ in range(rounds)
                ]
        finally:
            handle.stop()
    figures: dict[str, object] = {"messages_per_round": n, "rounds": rounds}
    lines = []
    for kind in ("acked_publish", "delivery"):
        medians = {
            proto: round(statistics.median(s[kind][proto] for s in samples))
            for proto in samples[0][kind]
        }
        ratios = {proto: round(rate / medians["mqtt"], 2) for proto, rate in medians.items()}
        figures[kind] = {"per_second": medians, "ratio_to_mqtt": ratios}
        lines.append(
            f"{kind:>14}: " + ", ".join(f"{p} {r}/s (x{ratios[p]})" for p, r in medians.items())
        )
    print(f"http_ws: {n} messages x {rounds} rounds, medians, edge in its own thread")
    for line in lines:
        print("  " + line)
    return figures
