"""The plugin's ``device(..., mqtt_version=5)``: option handling, Mosquitto, and the edge.

The plumbing is tested end to end against two MQTT 5 brokers: an independent one
(Mosquitto 2.0 over mTLS, trusting the plugin's own PKI, reached through a stand-in
for the ``edge`` argument) and the plugin's own edge, with and without a cloud
profile.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from testmodules import load_device_support

from devices.device import Publish, Target
from edge.cli import main
from edge.mqtt.properties import Properties
from testkit.pytest_plugin import (
    DeviceFactory,
    DeviceRefused,
    EdgeHandle,
    FleetRunner,
    Pki,
    UsageError,
)

support = load_device_support()
pytestmark = pytest.mark.timeout(60)

DEV = "dev-m5"
MINE = f"devices/{DEV}"


class BrokerEdge:
    """What ``device(edge=...)`` needs of an edge: a target per protocol."""

    def __init__(self, port: int, ca_pem: bytes) -> None:
        self.port = port
        self.ca_pem = ca_pem.decode("ascii")

    def target(self, protocol: str) -> Target:
        assert protocol == "mqtt"
        return Target(url=f"mqtts://127.0.0.1:{self.port}", ca_pem=self.ca_pem)


def _mosquitto(pki: Pki, folder: Path, **kw: Any) -> Any:
    if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
        pytest.skip("mosquitto is not installed")
    files = SimpleNamespace(
        ca_pem=pki.ca_chain_path,
        server=SimpleNamespace(cert=pki.server_cert_path, key=pki.server_key_path),
    )
    return support.mosquitto(files, folder, crl=False, **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def mosquitto_edge(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerEdge]:
    folder = tmp_path_factory.mktemp("plugin-mosquitto5")
    acl = folder / "acl"
    acl.write_text(f"user {DEV}\ntopic readwrite {MINE}/#\n")
    extra = ["use_identity_as_username true", f"acl_file {acl}", "max_inflight_messages 5"]
    with _mosquitto(pki, folder, extra=extra) as broker:
        yield BrokerEdge(broker.port, pki.server_ca_pem)


@pytest.fixture(scope="module")
def strict_mosquitto(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerEdge]:
    with _mosquitto(pki, tmp_path_factory.mktemp("plugin-strict5"), allow_anonymous=False) as b:
        yield BrokerEdge(b.port, pki.server_ca_pem)


def test_mqtt_version_option_is_checked(device: DeviceFactory) -> None:
    with pytest.raises(UsageError, match=r"choose 3\.1\.1 or 5"):
        device.run("dev-opt", mqtt_version="3.1")
    with pytest.raises(UsageError, match="MQTT 5 needs an MQTT protocol"):
        device.run("dev-opt", "https", mqtt_version=5)
    with pytest.raises(UsageError, match="MQTT 5 needs an MQTT protocol"):
        device("dev-opt", "wss-json", mqtt_version="5")


def test_reason_codes_and_properties_on_acks_and_messages(
    device: DeviceFactory, mosquitto_edge: BrokerEdge
) -> None:
    dev = device(DEV, edge=mosquitto_edge, mqtt_version=5)  # type: ignore[arg-type]
    assert dev.mqtt_version == "5"
    assert dev.connack is not None
    assert dev.connack.reason_code == 0
    assert dev.connack.properties is not None
    assert dev.connack.properties.receive_maximum == 5
    sub = dev.subscribe(f"{MINE}/#", qos=1)
    assert (sub.ok, sub.reason_code) == (True, 1)
    props = Properties(content_type="text/plain", user_properties=[("k", "v")])
    ack = dev.publish(f"{MINE}/t", "hello", qos=1, properties=props)
    assert (ack.ok, ack.reason_code) == (True, 0)
    message = dev.receive()
    assert message.payload == b"hello"
    assert message.properties is not None
    assert message.properties.content_type == "text/plain"
    assert message.properties.user_properties == [("k", "v")]
    denied = dev.publish("elsewhere/t", "no", qos=1)
    assert (denied.ok, denied.reason_code, denied.reason) == (False, 0x87, "puback-0x87")
    gone = dev.unsubscribe(f"{MINE}/#")
    assert (gone.ok, gone.reason_code) == (True, 0)
    dev.close()
    result = device.run(
        DEV,
        edge=mosquitto_edge,  # type: ignore[arg-type]
        mqtt_version=5,
        actions=[Publish("elsewhere/t", b"no", 1)],
    )
    assert (result.outcome, result.reason, result.protocol) == ("refused", "puback-0x87", "mqtt5")


def test_a_refused_connack_carries_its_code(
    device: DeviceFactory, strict_mosquitto: BrokerEdge
) -> None:
    with pytest.raises(DeviceRefused) as info:
        device(DEV, edge=strict_mosquitto, mqtt_version=5)  # type: ignore[arg-type]
    assert (info.value.reason, info.value.reason_code) == ("connack-0x87", 0x87)
    assert info.value.ack is not None
    assert info.value.ack.summary == "CONNACK 0x87 Not authorized"


def test_against_the_plugins_edge(device: DeviceFactory, edge: EdgeHandle) -> None:
    result = device.run("dev-edge5", mqtt_version=5)
    assert (result.outcome, result.protocol) == ("connected", "mqtt5"), result.reason
    dev = device("dev-edge5", mqtt_version=5)
    assert dev.connack is not None
    assert dev.connack.reason_code == 0
    ack = dev.publish("devices/dev-edge5/t", "x", qos=1)
    assert ack.reason_code in (0x00, 0x10)
    denied = dev.publish("devices/someone-else/t", "x", qos=1)
    assert (denied.ok, denied.reason_code) == (False, 0x87)
    assert denied.reason_string, "an MQTT 5 refusal says why"
    event = edge.wait_for_event(kind="policy.denied", timeout=5)
    assert event["topic"] == "devices/someone-else/t"


def test_profile_option_reaches_the_edge(device: DeviceFactory, edge_factory: Any) -> None:
    aws = edge_factory(profile="aws-iot-core")
    dev = device("dev-aws5", mqtt_version=5, edge=aws)
    assert dev.connack is not None
    assert dev.connack.properties is not None
    # AWS IoT Core has no QoS 2 and no subscription identifiers (edge.mqtt.profiles).
    assert dev.connack.properties.maximum_qos == 1
    assert dev.connack.properties.subscription_identifier_available == 0
    plain = device("dev-plain5", mqtt_version=5)
    assert plain.connack is not None
    assert plain.connack.properties is None or plain.connack.properties.maximum_qos is None
    with pytest.raises(UsageError, match="unknown profile 'nimbus'"):
        edge_factory(profile="nimbus")


def test_cli_against_the_plugins_edge(
    pki: Pki, edge: EdgeHandle, capsys: pytest.CaptureFixture[str]
) -> None:
    creds = pki.device("dev-cli5")
    argv = [
        "device",
        "connect",
        "--url",
        edge.mqtt_url,
        "--cert",
        str(creds.cert_path),
        "--key",
        str(creds.key_path),
        "--ca",
        str(pki.root_cert_path),
        "--mqtt-version",
        "5",
    ]
    if creds.chain_path is not None:
        argv += ["--chain", str(creds.chain_path)]
    code = main(argv)
    out = capsys.readouterr().out
    assert code == 0, out
    assert "CONNACK 0x00 Success" in out


def test_fleet_mqtt_version(fleet: FleetRunner, edge: EdgeHandle) -> None:
    with pytest.raises(UsageError, match=r"choose 3\.1\.1, 5 or mix"):
        fleet(devices=2, protocol="mqtt", mqtt_version="6")
    report = fleet(devices=4, protocol="mqtt", mqtt_version="mix", timeout=30)
    codes = report["reason_codes"]
    assert codes == {"connected": {"CONNACK 0 accepted": 2, "CONNACK 0x00 Success": 2}}
    assert report["protocols"]["mqtt5"]["connected"] == 2
