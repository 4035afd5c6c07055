"""The differential oracle: decodes MQTT 3.1.1 packets with ``mqtt-codec`` (PyPI).

Runs INSIDE ``.venv-oracle`` (``make oracle-venv``), as a subprocess of
``test_mqtt_codec_oracle.py``; it imports nothing from edgesim, so the answers are
mqtt-codec's alone. Reads JSON lines ``{"hex": "..."}`` on stdin, each holding at
most one packet, and writes one JSON line per input, in order:

- ``{"ok": {...}}``: the decoded packet, normalised (``type`` and its fields, bytes
  as hex) into the same shape the test builds from edgesim's packets;
- ``{"incomplete": true}``: the bytes end before the packet does;
- ``{"error": "ClassName", "detail": "..."}``: mqtt-codec refused it (any exception,
  so that a crash inside mqtt-codec is seen as a refusal with its class, not lost).
"""

from __future__ import annotations

import json
import sys
from typing import Any

from mqtt_codec import io as mqtt_io  # type: ignore[import-not-found]
from mqtt_codec import packet as mp

_BODIES: dict[Any, Any] = {
    mp.MqttControlPacketType.connect: mp.MqttConnect,
    mp.MqttControlPacketType.connack: mp.MqttConnack,
    mp.MqttControlPacketType.publish: mp.MqttPublish,
    mp.MqttControlPacketType.puback: mp.MqttPuback,
    mp.MqttControlPacketType.pubrec: mp.MqttPubrec,
    mp.MqttControlPacketType.pubrel: mp.MqttPubrel,
    mp.MqttControlPacketType.pubcomp: mp.MqttPubcomp,
    mp.MqttControlPacketType.subscribe: mp.MqttSubscribe,
    mp.MqttControlPacketType.suback: mp.MqttSuback,
    mp.MqttControlPacketType.unsubscribe: mp.MqttUnsubscribe,
    mp.MqttControlPacketType.unsuback: mp.MqttUnsuback,
    mp.MqttControlPacketType.pingreq: mp.MqttPingreq,
    mp.MqttControlPacketType.pingresp: mp.MqttPingresp,
    mp.MqttControlPacketType.disconnect: mp.MqttDisconnect,
}


def _text_hex(value: str | None) -> str | None:
    # mqtt-codec decodes the password as a UTF-8 string; edgesim keeps it as bytes.
    return None if value is None else value.encode("utf-8").hex()


def normalise(p: Any) -> dict[str, Any]:
    """The packet's type name and fields, in the shape the test compares."""
    kind = p.packet_type.name
    if kind == "connect":
        will = p.will
        return {
            "type": kind,
            "client_id": p.client_id,
            "clean_session": p.clean_session,
            "keepalive": p.keep_alive,
            "username": p.username,
            "password": _text_hex(p.password),
            "will": None
            if will is None
            else {
                "topic": will.topic,
                "payload": bytes(will.message).hex(),
                "qos": will.qos,
                "retain": will.retain,
            },
        }
    if kind == "connack":
        return {
            "type": kind,
            "session_present": p.session_present,
            "return_code": int(p.return_code),
        }
    if kind == "publish":
        return {
            "type": kind,
            "topic": p.topic,
            "payload": bytes(p.payload).hex(),
            "qos": p.qos,
            "retain": p.retain,
            "dup": p.dupe,
            "packet_id": p.packet_id if p.qos else None,
        }
    if kind in ("puback", "pubrec", "pubrel", "pubcomp", "unsuback"):
        return {"type": kind, "packet_id": p.packet_id}
    if kind == "subscribe":
        topics = [[t.name, t.max_qos] for t in p.topics]
        return {"type": kind, "packet_id": p.packet_id, "topics": topics}
    if kind == "suback":
        return {"type": kind, "packet_id": p.packet_id, "return_codes": [int(r) for r in p.results]}
    if kind == "unsubscribe":
        return {"type": kind, "packet_id": p.packet_id, "topics": list(p.topics)}
    return {"type": kind}


def decode(data: bytes) -> dict[str, Any]:
    """One input's answer (see the module docstring)."""
    try:
        header_size, header = mp.MqttFixedHeader.decode(mqtt_io.BytesReader(data))
    except mqtt_io.UnderflowDecodeError:
        return {"incomplete": True}
    except Exception as exc:
        return {"error": type(exc).__name__, "detail": str(exc)}
    if len(data) < header_size + header.remaining_len:
        return {"incomplete": True}
    # Exactly one packet's bytes: running out inside the body is a malformed packet.
    frame = data[: header_size + header.remaining_len]
    try:
        size, packet = _BODIES[header.packet_type].decode(mqtt_io.BytesReader(frame))
    except Exception as exc:
        return {"error": type(exc).__name__, "detail": str(exc)}
    if size != len(frame):
        return {"error": "TrailingBytes", "detail": f"consumed {size} of {len(frame)}"}
    return {"ok": normalise(packet)}


def main() -> None:
    """Answer every line of stdin."""
    out = sys.stdout
    for line in sys.stdin:
        if line.strip():
            data = bytes.fromhex(json.loads(line)["hex"])
            out.write(json.dumps(decode(data)) + "\n")
    out.flush()


if __name__ == "__main__":
    main()
