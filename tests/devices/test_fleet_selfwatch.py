"""The fleet watching itself: bottleneck verdict, per-second series, report and HTML.

Plus, over real loopback TLS against the edge: the lean connect path (one cached-free
context per device, material read once) still presents each device's OWN
certificate, checked on the edge's side through its ``tls.accepted`` events.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from certs.quickstart import quickstart
from devices.fleet import FleetJob, RunnerSettings, Shard, load_manifest, plan_fleet, run_job_async
from devices.html import render_html
from devices.report import FleetReport
from devices.selfwatch import (
    BOTTLENECK,
    BottleneckDetector,
    Sample,
    SelfWatch,
    merge_series,
    series_from_json,
    series_to_json,
)
from edge.config import EdgeConfig, HostPort, ListenersConfig, TrustConfig
from edge.server import EdgeServer


@pytest.mark.timeout(10)
def test_one_slow_window_is_a_hiccup_two_are_a_verdict() -> None:
    d = BottleneckDetector(start_lag=0.05, loop_lag=0.1, windows=2)
    assert d.feed(0.2, 0.0) is False  # one window behind
    assert d.feed(0.0, 0.0) is False  # caught up: the streak restarts
    assert d.feed(0.0, 0.3) is False
    assert d.behind is False
    assert d.feed(0.06, 0.0) is True  # second window in a row: the verdict, once
    assert d.behind is True
    assert d.feed(0.5, 0.5) is False


@pytest.mark.timeout(10)
def test_samples_count_the_differences_per_second() -> None:
    now = [0.0]
    cpu = [10.0]
    totals = [(0, 0, 0)]
    lags = [0.0]
    said: list[str] = []

    def take_lag() -> float:
        return lags[0]

    watch = SelfWatch(
        lambda: totals[0],
        take_lag,
        clock=lambda: now[0],
        cpu=lambda: cpu[0],
        on_behind=lambda: said.append(BOTTLENECK),
    )
    now[0], cpu[0], totals[0] = 0.5, 10.25, (3, 1, 0)
    watch.record(0.001)
    now[0], cpu[0], totals[0] = 0.9, 10.5, (5, 4, 1)
    watch.record(0.002)
    now[0], cpu[0], totals[0], lags[0] = 1.2, 11.0, (6, 4, 1), 0.3
    watch.record(0.0)
    now[0], cpu[0], lags[0] = 1.6, 11.5, 0.2
    watch.record(0.0)
    first, second = watch.series[0], watch.series[1]
    assert (first.connects, first.messages, first.errors) == (5, 4, 1)
    assert first.cpu_s == pytest.approx(0.5)
    assert first.loop_lag_s == pytest.approx(0.002)
    assert second.connects == 1
    assert second.start_lag_s == pytest.approx(0.3)
    assert watch.cpu_s == pytest.approx(1.5)
    assert said == [BOTTLENECK]


@pytest.mark.timeout(10)
def test_series_merge_adds_counts_and_keeps_the_worst_lag() -> None:
    a = {0: Sample(0, connects=2, cpu_s=0.1, loop_lag_s=0.01), 1: Sample(1, connects=1)}
    b = {0: Sample(0, connects=3, cpu_s=0.2, loop_lag_s=0.02), 2: Sample(2, errors=4)}
    merge_series(a, b)
    assert [s.connects for _, s in sorted(a.items())] == [5, 1, 0]
    assert a[0].loop_lag_s == pytest.approx(0.02)
    assert a[2].errors == 4
    back = series_from_json(series_to_json(a))
    assert series_to_json(back) == series_to_json(a)


@pytest.mark.timeout(10)
def test_report_carries_the_generator_and_round_trips() -> None:
    report = FleetReport(shards=["1/2"])
    report.fleet_cpu_s = 2.0
    report.loop_lag_max_s = 0.012
    report.series = {0: Sample(0, connects=4, messages=2, errors=1, cpu_s=0.5)}
    report.outcomes = {"connected": {"connected": 4}}
    report.note(BOTTLENECK)
    report.tls_keys = "legacy EC/RSA methods (3.0.22)"
    doc = report.to_json()
    assert doc["generator"] == {
        "cpu_s": 2.0,
        "cpu_ms_per_connect": 500.0,
        "loop_lag_max_ms": 12.0,
        "behind": True,
        "tls_keys": "legacy EC/RSA methods (3.0.22)",
        "chains_verified": 0,
        "chains_reused": 0,
    }
    other = FleetReport.from_json(json.loads(json.dumps(doc)))
    other.shards = ["2/2"]
    report.merge(other)
    assert report.fleet_cpu_s == pytest.approx(4.0)
    assert report.tls_keys == "legacy EC/RSA methods (3.0.22)"  # the same once
    third = FleetReport(shards=["3/3"])
    third.tls_keys = "provider (asked for)"
    report.merge(third)
    assert report.tls_keys == "legacy EC/RSA methods (3.0.22); provider (asked for)"
    assert report.series[0].connects == 8
    html = render_html(report.to_json())
    for title in ("Connects per second", "Messages sent per second", "Errors per second"):
        assert title in html
    assert "Fleet CPU" in html
    assert "event-loop lag" in html


@pytest.mark.timeout(10)
def test_reports_without_the_generator_still_load() -> None:
    doc: dict[str, Any] = FleetReport(shards=["1/1"]).to_json()
    del doc["generator"], doc["series"]
    report = FleetReport.from_json(doc)
    assert report.series == {}
    assert report.fleet_cpu_s == 0.0
    assert "The load over time" in render_html(doc)


@pytest.mark.timeout(120)
def test_each_device_presents_its_own_certificate_on_the_lean_path(tmp_path: Path) -> None:
    n = 12
    qs = quickstart(tmp_path / "pki", devices=n)
    config = EdgeConfig(
        state_dir=tmp_path / "state",
        listeners=ListenersConfig(
            mqtt=None,
            multi=HostPort(host="127.0.0.1", port=0),
            https=None,
            admin=None,
        ),
        trust=TrustConfig(store=tmp_path / "trust.db", watch_interval=None),
        pki_dir=qs.out,
    )
    identities: list[str] = []
    with EdgeServer.run_in_thread(config) as handle:
        handle.server.events.add_listener(
            lambda e: identities.append(str(e["identity"])) if e["kind"] == "tls.accepted" else None
        )
        port = handle.ports["multi"]
        urls = [
            f"mqtts://127.0.0.1:{port}",
            f"https://127.0.0.1:{port}",
            f"wss://127.0.0.1:{port}/ws",
        ]
        devices = plan_fleet(
            load_manifest(qs.out / "devices" / "manifest.jsonl"),
            devices=n,
            urls=urls,
            ramp=200.0,
            faults={},
            shard=Shard(),
            maker=None,
        )
        job = FleetJob(
            devices=tuple(devices),
            fleet_size=n,
            settings=RunnerSettings(ca=qs.out / "root-ca.pem", device_timeout=20.0),
            hold=None,
            loop="asyncio",
        )
        report = asyncio.run(run_job_async(job))
    assert report.count("connected") == n
    # Every device its own identity: as many distinct identities as devices.
    assert len(identities) == n
    assert len(set(identities)) == n
    assert all(any(d.id in ident for d in devices) for ident in identities)
    assert report.to_json()["generator"]["cpu_ms_per_connect"] > 0
    assert report.series
