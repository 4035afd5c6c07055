"""MQTT 5 over mutual TLS with clients nobody here wrote: paho-mqtt 2.x and mosquitto 2.

One edge (real TLS, trust store and broker) runs in its own thread with a rules policy:
each device publishes and subscribes under ``devices/{identity}/#``, and every device
may use ``jobs/#`` (for shared subscriptions). The client-id rule is the default
(must equal the certificate's name), so a wrong client id meets CONNACK 0x87.
"""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import threading
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from certs.quickstart import QuickstartResult, quickstart
from edge.config import EdgeConfig, HostPort, ListenersConfig, TrustConfig
from edge.server import EdgeServer, ServerThread

pytestmark = pytest.mark.interop

WAIT = 10.0


@dataclass
class Edge:
    """The running edge and its PKI."""

    handle: ServerThread
    qs: QuickstartResult
    port: int
    https: int

    def device(self, n: int) -> tuple[Path, Path]:
        name = f"dev-{n:05d}"
        return self.qs.devices_dir / f"{name}.pem", self.qs.devices_dir / f"{name}.key"


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    base = tmp_path_factory.mktemp("interop5")
    qs = quickstart(base / "pki", devices=3)
    policy = {
        "mode": "rules",
        "rules": [
            {
                "publish": ["devices/{identity}/#", "jobs/#"],
                "subscribe": ["devices/{identity}/#", "jobs/#"],
            }
        ],
    }
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
        policy=policy,
    )
    handle = EdgeServer.run_in_thread(config)
    try:
        yield Edge(handle=handle, qs=qs, port=handle.ports["mqtt"], https=handle.ports["https"])
    finally:
        handle.stop()


# --- paho-mqtt ----------------------------------------------------------------------------


class Paho:
    """A paho-mqtt 2.x MQTTv5 client over mTLS whose callbacks land in thread-safe state."""

    def __init__(
        self,
        edge: Edge,
        device: int,
        client_id: str | None = None,
        protocol: int = 5,
        transport: str = "tcp",
        port: int | None = None,
        **props: Any,
    ):
        import paho.mqtt.client as mqtt
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        self.name = f"dev-{device:05d}"
        cert, key = edge.device(device)
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=self.name if client_id is None else client_id,
            protocol=mqtt.MQTTv5 if protocol == 5 else mqtt.MQTTv311,
            transport=transport,  # type: ignore[arg-type]
        )
        if transport == "websockets":
            self.client.ws_set_options(path="/mqtt")
        self.client.tls_set(
            ca_certs=str(edge.qs.root_cert),
            certfile=str(cert),
            keyfile=str(key),
            tls_version=ssl.PROTOCOL_TLS_CLIENT,
        )
        self.connected = threading.Event()
        self.connack: tuple[int, Any] = (-1, None)
        self.acks: dict[int, tuple[int, Any]] = {}
        self.acked = threading.Condition()
        self.messages: list[Any] = []
        self.got = threading.Condition()
        self.client.on_connect = self._on_connect
        self.client.on_publish = self._on_publish
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.on_disconnect = self._on_disconnect
        self.disconnected = threading.Event()
        self.disconnect: tuple[int, Any] = (-1, None)
        connect_props = None
        if protocol == 5:
            connect_props = Properties(PacketTypes.CONNECT)
            for key_, value in props.items():
                setattr(connect_props, key_, value)
        if port is None:
            port = edge.https if transport == "websockets" else edge.port
        self.client.connect("127.0.0.1", port, keepalive=30, properties=connect_props)
        self.client.loop_start()

    def _on_connect(self, c: Any, u: Any, flags: Any, reason: Any, props: Any = None) -> None:
        self.connack = (int(reason.value), props)
        self.connected.set()

    def _on_disconnect(self, c: Any, u: Any, flags: Any, reason: Any, props: Any = None) -> None:
        self.disconnect = (int(reason.value), props)
        self.disconnected.set()

    def _ack(self, mid: int, value: tuple[int, Any]) -> None:
        with self.acked:
            self.acks[mid] = value
            self.acked.notify_all()

    def _on_publish(self, c: Any, u: Any, mid: int, reason: Any, props: Any = None) -> None:
        self._ack(mid, (int(reason.value), props))

    def _on_subscribe(self, c: Any, u: Any, mid: int, reasons: Any, props: Any = None) -> None:
        self._ack(mid, ([int(r.value) for r in reasons], props))  # type: ignore[arg-type]

    def _on_message(self, c: Any, u: Any, msg: Any) -> None:
        with self.got:
            self.messages.append(msg)
            self.got.notify_all()

    def wait_ack(self, mid: int) -> tuple[Any, Any]:
        with self.acked:
            assert self.acked.wait_for(lambda: mid in self.acks, WAIT), f"no ack for {mid}"
            return self.acks[mid]

    def wait_messages(self, count: int) -> list[Any]:
        with self.got:
            assert self.got.wait_for(lambda: len(self.messages) >= count, WAIT), self.messages
            return list(self.messages)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def clients() -> Iterator[list[Paho]]:
    made: list[Paho] = []
    yield made
    for client in made:
        client.close()


