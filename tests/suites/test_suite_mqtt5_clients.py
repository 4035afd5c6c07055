"""The MQTT 5 suite against clients nobody here wrote: paho-mqtt 2 (MQTTv5), gmqtt,
``mosquitto_pub``/``mosquitto_sub -V mqttv5``, and edgesim's own device.

Each test runs a faster copy of the ``mqtt5`` suite's cases (same behaviours and
verdicts, shorter windows and delays) with the client as ``--device-cmd`` and checks
what the client did, both sides: what it honours passes and what it ignores fails.
The README's MQTT 5 interop table is these results.
"""

from __future__ import annotations

import io
import shutil
import sys
from pathlib import Path

import pytest

from testkit.suites import RunOptions, SuiteReport, load_suite, parse_suite, run_suite_sync
from testkit.suites.model import Status, SuiteError

pytestmark = pytest.mark.interop

HERE = Path(__file__).parent
PAHO5 = (
    f"{sys.executable} {HERE / 'paho_device.py'} {{host}} {{port}} {{ca}} {{cert}} {{key}} --mqtt5"
)
GMQTT = f"{sys.executable} {HERE / 'gmqtt_device.py'} {{host}} {{port}} {{ca}} {{cert}} {{key}}"
MOSQ5 = "mosquitto_pub -V mqttv5 -h {host} -p {port} --cafile {ca} --cert {cert} --key {key} -t suite/t -q 1"
SUB5 = "mosquitto_sub -V mqttv5 -h {host} -p {port} --cafile {ca} --cert {cert} --key {key} -t suite/t -k 30"
EDGESIM5 = (
    f"{Path(sys.executable).with_name('edgesim')} device connect --url mqtts://{{host}}:{{port}} "
    "--ca {ca} --cert {cert} --key {key} --mqtt-version 5 --qos 1 --timeout 6"
)
BIG = "x" * 300

FAST_MQTT5 = """
[suite]
name = "fast-mqtt5"
description = "the mqtt5 suite's cases with short windows, for tests"
[[case]]
id = "max_packet_size"
title = "Maximum Packet Size 128"
expect = "max_packet"
behaviour = "max_packet_size"
params = { max_packet_size = 128, observe_s = 1.5 }
timeout_s = 15
[[case]]
id = "receive_maximum"
title = "Receive Maximum 2"
expect = "receive_maximum"
behaviour = "receive_maximum"
params = { receive_maximum = 2, withhold_s = 1.0, observe_s = 1.0 }
timeout_s = 15
[[case]]
id = "topic_alias_maximum"
title = "Topic Alias Maximum 2"
expect = "topic_alias"
behaviour = "topic_alias_maximum"
params = { topic_alias_maximum = 2, observe_s = 1.5 }
timeout_s = 15
[[case]]
id = "server_keep_alive"
title = "Server Keep Alive 2 s"
expect = "keepalive"
behaviour = "server_keep_alive"
params = { server_keep_alive = 2, tolerance_s = 0.5 }
timeout_s = 15
[[case]]
id = "assigned_client_id"
title = "Assigned Client Identifier"
expect = "assigned_id"
behaviour = "assigned_client_id"
params = { after_s = 0.5 }
timeout_s = 15
[[case]]
id = "disconnect_server_shutting_down"
title = "DISCONNECT 0x8B, backoff"
expect = "backoff"
behaviour = "server_disconnect"
params = { reason_code = 0x8B, after_s = 0.2 }
backoff = { attempts = 5, min_delay_s = 0.2 }
timeout_s = 20
[[case]]
id = "disconnect_session_taken_over"
title = "DISCONNECT 0x8E, calm"
expect = "calm"
behaviour = "server_disconnect"
params = { reason_code = 0x8E, after_s = 0.2, min_delay_s = 0.2, max_reconnects = 2, observe_s = 3.0 }
timeout_s = 15
[[case]]
id = "disconnect_server_moved"
title = "DISCONNECT 0x9D with a Server Reference, calm"
expect = "calm"
behaviour = "server_disconnect"
params = { reason_code = 0x9D, after_s = 0.2, server_reference = "127.0.0.1:{port}", min_delay_s = 0.2, max_reconnects = 1, observe_s = 3.0 }
timeout_s = 15
"""


def _needs(tool: str) -> None:
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed")


