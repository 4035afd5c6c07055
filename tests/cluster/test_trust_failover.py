"""Certificate sets over NATS when things fail: a NATS node killed, an edge node cut off.

Real nats-server processes from the wheel on loopback; real EdgeServers (TLS, mTLS,
the trust service built by :func:`edge.cluster.trust.open_cluster_trust`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

nats = pytest.importorskip("nats")

from edgenodes import edgesim  # noqa: E402

from certs.authority import CertificateAuthority  # noqa: E402
from certs.quickstart import QuickstartResult  # noqa: E402
from edge.cluster.natsserver import NatsServer, start_cluster  # noqa: E402
from edge.cluster.trust import TRUST_BUCKET, cluster_trust_source  # noqa: E402
from edge.config import EdgeConfig, HostPort, ListenersConfig, TrustConfig  # noqa: E402
from edge.core.session import SessionInfo  # noqa: E402
from edge.server import EdgeServer  # noqa: E402
from edge.trust.model import TrustSnapshot  # noqa: E402

# Elections and catch-up on a shared, loaded 2-core box take their time.
pytestmark = [pytest.mark.timeout(420), pytest.mark.slow]

CONNECT = bytes.fromhex("101000044d5154540402003c000464657631")
CONNACK = b"\x20\x02\x00\x00"


class Echo(asyncio.Protocol):
    """CONNECT -> CONNACK, anything else echoed back (the broker has its own tests)."""

    def __init__(self, session: SessionInfo) -> None:
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(CONNACK if data.startswith(b"\x10") else b"echo:" + data)


def device_context(qs: QuickstartResult) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=str(qs.root_cert))
    ctx.load_cert_chain(
        str(qs.devices_dir / "dev-00000.pem"), str(qs.devices_dir / "dev-00000.key")
    )
    return ctx


async def connect_device(port: int, qs: QuickstartResult) -> tuple[Any, Any]:
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=device_context(qs), server_hostname="localhost"
    )
    writer.write(CONNECT)
    assert await asyncio.wait_for(reader.readexactly(4), 10) == CONNACK
    return reader, writer


async def echo(reader: Any, writer: Any, text: bytes) -> None:
    writer.write(text)
    assert await asyncio.wait_for(reader.readexactly(5 + len(text)), 10) == b"echo:" + text


async def close(writer: Any) -> None:
    writer.close()
    with contextlib.suppress(ssl.SSLError, ConnectionError):
        await writer.wait_closed()


class Node:
    """One edge node (one worker): a NATS connection and an EdgeServer using it."""

    def __init__(
        self, name: str, tmp: Path, qs: QuickstartResult, *, ttl: float, admin: bool = False
    ) -> None:
        self.name, self.tmp, self.qs, self.ttl = name, tmp / name, qs, ttl
        self.admin = admin
        self.nc: Any = None
        self.edge: EdgeServer | None = None

    async def start(self, servers: list[str], replicas: int) -> Node:
        self.nc = await nats.connect(
            servers=servers,
            dont_randomize=True,
            name=self.name,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.2,
        )

        # What an edge worker of a cluster runs (edge.cluster.worker plugs in the same).
        source = cluster_trust_source(
            servers,
            node=self.name,
            worker="0",
            heartbeat_ttl=self.ttl,
            replicas=replicas,
            cache_dir=self.tmp / "cache",
            submit_timeout=150,
        )

        cfg = EdgeConfig(
            state_dir=self.tmp / "state",
            listeners=ListenersConfig(
                mqtt=HostPort(host="127.0.0.1", port=0),
                https=None,
                admin=HostPort(host="127.0.0.1", port=0) if self.admin else None,
            ),
            trust=TrustConfig(store=self.tmp / "unused.db", watch_interval=None),
            pki_dir=self.qs.out,
        )
        self.edge = EdgeServer(cfg, factories={"mqtt": Echo}, trust_source=source)
        await self.edge.start()
        return self

    @property
    def trust(self) -> Any:
        assert self.edge is not None
        return self.edge.trust

    def serving(self) -> TrustSnapshot:
        """The snapshot this node's new handshakes use (what it has applied)."""
        assert self.edge is not None
        return self.edge._snapshot

    @property
    def port(self) -> int:
        assert self.edge is not None
        return self.edge.ports["mqtt"]

    async def stop(self) -> None:
        if self.edge is not None:
            await self.edge.close()
        if self.nc is not None and not self.nc.is_closed:
            await self.nc.close()


