"""Server certificates per hostname, seen by clients nobody here wrote.

One edge (real TLS on loopback, real store) serves two hostnames:

- ``devices.example.com``: an EC certificate from the fleet PKI, verifying devices
  with the fleet's set (``fleet``);
- ``legacy.example.com``: an RSA certificate from another root, verifying devices
  with the legacy set (``legacy``).

``openssl s_client -servername`` shows which certificate each name gets and the
CA names in the CertificateRequest; ``mosquitto_pub`` publishes per hostname. It
has no SNI option, so it connects through a tiny SOCKS5 proxy (``--proxy
socks5h://``) that sends every name to the edge: the name reaches libmosquitto's
TLS as the SNI, as it would with DNS.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import socketserver
import ssl
import subprocess
import threading
import uuid
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from certs.authority import CertificateAuthority
from certs.quickstart import QuickstartResult, quickstart
from edge.config import EdgeConfig, HostPort, ListenersConfig, TrustConfig
from edge.core.events import Event
from edge.server import EdgeServer, ServerThread

pytestmark = pytest.mark.interop

T = TypeVar("T")
FLEET_HOST = "devices.example.com"
LEGACY_HOST = "legacy.example.com"


@dataclass
class Files:
    """A certificate and key on disk."""

    cert: Path
    key: Path


@dataclass
class Two:
    """The running edge, its two PKIs and the files the clients use."""

    handle: ServerThread
    qs: QuickstartResult
    legacy_root: CertificateAuthority
    port: int
    base: Path
    fleet_device: Files
    legacy_device: Files
    legacy_root_pem: Path

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 20.0) -> T:
        """Run ``coro`` on the edge's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.handle.loop).result(timeout)

    def event_after(self, kind: str, since: int, timeout: float = 10.0) -> Event:
        """The first event of ``kind`` after event id ``since``."""
        events = self.handle.server.events
        return self.run(
            events.wait_for(lambda e: e["kind"] == kind, since=since, timeout=timeout),
            timeout + 1,
        )

    @property
    def last_id(self) -> int:
        """The id of the newest event."""
        return self.handle.server.events.last_id


def _write(folder: Path, name: str, issued: Any) -> Files:
    cert, key = folder / f"{name}.pem", folder / f"{name}.key"
    cert.write_bytes(issued.fullchain_pem)
    key.write_bytes(issued.key_pem())
    key.chmod(0o600)
    return Files(cert, key)


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Two]:
    base = tmp_path_factory.mktemp("servercerts")
    qs = quickstart(base / "pki", devices=1)
    legacy_root = CertificateAuthority.create_root("Legacy Root", key_type="rsa2048")
    files = base / "files"
    files.mkdir()
    legacy_root_pem = files / "legacy-root.pem"
    legacy_root_pem.write_bytes(legacy_root.cert_pem)
    legacy_device = _write(files, "legacy-device", legacy_root.issue_device("legacy-001"))
    config = EdgeConfig(
        state_dir=base / "state",
        listeners=ListenersConfig(mqtt=HostPort(host="127.0.0.1", port=0), https=None, admin=None),
        trust=TrustConfig(store=base / "trust.db", watch_interval=None),
        pki_dir=qs.out,
        policy="open",
    )
    handle = EdgeServer.run_in_thread(config)
    try:
        t = Two(
            handle=handle,
            qs=qs,
            legacy_root=legacy_root,
            port=handle.ports["mqtt"],
            base=base,
            fleet_device=Files(qs.devices_dir / "dev-00000.pem", qs.devices_dir / "dev-00000.key"),
            legacy_device=legacy_device,
            legacy_root_pem=legacy_root_pem,
        )
        trust = handle.server.trust
        assert trust is not None
        fleet_cert = qs.intermediate.issue_server([FLEET_HOST])
        legacy_cert = legacy_root.issue_server([LEGACY_HOST], key_type="rsa2048")
        t.run(trust.upload("fleet", qs.ca_chain.read_bytes()))
        t.run(trust.upload("legacy", legacy_root.cert_pem))
        # No default binding: a name no certificate covers must be refused.
        t.run(trust.unbind("*"))
        t.run(trust.upload_server_cert("devices", fleet_cert.fullchain_pem, fleet_cert.key_pem()))
        t.run(trust.upload_server_cert("legacy", legacy_cert.fullchain_pem, legacy_cert.key_pem()))
        t.run(trust.deploy("devices", {"set": "fleet"}))
        t.run(trust.deploy("legacy", {"set": "legacy"}))
        t.run(trust.wait_active())
        yield t
    finally:
        handle.stop()


def _needs(tool: str) -> None:
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed")


