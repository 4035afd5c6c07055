"""The device HTTP API over loopback TCP, with a fixed session and the real core."""

from __future__ import annotations

import asyncio
import json
from types import ModuleType
from typing import Any

import aiohttp
import pytest

from edge.core.policy import Policy
from edge.core.router import Message
from edge.http.device import DeviceApiConfig

pytestmark = pytest.mark.timeout(20)


class Collector:
    """A router subscriber that hands messages to a queue (tests wait on it)."""

    def __init__(self) -> None:
        self.subscriber_id = "test:collector"
        self.queue: asyncio.Queue[tuple[Message, int, bool]] = asyncio.Queue()

    def deliver(self, message: Message, qos: int, retained: bool) -> None:
        self.queue.put_nowait((message, qos, retained))


async def test_publish_reaches_a_router_subscriber(harness: ModuleType) -> None:
    async with harness.EdgeHarness() as edge, aiohttp.ClientSession() as http:
        collector = Collector()
        assert edge.core.subscribe(collector, "devices/dev1/#", 1, None) == 1
        async with http.post(
            f"{edge.base_url}/topics/devices/dev1/temp?qos=1", data=b"21.5"
        ) as resp:
            assert resp.status == 200
            body = await resp.json()
        assert body["topic"] == "devices/dev1/temp"
        assert body["qos"] == 1
        assert body["retain"] is False
        assert body["delivered"] == 1
        assert isinstance(body["message_id"], int)
        message, qos, retained = await asyncio.wait_for(collector.queue.get(), 5)
        assert (message.topic, message.payload, qos, retained) == (
            "devices/dev1/temp",
            b"21.5",
            1,
            False,
        )
        assert message.protocol == "http"
        assert message.origin == "default/dev1"


async def test_percent_encoded_topic_and_binary_body(harness: ModuleType) -> None:
    async with harness.EdgeHarness() as edge, aiohttp.ClientSession() as http:
        collector = Collector()
        edge.core.subscribe(collector, "a/é b", 0, None)
        url = f"{edge.base_url}/topics/a%2F%C3%A9%20b"
        async with http.post(url, data=b"\xff\x00") as resp:
            assert resp.status == 200, await resp.text()
        message, _, _ = await asyncio.wait_for(collector.queue.get(), 5)
        assert message.topic == "a/é b"
        assert message.payload == b"\xff\x00"


async def test_retained_read(harness: ModuleType) -> None:
    async with harness.EdgeHarness() as edge, aiohttp.ClientSession() as http:
        async with http.get(f"{edge.base_url}/topics/state/lamp") as resp:
            assert resp.status == 404
            assert resp.content_type == "application/problem+json"
        async with http.post(
            f"{edge.base_url}/topics/state/lamp?retain=true&qos=1", data=b"on"
        ) as resp:
            assert resp.status == 200
            assert (await resp.json())["retain"] is True
        async with http.get(f"{edge.base_url}/topics/state/lamp") as resp:
            assert resp.status == 200
            assert resp.content_type == "application/octet-stream"
            assert resp.headers["X-Edgesim-QoS"] == "1"
            assert resp.headers["X-Edgesim-Retain"] == "true"
            assert await resp.read() == b"on"


@pytest.mark.parametrize(
    ("path", "reason_part"),
    [
        ("/topics/a/%2B/b", "wildcards"),
        ("/topics/a/%23", "wildcards"),
        ("/topics/%FF%FE", "not valid UTF-8"),
        ("/topics/a%00b", "NUL"),
        ("/topics/ok?qos=2", "qos must be 0|1"),
        ("/topics/ok?retain=maybe", "retain must be"),
    ],
)
async def test_bad_publish_requests_are_400(
    harness: ModuleType, path: str, reason_part: str
) -> None:
    async with harness.EdgeHarness() as edge, aiohttp.ClientSession() as http:
        async with http.post(edge.base_url + path, data=b"x") as resp:
            assert resp.status == 400
            assert resp.content_type == "application/problem+json"
            problem = await resp.json(content_type=None)
        assert reason_part in problem["detail"]
        event = edge.events.query(kind="http.request")[-1]
        assert event["status"] == 400
        assert event["outcome"] == "refused"
        assert reason_part in event["reason"]
        assert event["identity"] == "default/dev1"


