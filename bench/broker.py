"""The edge's MQTT over mutual TLS against Mosquitto 2.0, side by side, in one run.

Both servers run as child processes with the same PKI (a quickstart: root,
intermediate, EC P-256 server and device keys) and the same mTLS requirement;
their CPU time is read from ``/proc/<pid>/stat`` before and after each phase, so
the load generator's own CPU (this process) is not counted. Phases, each
repeated for several rounds with the servers taking turns, medians reported:

1. **connect**: N mTLS handshakes + MQTT CONNECT/CONNACK + DISCONNECT, a few at a
   time, in batches of 100 that alternate between the servers; server CPU per
   connect. The edge runs its default configuration: a refused TLS 1.3
   device's certificate is named (``[tls] capture_tls13_certificates``), read
   from OpenSSL's verified chain after the refusal, so accepted devices pay
   nothing for it (``python -m bench.connect_cost --capture tap`` counts what
   the key log fallback would cost).
2. **route**: P publishers send QoS 0 messages to one topic that S subscribers
   hold; a publisher sends its next window only once the subscribers have
   received the previous one (so neither server drops); server CPU per routed
   message (one delivery to one subscriber).
3. **idle**: K devices connect and stay; server RSS growth per device.

Phases 1 and 2 run twice per round: in MQTT 3.1.1 and in MQTT 5 (the same bytes
with an empty property block, as a device that sends no properties does), so the
MQTT 5 figures compare with the edge's own 3.1.1 ones (target: within 10 %) and
with Mosquitto's MQTT 5 ones (target: at or under), side by side.

Before the phases, what each server actually negotiates with the same client is
read and reported (``openssl s_client``: protocol, suite, key exchange group,
signature; the Python client: whether session tickets were issued), so that a
difference in the figures is not a difference in the cryptography.

Ratios are edge / Mosquitto (targets: CPU at most 0.8, memory at most 1.5).
The full run ends with a **hold** test: 10,000 devices connected to the edge at
once, from several load-generator processes.

The load generator is a minimal MQTT 3.1.1 client on asyncio (uvloop when
available) written here, not the edge's codec, so both servers face identical
bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import json
import multiprocessing
import resource
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from bench import mosquitto
from bench.mosquitto import TlsFiles
from bench.procstat import cpu_seconds, rss_bytes, stop_process

__all__ = ["run"]

_TOPIC = b"bench/t"


# -- the servers ------------------------------------------------------------------


@dataclass
class Server:
    """A running server process and its MQTT port."""

    name: str
    proc: subprocess.Popen[bytes]
    port: int

    @property
    def pid(self) -> int:
        """The server's process id."""
        return self.proc.pid

    def cpu(self) -> float:
        """CPU seconds (user + system, every thread) the server has used so far."""
        return process_cpu_seconds(self.pid)

    def stop(self) -> None:
        """Terminate and reap the process (the drain thread ends at EOF)."""
        stop_process(self.proc)


def process_cpu_seconds(pid: int) -> float:
    """CPU seconds used so far by process ``pid``, to the nanosecond where Linux allows it.

    ``/proc/<pid>/stat`` counts in clock ticks (10 ms): 300 connects of 2 ms
    each are only 60 ticks, a 2 % step. POSIX ``clock_getcpuclockid`` gives the
    process's CPU clock instead; ``/proc`` remains the fallback.
    """
    clock = _cpu_clocks.get(pid)
    if clock is None:
        clock_id = ctypes.c_int()
        if _libc is None or _libc.clock_getcpuclockid(pid, ctypes.byref(clock_id)) != 0:
            return cpu_seconds(pid)
        clock = _cpu_clocks[pid] = clock_id.value
    try:
        return time.clock_gettime(clock)
    except OSError:  # the process is gone
        return cpu_seconds(pid)


_libc_name = ctypes.util.find_library("c")
_libc = ctypes.CDLL(_libc_name, use_errno=True) if _libc_name else None
_cpu_clocks: dict[int, int] = {}


