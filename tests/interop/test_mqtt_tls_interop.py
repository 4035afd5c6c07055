"""Interoperability of the edge's MQTT over mutual TLS with clients nobody here wrote.

The edge (real TLS, real trust store, real broker) runs in its own thread on
uvloop, as ``EdgeServer.run_in_thread`` gives it to embedders; clients are
``mosquitto_pub``/``mosquitto_sub``, paho-mqtt, amqtt and ``openssl s_client``.
A refused device must *see* the alert: each refusal case checks the message the
client prints.
"""

from __future__ import annotations

import asyncio
import gc
import shutil
import ssl
import subprocess
import threading
import uuid
import warnings
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from badcerts import pem as badcert_pem
from badcerts import with_version
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from certs.authority import CertificateAuthority
from certs.crl import build_crl
from certs.quickstart import QuickstartResult, quickstart
from edge.config import EdgeConfig, HostPort, ListenersConfig, TrustConfig
from edge.core.events import Event
from edge.server import EdgeServer, ServerThread

pytestmark = pytest.mark.interop

T = TypeVar("T")


@dataclass
class Device:
    """A device's certificate and key files."""

    cert: Path
    key: Path


@dataclass
class Setup:
    """The running edge and the certificates the tests use."""

    handle: ServerThread
    qs: QuickstartResult
    port: int
    good: Device
    expired: Device
    stranger: Device
    revoked: Device

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        """Run ``coro`` on the edge's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.handle.loop).result(timeout)

    def refused_after(self, since: int, timeout: float = 10.0) -> Event:
        """The first ``tls.refused`` event after event id ``since``."""
        events = self.handle.server.events
        return self.run(
            events.wait_for(lambda e: e["kind"] == "tls.refused", since=since, timeout=timeout),
            timeout + 1,
        )

    @property
    def last_id(self) -> int:
        """The id of the newest event."""
        return self.handle.server.events.last_id


def _write(folder: Path, name: str, issued: Any) -> Device:
    cert, key = folder / f"{name}.pem", folder / f"{name}.key"
    cert.write_bytes(issued.fullchain_pem)
    key.write_bytes(issued.key_pem())
    key.chmod(0o600)
    return Device(cert, key)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    base = tmp_path_factory.mktemp("interop")
    qs = quickstart(base / "pki", devices=2)
    now = datetime.now(UTC)  # OpenSSL checks validity against the system clock
    extra = base / "extra"
    extra.mkdir()
    inter = qs.intermediate
    expired = _write(
        extra,
        "dev-expired",
        inter.issue_device(
            "dev-expired", not_before=now - timedelta(days=30), not_after=now - timedelta(days=1)
        ),
    )
    other = CertificateAuthority.create_root("Stranger Root")
    stranger = _write(extra, "dev-stranger", other.issue_device("dev-stranger"))
    revoked_issued = inter.issue_device("dev-revoked")
    revoked = _write(extra, "dev-revoked", revoked_issued)
    config = EdgeConfig(
        state_dir=base / "state",
        listeners=ListenersConfig(mqtt=HostPort(host="127.0.0.1", port=0), https=None, admin=None),
        trust=TrustConfig(store=base / "trust.db", watch_interval=None),
        pki_dir=qs.out,
        policy="open",
    )
    handle = EdgeServer.run_in_thread(config)
    try:
        s = Setup(
            handle=handle,
            qs=qs,
            port=handle.ports["mqtt"],
            good=Device(qs.devices_dir / "dev-00000.pem", qs.devices_dir / "dev-00000.key"),
            expired=expired,
            stranger=stranger,
            revoked=revoked,
        )
        crl = _crl(inter, [revoked_issued.cert.serial_number], now)
        trust = handle.server.trust
        s.run(trust.add_crl("default", crl))
        s.run(trust.wait_active())
        yield s
    finally:
        handle.stop()


def _crl(ca: CertificateAuthority, serials: list[int], now: datetime) -> bytes:
    an_hour_ago = now - timedelta(hours=1)
    revoked = [(serial, an_hour_ago, None) for serial in serials]
    crl = build_crl(ca, revoked, crl_number=1, last_update=an_hour_ago)
    return crl.public_bytes(serialization.Encoding.PEM)


def _needs(tool: str) -> None:
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed")


def _mosquitto(
    setup: Setup, tool: str, device: Device, *args: str
) -> subprocess.CompletedProcess[str]:
    _needs(tool)
    cmd = [
        tool,
        "--cafile",
        str(setup.qs.root_cert),
        "--cert",
        str(device.cert),
        "--key",
        str(device.key),
        "-h",
        "127.0.0.1",
        "-p",
        str(setup.port),
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=False)


@pytest.mark.timeout(60)
def test_mosquitto_pub_and_sub_through_the_edge(setup: Setup) -> None:
    topic = f"interop/{uuid.uuid4().hex}"
    # Retained, so the subscriber gets it whenever its SUBSCRIBE lands: no waiting.
    pub = _mosquitto(
        setup, "mosquitto_pub", setup.good, "-t", topic, "-m", "hello", "-r", "-q", "1"
    )
    assert pub.returncode == 0, pub.stderr
    sub = _mosquitto(setup, "mosquitto_sub", setup.good, "-t", topic, "-C", "1", "-W", "10", "-v")
    assert sub.returncode == 0, sub.stderr
    assert sub.stdout.strip() == f"{topic} hello"


@pytest.mark.timeout(60)
def test_mosquitto_without_a_certificate_sees_certificate_required(setup: Setup) -> None:
    _needs("mosquitto_pub")
    since = setup.last_id
    cmd = ["mosquitto_pub", "--cafile", str(setup.qs.root_cert), "-h", "127.0.0.1"]
    cmd += ["-p", str(setup.port), "-t", "x", "-m", "y", "-d"]  # -d prints the TLS error
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=False)
    assert result.returncode != 0
    assert "alert certificate required" in result.stdout + result.stderr
    event = setup.refused_after(since)
    assert event["alert"] == "certificate_required"


def _s_client(setup: Setup, device: Device | None, *extra: str) -> str:
    _needs("openssl")
    cmd = ["openssl", "s_client", "-connect", f"127.0.0.1:{setup.port}"]
    cmd += ["-servername", "localhost", "-CAfile", str(setup.qs.root_cert), *extra]
    if device is not None:
        cmd += ["-cert", str(device.cert), "-key", str(device.key)]
    # -ign_eof: under TLS 1.3 the edge's alert arrives after the client's Finished;
    # s_client must still be reading then, not quitting on the end of its stdin.
    result = subprocess.run(
        [*cmd, "-ign_eof"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=20,
        check=False,
    )
    return result.stdout


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("which", "tls", "client_sees", "alert", "reason"),
    [
        (
            "stranger",
            "-tls1_3",
            "alert unknown ca",
            "unknown_ca",
            "issued by `CN=Stranger Root`, which is not in set `default`",
        ),
        ("stranger", "-tls1_2", "alert unknown ca", "unknown_ca", "issued by `CN=Stranger Root`"),
        ("expired", "-tls1_3", "certificate expired", "certificate_expired", "expired"),
        ("revoked", "-tls1_3", "certificate revoked", "certificate_revoked", "revoked"),
        (
            None,
            "-tls1_3",
            "alert certificate required",
            "certificate_required",
            "no client certificate",
        ),
        (None, "-tls1_2", "alert handshake failure", "handshake_failure", "no client certificate"),
    ],
)
def test_openssl_s_client_sees_the_alert(
    setup: Setup, which: str | None, tls: str, client_sees: str, alert: str, reason: str
) -> None:
    since = setup.last_id
    device = getattr(setup, which) if which else None
    out = _s_client(setup, device, tls)
    assert client_sees in out, out
    event = setup.refused_after(since)
    assert event["alert"] == alert
    assert reason in event["reason"]
    assert event["set"] == "default"
    assert event["sni"] == "localhost"


@pytest.mark.timeout(60)
def test_s_client_offering_tls11_gets_protocol_version(setup: Setup) -> None:
    since = setup.last_id
    out = _s_client(setup, setup.good, "-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0")
    assert "alert protocol version" in out or "no protocols available" in out, out
    if "alert protocol version" in out:
        event = setup.refused_after(since)
        assert event["alert"] == "protocol_version"
        assert event["versions_offered"] == ["TLSv1.1"]


@pytest.mark.timeout(60)
def test_paho_mqtt_over_tls(setup: Setup) -> None:
    mqtt = pytest.importorskip("paho.mqtt.client")
    topic = f"interop/paho/{uuid.uuid4().hex}"
    connected = threading.Event()
    subscribed = threading.Event()
    got: list[bytes] = []
    received = threading.Event()

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="dev-00000")
    client.tls_set(
        ca_certs=str(setup.qs.root_cert),
        certfile=str(setup.good.cert),
        keyfile=str(setup.good.key),
        tls_version=ssl.PROTOCOL_TLS_CLIENT,
    )

    def on_connect(c: Any, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
        connected.set()
        c.subscribe(topic, qos=1)

    def on_subscribe(c: Any, userdata: Any, mid: Any, rcs: Any, props: Any = None) -> None:
        subscribed.set()

    def on_message(c: Any, userdata: Any, msg: Any) -> None:
        got.append(msg.payload)
        received.set()

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    client.connect("127.0.0.1", setup.port, keepalive=30)
    client.loop_start()
    try:
        assert connected.wait(10)
        assert subscribed.wait(10)
        client.publish(topic, b"from paho", qos=1)
        assert received.wait(10)
        assert got == [b"from paho"]
    finally:
        client.disconnect()
        client.loop_stop()


@pytest.mark.timeout(60)
def test_amqtt_client_over_tls(setup: Setup) -> None:
    client_mod = pytest.importorskip("amqtt.client")
    topic = f"interop/amqtt/{uuid.uuid4().hex}"

    async def scenario() -> bytes:
        client = client_mod.MQTTClient(
            client_id="dev-00000",
            config={
                "auto_reconnect": False,
                "connection": {
                    "certfile": str(setup.good.cert),
                    "keyfile": str(setup.good.key),
                    "cafile": str(setup.qs.root_cert),
                },
            },
        )
        await client.connect(f"mqtts://127.0.0.1:{setup.port}/", cafile=str(setup.qs.root_cert))
        try:
            await client.subscribe([(topic, 1)])
            await client.publish(topic, b"from amqtt", qos=1)
            message = await client.deliver_message(timeout_duration=10)
            return bytes(message.publish_packet.payload.data)
        finally:
            await client.disconnect()

    try:
        assert asyncio.run(scenario()) == b"from amqtt"
    finally:
        # amqtt 0.12.1's disconnect() leaves its TLS transport open. Collect it here,
        # with that warning silenced, instead of letting it surface at the end of the
        # session as an unraisable exception blamed on no test in particular.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            gc.collect()


def _with_version(device: Device, version: int, folder: Path) -> Device:
    """A copy of ``device`` whose leaf claims X.509 ``version`` (OpenSSL still sends it)."""
    leaf = x509.load_pem_x509_certificate(device.cert.read_bytes())
    cert = folder / "dev-badversion.pem"
    cert.write_bytes(
        badcert_pem(with_version(leaf.public_bytes(serialization.Encoding.DER), version))
    )
    return Device(cert, device.key)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("tls", ["-tls1_2", "-tls1_3"])
def test_a_certificate_cryptography_cannot_read_is_refused_and_reported(
    setup: Setup, tls: str, tmp_path: Path
) -> None:
    # A version field of 126: OpenSSL sends and parses it, cryptography raises
    # InvalidVersion (no ValueError), which once escaped the refusal's report.
    bad = _with_version(setup.stranger, 126, tmp_path)
    since = setup.last_id
    out = _s_client(setup, bad, tls)
    assert "alert unknown ca" in out, out
    event = setup.refused_after(since)
    assert event["alert"] == "unknown_ca"
    assert event["set"] == "default"
    assert "not trusted by set `default`" in event["reason"]
    # The edge carries on: a good device connects after it.
    pub = _mosquitto(setup, "mosquitto_pub", setup.good, "-t", "after/bad", "-m", "x")
    assert pub.returncode == 0, pub.stderr
