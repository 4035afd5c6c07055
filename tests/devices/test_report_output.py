"""Report outputs: the HTML page, the progress display and scenario files."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from devices.html import render_html
from devices.progress import Counters, ProgressDisplay, add_snapshots
from devices.report import FleetReport
from devices.scenario import ScenarioError, load_scenario

from .fakeresults import FakeResult, FakeStep


def build(n: int) -> FleetReport:
    """A report of ``n`` devices over ``n / 50`` seconds; every 10th refused (wrong CA)."""
    report = FleetReport(shards=["1/1"])
    for i in range(n):
        if i % 10 == 3:
            fault, expected, result = (
                "wrong-ca",
                ("unknown_ca",),
                FakeResult("refused", "unknown_ca"),
            )
        else:
            ack = 0.002 + (i % 7) * 0.001
            steps = [
                FakeStep("tcp", 0.0, 0.001),
                FakeStep("tls", 0.001, 0.003),
                FakeStep("ack", 0.004, ack),
            ]
            fault, expected, result = None, ("connected",), FakeResult("connected", "", steps=steps)
        report.add(
            device_id=f"d{i}",
            fault=fault,
            expected=expected,
            offset=i / 50,
            start_lag=0.0,
            result=result,
        )
    return report


def test_html_is_self_contained_with_plots() -> None:
    report = build(120)
    report.note("CRL <not> installed")
    page = render_html(report.to_json())
    assert page.startswith("<!DOCTYPE html>")
    assert page.count("<svg") == 3
    assert "<polyline" in page  # latency over time
    assert "<rect" in page  # outcomes
    # Nothing is fetched: no script, no external stylesheet, no links out.
    assert "<script" not in page
    assert "<link" not in page
    assert "https://" not in page
    assert "CRL &lt;not&gt; installed" in page
    assert "unknown_ca" in page


def test_html_of_an_empty_report() -> None:
    page = render_html(FleetReport().to_json())
    assert "No device connected" in page


def test_progress_on_a_terminal_redraws_in_place() -> None:
    out = io.StringIO()
    display = ProgressDisplay(out, tty=True)
    counters = Counters(planned=10)
    counters.on_start()
    counters.on_connected()
    display.update(counters.snapshot(), 0.25)
    counters.on_start()
    counters.on_finish(
        was_connected=False, outcome="refused", reason="unknown_ca", sent=0, received=0
    )
    display.update(counters.snapshot(), 0.5)
    text = out.getvalue()
    first, second = text.split("\x1b[1F", 1)
    assert "started 1/10  held 1" in first
    assert "started 2/10" in second
    assert "refused: unknown_ca=1" in second


def test_progress_off_a_terminal_prints_plain_periodic_lines() -> None:
    out = io.StringIO()
    display = ProgressDisplay(out, tty=False, plain_interval=2.0)
    snap = Counters(planned=3).snapshot()
    for elapsed in (0.25, 0.5, 1.0, 2.25, 2.5):
        display.update(snap, elapsed)
    display.update(snap, 2.75, final=True)
    lines = out.getvalue().splitlines()
    assert len(lines) == 3  # at 0.25 s, at 2.25 s, and the final one
    assert "\x1b" not in out.getvalue()


def test_snapshots_of_processes_add_up() -> None:
    a, b = Counters(planned=5), Counters(planned=5)
    for c in (a, b):
        c.on_start()
        c.on_finish(was_connected=False, outcome="error", reason="timeout", sent=2, received=1)
    total = add_snapshots([a.snapshot(), b.snapshot()])
    assert total["planned"] == 10
    assert total["outcomes"] == {"error:timeout": 2}
    assert (total["sent"], total["received"]) == (4, 2)


def test_scenario_sets_options_relative_to_its_file(tmp_path: Path) -> None:
    path = tmp_path / "load.toml"
    path.write_text(
        "[fleet]\n"
        'manifest = "pki/devices/manifest.jsonl"\n'
        'url = "mqtts://127.0.0.1:8883"\n'
        "devices = 50\n"
        'msg-rate = "10/s"\n'
        "probe_message = true\n"
    )
    opts = load_scenario(path)
    assert opts == {
        "manifest": str(tmp_path / "pki/devices/manifest.jsonl"),
        "url": ["mqtts://127.0.0.1:8883"],
        "devices": 50,
        "msg_rate": "10/s",
        "probe_message": True,
    }


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("[fleet]\ndevice = 3\n", "unknown key 'device'"),
        ("[fleet]\ndevices = '3'\n", "key 'devices' must be int"),
        ("[fleet]\ndevices = true\n", "key 'devices' must be int"),
        ("[fleet]\nurl = [1]\n", "key 'url' must list strings"),
        ("[fleet\n", "not TOML"),
    ],
)
def test_bad_scenario_names_the_key_and_file(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(body)
    with pytest.raises(ScenarioError, match=message) as info:
        load_scenario(path)
    assert str(path) in str(info.value)
