"""HTTPS and WSS devices against a local aiohttp server that requires client certificates.

The server speaks the edge's device API shapes (``POST /topics/{topic}``,
``GET /subscribe`` as Server-Sent Events, ``/ws`` JSON ops, ``/mqtt`` MQTT in binary
frames) with a tiny in-test hub, so the device's clients run against an independent
HTTP stack. Its TLS is asyncio's own, which drops a failed handshake without an alert
(CPython issue 98078): a refused device sees the connection close, which the trace
reports as ``closed-by-edge``. The sans-I/O parsers are tested with bytes first.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp import WSMsgType, web
from testmodules import load_device_support

from devices.device import DeviceResult, DeviceSpec, Publish, Receive, Subscribe, Target, run_device
from devices.protocols import ProtocolError
from devices.protocols.https import ResponseParser, SseEvent, SseParser
from devices.trace import render
from edge.cli import main
from edge.mqtt import codec

support = load_device_support()


# --------------------------------------------------------------------------- parsers, bytes only


def test_response_with_content_length_split_anywhere() -> None:
    wire = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello"
    for cut in range(1, len(wire)):
        parser = ResponseParser()
        parser.expect("GET")
        items = parser.feed(wire[:cut]) + parser.feed(wire[cut:])
        ends = [r for kind, r in items if kind == "end"]
        assert len(ends) == 1
        assert (ends[0].status, ends[0].body, ends[0].headers["x-a"]) == (200, b"hello", "b")


def test_chunked_response_and_pipelined_head() -> None:
    parser = ResponseParser()
    parser.expect("POST")
    parser.expect("HEAD")
    wire = (
        b"HTTP/1.1 403 Forbidden\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"4\r\nnope\r\n3;ext=1\r\n!!!\r\n0\r\n\r\n"
        b"HTTP/1.1 404 Not Found\r\nContent-Length: 14\r\n\r\n"
    )
    ends = [r for kind, r in parser.feed(wire) if kind == "end"]
    assert [(r.status, r.body) for r in ends] == [(403, b"nope!!!"), (404, b"")]


def test_event_stream_is_delivered_as_it_comes() -> None:
    parser = ResponseParser()
    parser.expect("GET")
    head = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    chunk = b': subscribed\n\nid: 1\nevent: message\ndata: {"topic": "a"}\n\n'
    items = parser.feed(head + f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
    data = b"".join(d for kind, d in items if kind == "data")
    assert not [i for i in items if i[0] == "end"]  # a stream never ends by itself
    events = SseParser().feed(data)
    assert events == [
        SseEvent("comment", comment="subscribed"),
        SseEvent("message", '{"topic": "a"}', "1"),
    ]


@pytest.mark.parametrize(
    ("wire", "what"),
    [
        (b"SPDY/3 200 OK\r\n\r\n", "status line"),
        (b"HTTP/1.1 200 OK\r\nno-colon\r\n\r\n", "header line"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", "Content-Length"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "chunk size"),
    ],
)
def test_malformed_responses_name_the_part(wire: bytes, what: str) -> None:
    parser = ResponseParser()
    with pytest.raises(ProtocolError, match=what) as info:
        parser.feed(wire)
    assert info.value.reason == "http-malformed"


# --------------------------------------------------------------------------- test server


def _matches(topic_filter: str, topic: str) -> bool:
    f, t = topic_filter.split("/"), topic.split("/")
    for i, part in enumerate(f):
        if part == "#":
            return True
        if i >= len(t) or (part != "+" and part != t[i]):
            return False
    return len(f) == len(t)


class Hub:
    """The test server's router: subscribers by filter, retained messages by topic."""

    def __init__(self) -> None:
        self.subs: list[tuple[str, Callable[[str, bytes, bool], None]]] = []
        self.retained: dict[str, bytes] = {}
        self.closing: list[asyncio.Queue[tuple[str, bytes, bool] | None]] = []

    def publish(self, topic: str, payload: bytes, retain: bool) -> int:
        if retain:
            self.retained[topic] = payload
        targets = [cb for f, cb in self.subs if _matches(f, topic)]
        for cb in targets:
            cb(topic, payload, False)
        return len(targets)


