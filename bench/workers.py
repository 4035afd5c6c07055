"""Edge workers (``edge serve --workers N``): CPU per connect, connects per second, cost of the bus.

``python -m bench --only workers [--quick]`` starts, side by side in one run:

- ``single``: the plain single-process edge (no bus, the reference);
- ``pair``: two plain single-process edges on two ports, the fleet taking turns
  between them: two processes with no bus, no supervisor, nothing shared. What they
  cost over ``single`` is the price of splitting the load over two processes on
  this machine; what ``w2`` costs over ``pair`` is the price of the bus;
- ``w1``: ``--workers 1`` (a supervisor, one worker, the local nats-server);
- ``w2``: ``--workers 2``.

All with ``--policy open``, MQTT only, the admin API on (worker 0) so that events
travel the bus as they do in a real deployment. Phases, in rounds that rotate the
order (the neighbours' load drifts; medians are quoted):

``connect``
    a fleet in *another process* (asyncio, mTLS, MQTT 3.1.1 CONNECT/DISCONNECT,
    8 in flight) makes N connects. Reported: server CPU per connect (all of the
    edge's processes: workers + nats-server + supervisor, from /proc), split by
    process kind; the server's context switches per connect; the fleet's own CPU
    per connect; connects per second (wall). On a 2-core machine the fleet competes
    with the workers for the cores: the split says where the time went.
``route``
    on the 2-worker edge, one publisher and one subscriber on the *same* worker,
    then on *different* workers (MQTT 5 CONNACKs name the worker), QoS 0, 64-byte
    payloads: server CPU per routed message. The difference is the extra CPU a
    message costs when it crosses workers through NATS (sender's bus, nats-server,
    receiver's bus), against in-process routing.

Build: whatever ``edge.compiled status`` says (``make bench`` compiles first); the
figures record it.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from bench.broker import (
    DISCONNECT,
    MqttCounter,
    close_client,
    connect_packet,
    process_cpu_seconds,
    publish_packet,
    subscribe_packet,
)
from bench.procstat import context_switches, free_port

__all__ = ["run"]

CONCURRENCY = 8


class Edge:
    """One edge under test: its processes, its MQTT port."""

    def __init__(self, name: str, workers: int | None, pki: Path, work: Path) -> None:
        self.name = name
        self.workers = workers
        folder = work / name
        folder.mkdir()
        self.ready = folder / "ready.json"
        cmd = [sys.executable, "-m", "edge.cli", "edge", "serve", "--pki", str(pki)]
        cmd += ["--mqtt", f"127.0.0.1:{free_port()}", "--https", "off", "--multi", "off"]
        cmd += ["--admin", f"127.0.0.1:{free_port()}", "--policy", "open"]
        cmd += ["--state-dir", str(folder / "state"), "--store", str(folder / "trust.db")]
        cmd += ["--ready-file", str(self.ready), "--json"]
        if workers is not None:
            cmd += ["--workers", str(workers), "--node-id", name]
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL
        )
        assert self.proc.stdout is not None
        text = ""
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"edge {name} did not start")
            text += line.decode()
            try:
                json.loads(text)
                break
            except ValueError:
                continue
        info = json.loads(self.ready.read_text())
        self.port = int(info["ports"]["mqtt"])
        #: The MQTT ports the fleet takes turns between.
        self.ports = [self.port]
        self.pids: dict[str, list[int]] = {"edge": [self.proc.pid]}
        if workers is not None:
            self.pids = {
                "supervisor": [self.proc.pid],
                "workers": [int(w["pid"]) for w in info["workers"]],
                "nats": [int(info["nats_pid"])],
            }

    def cpu(self) -> dict[str, float]:
        """CPU seconds so far, per process kind."""
        return {kind: sum(process_cpu_seconds(p) for p in pids) for kind, pids in self.pids.items()}

    def switches(self) -> int:
        """Context switches so far, over all of the edge's processes and threads."""
        return sum(context_switches(p) for pids in self.pids.values() for p in pids)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class EdgePair:
    """Two single-process edges measured as one (the ``pair`` reference)."""

    def __init__(self, name: str, pki: Path, work: Path) -> None:
        self.edges = [Edge(f"{name}-{i}", None, pki, work) for i in (1, 2)]
        self.ports = [edge.port for edge in self.edges]

    def cpu(self) -> dict[str, float]:
        """CPU seconds so far of both processes."""
        return {"edge": sum(edge.cpu()["edge"] for edge in self.edges)}

    def switches(self) -> int:
        """Context switches so far of both processes."""
        return sum(edge.switches() for edge in self.edges)

    def stop(self) -> None:
        for edge in self.edges:
            edge.stop()