def _wait_line(proc: subprocess.Popen[bytes], marker: bytes, what: str) -> bytes:
    """Read stderr until ``marker``; then keep draining it in a thread so the server never blocks."""
    assert proc.stderr is not None
    stream = proc.stderr
    seen = b""
    while True:
        line = stream.readline()
        if not line:
            raise RuntimeError(
                f"{what} exited before it was ready: {seen.decode(errors='replace')}"
            )
        seen += line
        if marker in line:
            threading.Thread(target=_drain, args=(stream,), daemon=True).start()
            return line


def _drain(stream: Any) -> None:
    with contextlib.suppress(OSError, ValueError):
        while stream.read(65536):
            pass


def start_edge(pki: Path, work: Path) -> Server:
    """Start ``edgesim edge serve``, default configuration, on a free port with ``pki``."""
    name = "edge"
    cmd = [sys.executable, "-m", "edge.cli", "edge", "serve", "--pki", str(pki)]
    cmd += ["--mqtt", "127.0.0.1:0", "--https", "off", "--multi", "off", "--admin", "off"]
    # A state directory per process: the memory rounds start a fresh edge while the
    # main one runs, and two edges may not share one MQTT state file.
    state = tempfile.mkdtemp(prefix=f"{name}-state-", dir=work)
    cmd += ["--policy", "open", "--state-dir", state]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
    line = _wait_line(proc, b"listening", "the edge")
    port = int(line.split(b"mqtt=127.0.0.1:")[1].split()[0])
    return Server(name, proc, port)


def start_mosquitto(pki: Path, work: Path) -> Server:
    """Start Mosquitto with a mutual TLS listener equivalent to the edge's."""
    started = mosquitto.start_mosquitto(
        work,
        tls=TlsFiles(pki / "ca-chain.pem", pki / "server.pem", pki / "server.key"),
        extra=["log_type warning", "use_identity_as_username true", "max_queued_messages 100000"],
    )
    return Server("mosquitto", started.proc, started.port)


# -- a minimal MQTT 3.1.1 client ----------------------------------------------------


def _string(data: bytes) -> bytes:
    return len(data).to_bytes(2, "big") + data


def _packet(first: int, body: bytes) -> bytes:
    n = len(body)
    length = bytearray()
    while True:
        byte = n % 128
        n //= 128
        length.append(byte | (0x80 if n else 0))
        if not n:
            break
    return bytes([first]) + bytes(length) + body


def _props(version: int) -> bytes:
    # MQTT 5 puts a property block (here empty: length 0) where 3.1.1 has none.
    return b"\x00" if version == 5 else b""


def connect_packet(client_id: str, keepalive: int = 0, version: int = 4) -> bytes:
    """CONNECT, clean session/clean start; ``version`` 4 (3.1.1) or 5."""
    body = _string(b"MQTT") + bytes([version, 0x02]) + keepalive.to_bytes(2, "big")
    return _packet(0x10, body + _props(version) + _string(client_id.encode()))


def subscribe_packet(topic: bytes, pid: int = 1, version: int = 4) -> bytes:
    """SUBSCRIBE to one filter at QoS 0."""
    return _packet(0x82, pid.to_bytes(2, "big") + _props(version) + _string(topic) + b"\x00")


def publish_packet(topic: bytes, payload: bytes, version: int = 4) -> bytes:
    """PUBLISH at QoS 0."""
    return _packet(0x30, _string(topic) + _props(version) + payload)


DISCONNECT = b"\xe0\x00"