async def test_topic_over_the_limit_is_400(harness: ModuleType) -> None:
    config = DeviceApiConfig(max_topic_bytes=16)
    async with (
        harness.EdgeHarness(config=config) as edge,
        aiohttp.ClientSession() as http,
        http.post(f"{edge.base_url}/topics/{'x' * 17}", data=b"x") as resp,
    ):
        assert resp.status == 400
        assert "more than the limit of 16" in (await resp.json(content_type=None))["detail"]


async def test_oversized_body_is_413_with_and_without_length(harness: ModuleType) -> None:
    config = DeviceApiConfig(max_body_bytes=10)
    async with harness.EdgeHarness(config=config) as edge, aiohttp.ClientSession() as http:
        async with http.post(f"{edge.base_url}/topics/t", data=b"x" * 11) as resp:
            assert resp.status == 413
            assert resp.content_type == "application/problem+json"

        async def chunks() -> Any:
            for _ in range(3):
                yield b"x" * 6

        async with http.post(f"{edge.base_url}/topics/t", data=chunks()) as resp:
            assert resp.status == 413
        async with http.post(f"{edge.base_url}/topics/t", data=b"x" * 10) as resp:
            assert resp.status == 200


async def test_unknown_path_404_wrong_method_405(harness: ModuleType) -> None:
    async with harness.EdgeHarness() as edge, aiohttp.ClientSession() as http:
        async with http.get(f"{edge.base_url}/nothing/here") as resp:
            assert resp.status == 404
            assert resp.content_type == "application/problem+json"
            assert (await resp.json(content_type=None))["status"] == 404
        async with http.delete(f"{edge.base_url}/topics/a") as resp:
            assert resp.status == 405
            assert "GET" in resp.headers["Allow"]
            assert resp.content_type == "application/problem+json"
        async with http.get(f"{edge.base_url}/ws") as resp:
            assert resp.status == 426


async def test_policy_denial_is_403_with_reason(harness: ModuleType) -> None:
    async with (
        harness.EdgeHarness(policy=Policy.default()) as edge,
        aiohttp.ClientSession() as http,
    ):
        async with http.post(f"{edge.base_url}/topics/devices/other/x", data=b"1") as resp:
            assert resp.status == 403
            problem = await resp.json(content_type=None)
        assert "no publish rule" in problem["detail"]
        assert problem["topic"] == "devices/other/x"
        denied = edge.events.query(kind="policy.denied")
        assert denied[-1]["action"] == "publish"
        assert edge.events.query(kind="http.request")[-1]["outcome"] == "denied"
        async with http.get(f"{edge.base_url}/topics/devices/other/x") as resp:
            assert resp.status == 403
        async with http.get(f"{edge.base_url}/subscribe?topic=devices/other/%23") as resp:
            assert resp.status == 403
        # Its own subtree is allowed.
        async with http.post(f"{edge.base_url}/topics/devices/dev1/x", data=b"1") as resp:
            assert resp.status == 200


async def read_sse_event(content: aiohttp.StreamReader) -> dict[str, str]:
    """Read one Server-Sent Event (lines up to a blank line); comments are skipped."""
    fields: dict[str, str] = {}
    while True:
        line = (await content.readline()).decode().rstrip("\n")
        if not line:
            if fields:
                return fields
            continue
        if line.startswith(":"):
            fields.setdefault(":comment", line)
            continue
        name, _, value = line.partition(": ")
        fields[name] = value