def _context(pki: Path, device: str = "dev-00000") -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=str(pki / "root-ca.pem"))
    ctx.load_cert_chain(
        str(pki / "devices" / f"{device}.pem"), str(pki / "devices" / f"{device}.key")
    )
    return ctx


# -- the fleet, in its own process ---------------------------------------------------------


def _fleet(pki: str, ports: list[int], count: int, conn: Connection) -> None:
    """Make ``count`` connects, taking turns between ``ports``; send (wall s, CPU s) back."""
    ctx = _context(Path(pki))
    tag = f"f{os.getpid()}-{time.monotonic_ns()}"

    async def main() -> float:
        sem = asyncio.Semaphore(CONCURRENCY)
        loop = asyncio.get_running_loop()

        async def one(i: int) -> None:
            async with sem:
                port = ports[i % len(ports)]
                _, proto = await loop.create_connection(
                    MqttCounter, "127.0.0.1", port, ssl=ctx, server_hostname="localhost"
                )
                assert proto.transport is not None
                proto.transport.write(connect_packet(f"{tag}-{i}"))
                code = await asyncio.wait_for(proto.connack, 30)
                if code != 0:
                    raise RuntimeError(f"CONNACK {code}")
                await close_client(proto)

        start = time.monotonic()
        await asyncio.gather(*(one(i) for i in range(count)))
        return time.monotonic() - start

    conn.recv()  # go
    cpu0 = time.process_time()
    wall = asyncio.run(main())
    conn.send((wall, time.process_time() - cpu0))


def phase_connect(edge: Edge | EdgePair, pki: Path, count: int) -> dict[str, float]:
    """Connect figures for one edge (see the module text)."""
    mp = multiprocessing.get_context("spawn")
    here, there = mp.Pipe()
    fleet = mp.Process(target=_fleet, args=(str(pki), edge.ports, count, there))
    fleet.start()
    before = edge.cpu()
    switches = edge.switches()
    here.send("go")
    wall, fleet_cpu = here.recv()
    fleet.join(30)
    after = edge.cpu()
    switches = edge.switches() - switches
    spent = {kind: after[kind] - before[kind] for kind in after}
    out = {f"cpu_ms_{kind}": 1000 * v / count for kind, v in spent.items()}
    out["server_cpu_ms"] = 1000 * sum(spent.values()) / count
    out["switches"] = switches / count
    out["fleet_cpu_ms"] = 1000 * fleet_cpu / count
    out["connects_per_s"] = count / wall
    return out


# -- routing, same worker against across workers -------------------------------------------


class _Client(MqttCounter):
    """MqttCounter that also reads the worker's name from an MQTT 5 CONNACK."""

    worker = ""

    def data_received(self, data: bytes) -> None:
        marker = b"\x26\x00\x0eedgesim-worker"
        at = data.find(marker)
        if not self.worker and at >= 0:
            start = at + len(marker)
            size = int.from_bytes(data[start : start + 2], "big")
            self.worker = data[start + 2 : start + 2 + size].decode()
        super().data_received(data)


