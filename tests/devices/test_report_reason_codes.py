"""The fleet report's MQTT reason codes per outcome: counted, merged, kept, shown."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from devices.html import render_html
from devices.report import FleetReport, load_report, reason_code_label, summary_table

from .fakeresults import FakeResult

pytestmark = pytest.mark.timeout(10)


@pytest.mark.parametrize(
    ("outcome", "reason", "protocol", "label"),
    [
        ("connected", "", "mqtt5", "CONNACK 0x00 Success"),
        ("connected", "", "wss-mqtt5", "CONNACK 0x00 Success"),
        ("connected", "", "mqtt", "CONNACK 0 accepted"),
        ("connected", "", "https", None),
        ("refused", "connack-0x87", "mqtt5", "CONNACK 0x87 Not authorized"),
        ("refused", "connack-0x84", "mqtt5", "CONNACK 0x84 Unsupported Protocol Version"),
        ("refused", "connack-5", "mqtt", "CONNACK 5 not authorized"),
        ("refused", "suback-0x87", "mqtt5", "SUBACK 0x87 Not authorized"),
        ("refused", "suback-0x80", "mqtt", "SUBACK 0x80 Failure"),
        ("refused", "puback-0x87", "mqtt5", "PUBACK 0x87 Not authorized"),
        ("refused", "pubrec-0x90", "mqtt5", "PUBREC 0x90 Topic Name invalid"),
        ("error", "dropped:disconnect-0x8e", "mqtt5", "DISCONNECT 0x8e Session taken over"),
        ("error", "disconnect-0x98", "mqtt5", "DISCONNECT 0x98 Administrative action"),
        (
            "error",
            "dropped:mqtt-0x94",
            "mqtt5",
            "DISCONNECT 0x94 Topic Alias invalid (sent by the device)",
        ),
        ("refused", "unknown_ca", "mqtt5", None),
        ("refused", "http-403", "https", None),
    ],
)
def test_labels(outcome: str, reason: str, protocol: str, label: str | None) -> None:
    assert reason_code_label(outcome, reason, protocol) == label


def build(shard: str, results: list[FakeResult]) -> FleetReport:
    report = FleetReport(shards=[shard])
    for i, result in enumerate(results):
        report.add(
            device_id=f"d{i}",
            fault=None,
            expected=("connected",),
            offset=0.0,
            start_lag=0.0,
            result=result,
        )
    return report


def test_counted_per_outcome_merged_and_kept(tmp_path: Path) -> None:
    one = build(
        "1/2",
        [
            FakeResult("connected", "", "mqtt5"),
            FakeResult("connected", "", "mqtt"),
            FakeResult("refused", "connack-0x87", "mqtt5"),
        ],
    )
    two = build(
        "2/2",
        [
            FakeResult("refused", "connack-0x87", "mqtt5"),
            FakeResult("error", "dropped:disconnect-0x8e", "mqtt5"),
            FakeResult("refused", "unknown_ca", "mqtt5"),
        ],
    )
    one.merge(two)
    assert one.reason_codes == {
        "connected": {"CONNACK 0x00 Success": 1, "CONNACK 0 accepted": 1},
        "refused": {"CONNACK 0x87 Not authorized": 2},
        "error": {"DISCONNECT 0x8e Session taken over": 1},
    }
    doc = one.to_json()
    path = tmp_path / "r.json"
    path.write_text(json.dumps(doc))
    assert load_report(path).reason_codes == one.reason_codes
    table = summary_table(doc)
    assert "MQTT reason code" in table
    assert "CONNACK 0x87 Not authorized" in table
    page = render_html(doc)
    assert "<h2>MQTT reason codes</h2>" in page
    assert "DISCONNECT 0x8e Session taken over" in page


def test_a_report_from_before_mqtt5_still_loads(tmp_path: Path) -> None:
    doc = build("1/1", [FakeResult("refused", "unknown_ca", "https")]).to_json()
    del doc["reason_codes"]
    path = tmp_path / "old.json"
    path.write_text(json.dumps(doc))
    report = load_report(path)
    assert report.reason_codes == {}
    assert "MQTT reason code" not in summary_table(doc)
    assert "MQTT reason codes" not in render_html(doc)
