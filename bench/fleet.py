"""The fleet: the largest fleet held on this machine, memory per held device, connects/s per core.

One quickstart PKI (every device its own certificate), one Mosquitto 2.0 with mutual
TLS beside the fleet (its own process), RLIMIT_NOFILE raised to the hard limit first
so that both sides can hold ten thousand sockets. Two phases, one run:

- *held*: ``N`` devices (10,000; 500 with ``quick``) arrive open-loop at ``--ramp``,
  each connects with its own TLS context and stays connected until 8 s after the
  last arrival. Reported: the most devices connected at once, connect latency
  percentiles from the scheduled start, and the fleet process's RSS growth divided
  by the devices held (device-side memory per held device, context included).
- *rate*: ``M`` devices arrive faster than one core can connect them and disconnect
  once acknowledged; connects per second of fleet CPU (``process_time``) is the
  device side's connects/s per core, and the broker's CPU per connect comes from
  ``/proc``.

The event loop is uvloop when the device's TLS pump runs on it, else the stdlib loop
(the figure says which).
"""

from __future__ import annotations

import asyncio
import resource
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.mosquitto import Mosquitto, TlsFiles, start_mosquitto
from bench.procstat import cpu_seconds, rss_bytes
from certs.quickstart import quickstart
from devices.fleet import (
    FleetJob,
    RunnerSettings,
    Shard,
    load_manifest,
    new_loop,
    plan_fleet,
    run_job_async,
)
from devices.progress import Snapshot
from devices.report import FleetReport


def _raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _start_mosquitto(pki: Path, work: Path) -> Mosquitto:
    return start_mosquitto(
        work,
        tls=TlsFiles(pki / "ca-chain.pem", pki / "server.pem", pki / "server.key"),
        extra=["max_connections -1"],
    )


def _job(
    pki: Path,
    port: int,
    n: int,
    *,
    ramp: float,
    hold: float | None,
    loop: str,
    timeout: float = 120.0,
) -> FleetJob:
    entries = load_manifest(pki / "devices" / "manifest.jsonl")
    devices = plan_fleet(
        entries,
        devices=n,
        urls=[f"mqtts://127.0.0.1:{port}"],
        ramp=ramp,
        faults={},
        shard=Shard(),
        maker=None,
    )
    return FleetJob(
        devices=tuple(devices),
        fleet_size=n,
        settings=RunnerSettings(ca=pki / "root-ca.pem", device_timeout=timeout),
        hold=hold,
        loop=loop,
    )


def _run(job: FleetJob, on_tick: Any = None) -> FleetReport:
    with asyncio.Runner(loop_factory=lambda: new_loop(job.loop)) as runner:
        return runner.run(run_job_async(job, on_tick=on_tick, tick=0.5))


def _pick_loop(pki: Path, port: int) -> str:
    """uvloop if one device connects on it, else the stdlib loop."""
    report = _run(_job(pki, port, 1, ramp=1.0, hold=None, loop="uvloop", timeout=5.0))
    return "uvloop" if report.count("connected") == 1 else "asyncio"


def _held(pki: Path, broker: Mosquitto, n: int, ramp: float, loop: str) -> dict[str, Any]:
    # Held long enough after the last scheduled arrival for late connects to land too.
    job = _job(pki, broker.port, n, ramp=ramp, hold=8.0, loop=loop)
    baseline = rss_bytes()
    peak = {"held": 0, "rss": baseline, "broker_rss": rss_bytes(broker.proc.pid)}

    def on_tick(snap: Snapshot, elapsed: float) -> None:
        if snap["connected_now"] >= peak["held"]:
            peak["held"] = snap["connected_now"]
            peak["rss"] = max(peak["rss"], rss_bytes())
            peak["broker_rss"] = max(peak["broker_rss"], rss_bytes(broker.proc.pid))

    report = _run(job, on_tick)
    doc = report.to_json()
    held = peak["held"]
    return {
        "devices": n,
        "ramp_per_s": ramp,
        "held_at_once": held,
        "connected": report.count("connected"),
        "failed": {k: v for k, v in doc["outcomes"].items() if k != "connected"},
        "connect_ms": {k: doc["latency"]["connect"][k] for k in ("p50_ms", "p99_ms", "max_ms")},
        "start_lag_p99_ms": doc["latency"]["start_lag"]["p99_ms"],
        "fleet_rss_mib": round(peak["rss"] / 2**20, 1),
        "kib_per_held_device": round((peak["rss"] - baseline) / held / 1024, 1) if held else None,
        "broker_kib_per_device": round(peak["broker_rss"] / held / 1024, 1) if held else None,
    }


