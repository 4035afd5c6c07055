"""MQTT routing cost: the sans-I/O path alone, and server CPU over loopback vs Mosquitto.

Two measurements, each the median of several rounds:

- ``sansio``: CPU per QoS 0 message through parse -> policy -> match -> encode ->
  output buffer, one publisher and ``fanout`` subscribers, no sockets (open policy,
  and once with a rules policy like the default one);
- ``loopback``: *server process* CPU (``/proc/<pid>/stat``) per routed QoS 0
  message over plain TCP on 127.0.0.1, for the edge's broker (uvloop,
  MqttServerProtocol, open policy) and for Mosquitto, measured side by side with
  the same load generator: one subscriber, one publisher sending 64-byte messages
  100 per write (pipelined) or 1 per write, with a bounded window. TLS is not
  included (see the server benchmark).

Run: ``.venv/bin/python -m bench.mqtt_core [--quick]``.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.mosquitto import Mosquitto, mosquitto_binary, start_mosquitto
from bench.procstat import cpu_seconds
from edge.core.events import EventLog
from edge.core.hub import EdgeCore
from edge.core.policy import Policy
from edge.core.session import DeviceIdentity, SessionInfo
from edge.mqtt.broker import MqttBroker, MqttConfig
from edge.mqtt.codec import Connect, Publish, Subscribe, encode

TOPIC = "devices/pub/telemetry"  # under the publisher "pub"s own subtree
PAYLOAD = b"x" * 64


def _session(name: str) -> SessionInfo:
    return SessionInfo(identity=DeviceIdentity(namespace="bench", name=name), peer="bench")


#: A rules policy shaped like the default one (own subtree), so that policy checks run.
RULES = {
    "mode": "rules",
    "client_id": "must-equal",
    "rules": [{"publish": ["devices/{identity}/#"], "subscribe": ["devices/#"]}],
}


def sansio_us_per_message(
    messages: int, fanout: int, batch: int, *, policy: Policy | None = None
) -> float:
    """CPU microseconds per published message through the sans-I/O broker."""
    core = EdgeCore(EventLog(log_events=False), policy or Policy.open())
    broker = MqttBroker(core, MqttConfig())

    subs = []
    for i in range(fanout):
        conn = broker.connection(_session(f"sub{i}"))
        conn.receive_data(encode(Connect(client_id=f"sub{i}")) + encode(Subscribe(1, [(TOPIC, 0)])))
        conn.data_to_send()
        subs.append(conn)
    pub = broker.connection(_session("pub"))
    pub.receive_data(encode(Connect(client_id="pub")))
    data = encode(Publish(TOPIC, PAYLOAD)) * batch
    rounds = messages // batch
    start = time.process_time()
    for _ in range(rounds):
        pub.receive_data(data)
        for conn in subs:
            conn.data_to_send()
    return (time.process_time() - start) / (rounds * batch) * 1e6


# --- loopback ----------------------------------------------------------------------------


def _serve() -> None:
    """Child process: run the edge's broker on a free port, print it, serve until killed."""
    from edge.mqtt.protocol import MqttServerProtocol

    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        pass

    async def main() -> None:
        events = EventLog(log_events=False)
        broker = MqttBroker(EdgeCore(events, Policy.open()), MqttConfig())
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: MqttServerProtocol(broker, _session("client")), "127.0.0.1", 0
        )
        print(server.sockets[0].getsockname()[1], flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


async def _connect(port: int, client_id: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(encode(Connect(client_id=client_id, keepalive=0)))
    await reader.readexactly(4)
    return reader, writer


async def _load(port: int, messages: int, window: int, chunk: int) -> None:
    sub_r, sub_w = await _connect(port, "bench-sub")
    sub_w.write(encode(Subscribe(1, [(TOPIC, 0)])))
    await sub_r.readexactly(5)
    _, pub_w = await _connect(port, "bench-pub")
    packet = encode(Publish(TOPIC, PAYLOAD))
    expected = messages * len(packet)
    received = 0
    progress = asyncio.Event()

    async def reader() -> None:
        nonlocal received
        while received < expected:
            data = await sub_r.read(1 << 18)
            if not data:
                raise ConnectionError("broker closed the subscriber")
            received += len(data)
            progress.set()

    task = asyncio.ensure_future(reader())
    burst = packet * chunk
    sent = 0
    async with asyncio.timeout(120):
        while sent < messages:
            # At most ``window`` messages in flight, so that neither broker sheds QoS 0.
            while sent * len(packet) - received > window * len(packet) and not task.done():
                progress.clear()
                await progress.wait()
            pub_w.write(burst)
            sent += chunk
            await pub_w.drain()
        await task
    for writer in (pub_w, sub_w):
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def _measure(pid: int, port: int, messages: int, chunk: int) -> float:
    before = cpu_seconds(pid)
    asyncio.run(_load(port, messages, window=2000, chunk=chunk))
    return (cpu_seconds(pid) - before) / messages * 1e6


def _start_edge() -> tuple[subprocess.Popen[str], int]:
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen(
        [sys.executable, "-c", "from bench.mqtt_core import _serve; _serve()"],
        cwd=root,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline())


def _start_mosquitto(workdir: Path) -> Mosquitto | None:
    """Plain-TCP Mosquitto beside the edge, or None where it is not installed."""
    if mosquitto_binary() is None:
        return None
    return start_mosquitto(workdir, tls=None, extra=["persistence false"])


def run(quick: bool = False) -> dict[str, object]:
    """Measure, print a summary, return the figures."""
    rounds = 3 if quick else 5
    n_sansio = 20_000 if quick else 100_000
    n_loop = 50_000 if quick else 200_000
    figures: dict[str, object] = {}
    for fanout, batch in ((1, 1), (1, 10), (10, 10)):
        samples = [sansio_us_per_message(n_sansio, fanout, batch) for _ in range(rounds)]
        figures[f"sansio_us_per_msg_fanout{fanout}_batch{batch}"] = round(
            statistics.median(samples), 2
        )
    samples = [
        sansio_us_per_message(n_sansio, 1, 1, policy=Policy.from_dict(RULES)) for _ in range(rounds)
    ]
    figures["sansio_us_per_msg_fanout1_batch1_rules_policy"] = round(statistics.median(samples), 2)
    edge_proc, edge_port = _start_edge()
    with tempfile.TemporaryDirectory() as tmp:
        mosq = _start_mosquitto(Path(tmp))
        try:
            _measure(edge_proc.pid, edge_port, n_loop // 10, 100)  # warm-up
            for chunk in (100, 1):
                # chunk: PUBLISH packets per write (100: a pipelining client, 1: one
                # packet per segment, as from many independent devices).
                count = n_loop if chunk > 1 else n_loop // 2
                edge_samples: list[float] = []
                mosq_samples: list[float] = []
                for _ in range(rounds):
                    # Alternate the brokers so that machine noise hits both alike.
                    edge_samples.append(_measure(edge_proc.pid, edge_port, count, chunk))
                    if mosq is not None:
                        mosq_samples.append(_measure(mosq.pid, mosq.port, count, chunk))
                edge_us = statistics.median(edge_samples)
                figures[f"loopback_chunk{chunk}_edge_server_us_per_msg"] = round(edge_us, 2)
                if mosq_samples:
                    mosq_us = statistics.median(mosq_samples)
                    figures[f"loopback_chunk{chunk}_mosquitto_server_us_per_msg"] = round(
                        mosq_us, 2
                    )
                    figures[f"loopback_chunk{chunk}_edge_vs_mosquitto"] = round(
                        edge_us / mosq_us, 2
                    )
        finally:
            edge_proc.terminate()
            edge_proc.wait(timeout=10)
            if edge_proc.stdout is not None:
                edge_proc.stdout.close()
            if mosq is not None:
                mosq.stop()
    figures["loopback_messages_per_round"] = n_loop
    figures["rounds"] = rounds
    for key, value in figures.items():
        print(f"  {key}: {value}")
    return figures


if __name__ == "__main__":
    run(quick="--quick" in sys.argv)
