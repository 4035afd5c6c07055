"""Protocol selection for one port: the pure decision, and MuxProtocol over loopback."""

from __future__ import annotations

import asyncio
from types import ModuleType

import aiohttp
import pytest

from edge.mqtt.codec import Connect, encode
from edge.mqtt.protocol import MqttServerProtocol
from edge.mux import MuxError, select_protocol

CONNECT = encode(Connect(client_id="dev1", keepalive=0))


@pytest.mark.parametrize(
    ("alpn", "first", "kind", "expected"),
    [
        ("mqtt", b"", "multi", "mqtt"),
        ("x-amzn-mqtt-ca", b"", "multi", "mqtt"),
        ("http/1.1", b"", "multi", "http"),
        (None, CONNECT, "multi", "mqtt"),
        (None, b"GET / HTTP/1.1\r\n", "multi", "http"),
        (None, b"POST /topics/a", "multi", "http"),
        (None, b"", "multi", None),
        (None, b"PO", "multi", None),
        (None, b"OPTION", "multi", None),
        (None, b"anything", "mqtt", "mqtt"),
        (None, b"", "https", "http"),
        ("mqtt", b"", "mqtt", "mqtt"),
        ("http/1.1", b"", "https", "http"),
    ],
)
def test_select_protocol(alpn: str | None, first: bytes, kind: str, expected: str | None) -> None:
    assert select_protocol(alpn, first, kind) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("alpn", "first", "kind", "reason_part"),
    [
        ("h2", b"", "multi", "'h2' is not served"),
        ("mqtt", b"", "https", "not served on the https listener"),
        ("http/1.1", b"", "mqtt", "not served on the mqtt listener"),
        (None, b"PRI * HTTP/2.0\r\n", "multi", "HTTP/2 is not served"),
        (None, b"\x16\x03\x01", "multi", "neither an MQTT CONNECT nor an HTTP request"),
        (None, b"get / HTTP/1.1", "multi", "neither"),
    ],
)
def test_select_protocol_refusals_name_what_was_seen(
    alpn: str | None, first: bytes, kind: str, reason_part: str
) -> None:
    with pytest.raises(MuxError) as info:
        select_protocol(alpn, first, kind)  # type: ignore[arg-type]
    assert reason_part in info.value.reason


def test_unknown_listener_kind_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="listener_kind"):
        select_protocol(None, b"", "quic")  # type: ignore[arg-type]


@pytest.mark.timeout(20)
async def test_mux_protocol_serves_mqtt_and_http_on_one_port(harness: ModuleType) -> None:
    edge = harness.EdgeHarness(mqtt=True, listener_kind="multi")
    edge.mqtt_factory = lambda session: MqttServerProtocol(edge.broker, session)
    async with edge:
        # MQTT: the CONNECT, split so that the first byte alone decides.
        reader, writer = await asyncio.open_connection("127.0.0.1", edge.port)
        try:
            writer.write(CONNECT[:1])
            await writer.drain()
            writer.write(CONNECT[1:])
            assert await asyncio.wait_for(reader.readexactly(4), 5) == b"\x20\x02\x00\x00"
        finally:
            writer.close()
            await writer.wait_closed()
        # HTTP on the same port.
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"{edge.base_url}/topics/one/port", data=b"x") as resp,
        ):
            assert resp.status == 200
        # Neither: refused with the reason in the events.
        reader, writer = await asyncio.open_connection("127.0.0.1", edge.port)
        try:
            writer.write(b"\x16\x03\x01\x00")
            assert await asyncio.wait_for(reader.read(), 5) == b""
        finally:
            writer.close()
            await writer.wait_closed()
        refused = await edge.events.wait_for(lambda e: e["kind"] == "mux.refused", timeout=5)
        assert "neither an MQTT CONNECT nor an HTTP request" in refused["reason"]
        assert refused["identity"] == "default/dev1"
