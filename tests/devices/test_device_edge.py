"""Devices against the real edge (:class:`edge.server.EdgeServer`) over loopback.

The edge drives TLS itself, so every refusal reaches the device as a real alert, on
every protocol; its quickstart PKI has an intermediate, so devices send a chain. The
edge runs in its own thread (:class:`edge.server.ServerThread`) for the module.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from certs.authority import CertificateAuthority
from certs.quickstart import QuickstartResult, quickstart
from devices.device import (
    DeviceResult,
    DeviceSpec,
    Publish,
    Receive,
    Subscribe,
    Target,
    connected_device,
    run_device,
)
from devices.tlsclient import AlertReceived
from devices.trace import render
from edge.cli import main
from edge.config import EdgeConfig, HostPort, ListenersConfig, TrustConfig
from edge.server import EdgeServer, ServerThread

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def qs(tmp_path_factory: pytest.TempPathFactory) -> QuickstartResult:
    return quickstart(tmp_path_factory.mktemp("qs") / "pki", devices=2)


@pytest.fixture(scope="module")
def bad(qs: QuickstartResult, tmp_path_factory: pytest.TempPathFactory) -> dict[str, DeviceSpec]:
    """Devices the edge must refuse: expired (its own CA), foreign (another CA)."""
    folder = tmp_path_factory.mktemp("bad")
    now = datetime.now(UTC)
    expired = qs.intermediate.issue_device(
        "dev-expired", not_before=now - timedelta(days=10), not_after=now - timedelta(days=1)
    )
    foreign = CertificateAuthority.create_root("Stranger Root").issue_device("dev-foreign")
    specs = {}
    for name, issued in (("expired", expired), ("foreign", foreign)):
        (folder / f"{name}.pem").write_bytes(issued.fullchain_pem)
        (folder / f"{name}.key").write_bytes(issued.key_pem())
        specs[name] = DeviceSpec(
            id=f"dev-{name}",
            cert_path=str(folder / f"{name}.pem"),
            key_path=str(folder / f"{name}.key"),
        )
    return specs


@pytest.fixture(scope="module")
def edge(
    qs: QuickstartResult, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, int]]:
    folder = tmp_path_factory.mktemp("edge")
    cfg = EdgeConfig(
        state_dir=folder / "state",
        listeners=ListenersConfig(
            mqtt=HostPort(host="127.0.0.1", port=0),
            https=HostPort(host="127.0.0.1", port=0),
            admin=None,
        ),
        trust=TrustConfig(store=folder / "trust.db", watch_interval=None),
        pki_dir=qs.out,
    )
    with ServerThread(EdgeServer(cfg)) as thread:
        thread.start(timeout=30)
        yield thread.ports


def good(qs: QuickstartResult, n: int = 0) -> DeviceSpec:
    name = f"dev-{n:05d}"
    return DeviceSpec(
        id=name,
        cert_path=str(qs.devices_dir / f"{name}.pem"),
        key_path=str(qs.devices_dir / f"{name}.key"),
    )


def target(qs: QuickstartResult, url: str) -> Target:
    return Target(url=url, ca_pem=qs.root_cert.read_text())


def urls(ports: dict[str, int]) -> dict[str, str]:
    return {
        "mqtts": f"mqtts://localhost:{ports['mqtt']}",
        "https": f"https://localhost:{ports['https']}",
        "wss-mqtt": f"wss://localhost:{ports['https']}/mqtt",
        "wss-ws": f"wss://localhost:{ports['https']}/ws",
    }


def step(result: DeviceResult, name: str) -> Any:
    (found,) = [s for s in result.steps if s.name == name]
    return found


@pytest.mark.parametrize("kind", ["mqtts", "https", "wss-mqtt", "wss-ws"])
async def test_accepted_device_round_trip_on_every_protocol(
    qs: QuickstartResult, edge: dict[str, int], kind: str
) -> None:
    topic = f"devices/dev-00000/{kind}"  # the default policy's own subtree
    result = await run_device(
        good(qs),
        target(qs, urls(edge)[kind]),
        actions=[Subscribe(topic), Publish(topic, f"hello {kind}".encode(), 1), Receive(1)],
    )
    assert result.outcome == "connected", render(result)
    assert step(result, "edge_verdict").ok
    assert step(result, "message").detail["payload"] == f"hello {kind}"
    assert step(result, "client_hello").detail["sni"] == "localhost"


@pytest.mark.parametrize("kind", ["mqtts", "https", "wss-ws"])
@pytest.mark.parametrize(
    ("who", "alert"),
    [("foreign", "unknown_ca"), ("expired", "certificate_expired"), (None, "certificate_required")],
)
async def test_refusals_arrive_as_alerts_on_every_protocol(
    qs: QuickstartResult,
    bad: dict[str, DeviceSpec],
    edge: dict[str, int],
    kind: str,
    who: str | None,
    alert: str,
) -> None:
    spec = bad[who] if who else DeviceSpec(id="anonymous")
    result = await run_device(spec, target(qs, urls(edge)[kind]))
    assert (result.outcome, result.reason) == ("refused", alert), render(result)
    assert step(result, "edge_verdict").detail["alert"] == alert
    # TLS 1.3: the device's own handshake had finished before the refusal.
    assert step(result, "tls_handshake").ok


@pytest.mark.parametrize(
    ("kind", "action", "reason"),
    [
        ("mqtts", Subscribe("devices/dev-00001/#"), "suback-0x80"),
        ("https", Publish("devices/dev-00001/x", b"not mine"), "http-403"),
        ("wss-ws", Publish("devices/dev-00001/x", b"not mine"), "ws-error"),
    ],
)
async def test_policy_denials_are_named(
    qs: QuickstartResult, edge: dict[str, int], kind: str, action: Any, reason: str
) -> None:
    result = await run_device(good(qs), target(qs, urls(edge)[kind]), actions=[action])
    assert (result.outcome, result.reason) == ("refused", reason), render(result)
    assert step(result, "edge_verdict").ok  # TLS accepted; the policy refused the action


async def test_trace_decrypts_the_edges_certificate_request(
    qs: QuickstartResult, edge: dict[str, int], tmp_path: Path
) -> None:
    spec = DeviceSpec(
        id="dev-00000",
        cert_path=str(qs.devices_dir / "dev-00000.pem"),
        key_path=str(qs.devices_dir / "dev-00000.key"),
        chain_path=str(qs.devices_dir / "chain.pem"),
    )
    result = await run_device(
        spec,
        target(qs, urls(edge)["mqtts"]),
        inspect=True,
        keylog_filename=str(tmp_path / "keys"),
    )
    assert result.outcome == "connected"
    assert step(result, "certificate_request").detail["requested"] is True
    server_cert = step(result, "server_certificate").detail
    assert server_cert["chain_length"] == 2  # server + intermediate, as decrypted
    # With --chain the device sends leaf + intermediate.
    assert step(result, "client_certificate").detail["certificates"] == 2


async def test_held_device_on_the_edge(qs: QuickstartResult, edge: dict[str, int]) -> None:
    t = target(qs, urls(edge)["mqtts"])
    async with connected_device(good(qs, 1), t) as dev:
        assert (await dev.subscribe("devices/dev-00001/held", 1)).ok
        await dev.publish("devices/dev-00001/held", b"kept", qos=1)
        message = await dev.next_message()
    assert message.payload == b"kept"


async def test_held_refusal_keeps_the_alert(
    qs: QuickstartResult, bad: dict[str, DeviceSpec], edge: dict[str, int]
) -> None:
    with pytest.raises(AlertReceived) as info:
        async with connected_device(bad["foreign"], target(qs, urls(edge)["mqtts"])) as dev:
            await dev.publish("x", b"never")
    assert info.value.alert == "unknown_ca"


def test_cli_against_the_edge(
    qs: QuickstartResult, edge: dict[str, int], capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "device",
            "connect",
            "--url",
            urls(edge)["wss-mqtt"],
            "--cert",
            str(qs.devices_dir / "dev-00000.pem"),
            "--key",
            str(qs.devices_dir / "dev-00000.key"),
            "--ca",
            str(qs.root_cert),
            "--trace",
            "--json",
        ]
    )
    data = json.loads(capsys.readouterr().out)
    assert code == 0
    steps = {s["name"]: s for s in data["steps"]}
    # Without --id the device is named (and its MQTT client id set) after its CN,
    # which the edge's default policy requires.
    assert data["id"] == "dev-00000"
    assert steps["ws_accept"]["detail"]["subprotocol"] == "mqtt"
    assert steps["certificate_request"]["detail"]["requested"] is True
    # The edge sends no session tickets by default: the settle wait says so.
    assert steps["edge_after_handshake"]["detail"]["heard"] is False
