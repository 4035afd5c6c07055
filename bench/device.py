"""One simulated device: TLS context cost, mTLS connect rate, memory per held device.

Measured side by side in one run, on one quickstart PKI:

- *context*: building a device's TLS context the lean way (``SSLContext(PROTOCOL_TLS_CLIENT)``,
  only the edge's roots, the device's own certificate and key) against
  ``ssl.create_default_context()`` plus the same certificate (every system CA);
  time and memory (RSS delta: OpenSSL allocates outside ``tracemalloc``'s view);
- *connect*: full mutual-TLS connects with the MQTT CONNECT/CONNACK, one after the
  other, against Mosquitto 2.0 and against the edge, each server in its own process.
  CPU per connect is the client's ``process_time`` and the server's ``/proc`` ticks;
  connects per second per core is ``1 / (client + server CPU)``;
- *held*: ``N`` devices, each with its own certificate and so its own context,
  connected and held (:func:`devices.device.connected_device`, one task each)
  against Mosquitto; memory per device from the RSS and ``tracemalloc`` deltas.

Figures are medians over rounds where there are rounds. The clients and the servers
share the machine, so absolute rates are modest; the per-connect CPU is the point.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from bench.mosquitto import TlsFiles, start_mosquitto
from bench.procstat import cpu_seconds, rss_bytes
from certs.quickstart import QuickstartResult, quickstart
from devices.device import DeviceSpec, Target, connected_device, context_for, run_device
from devices.tlsclient import make_device_context


def _drain(stream: IO[str]) -> None:
    """Read and drop a child's output in a thread, so that it never blocks writing."""
    threading.Thread(target=lambda: [None for _ in stream], daemon=True).start()


@contextlib.contextmanager
def _mosquitto(qs: QuickstartResult, folder: Path) -> Iterator[tuple[int, int]]:
    """Mosquitto with mTLS on a free port; yields (port, pid) once it says it runs."""
    started = start_mosquitto(
        folder,
        tls=TlsFiles(qs.ca_chain, qs.server_cert, qs.server_key),
        extra=[
            "persistence false",
            "max_connections -1",
            # Without it CONNACK waits behind the session tickets for a delayed ACK.
            "set_tcp_nodelay true",
        ],
    )
    try:
        yield started.port, started.pid
    finally:
        started.stop()


