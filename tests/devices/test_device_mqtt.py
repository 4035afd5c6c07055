"""One device against a real Mosquitto 2.0 with ``require_certificate true``, over loopback.

Mosquitto is an independent mTLS MQTT server: it sends real TLS alerts, so each
refusal kind has a trace to check. TLS 1.3 is the default; ``tls_max="1.2"`` makes the
device offer only TLS 1.2 to see the cleartext handshake.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from testmodules import load_device_support

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
from devices.protocols import ProtocolError
from devices.tlsclient import AlertReceived, ServerCertificateRejected
from devices.trace import render
from edge.cli import main

support = load_device_support()
pytestmark = [pytest.mark.interop, pytest.mark.timeout(30)]

#: Mosquitto sends session tickets at once; waiting for them (or the alert) before
#: the first request keeps a refusal's alert from being lost to a TCP reset.
SETTLE = 5.0


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return support.make_pki(tmp_path_factory.mktemp("pki"), datetime.now(UTC))


def _need_mosquitto() -> None:
    if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
        pytest.skip("mosquitto is not installed")


@pytest.fixture(scope="module")
def broker(pki: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    _need_mosquitto()
    with support.mosquitto(pki, tmp_path_factory.mktemp("mosquitto")) as running:
        yield running


@pytest.fixture(scope="module")
def strict_broker(pki: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A Mosquitto that accepts the certificate but no anonymous MQTT session."""
    _need_mosquitto()
    folder = tmp_path_factory.mktemp("mosquitto-strict")
    with support.mosquitto(pki, folder, allow_anonymous=False) as running:
        yield running