async def test_sse_subscribe_streams_retained_then_live(harness: ModuleType) -> None:
    async with harness.EdgeHarness() as edge, aiohttp.ClientSession() as http:
        async with http.post(
            f"{edge.base_url}/topics/home/door?retain=true", data=b"closed"
        ) as resp:
            assert resp.status == 200
        async with http.get(f"{edge.base_url}/subscribe?topic=home/%23") as stream:
            assert stream.status == 200
            assert stream.content_type == "text/event-stream"
            hello = await asyncio.wait_for(read_sse_event(stream.content), 5)
            assert hello[":comment"].startswith(": subscribed home/#")
            retained = await asyncio.wait_for(read_sse_event(stream.content), 5)
            assert retained["event"] == "message"
            data = json.loads(retained["data"])
            assert data == {
                "topic": "home/door",
                "payload": "closed",
                "encoding": "utf-8",
                "qos": 0,
                "retain": True,
            }
            async with http.post(f"{edge.base_url}/topics/home/raw", data=b"\xff") as resp:
                assert resp.status == 200
                assert (await resp.json())["delivered"] == 1
            live = await asyncio.wait_for(read_sse_event(stream.content), 5)
            assert live["id"] == "2"
            assert json.loads(live["data"])["encoding"] == "base64"
            assert json.loads(live["data"])["payload"] == "/w=="
        # The device went away: its subscription is gone.
        closed = await edge.events.wait_for(lambda e: e["kind"] == "http.stream_closed", timeout=5)
        assert closed["reason"] == "device disconnected"
        assert edge.core.router.subscription_count == 0


async def test_sse_needs_a_valid_filter(harness: ModuleType) -> None:
    async with harness.EdgeHarness() as edge, aiohttp.ClientSession() as http:
        async with http.get(f"{edge.base_url}/subscribe") as resp:
            assert resp.status == 400
        async with http.get(f"{edge.base_url}/subscribe?topic=a/b%23") as resp:
            assert resp.status == 400
            assert "wildcard #" in (await resp.json(content_type=None))["detail"]


async def test_sse_slow_reader_is_ended(harness: ModuleType) -> None:
    config = DeviceApiConfig(max_queue=3)
    async with (
        harness.EdgeHarness(config=config) as edge,
        aiohttp.ClientSession() as http,
        http.get(f"{edge.base_url}/subscribe?topic=t") as stream,
    ):
        await asyncio.wait_for(read_sse_event(stream.content), 5)
        # Publishing synchronously fills the queue before the stream task runs.
        for i in range(10):
            edge.core.publish(Message("t", str(i).encode()), None)
        seen = []
        while True:
            event = await asyncio.wait_for(read_sse_event(stream.content), 5)
            seen.append(event["event"])
            if event["event"] == "error":
                assert "too slow" in json.loads(event["data"])["reason"]
                break
        assert seen == ["message", "message", "message", "error"]


async def test_a_silent_connection_is_closed_after_the_head_timeout(harness: ModuleType) -> None:
    config = DeviceApiConfig(request_head_timeout=0.2)
    async with harness.EdgeHarness(config=config) as edge:
        reader, writer = await asyncio.open_connection("127.0.0.1", edge.port)
        try:
            writer.write(b"GET /topics/a HTTP/1.1\r\nHost: x\r\n")  # never finished
            assert await asyncio.wait_for(reader.read(), 5) == b""
        finally:
            writer.close()
            await writer.wait_closed()
        event = edge.events.query(kind="http.request")[-1]
        assert event["status"] == 408
        assert "no complete request head within 0.2 s" in event["reason"]


async def test_keep_alive_connection_serves_many_requests(harness: ModuleType) -> None:
    connector = aiohttp.TCPConnector(limit=1)
    async with harness.EdgeHarness() as edge, aiohttp.ClientSession(connector=connector) as http:
        ids = []
        for i in range(5):
            async with http.post(f"{edge.base_url}/topics/k/{i}", data=b"v") as resp:
                ids.append((await resp.json())["message_id"])
        assert ids == sorted(ids)
        assert len(set(ids)) == 5
        # One TCP connection carried them all.
        assert edge.frontend.open_connections == 1


@pytest.mark.timeout(10)
async def test_closing_the_frontend_ends_sse_streams_without_waiting(harness: ModuleType) -> None:
    # A shutdown timeout far over the test's own: closing must not wait for it.
    config = DeviceApiConfig(shutdown_timeout=60)
    edge = harness.EdgeHarness(config=config)
    await edge.__aenter__()
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{edge.base_url}/subscribe?topic=t") as stream,
        ):
            await asyncio.wait_for(read_sse_event(stream.content), 5)
            await edge.frontend.close()
            event = await asyncio.wait_for(read_sse_event(stream.content), 5)
            assert event["event"] == "error"
            assert json.loads(event["data"])["reason"] == "edge shutting down"
    finally:
        await edge.__aexit__(None, None, None)
    closed = edge.events.query(kind="http.stream_closed")
    assert closed[-1]["reason"] == "edge shutting down"


async def test_publish_headers_become_mqtt5_metadata(harness: ModuleType) -> None:
    headers = [
        ("Content-Type", "application/json"),
        ("Message-Expiry", "60"),
        ("Response-Topic", "devices/dev1/reply"),
        ("Correlation-Data", "AAE="),
        ("MQTT-User-Property", "b=2"),
        ("MQTT-User-Property", "a=1"),
    ]
    async with harness.EdgeHarness() as edge, aiohttp.ClientSession() as http:
        collector = Collector()
        edge.core.subscribe(collector, "devices/dev1/#", 0, None)
        async with http.post(
            f"{edge.base_url}/topics/devices/dev1/m", data=b"{}", headers=headers
        ) as resp:
            assert resp.status == 200
        message, _, _ = await asyncio.wait_for(collector.queue.get(), 5)
        meta = message.meta
        assert meta is not None
        assert meta.content_type == "application/json"
        assert meta.response_topic == "devices/dev1/reply"
        assert meta.correlation_data == b"\x00\x01"
        assert meta.user_properties == [("b", "2"), ("a", "1")]
        assert meta.expires_at is not None
        async with http.post(
            f"{edge.base_url}/topics/devices/dev1/m", data=b"x", headers={"Message-Expiry": "x"}
        ) as resp:
            assert resp.status == 400


async def test_retained_read_and_sse_give_the_metadata_back(harness: ModuleType) -> None:
    headers = [
        ("Content-Type", "text/plain"),
        ("Correlation-Data", "AAE="),
        ("MQTT-User-Property", "b=2"),
        ("MQTT-User-Property", "a=1"),
    ]
    async with harness.EdgeHarness() as edge, aiohttp.ClientSession() as http:
        url = f"{edge.base_url}/topics/devices/dev1/state"
        async with http.post(f"{url}?retain=true", data=b"on", headers=headers) as resp:
            assert resp.status == 200
        async with http.get(url) as resp:
            assert resp.status == 200
            assert await resp.read() == b"on"
            assert resp.headers["Content-Type"] == "text/plain"
            assert resp.headers["Correlation-Data"] == "AAE="
            assert resp.headers.getall("MQTT-User-Property") == ["b=2", "a=1"]
        sub_url = f"{edge.base_url}/subscribe?topic=devices/dev1/%23"
        async with http.get(sub_url) as sse:
            assert sse.status == 200
            assert (await sse.content.readline()).startswith(b": subscribed")
            data = None
            while data is None:
                line = (await asyncio.wait_for(sse.content.readline(), 5)).decode()
                if line.startswith("data: "):
                    data = json.loads(line.removeprefix("data: "))
            assert data["content_type"] == "text/plain"
            assert data["user_properties"] == [["b", "2"], ["a", "1"]]
