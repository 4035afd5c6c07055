"""Fleets with injected faults against a real Mosquitto 2.0 (require_certificate, crlfile).

Devices are held to TLS 1.2 here (``--tls-max 1.2``): the edge's verdict then arrives
inside the handshake. With TLS 1.3 it comes after the device's Finished, by which time
the device has sent CONNECT; Mosquitto closes with that CONNECT unread, the kernel
answers with a RST, and the RST usually destroys the alert before the device reads it
(the device then reports ``closed-by-edge``).

The report must match the injected faults exactly: every faulty device refused with
the alert OpenSSL 3.0 sends for its fault, every healthy device connected. Covers one
process, ``--processes 2``, ``--shard`` + ``fleet merge``, held devices publishing, a
missing CRL (exit 1 with a note), and CLI exit codes through ``edge.cli.main``.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from certs.quickstart import quickstart
from edge.cli import main

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(shutil.which("mosquitto") is None, reason="mosquitto is not installed"),
]

DEVICES = 40
FAULTS = "expired=5%,wrong-ca=5%,no-cert=2,revoked=2,wrong-eku=1"
#: What FAULTS selects from 40 devices: 5 % of 40 is exactly 2.
PLANNED = {"expired": 2, "wrong-ca": 2, "no-cert": 2, "revoked": 2, "wrong-eku": 1}
HEALTHY = DEVICES - sum(PLANNED.values())
#: Alerts Mosquitto's OpenSSL 3.0 sends over TLS 1.2 (no-cert: handshake_failure).
ALERTS = {
    "expired": "certificate_expired",
    "wrong-ca": "unknown_ca",
    "no-cert": "handshake_failure",
    "revoked": "certificate_revoked",
    "wrong-eku": "unsupported_certificate",
}
# The default loop (uvloop); devices held to TLS 1.2 (see the module docstring).
LOOP = ["--tls-max", "1.2"]


@dataclass(frozen=True)
class Pki:
    dir: Path
    work: Path

    def args(self, port: int) -> list[str]:
        return [
            "fleet",
            "run",
            "--pki",
            str(self.dir),
            "--url",
            f"mqtts://127.0.0.1:{port}",
            "--faults",
            FAULTS,
            "--seed",
            "11",
            "--devices",
            str(DEVICES),
            "--work-dir",
            str(self.work),
            "--ramp",
            "200/s",
            *LOOP,
        ]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    base = tmp_path_factory.mktemp("fleet")
    # The broker checks validity against the real clock, so the PKI is issued now.
    now = datetime.now(UTC)
    quickstart(base / "pki", devices=DEVICES, now=now)
    made = Pki(base / "pki", base / "work")
    prepare = [*made.args(1), "--prepare", "--now", now.isoformat()]
    assert main(prepare) == 0
    assert (made.work / "revoked-crl.pem").is_file()
    return made


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait_running(proc: subprocess.Popen[bytes], deadline_s: float) -> str:
    """Read Mosquitto's log until it says it is running (bounded by ``deadline_s``)."""
    assert proc.stderr is not None
    log = b""
    end = time.monotonic() + deadline_s
    while b" running" not in log:
        left = end - time.monotonic()
        if left <= 0 or proc.poll() is not None:
            raise AssertionError(f"mosquitto did not start:\n{log.decode(errors='replace')}")
        ready, _, _ = select.select([proc.stderr], [], [], left)
        if ready:
            chunk = os.read(proc.stderr.fileno(), 4096)
            if not chunk:
                continue
            log += chunk
    return log.decode(errors="replace")


def _drain(proc: subprocess.Popen[bytes]) -> None:
    assert proc.stderr is not None
    while os.read(proc.stderr.fileno(), 65536):
        pass