async def _open(port: int, ctx: ssl.SSLContext, cid: str, on_publish: Any = None) -> _Client:
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_connection(
        lambda: _Client(on_publish), "127.0.0.1", port, ssl=ctx, server_hostname="localhost"
    )
    assert proto.transport is not None
    proto.transport.write(connect_packet(cid, version=5))
    if await asyncio.wait_for(proto.connack, 30) != 0:
        raise RuntimeError("refused")
    return proto


async def _pair(
    port: int, ctx: ssl.SSLContext, same: bool, on_publish: Any
) -> tuple[_Client, _Client]:
    """A subscriber and a publisher on the same worker (or on different ones)."""
    tag = time.monotonic_ns()
    sub = await _open(port, ctx, f"s{tag}", on_publish)
    for i in range(60):
        pub = await _open(port, ctx, f"p{tag}-{i}")
        if (pub.worker == sub.worker) == same:
            return sub, pub
        await close_client(pub)
    raise RuntimeError("could not place the publisher")


async def phase_route(edge: Edge, pki: Path, messages: int, same: bool) -> float:
    """Server CPU milliseconds per routed QoS 0 message."""
    ctx = _context(pki)
    received = 0
    target = 0
    reached: asyncio.Future[None] | None = None

    def on_publish() -> None:
        nonlocal received
        received += 1
        if reached is not None and received >= target and not reached.done():
            reached.set_result(None)

    sub, pub = await _pair(edge.port, ctx, same, on_publish)
    topic = f"bench/{time.monotonic_ns()}".encode()
    assert sub.transport is not None
    assert pub.transport is not None
    sub.transport.write(subscribe_packet(topic, version=5))
    await asyncio.wait_for(sub.suback, 30)
    packet = publish_packet(topic, b"x" * 64, 5)
    loop = asyncio.get_running_loop()
    before = sum(edge.cpu().values())
    sent = 0
    while sent < messages:
        batch = min(200, messages - sent)
        reached = loop.create_future()
        target = sent + batch
        pub.transport.write(packet * batch)
        sent += batch
        if received < target:
            await asyncio.wait_for(reached, 60)
    cpu = sum(edge.cpu().values()) - before
    for proto in (sub, pub):
        if proto.transport is not None:
            proto.transport.write(DISCONNECT)
        await close_client(proto)
    return 1000 * cpu / messages