def _props(**values: Any) -> Any:
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    props = Properties(PacketTypes.PUBLISH)
    for key, value in values.items():
        setattr(props, key, value)
    return props


@pytest.mark.timeout(60)
def test_paho_v5_connack_properties_metadata_and_reason_codes(
    edge: Edge, clients: list[Paho]
) -> None:
    pytest.importorskip("paho.mqtt.client")
    dev = Paho(edge, 0)
    clients.append(dev)
    assert dev.connected.wait(WAIT)
    code, props = dev.connack
    assert code == 0
    assert props.ReceiveMaximum == 100
    assert props.TopicAliasMaximum == 10
    assert props.SharedSubscriptionAvailable == 1
    topic = f"devices/{dev.name}/{uuid.uuid4().hex}"
    info = dev.client.subscribe(topic, qos=1)
    assert dev.wait_ack(info[1])[0] == [1]
    user = [("trace", "1"), ("unit", "°C"), ("trace", "2")]
    info = dev.client.publish(
        topic,
        b"21.5",
        qos=1,
        properties=_props(
            UserProperty=user,
            ContentType="text/plain",
            ResponseTopic=f"devices/{dev.name}/reply",
            CorrelationData=b"\x00\x01",
            MessageExpiryInterval=120,
        ),
    )
    assert dev.wait_ack(info.mid)[0] == 0
    (msg,) = dev.wait_messages(1)
    assert msg.payload == b"21.5"
    assert msg.properties.UserProperty == user
    assert msg.properties.ContentType == "text/plain"
    assert msg.properties.CorrelationData == b"\x00\x01"
    assert 0 < msg.properties.MessageExpiryInterval <= 120
    # Outside the device's subtree: PUBACK 0x87 with the policy's reason.
    info = dev.client.publish("devices/dev-00001/x", b"no", qos=1)
    code, ack_props = dev.wait_ack(info.mid)
    assert code == 0x87
    assert "devices/dev-00001/x" in ack_props.ReasonString
    info = dev.client.subscribe([("devices/dev-00001/#", 1), (f"devices/{dev.name}/z", 0)])
    assert dev.wait_ack(info[1])[0] == [0x87, 0]


@pytest.mark.timeout(60)
def test_paho_v5_over_wss_reason_codes_and_properties(edge: Edge, clients: list[Paho]) -> None:
    pytest.importorskip("paho.mqtt.client")
    dev = Paho(edge, 0, transport="websockets")
    clients.append(dev)
    assert dev.connected.wait(WAIT)
    code, props = dev.connack
    assert code == 0
    assert props.TopicAliasMaximum == 10
    topic = f"devices/{dev.name}/wss/{uuid.uuid4().hex}"
    info = dev.client.subscribe(topic, qos=1)
    assert dev.wait_ack(info[1])[0] == [1]
    info = dev.client.publish(topic, b"w", qos=1, properties=_props(UserProperty=[("k", "v")]))
    assert dev.wait_ack(info.mid)[0] == 0
    (msg,) = dev.wait_messages(1)
    assert msg.properties.UserProperty == [("k", "v")]
    info = dev.client.publish("devices/dev-00001/x", b"no", qos=1)
    assert dev.wait_ack(info.mid)[0] == 0x87


