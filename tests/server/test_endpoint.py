"""The TLS endpoint over real loopback sockets with real TLS: accepted devices, refusals, limits.

The trust snapshot is the real ``TrustSnapshot`` value type built by hand; the
application is a small MQTT double (CONNECT -> CONNACK, then echo) so these tests
exercise the TLS layer alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from badcerts import with_bad_ip_san
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from edge.core.events import Event, EventLog
from edge.core.session import SessionInfo
from edge.tls import verifiedchain
from edge.tls.connection import AppProtocolFactory, EndpointOptions, TlsEndpoint
from edge.tls.contexts import ContextCache, TlsSettings
from edge.tls.keylog import KeyLogTap
from edge.trust.model import ActiveSet, TrustSnapshot

CONNECT = bytes.fromhex("101000044d5154540402003c000464657631")  # client id "dev1"
CONNACK = b"\x20\x02\x00\x00"


class MqttDouble(asyncio.Protocol):
    """Answers CONNECT with CONNACK, then echoes; records what the transport told it."""

    instances: list[MqttDouble] = []  # noqa: RUF012 - the tests read it

    def __init__(self, session: SessionInfo) -> None:
        self.session = session
        self.transport: asyncio.Transport | None = None
        loop = asyncio.get_running_loop()
        self.lost = loop.create_future()
        self.paused = loop.create_future()
        self.resumed = loop.create_future()
        self.read_paused = False
        self.buffered = 0
        MqttDouble.instances.append(self)

    def pause_writing(self) -> None:
        if not self.paused.done():
            self.paused.set_result(None)

    def resume_writing(self) -> None:
        if not self.resumed.done():
            self.resumed.set_result(None)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        if data.startswith(b"\x10"):
            self.transport.write(CONNACK)
        elif data == b"flood":
            self.transport.set_write_buffer_limits(high=64 * 1024)
            self.transport.pause_reading()
            self.read_paused = not self.transport.is_reading()
            chunk = b"z" * 65536
            for _ in range(128):  # 8 MiB the device does not read yet
                self.transport.write(chunk)
            self.buffered = self.transport.get_write_buffer_size()
        elif data == b"bye":
            self.transport.close()
        else:
            self.transport.write(b"echo:" + data)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)


class HttpDouble(asyncio.Protocol):
    """Answers the first HTTP request it sees (all of it in one read or several) with 200."""

    def __init__(self, session: SessionInfo) -> None:
        self.session = session
        self.transport: asyncio.Transport | None = None
        self.received = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.received += data
        if self.received.endswith(b"\r\n\r\n"):
            first_line = self.received.split(b"\r\n", 1)[0]
            body = b"saw " + first_line
            head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            self.transport.write(head + body)


def make_set(pki: Any, *, version: int = 1, crl_pem: bytes = b"") -> ActiveSet:
    s = pki.chain_set(version=version, crl_pem=crl_pem)
    return ActiveSet(
        name=s.name,
        version=s.version,
        ca_certs=s.ca_certs,
        ca_pem=s.ca_pem,
        crls=(),
        crl_pem=s.crl_pem,
        allow_sha1=False,
    )


class Edge:
    """A TLS endpoint listening on 127.0.0.1, port 0."""

    def __init__(self, endpoint: TlsEndpoint, server: asyncio.Server) -> None:
        self.endpoint = endpoint
        self.server = server
        self.port = server.sockets[0].getsockname()[1]
        self.events = endpoint.events
        self.snapshot: TrustSnapshot = TrustSnapshot(1, {}, {})

    async def refused(self, since: int = 0) -> Event:
        return await self.events.wait_for(lambda e: e["kind"] == "tls.refused", since=since)


@contextlib.asynccontextmanager
async def running_edge(
    pki: Any,
    *,
    bindings: dict[str, str] | None = None,
    crl_pem: bytes = b"",
    options: EndpointOptions | None = None,
    factories: dict[str, AppProtocolFactory] | None = None,
    tap: bool = False,
) -> AsyncIterator[Edge]:
    """An endpoint as the edge runs it; ``tap=True`` adds the key log tap (edge.tls.keylog)."""
    events = EventLog(log_events=False)
    active = make_set(pki, crl_pem=crl_pem)
    holder: dict[str, TrustSnapshot] = {
        "snap": TrustSnapshot(1, {"default": active}, bindings or {"*": "default"})
    }
    keylog = KeyLogTap() if tap else None
    contexts = ContextCache(
        TlsSettings(
            cert_file=pki.server_cert,
            key_file=pki.server_key,
            keylog_file=keylog.path if keylog is not None else None,
        )
    )
    endpoint = TlsEndpoint(
        contexts=contexts,
        snapshot=lambda: holder["snap"],
        factories=factories or {"mqtt": MqttDouble},
        events=events,
        options=options,
        keylog=keylog,
    )
    loop = asyncio.get_running_loop()
    server = await loop.create_server(endpoint.protocol_factory, "127.0.0.1", 0)
    edge = Edge(endpoint, server)
    try:
        yield edge
    finally:
        server.close()
        endpoint.close_all()
        await server.wait_closed()
        # Python 3.11's wait_closed does not wait for connections: their sockets
        # close in connection_lost, which must run before the loop ends.
        try:
            await endpoint.wait_idle(2)
        except TimeoutError:
            endpoint.abort_all()
            await endpoint.wait_idle(5)
        if keylog is not None:
            assert len(keylog) == 0, "the key log tap kept secrets of finished handshakes"
            keylog.close()


async def open_tls(
    edge: Edge,
    ctx: ssl.SSLContext,
    sni: str | None = "localhost",
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(
        "127.0.0.1", edge.port, ssl=ctx, server_hostname=sni or "", ssl_handshake_timeout=5
    )


async def close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ssl.SSLError, ConnectionError):
        await writer.wait_closed()


@pytest.mark.timeout(20)
async def test_accepted_device_gets_connack_through_the_tls_transport(pki: Any) -> None:
    async with running_edge(pki) as edge:
        device = pki.device("dev-accepted")
        reader, writer = await open_tls(edge, pki.client_context(device, alpn=["mqtt"]))
        writer.write(CONNECT)
        assert await asyncio.wait_for(reader.readexactly(4), 5) == CONNACK
        writer.write(b"ping")
        assert await asyncio.wait_for(reader.readexactly(9), 5) == b"echo:ping"
        accepted = await edge.events.wait_for(lambda e: e["kind"] == "tls.accepted")
        assert accepted["identity"] == "default/dev-accepted"
        assert accepted["sni"] == "localhost"
        assert accepted["alpn"] == "mqtt"
        assert accepted["tls_version"] == "TLSv1.3"
        assert accepted["set"] == "default"
        assert accepted["version"] == 1
        assert accepted["certificate"]["subject"] == "CN=dev-accepted"
        app = MqttDouble.instances[-1]
        assert app.session.identity.name == "dev-accepted"
        assert app.transport is not None
        info = app.transport.get_extra_info("edgesim.session")
        assert info is app.session
        assert app.transport.get_extra_info("peername")[0] == "127.0.0.1"
        assert app.transport.get_extra_info("peercert")["subject"]
        await close(writer)
        closed = await edge.events.wait_for(lambda e: e["kind"] == "connection.closed")
        assert closed["identity"] == "default/dev-accepted"
        assert "close_notify" in closed["reason"] or "closed" in closed["reason"]
        await asyncio.wait_for(app.lost, 5)
        await edge.endpoint.wait_idle(5)
        assert edge.endpoint.connections == 0
        assert edge.endpoint.handshakes == 0


@pytest.mark.timeout(20)
async def test_edge_close_sends_close_notify(pki: Any) -> None:
    async with running_edge(pki) as edge:
        reader, writer = await open_tls(edge, pki.client_context(pki.device("dev-bye")))
        writer.write(b"bye")
        assert await asyncio.wait_for(reader.read(), 5) == b""  # clean TLS EOF
        closed = await edge.events.wait_for(lambda e: e["kind"] == "connection.closed")
        assert closed["reason"] == "closed by the edge"
        await close(writer)


@pytest.mark.timeout(20)
async def test_no_certificate_is_refused_with_certificate_required(pki: Any) -> None:
    async with running_edge(pki) as edge:
        ctx = pki.client_context(None, version=ssl.TLSVersion.TLSv1_3, alpn=["mqtt"])
        reader, writer = await open_tls(edge, ctx)
        with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)):
            await asyncio.wait_for(reader.readexactly(1), 5)
        event = await edge.refused()
        assert event["alert"] == "certificate_required"
        assert event["reason"] == "no client certificate"
        assert "certificate and key" in event["hint"]
        assert event["sni"] == "localhost"
        assert event["alpn_offered"] == ["mqtt"]
        assert event["versions_offered"] == ["TLSv1.3"]
        assert event["set"] == "default"
        assert event["version"] == 1
        await close(writer)


@pytest.mark.timeout(20)
async def test_unknown_ca_tls12_names_the_presented_certificate(pki: Any) -> None:
    async with running_edge(pki) as edge:
        device = pki.device("dev-stranger", ca=pki.other)
        ctx = pki.client_context(device, version=ssl.TLSVersion.TLSv1_2)
        with pytest.raises(ssl.SSLError, match="UNKNOWN_CA"):
            await open_tls(edge, ctx)
        event = await edge.refused()
        assert event["alert"] == "unknown_ca"
        assert event["verify_code"] == 20
        assert event["verify_message"] == "unable to get local issuer certificate"
        cert = event["certificate"]
        assert cert["subject"] == "CN=dev-stranger"
        assert cert["issuer"] == "CN=Unknown Root"
        assert cert["serial"] == device.issued.serial_hex
        assert len(cert["sha256"]) == 64
        assert event["reason"] == "issued by `CN=Unknown Root`, which is not in set `default` v1"


@pytest.mark.timeout(20)
@pytest.mark.parametrize("source", ["verified-chain", "key-log-tap"])
async def test_unknown_ca_tls13_names_the_certificate_inside_the_encrypted_flight(
    pki: Any, source: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if source == "key-log-tap":
        # As on a Python where OpenSSL's chain cannot be read: the tap decrypts.
        monkeypatch.setattr(verifiedchain, "_lib", lambda: None)
    async with running_edge(pki, tap=source == "key-log-tap") as edge:
        device = pki.device("dev-stranger-13", ca=pki.other)
        ctx = pki.client_context(device, version=ssl.TLSVersion.TLSv1_3)
        reader, writer = await open_tls(edge, ctx)
        with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)):
            await asyncio.wait_for(reader.readexactly(1), 5)
        event = await edge.refused()
        assert event["alert"] == "unknown_ca"
        assert event["tls_version"] == "TLSv1.3"
        assert event["certificate"]["subject"] == "CN=dev-stranger-13"
        assert event["certificate"]["serial"] == device.issued.serial_hex
        assert event["reason"] == "issued by `CN=Unknown Root`, which is not in set `default` v1"
        await close(writer)
        await edge.endpoint.wait_idle(5)


@pytest.mark.timeout(20)
async def test_tls13_refusal_without_either_source_still_gives_the_reason(
    pki: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(verifiedchain, "_lib", lambda: None)
    async with running_edge(pki) as edge:
        ctx = pki.client_context(
            pki.device("dev-unnamed", ca=pki.other), version=ssl.TLSVersion.TLSv1_3
        )
        reader, writer = await open_tls(edge, ctx)
        with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)):
            await asyncio.wait_for(reader.readexactly(1), 5)
        event = await edge.refused()
        assert event["alert"] == "unknown_ca"
        assert event["certificate"] is None
        assert event["verify_code"] == 20
        await close(writer)


@pytest.mark.timeout(20)
async def test_tls13_expired_and_revoked_devices_are_named(pki: Any) -> None:
    revoked = pki.device("dev-revoked-13")
    expired = pki.device("dev-expired-13", expired=True)
    async with running_edge(pki, crl_pem=pki.crl(pki.inter, [revoked.issued])) as edge:
        cases = (
            (expired, "dev-expired-13", "certificate_expired"),
            (revoked, "dev-revoked-13", "certificate_revoked"),
        )
        for device, name, alert in cases:
            since = edge.events.last_id
            ctx = pki.client_context(device, version=ssl.TLSVersion.TLSv1_3)
            reader, writer = await open_tls(edge, ctx)
            with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)):
                await asyncio.wait_for(reader.readexactly(1), 5)
            event = await edge.refused(since=since)
            assert event["alert"] == alert
            assert event["certificate"]["serial"] == device.issued.serial_hex
            assert event["certificate"]["subject"] == f"CN={name}"
            await close(writer)


@pytest.mark.timeout(20)
async def test_expired_certificate(pki: Any) -> None:
    async with running_edge(pki) as edge:
        ctx = pki.client_context(
            pki.device("dev-expired", expired=True), version=ssl.TLSVersion.TLSv1_2
        )
        with pytest.raises(ssl.SSLError, match="CERTIFICATE_EXPIRED"):
            await open_tls(edge, ctx)
        event = await edge.refused()
        assert event["alert"] == "certificate_expired"
        assert event["reason"].startswith("client certificate expired on 20")


@pytest.mark.timeout(20)
async def test_revoked_certificate(pki: Any) -> None:
    device = pki.device("dev-revoked")
    async with running_edge(pki, crl_pem=pki.crl(pki.inter, [device.issued])) as edge:
        ctx = pki.client_context(device, version=ssl.TLSVersion.TLSv1_2)
        with pytest.raises(ssl.SSLError, match="CERTIFICATE_REVOKED"):
            await open_tls(edge, ctx)
        event = await edge.refused()
        assert event["alert"] == "certificate_revoked"
        assert device.issued.serial_hex in event["reason"]


@pytest.mark.timeout(20)
async def test_unbound_sni_without_default_gets_unrecognized_name(pki: Any) -> None:
    async with running_edge(pki, bindings={"edge.example.com": "default"}) as edge:
        ctx = pki.client_context(pki.device("dev-sni"))
        ctx.check_hostname = False
        with pytest.raises(ssl.SSLError, match="UNRECOGNIZED_NAME"):
            await open_tls(edge, ctx, sni="other.example.com")
        event = await edge.refused()
        assert event["alert"] == "unrecognized_name"
        assert "'other.example.com' is not bound" in event["reason"]
        assert event["sni"] == "other.example.com"


@pytest.mark.timeout(20)
async def test_plain_mqtt_client_is_told_to_use_tls(pki: Any) -> None:
    async with running_edge(pki) as edge:
        reader, writer = await asyncio.open_connection("127.0.0.1", edge.port)
        writer.write(CONNECT)
        assert await asyncio.wait_for(reader.read(), 5) == b""
        event = await edge.refused()
        assert "MQTT CONNECT over plain TCP" in event["reason"]
        assert event["alert"] is None
        await close(writer)
        await edge.endpoint.wait_idle(5)
        assert edge.endpoint.handshakes == 0
        await edge.endpoint.wait_idle(5)
        assert edge.endpoint.connections == 0


@pytest.mark.timeout(20)
async def test_garbage_after_a_valid_record_header(pki: Any) -> None:
    async with running_edge(pki) as edge:
        reader, writer = await asyncio.open_connection("127.0.0.1", edge.port)
        writer.write(b"\x16\x03\x01\x00\x08\x02\x00\x00\x04abcd")
        data = await asyncio.wait_for(reader.read(), 5)
        assert data == b"\x15\x03\x03\x00\x02\x02\x32"  # fatal decode_error
        event = await edge.refused()
        assert event["reason"].startswith("malformed ClientHello")
        assert event["alert"] == "decode_error"
        await close(writer)
        await edge.endpoint.wait_idle(5)


@pytest.mark.timeout(20)
async def test_stalled_handshake_times_out_and_frees_its_slot(pki: Any) -> None:
    options = EndpointOptions(handshake_timeout=0.3)
    async with running_edge(pki, options=options) as edge:
        reader, writer = await asyncio.open_connection("127.0.0.1", edge.port)
        writer.write(b"\x16\x03\x01\x00")  # a record header, then silence
        event = await edge.refused()
        assert event["reason"] == "no ClientHello within 0.3 s"
        with contextlib.suppress(ConnectionError):
            assert await asyncio.wait_for(reader.read(), 5) == b""
        await close(writer)
        assert edge.endpoint.handshakes == 0
        await edge.endpoint.wait_idle(5)
        assert edge.endpoint.connections == 0


@pytest.mark.timeout(20)
async def test_stall_after_client_hello_times_out(pki: Any) -> None:
    options = EndpointOptions(handshake_timeout=0.3)
    async with running_edge(pki, options=options) as edge:
        ctx = pki.client_context(pki.device("dev-staller"))
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        client = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
        with pytest.raises(ssl.SSLWantReadError):
            client.do_handshake()
        _reader, writer = await asyncio.open_connection("127.0.0.1", edge.port)
        writer.write(outgoing.read())  # the ClientHello, then silence
        event = await edge.refused()
        assert event["reason"] == "handshake not finished within 0.3 s"
        assert event["sni"] == "localhost"
        await close(writer)
        assert edge.endpoint.handshakes == 0


@pytest.mark.timeout(20)
async def test_client_closing_mid_handshake(pki: Any) -> None:
    async with running_edge(pki) as edge:
        ctx = pki.client_context(pki.device("dev-quitter"))
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        client = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
        with pytest.raises(ssl.SSLWantReadError):
            client.do_handshake()
        reader, writer = await asyncio.open_connection("127.0.0.1", edge.port)
        writer.write(outgoing.read())  # the ClientHello alone
        await asyncio.wait_for(reader.read(100), 5)  # the ServerHello flight
        writer.write_eof()
        event = await edge.refused()
        assert event["reason"] == "the client closed the connection during the handshake"
        assert event["sni"] == "localhost"
        await close(writer)
        assert edge.endpoint.handshakes == 0


@pytest.mark.timeout(20)
async def test_connection_limit_refuses_with_an_event(pki: Any) -> None:
    options = EndpointOptions(max_connections=1)
    async with running_edge(pki, options=options) as edge:
        device = pki.device("dev-limit")
        reader, writer = await open_tls(edge, pki.client_context(device))
        writer.write(CONNECT)
        assert await asyncio.wait_for(reader.readexactly(4), 5) == CONNACK
        sock = socket.create_connection(("127.0.0.1", edge.port))
        try:
            event = await edge.refused()
            assert event["reason"] == "connection limit reached (1 open)"
        finally:
            sock.close()
        await close(writer)
        await edge.events.wait_for(lambda e: e["kind"] == "connection.closed")
        await edge.endpoint.wait_idle(5)
        assert edge.endpoint.connections == 0


@pytest.mark.timeout(20)
async def test_handshake_limit_refuses_with_an_event(pki: Any) -> None:
    options = EndpointOptions(max_handshakes=1)
    async with running_edge(pki, options=options) as edge:
        _r1, w1 = await asyncio.open_connection("127.0.0.1", edge.port)  # holds the one slot
        _r2, w2 = await asyncio.open_connection("127.0.0.1", edge.port)
        event = await edge.refused()
        assert "too many handshakes in progress (1)" in event["reason"]
        await close(w1)
        await close(w2)
        await edge.events.wait_for(
            lambda e: e["kind"] == "tls.refused" and "before its ClientHello" in e["reason"]
        )
        assert edge.endpoint.handshakes == 0
        await edge.endpoint.wait_idle(5)
        assert edge.endpoint.connections == 0


@pytest.mark.timeout(20)
async def test_identity_rule_san_dns(pki: Any) -> None:
    from edge.identity import IdentityRule

    options = EndpointOptions(identity_rule=IdentityRule.SAN_DNS)
    async with running_edge(pki, options=options) as edge:
        named = pki.device("dev-dns", san_dns="dev-dns.devices.example")
        reader, writer = await open_tls(edge, pki.client_context(named))
        writer.write(CONNECT)
        assert await asyncio.wait_for(reader.readexactly(4), 5) == CONNACK
        accepted = await edge.events.wait_for(lambda e: e["kind"] == "tls.accepted")
        assert accepted["identity"] == "default/dev-dns.devices.example"
        await close(writer)
        since = edge.events.last_id
        reader, writer = await open_tls(edge, pki.client_context(pki.device("dev-no-dns")))
        event = await edge.refused(since)
        with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)):
            await asyncio.wait_for(reader.readexactly(1), 5)
        assert "identity rule `san-dns`" in event["reason"]
        assert event["certificate"]["subject"] == "CN=dev-no-dns"
        await close(writer)
        # A SAN that OpenSSL verifies and cryptography cannot parse (an IP address
        # of 5 bytes) is a refusal naming it, not a connection dropped unreported.
        cert, key = with_bad_ip_san(
            pki.inter,
            "dev-odd-san",
            start=pki.now - timedelta(days=1),
            end=pki.now + timedelta(days=1),
        )
        odd = pki.device("dev-odd-san")  # files to overwrite with the odd certificate
        odd.cert.write_bytes(cert.public_bytes(Encoding.PEM) + pki.inter.cert_pem)
        odd.key.write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
        since = edge.events.last_id
        reader, writer = await open_tls(edge, pki.client_context(odd))
        event = await edge.refused(since)
        with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)):
            await asyncio.wait_for(reader.readexactly(1), 5)
        assert event["reason"].startswith("identity rule `san-dns`: certificate `CN=dev-odd-san`")
        assert "has extensions that cannot be parsed" in event["reason"]
        assert event["certificate"]["subject"] == "CN=dev-odd-san"
        await close(writer)
        # And the edge carries on.
        reader, writer = await open_tls(edge, pki.client_context(named))
        writer.write(CONNECT)
        assert await asyncio.wait_for(reader.readexactly(4), 5) == CONNACK
        await close(writer)
        await edge.endpoint.wait_idle(5)


@pytest.mark.timeout(30)
async def test_flow_control_reaches_the_application_both_ways(pki: Any) -> None:
    async with running_edge(pki) as edge:
        reader, writer = await open_tls(edge, pki.client_context(pki.device("dev-slow")))
        writer.write(b"flood")
        app = await _app_for(edge, "dev-slow")
        # The device reads nothing yet: the socket buffer fills, the app is paused.
        await asyncio.wait_for(app.paused, 10)
        assert app.read_paused
        assert app.buffered > 64 * 1024
        received = 0
        while received < 128 * 65536:
            chunk = await asyncio.wait_for(reader.read(1 << 20), 10)
            assert chunk, "the edge closed before sending everything"
            received += len(chunk)
        await asyncio.wait_for(app.resumed, 10)
        assert app.transport is not None
        app.transport.resume_reading()
        assert app.transport.is_reading()
        await close(writer)


async def _app_for(edge: Edge, name: str) -> MqttDouble:
    await edge.events.wait_for(
        lambda e: e["kind"] == "tls.accepted" and e["identity"] == f"default/{name}"
    )
    return next(a for a in reversed(MqttDouble.instances) if a.session.identity.name == name)


# -- the protocol of an accepted connection (edge.mux.select_protocol) ---------------------

BOTH: dict[str, AppProtocolFactory] = {"mqtt": MqttDouble, "http": HttpDouble}


async def _refused_by_mux(edge: Edge) -> Event:
    return await edge.events.wait_for(lambda e: e["kind"] == "mux.refused")


@pytest.mark.timeout(20)
async def test_multi_listener_chooses_by_first_bytes(pki: Any) -> None:
    options = EndpointOptions(kind="multi")
    async with running_edge(pki, options=options, factories=BOTH) as edge:
        ctx = pki.client_context(pki.device("dev-multi"))
        # HTTP, with a first read too short to decide ("PO" could be POST or not).
        reader, writer = await open_tls(edge, ctx)
        writer.write(b"PO")
        await writer.drain()
        writer.write(b"ST /topics/a HTTP/1.1\r\nHost: edge\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200 OK")
        body = await asyncio.wait_for(reader.readexactly(27), 5)
        assert body == b"saw POST /topics/a HTTP/1.1"
        await close(writer)
        # MQTT on the same port: CONNECT's first byte decides.
        reader, writer = await open_tls(edge, ctx)
        writer.write(CONNECT)
        assert await asyncio.wait_for(reader.readexactly(4), 5) == CONNACK
        await close(writer)
        assert not edge.events.query(kind="mux.refused")


@pytest.mark.timeout(20)
async def test_multi_listener_refuses_garbage_with_an_event(pki: Any) -> None:
    options = EndpointOptions(kind="multi")
    async with running_edge(pki, options=options, factories=BOTH) as edge:
        reader, writer = await open_tls(edge, pki.client_context(pki.device("dev-garbage")))
        writer.write(b"\x00\x01garbage")
        assert await asyncio.wait_for(reader.read(), 5) == b""  # close_notify, then EOF
        refused = await _refused_by_mux(edge)
        assert "neither an MQTT CONNECT nor an HTTP request" in refused["reason"]
        assert refused["identity"] == "default/dev-garbage"
        assert refused["sni"] == "localhost"
        closed = await edge.events.wait_for(lambda e: e["kind"] == "connection.closed")
        assert closed["reason"] == refused["reason"]
        await close(writer)


@pytest.mark.timeout(20)
async def test_multi_listener_refuses_a_silent_device_after_the_timeout(pki: Any) -> None:
    options = EndpointOptions(kind="multi", handshake_timeout=0.3)
    async with running_edge(pki, options=options, factories=BOTH) as edge:
        reader, writer = await open_tls(edge, pki.client_context(pki.device("dev-silent")))
        assert await asyncio.wait_for(reader.read(), 5) == b""
        refused = await _refused_by_mux(edge)
        assert refused["reason"] == "no protocol bytes within 0.3 s"
        await close(writer)


@pytest.mark.timeout(20)
async def test_alpn_of_the_other_protocol_is_refused_on_a_single_protocol_listener(
    pki: Any,
) -> None:
    async with running_edge(pki) as edge:
        ctx = pki.client_context(pki.device("dev-alpn"), alpn=["http/1.1"])
        reader, writer = await open_tls(edge, ctx)
        assert await asyncio.wait_for(reader.read(), 5) == b""
        refused = await _refused_by_mux(edge)
        assert refused["reason"] == "ALPN protocol 'http/1.1' is not served on the mqtt listener"
        assert refused["alpn"] == "http/1.1"
        # No application protocol was started for it.
        assert all(a.session.identity.name != "dev-alpn" for a in MqttDouble.instances)
        await close(writer)


@pytest.mark.timeout(20)
async def test_multi_listener_without_the_chosen_service_refuses_with_an_event(pki: Any) -> None:
    options = EndpointOptions(kind="multi")
    async with running_edge(pki, options=options) as edge:  # MQTT only
        reader, writer = await open_tls(edge, pki.client_context(pki.device("dev-http")))
        writer.write(b"GET / HTTP/1.1\r\n\r\n")
        assert await asyncio.wait_for(reader.read(), 5) == b""
        refused = await edge.events.wait_for(lambda e: e["kind"] == "connection.refused")
        assert refused["reason"] == "no http service on this listener"
        assert refused["identity"] == "default/dev-http"
        await close(writer)


# -- per-source limits and the lingering budget (127.0.0.2 and up: an attacker) --


def _from(source: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    return sock


def test_the_default_per_source_cap_is_a_small_share_of_max_connections() -> None:
    assert EndpointOptions(max_connections=500).per_source_cap() == 25
    assert EndpointOptions(max_connections=50_000).per_source_cap() == 2500
    assert EndpointOptions(max_connections=20).per_source_cap() == 8
    assert EndpointOptions(max_unauthenticated_per_source=3).per_source_cap() == 3


@pytest.mark.timeout(20)
async def test_one_source_is_capped_and_the_trip_is_an_event(pki: Any) -> None:
    options = EndpointOptions(max_unauthenticated_per_source=2)
    async with running_edge(pki, options=options) as edge:
        held = [_from("127.0.0.2", edge.port) for _ in range(2)]
        extra = _from("127.0.0.2", edge.port)
        try:
            tripped = await edge.events.wait_for(lambda e: e["kind"] == "limit.tripped")
            assert tripped["limit"] == "unauthenticated_per_source"
            assert tripped["source"] == "127.0.0.2"
            refused = await edge.refused()
            assert refused["reason"] == "too many unauthenticated connections from 127.0.0.2 (2)"
            # Another address is not affected: a device from 127.0.0.1 connects.
            reader, writer = await open_tls(edge, pki.client_context(pki.device("dev-good")))
            writer.write(CONNECT)
            assert await asyncio.wait_for(reader.readexactly(4), 5) == CONNACK
            assert edge.endpoint.unauthenticated == {"127.0.0.2": 2}
            await close(writer)
        finally:
            for sock in (*held, extra):
                sock.close()
        await edge.endpoint.wait_idle(5)
        assert edge.endpoint.unauthenticated == {}


@pytest.mark.timeout(20)
async def test_a_second_trip_within_the_report_interval_is_not_reported_again(pki: Any) -> None:
    options = EndpointOptions(max_unauthenticated_per_source=1)
    async with running_edge(pki, options=options) as edge:
        socks = [_from("127.0.0.3", edge.port) for _ in range(4)]
        try:
            since = 0
            for _ in range(3):  # the three connections beyond the cap of one
                event = await edge.events.wait_for(
                    lambda e: e["kind"] == "tls.refused" and "127.0.0.3 (1)" in e["reason"],
                    since=since,
                )
                since = event["id"]
            trips = [e for e in edge.events if e["kind"] == "limit.tripped"]
            assert len(trips) == 1
        finally:
            for sock in socks:
                sock.close()


@pytest.mark.timeout(20)
async def test_the_handshake_rate_per_source_is_limited(pki: Any) -> None:
    # One token per second: the second connect within a second is refused.
    options = EndpointOptions(handshake_rate_per_source=1.0)
    async with running_edge(pki, options=options) as edge:
        first = _from("127.0.0.4", edge.port)
        second = _from("127.0.0.4", edge.port)
        try:
            tripped = await edge.events.wait_for(lambda e: e["kind"] == "limit.tripped")
            assert tripped["limit"] == "handshake_rate_per_source"
            refused = await edge.refused()
            assert refused["reason"] == "handshake rate from 127.0.0.4 over 1 per second"
        finally:
            first.close()
            second.close()


@pytest.mark.timeout(20)
async def test_refused_connections_linger_outside_the_connection_count(pki: Any) -> None:
    options = EndpointOptions(max_connections=2, refusal_linger=30.0)
    async with running_edge(pki, options=options) as edge:
        garbage: list[socket.socket] = []
        try:
            since = 0
            for _ in range(3):  # more than max_connections, one after the other
                sock = _from("127.0.0.5", edge.port)
                garbage.append(sock)
                sock.sendall(b"\x00" * 16)  # not TLS: refused, then lingering
                event = await edge.refused(since)
                assert "TLS" in event["reason"]
                since = event["id"]
            assert len(edge.endpoint.lingering) == 3
            assert edge.endpoint.connections == 0
            # Lingering refusals hold no slot: a good device still gets in.
            reader, writer = await open_tls(edge, pki.client_context(pki.device("dev-after")))
            writer.write(CONNECT)
            assert await asyncio.wait_for(reader.readexactly(4), 5) == CONNACK
            await close(writer)
        finally:
            for sock in garbage:
                sock.close()


@pytest.mark.timeout(20)
async def test_beyond_the_lingering_budget_a_refused_connection_goes_at_once(pki: Any) -> None:
    options = EndpointOptions(max_lingering=1, refusal_linger=30.0)
    async with running_edge(pki, options=options) as edge:
        first = _from("127.0.0.6", edge.port)
        first.sendall(b"\x00" * 16)
        await edge.refused()
        second = _from("127.0.0.6", edge.port)
        second.sendall(b"\x00" * 16)
        try:
            loop = asyncio.get_running_loop()
            second.setblocking(False)
            # The edge drops the second at once (EOF or reset), not after 30 s.
            with contextlib.suppress(ConnectionError):
                assert await asyncio.wait_for(loop.sock_recv(second, 10), 5) == b""
            assert len(edge.endpoint.lingering) == 1
        finally:
            first.close()
            second.close()