@contextlib.contextmanager
def _edge(qs: QuickstartResult, folder: Path) -> Iterator[tuple[int, int]]:
    """``edgesim edge serve`` in its own process; yields (mqtt port, pid) once it listens."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edge.cli",
            "edge",
            "serve",
            "--mqtt",
            "127.0.0.1:0",
            "--admin",
            "off",
            "--pki",
            str(qs.out),
            "--state-dir",
            str(folder / "state"),
            "--store",
            str(folder / "trust.db"),
            "--policy",
            "open",
            "--json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        text = ""
        for line in proc.stdout:
            text += line
            with contextlib.suppress(ValueError):
                ports = json.loads(text)["ports"]
                break
        else:
            raise RuntimeError("the edge did not start")
        _drain(proc.stdout)
        yield int(ports["mqtt"]), proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()


def _spec(qs: QuickstartResult, i: int) -> DeviceSpec:
    name = f"dev-{i:05d}"
    return DeviceSpec(
        id=name,
        cert_path=str(qs.devices_dir / f"{name}.pem"),
        key_path=str(qs.devices_dir / f"{name}.key"),
    )


def _context_cost(qs: QuickstartResult, n: int) -> dict[str, Any]:
    """Per-context time and memory: lean against create_default_context."""
    ca_pem = qs.root_cert.read_text()
    cert = str(qs.devices_dir / "dev-00000.pem")
    key = str(qs.devices_dir / "dev-00000.key")

    def lean() -> ssl.SSLContext:
        return make_device_context(ca_pem=ca_pem, cert_file=cert, key_file=key)

    def default() -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        ctx.load_verify_locations(cadata=ca_pem)
        ctx.load_cert_chain(cert, key)
        return ctx

    out: dict[str, Any] = {}
    for name, make, count in (("lean", lean, n), ("default", default, max(5, n // 10))):
        make()  # warm up: first use loads OpenSSL's tables
        held = []
        rss0 = rss_bytes() // 1024
        t0 = time.perf_counter()
        for _ in range(count):
            held.append(make())
        elapsed = time.perf_counter() - t0
        rss = (rss_bytes() // 1024 - rss0) / count
        out[name] = {"ms": round(elapsed / count * 1000, 3), "kib": round(rss, 1)}
        del held
    out["time_ratio"] = round(out["default"]["ms"] / out["lean"]["ms"], 1)
    return out


async def _connect_round(target: Target, specs: list[DeviceSpec], pid: int) -> dict[str, float]:
    contexts = [context_for(s, target, cache=False) for s in specs]
    cpu0, srv0, t0 = time.process_time(), cpu_seconds(pid), time.perf_counter()
    failures = 0
    for spec, ctx in zip(specs, contexts, strict=True):
        result = await run_device(spec, target, context=ctx, timeout=10)
        failures += result.outcome != "connected"
    wall = time.perf_counter() - t0
    client = time.process_time() - cpu0
    server = cpu_seconds(pid) - srv0
    n = len(specs)
    return {
        "connects_per_s_wall": n / wall,
        "client_cpu_ms": client / n * 1000,
        "server_cpu_ms": server / n * 1000,
        "failures": failures,
    }


def _median_rounds(rounds: list[dict[str, float]]) -> dict[str, float]:
    keys = rounds[0].keys()
    out = {k: round(statistics.median(r[k] for r in rounds), 3) for k in keys}
    cpu = out["client_cpu_ms"] + out["server_cpu_ms"]
    # With the client's and the server's CPU added, one core does this many connects.
    out["connects_per_s_per_core"] = round(1000 / cpu, 1) if cpu else 0.0
    return out


async def _connect_rates(
    qs: QuickstartResult, servers: dict[str, tuple[int, int]], n: int, rounds: int
) -> dict[str, Any]:
    ca_pem = qs.root_cert.read_text()
    specs = [_spec(qs, i) for i in range(n)]
    results: dict[str, list[dict[str, float]]] = {name: [] for name in servers}
    for _ in range(rounds):
        # Interleaved rounds: both servers see the same machine load.
        for name, (port, pid) in servers.items():
            target = Target(url=f"mqtts://localhost:{port}", ca_pem=ca_pem)
            results[name].append(await _connect_round(target, specs, pid))
    return {name: _median_rounds(r) for name, r in results.items()}


async def _held_memory(qs: QuickstartResult, port: int, n: int) -> dict[str, Any]:
    """Connect ``n`` distinct devices, hold them all, measure the memory they take."""
    ca_pem = qs.root_cert.read_text()
    target = Target(url=f"mqtts://localhost:{port}", ca_pem=ca_pem)
    specs = [_spec(qs, i) for i in range(n)]
    ready = asyncio.Semaphore(0)
    stop = asyncio.Event()
    failures: list[str] = []
    limit = asyncio.Semaphore(50)  # connect 50 at a time; hold them all

    async def hold(spec: DeviceSpec) -> None:
        try:
            async with limit:
                ctx = context_for(spec, target, cache=False)
                manager = connected_device(spec, target, context=ctx, timeout=30)
                device = await manager.__aenter__()
            try:
                ready.release()
                await stop.wait()
            finally:
                await manager.__aexit__(None, None, None)
            del device
        except Exception as exc:
            failures.append(f"{spec.id}: {exc}")
            ready.release()

    tracemalloc.start()
    snap0 = tracemalloc.take_snapshot()
    rss0 = rss_bytes() // 1024
    t0 = time.perf_counter()
    tasks = [asyncio.create_task(hold(s)) for s in specs]
    for _ in specs:
        await ready.acquire()
    elapsed = time.perf_counter() - t0
    rss = rss_bytes() // 1024 - rss0
    snap1 = tracemalloc.take_snapshot()
    traced = sum(s.size_diff for s in snap1.compare_to(snap0, "filename"))
    tracemalloc.stop()
    stop.set()
    await asyncio.gather(*tasks)
    held = n - len(failures)
    return {
        "devices": n,
        "held": held,
        "failures": failures[:3],
        "connect_all_s": round(elapsed, 2),
        "rss_kib_per_device": round(rss / max(held, 1), 1),
        "python_kib_per_device": round(traced / 1024 / max(held, 1), 1),
        "budget_kib": 80,
    }


def run(quick: bool = False) -> dict[str, object]:
    """Run the device benchmarks; print a summary and return the figures."""
    n_connect, rounds, n_held = (100, 3, 300) if quick else (300, 5, 2000)
    figures: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="bench-device-") as tmp:
        folder = Path(tmp)
        qs = quickstart(folder / "pki", devices=max(n_connect, n_held), jobs=2)
        figures["context"] = ctx = _context_cost(qs, 200 if quick else 1000)
        print(
            f"  context: lean {ctx['lean']['ms']} ms / {ctx['lean']['kib']} KiB, "
            f"default {ctx['default']['ms']} ms / {ctx['default']['kib']} KiB "
            f"({ctx['time_ratio']}x slower)"
        )
        if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
            print("  mosquitto not installed: connect and held figures skipped")
            return figures
        with _mosquitto(qs, folder) as mosq, _edge(qs, folder) as edge:
            rates = asyncio.run(
                _connect_rates(qs, {"mosquitto": mosq, "edge": edge}, n_connect, rounds)
            )
            figures["connect"] = rates
            for name, r in rates.items():
                print(
                    f"  connect vs {name}: {r['connects_per_s_wall']:.0f}/s wall, client "
                    f"{r['client_cpu_ms']:.2f} ms + server {r['server_cpu_ms']:.2f} ms CPU "
                    f"-> {r['connects_per_s_per_core']:.0f} connects/s per core"
                )
            figures["held"] = held = asyncio.run(_held_memory(qs, mosq[0], n_held))
            print(
                f"  held {held['held']}/{held['devices']} devices: "
                f"{held['rss_kib_per_device']} KiB RSS, {held['python_kib_per_device']} KiB "
                f"Python heap per device (budget {held['budget_kib']} KiB)"
            )
    return figures


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