def _problem(status: int, detail: str) -> web.Response:
    return web.json_response(
        {"title": "refused", "status": status, "detail": detail},
        status=status,
        content_type="application/problem+json",
    )


def make_app(hub: Hub) -> web.Application:
    # Deliveries are sent from callbacks; the set keeps their tasks alive until done.
    sending: set[asyncio.Future[None]] = set()

    async def post_topic(request: web.Request) -> web.Response:
        topic = request.match_info["topic"]
        if topic.startswith("denied/"):
            return _problem(403, f"policy: publish to {topic} is not allowed")
        body = await request.read()
        retain = request.query.get("retain") == "true"
        delivered = hub.publish(topic, body, retain)
        qos = int(request.query.get("qos", "0"))
        return web.json_response(
            {"topic": topic, "qos": qos, "retain": retain, "delivered": delivered}
        )

    async def get_topic(request: web.Request) -> web.Response:
        payload = hub.retained.get(request.match_info["topic"])
        if payload is None:
            return _problem(404, "no retained message")
        return web.Response(body=payload)

    async def subscribe(request: web.Request) -> web.StreamResponse:
        topic_filter = request.query["topic"]
        queue: asyncio.Queue[tuple[str, bytes, bool] | None] = asyncio.Queue()
        hub.closing.append(queue)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        entry = (topic_filter, lambda t, p, r: queue.put_nowait((t, p, r)))
        hub.subs.append(entry)
        await response.write(b": subscribed\n\n")
        sequence = 0
        try:
            while (item := await queue.get()) is not None:
                sequence += 1
                topic, payload, retain = item
                data = json.dumps(
                    {
                        "topic": topic,
                        "payload": payload.decode(),
                        "encoding": "utf-8",
                        "qos": 0,
                        "retain": retain,
                    }
                )
                await response.write(f"id: {sequence}\nevent: message\ndata: {data}\n\n".encode())
        finally:
            hub.subs.remove(entry)
        return response

    async def ws_json(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        subs: list[tuple[str, Callable[[str, bytes, bool], None]]] = []

        def deliver(topic: str, payload: bytes, retain: bool) -> None:
            message = {
                "op": "message",
                "topic": topic,
                "payload": payload.decode(),
                "retain": retain,
            }
            sending.add(task := asyncio.ensure_future(ws.send_json(message)))
            task.add_done_callback(sending.discard)

        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                op = json.loads(msg.data)
                if op["op"] == "subscribe":
                    entry = (op["topic"], deliver)
                    subs.append(entry)
                    hub.subs.append(entry)
                    await ws.send_json({"op": "ack", "id": op["id"], "granted_qos": 0})
                elif op["op"] == "publish":
                    if op["topic"].startswith("denied/"):
                        await ws.send_json(
                            {"op": "error", "id": op["id"], "reason": "policy denies"}
                        )
                        continue
                    n = hub.publish(op["topic"], op["payload"].encode(), op.get("retain", False))
                    await ws.send_json({"op": "ack", "id": op["id"], "delivered": n})
        finally:
            for sub in subs:
                hub.subs.remove(sub)
        return ws

    async def ws_mqtt(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(protocols=("mqtt",))
        await ws.prepare(request)
        parser = codec.Parser(server_side=True)
        subs: list[tuple[str, Callable[[str, bytes, bool], None]]] = []

        def deliver(topic: str, payload: bytes, retain: bool) -> None:
            packet = codec.encode(codec.Publish(topic, payload, 0, retain))
            sending.add(task := asyncio.ensure_future(ws.send_bytes(packet)))
            task.add_done_callback(sending.discard)

        try:
            async for msg in ws:
                if msg.type != WSMsgType.BINARY:
                    continue
                for packet in parser.feed(msg.data):
                    reply: codec.Packet | None = None
                    if isinstance(packet, codec.Connect):
                        reply = codec.Connack(False, 0)
                    elif isinstance(packet, codec.Subscribe):
                        for f, _qos in packet.topics:
                            entry = (f, deliver)
                            subs.append(entry)
                            hub.subs.append(entry)
                        reply = codec.Suback(packet.packet_id, [0 for _ in packet.topics])
                    elif isinstance(packet, codec.Publish):
                        hub.publish(packet.topic, packet.payload, packet.retain)
                        if packet.qos == 1 and packet.packet_id is not None:
                            reply = codec.Puback(packet.packet_id)
                    elif isinstance(packet, codec.Disconnect):
                        await ws.close()
                    if reply is not None:
                        await ws.send_bytes(codec.encode(reply))
        finally:
            for sub in subs:
                hub.subs.remove(sub)
        return ws

    app = web.Application()
    app.router.add_post("/topics/{topic:.+}", post_topic)
    app.router.add_get("/topics/{topic:.+}", get_topic)
    app.router.add_get("/subscribe", subscribe)
    app.router.add_get("/ws", ws_json)
    app.router.add_get("/mqtt", ws_mqtt)
    return app


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return support.make_pki(tmp_path_factory.mktemp("pki"), datetime.now(UTC))


@pytest.fixture
async def server(pki: Any) -> AsyncIterator[int]:
    """The aiohttp server on 127.0.0.1, port 0, requiring a client certificate."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki.server.cert, pki.server.key)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cafile=str(pki.ca_pem))
    hub = Hub()
    runner = web.AppRunner(make_app(hub), handler_cancellation=True, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
    await site.start()
    server = site._server
    assert isinstance(server, asyncio.Server)
    port = server.sockets[0].getsockname()[1]
    try:
        yield port
    finally:
        for queue in hub.closing:
            queue.put_nowait(None)
        with contextlib.suppress(Exception):
            await runner.cleanup()


def spec_for(files: Any, device_id: str = "device-1") -> DeviceSpec:
    if files is None:
        return DeviceSpec(id=device_id)
    return DeviceSpec(id=device_id, cert_path=str(files.cert), key_path=str(files.key))


def target(pki: Any, url: str, **kw: Any) -> Target:
    return Target(url=url, ca_pem=pki.ca_pem.read_text(), **kw)


def step(result: DeviceResult, name: str) -> Any:
    (found,) = [s for s in result.steps if s.name == name]
    return found


# --------------------------------------------------------------------------- HTTPS


@pytest.mark.timeout(30)
async def test_https_device_publishes_and_receives_by_event_stream(pki: Any, server: int) -> None:
    result = await run_device(
        spec_for(pki.device),
        target(pki, f"https://127.0.0.1:{server}"),
        actions=[Subscribe("h/#"), Publish("h/1", b"over https", 1), Receive(1)],
    )
    assert result.outcome == "connected", render(result)
    assert result.protocol == "https"
    ack = step(result, "http_status")
    assert ack.detail["request"] == "HEAD /"
    assert ack.detail["status"] == 404  # any status proves the TLS session was accepted
    assert step(result, "edge_verdict").ok
    assert step(result, "subscribe").detail["summary"] == "HTTP 200, event stream subscribed"
    publish = step(result, "publish")
    assert publish.detail["status"] == 200
    assert publish.detail["response"]["delivered"] == 1
    assert step(result, "message").detail == {
        "topic": "h/1",
        "payload": "over https",
        "qos": 0,
        "retain": False,
    }
    assert len(result.delivery_latencies) == 1


@pytest.mark.timeout(30)
async def test_https_denied_publish_is_http_403_with_the_reason(pki: Any, server: int) -> None:
    result = await run_device(
        spec_for(pki.device),
        target(pki, f"https://127.0.0.1:{server}"),
        actions=[Publish("denied/x", b"no")],
    )
    assert (result.outcome, result.reason) == ("refused", "http-403")
    publish = step(result, "publish")
    assert not publish.ok
    assert "policy: publish to denied/x is not allowed" in publish.detail["summary"]
    assert "hint: the edge's policy denied the request" in render(result)


@pytest.mark.timeout(30)
async def test_https_refusal_by_asyncio_tls_has_no_alert(pki: Any, server: int) -> None:
    result = await run_device(spec_for(pki.foreign), target(pki, f"https://127.0.0.1:{server}"))
    # asyncio's TLS server closes without an alert: the device can only say so.
    assert result.outcome == "refused"
    assert result.reason == "closed-by-edge"
    assert step(result, "tls_handshake").ok  # TLS 1.3: the device's side had finished
    assert not step(result, "edge_verdict").ok


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("ca_attr", "sni", "reason"),
    [
        ("other_ca_pem", None, "server-cert-untrusted"),
        ("ca_pem", "not-the-edge.example", "server-cert-hostname-mismatch"),
    ],
)
async def test_https_device_verdicts(
    pki: Any, server: int, ca_attr: str, sni: str | None, reason: str
) -> None:
    t = Target(url=f"https://127.0.0.1:{server}", ca_pem=getattr(pki, ca_attr).read_text(), sni=sni)
    result = await run_device(spec_for(pki.device), t)
    assert (result.outcome, result.reason) == ("refused", reason)
    assert not step(result, "server_certificate").ok


# --------------------------------------------------------------------------- WSS


@pytest.mark.timeout(30)
async def test_wss_json_device_round_trip(pki: Any, server: int) -> None:
    result = await run_device(
        spec_for(pki.device),
        target(pki, f"wss://127.0.0.1:{server}/ws"),
        actions=[Subscribe("w/+"), Publish("w/1", b"json hello", 1), Receive(1)],
    )
    assert result.outcome == "connected", render(result)
    accept = step(result, "ws_accept")
    assert accept.detail["status"] == 101
    assert step(result, "subscribe").detail["granted_qos"] == 0
    assert step(result, "publish").detail["delivered"] == 1
    assert step(result, "message").detail["payload"] == "json hello"


@pytest.mark.timeout(30)
async def test_wss_json_refused_op_keeps_reason(pki: Any, server: int) -> None:
    result = await run_device(
        spec_for(pki.device),
        target(pki, f"wss://127.0.0.1:{server}/ws"),
        actions=[Publish("denied/1", b"x")],
    )
    assert (result.outcome, result.reason) == ("refused", "ws-error")
    assert step(result, "publish").detail["summary"] == "error: policy denies"


@pytest.mark.timeout(30)
async def test_wss_mqtt_device_round_trip(pki: Any, server: int) -> None:
    result = await run_device(
        spec_for(pki.device),
        target(pki, f"wss://127.0.0.1:{server}/mqtt"),
        actions=[Subscribe("m/#"), Publish("m/1", b"mqtt in frames", 1), Receive(1)],
    )
    assert result.outcome == "connected", render(result)
    accept = step(result, "ws_accept")
    assert accept.detail["subprotocol"] == "mqtt"
    assert accept.detail["return_code"] == 0
    assert step(result, "publish").detail["summary"] == "PUBACK"
    assert step(result, "message").detail["payload"] == "mqtt in frames"


@pytest.mark.timeout(30)
def test_cli_https_json(pki: Any, capsys: pytest.CaptureFixture[str]) -> None:
    async def run() -> int:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(pki.server.cert, pki.server.key)
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cafile=str(pki.ca_pem))
        runner = web.AppRunner(make_app(Hub()), shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
        await site.start()
        assert isinstance(site._server, asyncio.Server)
        port = site._server.sockets[0].getsockname()[1]
        try:
            argv = [
                "device",
                "connect",
                "--url",
                f"https://localhost:{port}",
                "--cert",
                str(pki.device.cert),
                "--key",
                str(pki.device.key),
                "--ca",
                str(pki.ca_pem),
                "--publish",
                "cli/h",
                "hi",
                "--json",
            ]
            # The CLI runs its own event loop: give it a thread.
            return await asyncio.to_thread(main, argv)
        finally:
            await runner.cleanup()

    code = asyncio.run(run())
    data = json.loads(capsys.readouterr().out)
    assert code == 0
    assert data["protocol"] == "https"
    steps = {s["name"]: s for s in data["steps"]}
    assert steps["client_hello"]["detail"]["sni"] == "localhost"
    assert steps["client_hello"]["detail"]["alpn"] == ["http/1.1"]
    assert steps["publish"]["detail"]["status"] == 200