@pytest.fixture
def trio(tmp_path: Path) -> Iterator[list[NatsServer]]:
    servers = start_cluster(tmp_path / "nats", 3)
    yield servers
    for s in servers:
        s.kill()


async def active_everywhere(nodes: list[Node], timeout: float) -> None:
    """Wait until nodes[0] calls its newest change active; on timeout say who lags."""
    first = nodes[0]
    try:
        await first.trust.wait_active(timeout=timeout)
    except Exception as exc:
        seen = {n.name: (n.trust.log.applied, n.serving().generation) for n in nodes}
        raise AssertionError(
            f"{exc}; (log applied, serving generation) per node: {seen}; "
            f"{first.name} sees: {json.dumps(first.trust.status()['cluster']['nodes'])}"
        ) from None


def urls(servers: list[NatsServer], first: int) -> list[str]:
    return [servers[first].url] + [s.url for i, s in enumerate(servers) if i != first]


async def stream_leader(nc: Any) -> str:
    """The name of the server leading the store's Raft group (retried through elections)."""
    js = nc.jetstream()
    async with asyncio.timeout(30):
        while True:
            # During an election the call times out or names no leader: ask again.
            with contextlib.suppress(nats.errors.Error, TimeoutError):
                info = await js.stream_info(f"KV_{TRUST_BUCKET}")
                if info.cluster is not None and info.cluster.leader:
                    return str(info.cluster.leader)
            await asyncio.sleep(0.2)


async def test_killing_the_kv_leader_mid_change_loses_nothing_and_edges_keep_serving(
    trio: list[NatsServer], tmp_path: Path, qs: QuickstartResult
) -> None:
    a = await Node("node-a", tmp_path, qs, ttl=20).start(urls(trio, 0), replicas=3)
    b = await Node("node-b", tmp_path, qs, ttl=20).start(urls(trio, 1), replicas=3)
    try:
        # Both nodes were seeded from the PKI once (one of them won the first slot).
        assert a.trust.current().bindings == {"*": "default"}
        assert [v.version for v in await b.trust.versions("default")] == [1]
        reader, writer = await connect_device(a.port, qs)

        leader = await stream_leader(a.nc)
        victim = next(s for s in trio if s.name == leader)
        victim.kill()  # kill -9 of the store's leader
        upload = asyncio.create_task(
            a.trust.upload("fleet", CertificateAuthority.create_root("Fleet Root").cert_pem)
        )
        # While NATS elects a new leader: the connected device is served, and new
        # mTLS handshakes on both nodes succeed from each worker's local copy.
        await echo(reader, writer, b"during-election")
        for node in (a, b):
            r2, w2 = await connect_device(node.port, qs)
            await echo(r2, w2, b"new")
            await close(w2)
        info = await asyncio.wait_for(upload, 120)
        assert info.version == 1
        # Active at a means every live worker, b included, has applied it.
        await active_everywhere([a, b], timeout=120)
        assert b.serving().sets["fleet"].version == 1

        # Quorum lost (2 of 3 down): a change waits; it completes once quorum is back.
        survivors = [s for s in trio if s.running()]
        survivors[0].kill()
        change = asyncio.create_task(a.trust.bind("fleet", "fleet.example.com"))
        await echo(reader, writer, b"no-quorum")
        _r3, w3 = await connect_device(b.port, qs)  # handshakes still never wait on NATS
        await close(w3)
        assert not change.done()
        await asyncio.to_thread(
            victim.start
        )  # the killed leader comes back: 2 of 3, a quorum again
        await asyncio.wait_for(change, 150)
        await active_everywhere([a, b], timeout=120)
        assert b.serving().bindings["fleet.example.com"] == "fleet"
        await close(writer)
    finally:
        await a.stop()
        await b.stop()

    # No acknowledged change lost: a fresh worker replaying the log from the two
    # servers now up sees every change, in order.
    c = await Node("node-c", tmp_path, qs, ttl=20).start(
        [s.url for s in trio if s.running()], replicas=3
    )
    try:
        snap = c.trust.current()
        assert snap.sets["default"].version == 1
        assert snap.sets["fleet"].version == 1
        assert snap.bindings == {"*": "default", "fleet.example.com": "fleet"}
    finally:
        await c.stop()


