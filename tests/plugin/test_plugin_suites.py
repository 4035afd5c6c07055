"""Example test suites that use every fixture of the plugin, run in a fresh pytest process.

Each suite runs with ``pytester.runpytest_subprocess``: the plugin is found through
its ``pytest11`` entry point (no conftest, no ``-p``), under this project's strict
configuration (warnings are errors, importlib import mode, a timeout per test).
:data:`README_EXAMPLE` is the example the README shows, run as is.
"""

from __future__ import annotations

import pytest

README_EXAMPLE = '''\
"""An edge, devices and a fleet in a CI test module (edgesim's pytest plugin)."""

import pytest


def test_accepted_device_round_trip(device):
    dev = device("dev-1", protocol="mqtt")  # connected: TLS and CONNACK are done
    topic = "devices/dev-1/telemetry"  # the default policy's own subtree for dev-1
    assert dev.subscribe(topic, qos=1).ok
    assert dev.publish(topic, "21.5", qos=1).ok
    assert dev.receive(timeout=5).payload == b"21.5"


@pytest.mark.parametrize("protocol", ["https", "wss", "wss-json"])
def test_same_round_trip_over_every_protocol(device, protocol):
    dev = device("dev-1", protocol=protocol)
    assert dev.subscribe("devices/dev-1/#").ok
    assert dev.publish("devices/dev-1/state", b"on").ok
    message = dev.receive(timeout=5)
    assert (message.topic, message.payload) == ("devices/dev-1/state", b"on")


def test_expired_device_is_refused_and_the_edge_says_why(edge, device):
    result = device.run("dev-old", fault="expired")  # the whole handshake, step by step
    assert (result.outcome, result.reason) == ("refused", "certificate_expired")
    event = edge.wait_for_event(kind="tls.refused", alert="certificate_expired", timeout=5)
    assert event["certificate"]["subject"] == "CN=dev-old"
    assert event["set"] == "default"


def test_revoked_device_is_refused_once_the_edge_has_the_crl(edge, device, pki):
    pki.device("dev-lost", fault="revoked")
    edge.trust.add_crl(pki.crl_pem())  # returns once the edge uses it
    assert device.run("dev-lost", fault="revoked").reason == "certificate_revoked"


@pytest.mark.edgesim(policy="open")
def test_open_policy_lets_a_device_publish_anywhere(device):
    dev = device("dev-2", protocol="https")
    assert dev.publish("anywhere/at/all", b"ok").ok


async def test_async_tests_await_the_aio_view(edge, device):
    dev = await device.connect_async("dev-3", protocol="wss")
    assert (await dev.aio.subscribe("devices/dev-3/#")).ok
    await dev.aio.publish("devices/dev-3/state", b"on")
    assert (await dev.aio.receive(timeout=5)).payload == b"on"
    await edge.wait_for_event_async(kind="tls.accepted", identity="default/dev-3")


def test_small_fleet_with_faults(fleet):
    report = fleet(devices=30, protocol="mix", faults={"expired": 2, "wrong-ca": 1}, ramp=200)
    assert report["ok"], report["fidelity"]
    assert report["outcomes"]["refused"] == {"certificate_expired": 2, "unknown_ca": 1}
    assert report["outcomes"]["connected"] == {"connected": 27}
'''

