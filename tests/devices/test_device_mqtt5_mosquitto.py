"""The device's MQTT 5 mode against a real Mosquitto 2.0 (mTLS, loopback).

Mosquitto speaks MQTT 5 on the same listeners as 3.1.1 (the version is chosen per
CONNECT). The broker here maps the device certificate's CN to its user name
(``use_identity_as_username``) and an ACL file lets ``device-1`` write only under
``devices/device-1/#``, so Mosquitto's own reason codes can be checked: PUBACK and
PUBREC 0x87 for a denied publish, PUBACK 0x10 when nobody listens, CONNACK 0x87 when
anonymous sessions are refused. Its CONNACK announces the limits configured below,
which the device must honour (Receive Maximum 3, Maximum Packet Size 2000). A second
Mosquitto also listens for MQTT over WebSocket (``wss://.../mqtt``), where the same
MQTT 5 session runs inside binary frames.

What Mosquitto 2.0.11 does not do, and so is tested with bytes instead
(``test_device_mqtt5_bytes.py``): it grants every SUBSCRIBE (its ACL file is applied
when messages are delivered, so there is no SUBACK 0x87 to see), sends no Topic Alias
to clients, and closes a taken-over session without a DISCONNECT 0x8E (newer releases
send one).
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from testmodules import load_device_support

from devices.device import (
    DeviceSpec,
    Publish,
    Receive,
    Subscribe,
    Target,
    connected_device,
    run_device,
)
from devices.protocols import ProtocolError, Refused
from devices.protocols.mqtt import MqttOptions
from devices.tlsclient import ConnectionLost
from devices.trace import render
from edge.cli import main
from edge.mqtt.properties import Properties

support = load_device_support()
pytestmark = [pytest.mark.interop, pytest.mark.timeout(30)]

SETTLE = 5.0
V5 = MqttOptions(version=5)
MINE = "devices/device-1"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return support.make_pki(tmp_path_factory.mktemp("pki"), datetime.now(UTC))


def _need_mosquitto() -> None:
    if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
        pytest.skip("mosquitto is not installed")


@pytest.fixture(scope="module")
def broker(pki: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    _need_mosquitto()
    folder = tmp_path_factory.mktemp("mosquitto5")
    acl = folder / "acl"
    acl.write_text(f"user device-1\ntopic readwrite {MINE}/#\n")
    extra = [
        "use_identity_as_username true",
        f"acl_file {acl}",
        "max_packet_size 2000",
        "max_inflight_messages 3",
    ]
    with support.mosquitto(pki, folder, extra=extra) as running:
        yield running


@pytest.fixture(scope="module")
def strict_broker(pki: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Accepts the certificate but no anonymous MQTT session."""
    _need_mosquitto()
    with support.mosquitto(pki, tmp_path_factory.mktemp("strict5"), allow_anonymous=False) as b:
        yield b


