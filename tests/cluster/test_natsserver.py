"""edge.cluster.natsserver: the nats-server processes the cluster mode and its tests run."""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path

import pytest

from edge.cluster.natsserver import (
    MIN_VERSION,
    NatsServer,
    NatsServerError,
    find_nats_server,
    nats_server_version,
)

pytestmark = pytest.mark.timeout(60)


def _fake_binary(tmp_path: Path, version: str) -> Path:
    path = tmp_path / "nats-server"
    path.write_text(f"#!/bin/sh\necho 'nats-server: v{version}'\n", encoding="utf-8")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_the_installed_server_is_new_enough() -> None:
    assert nats_server_version(find_nats_server()) >= MIN_VERSION


def test_an_old_server_is_refused_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old = _fake_binary(tmp_path, "2.9.10")
    monkeypatch.setenv("EDGESIM_NATS_SERVER", str(old))
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr("sys.executable", str(tmp_path / "python"))
    with pytest.raises(NatsServerError, match=r"2\.9\.10 is older than 2\.11"):
        find_nats_server()


def test_a_server_that_cannot_start_says_why(tmp_path: Path) -> None:
    # Two servers on one port: the second one's own log line is in the error.
    first = NatsServer(store_dir=tmp_path / "a").start()
    try:
        second = NatsServer(store_dir=tmp_path / "b", port=first.port)
        with pytest.raises(NatsServerError, match="did not become ready"):
            second.start(timeout=10)
        assert not second.running()
    finally:
        first.stop()
    assert not first.running()


async def test_jetstream_kv_round_trip_and_restart_keeps_the_store(tmp_path: Path) -> None:
    nats = pytest.importorskip("nats")
    server = NatsServer(store_dir=tmp_path / "s").start()
    try:
        nc = await nats.connect(server.url)
        kv = await nc.jetstream().create_key_value(bucket="probe")
        await kv.put("k", b"v1")
        await nc.close()
        server.kill()
        assert not server.running()
        server.start()
        nc = await nats.connect(server.url)
        kv = await nc.jetstream().key_value("probe")
        entry = await asyncio.wait_for(kv.get("k"), 10)
        assert entry.value == b"v1"
        await nc.close()
    finally:
        server.stop()
    assert (tmp_path / "s" / "n1.log").stat().st_size > 0