MORE_FIXTURES = """\
import pytest

from devices.device import Publish, Receive, Subscribe
from testkit.pytest_plugin import DEFECTS, DeviceRefused


@pytest.mark.parametrize("fault", sorted(DEFECTS))
def test_every_defect_is_refused_with_its_alert(edge, device, pki, fault):
    if fault == "revoked":
        pki.device("dev-bad", fault="revoked")
        edge.trust.add_crl(pki.crl_pem())
    result = device.run("dev-bad", fault=fault)
    assert result.outcome == "refused", result.to_dict()
    assert result.reason == DEFECTS[fault] == pki.device("dev-bad", fault).expected
    assert result.as_expected
    event = edge.wait_for_event(kind="tls.refused", alert=DEFECTS[fault], timeout=5)
    assert event["outcome"] == "refused"


def test_a_refused_connection_raises_with_the_reason(device):
    with pytest.raises(DeviceRefused) as caught:
        device("dev-old", fault="expired", protocol="wss")
    assert caught.value.reason == "certificate_expired"


def test_run_with_actions_traces_every_step(device):
    topic = "devices/dev-4/t"
    result = device.run(
        "dev-4", protocol="https", actions=[Subscribe(topic), Publish(topic, b"x"), Receive(1)]
    )
    assert result.outcome == "connected", result.to_dict()
    names = [step.name for step in result.steps]
    assert names[0] == "tcp_connect"
    assert {"tls_handshake", "http_status", "edge_verdict", "message"} <= set(names)
    assert result.messages_received == 1


def test_default_policy_denies_other_subtrees_on_a_second_edge(edge_factory, device):
    open_edge = edge_factory(policy="open")
    strict_edge = edge_factory()
    assert device("dev-5", edge=open_edge).publish("elsewhere/x", b"1").ok
    # MQTT 3.1.1 has no negative PUBACK: HTTP shows the denial as a 403.
    denied = device("dev-5", protocol="https", edge=strict_edge).publish("elsewhere/x", b"1")
    assert not denied.ok
    event = strict_edge.wait_for_event(kind="policy.denied", timeout=5)
    assert event["outcome"] == "denied"
    assert open_edge.ports["mqtt"] != strict_edge.ports["mqtt"]


def test_cross_protocol_delivery(device):
    listener = device("dev-6", protocol="wss-json")
    assert listener.subscribe("devices/dev-6/#").ok
    sender = device("dev-6", protocol="mqtt")
    assert sender.publish("devices/dev-6/temp", b"20", qos=1).ok
    assert listener.receive(timeout=5).payload == b"20"


def test_trust_changes_apply_before_the_call_returns(edge, device, pki):
    stranger = pki.device("dev-7", fault="wrong-ca")
    edge.trust.upload("strangers", pki.rogue_root.cert_pem)
    edge.trust.bind("strangers", "*")
    assert edge.trust.bindings() == {"*": "strangers"}
    assert device.run(stranger).outcome == "connected"
    assert device.run("dev-7").reason == "unknown_ca"
    first = edge.events.query(kind="trust.bound")
    assert first[-1]["set"] == "strangers"


def test_fleet_of_one_protocol_with_revoked_devices(edge, fleet):
    report = fleet(devices=12, protocol="wss", faults={"revoked": 2, "no-client-auth": 1})
    assert report["ok"], report["fidelity"]
    assert report["fidelity"]["revoked"]["got"] == {"certificate_revoked": 2}
    assert report["fidelity"]["wrong-eku"]["got"] == {"unsupported_certificate": 1}
    assert set(report["protocols"]) == {"wss"}
    assert edge.events.query(kind="trust.crl_added")
"""

TEARDOWN = """\
import threading

seen = {}


def test_fails_while_an_edge_and_a_device_run(edge, device):
    dev = device("dev-1")
    seen["edge"] = edge
    seen["threads"] = {t.name for t in threading.enumerate()}
    assert dev.publish("devices/dev-1/x", b"1").ok
    assert False, "this test fails on purpose"


def test_the_edge_was_stopped_anyway():
    assert {"edgesim-edge", "edgesim-devices"} <= seen["threads"]
    assert seen["edge"].stopped
    alive = {t.name for t in threading.enumerate()}
    assert not alive & {"edgesim-edge", "edgesim-devices"}, alive
"""


@pytest.mark.timeout(60)
def test_readme_example_passes(inner: pytest.Pytester) -> None:
    inner.makepyfile(test_readme_example=README_EXAMPLE)
    result = inner.runpytest_subprocess("-q")
    result.assert_outcomes(passed=9)


@pytest.mark.timeout(60)
def test_every_fixture_in_one_suite(inner: pytest.Pytester) -> None:
    inner.makepyfile(test_more=MORE_FIXTURES)
    result = inner.runpytest_subprocess("-q")
    result.assert_outcomes(passed=11)


@pytest.mark.timeout(60)
def test_edge_is_stopped_when_a_test_fails(inner: pytest.Pytester) -> None:
    inner.makepyfile(test_teardown=TEARDOWN)
    result = inner.runpytest_subprocess("-q")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*this test fails on purpose*"])