@pytest.fixture(autouse=True)
def _no_env_keylog(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SSLKEYLOGFILE", raising=False)


def spec_for(files: Any, device_id: str = "device-1") -> DeviceSpec:
    if files is None:
        return DeviceSpec(id=device_id)
    return DeviceSpec(id=device_id, cert_path=str(files.cert), key_path=str(files.key))


def target(pki: Any, port: int, **kw: Any) -> Target:
    return Target(url=f"mqtts://127.0.0.1:{port}", ca_pem=pki.ca_pem.read_text(), **kw)


def names(result: DeviceResult) -> list[str]:
    return [s.name for s in result.steps]


def step(result: DeviceResult, name: str) -> Any:
    (found,) = [s for s in result.steps if s.name == name]
    return found


# --------------------------------------------------------------------------- accepted


async def test_accepted_device_trace_tls13(pki: Any, broker: Any, tmp_path: Path) -> None:
    result = await run_device(
        spec_for(pki.device),
        target(pki, broker.port),
        actions=[Subscribe("t/#", 1), Publish("t/a", b"hello", 1), Receive(1)],
        inspect=True,
        keylog_filename=str(tmp_path / "keys"),
        settle=SETTLE,
    )
    assert (result.outcome, result.reason) == ("connected", "")
    assert names(result) == [
        "tcp_connect",
        "client_hello",
        "server_hello",
        "server_certificate",
        "certificate_request",
        "client_certificate",
        "tls_handshake",
        "edge_after_handshake",
        "mqtt_connack",
        "edge_verdict",
        "subscribe",
        "publish",
        "message",
    ]
    assert all(s.ok for s in result.steps)
    assert step(result, "server_hello").detail["version"] == "TLSv1.3"
    assert step(result, "server_certificate").detail["subject"] == "CN=127.0.0.1"
    assert step(result, "certificate_request").detail["requested"] is True
    assert step(result, "client_certificate").detail["subject"] == "CN=device-1"
    assert step(result, "mqtt_connack").detail["return_code"] == 0
    assert step(result, "subscribe").detail["return_codes"] == [1]
    assert step(result, "publish").detail["summary"] == "PUBACK"
    assert step(result, "message").detail["payload"] == "hello"
    assert (result.messages_sent, result.messages_received) == (1, 1)
    assert len(result.delivery_latencies) == 1
    # Times are relative to the start and steps follow one another.
    starts = [s.t_start for s in result.steps]
    assert starts[0] >= 0
    assert step(result, "mqtt_connack").t_start >= step(result, "tls_handshake").t_start
    text = render(result)
    assert "✓ MQTT CONNACK" in text
    assert "result: connected (sent 1, received 1)" in text


async def test_accepted_device_trace_tls12_is_read_in_cleartext(pki: Any, broker: Any) -> None:
    result = await run_device(
        spec_for(pki.device),
        target(pki, broker.port, tls_max="1.2"),
        actions=[Subscribe("q2/#", 2), Publish("q2/x", b"exactly once", 2), Receive(1)],
    )
    assert result.outcome == "connected"
    assert step(result, "server_hello").detail["version"] == "TLSv1.2"
    assert step(result, "certificate_request").detail == {
        "requested": True,
        "how": "cleartext",
        "ca_names": 0,
    }
    assert step(result, "client_certificate").detail["certificates"] >= 1
    assert "edge_after_handshake" not in names(result)  # only TLS 1.3 needs it
    assert step(result, "publish").detail["summary"] == "PUBREC, PUBCOMP"
    assert step(result, "message").detail["qos"] == 2


async def test_start_in_the_past_counts_as_time_spent(pki: Any, broker: Any) -> None:
    ticks = iter(float(i) for i in range(1000))
    result = await run_device(
        spec_for(pki.device), target(pki, broker.port), clock=lambda: next(ticks), start=-5.0
    )
    assert result.outcome == "connected"
    # A device scheduled 5 s before it ran shows those 5 s in its first step.
    assert result.steps[0].t_start >= 5.0


# --------------------------------------------------------------------------- refused by the edge


@pytest.mark.parametrize(
    ("device", "tls_max", "alert"),
    [
        ("foreign", None, "unknown_ca"),
        ("expired", None, "certificate_expired"),
        ("revoked", None, "certificate_revoked"),
        (None, None, "certificate_required"),
        ("foreign", "1.2", "unknown_ca"),
        ("expired", "1.2", "certificate_expired"),
        (None, "1.2", "handshake_failure"),
    ],
)
async def test_refused_device_names_the_alert(
    pki: Any, broker: Any, device: str | None, tls_max: str | None, alert: str
) -> None:
    files = getattr(pki, device) if device else None
    result = await run_device(
        spec_for(files), target(pki, broker.port, tls_max=tls_max), settle=SETTLE
    )
    assert (result.outcome, result.reason) == ("refused", alert), render(result)
    verdict = step(result, "edge_verdict")
    assert not verdict.ok
    assert verdict.detail["alert"] == alert
    # The device had accepted the server before the edge refused the device.
    assert step(result, "server_certificate").ok
    if tls_max is None:
        # TLS 1.3: the device's handshake finished first, the refusal came after.
        assert step(result, "tls_handshake").ok
        assert step(result, "tls_handshake").t_start <= verdict.t_start
    else:
        assert "tls_handshake" not in names(result)
    assert "hint: " in render(result)


async def test_refused_mqtt_session_is_connack_5(pki: Any, strict_broker: Any) -> None:
    result = await run_device(spec_for(pki.device), target(pki, strict_broker.port))
    assert (result.outcome, result.reason) == ("refused", "connack-5")
    connack = step(result, "mqtt_connack")
    assert not connack.ok
    assert connack.detail["meaning"] == "not authorized"
    # TLS itself was accepted: the edge answered at the protocol level.
    assert step(result, "edge_verdict").ok


# --------------------------------------------------------------------------- refused by the device


async def test_untrusted_server_is_the_devices_own_verdict(pki: Any, broker: Any) -> None:
    t = Target(url=f"mqtts://127.0.0.1:{broker.port}", ca_pem=pki.other_ca_pem.read_text())
    result = await run_device(spec_for(pki.device), t)
    assert (result.outcome, result.reason) == ("refused", "server-cert-untrusted")
    cert_step = step(result, "server_certificate")
    assert not cert_step.ok
    assert "self-signed" in cert_step.detail["verdict"]
    assert "edge_verdict" not in names(result)


async def test_hostname_mismatch_via_sni(pki: Any, broker: Any, tmp_path: Path) -> None:
    result = await run_device(
        spec_for(pki.device),
        target(pki, broker.port, sni="wrong.example"),
        inspect=True,
        keylog_filename=str(tmp_path / "keys"),
    )
    assert (result.outcome, result.reason) == ("refused", "server-cert-hostname-mismatch")
    assert step(result, "client_hello").detail["sni"] == "wrong.example"
    cert_step = step(result, "server_certificate")
    assert "wrong.example" in cert_step.detail["verdict"]
    # Decrypted from the key log even though the handshake failed.
    assert cert_step.detail["subject"] == "CN=127.0.0.1"


# --------------------------------------------------------------------------- errors


async def test_nothing_listening_is_connection_refused(pki: Any) -> None:
    port = support.free_port()
    result = await run_device(spec_for(pki.device), target(pki, port))
    assert (result.outcome, result.reason) == ("error", "connection-refused")
    (tcp,) = result.steps
    assert (tcp.name, tcp.ok) == ("tcp_connect", False)
    assert "refused" in tcp.detail["error"]


async def test_silent_server_is_a_timeout(pki: Any) -> None:
    accepted: list[asyncio.StreamWriter] = []

    async def silent(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # never answers the ClientHello

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        result = await run_device(spec_for(pki.device), target(pki, port), timeout=0.5)
    finally:
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()
    assert (result.outcome, result.reason) == ("error", "timeout")
    assert [s.name for s in result.steps] == ["tcp_connect", "client_hello", "timeout"]
    assert "no answer within 0.5 s" in result.message


async def test_bad_url_is_a_clear_error(pki: Any) -> None:
    t = Target(url="mqtt://127.0.0.1:1883", ca_pem=pki.ca_pem.read_text())
    result = await run_device(spec_for(pki.device), t)
    assert (result.outcome, result.reason) == ("error", "bad-input")
    assert "scheme must be mqtts, https or wss" in result.message


async def test_missing_certificate_file_is_named(pki: Any, broker: Any, tmp_path: Path) -> None:
    spec = DeviceSpec(id="d", cert_path=str(tmp_path / "nope.pem"))
    result = await run_device(spec, target(pki, broker.port))
    assert result.reason == "bad-input"
    assert "nope.pem" in result.message


# --------------------------------------------------------------------------- held mode


async def test_held_devices_exchange_messages(pki: Any, broker: Any) -> None:
    t = target(pki, broker.port)
    a = DeviceSpec(id="held-a", cert_path=str(pki.device.cert), key_path=str(pki.device.key))
    b = DeviceSpec(id="held-b", cert_path=str(pki.device.cert), key_path=str(pki.device.key))
    async with connected_device(a, t) as dev_a, connected_device(b, t) as dev_b:
        ack = await dev_b.subscribe("held/#", 1)
        assert ack.ok
        for i in range(3):
            await dev_a.publish("held/x", f"m{i}".encode(), qos=1)
        got = [(await dev_b.next_message()).payload for _ in range(3)]
    assert got == [b"m0", b"m1", b"m2"]
    assert dev_a.messages_sent == 3


async def test_held_device_refusal_raises_with_reason(pki: Any, broker: Any) -> None:
    with pytest.raises(AlertReceived) as info:
        async with connected_device(spec_for(pki.foreign), target(pki, broker.port), settle=SETTLE):
            pass
    assert info.value.reason == "unknown_ca"
    with pytest.raises(ServerCertificateRejected):
        async with connected_device(
            spec_for(pki.device), target(pki, broker.port, sni="wrong.example")
        ):
            pass


async def test_held_device_connack_refusal(pki: Any, strict_broker: Any) -> None:
    with pytest.raises(ProtocolError) as info:
        async with connected_device(spec_for(pki.device), target(pki, strict_broker.port)):
            pass
    assert info.value.reason == "connack-5"


# --------------------------------------------------------------------------- CLI


def _cli_connect(broker: Any, *argv: str) -> int:
    """``edgesim device connect --url mqtts://<broker> ARGV...``; returns the exit code."""
    return main(["device", "connect", "--url", f"mqtts://127.0.0.1:{broker.port}", *argv])


def _credentials(pki: Any, files: Any) -> list[str]:
    """The ``--cert``, ``--key`` and ``--ca`` options for ``files`` (a device's pair)."""
    return ["--cert", str(files.cert), "--key", str(files.key), "--ca", str(pki.ca_pem)]


def test_cli_connect_json(pki: Any, broker: Any, capsys: pytest.CaptureFixture[str]) -> None:
    code = _cli_connect(
        broker,
        *_credentials(pki, pki.device),
        "--subscribe",
        "cli/#",
        "--publish",
        "cli/t",
        "from the cli",
        "--qos",
        "1",
        "--trace",
        "--json",
    )
    data = json.loads(capsys.readouterr().out)
    assert code == 0
    assert data["outcome"] == "connected"
    steps = {s["name"]: s for s in data["steps"]}
    assert steps["certificate_request"]["detail"]["requested"] is True
    assert steps["message"]["detail"]["payload"] == "from the cli"
    assert data["messages_received"] == 1


def test_cli_tls12_shows_the_cleartext_handshake(
    pki: Any, broker: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    code = _cli_connect(broker, *_credentials(pki, pki.device), "--tls-max", "1.2")
    out = capsys.readouterr().out
    assert code == 0
    assert "TLSv1.2" in out
    assert "✓ certificate requested        yes (cleartext)" in out
    assert "result: connected" in out


def test_cli_refused_prints_alert_and_hint(
    pki: Any, broker: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    code = _cli_connect(broker, *_credentials(pki, pki.foreign))
    out = capsys.readouterr().out
    assert code == 1
    assert "✗ edge verdict" in out
    assert "refused: TLS alert unknown_ca" in out
    assert "hint: the edge does not trust the CA" in out


def test_cli_json_refusal_has_reason(
    pki: Any, broker: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    code = _cli_connect(broker, "--ca", str(pki.ca_pem), "--json")
    data = json.loads(capsys.readouterr().out)
    assert code == 1
    assert (data["outcome"], data["reason"]) == ("refused", "certificate_required")
    assert data["hint"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--url", "mqtts://127.0.0.1:1", "--ca", "/no/such/ca.pem"], "--ca /no/such/ca.pem"),
        (["--url", "ftp://x", "--ca", "{ca}"], "--url"),
        (["--url", "mqtts://127.0.0.1:1", "--ca", "{ca}", "--cert", "/no/c.pem"], "--cert"),
        (["--url", "mqtts://127.0.0.1:1", "--ca", "{ca}", "--key", "{ca}"], "--key"),
        (["--url", "mqtts://127.0.0.1:1", "--ca", "{key}"], "no PEM certificate"),
    ],
)
def test_cli_usage_errors_name_the_culprit(
    pki: Any, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [a.format(ca=pki.ca_pem, key=pki.device.key) for a in argv]
    assert main(["device", "connect", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err
