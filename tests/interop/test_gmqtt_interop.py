"""MQTT 5 over mutual TLS with gmqtt, an independent asyncio MQTT 5 client.

One edge runs in its own thread; each device may publish and subscribe only under
``devices/{identity}/#``. gmqtt connects with the device's own certificate and
``MQTTv50``, and what it reports is checked: the CONNACK's properties, user
properties and content type carried end to end, a subscription the policy refuses
(SUBACK 0x87), and a client id the edge's rule refuses (CONNACK 0x87).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from certs.quickstart import QuickstartResult, quickstart
from edge.config import EdgeConfig, HostPort, ListenersConfig, TrustConfig
from edge.server import EdgeServer, ServerThread

gmqtt = pytest.importorskip("gmqtt")
from gmqtt.mqtt.constants import MQTTv50  # noqa: E402

pytestmark = [pytest.mark.interop, pytest.mark.timeout(60)]
WAIT = 10.0


@pytest.fixture(scope="module")
def edge(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[ServerThread, QuickstartResult]]:
    base = tmp_path_factory.mktemp("gmqtt")
    qs = quickstart(base / "pki", devices=2)
    config = EdgeConfig(
        state_dir=base / "state",
        listeners=ListenersConfig(mqtt=HostPort(host="127.0.0.1", port=0), https=None, admin=None),
        trust=TrustConfig(store=base / "trust.db", watch_interval=None),
        pki_dir=qs.out,
        policy={
            "mode": "rules",
            "rules": [{"publish": ["devices/{identity}/#"], "subscribe": ["devices/{identity}/#"]}],
        },
    )
    handle = EdgeServer.run_in_thread(config)
    try:
        yield handle, qs
    finally:
        handle.stop()


def _context(qs: QuickstartResult, name: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(qs.out / "root-ca.pem"))
    device: Path = qs.devices_dir
    ctx.load_cert_chain(str(device / f"{name}.pem"), str(device / f"{name}.key"))
    return ctx


class Watcher:
    """gmqtt's callbacks, turned into futures and a queue on the test's loop."""

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.connected: asyncio.Future[tuple[int, dict[str, Any]]] = loop.create_future()
        self.subscribed: asyncio.Queue[list[int]] = asyncio.Queue()
        self.messages: asyncio.Queue[tuple[str, bytes, dict[str, Any]]] = asyncio.Queue()

    def attach(self, client: Any) -> None:
        def on_connect(_c: Any, _flags: int, rc: int, properties: dict[str, Any]) -> None:
            if not self.connected.done():
                self.connected.set_result((rc, properties))

        def on_subscribe(_c: Any, _mid: int, qos: list[int], _properties: Any) -> None:
            self.subscribed.put_nowait(list(qos))

        def on_message(
            _c: Any, topic: str, payload: bytes, _qos: int, props: dict[str, Any]
        ) -> int:
            self.messages.put_nowait((topic, payload, props))
            return 0

        client.on_connect = on_connect
        client.on_subscribe = on_subscribe
        client.on_message = on_message


async def test_gmqtt_round_trip_with_properties(
    edge: tuple[ServerThread, QuickstartResult],
) -> None:
    handle, qs = edge
    name = "dev-00001"
    client = gmqtt.Client(name, receive_maximum=8)
    client.set_config({"reconnect_retries": 0})
    watch = Watcher()
    watch.attach(client)
    await asyncio.wait_for(
        client.connect("127.0.0.1", handle.ports["mqtt"], ssl=_context(qs, name), version=MQTTv50),
        WAIT,
    )
    try:
        rc, props = await asyncio.wait_for(watch.connected, WAIT)
        assert rc == 0
        # The edge states its capabilities in the CONNACK (gmqtt lists each value).
        assert props["topic_alias_maximum"] == [10]
        assert props["maximum_packet_size"] == [1 << 20]
        assert props["shared_subscription_available"] == [1]
        mine = f"devices/{name}/telemetry"
        client.subscribe(mine, qos=1)
        client.subscribe("devices/someone-else/#", qos=1)
        granted = [await asyncio.wait_for(watch.subscribed.get(), WAIT) for _ in range(2)]
        assert granted[0] == [1]
        assert granted[1] == [0x87]  # Not authorized, per filter
        client.publish(
            mine,
            b'{"t": 21.5}',
            qos=1,
            content_type="application/json",
            user_property=[("unit", "C"), ("sensor", "a"), ("unit", "again")],
            message_expiry_interval=60,
        )
        topic, payload, got = await asyncio.wait_for(watch.messages.get(), WAIT)
        assert (topic, payload) == (mine, b'{"t": 21.5}')
        assert got["content_type"] == ["application/json"]
        # User properties arrive unchanged and in order, repeats included.
        assert got["user_property"] == [("unit", "C"), ("sensor", "a"), ("unit", "again")]
        assert 0 < got["message_expiry_interval"][0] <= 60
    finally:
        await asyncio.wait_for(client.disconnect(), WAIT)


async def test_gmqtt_client_id_refused_with_0x87(
    edge: tuple[ServerThread, QuickstartResult],
) -> None:
    handle, qs = edge
    client = gmqtt.Client("not-my-name")
    client.set_config({"reconnect_retries": 0})
    watch = Watcher()
    watch.attach(client)
    with pytest.raises(gmqtt.mqtt.handler.MQTTConnectError) as info:
        await asyncio.wait_for(
            client.connect(
                "127.0.0.1", handle.ports["mqtt"], ssl=_context(qs, "dev-00000"), version=MQTTv50
            ),
            WAIT,
        )
    assert info.value.args == (0x87,)  # gmqtt raises with the CONNACK's reason code
    # gmqtt raises on a refused CONNACK without closing its transport; left to the
    # collector, the socket is reported as unclosed during a later test's setup.
    connection = client._connection
    if connection is not None:
        with contextlib.suppress(OSError):
            await asyncio.wait_for(connection.close(), WAIT)