class MqttCounter(asyncio.Protocol):
    """Counts MQTT packets by type as they arrive; futures for CONNACK and SUBACK."""

    def __init__(self, on_publish: Callable[[], None] | None = None) -> None:
        loop = asyncio.get_running_loop()
        self.connack: asyncio.Future[int] = loop.create_future()
        self.suback: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._on_publish = on_publish

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport."""
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        """Split packets by their fixed header and count them."""
        buf = self._buf
        buf += data
        pos = 0
        while True:
            if len(buf) - pos < 2:
                break
            mult, length, i = 1, 0, pos + 1
            while True:
                if i >= len(buf):
                    break
                byte = buf[i]
                length += (byte & 0x7F) * mult
                mult *= 128
                i += 1
                if not byte & 0x80:
                    break
            else:
                break
            if (i >= len(buf) and buf[i - 1] & 0x80) or len(buf) < i + length:
                break
            kind = buf[pos] >> 4
            if kind == 3 and self._on_publish is not None:
                self._on_publish()
            elif kind == 2 and not self.connack.done():
                # The return code (3.1.1) or reason code (5): both follow the flags byte.
                self.connack.set_result(buf[i + 1])
            elif kind == 9 and not self.suback.done():
                self.suback.set_result(None)
            pos = i + length
        del buf[:pos]

    def connection_lost(self, exc: Exception | None) -> None:
        """Fail the waits that cannot complete any more."""
        for fut in (self.connack, self.suback):
            if not fut.done():
                fut.set_exception(ConnectionError(f"closed: {exc}"))
                fut.exception()  # an awaiting caller still gets it; nobody else must
        if not self.closed.done():
            self.closed.set_result(None)


def client_context(pki: Path, device: str = "dev-00000") -> ssl.SSLContext:
    """A device context: trusts the root, presents one quickstart device certificate."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=str(pki / "root-ca.pem"))
    devices = pki / "devices"
    ctx.load_cert_chain(str(devices / f"{device}.pem"), str(devices / f"{device}.key"))
    return ctx


async def open_client(
    port: int,
    ctx: ssl.SSLContext,
    client_id: str,
    on_publish: Callable[[], None] | None = None,
    version: int = 4,
) -> MqttCounter:
    """Connect with mTLS, send CONNECT (MQTT ``version`` 4 or 5), wait for a CONNACK 0."""
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_connection(
        lambda: MqttCounter(on_publish), "127.0.0.1", port, ssl=ctx, server_hostname="localhost"
    )
    assert proto.transport is not None
    proto.transport.write(connect_packet(client_id, version=version))
    code = await asyncio.wait_for(proto.connack, 30)
    if code != 0:
        raise RuntimeError(f"CONNACK return code {code}")
    return proto


async def close_client(proto: MqttCounter) -> None:
    """DISCONNECT and wait for the socket to close."""
    if proto.transport is not None and not proto.transport.is_closing():
        proto.transport.write(DISCONNECT)
        proto.transport.close()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(proto.closed, 10)


# -- phases -----------------------------------------------------------------------------


async def phase_connect(
    server: Server, ctx: ssl.SSLContext, n: int, concurrency: int, version: int = 4
) -> float:
    """Server CPU seconds per mTLS connect + CONNECT/CONNACK (+ DISCONNECT)."""
    sem = asyncio.Semaphore(concurrency)
    tag = f"c{time.monotonic_ns()}"

    async def one(i: int) -> None:
        async with sem:
            proto = await open_client(server.port, ctx, f"{tag}-{i}", version=version)
            await close_client(proto)

    before = server.cpu()
    await asyncio.gather(*(one(i) for i in range(n)))
    return (server.cpu() - before) / n


async def phase_route(
    server: Server,
    ctx: ssl.SSLContext,
    publishers: int,
    subscribers: int,
    messages: int,
    version: int = 4,
) -> float:
    """Server CPU seconds per routed QoS 0 message (one delivery to one subscriber)."""
    received = 0
    target = 0
    reached: asyncio.Future[None] | None = None
    topic = _TOPIC + f"/{time.monotonic_ns()}".encode()

    def on_publish() -> None:
        nonlocal received
        received += 1
        if reached is not None and received >= target and not reached.done():
            reached.set_result(None)

    subs = [
        await open_client(server.port, ctx, f"s{i}-{time.monotonic_ns()}", on_publish, version)
        for i in range(subscribers)
    ]
    for sub in subs:
        assert sub.transport is not None
        sub.transport.write(subscribe_packet(topic, version=version))
        await asyncio.wait_for(sub.suback, 30)
    pubs = [
        await open_client(server.port, ctx, f"p{i}-{time.monotonic_ns()}", version=version)
        for i in range(publishers)
    ]
    packet = publish_packet(topic, b"x" * 64, version)
    window = 200
    loop = asyncio.get_running_loop()
    before = server.cpu()
    sent = 0
    while sent < messages:
        batch = min(window, messages - sent)
        reached = loop.create_future()
        target = (sent + batch) * publishers * subscribers
        for pub in pubs:
            assert pub.transport is not None
            pub.transport.write(packet * batch)
        sent += batch
        if received < target:
            await asyncio.wait_for(reached, 60)
    cpu = server.cpu() - before
    for proto in subs + pubs:
        await close_client(proto)
    return cpu / (messages * publishers * subscribers)


