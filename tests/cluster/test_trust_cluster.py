"""Certificate sets over NATS: the replicated store and cluster-wide acknowledgements.

Each "worker" here is a :class:`ClusterTrustService` with its own NATS connection and
its own cache, as one edge worker process has; real nats-server processes from the
wheel run on loopback.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

nats = pytest.importorskip("nats")

from edgenodes import edgesim  # noqa: E402

from certs.authority import CertificateAuthority  # noqa: E402
from edge.cluster.natsserver import NatsServer  # noqa: E402
from edge.cluster.trust import (  # noqa: E402
    WORKERS_BUCKET,
    ClusterTrustService,
    open_cluster_trust,
)
from edge.core.events import EventLog  # noqa: E402
from edge.trust.errors import PropagationTimeout, RefusedError  # noqa: E402
from edge.trust.model import TrustSnapshot  # noqa: E402

pytestmark = pytest.mark.timeout(90)


def ca_pem(cn: str) -> bytes:
    return CertificateAuthority.create_root(cn).cert_pem


class Recorder:
    """A worker's ``apply``: records generations; ``hold`` makes it stop acknowledging."""

    def __init__(self) -> None:
        self.seen: list[int] = []
        self.sets: dict[str, int] = {}
        self.hold: asyncio.Future[None] | None = None

    def __call__(self, snapshot: TrustSnapshot) -> Any:
        self.seen.append(snapshot.generation)
        self.sets = {n: s.version for n, s in snapshot.sets.items()}
        return self.hold


class Worker:
    """One edge worker: a NATS connection, a cluster trust service, a recorder."""

    def __init__(self, node: str, worker: str) -> None:
        self.node, self.worker = node, worker
        self.nc: Any = None
        self.service: ClusterTrustService | None = None
        self.recorder = Recorder()
        self.events = EventLog(log_events=False)

    async def start(self, url: str, cache: Path, *, ttl: float = 3.0, replicas: int = 1) -> Worker:
        self.nc = await nats.connect(
            url,
            name=f"{self.node}-{self.worker}",
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.2,
        )
        self.service = await open_cluster_trust(
            self.nc,
            node_id=self.node,
            worker_id=self.worker,
            events=self.events,
            cache_dir=cache,
            heartbeat_ttl=ttl,
            replicas=replicas,
        )
        self.service.register_worker("edge", self.recorder)
        await self.service.start()
        return self

    @property
    def svc(self) -> ClusterTrustService:
        assert self.service is not None
        return self.service

    async def stop(self) -> None:
        if self.service is not None:
            await self.service.close()
        if self.nc is not None and not self.nc.is_closed:
            await self.nc.close()


@pytest.fixture
async def grid(server: NatsServer, tmp_path: Path) -> AsyncIterator[list[Worker]]:
    """Two edge nodes with two workers each, on one nats-server."""
    workers = [Worker(n, w) for n in ("node-a", "node-b") for w in ("0", "1")]
    for w in workers:
        await w.start(server.url, tmp_path / "cache")
    yield workers
    for w in workers:
        # Bounded, so a stop that hangs fails here and names itself.
        await asyncio.wait_for(w.stop(), 20)