@pytest.fixture(scope="module")
def wss_port(pki: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A Mosquitto with a second, WebSocket listener (mTLS too); yields that port."""
    _need_mosquitto()
    port = support.free_port()
    extra = [
        f"listener {port} 127.0.0.1",
        "protocol websockets",
        f"cafile {pki.ca_pem}",
        f"certfile {pki.server.cert}",
        f"keyfile {pki.server.key}",
        "require_certificate true",
    ]
    with support.mosquitto(pki, tmp_path_factory.mktemp("wss5"), extra=extra):
        yield port


@pytest.fixture(autouse=True)
def _no_env_keylog(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SSLKEYLOGFILE", raising=False)


def spec(pki: Any) -> DeviceSpec:
    return DeviceSpec(id="device-1", cert_path=str(pki.device.cert), key_path=str(pki.device.key))


def target(pki: Any, port: int, options: MqttOptions | None = V5) -> Target:
    return Target(url=f"mqtts://127.0.0.1:{port}", ca_pem=pki.ca_pem.read_text(), mqtt=options)


def step(result: Any, name: str) -> Any:
    return [s for s in result.steps if s.name == name]


async def test_connack_shows_the_reason_code_and_mosquittos_limits(pki: Any, broker: Any) -> None:
    options = MqttOptions(version=5, session_expiry=0, user_properties=(("fw", "1.0"),))
    result = await run_device(spec(pki), target(pki, broker.port, options), settle=SETTLE)
    assert (result.outcome, result.protocol) == ("connected", "mqtt5")
    (connack,) = step(result, "mqtt_connack")
    assert connack.detail["reason_code"] == 0
    assert connack.detail["summary"] == "CONNACK 0x00 Success"
    assert connack.detail["properties"] == {
        "receive_maximum": 3,
        "topic_alias_maximum": 10,
        "maximum_packet_size": 2000,
    }
    text = render(result)
    assert "device device-1 -> mqtt5" in text
    assert "properties: receive maximum=3, topic alias maximum=10, maximum packet size=2000" in text


async def test_connack_refusal_0x87(pki: Any, strict_broker: Any) -> None:
    result = await run_device(spec(pki), target(pki, strict_broker.port), settle=SETTLE)
    assert (result.outcome, result.reason) == ("refused", "connack-0x87")
    (connack,) = step(result, "mqtt_connack")
    assert connack.detail["reason_code"] == 0x87
    assert "CONNACK 0x87 Not authorized" in render(result)
    # The same refusal, held: Refused carries the answer itself.
    with pytest.raises(Refused) as info:
        async with connected_device(spec(pki), target(pki, strict_broker.port), settle=SETTLE):
            pass
    assert info.value.ack.reason_code == 0x87
    assert info.value.reason == "connack-0x87"


async def test_mosquittos_publish_reason_codes(pki: Any, broker: Any) -> None:
    async with connected_device(spec(pki), target(pki, broker.port), settle=SETTLE) as dev:
        nobody = await dev.publish(f"{MINE}/nobody", b"x", 1)
        assert (nobody.ok, nobody.reason_code) == (True, 0x10)
        assert nobody.summary == "PUBACK 0x10 No matching subscribers"
        denied = await dev.publish("secret/x", b"x", 1)
        assert (denied.ok, denied.reason, denied.reason_code) == (False, "puback-0x87", 0x87)
        denied2 = await dev.publish("secret/x", b"x", 2)
        assert (denied2.ok, denied2.reason, denied2.reason_code) == (False, "pubrec-0x87", 0x87)
        # A refusal is an answer, not the end of the session.
        ok = await dev.publish(f"{MINE}/nobody", b"x", 2)
        assert ok.ok
        assert ok.summary.endswith("PUBCOMP 0x00 Success")


async def test_a_denied_publish_is_a_refusal_in_the_trace(pki: Any, broker: Any) -> None:
    result = await run_device(
        spec(pki), target(pki, broker.port), actions=[Publish("secret/x", b"x", 1)], settle=SETTLE
    )
    assert (result.outcome, result.reason) == ("refused", "puback-0x87")
    assert "✗ publish" in render(result)
    assert "hint: the server's policy does not allow publishing to this topic" in render(result)


async def test_publish_properties_round_trip(pki: Any, broker: Any) -> None:
    props = Properties(
        content_type="application/json",
        message_expiry_interval=120,
        response_topic=f"{MINE}/reply",
        correlation_data=b"\x00req-1",
        user_properties=[("k", "v1"), ("k", "v2"), ("trace", "abc")],
    )
    async with connected_device(spec(pki), target(pki, broker.port), settle=SETTLE) as dev:
        sub = await dev.subscribe(f"{MINE}/#", 1)
        assert (sub.ok, sub.reason_code, sub.detail["reason_codes"]) == (True, 1, [1])
        ack = await dev.publish(f"{MINE}/data", b"{}", 1, properties=props)
        assert (ack.ok, ack.reason_code) == (True, 0)
        message = await dev.next_message()
    got = message.properties
    assert got is not None
    assert got.content_type == "application/json"
    assert got.response_topic == f"{MINE}/reply"
    assert got.correlation_data == b"\x00req-1"
    assert got.user_properties == [("k", "v1"), ("k", "v2"), ("trace", "abc")]  # order kept
    # The remaining lifetime travels with the message: never more than was given.
    assert got.message_expiry_interval is not None
    assert 0 < got.message_expiry_interval <= 120


async def test_the_trace_shows_message_properties(pki: Any, broker: Any) -> None:
    props = Properties(content_type="text/plain", user_properties=[("k", "v")])
    result = await run_device(
        spec(pki),
        target(pki, broker.port),
        actions=[
            Subscribe(f"{MINE}/#", 1),
            Publish(f"{MINE}/t", b"hello", 1, properties=props),
            Receive(1),
        ],
        settle=SETTLE,
    )
    assert result.outcome == "connected"
    (message,) = step(result, "message")
    assert message.detail["properties"] == {
        "content_type": "text/plain",
        "user_properties": [["k", "v"]],
    }
    assert "properties: content type=text/plain, user property k=v" in render(result)


async def test_the_servers_maximum_packet_size_is_honoured(pki: Any, broker: Any) -> None:
    async with connected_device(spec(pki), target(pki, broker.port), settle=SETTLE) as dev:
        with pytest.raises(ProtocolError) as info:
            await dev.publish(f"{MINE}/big", b"x" * 3000, 1)
        assert info.value.reason == "packet-too-large"
        # Not sent, so Mosquitto did not drop the session for it.
        ack = await dev.publish(f"{MINE}/small", b"x" * 100, 1)
        assert ack.ok


async def test_the_servers_receive_maximum_is_honoured(pki: Any, broker: Any) -> None:
    # Twenty QoS 2 publishes at once against Receive Maximum 3: Mosquitto would end
    # the session (0x93) if the device had more than 3 in flight.
    async with connected_device(spec(pki), target(pki, broker.port), settle=SETTLE) as dev:
        acks = await asyncio.gather(
            *(dev.publish(f"{MINE}/n", str(i).encode(), 2) for i in range(20))
        )
    assert [a.ok for a in acks] == [True] * 20


async def test_topic_aliases_sent_by_the_device(pki: Any, broker: Any) -> None:
    options = MqttOptions(version=5, topic_aliases=True)
    async with (
        connected_device(spec(pki), target(pki, broker.port), settle=SETTLE) as listener,
        connected_device(spec_two(pki), target(pki, broker.port, options), settle=SETTLE) as dev,
    ):
        assert (await listener.subscribe(f"{MINE}/#", 1)).ok
        for i in range(3):
            ack = await dev.publish(f"{MINE}/aliased", f"m{i}".encode(), 1)
            assert ack.ok, ack.summary
        got = [await listener.next_message() for _ in range(3)]
    # Mosquitto resolved the alias: the listener sees the full topic every time.
    assert [(m.topic, m.payload) for m in got] == [
        (f"{MINE}/aliased", f"m{i}".encode()) for i in range(3)
    ]


def spec_two(pki: Any) -> DeviceSpec:
    """device-1's certificate under another client id (a second session of the same user)."""
    return DeviceSpec(
        id="device-1b",
        cert_path=str(pki.device.cert),
        key_path=str(pki.device.key),
        client_id="device-1-publisher",
    )


async def test_a_taken_over_session_ends_as_mosquitto_2011_ends_it(pki: Any, broker: Any) -> None:
    async with (
        connected_device(spec(pki), target(pki, broker.port), settle=SETTLE) as first,
        connected_device(spec(pki), target(pki, broker.port), settle=SETTLE),
    ):
        # 2.0.11 closes the old connection without DISCONNECT 0x8E; a later
        # Mosquitto sends it, and the device then raises ServerDisconnect.
        with pytest.raises((ConnectionLost, ProtocolError)) as info:
            await first.next_message()
    assert info.value.reason in ("closed-by-edge", "disconnect-0x8e")


def test_cli_shows_the_connack_and_its_properties(
    pki: Any, broker: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        "device",
        "connect",
        "--url",
        f"mqtts://127.0.0.1:{broker.port}",
        "--cert",
        str(pki.device.cert),
        "--key",
        str(pki.device.key),
        "--ca",
        str(pki.ca_pem),
        "--mqtt-version",
        "5",
        "--user-property",
        "fw=1.0",
        "--topic-alias-maximum",
        "4",
        "--qos",
        "1",
        "--publish",
        "secret/x",
        "hi",
    ]
    assert main(argv) == 1
    out = capsys.readouterr().out
    assert "✓ MQTT CONNACK                 CONNACK 0x00 Success" in out
    assert "properties: receive maximum=3, topic alias maximum=10, maximum packet size=2000" in out
    assert "✗ publish                      secret/x -> PUBACK 0x87 Not authorized" in out
    assert "result: refused: puback-0x87" in out


def test_cli_usage_errors(pki: Any, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["device", "connect", "--url", "mqtts://127.0.0.1:1", "--ca", str(pki.ca_pem)]
    assert main([*base, "--content-type", "x"]) == 2
    assert "need --mqtt-version 5" in capsys.readouterr().err
    assert main([*base, "--mqtt-version", "5", "--receive-maximum", "0"]) == 2
    assert "Receive Maximum 0 is not allowed" in capsys.readouterr().err
    assert main([*base, "--mqtt-version", "5", "--user-property", "novalue"]) == 2
    assert "expected KEY=VALUE" in capsys.readouterr().err
    https = ["device", "connect", "--url", "https://127.0.0.1:1", "--ca", str(pki.ca_pem)]
    assert main([*https, "--mqtt-version", "5"]) == 2
    assert "needs an MQTT URL" in capsys.readouterr().err


async def test_mqtt5_over_websocket(pki: Any, wss_port: int) -> None:
    target = Target(url=f"wss://127.0.0.1:{wss_port}/mqtt", ca_pem=pki.ca_pem.read_text(), mqtt=V5)
    props = Properties(user_properties=[("over", "ws")])
    result = await run_device(
        spec(pki),
        target,
        actions=[Subscribe("a/#", 1), Publish("a/b", b"hi", 1, properties=props), Receive(1)],
        settle=SETTLE,
    )
    assert (result.outcome, result.protocol) == ("connected", "wss-mqtt5")
    (accept,) = step(result, "ws_accept")
    assert accept.detail["reason_code"] == 0
    assert "CONNACK 0x00 Success" in accept.detail["summary"]
    (published,) = step(result, "publish")
    assert published.detail["reason_code"] == 0
    (message,) = step(result, "message")
    assert message.detail["properties"] == {"user_properties": [["over", "ws"]]}