def _report(cmd: str, *cases: str, suite: str = FAST_MQTT5) -> SuiteReport:
    options = RunOptions(device_cmd=cmd, only=cases, console=io.StringIO())
    return run_suite_sync(parse_suite(suite, "<fast-mqtt5>"), options)


def _run(cmd: str, *cases: str) -> dict[str, tuple[str, str]]:
    return {r.case.id: (r.status, r.summary) for r in _report(cmd, *cases).results}


def test_fast_copy_has_the_builtin_cases_behaviours() -> None:
    # The copy must test what the shipped suite tests, only faster.
    fast = {c.id: (c.expect, c.behaviour) for c in parse_suite(FAST_MQTT5).cases}
    shipped = {c.id: (c.expect, c.behaviour) for c in load_suite("mqtt5").cases}
    assert fast.items() <= shipped.items()


@pytest.mark.timeout(120)
def test_paho_mqtt5_limits() -> None:
    # paho 2.2 applies Server Keep Alive, and nothing else the CONNACK advertises.
    bad = _run(
        PAHO5 + " --publish-qos1 --publish-size 300 --publish-count 4 --topic-alias 3 "
        "--client-id '' --min-delay 0.25 --keepalive 30",
        "max_packet_size",
        "receive_maximum",
        "topic_alias_maximum",
        "server_keep_alive",
        "assigned_client_id",
    )
    assert bad["max_packet_size"][0] == Status.FAIL
    assert "PUBLISH of 329 bytes" in bad["max_packet_size"][1]
    assert bad["receive_maximum"][0] == Status.FAIL
    assert bad["topic_alias_maximum"][0] == Status.FAIL
    assert bad["server_keep_alive"][0] == Status.PASS
    assert "the device asked for 30 s" in bad["server_keep_alive"][1]
    assert bad["assigned_client_id"][0] == Status.FAIL
    assert "empty client id again" in bad["assigned_client_id"][1]
    # The pass sides: what the application keeps within the limits goes through.
    good = _run(
        PAHO5 + " --publish-qos1 --publish-size 20 --publish-count 2 --topic-alias 1",
        "max_packet_size",
        "receive_maximum",
        "topic_alias_maximum",
    )
    assert {s for s, _ in good.values()} == {Status.PASS}, good
    assert "[1]" in good["topic_alias_maximum"][1]


@pytest.mark.timeout(120)
def test_paho_mqtt5_server_disconnects() -> None:
    # paho resets its reconnect delay on every accepted CONNACK: a server that sends
    # DISCONNECT after each one sees the minimum delay over and over.
    results = _run(
        PAHO5 + " --min-delay 0.25 --max-delay 30",
        "disconnect_server_shutting_down",
        "disconnect_session_taken_over",
        "disconnect_server_moved",
    )
    status, summary = results["disconnect_server_shutting_down"]
    assert status == Status.FAIL
    assert "do not grow exponentially" in summary
    for case in ("disconnect_session_taken_over", "disconnect_server_moved"):
        assert results[case][0] == Status.FAIL, results[case]
        assert "reconnect storm" in results[case][1]
    assert "came back to the same server" in results["disconnect_server_moved"][1]


@pytest.mark.timeout(120)
def test_gmqtt_limits_and_disconnects() -> None:
    bad = _run(
        GMQTT + " --publish-count 4 --publish-size 300 --topic-alias 3 --keepalive 30",
        "max_packet_size",
        "topic_alias_maximum",
        "server_keep_alive",
    )
    assert bad["max_packet_size"][0] == Status.FAIL
    assert bad["topic_alias_maximum"][0] == Status.FAIL
    assert bad["server_keep_alive"][0] == Status.PASS
    # gmqtt sizes its packet-id pool to Receive Maximum and raises on the publish
    # past it: the window holds, and the application loses that message.
    window = _report(GMQTT + " --publish-count 4", "receive_maximum").results[0]
    assert window.status == Status.PASS
    assert "OverflowError" in window.evidence["device_output_tail"]
    # Its constant reconnect_delay (6 s by default) neither grows nor jitters.
    storm = _run(
        GMQTT + " --reconnect-delay 0.3",
        "disconnect_server_shutting_down",
        "disconnect_session_taken_over",
    )
    assert storm["disconnect_server_shutting_down"][0] == Status.FAIL
    assert "do not grow exponentially" in storm["disconnect_server_shutting_down"][1]
    assert storm["disconnect_session_taken_over"][0] == Status.FAIL


