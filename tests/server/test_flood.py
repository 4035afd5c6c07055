"""A flood of bad connections from a few addresses does not lock good devices out.

2,000 stalled, slow, garbage and certificate-less connections arrive from
127.0.0.2-127.0.0.5 while 100 good devices per protocol (MQTT, HTTPS,
WebSocket) connect from 127.0.0.1, with ``max_connections`` at 500. Every good
device must get its acknowledgement. How long they take, flooded against quiet,
is a benchmark figure (bench/flood.py), not asserted here.
"""

from __future__ import annotations

import pytest

from bench import flood
from certs.quickstart import QuickstartResult, quickstart
from edge.server import EdgeServer


@pytest.fixture(scope="module")
def qs(tmp_path_factory: pytest.TempPathFactory) -> QuickstartResult:
    """A quickstart PKI with one device certificate (shared by the good devices)."""
    return quickstart(tmp_path_factory.mktemp("qs") / "pki", devices=1)


@pytest.mark.timeout(120)
async def test_good_devices_connect_through_a_flood(tmp_path: object, qs: QuickstartResult) -> None:
    from pathlib import Path

    assert isinstance(tmp_path, Path)
    config = flood.edge_config(tmp_path / "state", qs, max_connections=500)
    with EdgeServer.run_in_thread(config) as edge:
        out = await flood.scenario(edge, qs, flood_total=2000)
    assert out.failures == []
    assert {p: len(t) for p, t in out.times.items()} == {"mqtt": 100, "https": 100, "ws": 100}
    assert sum(out.flood.values()) == 2000
    # The per-source cap tripped (4 sources x 25 of 500 slots) and said so.
    assert out.events["limit.tripped"] >= 1