async def phase_idle(server: Server, ctx: ssl.SSLContext, n: int, concurrency: int) -> float:
    """Server RSS growth in bytes per idle connected device."""
    sem = asyncio.Semaphore(concurrency)
    tag = f"i{time.monotonic_ns()}"

    async def one(i: int) -> MqttCounter:
        async with sem:
            return await open_client(server.port, ctx, f"{tag}-{i}")

    before = rss_bytes(server.pid)
    clients = await asyncio.gather(*(one(i) for i in range(n)))
    after = rss_bytes(server.pid)
    await asyncio.gather(*(close_client(c) for c in clients))
    return (after - before) / n


# -- the hold test: many devices from several processes --------------------------------


def _hold_worker(pki: str, port: int, first: int, count: int, conn: Connection) -> None:
    """Connect ``count`` devices, report, hold them until told to stop."""
    _raise_nofile()

    async def main() -> None:
        ctx = client_context(Path(pki))
        sem = asyncio.Semaphore(64)
        clients: list[MqttCounter] = []
        failures = 0

        async def one(i: int) -> None:
            nonlocal failures
            async with sem:
                try:
                    clients.append(await open_client(port, ctx, f"hold-{i}"))
                except (OSError, RuntimeError, TimeoutError):
                    failures += 1

        await asyncio.gather(*(one(i) for i in range(first, first + count)))
        conn.send({"connected": len(clients), "failed": failures})
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, conn.recv)
        for c in clients:
            if c.transport is not None:
                c.transport.abort()

    _new_loop().run_until_complete(main())


def hold_test(server: Server, pki: Path, devices: int, workers: int) -> dict[str, object]:
    """Connect ``devices`` devices to ``server`` at once; report RSS and failures."""
    mp = multiprocessing.get_context("spawn")
    per = devices // workers
    pipes: list[Connection] = []
    procs = []
    rss_before = rss_bytes(server.pid)
    cpu_before = server.cpu()
    start = time.monotonic()
    for w in range(workers):
        parent, child = mp.Pipe()
        proc = mp.Process(target=_hold_worker, args=(str(pki), server.port, w * per, per, child))
        proc.start()
        pipes.append(parent)
        procs.append(proc)
    reports = [p.recv() for p in pipes]
    elapsed = time.monotonic() - start
    connected = sum(r["connected"] for r in reports)
    rss = rss_bytes(server.pid)
    cpu = server.cpu() - cpu_before
    alive = server.proc.poll() is None
    for p in pipes:
        p.send("stop")
    for proc in procs:
        proc.join(60)
    return {
        "devices": devices,
        "connected": connected,
        "failed": sum(r["failed"] for r in reports),
        "seconds_to_connect_all": round(elapsed, 1),
        "server_rss_mib": round(rss / 2**20, 1),
        "server_rss_per_device_kib": round((rss - rss_before) / max(connected, 1) / 1024, 2),
        "server_cpu_ms_per_connect": round(cpu / max(connected, 1) * 1000, 3),
        "server_alive": alive,
    }


# -- what each server negotiates ------------------------------------------------------

_S_CLIENT_FIELDS = {
    "Protocol version": "protocol",
    "Ciphersuite": "cipher",
    "Server Temp Key": "key_exchange",
    "Signature type": "server_signature",
}


def negotiated(server: Server, pki: Path, ctx: ssl.SSLContext) -> dict[str, object]:
    """What ``server`` negotiates with a device: version, suite, group, signature, tickets."""
    device = pki / "devices"
    cmd = ["openssl", "s_client", "-brief", "-connect", f"127.0.0.1:{server.port}"]
    cmd += ["-servername", "localhost", "-CAfile", str(pki / "root-ca.pem")]
    cmd += ["-cert", str(device / "dev-00000.pem"), "-key", str(device / "dev-00000.key")]
    # stdin at EOF: s_client prints the handshake's facts and leaves.
    done = subprocess.run(cmd, input=b"", capture_output=True, timeout=30, check=False)
    facts: dict[str, object] = {}
    for line in (done.stdout + done.stderr).decode(errors="replace").splitlines():
        key, _, value = line.partition(":")
        if key.strip() in _S_CLIENT_FIELDS:
            facts[_S_CLIENT_FIELDS[key.strip()]] = value.strip()
    facts["session_ticket_issued"] = _run_new_loop(_ticket_issued(server.port, ctx))
    return facts


async def _ticket_issued(port: int, ctx: ssl.SSLContext) -> bool:
    # TLS 1.3 tickets follow the server's handshake flight, so they have been
    # read by the time the CONNACK arrives.
    proto = await open_client(port, ctx, "ticket-probe")
    try:
        assert proto.transport is not None
        obj = proto.transport.get_extra_info("ssl_object")
        session = obj.session if obj is not None else None
        return bool(session is not None and session.has_ticket)
    finally:
        await close_client(proto)


def _run_new_loop(coro: Any) -> Any:
    loop = _new_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