async def wait_for(predicate: Any, cond: asyncio.Condition, timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        async with cond:
            await cond.wait_for(predicate)


async def test_an_upload_anywhere_is_active_once_every_worker_of_every_node_applied_it(
    grid: list[Worker],
) -> None:
    a0, a1, _b0, b1 = grid
    info = await b1.svc.upload("fleet", ca_pem("Fleet Root"))
    assert info.version == 1
    snap = await b1.svc.wait_active(timeout=20)
    assert snap.sets["fleet"].version == 1
    # Active at b1 means applied everywhere: every recorder has it already.
    for w in grid:
        assert w.recorder.sets.get("fleet") == 1, (w.node, w.worker, w.recorder.seen)
    # Every cache replayed the same change into the same generation.
    gens = {w.svc.store.generation() for w in grid}
    assert gens == {snap.generation}
    status = a0.svc.status()
    await a0.svc.wait_active(snap.generation, timeout=20)
    status = a0.svc.status()
    nodes = {n["node"]: n["workers"] for n in status["cluster"]["nodes"]}
    assert set(nodes) == {"node-a", "node-b"}
    assert all(
        w["applied_generation"] >= snap.generation and w["state"] == "active"
        for ws in nodes.values()
        for w in ws
    ), status["cluster"]
    # A second change from another node: versions keep counting cluster-wide.
    info2 = await a1.svc.upload("fleet", ca_pem("Fleet Root 2"))
    assert info2.version == 2
    await a1.svc.wait_active(timeout=20)
    assert all(w.recorder.sets.get("fleet") == 2 for w in grid)
    assert "trust.active" in [e["kind"] for e in a1.events.query(kind="trust.")]


async def test_a_refused_upload_is_refused_everywhere_and_changes_nothing(
    grid: list[Worker],
) -> None:
    a0, _, b0, _ = grid
    before = b0.svc.store.generation()
    with pytest.raises(RefusedError):
        await a0.svc.upload(
            "bad", b"-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n"
        )
    # Another change after it proves b0 has replayed past the refused one.
    await a0.svc.upload("good", ca_pem("Good Root"))
    await a0.svc.wait_active(timeout=20)
    await b0.svc.wait_active(timeout=20)
    assert [s.name for s in await b0.svc.list_sets()] == ["good"]
    assert b0.svc.store.generation() == before + 1


async def test_concurrent_changes_from_every_worker_all_land_once(grid: list[Worker]) -> None:
    # Four writers race for the same log slots; compare-and-swap serialises them.
    results = await asyncio.gather(
        *(w.svc.upload("race", ca_pem(f"Race {i}")) for i, w in enumerate(grid))
    )
    assert sorted(r.version for r in results) == [1, 2, 3, 4]
    for w in grid:
        await w.svc.wait_active(timeout=30)
    versions = {tuple(v.version for v in await w.svc.versions("race")) for w in grid}
    assert versions == {(1, 2, 3, 4)}


async def test_bindings_crls_options_and_rollback_travel_too(grid: list[Worker]) -> None:
    a0, _, b0, b1 = grid
    ca = CertificateAuthority.create_root("Bound Root")
    await a0.svc.upload("bound", ca.cert_pem)
    await a0.svc.upload("bound", ca_pem("Bound Root 2"))
    await a0.svc.bind("bound", "sensors.example.com")
    await a0.svc.set_options("bound", disconnect_on_revoke=True)
    await a0.svc.rollback("bound")
    active = await a0.svc.wait_active(timeout=20)
    # Each worker declares a generation active once it has seen every acknowledgement:
    # b1 may see the last one a moment after a0 does.
    snap = await b1.svc.wait_active(active.generation, timeout=20)
    assert snap.sets["bound"].version == 1
    assert snap.sets["bound"].disconnect_on_revoke is True
    assert snap.bindings["sensors.example.com"] == "bound"
    assert await b0.svc.bindings() == {"sensors.example.com": "bound"}


async def test_a_live_worker_that_does_not_apply_holds_the_version_in_propagating(
    grid: list[Worker],
) -> None:
    a0, a1, b0, b1 = grid
    b1.recorder.hold = asyncio.get_running_loop().create_future()  # applies, never acks
    await a0.svc.upload("slow", ca_pem("Slow Root"))
    target = a0.svc.store.generation()
    # Everyone else has applied it; a0 still calls it propagating because b1 has not.
    for w in (a0, a1, b0):
        await wait_for(lambda w=w: w.recorder.sets.get("slow") == 1, a0.svc._cluster)
    with pytest.raises(PropagationTimeout):
        await a0.svc.wait_active(target, timeout=2 * b1.svc.heartbeat_ttl)
    assert a0.svc.state == "propagating"
    lagging = [
        w
        for n in a0.svc.status()["cluster"]["nodes"]
        for w in n["workers"]
        if w["state"] != "active"
    ]
    assert [(w["worker"]) for w in lagging] == ["1"]
    b1.recorder.hold.set_result(None)  # b1 acknowledges: the version becomes active
    await a0.svc.wait_active(target, timeout=20)
    assert a0.svc.state == "active"


async def test_a_dead_worker_stops_holding_once_its_heartbeat_expires(
    server: NatsServer, grid: list[Worker]
) -> None:
    a0, _a1, _b0, b1 = grid
    # b1 hangs in its apply and then "dies": no more heartbeats, key never deleted.
    b1.recorder.hold = asyncio.get_running_loop().create_future()
    b1.svc.heartbeats_paused = True
    await a0.svc.upload("orphan", ca_pem("Orphan Root"))
    target = a0.svc.store.generation()
    await a0.svc.wait_active(target, timeout=4 * b1.svc.heartbeat_ttl + 10)
    live = {
        (n["node"], w["worker"]) for n in a0.svc.status()["cluster"]["nodes"] for w in n["workers"]
    }
    assert ("node-b", "1") not in live
    # The server drops b1's key too (bucket TTL, with a limit marker watchers see).
    kv = await a0.nc.jetstream().key_value(WORKERS_BUCKET)
    watcher = await kv.watch("w.node-b.1")
    async with asyncio.timeout(4 * b1.svc.heartbeat_ttl):
        async for entry in watcher:
            if entry is not None and entry.operation is not None:
                break
    await watcher.stop()
    assert "w.node-a.0" in await kv.keys()
    b1.recorder.hold.set_result(None)


async def test_a_worker_that_joins_later_replays_everything_and_counts(
    server: NatsServer, grid: list[Worker], tmp_path: Path
) -> None:
    a0 = grid[0]
    await a0.svc.upload("early", ca_pem("Early Root"))
    await a0.svc.bind("early", "*")
    await a0.svc.wait_active(timeout=20)
    late = await Worker("node-c", "0").start(server.url, tmp_path / "cache")
    try:
        assert late.recorder.sets == {"early": 1}
        assert late.svc.current().bindings == {"*": "early"}
        await a0.svc.upload("early", ca_pem("Early Root 2"))
        await a0.svc.wait_active(timeout=20)
        assert late.recorder.sets == {"early": 2}
        nodes = {n["node"] for n in a0.svc.status()["cluster"]["nodes"]}
        assert "node-c" in nodes
    finally:
        await late.stop()


async def test_a_clean_stop_withdraws_the_worker_at_once(grid: list[Worker]) -> None:
    a0, _, _, b1 = grid
    await asyncio.wait_for(b1.stop(), 20)  # bounded: a stop that hangs names itself
    await wait_for(lambda: "w.node-b.1" not in a0.svc._peers, a0.svc._cluster, timeout=1.5)
    raw = json.dumps(a0.svc.status()["cluster"])
    assert '"node-b"' in raw


async def test_the_cli_changes_the_cluster_store_and_shows_every_worker(
    server: NatsServer, grid: list[Worker], tmp_path: Path
) -> None:
    pem_file = tmp_path / "ca.pem"
    pem_file.write_bytes(ca_pem("CLI Root"))
    code, out, err = await edgesim(
        "trust", "upload", "cli-set", str(pem_file), "--cluster", server.url
    )
    assert code == 0, err
    assert "cli-set" in out
    for w in grid:
        await wait_for(lambda w=w: w.recorder.sets.get("cli-set") == 1, w.svc._cluster)
    code, out, err = await edgesim("trust", "status", "--json", "--cluster", server.url)
    assert code == 0, err
    status = json.loads(out)
    assert [s["name"] for s in status["sets"]] == ["cli-set"]
    workers = {(n["node"], w["worker"]) for n in status["cluster"]["nodes"] for w in n["workers"]}
    assert workers == {(n, w) for n in ("node-a", "node-b") for w in ("0", "1")}
    code, out, err = await edgesim("trust", "status", "--cluster", server.url)
    assert code == 0, err
    assert "node node-b worker 1: applied generation" in out
    # A refusal through the cluster prints its findings and stores nothing.
    bad = tmp_path / "bad.pem"
    bad.write_bytes(b"not a certificate")
    code, out, err = await edgesim("trust", "upload", "cli-bad", str(bad), "--cluster", server.url)
    assert code != 0
    assert "cli-bad" not in {s.name for s in await grid[0].svc.list_sets()}


async def test_server_certificates_and_deployments_reach_every_node(grid: list[Worker]) -> None:
    a0, _, _, b1 = grid
    ca = CertificateAuthority.create_root("Server Root")
    issued = ca.issue_server(["devices.example.com"])
    await a0.svc.upload("fleet", ca.cert_pem)
    info = await a0.svc.upload_server_cert("web", issued.fullchain_pem, issued.key_pem())
    assert info.version == 1
    deployed = await a0.svc.deploy("web", {"client_auth": "required"}, default=True)
    assert deployed.version == 1
    active = await a0.svc.wait_active(timeout=20)
    # b1 declares it active once it has seen every acknowledgement, maybe after a0.
    snap = await b1.svc.wait_active(active.generation, timeout=20)
    assert snap.server_certs["web"].hostnames == ("devices.example.com",)
    assert snap.default_cert == "web"
    # b1's cache holds the key encrypted with its own key file, not the uploader's.
    assert b1.svc.store.path != a0.svc.store.path
    assert [c.name for c in await b1.svc.server_certs()] == ["web"]


async def test_a_worker_process_killed_with_kill_9_stops_holding_and_a_new_one_catches_up(
    server: NatsServer, tmp_path: Path
) -> None:
    """Real worker processes (the bench's worker: a cluster trust service in a process)."""
    a0 = await Worker("node-a", "0").start(server.url, tmp_path / "cache")
    procs: list[subprocess.Popen[bytes]] = []

    def spawn(index: int) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.cluster_trust",
                "--worker",
                server.url,
                "node-p",
                str(index),
                str(tmp_path / "pcache"),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        procs.append(proc)
        return proc

    async def ready(proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 60)
        assert line.strip() == b"ready"

    def live() -> set[str]:
        return {
            f"{n['node']}/{w['worker']}"
            for n in a0.svc.status()["cluster"]["nodes"]
            for w in n["workers"]
        }

    try:
        for i in (0, 1):
            await ready(spawn(i))
        await wait_for(lambda: {"node-p/0", "node-p/1"} <= live(), a0.svc._cluster)
        await a0.svc.upload("proc", ca_pem("Proc Root"))
        await a0.svc.wait_active(timeout=30)  # both processes acknowledged it
        procs[1].send_signal(signal.SIGSTOP)  # hangs: alive to the kernel, silent to NATS
        await a0.svc.upload("proc", ca_pem("Proc Root 2"))
        target = a0.svc.store.generation()
        procs[1].kill()  # kill -9 while it holds the change back
        procs[1].wait(10)
        # Its heartbeat key expires (15 s TTL in the bench worker); then it is active.
        await a0.svc.wait_active(target, timeout=45)
        assert "node-p/1" not in live()
        # A replacement replays the log and acknowledges the current generation.
        await ready(spawn(1))
        await wait_for(lambda: "node-p/1" in live(), a0.svc._cluster)
        await a0.svc.upload("proc", ca_pem("Proc Root 3"))
        await a0.svc.wait_active(timeout=30)
        workers = {
            w["worker"]: w["applied_generation"]
            for n in a0.svc.status()["cluster"]["nodes"]
            if n["node"] == "node-p"
            for w in n["workers"]
        }
        assert workers == {"0": a0.svc.store.generation(), "1": a0.svc.store.generation()}
    finally:
        for proc in procs:
            if proc.poll() is None:
                assert proc.stdin is not None
                proc.stdin.close()
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    pipe.close()
        await a0.stop()


def test_single_process_mode_never_imports_nats(tmp_path: Path) -> None:
    # The trust CLI on a store file, and the edge's modules: no NATS client loaded.
    code = (
        "import sys, edge.server, edge.cli as c\n"
        f"rc = c.main(['trust', 'status', '--store', {str(tmp_path / 's.db')!r}])\n"
        "assert 'nats' not in sys.modules, sorted(m for m in sys.modules if 'nats' in m)\n"
        "sys.exit(rc)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode()


async def test_the_first_worker_imports_the_store_file_of_an_edge_that_ran_alone(
    server: NatsServer, tmp_path: Path
) -> None:
    from datetime import UTC, datetime

    from cryptography.hazmat.primitives.serialization import Encoding

    from certs.crl import build_crl
    from edge.trust.sqlite import SqliteTrustStore

    ca = CertificateAuthority.create_root("Imported Root")
    store = SqliteTrustStore(tmp_path / "alone.db")
    store.upload("fleet", ca.cert_pem)
    store.upload("fleet", ca_pem("Imported Root 2"))
    store.activate("fleet", 1)
    store.add_crl(
        "fleet",
        build_crl(ca, [(7, datetime.now(UTC), None)], crl_number=1).public_bytes(Encoding.PEM),
    )
    store.bind("fleet", "*.example.com")
    store.set_options("fleet", disconnect_on_revoke=True)
    expected = store.snapshot()
    store.close()

    nc = await nats.connect(server.url)
    try:
        first = await open_cluster_trust(
            nc,
            node_id="n",
            worker_id="0",
            cache_dir=tmp_path / "c",
            seed_store=tmp_path / "alone.db",
            seed=ca_pem("Not Used"),
        )
        first.register_worker("edge", Recorder())
        await first.start()
        snap = first.current()
        assert snap.sets["fleet"].version == 1
        assert len(snap.sets["fleet"].crls) == 1
        assert snap.sets["fleet"].disconnect_on_revoke is True
        assert snap.bindings == expected.bindings == {"*.example.com": "fleet"}
        assert [v.version for v in await first.versions("fleet")] == [1, 2]
        assert "default" not in snap.sets  # the store's sets, not the PKI seed
        await first.close()
    finally:
        await nc.close()
