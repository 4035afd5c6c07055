"""Good devices' connect time while a flood of bad connections arrives: quiet against flooded.

One real edge (``EdgeServer`` in its own thread and event loop, real mutual TLS,
the quickstart PKI, open policy, ``max_connections`` low) and, on the main loop:

- *the flood*: stalled connections (TCP open, nothing sent), slow ClientHellos
  (a TLS record header, then nothing), garbage bytes, and TLS handshakes without
  a client certificate (refused with ``certificate_required``), from a few
  loopback source addresses (127.0.0.2 and up). Bounded in count; loopback only.
- *good devices* from 127.0.0.1: MQTT (CONNECT -> CONNACK on the MQTT listener),
  HTTPS (``GET`` -> a status line) and WebSocket (``/ws`` upgrade -> ``101``) on
  the HTTPS listener, a few at a time. A device's connect time runs from TCP
  connect to the protocol's own acknowledgement.

:func:`scenario` runs both and returns the good devices' outcomes; the test
(tests/server/test_flood.py) asserts none was refused, and :func:`run` (``make
bench``) reports the connect p99 flooded against quiet. Timing belongs here,
never in a unit test.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import multiprocessing
import multiprocessing.process
import multiprocessing.queues
import os
import socket
import ssl
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from certs.quickstart import QuickstartResult, quickstart
from edge.config import EdgeConfig, HostPort, ListenersConfig, TlsConfig, TrustConfig
from edge.server import EdgeServer, ServerThread

#: The kinds of bad connection, in the order the flood cycles through them.
FLOOD_KINDS = ("stalled", "slow-hello", "garbage", "no-certificate")
#: Seconds any one flood or good connection may take before the driver gives up on it.
_IO_TIMEOUT = 20.0


@dataclass
class Outcome:
    """What happened to the good devices (and what the flood did)."""

    #: Connect times in seconds of good devices that got their acknowledgement, by protocol.
    times: dict[str, list[float]] = field(default_factory=dict)
    #: Good devices refused or failed, as ``"protocol: why"``.
    failures: list[str] = field(default_factory=list)
    #: Flood connections made, by kind.
    flood: Counter[str] = field(default_factory=Counter)
    #: ``limit.tripped`` and ``tls.refused`` events the edge emitted.
    events: Counter[str] = field(default_factory=Counter)


def edge_config(state: Path, qs: QuickstartResult, max_connections: int) -> EdgeConfig:
    """The edge under test: MQTT and HTTPS listeners on free ports, low limits."""
    return EdgeConfig(
        state_dir=state,
        listeners=ListenersConfig(
            mqtt=HostPort(host="127.0.0.1", port=0),
            https=HostPort(host="127.0.0.1", port=0),
            admin=None,
        ),
        tls=TlsConfig(max_connections=max_connections, handshake_timeout=5.0),
        trust=TrustConfig(store=state / "trust.db", watch_interval=None),
        pki_dir=qs.out,
        policy="open",
    )


def _device_context(qs: QuickstartResult) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=str(qs.root_cert))
    ctx.load_cert_chain(
        str(qs.devices_dir / "dev-00000.pem"), str(qs.devices_dir / "dev-00000.key")
    )
    return ctx


def _connect_packet(client_id: str) -> bytes:
    cid = client_id.encode()
    body = b"\x00\x04MQTT\x04\x02\x00\x3c" + len(cid).to_bytes(2, "big") + cid
    return bytes([0x10, len(body)]) + body


async def _good(protocol: str, port: int, ctx: ssl.SSLContext, n: int) -> float:
    """One good device: connect, get the protocol's acknowledgement, close; the seconds taken."""
    started = time.perf_counter()
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=ctx, server_hostname="localhost"
    )
    try:
        if protocol == "mqtt":
            writer.write(_connect_packet(f"good-{n}"))
            ack = await reader.readexactly(4)
            if ack != b"\x20\x02\x00\x00":
                raise ConnectionError(f"CONNACK {ack.hex()}")
        elif protocol == "https":
            writer.write(
                f"GET /topics/good/{n} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode()
            )
            line = await reader.readline()
            if not line.startswith((b"HTTP/1.1 404", b"HTTP/1.1 200")):
                raise ConnectionError(f"status line {line!r}")
        else:
            writer.write(
                b"GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                b"Sec-WebSocket-Version: 13\r\n\r\n"
            )
            line = await reader.readline()
            if not line.startswith(b"HTTP/1.1 101"):
                raise ConnectionError(f"status line {line!r}")
        return time.perf_counter() - started
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def _good_devices(
    protocol: str, port: int, ctx: ssl.SSLContext, count: int, concurrency: int, out: Outcome
) -> None:
    gate = asyncio.Semaphore(concurrency)
    times = out.times.setdefault(protocol, [])

    async def one(n: int) -> None:
        async with gate:
            try:
                times.append(await asyncio.wait_for(_good(protocol, port, ctx, n), _IO_TIMEOUT))
            except (
                OSError,
                EOFError,
                ssl.SSLError,
                TimeoutError,
                asyncio.IncompleteReadError,
            ) as exc:
                out.failures.append(f"{protocol} #{n}: {type(exc).__name__}: {exc}")

    await asyncio.gather(*(one(n) for n in range(count)))


