"""Fleets against the real edge, over TLS 1.3: every fault kind, and every protocol.

The edge drives its handshakes itself and reads what the device sent before closing,
so each refused device reads the real alert even with TLS 1.3 (no RST race as with
Mosquitto). The revoked devices' CRL reaches the edge through its admin API
(``--admin URL --token T``), as a load test against a running edge would do it.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

import devices.fleet
from certs.quickstart import QuickstartResult, quickstart
from edge.cli import main
from edge.config import EdgeConfig, HostPort, ListenersConfig, TrustConfig
from edge.server import EdgeServer, ServerThread

FAULTS = "expired=2,wrong-ca=2,no-cert=2,revoked=2,wrong-eku=2"
DEVICES = 30
ALERTS = {
    "expired": "certificate_expired",
    "wrong-ca": "unknown_ca",
    "no-cert": "certificate_required",  # TLS 1.3
    "revoked": "certificate_revoked",
    "wrong-eku": "unsupported_certificate",
}


@pytest.fixture
def edge(tmp_path: Path) -> Iterator[tuple[ServerThread, QuickstartResult]]:
    qs = quickstart(tmp_path / "pki", devices=DEVICES)
    config = EdgeConfig(
        state_dir=tmp_path / "state",
        listeners=ListenersConfig(
            mqtt=HostPort(host="127.0.0.1", port=0),
            # One port for every protocol, told apart by ALPN and first bytes.
            multi=HostPort(host="127.0.0.1", port=0),
            https=None,
            admin=HostPort(host="127.0.0.1", port=0),
        ),
        trust=TrustConfig(store=tmp_path / "trust.db", watch_interval=None),
        pki_dir=qs.out,
    )
    with EdgeServer.run_in_thread(config) as handle:
        yield handle, qs


@pytest.mark.timeout(90)
def test_every_fault_refused_with_its_alert_by_the_edge(
    edge: tuple[ServerThread, QuickstartResult], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    handle, qs = edge
    token = handle.server.admin_token
    assert token is not None
    common = [
        "fleet",
        "run",
        "--pki",
        str(qs.out),
        "--url",
        f"mqtts://127.0.0.1:{handle.ports['mqtt']}",
        "--faults",
        FAULTS,
        "--work-dir",
        str(tmp_path / "work"),
    ]
    events = handle.server.events
    since = events.last_id
    admin = ["--admin", f"http://127.0.0.1:{handle.ports['admin']}", "--token", token]
    assert main([*common, *admin, "--prepare"]) == 0
    assert "uploaded to" in capsys.readouterr().err

    # The CRL counts once the set's new state is active on the edge; wait for that.
    async def crl_active() -> None:
        added = await events.wait_for(lambda e: e["kind"] == "trust.crl_added", since=since)
        await events.wait_for(lambda e: e["kind"] == "trust.active", since=added["id"])

    asyncio.run_coroutine_threadsafe(crl_active(), handle.loop).result(timeout=30)

    code = main([*common, "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert code == 0, doc["fidelity"]
    healthy = DEVICES - 2 * len(ALERTS)
    assert doc["outcomes"] == {
        "connected": {"connected": healthy},
        "refused": {alert: 2 for alert in ALERTS.values()},
    }
    for kind, alert in ALERTS.items():
        assert doc["fidelity"][kind]["got"] == {alert: 2}, kind
    assert doc["fidelity"]["none"]["got"] == {"connected": healthy}


@pytest.mark.timeout(90)
@pytest.mark.parametrize("contexts", ["shared", "per-device"])
def test_mixed_protocols_held_and_publishing(
    edge: tuple[ServerThread, QuickstartResult],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    contexts: str,
) -> None:
    """Also each device's own certificate, on one shared context or a context each.

    ``per-device`` is the path of a Python where ``devices.identity`` cannot work.
    """
    if contexts == "per-device":
        monkeypatch.setattr(devices.fleet, "identity_available", lambda: False)
    handle, qs = edge
    since = handle.server.events.last_id
    port = handle.ports["multi"]
    urls = [
        f"mqtts://127.0.0.1:{port}",
        f"https://127.0.0.1:{port}",
        f"wss://127.0.0.1:{port}/mqtt",
        f"wss://127.0.0.1:{port}/ws",
    ]
    argv = ["fleet", "run", "--pki", str(qs.out), "--protocol", "mix"]
    argv += [arg for url in urls for arg in ("--url", url)]
    argv += ["--faults", "wrong-ca=2,no-cert=2", "--work-dir", str(tmp_path / "work")]
    argv += ["--duration", "2s", "--msg-rate", "60/s", "--json"]
    code = main(argv)
    doc = json.loads(capsys.readouterr().out)
    assert code == 0, doc["fidelity"]
    # The fleet's default key methods (devices.legacykeys): the faults below are still
    # refused, and every healthy device still verified the edge, on them.
    expected_keys = "legacy" if ssl.OPENSSL_VERSION_INFO[:2] == (3, 0) else "provider"
    assert doc["generator"]["tls_keys"].startswith(expected_keys), doc["generator"]
    # devices.verifycache (on by default): devices on a shared context verified the
    # edge's chain in full once per scheme, then reused it; a context each, never.
    gen = doc["generator"]
    if contexts == "shared":
        assert 1 <= gen["chains_verified"] <= 4, gen
        assert gen["chains_verified"] + gen["chains_reused"] >= DEVICES - 4, gen
    else:
        assert (gen["chains_verified"], gen["chains_reused"]) == (0, 0), gen
    healthy = DEVICES - 4
    assert doc["fidelity"]["none"]["got"] == {"connected": healthy}
    assert doc["fidelity"]["wrong-ca"]["got"] == {"unknown_ca": 2}
    assert doc["fidelity"]["no-cert"]["got"] == {"certificate_required": 2}
    # Device i uses URL i % 4: 8 mqtts, 8 https, and 7 + 7 over wss (/mqtt and /ws).
    assert {p: v["devices"] for p, v in doc["protocols"].items()} == {
        "mqtt": 8,
        "https": 8,
        "wss": 14,
    }
    messages = doc["messages"]
    # One message per device every 0.5 s; the first within 0.5 s of connecting.
    assert messages["sent"] >= healthy
    assert messages["received"] == messages["sent"]
    assert doc["latency"]["steps"]["first_message"]["count"] == healthy
    # Every healthy device presented its own certificate (an HTTPS device may reconnect).
    accepted = handle.server.events.query(since=since, kind="tls.accepted")
    # The edge names an identity "<certificate set>/<device>".
    identities = {str(e["identity"]).rsplit("/", 1)[-1] for e in accepted}
    assert len(identities) == healthy
    assert identities <= {f"dev-{i:05d}" for i in range(DEVICES)}
