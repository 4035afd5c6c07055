"""The MQTT 5 metadata mapping (README, "MQTT 5 metadata"), one test per protocol pair.

Every message here carries the same metadata: a content type, user properties
with a repeated key (order and repeats must survive), a response topic, binary
correlation data and a message expiry interval. Each test publishes it on one
protocol and reads it on another, over real loopback mutual TLS against one
edge: MQTT 5 by paho-mqtt (TCP, and WebSocket on ``/mqtt``), HTTP by the
standard library (publish, retained read, Server-Sent Events), ``/ws`` by the
websockets client. A 3.1.1 subscriber gets the payload alone: that test reads
its PUBLISH bytes raw, so a property that leaked into them would show.
"""

from __future__ import annotations

import base64
import http.client
import json
import queue
import socket
import ssl
import threading
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from certs.quickstart import QuickstartResult, quickstart
from edge.config import EdgeConfig, HostPort, ListenersConfig, TrustConfig
from edge.server import EdgeServer, ServerThread

pytestmark = [pytest.mark.interop, pytest.mark.timeout(60)]

WAIT = 10.0
CONTENT_TYPE = "application/json"
USER = [("b", "2"), ("a", "1"), ("b", "3")]  # a repeated key, not in sorted order
RESPONSE_TOPIC = "meta/reply"
CORRELATION = b"\x00\x01corr\xff"
EXPIRY = 300


@dataclass
class Edge:
    """The running edge and its PKI."""

    handle: ServerThread
    qs: QuickstartResult
    mqtt: int
    https: int

    def device(self, n: int) -> tuple[Path, Path]:
        name = f"dev-{n:05d}"
        return self.qs.devices_dir / f"{name}.pem", self.qs.devices_dir / f"{name}.key"

    def context(self, n: int) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(cafile=str(self.qs.root_cert))
        ctx.load_cert_chain(*map(str, self.device(n)))
        ctx.check_hostname = False
        return ctx


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    base = tmp_path_factory.mktemp("meta5")
    qs = quickstart(base / "pki", devices=3)
    config = EdgeConfig(
        state_dir=base / "state",
        listeners=ListenersConfig(
            mqtt=HostPort(host="127.0.0.1", port=0),
            https=HostPort(host="127.0.0.1", port=0),
            admin=HostPort(host="127.0.0.1", port=0),
            multi=HostPort(host="127.0.0.1", port=0),
        ),
        trust=TrustConfig(store=base / "trust.db", watch_interval=None),
        pki_dir=qs.out,
        policy={"mode": "rules", "rules": [{"publish": ["meta/#"], "subscribe": ["meta/#"]}]},
    )
    handle = EdgeServer.run_in_thread(config)
    try:
        yield Edge(handle, qs, handle.ports["mqtt"], handle.ports["https"])
    finally:
        handle.stop()


@pytest.fixture
def topic() -> str:
    return f"meta/{uuid.uuid4().hex}"


@pytest.fixture
def closing() -> Iterator[list[Any]]:
    """Things with a close() that a test opened: closed after it, pass or fail."""
    made: list[Any] = []
    yield made
    for thing in reversed(made):
        thing.close()


# --- MQTT 5 (paho-mqtt) ---------------------------------------------------------------------


class Paho5:
    """A paho-mqtt MQTT 5 client over mTLS (TCP, or WebSocket on /mqtt)."""

    def __init__(self, edge: Edge, device: int, websocket: bool = False) -> None:
        mqtt = pytest.importorskip("paho.mqtt.client")
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"dev-{device:05d}",
            protocol=mqtt.MQTTv5,
            transport="websockets" if websocket else "tcp",
        )
        if websocket:
            self.client.ws_set_options(path="/mqtt")
        self.client.tls_set_context(edge.context(device))
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.messages: queue.Queue[Any] = queue.Queue()
        self.client.on_connect = lambda *a: self.connected.set()
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.on_message = lambda c, u, msg: self.messages.put(msg)
        self.client.connect("127.0.0.1", edge.https if websocket else edge.mqtt, keepalive=30)
        self.client.loop_start()
        assert self.connected.wait(WAIT), "no CONNACK"

    def subscribe(self, topic: str) -> None:
        self.client.subscribe(topic, qos=1)
        assert self.subscribed.wait(WAIT), "no SUBACK"

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        props = Properties(PacketTypes.PUBLISH)
        props.ContentType = CONTENT_TYPE
        props.UserProperty = USER
        props.ResponseTopic = RESPONSE_TOPIC
        props.CorrelationData = CORRELATION
        props.MessageExpiryInterval = EXPIRY
        self.client.publish(
            topic, payload, qos=1, retain=retain, properties=props
        ).wait_for_publish(WAIT)

    def message(self) -> Any:
        return self.messages.get(timeout=WAIT)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def assert_properties(msg: Any, payload: bytes) -> None:
    """What an MQTT 5 subscriber must get: the payload and every property, in order."""
    assert msg.payload == payload
    props = msg.properties
    assert props.ContentType == CONTENT_TYPE
    assert props.UserProperty == USER
    assert props.ResponseTopic == RESPONSE_TOPIC
    assert props.CorrelationData == CORRELATION
    # The remaining interval is forwarded: at most what was set, and not run out.
    assert 0 < props.MessageExpiryInterval <= EXPIRY


