"""The fleet: the largest fleet held on this machine, memory per held device, connects/s per core.

One quickstart PKI (every device its own certificate), one Mosquitto 2.0 with mutual
TLS beside the fleet (its own process), RLIMIT_NOFILE raised to the hard limit first
so that both sides can hold ten thousand sockets. Two phases, one run:

- *held*: ``N`` devices (10,000; 500 with ``quick``) arrive open-loop at ``--ramp``,
  each connects with its own certificate and key (set on its own connection of a
  context shared per scheme, :mod:`devices.identity`; a context of its own where
  that is not available) and stays connected until 8 s after the last arrival. Reported: the most devices connected at once, connect latency
  percentiles from the scheduled start, and the fleet process's RSS growth divided
  by the devices held (device-side memory per held device, context included).
- *rate*: ``M`` devices arrive faster than one core can connect them and disconnect
  once acknowledged; connects per second of fleet CPU (``process_time``) is the
  device side's connects/s per core, and the broker's CPU per connect comes from
  ``/proc``.

- *versus edge*: the fleet's CPU per full mTLS connect (the device's own
  certificate and context, the protocol's acknowledgement: CONNACK, an HTTP 200,
  the WebSocket upgrade) against the compiled edge's CPU per connect, in the same
  run, for MQTT, HTTPS and WSS, rounds interleaved, medians and the ratio
  (target: at or under 1.0);
- *peak*: the fleet's RSS sampled every 50 ms over the whole held run, teardown,
  the JSON report and the HTML page included, against its RSS while holding
  (target: at most 1.2x);
- *ramp*: the largest ramp one fleet process keeps against the edge (start lag
  p99 under 50 ms), trying rising ramps for a few seconds each.

The event loop is uvloop when the device's TLS pump runs on it, else the stdlib loop
(the figure says which).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
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
from devices.html import render_html
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


@contextlib.contextmanager
def _edge(pki: Path, work: Path) -> Iterator[tuple[dict[str, int], int]]:
    """The compiled edge (``edgesim edge serve``) in its own process: (ports, pid)."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edge.cli",
            "edge",
            "serve",
            "--mqtt",
            "127.0.0.1:0",
            "--https",
            "127.0.0.1:0",
            "--admin",
            "off",
            "--pki",
            str(pki),
            "--state-dir",
            str(work / "state"),
            "--store",
            str(work / "trust.db"),
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
        ports: dict[str, int] | None = None
        for line in proc.stdout:
            text += line
            with contextlib.suppress(ValueError):
                ports = {k: int(v) for k, v in json.loads(text)["ports"].items()}
                break
        if ports is None:
            raise RuntimeError("the edge did not start")
        threading.Thread(target=lambda: [None for _ in proc.stdout or ()], daemon=True).start()
        yield ports, proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _urls(ports: dict[str, int]) -> dict[str, str]:
    return {
        "mqtt": f"mqtts://127.0.0.1:{ports['mqtt']}",
        "https": f"https://127.0.0.1:{ports['https']}",
        "wss": f"wss://127.0.0.1:{ports['https']}/ws",
    }


def _versus_edge(pki: Path, ports: dict[str, int], pid: int, n: int, rounds: int) -> dict[str, Any]:
    """Fleet CPU per connect against the edge's, per protocol, two fleet setups interleaved.

    ``default`` is what ``edgesim fleet run`` does by default: ``--tls-keys legacy``
    (``devices.legacykeys``) and ``--verify-cache on`` (``devices.verifycache``).
    ``plain`` is ``--tls-keys provider --verify-cache off``: OpenSSL's default methods,
    every device verifying the whole chain. Both in the same rounds, for comparison.
    """
    modes = ("default", "plain")
    per: dict[tuple[str, str], list[tuple[float, float]]] = {
        (p, m): [] for p in _urls(ports) for m in modes
    }
    status: dict[str, str] = {}
    for r in range(rounds):
        for proto, url in _urls(ports).items():
            order = modes if r % 2 == 0 else modes[::-1]
            for k, mode in enumerate(order):
                # Each round its own devices: every connect is a device's first (full
                # handshake, its own certificate and key parsed), as a fleet of distinct
                # devices is.
                skip = (2 * r + k) * n
                job = _job(
                    pki,
                    0,
                    n,
                    ramp=5000.0,
                    hold=None,
                    loop="uvloop",
                    url=url,
                    skip=skip,
                    tls_keys="legacy" if mode == "default" else "provider",
                    verify_cache=mode == "default",
                )
                cpu0, edge0 = time.process_time(), cpu_seconds(pid)
                report = _run(job)
                cpu, edge = time.process_time() - cpu0, cpu_seconds(pid) - edge0
                status[mode] = report.tls_keys
                ok = report.count("connected")
                if ok:
                    per[(proto, mode)].append((cpu / ok * 1000, edge / ok * 1000))
    out: dict[str, Any] = {"tls_keys": status}
    for proto in _urls(ports):
        row: dict[str, Any] = {}
        for mode in modes:
            pairs = per[(proto, mode)]
            if not pairs:
                row[mode] = {"connected": 0}
                continue
            fleet = statistics.median(p[0] for p in pairs)
            edge = statistics.median(p[1] for p in pairs)
            row[mode] = {
                "fleet_cpu_ms_per_connect": round(fleet, 3),
                "edge_cpu_ms_per_connect": round(edge, 3),
                "ratio": round(fleet / edge, 2) if edge else None,
                "ratios": [round(a / b, 2) for a, b in pairs if b],
            }
        # The figures of the fleet's defaults first, as before this comparison.
        out[proto] = {**row["default"], "plain": row["plain"]}
        a, b = row["default"], row["plain"]
        if "fleet_cpu_ms_per_connect" in a and "fleet_cpu_ms_per_connect" in b:
            out[proto]["fleet_default_over_plain"] = round(
                a["fleet_cpu_ms_per_connect"] / b["fleet_cpu_ms_per_connect"], 2
            )
    return out


def _largest_ramp(pki: Path, url: str, ramps: tuple[float, ...], seconds: float) -> dict[str, Any]:
    """The largest ramp whose start lag p99 stays under 50 ms (each tried for ``seconds``)."""
    kept: float | None = None
    tried: dict[str, float] = {}
    offset = 0
    for ramp in ramps:
        n = int(ramp * seconds)
        job = _job(pki, 0, n, ramp=ramp, hold=None, loop="uvloop", url=url, skip=offset)
        offset += n
        doc = _run(job).to_json()
        p99 = doc["latency"]["start_lag"]["p99_ms"]
        tried[f"{ramp:g}/s"] = p99
        if p99 >= 50.0:
            break
        kept = ramp
    return {"largest_ramp_kept_per_s": kept, "start_lag_p99_ms_by_ramp": tried}


def _job(
    pki: Path,
    port: int,
    n: int,
    *,
    ramp: float,
    hold: float | None,
    loop: str,
    timeout: float = 120.0,
    url: str | None = None,
    skip: int = 0,
    tls_keys: str = "legacy",
    verify_cache: bool = True,
) -> FleetJob:
    entries = load_manifest(pki / "devices" / "manifest.jsonl")
    # ``skip``: start further down the manifest, so that a later round has fresh devices.
    entries = entries[skip:] + entries[:skip]
    devices = plan_fleet(
        entries,
        devices=n,
        urls=[url or f"mqtts://127.0.0.1:{port}"],
        ramp=ramp,
        faults={},
        shard=Shard(),
        maker=None,
    )
    return FleetJob(
        devices=tuple(devices),
        fleet_size=n,
        # The fleet CLI's defaults (devices.legacykeys, devices.verifycache), unless asked.
        settings=RunnerSettings(
            ca=pki / "root-ca.pem",
            device_timeout=timeout,
            tls_keys=tls_keys,
            verify_cache=verify_cache,
        ),
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

    samples = [baseline]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.05):
            samples.append(rss_bytes())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        report = _run(job, on_tick)
        doc = report.to_json()
        render_html(doc)
    finally:
        stop.set()
        sampler.join()
    whole_run = max(samples)
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
        "kib_target": 40,
        "peak_rss_mib_whole_run": round(whole_run / 2**20, 1),
        "peak_over_holding": round(whole_run / peak["rss"], 2) if peak["rss"] else None,
        "fleet_cpu_ms_per_connect": doc["generator"]["cpu_ms_per_connect"],
        "loop_lag_max_ms": doc["generator"]["loop_lag_max_ms"],
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
    vs_n, vs_rounds = (100, 3) if quick else (300, 9)
    ramps = (50.0, 100.0, 150.0, 200.0, 300.0, 400.0)
    ramp_s = 2.0 if quick else 4.0
    ramp_n = int(sum(ramps) * ramp_s)
    with tempfile.TemporaryDirectory(prefix="edgesim-bench-fleet-") as tmp:
        work = Path(tmp)
        t0 = time.monotonic()
        quickstart(work / "pki", devices=max(held_n, rate_n, 2 * vs_n * vs_rounds, ramp_n))
        issue_s = time.monotonic() - t0
        with _edge(work / "pki", work) as (ports, pid):
            versus = _versus_edge(work / "pki", ports, pid, vs_n, vs_rounds)
            ramp = _largest_ramp(work / "pki", _urls(ports)["mqtt"], ramps, ramp_s)
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
        "versus_edge": versus,
        "ramp": ramp,
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
    print(f"fleet key methods: {versus['tls_keys']}; plain: --tls-keys provider --verify-cache off")
    for proto, v in versus.items():
        if proto == "tls_keys":
            continue
        p = v.get("plain", {})
        print(
            f"fleet vs edge ({proto}, compiled edge, median of {vs_rounds} rounds): fleet "
            f"{v.get('fleet_cpu_ms_per_connect')} ms, edge {v.get('edge_cpu_ms_per_connect')} ms "
            f"CPU per connect, ratio {v.get('ratio')} (target <= 1.0); plain: "
            f"fleet {p.get('fleet_cpu_ms_per_connect')} ms, ratio {p.get('ratio')}; "
            f"default / plain fleet CPU {v.get('fleet_default_over_plain')}"
        )
    print(
        f"fleet: peak RSS over the whole held run {held['peak_rss_mib_whole_run']} MiB, "
        f"{held['peak_over_holding']}x the holding RSS (target <= 1.2); largest ramp one "
        f"fleet process keeps against the edge: {ramp['largest_ramp_kept_per_s']}/s"
    )
    return figures