async def _bad(kind: str, source: str, port: int, bad_ctx: ssl.SSLContext) -> None:
    """One flood connection of ``kind`` from ``source``; returns when the edge let go of it."""
    loop = asyncio.get_running_loop()
    if kind == "no-certificate":
        with contextlib.suppress(OSError, ssl.SSLError, EOFError, asyncio.IncompleteReadError):
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=bad_ctx, server_hostname="localhost", local_addr=(source, 0)
            )
            writer.write(_connect_packet("bad"))
            await reader.read(100)  # the alert (TLS 1.3 refuses after the handshake)
            writer.close()
        return
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        sock.bind((source, 0))
        await loop.sock_connect(sock, ("127.0.0.1", port))
        if kind == "garbage":
            await loop.sock_sendall(sock, os.urandom(64))
        elif kind == "slow-hello":
            await loop.sock_sendall(sock, b"\x16\x03\x01\x02\x00")  # a record header, no body
        # Hold until the edge closes or resets the connection.
        while await loop.sock_recv(sock, 4096):
            pass
    except OSError:
        pass
    finally:
        sock.close()


async def _flood(
    ports: list[int],
    sources: list[str],
    total: int,
    concurrency: int,
    out: Outcome,
    ramped: asyncio.Event,
) -> None:
    bad_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    bad_ctx.check_hostname = False
    bad_ctx.verify_mode = ssl.CERT_NONE
    gate = asyncio.Semaphore(concurrency)
    plan = zip(
        range(total), itertools.cycle(FLOOD_KINDS), itertools.cycle(sources), itertools.cycle(ports)
    )

    async def one(kind: str, source: str, port: int) -> None:
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(_bad(kind, source, port, bad_ctx), _IO_TIMEOUT)
        finally:
            gate.release()

    tasks = []
    for _n, kind, source, port in plan:
        await gate.acquire()
        out.flood[kind] += 1
        tasks.append(asyncio.create_task(one(kind, source, port)))
        if len(tasks) >= concurrency:
            ramped.set()
    ramped.set()
    await asyncio.gather(*tasks)


async def scenario(
    edge: ServerThread,
    qs: QuickstartResult,
    *,
    flood_total: int,
    good_per_protocol: int = 100,
    sources: int = 4,
    flood_concurrency: int = 1000,
    good_concurrency: int = 8,
) -> Outcome:
    """Good devices over MQTT, HTTPS and WebSocket, during a flood of ``flood_total`` (0: quiet)."""
    out = Outcome()
    ctx = _device_context(qs)
    mqtt, https = edge.ports["mqtt"], edge.ports["https"]
    loop = asyncio.get_running_loop()
    spawn = multiprocessing.get_context("spawn")
    ramped = spawn.Event()
    results: multiprocessing.queues.SimpleQueue[dict[str, int]] = spawn.SimpleQueue()
    flood: multiprocessing.process.BaseProcess | None = None

    def count(event: Any) -> None:
        # Called on the edge's thread; Counter updates are atomic enough under the GIL.
        if event["kind"] in ("limit.tripped", "tls.refused", "mux.refused"):
            out.events[event["kind"]] += 1

    remove = edge.server.events.add_listener(count)
    try:
        if flood_total:
            # The flood's own client work (TLS handshakes) runs in a process of its
            # own, so that it slows the edge, not the good devices' event loop.
            addresses = [f"127.0.0.{2 + i}" for i in range(sources)]
            flood = spawn.Process(
                target=_flood_process,
                args=([mqtt, https], addresses, flood_total, flood_concurrency, ramped, results),
                daemon=True,
            )
            flood.start()
            # The flood holds its share of the edge before the good devices come.
            if not await loop.run_in_executor(None, ramped.wait, 60.0):
                raise RuntimeError("the flood process did not start within 60 s")
        for protocol, port in (("mqtt", mqtt), ("https", https), ("ws", https)):
            await _good_devices(protocol, port, ctx, good_per_protocol, good_concurrency, out)
        if flood is not None:
            out.flood.update(await loop.run_in_executor(None, results.get))
            await loop.run_in_executor(None, flood.join, 30.0)
    finally:
        remove()
        if flood is not None and flood.is_alive():
            flood.kill()
    return out


def _flood_process(
    ports: list[int],
    sources: list[str],
    total: int,
    concurrency: int,
    ramped: Any,
    results: Any,
) -> None:
    """The flood, in a child process: sets ``ramped``, then puts the counts by kind."""
    out = Outcome()

    async def main() -> None:
        started = asyncio.Event()
        task = asyncio.create_task(_flood(ports, sources, total, concurrency, out, started))
        await started.wait()
        ramped.set()
        await task

    asyncio.run(main())
    results.put(dict(out.flood))


def p99(values: list[float]) -> float:
    """The 99th percentile (nearest rank) of ``values``."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(0.99 * len(ordered)) - 1))]


def run(quick: bool = False) -> dict[str, Any]:
    """Connect p99 per protocol, quiet and flooded, and their ratio (``make bench``)."""
    good = 50 if quick else 100
    flood_total = 1000 if quick else 2000
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        qs = quickstart(root / "pki", devices=1)
        figures: dict[str, Any] = {"good_per_protocol": good, "flood_total": flood_total}
        for label, total in (("quiet", 0), ("flooded", flood_total)):
            config = edge_config(root / label, qs, max_connections=500)
            with EdgeServer.run_in_thread(config) as edge:
                out = asyncio.run(scenario(edge, qs, flood_total=total, good_per_protocol=good))
            figures[label] = {
                protocol: {"p99_ms": round(p99(times) * 1000, 2), "n": len(times)}
                for protocol, times in out.times.items()
            }
            figures[label]["failures"] = len(out.failures)
            if total:
                figures[label]["flood"] = dict(out.flood)
                figures[label]["events"] = dict(out.events)
        figures["p99_ratio"] = {
            protocol: round(
                figures["flooded"][protocol]["p99_ms"] / figures["quiet"][protocol]["p99_ms"], 2
            )
            for protocol in ("mqtt", "https", "ws")
        }
        print(figures)
        return figures