@pytest.mark.timeout(60)
def test_paho_v5_on_the_single_port_that_serves_mqtt_and_https(
    edge: Edge, clients: list[Paho]
) -> None:
    pytest.importorskip("paho.mqtt.client")
    dev = Paho(edge, 1, port=edge.handle.ports["multi"])
    clients.append(dev)
    assert dev.connected.wait(WAIT)
    assert dev.connack[0] == 0
    assert dev.connack[1].ReceiveMaximum == 100
    info = dev.client.publish("devices/dev-00000/x", b"no", qos=1)
    code, props = dev.wait_ack(info.mid)
    assert code == 0x87
    assert "devices/dev-00000/x" in props.ReasonString


@pytest.mark.timeout(60)
def test_paho_v5_wrong_client_id_gets_0x87_with_the_rule(edge: Edge, clients: list[Paho]) -> None:
    pytest.importorskip("paho.mqtt.client")
    dev = Paho(edge, 1, client_id="not-me")
    clients.append(dev)
    assert dev.connected.wait(WAIT)
    code, props = dev.connack
    assert code == 0x87
    assert "must equal the identity 'dev-00001'" in props.ReasonString


@pytest.mark.timeout(60)
def test_paho_v5_shared_subscription_topic_alias_and_receive_maximum(
    edge: Edge, clients: list[Paho]
) -> None:
    pytest.importorskip("paho.mqtt.client")
    group = f"$share/g{uuid.uuid4().hex[:8]}/jobs/#"
    a, b = Paho(edge, 1, ReceiveMaximum=1), Paho(edge, 2, ReceiveMaximum=1)
    pub = Paho(edge, 0)
    clients.extend((a, b, pub))
    for client in (a, b, pub):
        assert client.connected.wait(WAIT)
    for client in (a, b):
        info = client.client.subscribe(group, qos=1)
        assert client.wait_ack(info[1])[0] == [1]
    # The first PUBLISH sets alias 1; the others send only the alias.
    for n in range(6):
        topic = "jobs/build" if n == 0 else ""
        info = pub.client.publish(topic, b"%d" % n, qos=1, properties=_props(TopicAlias=1))
        assert pub.wait_ack(info.mid)[0] == 0
    # One member per message, in turn; each member with one message in flight at most.
    got_a, got_b = a.wait_messages(3), b.wait_messages(3)
    assert len(got_a) == 3
    assert len(got_b) == 3
    assert sorted(m.payload for m in got_a + got_b) == [b"0", b"1", b"2", b"3", b"4", b"5"]
    assert all(m.topic == "jobs/build" for m in a.messages + b.messages)


@pytest.mark.timeout(60)
def test_metadata_http_to_mqtt5_and_mqtt5_to_mqtt311(edge: Edge, clients: list[Paho]) -> None:
    pytest.importorskip("paho.mqtt.client")
    topic = f"jobs/meta/{uuid.uuid4().hex}"
    v5, v311 = Paho(edge, 1), Paho(edge, 2, protocol=4)
    clients.extend((v5, v311))
    for client in (v5, v311):
        assert client.connected.wait(WAIT)
        info = client.client.subscribe(topic, qos=1)
        assert client.wait_ack(info[1])[0] in ([1], (1,))
    # HTTP -> MQTT 5: the headers arrive as properties.
    ctx = ssl.create_default_context(cafile=str(edge.qs.root_cert))
    ctx.load_cert_chain(*map(str, edge.device(0)))
    ctx.check_hostname = False
    request = urllib.request.Request(
        f"https://127.0.0.1:{edge.https}/topics/{urllib.parse.quote(topic, safe='')}",
        data=b"from http",
        method="POST",
        headers={"Content-Type": "text/plain", "Response-Topic": "jobs/reply"},
    )
    request.add_header("MQTT-User-Property", "a=1")
    with urllib.request.urlopen(request, context=ctx, timeout=WAIT) as resp:
        assert resp.status == 200
    (got,) = v5.wait_messages(1)
    assert got.payload == b"from http"
    assert got.properties.ContentType == "text/plain"
    assert got.properties.ResponseTopic == "jobs/reply"
    assert got.properties.UserProperty == [("a", "1")]
    (plain,) = v311.wait_messages(1)
    assert plain.payload == b"from http"
    # MQTT 5 -> MQTT 3.1.1: the payload alone, as brokers do.
    info = v5.client.publish(topic, b"from v5", qos=1, properties=_props(UserProperty=[("k", "v")]))
    assert v5.wait_ack(info.mid)[0] == 0
    assert v311.wait_messages(2)[1].payload == b"from v5"