def _s_client(
    two: Two, servername: str, device: Files | None, cafile: Path, *extra: str, refused: bool
) -> str:
    """Run s_client; an accepted one quits at the end of its stdin, right after the handshake."""
    _needs("openssl")
    cmd = ["openssl", "s_client", "-connect", f"127.0.0.1:{two.port}"]
    cmd += ["-servername", servername, "-CAfile", str(cafile), *extra]
    if device is not None:
        cmd += ["-cert", str(device.cert), "-key", str(device.key)]
    if refused:
        # Under TLS 1.3 the alert arrives after the client's Finished: keep reading.
        cmd.append("-ign_eof")
    result = subprocess.run(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=20,
        check=False,
    )
    return result.stdout


def _ca_names(out: str) -> list[str]:
    """The lines s_client prints under "Acceptable client certificate CA names"."""
    lines = out.splitlines()
    try:
        start = lines.index("Acceptable client certificate CA names")
    except ValueError:
        return []
    names = []
    for line in lines[start + 1 :]:
        if not line.strip() or ":" in line.split("=")[0]:
            break
        names.append(line.strip())
    return names


@pytest.mark.timeout(60)
@pytest.mark.parametrize("tls", ["-tls1_2", "-tls1_3"])
def test_s_client_gets_each_hostnames_certificate_and_ca_names(two: Two, tls: str) -> None:
    fleet = _s_client(two, FLEET_HOST, two.fleet_device, two.qs.root_cert, tls, refused=False)
    assert "subject=CN = devices.example.com" in fleet, fleet
    assert "Verify return code: 0 (ok)" in fleet, fleet
    assert _ca_names(fleet) == ["CN = edgesim Intermediate CA", "CN = edgesim Root CA"], fleet
    legacy = _s_client(two, LEGACY_HOST, two.legacy_device, two.legacy_root_pem, tls, refused=False)
    assert "subject=CN = legacy.example.com" in legacy, legacy
    assert "Server public key is 2048 bit" in legacy, legacy
    assert "Verify return code: 0 (ok)" in legacy, legacy
    assert _ca_names(legacy) == ["CN = Legacy Root"], legacy


@pytest.mark.timeout(60)
def test_a_fleet_device_is_refused_on_the_legacy_hostname(two: Two) -> None:
    since = two.last_id
    out = _s_client(
        two, LEGACY_HOST, two.fleet_device, two.legacy_root_pem, "-tls1_3", refused=True
    )
    assert "alert unknown ca" in out, out
    event = two.event_after("tls.refused", since)
    assert event["set"] == "legacy"
    assert event["sni"] == LEGACY_HOST


@pytest.mark.timeout(60)
def test_an_unknown_hostname_is_refused_with_unrecognized_name(two: Two) -> None:
    since = two.last_id
    out = _s_client(two, "nobody.example.org", two.fleet_device, two.qs.root_cert, refused=True)
    assert "unrecognized name" in out, out
    event = two.event_after("tls.refused", since)
    assert event["alert"] == "unrecognized_name"
    assert event["sni"] == "nobody.example.org"
    assert "'nobody.example.org' matches no server certificate" in event["reason"]


