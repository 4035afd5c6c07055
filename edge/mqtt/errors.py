"""The MQTT package's error tree.

Everything :mod:`edge.mqtt` raises derives from :class:`MqttError`; foreign
exceptions met while decoding (``UnicodeDecodeError``, ``IndexError`` on short
input, ...) are translated here, at the codec boundary, so callers catch one root::

    MqttError                 root of edge.mqtt                              0x80
    ├── MalformedPacket       the bytes do not parse as an MQTT packet       0x81
    ├── ProtocolViolation     a well-formed packet the protocol forbids      0x82
    │   └── PacketTooLarge    remaining length above the configured maximum  0x95
    └── MqttConfigError       an invalid [mqtt] setting (also a ValueError)

Each carries ``reason``: one line naming what is wrong and where (packet type and
field), suitable for a ``mqtt.disconnected`` event; and ``reason_code``: the MQTT 5
reason code (:mod:`edge.mqtt.reasons`) a server puts in the DISCONNECT (or CONNACK,
for an error in CONNECT) it sends before closing. The code is the class's default
(right column) unless the raiser names a more precise one, e.g. 0x85 "Client
Identifier not valid" for a CONNECT whose client identifier is not valid UTF-8.
"""

from __future__ import annotations

from typing import ClassVar


class MqttError(Exception):
    """Root of every error raised by :mod:`edge.mqtt`."""

    #: The reason code when the raiser names none: 0x80 "Unspecified error".
    default_reason_code: ClassVar[int] = 0x80

    def __init__(self, reason: str, reason_code: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        #: The MQTT 5 reason code to send in DISCONNECT (or CONNACK) for this error.
        self.reason_code = self.default_reason_code if reason_code is None else reason_code


class MalformedPacket(MqttError):
    """The bytes received do not form a valid MQTT control packet (reason code 0x81)."""

    default_reason_code: ClassVar[int] = 0x81


class ProtocolViolation(MqttError):
    """A packet that parses but breaks a rule of the protocol or of this broker (0x82)."""

    default_reason_code: ClassVar[int] = 0x82


class PacketTooLarge(ProtocolViolation):
    """A packet's announced size exceeds the receiver's maximum; raised before buffering it.

    Its reason code is 0x95 "Packet too large".
    """

    default_reason_code: ClassVar[int] = 0x95

    def __init__(self, size: int, maximum: int) -> None:
        super().__init__(f"packet of {size} bytes exceeds the maximum of {maximum} bytes")
        self.size = size
        self.maximum = maximum


class MqttConfigError(MqttError, ValueError):
    """An invalid broker setting; ``reason`` names the key (``mqtt.max_inflight: ...``)."""


class MqttStoreError(MqttError):
    """The MQTT state file cannot be opened, locked or read (:mod:`edge.mqtt.sqlite_store`).

    Raised when the edge starts, never on a connection: the message names the file
    and what is wrong.
    """
