"""EdgeServer over real loopback with real TLS and the real trust store and service.

The MQTT application is a double here (CONNECT -> CONNACK, then echo); the MQTT
broker itself has its own tests, and the interop tests run the real one.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gc
import json
import socket
import ssl
from pathlib import Path

import pytest
from cryptography import x509

from certs.quickstart import QuickstartResult, quickstart
from edge.config import EdgeConfig, HostPort, ListenersConfig, TrustConfig
from edge.core.session import SessionInfo
from edge.mqtt.broker import MqttConnection
from edge.mqtt.protocol import MqttServerProtocol
from edge.server import EdgeServer, EdgeServerError
from edge.tls import verifiedchain
from edge.tls.connection import EdgeTlsProtocol
from edge.tls.session import TlsServerSession

CONNECT = bytes.fromhex("101000044d5154540402003c000464657631")
CONNACK = b"\x20\x02\x00\x00"


class Echo(asyncio.Protocol):
    """CONNECT -> CONNACK, anything else echoed back."""

    def __init__(self, session: SessionInfo) -> None:
        self.session = session
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(CONNACK if data.startswith(b"\x10") else b"echo:" + data)


@pytest.fixture(scope="module")
def qs(tmp_path_factory: pytest.TempPathFactory) -> QuickstartResult:
    """A quickstart PKI, as `edgesim pki quickstart` writes it."""
    return quickstart(tmp_path_factory.mktemp("qs") / "pki", devices=2)


def config(tmp_path: Path, qs: QuickstartResult, **changes: object) -> EdgeConfig:
    base = EdgeConfig(
        state_dir=tmp_path / "state",
        listeners=ListenersConfig(mqtt=HostPort(host="127.0.0.1", port=0), https=None, admin=None),
        trust=TrustConfig(store=tmp_path / "trust.db", watch_interval=None),
        pki_dir=qs.out,
        ready_file=tmp_path / "ready.json",
    )
    return base.with_overrides(**changes)


def device_context(qs: QuickstartResult, device: str | None = "dev-00000") -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=str(qs.root_cert))
    if device is not None:
        ctx.load_cert_chain(
            str(qs.devices_dir / f"{device}.pem"), str(qs.devices_dir / f"{device}.key")
        )
    return ctx


async def mqtt_connect(
    port: int, ctx: ssl.SSLContext
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=ctx, server_hostname="localhost"
    )
    try:
        writer.write(CONNECT)
        assert await asyncio.wait_for(reader.readexactly(4), 5) == CONNACK
    except BaseException:
        # A TLS 1.3 refusal shows only after the handshake: close what was opened.
        await close(writer)
        raise
    return reader, writer


async def close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ssl.SSLError, ConnectionError):
        await writer.wait_closed()


@pytest.mark.timeout(30)
async def test_pki_folder_seeds_the_store_and_devices_connect(
    tmp_path: Path, qs: QuickstartResult
) -> None:
    async with EdgeServer(config(tmp_path, qs), factories={"mqtt": Echo}) as edge:
        port = edge.ports["mqtt"]
        assert port > 0
        ready = json.loads((tmp_path / "ready.json").read_text())
        assert ready["ports"] == {"mqtt": port}
        _reader, writer = await mqtt_connect(port, device_context(qs))
        event = await edge.events.wait_for(lambda e: e["kind"] == "tls.accepted")
        assert event["identity"] == "default/dev-00000"
        assert event["set"] == "default"
        await close(writer)
        sets = edge.store.list_sets()
        assert [s.name for s in sets] == ["default"]
        assert edge.store.bindings() == {"*": "default"}


@pytest.mark.timeout(30)
async def test_a_trust_change_applies_to_new_handshakes_only(
    tmp_path: Path, qs: QuickstartResult
) -> None:
    other = quickstart(tmp_path / "other", devices=0)
    async with EdgeServer(config(tmp_path, qs), factories={"mqtt": Echo}) as edge:
        port = edge.ports["mqtt"]
        reader, writer = await mqtt_connect(port, device_context(qs))
        # Replace the default set's CA by another PKI's: quickstart devices are now unknown.
        await edge.trust.upload("default", other.ca_chain.read_bytes())
        await edge.trust.wait_active()
        since = edge.events.last_id
        with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)):
            await mqtt_connect(port, device_context(qs, "dev-00001"))
        refused = await edge.events.wait_for(lambda e: e["kind"] == "tls.refused", since=since)
        assert refused["alert"] == "unknown_ca"
        assert refused["version"] == 2
        # The session established under version 1 is untouched.
        writer.write(b"still-here")
        assert await asyncio.wait_for(reader.readexactly(15), 5) == b"echo:still-here"
        await close(writer)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("chain_readable", [True, False])
async def test_refused_tls13_device_is_named_with_or_without_the_verified_chain(
    tmp_path: Path, qs: QuickstartResult, chain_readable: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Where OpenSSL's verified chain can be read the edge needs no key log tap (no
    # cost per connect); where it cannot, the tap is the way to the certificate.
    if not chain_readable:
        monkeypatch.setattr(verifiedchain, "_lib", lambda: None)
    other = quickstart(tmp_path / "other", devices=1)
    async with EdgeServer(config(tmp_path, qs), factories={"mqtt": Echo}) as edge:
        assert (edge.keylog is None) is chain_readable
        ctx = device_context(qs, None)  # trusts the edge, presents a stranger's device:
        ctx.load_cert_chain(
            other.devices_dir / "dev-00000.pem", other.devices_dir / "dev-00000.key"
        )
        ctx.maximum_version = ssl.TLSVersion.TLSv1_3
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)):
            await mqtt_connect(edge.ports["mqtt"], ctx)
        refused = await edge.events.wait_for(lambda e: e["kind"] == "tls.refused")
        assert refused["alert"] == "unknown_ca"
        assert refused["tls_version"] == "TLSv1.3"
        assert refused["certificate"]["subject"] == "CN=dev-00000"
        presented = x509.load_pem_x509_certificate(
            (other.devices_dir / "dev-00000.pem").read_bytes()
        )
        assert refused["certificate"]["serial"] == format(presented.serial_number, "x")


@pytest.mark.timeout(30)
@pytest.mark.parametrize("app", ["echo", "broker"])
async def test_a_closed_connection_is_freed_by_reference_counting(
    tmp_path: Path, qs: QuickstartResult, app: str
) -> None:
    # With the cycle collector off, a connection's objects must go as soon as the
    # connection does: every connect leaving a cycle behind made the collector run
    # (and walk whole connections) every few connects.
    if app == "echo":
        edge = EdgeServer(config(tmp_path, qs), factories={"mqtt": Echo})
    else:  # the real MQTT broker, any client id
        edge = EdgeServer(config(tmp_path, qs, policy="open"))
    async with edge:
        endpoint = edge.endpoints["mqtt"]
        # Server-side types only: the device's own asyncio SSL objects live here too.
        kinds = (EdgeTlsProtocol, TlsServerSession, MqttServerProtocol, MqttConnection, Echo)

        def alive() -> collections.Counter[str]:
            return collections.Counter(
                type(o).__name__ for o in gc.get_objects() if isinstance(o, kinds)
            )

        gc.collect()
        gc.disable()
        try:
            before = alive()
            _reader, writer = await mqtt_connect(edge.ports["mqtt"], device_context(qs))
            during = alive()
            assert during["EdgeTlsProtocol"] == before["EdgeTlsProtocol"] + 1
            assert during["TlsServerSession"] == before["TlsServerSession"] + 1
            await close(writer)
            await edge.events.wait_for(lambda e: e["kind"] == "connection.closed")
            await endpoint.wait_idle(5)
            assert alive() == before
        finally:
            gc.enable()


@pytest.mark.timeout(30)
async def test_embedded_pki_is_created_once_and_reused(
    tmp_path: Path, qs: QuickstartResult
) -> None:
    cfg = config(tmp_path, qs, pki_dir=None)
    async with EdgeServer(cfg, factories={"mqtt": Echo}):
        pass
    server_pem = (tmp_path / "state" / "pki" / "server.pem").read_bytes()
    async with EdgeServer(cfg, factories={"mqtt": Echo}) as edge:
        assert (tmp_path / "state" / "pki" / "server.pem").read_bytes() == server_pem
        devices = tmp_path / "state" / "pki" / "devices"
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(cafile=str(tmp_path / "state" / "pki" / "root-ca.pem"))
        ctx.load_cert_chain(str(devices / "dev-00000.pem"), str(devices / "dev-00000.key"))
        _, writer = await mqtt_connect(edge.ports["mqtt"], ctx)
        await close(writer)


@pytest.mark.timeout(30)
async def test_port_in_use_is_a_clear_error(tmp_path: Path, qs: QuickstartResult) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        cfg = config(
            tmp_path,
            qs,
            listeners=ListenersConfig(
                mqtt=HostPort(host="127.0.0.1", port=taken), https=None, admin=None
            ),
        )
        edge = EdgeServer(cfg, factories={"mqtt": Echo})
        with pytest.raises(EdgeServerError, match=f"cannot listen for mqtt on 127.0.0.1:{taken}"):
            await edge.start()


@pytest.mark.timeout(30)
async def test_missing_server_key_is_a_clear_error(tmp_path: Path, qs: QuickstartResult) -> None:
    cfg = config(tmp_path, qs, pki_dir=tmp_path / "empty")
    (tmp_path / "empty").mkdir()
    with pytest.raises(EdgeServerError, match=r"no server\.pem"):
        await EdgeServer(cfg, factories={"mqtt": Echo}).start()


@pytest.mark.timeout(30)
def test_run_in_thread_reports_ports_and_stops(tmp_path: Path, qs: QuickstartResult) -> None:
    handle = EdgeServer.run_in_thread(config(tmp_path, qs), factories={"mqtt": Echo})
    try:
        port = handle.ports["mqtt"]
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            device_context(qs).wrap_socket(raw, server_hostname="localhost") as tls,
        ):
            tls.sendall(CONNECT)
            assert tls.recv(4) == CONNACK
    finally:
        handle.stop()
    with (
        pytest.raises(ConnectionRefusedError),
        socket.create_connection(("127.0.0.1", port), timeout=5),
    ):
        pass


async def http_request(port: int, ctx: ssl.SSLContext, request: bytes) -> tuple[bytes, bytes]:
    """Send one HTTP/1.1 request (Connection: close); return (status line, body)."""
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=ctx, server_hostname="localhost"
    )
    writer.write(request)
    response = await asyncio.wait_for(reader.read(), 10)
    await close(writer)
    head, _, body = response.partition(b"\r\n\r\n")
    return head.split(b"\r\n")[0], body


@pytest.mark.timeout(30)
async def test_real_broker_and_device_api_share_one_core(
    tmp_path: Path, qs: QuickstartResult
) -> None:
    listeners = ListenersConfig(
        mqtt=HostPort(host="127.0.0.1", port=0),
        multi=HostPort(host="127.0.0.1", port=0),
        https=None,
        admin=None,
    )
    async with EdgeServer(config(tmp_path, qs, listeners=listeners, policy="open")) as edge:
        assert set(edge.ports) == {"mqtt", "multi"}
        ctx = device_context(qs)
        # HTTPS on the multi port (no ALPN: the first bytes say HTTP), retained publish.
        status, body = await http_request(
            edge.ports["multi"],
            ctx,
            b"POST /topics/plant/line1?retain=true HTTP/1.1\r\nHost: localhost\r\n"
            b"Content-Length: 5\r\nConnection: close\r\n\r\nhello",
        )
        assert status == b"HTTP/1.1 200 OK", body
        assert json.loads(body)["retain"] is True
        # The real MQTT broker on the MQTT port sees the retained message.
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", edge.ports["mqtt"], ssl=ctx, server_hostname="localhost"
        )
        writer.write(bytes.fromhex("101500044d5154540402003c0009646576") + b"-00000")
        assert await asyncio.wait_for(reader.readexactly(4), 5) == CONNACK
        topic = b"plant/line1"
        subscribe = b"\x00\x01" + len(topic).to_bytes(2, "big") + topic + b"\x00"
        writer.write(b"\x82" + bytes([len(subscribe)]) + subscribe)
        assert await asyncio.wait_for(reader.readexactly(5), 5) == b"\x90\x03\x00\x01\x00"
        publish = await asyncio.wait_for(reader.readexactly(2 + 2 + len(topic) + 5), 5)
        assert publish[0] & 0xF0 == 0x30
        assert publish.endswith(topic + b"hello")
        await close(writer)
        accepted = edge.events.query(kind="tls.accepted")
        assert {e["identity"] for e in accepted} == {"default/dev-00000"}