class _Socks5(socketserver.ThreadingTCPServer):
    """A SOCKS5 proxy (no auth, CONNECT only) that sends every name to one port."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, target_port: int) -> None:
        super().__init__(("127.0.0.1", 0), _Socks5Handler)
        self.target_port = target_port
        self.names: list[str] = []


class _Socks5Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        server = self.server
        assert isinstance(server, _Socks5)
        sock: socket.socket = self.request
        sock.settimeout(20)
        head = _recv(sock, 2)
        _recv(sock, head[1])  # the offered methods: "no auth" is answered regardless
        sock.sendall(b"\x05\x00")
        request = _recv(sock, 4)
        if request[3] == 3:
            name = _recv(sock, _recv(sock, 1)[0]).decode()
        else:
            name = socket.inet_ntoa(_recv(sock, 4))
        _recv(sock, 2)  # the port the client asked for: the edge's is used
        server.names.append(name)
        with socket.create_connection(("127.0.0.1", server.target_port), timeout=20) as upstream:
            sock.sendall(b"\x05\x00\x00\x01" + bytes(4) + b"\x00\x00")
            pump = threading.Thread(target=_pipe, args=(upstream, sock), daemon=True)
            pump.start()
            _pipe(sock, upstream)
            pump.join(20)


def _recv(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("SOCKS client went away")
        data += chunk
    return data


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while chunk := src.recv(65536):
            dst.sendall(chunk)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


@pytest.fixture
def socks(two: Two) -> Iterator[_Socks5]:
    proxy = _Socks5(two.port)
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        proxy.shutdown()
        proxy.server_close()
        thread.join(10)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("which", ["fleet", "legacy"])
def test_mosquitto_pub_per_hostname(two: Two, socks: _Socks5, which: str) -> None:
    _needs("mosquitto_pub")
    host, device, cafile = (
        (FLEET_HOST, two.fleet_device, two.qs.root_cert)
        if which == "fleet"
        else (LEGACY_HOST, two.legacy_device, two.legacy_root_pem)
    )
    since = two.last_id
    cmd = ["mosquitto_pub", "-h", host, "-p", "8883"]
    cmd += ["--proxy", f"socks5h://127.0.0.1:{socks.server_address[1]}"]
    cmd += ["--cafile", str(cafile), "--cert", str(device.cert), "--key", str(device.key)]
    cmd += ["-t", f"certs/{uuid.uuid4().hex}", "-m", "hi", "-q", "1"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert socks.names == [host]
    accepted = two.event_after("tls.accepted", since)
    assert accepted["sni"] == host
    assert accepted["set"] == which


def _device_context(cafile: Path, device: Files) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=str(cafile))
    ctx.load_cert_chain(str(device.cert), str(device.key))
    return ctx


def _mqtt_connect(ctx: ssl.SSLContext, port: int, host: str, client_id: str) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    conn = ctx.wrap_socket(raw, server_hostname=host)
    cid = client_id.encode()
    body = b"\x00\x04MQTT\x04\x02\x00\x3c" + len(cid).to_bytes(2, "big") + cid
    conn.sendall(bytes([0x10, len(body)]) + body)
    assert conn.recv(4) == b"\x20\x02\x00\x00"
    return conn


def _ping(conn: ssl.SSLSocket) -> None:
    conn.sendall(b"\xc0\x00")
    assert conn.recv(2) == b"\xd0\x00"


@pytest.mark.timeout(90)
def test_rotation_keeps_a_connected_device_and_rollback_is_one_call(two: Two) -> None:
    trust = two.handle.server.trust
    assert trust is not None
    ctx = _device_context(two.qs.root_cert, two.fleet_device)
    before = _mqtt_connect(ctx, two.port, FLEET_HOST, "rotating-device")
    try:
        first = before.getpeercert(True)
        rotated = two.qs.intermediate.issue_server([FLEET_HOST])
        version = two.run(
            trust.upload_server_cert("devices", rotated.fullchain_pem, rotated.key_pem())
        )
        assert version.version == 2
        # A new version is staged: handshakes keep the deployed one until deploy.
        staged = _mqtt_connect(ctx, two.port, FLEET_HOST, "still-old")
        assert staged.getpeercert(True) == first
        staged.close()
        deployment = two.run(trust.deploy("devices"))  # same settings, newest version
        assert deployment.settings.set_name == "fleet"
        two.run(trust.wait_active())
        after = _mqtt_connect(ctx, two.port, FLEET_HOST, "after-rotation")
        assert after.getpeercert(True) == rotated.cert.public_bytes(Encoding.DER)
        after.close()
        _ping(before)  # the device connected before the rotation is still served
        back = two.run(trust.rollback_server_cert("devices"))
        assert back is not None
        assert back.version == 1
        two.run(trust.wait_active())
        again = _mqtt_connect(ctx, two.port, FLEET_HOST, "after-rollback")
        assert again.getpeercert(True) == first
        again.close()
        _ping(before)
    finally:
        before.close()


@pytest.mark.timeout(60)
def test_per_hostname_settings_no_client_certificate_and_tls13_only(two: Two) -> None:
    trust = two.handle.server.trust
    assert trust is not None
    open_cert = two.qs.intermediate.issue_server(["open.example.com"])
    strict_cert = two.qs.intermediate.issue_server(["strict.example.com"])
    two.run(trust.upload_server_cert("open", open_cert.fullchain_pem, open_cert.key_pem()))
    two.run(trust.upload_server_cert("strict", strict_cert.fullchain_pem, strict_cert.key_pem()))
    two.run(trust.deploy("open", {"client_auth": "none"}))
    two.run(trust.deploy("strict", {"set": "fleet", "min_tls": "1.3", "identity_rule": "sha256"}))
    two.run(trust.wait_active())
    # No client certificate requested: a device without one is accepted, named by address.
    anonymous = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    anonymous.load_verify_locations(cafile=str(two.qs.root_cert))
    since = two.last_id
    conn = _mqtt_connect(anonymous, two.port, "open.example.com", "anon")
    conn.close()
    accepted = two.event_after("tls.accepted", since)
    assert accepted["identity"].startswith("anonymous/127.0.0.1:")
    # TLS 1.3 only: a TLS 1.2 device is refused; a TLS 1.3 one is named by the rule.
    old = _device_context(two.qs.root_cert, two.fleet_device)
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    since = two.last_id
    with pytest.raises(ssl.SSLError, match=r"PROTOCOL_VERSION|protocol version"):
        _mqtt_connect(old, two.port, "strict.example.com", "old-tls")
    refused = two.event_after("tls.refused", since)
    assert refused["sni"] == "strict.example.com"
    since = two.last_id
    conn = _mqtt_connect(
        _device_context(two.qs.root_cert, two.fleet_device), two.port, "strict.example.com", "s"
    )
    conn.close()
    accepted = two.event_after("tls.accepted", since)
    name = accepted["identity"].split("/", 1)[1]
    assert len(name) == 64  # the SHA-256 fingerprint, not the CN
    for name in ("open", "strict"):
        two.run(trust.delete_server_cert(name))
    two.run(trust.wait_active())