class CuttableProxy:
    """A TCP relay between one edge node and its nats-server that a test can cut."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        self.writers += [writer, up_w]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_w), pipe(up_r, writer))

    async def cut(self) -> None:
        assert self.server is not None
        self.server.close()
        for w in self.writers:
            w.transport.abort()
        self.writers.clear()
        await self.server.wait_closed()

    async def heal(self) -> None:
        await self.start()


async def test_a_partitioned_edge_node_keeps_serving_and_catches_up_when_healed(
    tmp_path: Path, qs: QuickstartResult
) -> None:
    server = NatsServer(store_dir=tmp_path / "nats").start()
    proxy = CuttableProxy(server.port)
    await proxy.start()
    a = await Node("node-a", tmp_path, qs, ttl=3).start([server.url], replicas=1)
    c = await Node("node-c", tmp_path, qs, ttl=3).start(
        [f"nats://127.0.0.1:{proxy.port}"], replicas=1
    )
    applied: list[TrustSnapshot] = []
    c.trust.register_worker("probe", applied.append)
    try:
        reader, writer = await connect_device(c.port, qs)
        await proxy.cut()
        # A change made while node-c is cut off becomes active without it once its
        # heartbeat expires: a partitioned node cannot hold the cluster back.
        await a.trust.upload("late", CertificateAuthority.create_root("Late Root").cert_pem)
        await a.trust.wait_active(timeout=4 * a.trust.heartbeat_ttl + 10)
        # node-c keeps serving its devices and new handshakes meanwhile.
        await echo(reader, writer, b"cut-off")
        _r2, w2 = await connect_device(c.port, qs)
        await close(w2)
        assert "late" not in c.serving().sets
        await proxy.heal()
        # Healed: node-c reconnects, replays what it missed and acknowledges it.
        target = a.trust.store.generation()
        await c.trust.wait_active(target, timeout=60)
        assert c.trust.current().sets["late"].version == 1
        assert applied[-1].generation == target

        async def c_is_back() -> None:
            async with a.trust._cluster:
                await a.trust._cluster.wait_for(
                    lambda: any(
                        n["node"] == "node-c" and n["workers"][0]["applied_generation"] >= target
                        for n in a.trust.status()["cluster"]["nodes"]
                    )
                )

        await asyncio.wait_for(c_is_back(), 30)
        await close(writer)
    finally:
        await c.stop()
        await a.stop()
        await proxy.cut()
        server.stop()


async def test_an_upload_through_one_nodes_admin_api_reaches_the_other_node(
    tmp_path: Path, qs: QuickstartResult
) -> None:
    server = NatsServer(store_dir=tmp_path / "nats").start()
    a = await Node("node-a", tmp_path, qs, ttl=15, admin=True).start([server.url], replicas=1)
    b = await Node("node-b", tmp_path, qs, ttl=15, admin=True).start([server.url], replicas=1)
    try:
        assert a.edge is not None
        assert b.edge is not None
        pem_file = tmp_path / "fleet.pem"
        pem_file.write_bytes(CertificateAuthority.create_root("Admin Root").cert_pem)
        admin_a = f"http://127.0.0.1:{a.edge.ports['admin']}"
        admin_b = f"http://127.0.0.1:{b.edge.ports['admin']}"
        code, out, err = await edgesim(
            "trust",
            "upload",
            "fleet",
            str(pem_file),
            "--admin",
            admin_a,
            "--token",
            str(a.edge.admin_token),
        )
        assert code == 0, err
        await a.trust.wait_active(timeout=30)  # so every live worker has it
        assert b.serving().sets["fleet"].version == 1
        generation = a.trust.current().generation
        await b.trust.wait_active(generation, timeout=30)  # b has seen a's acknowledgement
        # Node b's admin API reports both nodes' workers with what they applied.
        code, out, err = await edgesim(
            "trust", "status", "--json", "--admin", admin_b, "--token", str(b.edge.admin_token)
        )
        assert code == 0, err
        status = json.loads(out)
        nodes = {n["node"]: n["workers"] for n in status["cluster"]["nodes"]}
        assert set(nodes) == {"node-a", "node-b"}
        assert all(ws[0]["applied_generation"] == generation for ws in nodes.values())
    finally:
        await b.stop()
        await a.stop()
        server.stop()