@pytest.mark.timeout(120)
def test_mosquitto_clients_mqtt5() -> None:
    _needs("mosquitto_pub")
    # libmosquitto checks the server's Maximum Packet Size and holds one in-flight QoS 1
    # message at a time; mosquitto_pub is one-shot, so it never reconnects.
    held = _run(MOSQ5 + f" -m {BIG}", "max_packet_size")["max_packet_size"]
    assert held[0] == Status.PASS
    assert "it held back a message over Maximum Packet Size 128" in held[1]
    one = _run(MOSQ5 + " -m hi --repeat 5", "receive_maximum", "topic_alias_maximum")
    assert one["receive_maximum"][0] == Status.PASS
    assert "5 QoS 1/2 PUBLISHes, at most 1 unacknowledged" in one["receive_maximum"][1]
    assert one["topic_alias_maximum"][0] == Status.PASS
    assigned = _run(MOSQ5 + " -m hi", "assigned_client_id")["assigned_client_id"]
    assert assigned[0] == Status.FAIL
    assert "disconnected by itself first" in assigned[1]
    # mosquitto_sub applies Server Keep Alive, and exits on a server DISCONNECT.
    sub = _run(
        SUB5,
        "server_keep_alive",
        "disconnect_server_shutting_down",
        "disconnect_session_taken_over",
    )
    assert sub["server_keep_alive"][0] == Status.PASS
    assert sub["disconnect_server_shutting_down"][0] == Status.FAIL
    assert "the device exited" in sub["disconnect_server_shutting_down"][1]
    assert sub["disconnect_session_taken_over"][0] == Status.PASS
    # A 3.1.1 client is skipped on MQTT 5 cases, not failed.
    plain = _run(MOSQ5.replace("-V mqttv5 ", "") + " -m hi", "topic_alias_maximum")
    assert plain["topic_alias_maximum"][0] == Status.SKIP


@pytest.mark.timeout(120)
def test_edgesim_device_mqtt5() -> None:
    held = _run(EDGESIM5 + f" --publish t {BIG}", "max_packet_size")["max_packet_size"]
    assert held[0] == Status.PASS
    assert "exit code 1" in held[1]
    several = " ".join(f"--publish t m{i}" for i in range(4))
    ok = _run(EDGESIM5 + f" {several} --topic-aliases", "receive_maximum", "topic_alias_maximum")
    assert {s for s, _ in ok.values()} == {Status.PASS}, ok
    assert "[1]" in ok["topic_alias_maximum"][1]
    ka = _run(EDGESIM5 + " --subscribe t --receive 1", "server_keep_alive", "assigned_client_id")
    assert ka["server_keep_alive"][0] == Status.PASS
    assert ka["assigned_client_id"][0] == Status.SKIP


MQTT_ON_V5 = """
[suite]
name = "refused"
[[case]]
id = "connack_refused_backoff"
title = "CONNACK refused"
expect = "backoff"
behaviour = "connack_refused"
timeout_s = 15
backoff = { attempts = 4, min_delay_s = 0.2 }
"""


@pytest.mark.timeout(60)
def test_mqtt_behaviours_answer_an_mqtt5_device_in_mqtt5() -> None:
    report = _report(PAHO5 + " --min-delay 0.25", suite=MQTT_ON_V5)
    result = report.results[0]
    connacks = [
        p for c in result.evidence["connections"] for p in c["packets"] if p["packet"] == "CONNACK"
    ]
    assert connacks
    assert {p["return_code"] for p in connacks} == {0x87}
    # paho doubles after refused CONNACKs (no jitter), as under 3.1.1.
    assert "no jitter" in result.summary


@pytest.mark.timeout(30)
def test_protocol_option_skips_mqtt5_cases_for_a_311_device() -> None:
    # --protocol mqtt (3.1.1): the MQTT 5 cases are skipped without starting the device.
    options = RunOptions(device_cmd="false", protocol="mqtt", console=io.StringIO())
    report = run_suite_sync(load_suite("mqtt5"), options)
    assert {r.status for r in report.results} == {Status.SKIP}
    assert "mqtt5 case; the device speaks mqtt" in report.results[0].summary
    bad = RunOptions(device_cmd="false", protocol="mqtt3", console=io.StringIO())
    with pytest.raises(SuiteError, match="protocol 'mqtt3': choose one of mqtt, mqtt5, https"):
        run_suite_sync(load_suite("mqtt5"), bad)