def _rate(pki: Path, broker: Mosquitto, n: int, loop: str) -> dict[str, Any]:
    # Arrivals faster than a core can serve: the measured rate is the capacity.
    job = _job(pki, broker.port, n, ramp=5000.0, hold=None, loop=loop)
    cpu0, broker0, wall0 = time.process_time(), cpu_seconds(broker.proc.pid), time.monotonic()
    report = _run(job)
    cpu = time.process_time() - cpu0
    broker_cpu = cpu_seconds(broker.proc.pid) - broker0
    wall = time.monotonic() - wall0
    ok = report.count("connected")
    return {
        "devices": n,
        "connected": ok,
        "wall_s": round(wall, 2),
        "connects_per_s": round(ok / wall, 1),
        "fleet_cpu_ms_per_connect": round(cpu / ok * 1000, 3) if ok else None,
        "connects_per_s_per_core": round(ok / cpu, 1) if cpu else None,
        "broker_cpu_ms_per_connect": round(broker_cpu / ok * 1000, 3) if ok else None,
    }


def run(quick: bool = False) -> dict[str, object]:
    """Run both phases and return the figures (also printed as a short summary)."""
    if shutil.which("mosquitto") is None:
        raise RuntimeError("mosquitto is not installed")
    nofile = _raise_nofile()
    held_n = 500 if quick else 10_000
    # Each held device is one socket here and one in the broker, plus some slack.
    held_n = min(held_n, nofile - 200)
    rate_n = 300 if quick else 2_000
    with tempfile.TemporaryDirectory(prefix="edgesim-bench-fleet-") as tmp:
        work = Path(tmp)
        t0 = time.monotonic()
        quickstart(work / "pki", devices=max(held_n, rate_n))
        issue_s = time.monotonic() - t0
        broker = _start_mosquitto(work / "pki", work)
        try:
            loop = _pick_loop(work / "pki", broker.port)
            rate = _rate(work / "pki", broker, rate_n, loop)
            # Below one core's connect capacity (about 115/s measured), so latency
            # stays the connect's own and the fleet does build up.
            held = _held(work / "pki", broker, held_n, 80.0, loop)
        finally:
            broker.stop()
    figures: dict[str, object] = {
        "loop": loop,
        "rlimit_nofile": nofile,
        "pki_issue_s": round(issue_s, 1),
        "held": held,
        "rate": rate,
    }
    print(
        f"fleet ({loop}): held {held['held_at_once']}/{held['devices']} devices at once, "
        f"{held['kib_per_held_device']} KiB per held device (fleet side), "
        f"broker {held['broker_kib_per_device']} KiB/device; "
        f"connect p50 {held['connect_ms']['p50_ms']} ms p99 {held['connect_ms']['p99_ms']} ms "
        f"from schedule"
    )
    print(
        f"fleet: {rate['connects_per_s_per_core']} connects/s per fleet core "
        f"({rate['fleet_cpu_ms_per_connect']} ms CPU each), broker "
        f"{rate['broker_cpu_ms_per_connect']} ms CPU per connect, "
        f"{rate['connects_per_s']} connects/s wall"
    )
    return figures
