"""MQTT 5.0 reason codes: the table of section 2.4, with names and the packets that carry each.

MQTT 5 answers nearly every packet with a one-byte reason code: below 0x80 is
success, 0x80 and above is failure. The same byte means different things in
different packets only for 0x00 ("Success", "Normal disconnection", "Granted QoS 0")
and, in SUBACK, for 0x01/0x02 (granted QoS). :func:`reason_name` turns a code into
the specification's words; :func:`allowed_in` says whether a packet may carry it
(the parser uses it to refuse an unknown code as a protocol error).

Packet types are the numbers of the fixed header (CONNACK = 2, ..., AUTH = 15), the
same as the constants of :mod:`edge.mqtt.codec`; they are spelled out here so this
module imports nothing of the package.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "ADMINISTRATIVE_ACTION",
    "BAD_AUTHENTICATION_METHOD",
    "BAD_USER_NAME_OR_PASSWORD",
    "BANNED",
    "CLIENT_IDENTIFIER_NOT_VALID",
    "CONNECTION_RATE_EXCEEDED",
    "CONTINUE_AUTHENTICATION",
    "DISCONNECT_WITH_WILL_MESSAGE",
    "GRANTED_QOS_0",
    "GRANTED_QOS_1",
    "GRANTED_QOS_2",
    "IMPLEMENTATION_SPECIFIC_ERROR",
    "KEEP_ALIVE_TIMEOUT",
    "MALFORMED_PACKET",
    "MAXIMUM_CONNECT_TIME",
    "MESSAGE_RATE_TOO_HIGH",
    "NORMAL_DISCONNECTION",
    "NOT_AUTHORIZED",
    "NO_MATCHING_SUBSCRIBERS",
    "NO_SUBSCRIPTION_EXISTED",
    "PACKET_IDENTIFIER_IN_USE",
    "PACKET_IDENTIFIER_NOT_FOUND",
    "PACKET_TOO_LARGE",
    "PAYLOAD_FORMAT_INVALID",
    "PROTOCOL_ERROR",
    "QOS_NOT_SUPPORTED",
    "QUOTA_EXCEEDED",
    "REASONS",
    "REAUTHENTICATE",
    "RECEIVE_MAXIMUM_EXCEEDED",
    "RETAIN_NOT_SUPPORTED",
    "SERVER_BUSY",
    "SERVER_MOVED",
    "SERVER_SHUTTING_DOWN",
    "SERVER_UNAVAILABLE",
    "SESSION_TAKEN_OVER",
    "SHARED_SUBSCRIPTIONS_NOT_SUPPORTED",
    "SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED",
    "SUCCESS",
    "TOPIC_ALIAS_INVALID",
    "TOPIC_FILTER_INVALID",
    "TOPIC_NAME_INVALID",
    "UNSPECIFIED_ERROR",
    "UNSUPPORTED_PROTOCOL_VERSION",
    "USE_ANOTHER_SERVER",
    "WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED",
    "Reason",
    "allowed_in",
    "is_error",
    "reason_name",
]

# Packet types (fixed header, high nibble), as in edge.mqtt.codec.
_CONNACK: Final = 2
_PUBACK: Final = 4
_PUBREC: Final = 5
_PUBREL: Final = 6
_PUBCOMP: Final = 7
_SUBACK: Final = 9
_UNSUBACK: Final = 11
_DISCONNECT: Final = 14
_AUTH: Final = 15

SUCCESS: Final = 0x00
NORMAL_DISCONNECTION: Final = 0x00
GRANTED_QOS_0: Final = 0x00
GRANTED_QOS_1: Final = 0x01
GRANTED_QOS_2: Final = 0x02
DISCONNECT_WITH_WILL_MESSAGE: Final = 0x04
NO_MATCHING_SUBSCRIBERS: Final = 0x10
NO_SUBSCRIPTION_EXISTED: Final = 0x11
CONTINUE_AUTHENTICATION: Final = 0x18
REAUTHENTICATE: Final = 0x19
UNSPECIFIED_ERROR: Final = 0x80
MALFORMED_PACKET: Final = 0x81
PROTOCOL_ERROR: Final = 0x82
IMPLEMENTATION_SPECIFIC_ERROR: Final = 0x83
UNSUPPORTED_PROTOCOL_VERSION: Final = 0x84
CLIENT_IDENTIFIER_NOT_VALID: Final = 0x85
BAD_USER_NAME_OR_PASSWORD: Final = 0x86
NOT_AUTHORIZED: Final = 0x87
SERVER_UNAVAILABLE: Final = 0x88
SERVER_BUSY: Final = 0x89
BANNED: Final = 0x8A
SERVER_SHUTTING_DOWN: Final = 0x8B
BAD_AUTHENTICATION_METHOD: Final = 0x8C
KEEP_ALIVE_TIMEOUT: Final = 0x8D
SESSION_TAKEN_OVER: Final = 0x8E
TOPIC_FILTER_INVALID: Final = 0x8F
TOPIC_NAME_INVALID: Final = 0x90
PACKET_IDENTIFIER_IN_USE: Final = 0x91
PACKET_IDENTIFIER_NOT_FOUND: Final = 0x92
RECEIVE_MAXIMUM_EXCEEDED: Final = 0x93
TOPIC_ALIAS_INVALID: Final = 0x94
PACKET_TOO_LARGE: Final = 0x95
MESSAGE_RATE_TOO_HIGH: Final = 0x96
QUOTA_EXCEEDED: Final = 0x97
ADMINISTRATIVE_ACTION: Final = 0x98
PAYLOAD_FORMAT_INVALID: Final = 0x99
RETAIN_NOT_SUPPORTED: Final = 0x9A
QOS_NOT_SUPPORTED: Final = 0x9B
USE_ANOTHER_SERVER: Final = 0x9C
SERVER_MOVED: Final = 0x9D
SHARED_SUBSCRIPTIONS_NOT_SUPPORTED: Final = 0x9E
CONNECTION_RATE_EXCEEDED: Final = 0x9F
MAXIMUM_CONNECT_TIME: Final = 0xA0
SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED: Final = 0xA1
WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED: Final = 0xA2


class Reason:
    """One row of the table: ``code``, ``name`` and the packet types that may carry it."""

    __slots__ = ("code", "name", "packets")

    def __init__(self, code: int, name: str, packets: frozenset[int]) -> None:
        self.code = code
        self.name = name
        self.packets = packets

    def __repr__(self) -> str:
        return f"Reason({self.code:#04x}, {self.name!r})"


def _row(code: int, name: str, *packets: int) -> Reason:
    return Reason(code, name, frozenset(packets))


_ACKS_WITH_ERRORS: Final = (_CONNACK, _PUBACK, _PUBREC, _SUBACK, _UNSUBACK, _DISCONNECT)

#: The table of MQTT 5.0 section 2.4, by code. 0x00-0x02 are listed under their
#: general names; :func:`reason_name` gives the packet-specific ones.
REASONS: Final[dict[int, Reason]] = {
    r.code: r
    for r in (
        _row(
            0x00,
            "Success",
            _CONNACK,
            _PUBACK,
            _PUBREC,
            _PUBREL,
            _PUBCOMP,
            _SUBACK,
            _UNSUBACK,
            _DISCONNECT,
            _AUTH,
        ),
        _row(0x01, "Granted QoS 1", _SUBACK),
        _row(0x02, "Granted QoS 2", _SUBACK),
        _row(0x04, "Disconnect with Will Message", _DISCONNECT),
        _row(0x10, "No matching subscribers", _PUBACK, _PUBREC),
        _row(0x11, "No subscription existed", _UNSUBACK),
        _row(0x18, "Continue authentication", _AUTH),
        _row(0x19, "Re-authenticate", _AUTH),
        _row(0x80, "Unspecified error", *_ACKS_WITH_ERRORS),
        _row(0x81, "Malformed Packet", _CONNACK, _DISCONNECT),
        _row(0x82, "Protocol Error", _CONNACK, _DISCONNECT),
        _row(0x83, "Implementation specific error", *_ACKS_WITH_ERRORS),
        _row(0x84, "Unsupported Protocol Version", _CONNACK),
        _row(0x85, "Client Identifier not valid", _CONNACK),
        _row(0x86, "Bad User Name or Password", _CONNACK),
        _row(0x87, "Not authorized", *_ACKS_WITH_ERRORS),
        _row(0x88, "Server unavailable", _CONNACK),
        _row(0x89, "Server busy", _CONNACK, _DISCONNECT),
        _row(0x8A, "Banned", _CONNACK),
        _row(0x8B, "Server shutting down", _DISCONNECT),
        _row(0x8C, "Bad authentication method", _CONNACK, _DISCONNECT),
        _row(0x8D, "Keep Alive timeout", _DISCONNECT),
        _row(0x8E, "Session taken over", _DISCONNECT),
        _row(0x8F, "Topic Filter invalid", _SUBACK, _UNSUBACK, _DISCONNECT),
        _row(0x90, "Topic Name invalid", _CONNACK, _PUBACK, _PUBREC, _DISCONNECT),
        _row(0x91, "Packet Identifier in use", _PUBACK, _PUBREC, _SUBACK, _UNSUBACK),
        _row(0x92, "Packet Identifier not found", _PUBREL, _PUBCOMP),
        _row(0x93, "Receive Maximum exceeded", _DISCONNECT),
        _row(0x94, "Topic Alias invalid", _DISCONNECT),
        _row(0x95, "Packet too large", _CONNACK, _DISCONNECT),
        _row(0x96, "Message rate too high", _DISCONNECT),
        _row(0x97, "Quota exceeded", _CONNACK, _PUBACK, _PUBREC, _SUBACK, _DISCONNECT),
        _row(0x98, "Administrative action", _DISCONNECT),
        _row(0x99, "Payload format invalid", _CONNACK, _PUBACK, _PUBREC, _DISCONNECT),
        _row(0x9A, "Retain not supported", _CONNACK, _DISCONNECT),
        _row(0x9B, "QoS not supported", _CONNACK, _DISCONNECT),
        _row(0x9C, "Use another server", _CONNACK, _DISCONNECT),
        _row(0x9D, "Server moved", _CONNACK, _DISCONNECT),
        _row(0x9E, "Shared Subscriptions not supported", _SUBACK, _DISCONNECT),
        _row(0x9F, "Connection rate exceeded", _CONNACK, _DISCONNECT),
        _row(0xA0, "Maximum connect time", _DISCONNECT),
        _row(0xA1, "Subscription Identifiers not supported", _SUBACK, _DISCONNECT),
        _row(0xA2, "Wildcard Subscriptions not supported", _SUBACK, _DISCONNECT),
    )
}

# 0x00 has a name of its own in DISCONNECT and SUBACK.
_ZERO_NAMES: Final = {_DISCONNECT: "Normal disconnection", _SUBACK: "Granted QoS 0"}


def reason_name(code: int, packet_type: int = 0) -> str:
    """The specification's name of ``code``, e.g. ``reason_name(0x87) == "Not authorized"``.

    ``packet_type`` (optional) picks the packet-specific name of 0x00
    (``"Normal disconnection"`` in DISCONNECT, ``"Granted QoS 0"`` in SUBACK). An
    unknown code gives ``"unknown reason code 0x.."`` rather than raising: the name
    is for logs and events, and a peer may send anything.
    """
    if code == 0:
        return _ZERO_NAMES.get(packet_type, "Success")
    reason = REASONS.get(code)
    if reason is None:
        return f"unknown reason code {code:#04x}"
    return reason.name


def allowed_in(code: int, packet_type: int) -> bool:
    """True if the table lets a packet of ``packet_type`` carry ``code``."""
    reason = REASONS.get(code)
    return reason is not None and packet_type in reason.packets


def is_error(code: int) -> bool:
    """True for the failure codes (0x80 and above)."""
    return code >= 0x80
