"""kill -9 in the middle of a deploy: the previous deployment stays what handshakes get."""

from __future__ import annotations

import signal
import socket
import ssl
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from certs.quickstart import quickstart
from edge.config import EdgeConfig, HostPort, ListenersConfig, TrustConfig
from edge.server import EdgeServer
from edge.trust.sqlite import SqliteTrustStore

# The child uploads version 2 and deploys it with other settings (TLS 1.3 only,
# another set); the fault hook reports once the deployment's rows are in the
# uncommitted transaction, then blocks until the parent kills it: no sleeping.
CHILD = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from edge.trust.sqlite import SqliteTrustStore

    def hook(point: str) -> None:
        if point == "deploy:written":
            sys.stdout.write("written\\n")
            sys.stdout.flush()
            sys.stdin.read()

    store = SqliteTrustStore(sys.argv[1], fault_hook=hook)
    store.upload("other", Path(sys.argv[4]).read_bytes())
    store.upload_server_cert("web", Path(sys.argv[2]).read_bytes(), Path(sys.argv[3]).read_bytes())
    store.deploy("web", {"set": "other", "min_tls": "1.3"})
    sys.stdout.write("committed\\n")
    """
)


@pytest.mark.timeout(90)
def test_kill_9_during_a_deploy_keeps_the_previous_settings_active(tmp_path: Path) -> None:
    qs = quickstart(tmp_path / "pki", devices=1)
    store_path = tmp_path / "trust.db"
    first = qs.intermediate.issue_server(["devices.example.com"])
    with SqliteTrustStore(store_path) as store:
        store.upload("fleet", qs.ca_chain.read_bytes())
        store.bind("fleet", "*")
        store.upload_server_cert("web", first.fullchain_pem, first.key_pem())
        store.deploy("web", {"set": "fleet", "min_tls": "1.2"})
        generation = store.generation()
    second = qs.intermediate.issue_server(["devices.example.com"])
    files = tmp_path / "v2"
    files.mkdir()
    (files / "web.pem").write_bytes(second.fullchain_pem)
    (files / "web.key").write_bytes(second.key_pem())
    (files / "other.pem").write_bytes(qs.root.cert_pem)
    args = [str(store_path), *(str(files / n) for n in ("web.pem", "web.key", "other.pem"))]
    with subprocess.Popen(
        [sys.executable, "-c", CHILD, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as child:
        assert child.stdout is not None
        assert child.stdout.readline() == "written\n"
        child.send_signal(signal.SIGKILL)
        assert child.wait() == -signal.SIGKILL
    with SqliteTrustStore(store_path) as store:
        info = store.get_server_cert("web")
        assert info.deployment is not None
        assert info.deployment.settings.min_tls == "1.2"
        assert info.deployment.settings.set_name == "fleet"
        # The upload before the deploy committed on its own: version 2 is staged.
        assert [v.version for v in info.versions] == [1, 2]
        assert store.generation() == generation + 1  # the set "other" only
    # An edge started on the store serves the previous deployment: certificate 1,
    # TLS 1.2 allowed, devices verified by the fleet set.
    config = EdgeConfig(
        state_dir=tmp_path / "state",
        listeners=ListenersConfig(mqtt=HostPort(host="127.0.0.1", port=0), https=None, admin=None),
        trust=TrustConfig(store=store_path, watch_interval=None),
        pki_dir=qs.out,
        policy="open",
    )
    handle = EdgeServer.run_in_thread(config)
    try:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(cafile=str(qs.root_cert))
        ctx.load_cert_chain(
            str(qs.devices_dir / "dev-00000.pem"), str(qs.devices_dir / "dev-00000.key")
        )
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        raw = socket.create_connection(("127.0.0.1", handle.ports["mqtt"]), timeout=10)
        with ctx.wrap_socket(raw, server_hostname="devices.example.com") as conn:
            assert conn.getpeercert(True) == first.cert.public_bytes(Encoding.DER)
            body = b"\x00\x04MQTT\x04\x02\x00\x3c\x00\x02d1"
            conn.sendall(bytes([0x10, len(body)]) + body)
            assert conn.recv(4) == b"\x20\x02\x00\x00"
    finally:
        handle.stop()


@pytest.mark.timeout(90)
def test_a_running_edge_keeps_serving_while_a_deploy_is_killed(tmp_path: Path) -> None:
    """The edge watches the store file; a writer dies holding the lock mid-deploy."""
    import asyncio

    qs = quickstart(tmp_path / "pki", devices=1)
    store_path = tmp_path / "trust.db"
    first = qs.intermediate.issue_server(["devices.example.com"])
    with SqliteTrustStore(store_path) as store:
        store.upload("fleet", qs.ca_chain.read_bytes())
        store.bind("fleet", "*")
        store.upload_server_cert("web", first.fullchain_pem, first.key_pem())
        store.deploy("web", {"set": "fleet", "min_tls": "1.2"})
    config = EdgeConfig(
        state_dir=tmp_path / "state",
        listeners=ListenersConfig(mqtt=HostPort(host="127.0.0.1", port=0), https=None, admin=None),
        trust=TrustConfig(store=store_path, watch_interval=0.05),
        pki_dir=qs.out,
        policy="open",
    )
    handle = EdgeServer.run_in_thread(config)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=str(qs.root_cert))
    device = qs.devices_dir / "dev-00000"
    ctx.load_cert_chain(f"{device}.pem", f"{device}.key")
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2

    def presented() -> bytes:
        raw = socket.create_connection(("127.0.0.1", handle.ports["mqtt"]), timeout=10)
        with ctx.wrap_socket(raw, server_hostname="devices.example.com") as conn:
            return conn.getpeercert(True) or b""

    try:
        connected = presented()
        second = qs.intermediate.issue_server(["devices.example.com"])
        files = tmp_path / "v2"
        files.mkdir()
        (files / "web.pem").write_bytes(second.fullchain_pem)
        (files / "web.key").write_bytes(second.key_pem())
        (files / "other.pem").write_bytes(qs.root.cert_pem)
        args = [str(store_path), *(str(files / n) for n in ("web.pem", "web.key", "other.pem"))]
        events = handle.server.events
        with subprocess.Popen(
            [sys.executable, "-c", CHILD, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        ) as child:
            assert child.stdout is not None
            assert child.stdout.readline() == "written\n"
            # The writer holds the lock with its deployment uncommitted: handshakes
            # still get the deployed certificate and TLS 1.2.
            assert presented() == connected == first.cert.public_bytes(Encoding.DER)
            child.send_signal(signal.SIGKILL)
            assert child.wait() == -signal.SIGKILL
        assert presented() == connected
        # The edge still follows the store: a deploy that commits becomes active.
        with SqliteTrustStore(store_path) as store:
            store.deploy("web", {"min_tls": "1.3"})
            target = store.generation()
        future = asyncio.run_coroutine_threadsafe(
            events.wait_for(
                lambda e: e["kind"] == "trust.active" and e["generation"] >= target, timeout=10
            ),
            handle.loop,
        )
        future.result(15)
        with pytest.raises(ssl.SSLError):
            presented()
    finally:
        handle.stop()
