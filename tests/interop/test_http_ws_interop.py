"""HTTPS and WebSocket on the real edge with clients nobody here wrote.

The edge is the real ``EdgeServer`` (TLS driven by the edge, trust store,
broker, device frontend) on loopback; the clients are curl (publish, retained
read, Server-Sent Events), paho-mqtt over secure WebSocket and the websockets
library's client for ``/ws``, all presenting a client certificate from a
quickstart PKI.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from testmodules import load_harness
from websockets.asyncio.client import connect

from certs.quickstart import QuickstartResult, quickstart
from edge.core.router import Message
from edge.server import EdgeServer

pytestmark = [pytest.mark.interop, pytest.mark.timeout(60)]


harness = load_harness()
CURL = shutil.which("curl")


@pytest.fixture(scope="module")
def qs(tmp_path_factory: pytest.TempPathFactory) -> QuickstartResult:
    """A quickstart PKI with three devices."""
    return quickstart(tmp_path_factory.mktemp("qs") / "pki", devices=3)


@pytest.fixture
async def edge(tmp_path: Path, qs: QuickstartResult) -> AsyncIterator[EdgeServer]:
    """The real edge with an open policy."""
    async with EdgeServer(harness.edge_config(tmp_path, qs.out)) as server:
        yield server


@pytest.fixture
async def strict_edge(tmp_path: Path, qs: QuickstartResult) -> AsyncIterator[EdgeServer]:
    """The real edge with the default policy (a device owns ``devices/<name>/#``)."""
    async with EdgeServer(harness.edge_config(tmp_path, qs.out, policy="default")) as server:
        yield server


def curl_args(qs: QuickstartResult, device: str = "dev-00000") -> list[str]:
    assert CURL is not None
    return [
        CURL,
        "--silent",
        "--show-error",
        "--cacert",
        str(qs.root_cert),
        "--cert",
        str(qs.devices_dir / f"{device}.pem"),
        "--key",
        str(qs.devices_dir / f"{device}.key"),
    ]


async def run_curl(*args: str) -> tuple[int, str]:
    """Run curl; return (HTTP status, body) using ``--write-out``."""
    proc = await asyncio.create_subprocess_exec(
        *args,
        "--write-out",
        "\n%{http_code}",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    body, _, status = out.decode().rpartition("\n")
    return int(status), body


needs_curl = pytest.mark.skipif(CURL is None, reason="curl is not installed")


@needs_curl
async def test_curl_publish_and_retained_read(edge: EdgeServer, qs: QuickstartResult) -> None:
    base = f"https://localhost:{edge.ports['https']}"
    status, body = await run_curl(
        *curl_args(qs),
        "--data-binary",
        "22.5",
        f"{base}/topics/devices/dev-00000/temp?qos=1&retain=true",
    )
    assert status == 200, body
    reply = json.loads(body)
    assert reply["topic"] == "devices/dev-00000/temp"
    assert reply["qos"] == 1
    assert reply["retain"] is True
    status, body = await run_curl(*curl_args(qs), f"{base}/topics/devices/dev-00000/temp")
    assert (status, body) == (200, "22.5")
    # Over 1 KiB curl asks "Expect: 100-continue" first.
    big = "b" * 4096
    status, body = await run_curl(
        *curl_args(qs), "--data-binary", big, f"{base}/topics/devices/dev-00000/big"
    )
    assert status == 200, body
    status, body = await run_curl(*curl_args(qs), f"{base}/topics/nothing/here")
    assert status == 404
    assert json.loads(body)["status"] == 404
    accepted = edge.events.query(kind="tls.accepted")
    assert accepted[0]["identity"] == "default/dev-00000"


@needs_curl
async def test_curl_policy_denial_is_403_and_an_event(
    strict_edge: EdgeServer, qs: QuickstartResult
) -> None:
    base = f"https://localhost:{strict_edge.ports['https']}"
    status, body = await run_curl(
        *curl_args(qs), "--data-binary", "x", f"{base}/topics/devices/dev-00001/temp"
    )
    assert status == 403
    problem = json.loads(body)
    assert "no publish rule" in problem["detail"]
    denied = strict_edge.events.query(kind="policy.denied")[-1]
    assert denied["identity"] == "default/dev-00000"
    request = strict_edge.events.query(kind="http.request")[-1]
    assert request["status"] == 403
    assert request["reason"] == problem["detail"]


@needs_curl
async def test_curl_server_sent_events(edge: EdgeServer, qs: QuickstartResult) -> None:
    base = f"https://localhost:{edge.ports['https']}"
    proc = await asyncio.create_subprocess_exec(
        *curl_args(qs),
        "--no-buffer",
        f"{base}/subscribe?topic=sse/%23",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 20)
        assert line.startswith(b": subscribed sse/#")
        assert edge.core is not None
        edge.core.publish(Message("sse/a", b"\xff\x01", 0), None)
        lines = []
        while len(lines) < 3:
            text = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode().strip()
            if text:
                lines.append(text)
        assert lines[0] == "id: 1"
        assert lines[1] == "event: message"
        data = json.loads(lines[2].removeprefix("data: "))
        assert data["topic"] == "sse/a"
        assert data["encoding"] == "base64"
        assert data["payload"] == "/wE="
    finally:
        proc.terminate()
        await proc.communicate()
    closed = await edge.events.wait_for(lambda e: e["kind"] == "http.stream_closed", timeout=20)
    assert closed["identity"] == "default/dev-00000"


async def test_paho_over_secure_websocket(edge: EdgeServer, qs: QuickstartResult) -> None:
    ctx = harness.device_context(qs, "dev-00001")
    client = harness.PahoClient(
        edge.ports["https"], "dev-00001", transport="websockets", ssl_context=ctx
    )
    try:
        assert await client.connect(timeout=20) == 0
        assert await client.subscribe("wss/#", 1) == [1]
        await client.publish("wss/x", b"paho over wss", qos=1)
        topic, payload, qos, _ = await asyncio.wait_for(client.messages.get(), 20)
        assert (topic, payload, qos) == ("wss/x", b"paho over wss", 1)
    finally:
        await client.close()
    connected = edge.events.query(kind="mqtt.connected")
    assert connected[0]["identity"] == "default/dev-00001"


async def test_websockets_client_on_ws(edge: EdgeServer, qs: QuickstartResult) -> None:
    ctx = harness.device_context(qs, "dev-00002")
    url = f"wss://localhost:{edge.ports['https']}/ws"
    async with connect(url, ssl=ctx) as ws:
        await ws.send(json.dumps({"op": "subscribe", "topic": "j/+", "id": 1}))
        assert json.loads(await asyncio.wait_for(ws.recv(), 20))["op"] == "ack"
        await ws.send(
            json.dumps({"op": "publish", "topic": "j/1", "payload": "hi", "qos": 1, "id": 2})
        )
        replies = [json.loads(await asyncio.wait_for(ws.recv(), 20)) for _ in range(2)]
        assert {r["op"] for r in replies} == {"ack", "message"}
        ack = next(r for r in replies if r["op"] == "ack")
        assert ack == {"op": "ack", "id": 2, "delivered": 1}
        await ws.send("not json")
        with contextlib.suppress(Exception):
            await asyncio.wait_for(ws.recv(), 20)
        assert ws.close_code == 1007
    closed = await edge.events.wait_for(lambda e: e["kind"] == "ws.closed", timeout=20)
    assert closed["identity"] == "default/dev-00002"
    assert closed["code"] == 1007


async def _mqtt_connect_raw(port: int, ctx: Any) -> bytes:
    from edge.mqtt.codec import Connect, encode

    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=ctx, server_hostname="localhost"
    )
    try:
        writer.write(encode(Connect(client_id="dev-00000", keepalive=0)))
        return await asyncio.wait_for(reader.readexactly(4), 20)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


@needs_curl
async def test_one_port_serves_mqtt_and_https_by_alpn_and_first_bytes(
    edge: EdgeServer, qs: QuickstartResult
) -> None:
    port = edge.ports["multi"]
    # MQTT chosen by ALPN, then by its first bytes (no ALPN).
    for alpn in (["mqtt"], None):
        ctx = harness.device_context(qs, "dev-00000", alpn=alpn)
        assert await _mqtt_connect_raw(port, ctx) == b"\x20\x02\x00\x00"
    # HTTP chosen by ALPN http/1.1 (curl's default offer), then without ALPN.
    base = f"https://localhost:{port}"
    for extra in ([], ["--no-alpn"]):
        status, body = await run_curl(
            *curl_args(qs), *extra, "--data-binary", "1", f"{base}/topics/multi/t"
        )
        assert status == 200, body
    # WebSocket on the same port.
    async with connect(
        f"wss://localhost:{port}/ws", ssl=harness.device_context(qs, "dev-00001")
    ) as ws:
        await ws.send(json.dumps({"op": "subscribe", "topic": "multi/#", "id": 1}))
        assert json.loads(await asyncio.wait_for(ws.recv(), 20))["op"] == "ack"
