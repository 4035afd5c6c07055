"""A small edge for the HTTP/WebSocket tests: core + device frontend on 127.0.0.1:0.

Two ways to serve:

- ``tls=False``: plain loopback TCP with a fixed test :class:`SessionInfo` (the
  adapters' own behaviour, without TLS in the way);
- ``tls=True``: real mutual TLS with the stdlib's ``ssl`` server (client
  certificate required, verified against a test root); the session is built from
  the verified peer certificate the way the TLS layer does (identity = CN).

Certificates are built around ``now`` passed in, because OpenSSL checks them
against the system clock during a real handshake.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from certs.authority import CertificateAuthority
from edge.core.events import EventLog
from edge.core.hub import EdgeCore
from edge.core.policy import Policy
from edge.core.session import DeviceIdentity, SessionInfo
from edge.http.device import DeviceApiConfig, DeviceFrontend, make_device_protocol_factory
from edge.mqtt.broker import MqttBroker
from edge.mux import ListenerKind, make_mux_protocol_factory


def fixed_session(
    name: str = "dev1", namespace: str = "default", alpn: str | None = None
) -> SessionInfo:
    """A fixed authenticated session for plain-TCP tests."""
    return SessionInfo(
        identity=DeviceIdentity(namespace=namespace, name=name),
        peer="127.0.0.1:0",
        alpn=alpn,
        set_name=namespace,
        set_version=1,
    )


@dataclass
class DeviceFiles:
    """A device certificate and key on disk."""

    name: str
    cert: Path
    key: Path


@dataclass
class HarnessPki:
    """A root CA, the edge's server certificate and device certificates under ``root_dir``."""

    root_dir: Path
    now: datetime
    root: CertificateAuthority = field(init=False)
    server_cert: Path = field(init=False)
    server_key: Path = field(init=False)
    ca_file: Path = field(init=False)

    def __post_init__(self) -> None:
        d = self.root_dir
        d.mkdir(parents=True, exist_ok=True)
        before = self.now - timedelta(days=1)
        self.root = CertificateAuthority.create_root("HTTP Test Root", not_before=before)
        server = self.root.issue_server(["localhost", "127.0.0.1"], not_before=before)
        self.server_cert = d / "server.pem"
        self.server_key = d / "server.key"
        self.server_cert.write_bytes(server.fullchain_pem)
        self.server_key.write_bytes(server.key_pem())
        self.ca_file = d / "root-ca.pem"
        self.ca_file.write_bytes(self.root.cert_pem)

    def device(self, name: str) -> DeviceFiles:
        """Issue (once) and write a device certificate with CN ``name``."""
        cert = self.root_dir / f"{name}.pem"
        key = self.root_dir / f"{name}.key"
        if not cert.exists():
            issued = self.root.issue_device(
                name,
                not_before=self.now - timedelta(days=1),
                not_after=self.now + timedelta(days=30),
            )
            cert.write_bytes(issued.fullchain_pem)
            key.write_bytes(issued.key_pem())
        return DeviceFiles(name, cert, key)

    def server_context(self) -> ssl.SSLContext:
        """The edge's context: client certificate required, ALPN mqtt and http/1.1."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(self.server_cert), str(self.server_key))
        ctx.load_verify_locations(cafile=str(self.ca_file))
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.set_alpn_protocols(["mqtt", "http/1.1"])
        return ctx

    def client_context(self, device: DeviceFiles, alpn: list[str] | None = None) -> ssl.SSLContext:
        """A device's context trusting the root and presenting ``device``."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(cafile=str(self.ca_file))
        ctx.load_cert_chain(str(device.cert), str(device.key))
        if alpn:
            ctx.set_alpn_protocols(alpn)
        return ctx


Factory = Any  # Callable[[SessionInfo], asyncio.Protocol]


class _TlsAdapter(asyncio.Protocol):
    """Builds the session from the verified certificate, then hands over (as the TLS layer does)."""

    def __init__(self, factory: Factory) -> None:
        self._factory = factory
        self._inner: asyncio.Protocol | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        ssl_object = transport.get_extra_info("ssl_object")
        peercert = ssl_object.getpeercert()
        subject = dict(item for rdn in peercert["subject"] for item in rdn)
        peer = transport.get_extra_info("peername")
        session = SessionInfo(
            identity=DeviceIdentity(namespace="default", name=subject["commonName"]),
            peer=f"{peer[0]}:{peer[1]}",
            alpn=ssl_object.selected_alpn_protocol(),
            tls_version=ssl_object.version() or "",
            set_name="default",
            set_version=1,
        )
        self._inner = self._factory(session)
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        assert self._inner is not None
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        assert self._inner is not None
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._inner is not None:
            self._inner.connection_lost(exc)


