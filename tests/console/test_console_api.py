"""The admin API routes behind the console: event and topic streams, devices, publish, files."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from edge.core.events import EventLog
from edge.http.admin import make_admin_app, start_admin
from edge.trust.propagation import TrustService
from edge.trust.sqlite import SqliteTrustStore
from testkit.pytest_plugin import DeviceFailure

pytestmark = pytest.mark.timeout(60)
TOKEN = "t0ken"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def _next_data(response: aiohttp.ClientResponse) -> dict[str, Any]:
    """The next ``data:`` line of an SSE response, parsed."""
    while True:
        line = await asyncio.wait_for(response.content.readline(), 10)
        assert line, "the stream ended"
        if line.startswith(b"data: "):
            data: dict[str, Any] = json.loads(line[6:])
            return data


async def test_the_event_stream_filters_resumes_and_ends_on_shutdown(tmp_path: Path) -> None:
    events = EventLog(log_events=False)
    trust = TrustService(SqliteTrustStore(tmp_path / "store.db"), events=events)
    await trust.start()
    runner, port = await start_admin(make_admin_app(trust, events, token=TOKEN), "127.0.0.1", 0)
    base = f"http://127.0.0.1:{port}"
    try:
        first = events.emit("tls.refused", "refused", identity="default/a", alert="unknown_ca")
        async with aiohttp.ClientSession() as http:
            async with http.get(base + "/v1/events/stream") as r:
                assert r.status == 401
            url = base + "/v1/events/stream?kind=tls.&outcome=refused"
            async with http.get(url, headers=AUTH) as r:
                assert r.headers["Content-Type"] == "text/event-stream"
                assert (await _next_data(r))["id"] == first  # history first
                events.emit("tls.accepted", "accepted", identity="default/b")  # filtered out
                second = events.emit("tls.refused", "refused", identity="default/c")
                assert (await _next_data(r))["id"] == second  # then live
            # Resuming after an id skips what was seen.
            async with http.get(url, headers={**AUTH, "Last-Event-ID": str(first)}) as r:
                assert (await _next_data(r))["id"] == second
                # An open stream does not hold up the listener's shutdown.
                await asyncio.wait_for(runner.cleanup(), 10)
    finally:
        await runner.cleanup()
        await trust.close()


async def test_the_event_stream_takes_several_kinds_and_live_only(tmp_path: Path) -> None:
    events = EventLog(log_events=False)
    trust = TrustService(SqliteTrustStore(tmp_path / "store.db"), events=events)
    await trust.start()
    runner, port = await start_admin(make_admin_app(trust, events, token=TOKEN), "127.0.0.1", 0)
    url = f"http://127.0.0.1:{port}/v1/events/stream?kind=trust.,connection.closed"
    try:
        old = events.emit("connection.closed", "closed", identity="default/old")
        async with aiohttp.ClientSession(headers=AUTH) as http:
            events.emit("tls.accepted", "accepted", identity="default/skipped")
            # History holds both kinds (the trust service's start, the closed
            # connection) and nothing else.
            expected = [
                e["id"]
                for e in events.query()
                if e["kind"].startswith("trust.") or e["kind"] == "connection.closed"
            ]
            assert old in expected
            assert len(expected) < events.last_id
            async with http.get(url) as r:
                assert [(await _next_data(r))["id"] for _ in expected] == expected
            # since=now: live events only; the list keeps both kinds, drops the rest.
            async with http.get(url + "&since=now") as r:
                await asyncio.wait_for(r.content.readline(), 10)  # ": open": listening
                events.emit("tls.accepted", "accepted", identity="default/a")
                bound = events.emit("trust.bound", "info", host="h")
                closed = events.emit("connection.closed", "closed", identity="default/b")
                assert (await _next_data(r))["id"] == bound
                assert (await _next_data(r))["id"] == closed
            async with http.get(url + "&since=later") as r:
                assert r.status == 400
                assert "since must be an event id or 'now'" in (await r.json())["detail"]
    finally:
        await runner.cleanup()
        await trust.close()


async def test_devices_publish_and_topic_stream_on_a_running_edge(edge: Any, device: Any) -> None:
    dev = device("dev-api", protocol="mqtt")
    assert dev.subscribe("devices/dev-api/#").ok
    base = edge.admin_url
    headers = {"Authorization": f"Bearer {edge.admin_token}"}
    async with aiohttp.ClientSession(headers=headers) as http:
        async with http.get(base + "/v1/devices") as r:
            (listed,) = (await r.json())["devices"]
        assert listed["identity"] == "default/dev-api"
        assert listed["protocol"] == "mqtt"
        assert listed["subscriptions"] == {"devices/dev-api/#": 0}
        assert listed["certificate"]["subject"] == "CN=dev-api"
        async with http.get(base + "/v1/topics/stream?filter=devices/%23") as stream:
            assert stream.status == 200
            await asyncio.wait_for(stream.content.readline(), 10)  # ": open": subscribed
            body = {"topic": "devices/dev-api/cmd", "payload": "hi", "qos": 1}
            async with http.post(base + "/v1/publish", json=body) as r:
                assert await r.json() == {"ok": True, "delivered": 2, "reason": ""}
            message = await _next_data(stream)
        assert message["topic"] == "devices/dev-api/cmd"
        assert message["payload"] == "hi"
        assert message["origin"] == "admin"
        assert (await dev.aio.receive(timeout=5)).payload == b"hi"
        for bad in (
            {"topic": "a/#"},
            {"topic": "a", "qos": 3},
            {"topic": "a", "payload": 1},
            # Found by schemathesis: JSON true is not the QoS 1, a lone surrogate is
            # not UTF-8 (was a 500), NUL is not in a topic, 64 KiB is MQTT's limit.
            {"topic": "a", "qos": True},
            {"topic": "a", "payload": "\ud800"},
            {"topic": "a\u0000b"},
            {"topic": "t" * 65536},
        ):
            async with http.post(base + "/v1/publish", json=bad) as r:
                assert r.status == 400, bad
        async with http.post(base + "/v1/devices/999999/disconnect") as r:
            assert r.status == 404
        async with http.post(base + f"/v1/devices/{listed['connection_id']}/disconnect") as r:
            assert (await r.json())["ok"] is True
        await edge.wait_for_event_async(kind="connection.closed", identity="default/dev-api")
        async with http.get(base + "/v1/events?kind=admin.disconnected") as r:
            (done,) = (await r.json())["events"]
        assert done["admin"] == "token"  # who did it (or "certificate CN=...")
        async with http.get(base + "/v1/devices") as r:
            assert (await r.json())["devices"] == []


async def test_console_files_are_served_with_a_strict_policy(edge: Any) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(edge.admin_url + "/ui", allow_redirects=False) as r:
            assert r.status == 302
            assert r.headers["Location"] == "/ui/"
        async with http.get(edge.admin_url + "/ui/") as r:
            assert r.status == 200
            assert r.content_type == "text/html"
            assert "script-src 'self'" in r.headers["Content-Security-Policy"]
            assert "console.js" in await r.text()
        async with http.get(edge.admin_url + "/ui/console.js") as r:
            assert r.content_type == "text/javascript"
            assert "innerHTML" not in (await r.text()).replace(
                "nothing is ever set with innerHTML", ""
            )
        # Only the console's files: not the package's other files, not a path out of it
        # (which the client normalizes to /admin.py: an API path, so the token is asked).
        for name, status in (("__init__.py", 404), ("missing.js", 404), ("../admin.py", 401)):
            async with http.get(edge.admin_url + "/ui/" + name) as r:
                assert r.status == status, name


async def test_disconnecting_an_mqtt5_device_says_administrative_action(
    edge: Any, device: Any
) -> None:
    dev = device("dev-v5", protocol="mqtt", mqtt_version=5)
    headers = {"Authorization": f"Bearer {edge.admin_token}"}
    async with aiohttp.ClientSession(headers=headers) as http:
        async with http.get(edge.admin_url + "/v1/devices") as r:
            (listed,) = (await r.json())["devices"]
        assert listed["mqtt_protocol_level"] == 5
        url = edge.admin_url + f"/v1/devices/{listed['connection_id']}/disconnect"
        async with http.post(url) as r:
            assert r.status == 200
    with pytest.raises(DeviceFailure) as caught:
        await dev.aio.receive(timeout=10)
    assert caught.value.reason == "disconnect-0x98", caught.value