def server_key_type(pki: Path) -> str:
    """The server key's type, e.g. ``EC secp256r1`` (both servers load the same file)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    key = serialization.load_pem_private_key((pki / "server.key").read_bytes(), password=None)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return f"EC {key.curve.name}"
    if isinstance(key, rsa.RSAPrivateKey):
        return f"RSA {key.key_size}"
    return type(key).__name__


# -- driver -------------------------------------------------------------------------------


#: Connects per turn in the connect phase (a round is several turns per server).
_CONNECT_BATCH = 100


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


@contextlib.contextmanager
def _servers(pki: Path, work: Path) -> Iterator[dict[str, Server]]:
    started: dict[str, Server] = {}
    try:
        started["edge"] = start_edge(pki, work)
        started["mosquitto"] = start_mosquitto(pki, work)
        yield started
    finally:
        for server in started.values():
            server.stop()


def run(quick: bool = False) -> dict[str, object]:
    """Run the edge-vs-Mosquitto comparison; print a summary and return the figures."""
    if shutil.which("mosquitto") is None:
        raise RuntimeError("mosquitto is not installed; the broker benchmark needs it")
    from certs.quickstart import quickstart
    from edge.config import TlsConfig

    _raise_nofile()
    rounds = 3 if quick else 7
    connects = 100 if quick else 400
    # Enough messages that the edge's share of a sample is tens of milliseconds of CPU:
    # with fewer, one timer tick or one GC pass swings a sample by a fifth.
    pubs, subs, messages = (2, 2, 12000) if quick else (4, 4, 8000)
    idle = 300 if quick else 2000
    idle_rounds = 1 if quick else 3
    with tempfile.TemporaryDirectory(prefix="edgesim-bench-") as tmp:
        work = Path(tmp)
        pki = quickstart(work / "pki", devices=1).out
        ctx = client_context(pki)
        samples: dict[str, dict[str, list[float]]] = {
            name: {"connect": [], "route": [], "connect5": [], "route5": [], "idle": []}
            for name in ("edge", "mosquitto")
        }
        hold: dict[str, object] | None = None
        key_type = server_key_type(pki)
        with _servers(pki, work) as servers:
            facts = {name: negotiated(s, pki, ctx) for name, s in servers.items()}
            loop = _new_loop()
            try:
                for r in range(rounds):
                    # Take turns in a rotating order, and connect in small interleaved
                    # batches: the neighbours' load drifts during a run, and every
                    # server should see the same drift.
                    names = list(servers)
                    order = names[r % len(names) :] + names[: r % len(names)]
                    for version, suffix in ((4, ""), (5, "5")):
                        spent = dict.fromkeys(order, 0.0)
                        for _ in range(connects // _CONNECT_BATCH):
                            for name in order:
                                per_connect = loop.run_until_complete(
                                    phase_connect(servers[name], ctx, _CONNECT_BATCH, 8, version)
                                )
                                spent[name] += per_connect * _CONNECT_BATCH
                        for name in order:
                            samples[name]["connect" + suffix].append(spent[name] / connects)
                            samples[name]["route" + suffix].append(
                                loop.run_until_complete(
                                    phase_route(servers[name], ctx, pubs, subs, messages, version)
                                )
                            )
                for _ in range(idle_rounds):
                    # Memory on fresh processes only: an allocator that has already
                    # grown and freed would hide the growth of a second sample.
                    for name, starter in (("edge", start_edge), ("mosquitto", start_mosquitto)):
                        fresh = starter(pki, work)
                        try:
                            loop.run_until_complete(phase_connect(fresh, ctx, 20, 4))  # warm up
                            samples[name]["idle"].append(
                                loop.run_until_complete(phase_idle(fresh, ctx, idle, 32))
                            )
                        finally:
                            fresh.stop()
            finally:
                loop.close()
            if not quick:
                hold = hold_test(servers["edge"], pki, devices=10_000, workers=4)
    med = {
        name: {phase: statistics.median(v) if v else 0.0 for phase, v in per.items()}
        for name, per in samples.items()
    }
    e, m = med["edge"], med["mosquitto"]
    figures: dict[str, object] = {
        "rounds": rounds,
        "connects_per_round": connects,
        "route": {"publishers": pubs, "subscribers": subs, "messages_per_publisher": messages},
        "idle_devices": idle,
        "idle_rounds": idle_rounds,
        "server_key": key_type,
        "negotiated": facts,
        "capture_tls13_certificates_by_default": TlsConfig().capture_tls13_certificates,
        "edge_cpu_ms_per_connect": round(e["connect"] * 1000, 3),
        "mosquitto_cpu_ms_per_connect": round(m["connect"] * 1000, 3),
        "ratio_cpu_per_connect": round(e["connect"] / m["connect"], 2),
        # Each round measures both servers side by side: the median of those
        # per-round ratios is free of the drift between rounds.
        "ratio_cpu_per_connect_per_round_median": round(
            statistics.median(
                a / b
                for a, b in zip(
                    samples["edge"]["connect"], samples["mosquitto"]["connect"], strict=True
                )
            ),
            3,
        ),
        "edge_cpu_us_per_routed_message": round(e["route"] * 1e6, 2),
        "mosquitto_cpu_us_per_routed_message": round(m["route"] * 1e6, 2),
        "ratio_cpu_per_routed_message": round(e["route"] / m["route"], 2),
        "mqtt5": {
            "edge_cpu_ms_per_connect": round(e["connect5"] * 1000, 3),
            "mosquitto_cpu_ms_per_connect": round(m["connect5"] * 1000, 3),
            "edge_cpu_us_per_routed_message": round(e["route5"] * 1e6, 2),
            "mosquitto_cpu_us_per_routed_message": round(m["route5"] * 1e6, 2),
            # Against Mosquitto's MQTT 5 (target <= 1.0) and the edge's 3.1.1 (<= 1.1).
            "ratio_cpu_per_connect": round(e["connect5"] / m["connect5"], 2),
            "ratio_cpu_per_routed_message": round(e["route5"] / m["route5"], 2),
            "edge_5_over_311_connect": round(e["connect5"] / e["connect"], 2),
            "edge_5_over_311_connect_per_round_median": round(
                statistics.median(
                    a / b
                    for a, b in zip(
                        samples["edge"]["connect5"], samples["edge"]["connect"], strict=True
                    )
                ),
                3,
            ),
            "edge_5_over_311_routed_message": round(e["route5"] / e["route"], 2),
            "edge_5_over_311_routed_message_per_round_median": round(
                statistics.median(
                    a / b
                    for a, b in zip(
                        samples["edge"]["route5"], samples["edge"]["route"], strict=True
                    )
                ),
                3,
            ),
        },
        "edge_rss_kib_per_idle_device": round(e["idle"] / 1024, 2),
        "mosquitto_rss_kib_per_idle_device": round(m["idle"] / 1024, 2),
        "ratio_memory_per_idle_device": round(e["idle"] / m["idle"], 2) if m["idle"] > 0 else None,
        "samples": samples,
    }
    if hold is not None:
        figures["hold"] = hold
    _print_summary(figures)
    return figures


def _describe(facts: dict[str, object]) -> str:
    tickets = "tickets" if facts.get("session_ticket_issued") else "no tickets"
    parts = [facts.get(k, "?") for k in ("protocol", "cipher", "key_exchange", "server_signature")]
    return ", ".join(str(p) for p in parts) + f", {tickets}"


def _print_summary(f: dict[str, Any]) -> None:
    default = "on" if f["capture_tls13_certificates_by_default"] else "off"
    neg = f["negotiated"]
    print(f"  server key {f['server_key']} for both; negotiated with the same client:")
    for name in ("edge", "mosquitto"):
        print(f"    {name:9s}: {_describe(neg[name])}")
    print(
        f"  mTLS connect + CONNACK, edge default config (TLS 1.3 certificate capture {default}): "
        f"edge {f['edge_cpu_ms_per_connect']} ms CPU, mosquitto {f['mosquitto_cpu_ms_per_connect']} ms"
        f" -> ratio {f['ratio_cpu_per_connect']} (target <= 0.8; median of the per-round ratios "
        f"{f['ratio_cpu_per_connect_per_round_median']})"
    )
    print(
        f"  routed QoS 0 message:  edge {f['edge_cpu_us_per_routed_message']} us CPU, "
        f"mosquitto {f['mosquitto_cpu_us_per_routed_message']} us -> ratio "
        f"{f['ratio_cpu_per_routed_message']} (target <= 0.8)"
    )
    v5 = f["mqtt5"]
    print(
        f"  MQTT 5 connect:        edge {v5['edge_cpu_ms_per_connect']} ms, mosquitto "
        f"{v5['mosquitto_cpu_ms_per_connect']} ms -> ratio {v5['ratio_cpu_per_connect']} "
        f"(target <= 1.0); edge 5 / 3.1.1 {v5['edge_5_over_311_connect']} (target <= 1.1; "
        f"per-round median {v5['edge_5_over_311_connect_per_round_median']})"
    )
    print(
        f"  MQTT 5 routed message: edge {v5['edge_cpu_us_per_routed_message']} us, mosquitto "
        f"{v5['mosquitto_cpu_us_per_routed_message']} us -> ratio "
        f"{v5['ratio_cpu_per_routed_message']} (target <= 1.0); edge 5 / 3.1.1 "
        f"{v5['edge_5_over_311_routed_message']} (target <= 1.1; per-round median "
        f"{v5['edge_5_over_311_routed_message_per_round_median']})"
    )
    print(
        f"  idle device memory:    edge {f['edge_rss_kib_per_idle_device']} KiB, "
        f"mosquitto {f['mosquitto_rss_kib_per_idle_device']} KiB -> ratio "
        f"{f['ratio_memory_per_idle_device']} (target <= 1.5)"
    )
    hold = f.get("hold")
    if hold:
        print(
            f"  hold: {hold['connected']}/{hold['devices']} devices connected to the edge "
            f"in {hold['seconds_to_connect_all']} s, edge RSS {hold['server_rss_mib']} MiB "
            f"({hold['server_rss_per_device_kib']} KiB/device), failed {hold['failed']}"
        )


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2, default=str))