class EdgeHarness:
    """An EdgeCore and a DeviceFrontend listening on 127.0.0.1:0."""

    def __init__(
        self,
        *,
        policy: Policy | None = None,
        config: DeviceApiConfig | None = None,
        pki: HarnessPki | None = None,
        session: SessionInfo | None = None,
        mqtt: bool = False,
        mqtt_factory: Factory | None = None,
        listener_kind: ListenerKind = "https",
    ) -> None:
        self.events = EventLog(log_events=False)
        self.core = EdgeCore(self.events, policy or Policy.open())
        self.broker = MqttBroker(self.core) if mqtt else None
        self.frontend: DeviceFrontend = make_device_protocol_factory(self.core, self.broker, config)
        self.pki = pki
        self.session = session or fixed_session()
        self.mqtt_factory = mqtt_factory
        self.listener_kind = listener_kind
        self.port = 0
        self._server: asyncio.Server | None = None

    @property
    def factory(self) -> Factory:
        """The protocol factory the listener uses (mux when MQTT is served too)."""
        if self.listener_kind == "https":
            return self.frontend
        assert self.mqtt_factory is not None
        return make_mux_protocol_factory(
            mqtt=self.mqtt_factory,
            http=self.frontend,
            listener_kind=self.listener_kind,
            events=self.events,
        )

    async def __aenter__(self) -> EdgeHarness:
        await self.frontend.start()
        loop = asyncio.get_running_loop()
        factory = self.factory
        if self.pki is None:
            session = self.session
            server = await loop.create_server(lambda: factory(session), "127.0.0.1", 0)
        else:
            server = await loop.create_server(
                lambda: _TlsAdapter(factory), "127.0.0.1", 0, ssl=self.pki.server_context()
            )
        self._server = server
        self.port = server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        await self.frontend.close()
        await self._server.wait_closed()

    @property
    def base_url(self) -> str:
        """``http(s)://127.0.0.1:PORT``."""
        scheme = "https" if self.pki is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        """``ws(s)://127.0.0.1:PORT``."""
        scheme = "wss" if self.pki is not None else "ws"
        return f"{scheme}://127.0.0.1:{self.port}"


class PahoClient:
    """paho-mqtt (its own network thread) with results handed to asyncio futures and queues.

    ``connect_async`` + ``loop_start`` keep every blocking step (TCP, TLS, the
    WebSocket upgrade) in paho's thread, never on the event loop serving the edge.
    """

    def __init__(
        self,
        port: int,
        client_id: str,
        *,
        transport: str = "tcp",
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        import paho.mqtt.client as mqtt

        self._loop = asyncio.get_running_loop()
        self.connected: asyncio.Future[int] = self._loop.create_future()
        self.disconnected: asyncio.Future[int] = self._loop.create_future()
        self.messages: asyncio.Queue[tuple[str, bytes, int, bool]] = asyncio.Queue()
        self._acks: dict[int, asyncio.Future[Any]] = {}
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            transport=transport,  # type: ignore[arg-type]
            protocol=mqtt.MQTTv311,
        )
        if transport == "websockets":
            client.ws_set_options(path="/mqtt")
        if ssl_context is not None:
            client.tls_set_context(ssl_context)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_ack
        client.on_publish = self._on_publish
        client.on_unsubscribe = self._on_ack
        self.client = client
        self._port = port

    def _call(self, fn: Any, *args: Any) -> None:
        self._loop.call_soon_threadsafe(fn, *args)

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        self._call(_resolve, self.connected, int(rc.value))

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        self._call(_resolve, self.disconnected, int(rc.value))
        self._call(_resolve, self.connected, int(rc.value))

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        item = (msg.topic, bytes(msg.payload), msg.qos, bool(msg.retain))
        self._call(self.messages.put_nowait, item)

    def _on_ack(self, client: Any, userdata: Any, mid: int, rcs: Any, props: Any) -> None:
        self._call(self._ack, mid, [int(rc.value) for rc in rcs] if rcs else [])

    def _on_publish(self, client: Any, userdata: Any, mid: int, rc: Any, props: Any) -> None:
        self._call(self._ack, mid, int(rc.value))

    def _ack(self, mid: int, value: Any) -> None:
        future = self._acks.setdefault(mid, self._loop.create_future())
        if not future.done():
            future.set_result(value)

    async def _wait_ack(self, mid: int, timeout: float) -> Any:
        future = self._acks.setdefault(mid, self._loop.create_future())
        return await asyncio.wait_for(future, timeout)

    async def connect(self, timeout: float = 10.0) -> int:
        """Connect (in paho's thread); return the CONNACK code."""
        self.client.connect_async("127.0.0.1", self._port, keepalive=30)
        self.client.loop_start()
        return await asyncio.wait_for(self.connected, timeout)

    async def subscribe(self, topic: str, qos: int = 0, timeout: float = 10.0) -> list[int]:
        """Subscribe and wait for the SUBACK codes."""
        _, mid = self.client.subscribe(topic, qos)
        result: list[int] = await self._wait_ack(mid, timeout)
        return result

    async def publish(
        self, topic: str, payload: bytes, qos: int = 0, retain: bool = False, timeout: float = 10.0
    ) -> None:
        """Publish and wait until paho has sent it (QoS 0) or got its PUBACK (QoS 1)."""
        info = self.client.publish(topic, payload, qos, retain)
        await self._wait_ack(info.mid, timeout)

    async def close(self) -> None:
        """Disconnect and stop paho's thread."""
        self.client.disconnect()
        await asyncio.to_thread(self.client.loop_stop)


def _resolve(future: asyncio.Future[int], value: int) -> None:
    if not future.done():
        future.set_result(value)


# --- the real edge (EdgeServer: TLS layer, trust store, broker, frontend) -------------


def edge_config(tmp_path: Path, pki_dir: Path, *, policy: str = "open") -> Any:
    """An EdgeConfig with MQTT, HTTPS and multi listeners on free loopback ports."""
    from edge.config import EdgeConfig, HostPort, ListenersConfig, TrustConfig

    anywhere = HostPort(host="127.0.0.1", port=0)
    return EdgeConfig(
        state_dir=tmp_path / "state",
        listeners=ListenersConfig(mqtt=anywhere, https=anywhere, multi=anywhere, admin=None),
        trust=TrustConfig(store=tmp_path / "trust.db", watch_interval=None),
        pki_dir=pki_dir,
        policy=policy,
        use_uvloop=False,
    )


def device_context(qs: Any, device: str, alpn: list[str] | None = None) -> ssl.SSLContext:
    """A device context for a quickstart PKI device (trusts the quickstart root)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=str(qs.root_cert))
    ctx.load_cert_chain(
        str(qs.devices_dir / f"{device}.pem"), str(qs.devices_dir / f"{device}.key")
    )
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx
