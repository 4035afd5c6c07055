"""What the pytest plugin's fixtures cost a test: edge start/stop, a device, a fleet.

``python -c "import bench.plugin as b; b.run()"`` (or ``run(quick=True)``). Figures
are medians of wall time over several rounds, measured with the plugin's own
classes (what the ``edge``, ``device`` and ``fleet`` fixtures call), on loopback.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from itertools import count
from pathlib import Path

from testkit.pytest_plugin import (
    DeviceFactory,
    EdgeFactory,
    EdgeHandle,
    FleetRunner,
    LoopThread,
    Pki,
)


def _median_ms(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1000, 2)


def _timed(fn: Callable[[], object], rounds: int) -> list[float]:
    samples = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return samples


def run(quick: bool = False) -> dict[str, object]:
    """Measure the fixtures' costs; print a summary and return the figures."""
    rounds = 5 if quick else 20
    fleet_size = 20 if quick else 50
    with tempfile.TemporaryDirectory(prefix="edgesim-bench-plugin-") as tmp:
        base = Path(tmp)
        serial = count()

        def new_dir() -> Path:
            folder = base / f"d{next(serial)}"
            folder.mkdir()
            return folder

        t0 = time.perf_counter()
        pki = Pki(base / "pki", now=datetime.now(UTC))
        pki_ms = round((time.perf_counter() - t0) * 1000, 2)
        edges = EdgeFactory(pki, new_dir)
        loop = LoopThread()
        try:

            def start_stop() -> None:
                edges(admin=True).stop()

            start_stop()  # imports and first contexts are not what a test pays each time
            edge_samples = _timed(start_stop, rounds)
            edge: EdgeHandle = edges()
            devices = DeviceFactory(pki, loop, lambda: edge)
            connect: dict[str, float] = {}
            for protocol in ("mqtt", "https", "wss", "wss-json"):

                def connect_close(p: str = protocol) -> None:
                    devices(f"bench-{p}", protocol=p).close()

                connect_close()
                connect[protocol] = _median_ms(_timed(connect_close, rounds))
            refused = _median_ms(_timed(lambda: devices.run("bench-old", fault="expired"), rounds))
            fleets = FleetRunner(pki, loop, lambda: edge, new_dir)
            fleets(devices=fleet_size, faults={"expired": 2})  # issues the fleet's devices
            t0 = time.perf_counter()
            report = fleets(devices=fleet_size, faults={"expired": 2}, ramp=500)
            fleet_s = round(time.perf_counter() - t0, 3)
        finally:
            loop.close()
            edges.close()
    figures: dict[str, object] = {
        "pki_create_ms": pki_ms,
        "edge_start_stop_ms": _median_ms(edge_samples),
        "device_connect_close_ms": connect,
        "device_run_refused_ms": refused,
        "fleet_devices": fleet_size,
        "fleet_wall_s": fleet_s,
        "fleet_ok": report["ok"],
        "rounds": rounds,
    }
    print(
        f"pki {pki_ms} ms once per session; edge start+stop {figures['edge_start_stop_ms']} ms; "
        f"device connect+close {connect} ms; refused handshake {refused} ms; "
        f"fleet of {fleet_size} at 500/s {fleet_s} s (ok={report['ok']})"
    )
    return figures
