"""The MQTT package's error tree.

Everything :mod:`edge.mqtt` raises derives from :class:`MqttError`; foreign
exceptions met while decoding (``UnicodeDecodeError``, ``IndexError`` on short
input, ...) are translated here, at the codec boundary, so callers catch one root::

    MqttError                 root of edge.mqtt
    ├── MalformedPacket       the bytes do not parse as an MQTT control packet
    ├── ProtocolViolation     a well-formed packet the protocol forbids here
    │   └── PacketTooLarge    remaining length above the configured maximum
    └── MqttConfigError       an invalid [mqtt] setting (also a ValueError)

Both carry ``reason``: one line naming what is wrong and where (packet type and
field), suitable for a ``mqtt.disconnected`` event.
"""

from __future__ import annotations


class MqttError(Exception):
    """Root of every error raised by :mod:`edge.mqtt`."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class MalformedPacket(MqttError):
    """The bytes received do not form a valid MQTT 3.1/3.1.1 control packet."""


class ProtocolViolation(MqttError):
    """A packet that parses but breaks a rule of the protocol (or of this broker)."""


class PacketTooLarge(ProtocolViolation):
    """A packet's announced size exceeds the receiver's maximum; raised before buffering it."""

    def __init__(self, size: int, maximum: int) -> None:
        super().__init__(f"packet of {size} bytes exceeds the maximum of {maximum} bytes")
        self.size = size
        self.maximum = maximum


class MqttConfigError(MqttError, ValueError):
    """An invalid broker setting; ``reason`` names the key (``mqtt.max_inflight: ...``)."""