@pytest.fixture(scope="module")
def broker_factory(
    pki: Pki, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., int]]:
    procs: list[subprocess.Popen[bytes]] = []
    drains: list[threading.Thread] = []

    def start(with_crl: bool, extra: Sequence[str] = ()) -> int:
        port = _free_port()
        conf = tmp_path_factory.mktemp("mosq") / "mosquitto.conf"
        lines = [
            "per_listener_settings false",
            "allow_anonymous true",
            "log_dest stderr",
            # Started as root, Mosquitto would drop to a user that cannot read the key.
            "user root",
            f"listener {port} 127.0.0.1",
            f"cafile {pki.dir / 'ca-chain.pem'}",
            f"certfile {pki.dir / 'server.pem'}",
            f"keyfile {pki.dir / 'server.key'}",
            "require_certificate true",
            "max_connections -1",
        ]
        if with_crl:
            lines.append(f"crlfile {pki.work / 'revoked-crl.pem'}")
        lines.extend(extra)
        conf.write_text("\n".join(lines) + "\n")
        proc = subprocess.Popen(
            ["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        procs.append(proc)
        _wait_running(proc, 10.0)
        # Keep reading its log, or Mosquitto blocks once the pipe is full.
        drain = threading.Thread(target=_drain, args=(proc,), daemon=True)
        drain.start()
        drains.append(drain)
        return port

    yield start
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    for drain in drains:
        drain.join(timeout=10)
    for proc in procs:
        assert proc.stderr is not None
        proc.stderr.close()


@pytest.fixture(scope="module")
def broker(broker_factory: Callable[..., int]) -> int:
    return broker_factory(True)


@pytest.fixture(scope="module")
def strict_broker(broker_factory: Callable[..., int]) -> int:
    """Accepts every certificate, but no anonymous MQTT session (CONNACK 5 / 0x87)."""
    return broker_factory(True, ["allow_anonymous false"])


def _run_json(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, object]]:
    code = main([*argv, "--json"])
    captured = capsys.readouterr()
    assert captured.out, captured.err
    doc = json.loads(captured.out)
    # On failure, show what the fleet saw rather than just the exit status.
    summary = {k: doc.get(k) for k in ("outcomes", "fidelity", "notes")}
    sys.stderr.write(json.dumps(summary, indent=1) + "\n")
    return code, doc


def _assert_matches_plan(doc: dict[str, object]) -> None:
    assert doc["devices"] == DEVICES
    fidelity = doc["fidelity"]
    assert isinstance(fidelity, dict)
    assert fidelity["none"]["devices"] == HEALTHY
    assert fidelity["none"]["got"] == {"connected": HEALTHY}
    for kind, n in PLANNED.items():
        assert fidelity[kind]["devices"] == n, kind
        assert fidelity[kind]["got"] == {ALERTS[kind]: n}, kind
        assert fidelity[kind]["ok"], kind
    refused = {alert: PLANNED[kind] for kind, alert in ALERTS.items()}
    assert doc["outcomes"] == {"connected": {"connected": HEALTHY}, "refused": refused}
    assert doc["ok"] is True


@pytest.mark.timeout(90)
def test_fleet_report_matches_injected_faults(
    pki: Pki, broker: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report, html = tmp_path / "r.json", tmp_path / "r.html"
    argv = [*pki.args(broker), "--probe-message", "--report", str(report), "--html", str(html)]
    code, doc = _run_json(argv, capsys)
    assert code == 0
    _assert_matches_plan(doc)
    assert json.loads(report.read_text()) == doc
    latency = doc["latency"]
    assert isinstance(latency, dict)
    assert latency["connect"]["count"] == HEALTHY
    assert set(latency["steps"]) == {"tcp", "tls", "ack", "first_message"}
    assert latency["steps"]["ack"]["count"] == HEALTHY
    assert doc["messages"] == {**doc["messages"], "sent": HEALTHY, "received": HEALTHY}  # type: ignore[dict-item]
    page = html.read_text()
    assert "<svg" in page
    assert "<script" not in page
    assert "certificate_revoked" in page


@pytest.mark.timeout(120)
def test_two_processes_give_the_same_counts(
    pki: Pki, broker: int, capsys: pytest.CaptureFixture[str]
) -> None:
    code, doc = _run_json([*pki.args(broker), "--processes", "2"], capsys)
    assert code == 0
    _assert_matches_plan(doc)
    assert doc["shards"] == ["1/1"]


@pytest.mark.timeout(120)
def test_shards_merged_equal_the_whole_fleet(
    pki: Pki, broker: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parts = []
    for k in (1, 2):
        out = tmp_path / f"shard{k}.json"
        code, part = _run_json(
            [*pki.args(broker), "--shard", f"{k}/2", "--report", str(out)], capsys
        )
        assert code == 0
        assert part["devices"] == DEVICES // 2
        parts.append(str(out))
    merged_html = tmp_path / "merged.html"
    code, doc = _run_json(["fleet", "merge", *parts, "--html", str(merged_html)], capsys)
    assert code == 0
    _assert_matches_plan(doc)
    assert doc["shards"] == ["1/2", "2/2"]
    assert merged_html.is_file()


@pytest.mark.timeout(90)
def test_held_devices_publish_and_receive(
    pki: Pki, broker: int, capsys: pytest.CaptureFixture[str]
) -> None:
    # Healthy devices only, over TLS 1.3 (a held session is the same whatever faults
    # the others carry).
    argv = [
        *pki.args(broker)[:6],
        "--devices",
        str(DEVICES),
        "--ramp",
        "200/s",
        "--duration",
        "4s",
        "--msg-rate",
        "60/s",
        "--qos",
        "1",
    ]
    code, doc = _run_json(argv, capsys)
    assert code == 0
    assert doc["outcomes"] == {"connected": {"connected": DEVICES}}
    messages = doc["messages"]
    assert isinstance(messages, dict)
    # 60/s across 40 devices: one message per device every 0.67 s, the first within
    # 0.67 s of connecting; the 4 s hold after the last arrival leaves room for it
    # even when connecting takes seconds on a busy machine.
    assert messages["sent"] >= DEVICES
    assert messages["received"] == messages["sent"]
    assert messages["delivery"]["count"] == messages["received"]
    assert doc["latency"]["steps"]["first_message"]["count"] == DEVICES  # type: ignore[index]
    # Held devices report their connection's steps too, one sample per device.
    for step in ("tcp", "tls", "ack"):
        assert doc["latency"]["steps"][step]["count"] == DEVICES, step  # type: ignore[index]


@pytest.mark.timeout(90)
def test_a_missing_crl_fails_the_run_and_says_why(
    pki: Pki, broker_factory: Callable[..., int], capsys: pytest.CaptureFixture[str]
) -> None:
    port = broker_factory(False)
    code, doc = _run_json(pki.args(port), capsys)
    assert code == 1
    fidelity = doc["fidelity"]
    assert isinstance(fidelity, dict)
    assert fidelity["revoked"]["got"] == {"connected": PLANNED["revoked"]}
    assert not fidelity["revoked"]["ok"]
    assert any("has not loaded the CRL" in str(n) for n in doc["notes"])  # type: ignore[attr-defined]


def test_usage_errors_exit_2(pki: Pki, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*pki.args(1), "--shard", "3/2"]) == 2
    assert "--shard '3/2'" in capsys.readouterr().err
    assert main([*pki.args(1), "--faults", "late=1%"]) == 2
    assert "unknown kind 'late'" in capsys.readouterr().err
    assert main([*pki.args(1), "--ramp", "fast"]) == 2
    assert "--ramp 'fast'" in capsys.readouterr().err
    assert main([*pki.args(1), "--msg-rate", "5/s"]) == 2
    assert "--msg-rate needs --duration" in capsys.readouterr().err


def test_bad_inputs_exit_1_naming_the_file(
    pki: Pki, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text('{"id": "a", "cert": "a.pem"}\n')
    argv = [*pki.args(1), "--manifest", str(manifest)]
    assert main(argv) == 1
    assert f"{manifest}:1: missing or empty field 'key'" in capsys.readouterr().err
    bad = tmp_path / "r.json"
    bad.write_text("{}")
    assert main(["fleet", "merge", str(bad)]) == 1
    assert f"{bad}: missing field 'schema'" in capsys.readouterr().err


@pytest.mark.timeout(90)
def test_scenario_file_with_flags_overriding_it(
    pki: Pki, broker: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scenario = tmp_path / "fleet.toml"
    scenario.write_text(
        "[fleet]\n"
        f'pki = "{pki.dir}"\n'
        f'url = ["mqtts://127.0.0.1:{broker}"]\n'
        f'faults = "{FAULTS}"\n'
        "seed = 11\n"
        "devices = 10\n"
        f'work-dir = "{pki.work}"\n'
        'ramp = "200/s"\n'
        'loop = "uvloop"\n'
        'tls-max = "1.2"\n'
    )
    argv = ["fleet", "run", "--scenario", str(scenario), "--devices", str(DEVICES)]
    code, doc = _run_json(argv, capsys)
    assert code == 0
    _assert_matches_plan(doc)


def _mix_args(pki: Pki, port: int) -> list[str]:
    """Healthy devices only, half of them MQTT 5 (odd indexes)."""
    return [
        *pki.args(port)[:6],
        "--devices",
        str(DEVICES),
        "--ramp",
        "200/s",
        "--mqtt-version",
        "mix",
    ]


@pytest.mark.timeout(90)
def test_mqtt_version_mix_counts_both_versions(
    pki: Pki, broker: int, capsys: pytest.CaptureFixture[str]
) -> None:
    code, doc = _run_json([*_mix_args(pki, broker), "--probe-message", "--qos", "1"], capsys)
    assert code == 0
    half = DEVICES // 2
    assert doc["outcomes"] == {"connected": {"connected": DEVICES}}
    assert doc["reason_codes"] == {
        "connected": {"CONNACK 0 accepted": half, "CONNACK 0x00 Success": half}
    }
    protocols = doc["protocols"]
    assert isinstance(protocols, dict)
    assert (protocols["mqtt"]["devices"], protocols["mqtt5"]["devices"]) == (half, half)
    assert doc["messages"]["received"] == DEVICES  # type: ignore[index]


@pytest.mark.timeout(90)
def test_mqtt_version_mix_reports_refusal_codes(
    pki: Pki, strict_broker: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    html = tmp_path / "r.html"
    code, doc = _run_json([*_mix_args(pki, strict_broker), "--html", str(html)], capsys)
    assert code == 1  # healthy devices were refused: a fidelity failure
    half = DEVICES // 2
    assert doc["outcomes"] == {"refused": {"connack-0x87": half, "connack-5": half}}
    assert doc["reason_codes"] == {
        "refused": {"CONNACK 0x87 Not authorized": half, "CONNACK 5 not authorized": half}
    }
    assert "CONNACK 0x87 Not authorized" in html.read_text()
    assert main([*_mix_args(pki, strict_broker)]) == 1
    assert "CONNACK 0x87 Not authorized" in capsys.readouterr().out


def test_mqtt_version_needs_an_mqtt_url(pki: Pki, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [*pki.args(1)[:4], "--url", "https://127.0.0.1:1", "--mqtt-version", "5"]
    assert main(argv) == 2
    assert "needs an MQTT URL" in capsys.readouterr().err