# --- HTTP -------------------------------------------------------------------------------------


def http_publish(edge: Edge, topic: str, payload: bytes, retain: bool = False) -> None:
    conn = http.client.HTTPSConnection(
        "127.0.0.1", edge.https, context=edge.context(0), timeout=WAIT
    )
    try:
        path = f"/topics/{urllib.parse.quote(topic, safe='')}?qos=1&retain={str(retain).lower()}"
        conn.putrequest("POST", path)
        conn.putheader("Content-Type", CONTENT_TYPE)
        for key, value in USER:
            conn.putheader("MQTT-User-Property", f"{key}={value}")
        conn.putheader("Response-Topic", RESPONSE_TOPIC)
        conn.putheader("Correlation-Data", base64.b64encode(CORRELATION).decode())
        conn.putheader("Message-Expiry", str(EXPIRY))
        conn.putheader("Content-Length", str(len(payload)))
        conn.endheaders(payload)
        resp = conn.getresponse()
        assert resp.status == 200, resp.read()
        resp.read()
    finally:
        conn.close()


def http_read(edge: Edge, topic: str) -> tuple[bytes, http.client.HTTPMessage]:
    conn = http.client.HTTPSConnection(
        "127.0.0.1", edge.https, context=edge.context(0), timeout=WAIT
    )
    try:
        conn.request("GET", f"/topics/{urllib.parse.quote(topic, safe='')}")
        resp = conn.getresponse()
        body = resp.read()
        assert resp.status == 200, body
        return body, resp.headers
    finally:
        conn.close()


def assert_headers(body: bytes, headers: http.client.HTTPMessage, payload: bytes) -> None:
    """What an HTTP read must give back: the publish headers, user properties in order."""
    assert body == payload
    assert headers["Content-Type"] == CONTENT_TYPE
    assert headers.get_all("MQTT-User-Property") == [f"{k}={v}" for k, v in USER]
    assert headers["Response-Topic"] == RESPONSE_TOPIC
    assert base64.b64decode(headers["Correlation-Data"]) == CORRELATION
    assert 0 < int(headers["Message-Expiry"]) <= EXPIRY


class Sse:
    """``GET /subscribe`` over mTLS; :meth:`event` returns the next ``data`` as JSON."""

    def __init__(self, edge: Edge, topic: str) -> None:
        self.conn = http.client.HTTPSConnection(
            "127.0.0.1", edge.https, context=edge.context(2), timeout=WAIT
        )
        self.conn.request("GET", f"/subscribe?topic={urllib.parse.quote(topic, safe='')}")
        self.resp = self.conn.getresponse()
        assert self.resp.status == 200
        assert self.resp.headers["Content-Type"].startswith("text/event-stream")
        line = self.resp.readline()  # the subscriptions are in place after this
        assert line.startswith(b": subscribed"), line

    def event(self) -> dict[str, Any]:
        while True:  # the socket timeout (WAIT) bounds every read
            line = self.resp.readline()
            assert line, "SSE stream ended"
            if line.startswith(b"data: "):
                data: dict[str, Any] = json.loads(line[6:])
                return data

    def close(self) -> None:
        self.conn.close()


def assert_fields(obj: dict[str, Any], payload: bytes) -> None:
    """What a /ws message op or SSE data must carry: the /ws field names."""
    assert obj["payload"] == payload.decode()
    assert obj["content_type"] == CONTENT_TYPE
    assert obj["user_properties"] == [list(pair) for pair in USER]
    assert obj["response_topic"] == RESPONSE_TOPIC
    assert base64.b64decode(obj["correlation_data"]) == CORRELATION
    assert 0 < obj["message_expiry"] <= EXPIRY


# --- /ws (JSON over WebSocket) ----------------------------------------------------------------


class Ws:
    """A websockets client on ``/ws`` over mTLS."""

    def __init__(self, edge: Edge, device: int) -> None:
        from websockets.sync.client import connect

        self.ws = connect(f"wss://127.0.0.1:{edge.https}/ws", ssl=edge.context(device))

    def call(self, op: dict[str, Any]) -> dict[str, Any]:
        self.ws.send(json.dumps(op))
        reply: dict[str, Any] = json.loads(self.ws.recv(timeout=WAIT))
        assert reply["op"] == "ack", reply
        return reply

    def subscribe(self, topic: str) -> None:
        self.call({"op": "subscribe", "topic": topic, "id": 1})

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.call(
            {
                "op": "publish",
                "topic": topic,
                "payload": payload.decode(),
                "qos": 1,
                "retain": retain,
                "id": 2,
                "content_type": CONTENT_TYPE,
                "user_properties": [list(pair) for pair in USER],
                "response_topic": RESPONSE_TOPIC,
                "correlation_data": base64.b64encode(CORRELATION).decode(),
                "message_expiry": EXPIRY,
            }
        )

    def message(self) -> dict[str, Any]:
        obj: dict[str, Any] = json.loads(self.ws.recv(timeout=WAIT))
        assert obj["op"] == "message", obj
        return obj

    def close(self) -> None:
        self.ws.close()


