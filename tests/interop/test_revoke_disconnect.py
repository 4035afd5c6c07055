"""``disconnect_on_revoke`` over real loopback mutual TLS with a paho-mqtt MQTTv5 device.

A device stays connected; then the administrator revokes its certificate (a CRL)
or deletes its certificate set. With the set's option on, the edge ends the live
session with DISCONNECT 0x98 and a Reason String naming why; with it off (the
default), the device stays connected and can still publish.
"""

from __future__ import annotations

import ssl
import threading
from pathlib import Path
from typing import Any

import pytest

from testkit.pytest_plugin import EdgeHandle, Pki

pytestmark = [pytest.mark.interop, pytest.mark.timeout(60)]

WAIT = 10.0
#: PUBACK codes of an accepted publish: 0x00 Success, 0x10 No matching subscribers.
ACCEPTED = (0x00, 0x10)


class Device:
    """A paho-mqtt 2.x MQTTv5 device over mTLS, its callbacks landing in thread-safe state."""

    def __init__(self, edge: EdgeHandle, pki: Pki, device_id: str, folder: Path) -> None:
        mqtt = pytest.importorskip("paho.mqtt.client")
        creds = pki.device(device_id, fault="revoked")  # valid until the edge has the CRL
        self.serial = creds.serial
        certfile, cafile = folder / f"{device_id}.pem", folder / "server-ca.pem"
        certfile.write_bytes(creds.fullchain_pem)
        cafile.write_bytes(pki.server_ca_pem)
        self.topic = f"devices/{device_id}/state"
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=device_id, protocol=mqtt.MQTTv5
        )
        self.client.tls_set(
            ca_certs=str(cafile),
            certfile=str(certfile),
            keyfile=str(creds.key_path),
            tls_version=ssl.PROTOCOL_TLS_CLIENT,
        )
        # Stay down once disconnected, so what the edge sent is what the test sees.
        self.client.reconnect_delay_set(min_delay=60, max_delay=60)
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self.disconnect: tuple[int, Any] = (-1, None)
        self.acks: dict[int, int] = {}
        self.acked = threading.Condition()
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self.client.connect("127.0.0.1", edge.ports["mqtt"], keepalive=30)
        self.client.loop_start()
        assert self.connected.wait(WAIT), "the device did not connect"

    def _on_connect(self, c: Any, u: Any, flags: Any, reason: Any, props: Any = None) -> None:
        if int(reason.value) == 0:
            self.connected.set()

    def _on_disconnect(self, c: Any, u: Any, flags: Any, reason: Any, props: Any = None) -> None:
        self.disconnect = (int(reason.value), props)
        self.disconnected.set()

    def _on_publish(self, c: Any, u: Any, mid: int, reason: Any, props: Any = None) -> None:
        with self.acked:
            self.acks[mid] = int(reason.value)
            self.acked.notify_all()

    def publish_acked(self) -> int:
        """Publish at QoS 1 and return the PUBACK reason code (fails without a PUBACK)."""
        info = self.client.publish(self.topic, b"still here", qos=1)
        with self.acked:
            assert self.acked.wait_for(lambda: info.mid in self.acks, WAIT), "no PUBACK"
            return self.acks[info.mid]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def devices() -> Any:
    made: list[Device] = []
    yield made
    for dev in made:
        dev.close()


def test_a_crl_revoking_a_connected_device_ends_its_session_with_0x98(
    edge: EdgeHandle, pki: Pki, tmp_path: Path, devices: list[Device]
) -> None:
    edge.trust.set_options("default", disconnect_on_revoke=True)
    dev = Device(edge, pki, "dev-revoked-on", tmp_path)
    devices.append(dev)
    issuer = pki.intermediate.cert.subject.rfc4514_string()
    edge.trust.add_crl(pki.crl_pem())  # returns once the CRL is active on the edge
    assert dev.disconnected.wait(WAIT), "the edge did not end the revoked device's session"
    code, props = dev.disconnect
    assert code == 0x98
    assert props.ReasonString.startswith(
        f"certificate serial {dev.serial:x} was revoked by the CRL of {issuer} (CRL number"
    )
    assert props.ReasonString.endswith("in certificate set 'default'")
    event = edge.wait_for_event(
        kind="mqtt.disconnected", client_id="dev-revoked-on", reason_code=0x98, timeout=WAIT
    )
    assert event["reason"] == props.ReasonString


def test_with_the_option_off_a_revoked_device_stays_connected(
    edge: EdgeHandle, pki: Pki, tmp_path: Path, devices: list[Device]
) -> None:
    dev = Device(edge, pki, "dev-revoked-off", tmp_path)
    devices.append(dev)
    edge.trust.add_crl(pki.crl_pem())
    # The CRL is active; a PUBACK after it shows the session is still up.
    assert dev.publish_acked() in ACCEPTED
    assert not dev.disconnected.is_set()
    ended = edge.events.query(kind="mqtt.disconnected")
    assert [e for e in ended if e["client_id"] == "dev-revoked-off"] == []


def test_deleting_the_set_ends_the_sessions_it_authenticated(
    edge: EdgeHandle, pki: Pki, tmp_path: Path, devices: list[Device]
) -> None:
    edge.trust.set_options("default", disconnect_on_revoke=True)
    dev = Device(edge, pki, "dev-set-deleted", tmp_path)
    devices.append(dev)
    assert dev.publish_acked() in ACCEPTED
    edge.trust.delete("default")
    assert dev.disconnected.wait(WAIT), "the edge did not end the session of the deleted set"
    code, props = dev.disconnect
    assert (code, props.ReasonString) == (0x98, "certificate set 'default' was deleted")
    edge.wait_for_event(
        kind="mqtt.disconnected",
        client_id="dev-set-deleted",
        reason_code=0x98,
        reason="certificate set 'default' was deleted",
        timeout=WAIT,
    )
