"""Fleet reports: counting, exact merging of shards, JSON round trip, located errors."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from devices.report import FleetReport, Latency, ReportError, load_report, summary_table

from .fakeresults import FakeResult, FakeStep


def fake_device(
    rng: random.Random, i: int
) -> tuple[str | None, tuple[str, ...], FakeResult, float]:
    """A reproducible device result: every 10th is a refused wrong-ca device."""
    proto = ("mqtt", "https", "wss")[i % 3]
    if i % 10 == 3:
        return "wrong-ca", ("unknown_ca",), FakeResult("refused", "unknown_ca", proto), 0.0
    tcp, tls, ack = (rng.uniform(0.0001, 0.05) for _ in range(3))
    start = rng.uniform(0.0, 0.002)
    steps = [
        FakeStep("tcp", start, tcp),
        FakeStep("tls", start + tcp, tls),
        FakeStep("ack", start + tcp + tls, ack),
        FakeStep("first_message", start + tcp + tls + ack, rng.uniform(0.001, 0.01)),
    ]
    delivery = [rng.uniform(0.0005, 0.02) for _ in range(3)]
    return None, ("connected",), FakeResult("connected", "", proto, steps, 3, 3, delivery), start


def build(indexes: range | list[int], shard: str) -> FleetReport:
    report = FleetReport(shards=[shard], started="2026-01-01T00:00:00Z")
    for i in indexes:
        rng = random.Random(i)
        fault, expected, result, start = fake_device(rng, i)
        report.add(
            device_id=f"d{i}",
            fault=fault,
            expected=expected,
            offset=i * 0.01,
            start_lag=start,
            result=result,
        )
    return report


def test_two_shards_merged_equal_one_run() -> None:
    whole = build(range(300), "1/1").to_json()
    a = build([i for i in range(300) if i % 2 == 0], "1/2")
    b = build([i for i in range(300) if i % 2 == 1], "2/2")
    # Through JSON, as `edgesim fleet merge` does.
    a = FleetReport.from_json(json.loads(json.dumps(a.to_json())))
    b = FleetReport.from_json(json.loads(json.dumps(b.to_json())))
    a.merge(b)
    merged = a.to_json()
    assert merged["shards"] == ["1/2", "2/2"]
    for key in ("devices", "outcomes", "fidelity", "messages", "protocols", "timeline"):
        assert merged[key] == whole[key], key
    for name in ("connect", "start_lag"):
        assert merged["latency"][name] == whole["latency"][name]
    assert merged["latency"]["steps"] == whole["latency"]["steps"]
    assert merged["devices"] == 300
    assert merged["outcomes"]["refused"] == {"unknown_ca": 30}
    assert merged["fidelity"]["wrong-ca"]["matched"] == 30


def test_merged_histogram_percentiles_are_exact() -> None:
    rng = random.Random(7)
    values = [rng.expovariate(1 / 0.02) for _ in range(5000)]
    whole, left, right = Latency(), Latency(), Latency()
    for i, v in enumerate(values):
        whole.record(v)
        (left if i % 2 else right).record(v)
    left = Latency.decode(left.encode(), where="left")
    left.merge(right)
    assert left.summary() == whole.summary()
    # And the percentiles are those of the data, within HDR's 3 significant digits.
    values.sort()
    p99 = values[int(0.99 * len(values)) - 1] * 1000
    assert whole.summary()["p99_ms"] == pytest.approx(p99, rel=2e-3)


def test_the_same_shard_twice_is_refused() -> None:
    a = build(range(10), "1/2")
    with pytest.raises(ReportError, match="1/2"):
        a.merge(build(range(10), "1/2"))


def test_json_round_trip_and_summary_table(tmp_path: Path) -> None:
    report = build(range(50), "1/1")
    report.note("the CRL was not installed")
    path = tmp_path / "r.json"
    path.write_text(json.dumps(report.to_json()))
    again = load_report(path)
    assert again.to_json() == report.to_json()
    table = summary_table(again.to_json())
    assert "unknown_ca" in table
    assert "note: the CRL was not installed" in table
    assert "step tls" in table


def test_unknown_schema_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"schema": "other/9"}))
    with pytest.raises(ReportError, match=r"r\.json: schema is 'other/9'"):
        load_report(path)


def test_damaged_histogram_names_the_field(tmp_path: Path) -> None:
    doc = build(range(20), "1/1").to_json()
    doc["latency"]["steps"]["tls"]["hdr"] = "not-a-histogram"
    path = tmp_path / "r.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ReportError, match=r"latency\.steps\.tls\.hdr"):
        load_report(path)


def test_missing_field_and_bad_json_are_named(tmp_path: Path) -> None:
    doc = build(range(5), "1/1").to_json()
    del doc["messages"]["sent"]
    path = tmp_path / "r.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ReportError, match=r"messages: missing field 'sent'"):
        load_report(path)
    path.write_text("{")
    with pytest.raises(ReportError, match="not JSON"):
        load_report(path)
    with pytest.raises(ReportError, match="cannot read"):
        load_report(tmp_path / "absent.json")