def run(quick: bool = False) -> dict[str, object]:
    """Run the phases; print a summary and return the figures."""
    from certs.quickstart import quickstart
    from edge._loader import status

    # Many short rounds rather than a few long ones: the neighbours' load drifts
    # within seconds here, and a pair of rounds measured back to back sees the same.
    rounds = 3 if quick else 15
    connects = 150 if quick else 300
    messages = 3000 if quick else 10000
    figures: dict[str, Any] = {"build": status(), "rounds": rounds, "connects": connects}
    with tempfile.TemporaryDirectory(prefix="edgesim-bench-workers-") as tmp:
        work = Path(tmp)
        pki = quickstart(work / "pki", devices=1).out
        edges: dict[str, Edge | EdgePair] = {
            "single": Edge("single", None, pki, work),
            "pair": EdgePair("pair", pki, work),
            "w1": Edge("w1", 1, pki, work),
            "w2": Edge("w2", 2, pki, work),
        }
        try:
            samples: dict[str, list[dict[str, float]]] = {name: [] for name in edges}
            route: dict[str, list[float]] = {"same_worker": [], "across_workers": []}
            names = list(edges)
            for r in range(rounds):
                order = names[r % len(names) :] + names[: r % len(names)]
                for name in order:
                    samples[name].append(phase_connect(edges[name], pki, connects))
                kinds = [True, False] if r % 2 == 0 else [False, True]
                w2 = edges["w2"]
                assert isinstance(w2, Edge)
                for same in kinds:
                    per = asyncio.run(phase_route(w2, pki, messages, same))
                    route["same_worker" if same else "across_workers"].append(per)
            for name, runs in samples.items():
                figures[name] = {
                    key: round(statistics.median(run[key] for run in runs), 3) for key in runs[0]
                }
            one = figures["w1"]["server_cpu_ms"]
            figures["w2_over_w1_cpu_per_connect"] = round(figures["w2"]["server_cpu_ms"] / one, 3)
            # The same ratio within each round (w1 and w2 measured one after the other).
            pairs = [
                b["server_cpu_ms"] / a["server_cpu_ms"]
                for a, b in zip(samples["w1"], samples["w2"], strict=True)
            ]
            figures["w2_over_w1_per_round"] = [round(p, 3) for p in pairs]
            figures["w2_over_w1_per_round_median"] = round(statistics.median(pairs), 3)
            single = figures["single"]["server_cpu_ms"]
            figures["w1_over_single_cpu_per_connect"] = round(one / single, 3)
            # Two processes and nothing else, against one: the machine's share of w2/w1.
            figures["pair_over_single_cpu_per_connect"] = round(
                figures["pair"]["server_cpu_ms"] / single, 3
            )
            figures["pair_over_single_per_round_median"] = round(
                statistics.median(
                    b["server_cpu_ms"] / a["server_cpu_ms"]
                    for a, b in zip(samples["single"], samples["pair"], strict=True)
                ),
                3,
            )
            # The bus's share: two workers against two bus-less processes.
            figures["w2_over_pair_cpu_per_connect"] = round(
                figures["w2"]["server_cpu_ms"] / figures["pair"]["server_cpu_ms"], 3
            )
            same_ms = statistics.median(route["same_worker"])
            across_ms = statistics.median(route["across_workers"])
            figures["route_cpu_us_same_worker"] = round(1000 * same_ms, 1)
            figures["route_cpu_us_across_workers"] = round(1000 * across_ms, 1)
            figures["route_extra_cpu_us_across"] = round(1000 * (across_ms - same_ms), 1)
            figures["route_messages"] = messages
        finally:
            for edge in edges.values():
                edge.stop()
    _print(figures)
    return figures


def _print(f: dict[str, Any]) -> None:
    print(f"  build: {f['build']}")
    print(
        f"  {'':8} {'server ms/connect':>18} {'split':>40} {'switches':>9} {'fleet ms':>9}"
        f" {'connects/s':>11}"
    )
    for name in ("single", "pair", "w1", "w2"):
        row = f[name]
        split = " ".join(
            f"{k.removeprefix('cpu_ms_')}={v:.2f}"
            for k, v in row.items()
            if k.startswith("cpu_ms_")
        )
        print(
            f"  {name:8} {row['server_cpu_ms']:18.3f} {split:>40} {row['switches']:9.2f}"
            f" {row['fleet_cpu_ms']:9.2f} {row['connects_per_s']:11.1f}"
        )
    print(
        f"  2 workers / 1 worker, server CPU per connect: {f['w2_over_w1_cpu_per_connect']}"
        f" (median of the rounds' own ratios {f['w2_over_w1_per_round_median']},"
        f" rounds: {' '.join(str(p) for p in sorted(f['w2_over_w1_per_round']))})"
    )
    print(f"  1 worker / single process: {f['w1_over_single_cpu_per_connect']}")
    print(
        f"  two bus-less processes / one (pair / single): {f['pair_over_single_cpu_per_connect']}"
        f" (median of the rounds' own ratios {f['pair_over_single_per_round_median']});"
        f" 2 workers / pair: {f['w2_over_pair_cpu_per_connect']}"
    )
    print(
        f"  routed QoS 0 message on the 2-worker edge: same worker "
        f"{f['route_cpu_us_same_worker']} us, across workers {f['route_cpu_us_across_workers']}"
        f" us (extra {f['route_extra_cpu_us_across']} us)"
    )