# --- the pairs --------------------------------------------------------------------------------


def test_mqtt5_to_http_read_and_sse(edge: Edge, topic: str, closing: list[Any]) -> None:
    sse = Sse(edge, topic)
    closing.append(sse)
    pub = Paho5(edge, 1)
    closing.append(pub)
    pub.publish(topic, b'{"t": 1}', retain=True)
    assert_fields(sse.event(), b'{"t": 1}')
    assert_headers(*http_read(edge, topic), b'{"t": 1}')


def test_mqtt5_to_ws(edge: Edge, topic: str, closing: list[Any]) -> None:
    ws = Ws(edge, 2)
    closing.append(ws)
    ws.subscribe(topic)
    pub = Paho5(edge, 1)
    closing.append(pub)
    pub.publish(topic, b'{"t": 2}')
    message = ws.message()
    assert message["topic"] == topic
    assert_fields(message, b'{"t": 2}')


def test_http_publish_to_mqtt5(edge: Edge, topic: str, closing: list[Any]) -> None:
    sub = Paho5(edge, 1)
    closing.append(sub)
    sub.subscribe(topic)
    http_publish(edge, topic, b'{"t": 3}')
    assert_properties(sub.message(), b'{"t": 3}')


def test_http_publish_to_ws(edge: Edge, topic: str, closing: list[Any]) -> None:
    ws = Ws(edge, 2)
    closing.append(ws)
    ws.subscribe(topic)
    http_publish(edge, topic, b'{"t": 4}')
    assert_fields(ws.message(), b'{"t": 4}')


def test_ws_to_mqtt5(edge: Edge, topic: str, closing: list[Any]) -> None:
    sub = Paho5(edge, 1)
    closing.append(sub)
    sub.subscribe(topic)
    ws = Ws(edge, 2)
    closing.append(ws)
    ws.publish(topic, b'{"t": 5}')
    assert_properties(sub.message(), b'{"t": 5}')


def test_ws_to_http_sse_and_read(edge: Edge, topic: str, closing: list[Any]) -> None:
    sse = Sse(edge, topic)
    closing.append(sse)
    ws = Ws(edge, 1)
    closing.append(ws)
    ws.publish(topic, b'{"t": 6}', retain=True)
    assert_fields(sse.event(), b'{"t": 6}')
    assert_headers(*http_read(edge, topic), b'{"t": 6}')


def test_mqtt5_to_mqtt5_over_mqtt_wss(edge: Edge, topic: str, closing: list[Any]) -> None:
    sub = Paho5(edge, 1, websocket=True)
    closing.append(sub)
    sub.subscribe(topic)
    pub = Paho5(edge, 2, websocket=True)
    closing.append(pub)
    pub.publish(topic, b'{"t": 7}')
    assert_properties(sub.message(), b'{"t": 7}')


def _read_packet(sock: ssl.SSLSocket) -> bytes:
    """One MQTT packet, whole (fixed header included)."""
    head = sock.recv(1)
    assert head, "closed"
    length = shift = 0
    size = b""
    while True:
        byte = sock.recv(1)
        assert byte, "closed"
        size += byte
        length |= (byte[0] & 0x7F) << shift
        shift += 7
        if byte[0] < 128:
            break
    body = b""
    while len(body) < length:
        chunk = sock.recv(length - len(body))
        assert chunk, "closed"
        body += chunk
    return head + size + body


def test_mqtt311_subscriber_gets_the_payload_alone(
    edge: Edge, topic: str, closing: list[Any]
) -> None:
    raw = socket.create_connection(("127.0.0.1", edge.mqtt), timeout=WAIT)
    sock = edge.context(2).wrap_socket(raw)
    closing.append(sock)
    cid = b"dev-00002"
    connect = b"\x00\x04MQTT\x04\x02\x00\x1e" + len(cid).to_bytes(2, "big") + cid
    sock.sendall(bytes((0x10, len(connect))) + connect)
    assert _read_packet(sock) == b"\x20\x02\x00\x00"
    encoded = topic.encode()
    subscribe = b"\x00\x01" + len(encoded).to_bytes(2, "big") + encoded + b"\x00"
    sock.sendall(bytes((0x82, len(subscribe))) + subscribe)
    assert _read_packet(sock) == b"\x90\x03\x00\x01\x00"
    pub = Paho5(edge, 1)
    closing.append(pub)
    pub.publish(topic, b'{"t": 8}')
    # QoS 0 granted: topic and payload, nothing else (3.1.1 has no place for properties).
    body = len(encoded).to_bytes(2, "big") + encoded + b'{"t": 8}'
    assert _read_packet(sock) == bytes((0x30, len(body))) + body