@pytest.mark.timeout(60)
def test_admin_disconnect_sends_0x98_with_the_reason(edge: Edge, clients: list[Paho]) -> None:
    pytest.importorskip("paho.mqtt.client")
    dev = Paho(edge, 2)
    clients.append(dev)
    assert dev.connected.wait(WAIT)
    dev.client.reconnect_delay_set(min_delay=60, max_delay=60)  # stay down for the assert
    request = urllib.request.Request(
        f"http://127.0.0.1:{edge.handle.ports['admin']}/v1/devices/disconnect",
        data=json.dumps(
            {"identity": "default/dev-00002", "reason": "certificate revoked"}
        ).encode(),
        method="POST",
        headers={
            "Authorization": f"Bearer {edge.handle.server.admin_token}",
            "Content-Type": "application/json",
        },
    )
    with urllib.request.urlopen(request, timeout=WAIT) as resp:
        assert json.load(resp) == {"disconnected": 1}
    assert dev.disconnected.wait(WAIT)
    code, props = dev.disconnect
    assert code == 0x98
    assert props.ReasonString == "certificate revoked"


# --- mosquitto_pub / mosquitto_sub -V mqttv5 ------------------------------------------------


def _mosquitto(edge: Edge, tool: str, device: int, *args: str) -> subprocess.CompletedProcess[str]:
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed")
    cert, key = edge.device(device)
    cmd = [tool, "-V", "mqttv5", "--cafile", str(edge.qs.root_cert), "--cert", str(cert)]
    cmd += ["--key", str(key), "-h", "127.0.0.1", "-p", str(edge.port), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)


@pytest.mark.timeout(90)
def test_mosquitto_v5_user_properties_and_reason_codes(edge: Edge) -> None:
    topic = f"devices/dev-00000/{uuid.uuid4().hex}"
    pub = _mosquitto(
        edge,
        "mosquitto_pub",
        0,
        "-i",
        "dev-00000",
        "-t",
        topic,
        "-m",
        "hi",
        "-r",
        "-q",
        "1",
        "-D",
        "publish",
        "user-property",
        "k",
        "v",
        "-d",
    )
    assert pub.returncode == 0, pub.stderr
    assert "received PUBACK" in pub.stdout
    sub = _mosquitto(
        edge,
        "mosquitto_sub",
        0,
        "-i",
        "dev-00000",
        "-t",
        topic,
        "-C",
        "1",
        "-W",
        "10",
        "-F",
        "%t %p %P",
    )
    assert sub.returncode == 0, sub.stderr
    assert sub.stdout.strip() == f"{topic} hi k:v"
    denied = _mosquitto(
        edge, "mosquitto_pub", 0, "-i", "dev-00000", "-t", "devices/dev-00001/x", "-m", "no",
        "-q", "1", "-d",
    )  # fmt: skip
    assert "received PUBACK (Mid: 1, RC:135)" in denied.stdout, denied.stdout + denied.stderr
    wrong = _mosquitto(edge, "mosquitto_pub", 0, "-i", "impostor", "-t", "x", "-m", "x", "-d")
    assert wrong.returncode != 0
    assert "received CONNACK (135)" in wrong.stdout, wrong.stdout + wrong.stderr
