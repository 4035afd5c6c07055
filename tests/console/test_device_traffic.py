"""Messages in and out per device (the device list) and by protocol (/metrics), MQTT packets
by type, and connections labelled by the protocol they carry (WebSocket ones too)."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.timeout(90)


def _admin(edge: Any, path: str) -> str:
    request = urllib.request.Request(
        edge.admin_url + path, headers={"Authorization": f"Bearer {edge.admin_token}"}
    )
    with urllib.request.urlopen(request, timeout=10) as r:
        body: str = r.read().decode()
        return body


def _samples(edge: Any) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(_admin(edge, "/metrics")):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def _by(rows: dict[tuple[tuple[str, str], ...], float], **fixed: str) -> dict[str, float]:
    """The rows whose labels include ``fixed``, keyed by their one other label's value."""
    out: dict[str, float] = {}
    for labels, value in rows.items():
        named = dict(labels)
        if all(named.get(k) == v for k, v in fixed.items()):
            (other,) = [v for k, v in named.items() if k not in fixed]
            out[other] = value
    return out


def test_every_protocol_counts_its_devices_messages(edge: Any, device: Any) -> None:
    names = {"mqtt": "dev-m", "mqtt-ws": "dev-w", "ws": "dev-j"}
    kinds = {"mqtt": "mqtt", "mqtt-ws": "wss-mqtt", "ws": "wss-json"}
    devices = {p: device(names[p], protocol=kinds[p]) for p in names}
    for protocol, dev in devices.items():
        topic = f"devices/{names[protocol]}"
        assert dev.subscribe(f"{topic}/#").ok, protocol
        # Two messages in, the echo of each out (the device subscribed to its own topic).
        for n in range(2):
            assert dev.publish(f"{topic}/t{n}", b"x" * 10, qos=1).ok, protocol
            assert dev.receive(timeout=10).payload == b"x" * 10
    https = device("dev-h", protocol="https")
    assert https.publish("devices/dev-h/t", b"from http").ok
    listed = {d["protocol"]: d for d in json.loads(_admin(edge, "/v1/devices"))["devices"]}
    http_row = listed.pop("http", None)  # there while the device keeps its connection
    if http_row is not None:
        assert (http_row["messages_in"], http_row["messages_out"]) == (1, 0)
    assert set(listed) == {"mqtt", "mqtt-ws", "ws"}
    assert listed["mqtt-ws"]["mqtt_protocol_level"] == 4  # MQTT over WebSocket is MQTT
    for protocol, row in listed.items():
        assert (row["messages_in"], row["messages_out"]) == (2, 2), (protocol, row)
        assert row["subscriptions"] == {f"devices/{names[protocol]}/#": 0}, row
        assert row["bytes_in"] > 20, (protocol, row)
        assert row["bytes_out"] > 20, (protocol, row)

    samples = _samples(edge)
    open_now = _by(samples["edgesim_connections_open"], set="default")
    open_now.pop("http", None)
    assert open_now == {"mqtt": 1.0, "mqtt-ws": 1.0, "ws": 1.0}
    messages = samples["edgesim_device_messages_total"]
    assert _by(messages, direction="in") == {"mqtt": 2, "mqtt-ws": 2, "ws": 2, "http": 1}
    assert _by(messages, direction="out") == {"mqtt": 2, "mqtt-ws": 2, "ws": 2, "http": 0}
    # MQTT packets by type, both MQTT devices together (TCP and WebSocket).
    packets_in = _by(samples["edgesim_mqtt_packets_total"], direction="in")
    packets_out = _by(samples["edgesim_mqtt_packets_total"], direction="out")
    assert packets_in["connect"] == 2
    assert packets_in["subscribe"] == 2
    assert packets_in["publish"] == 4
    assert "puback" not in packets_in  # the echoes went out at the subscription's QoS 0
    assert packets_out["connack"] == 2
    assert packets_out["suback"] == 2
    assert packets_out["publish"] == 4
    assert packets_out["puback"] == 4  # the edge acknowledged the QoS 1 publishes

    # A closed connection's counts stay in the totals (they are counters).
    devices["mqtt"].close()
    edge.wait_for_event(kind="connection.closed", identity="default/dev-m")
    after = _samples(edge)
    assert _by(after["edgesim_device_messages_total"], direction="in")["mqtt"] == 2
    assert (
        _by(after["edgesim_bytes_total"], direction="in")["mqtt"]
        >= _by(samples["edgesim_bytes_total"], direction="in")["mqtt"]
    )
    assert "mqtt" not in _by(after["edgesim_connections_open"], set="default")
