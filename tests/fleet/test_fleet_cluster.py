"""One fleet over several machines, reported as one: shards on a real nats-server.

Two shards (``--shard 1/2`` and ``2/2``, separate processes as on two machines) run
against one edge with ``--cluster``; ``edgesim fleet watch`` follows them on NATS and
writes the merged report, which must equal ``edgesim fleet merge`` of the shards' own
report files. Also: the watcher's timeout names the missing shard, bad input is
refused by name, and the default install never imports ``nats``.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from certs.quickstart import QuickstartResult, quickstart
from devices.fleet import Shard
from edge.cli import main
from edge.config import EdgeConfig, HostPort, ListenersConfig, TrustConfig
from edge.server import EdgeServer, ServerThread

DEVICES = 12
EDGESIM = str(Path(sys.executable).with_name("edgesim"))


@pytest.fixture
def edge(tmp_path: Path) -> Iterator[tuple[ServerThread, QuickstartResult]]:
    qs = quickstart(tmp_path / "pki", devices=DEVICES)
    config = EdgeConfig(
        state_dir=tmp_path / "state",
        listeners=ListenersConfig(mqtt=HostPort(host="127.0.0.1", port=0), https=None, admin=None),
        trust=TrustConfig(store=tmp_path / "trust.db", watch_interval=None),
        pki_dir=qs.out,
    )
    with EdgeServer.run_in_thread(config) as handle:
        yield handle, qs


def _out(report: Path, html: Path) -> list[str]:
    return ["--report", str(report), "--html", str(html)]


@pytest.mark.timeout(120)
def test_watcher_merge_equals_fleet_merge_of_the_shards(
    edge: tuple[ServerThread, QuickstartResult],
    fleet_nats_server: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    handle, qs = edge
    url = f"mqtts://127.0.0.1:{handle.ports['mqtt']}"
    cluster = ["--cluster", fleet_nats_server, "--run", "t-1"]
    watched, watched_html = tmp_path / "watched.json", tmp_path / "watched.html"
    watcher = subprocess.Popen(
        [EDGESIM, "fleet", "watch", *cluster, "--timeout", "90", *_out(watched, watched_html)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    shards = [
        subprocess.Popen(
            [
                *(EDGESIM, "fleet", "run", "--pki", str(qs.out), "--url", url, "--ramp", "50/s"),
                *("--shard", f"{k}/2", "--report", str(tmp_path / f"shard{k}.json"), *cluster),
                *("--work-dir", str(tmp_path / "work")),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for k in (1, 2)
    ]
    try:
        for k, proc in enumerate(shards, 1):
            _, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err
            assert f"shard {k}/2 report published on {fleet_nats_server}" in err
        _, werr = watcher.communicate(timeout=60)
    finally:
        for proc in (*shards, watcher):
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    assert watcher.returncode == 0, werr
    assert "all 2 shard report(s) merged" in werr
    assert "shard 2: finished" in werr
    parts = [str(tmp_path / f"shard{k}.json") for k in (1, 2)]
    assert main(["fleet", "merge", *parts, "--json"]) == 0
    merged = json.loads(capsys.readouterr().out)
    doc = json.loads(watched.read_text())
    assert doc == merged
    assert doc["shards"] == ["1/2", "2/2"]
    assert doc["devices"] == DEVICES
    assert watched_html.read_text().startswith("<!DOCTYPE html>")


@pytest.mark.timeout(60)
def test_watch_times_out_naming_the_missing_shards(fleet_nats_server: str) -> None:
    from devices.fleetbus import FleetBusError, ShardPublisher, watch

    first = ShardPublisher(fleet_nats_server, "t-2", Shard(1, 3))
    second = ShardPublisher(fleet_nats_server, "t-2", Shard(2, 3))
    try:
        # A report bigger than one message travels in chunks and is put back together.
        doc = {"shards": ["1/3"], "padding": "x" * 2_500_000}
        assert first.final(doc) >= 3
        second.progress({"planned": 4, "started": 1}, 0.5)
        assert second._pending is not None
        second._pending.result(10)
    finally:
        first.close()
        second.close()
    with pytest.raises(FleetBusError) as caught:
        asyncio.run(watch(fleet_nats_server, "t-2", timeout=2.0))
    text = str(caught.value)
    assert "run 't-2' has 1 of 3 reports" in text
    assert "still running (no report yet): 2/3" in text
    assert "never reported: 3/3" in text


@pytest.mark.timeout(60)
def test_bad_cluster_input_is_refused_by_name(
    fleet_nats_server: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from devices.fleetbus import FleetBusError, ShardPublisher

    with pytest.raises(FleetBusError, match=r"--run 'a\.b'"):
        ShardPublisher(fleet_nats_server, "a.b", Shard())
    with pytest.raises(FleetBusError, match=r"cannot connect to NATS at nats://127\.0\.0\.1:1"):
        ShardPublisher("nats://127.0.0.1:1", "ok", Shard())
    assert main(["fleet", "watch", "--cluster", fleet_nats_server, "--run", "a b"]) == 2
    assert "--run 'a b'" in capsys.readouterr().err
    qs = quickstart(tmp_path / "pki", devices=1)
    run = ["fleet", "run", "--pki", str(qs.out), "--url", "mqtts://127.0.0.1:1"]
    assert main([*run, "--cluster", fleet_nats_server]) == 2
    assert "--cluster needs --run ID" in capsys.readouterr().err
    assert main([*run, "--run", "r1"]) == 2
    assert "--run names a run on NATS: give --cluster" in capsys.readouterr().err


def test_default_install_never_imports_nats() -> None:
    code = (
        "import sys\n"
        "from edge.cli import main\n"
        "import devices.fleet_cli, devices.fleet, devices.report\n"
        "try:\n"
        "    main(['fleet', 'run', '--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('nats' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip().splitlines()[-1] == "False"


@pytest.mark.timeout(60)
def test_a_damaged_message_is_named(fleet_nats_server: str) -> None:
    from devices.fleetbus import STREAM, FleetBusError, ShardPublisher, watch

    ShardPublisher(fleet_nats_server, "t-3", Shard(1, 1)).close()  # creates the stream

    async def garbage() -> None:
        import nats

        nc = await nats.connect(fleet_nats_server)
        try:
            await nc.jetstream().publish("edgesim.fleet.t-3.progress.1", b"{nope", stream=STREAM)
        finally:
            await nc.close()

    asyncio.run(garbage())
    with pytest.raises(FleetBusError, match=r"cannot read the message on edgesim\.fleet\.t-3"):
        asyncio.run(watch(fleet_nats_server, "t-3", timeout=10.0))
