"""The ``/ws`` JSON protocol: publish and subscribe over WebSocket text messages.

For devices and browser-based tools that do not speak MQTT. Each WebSocket text
message carries exactly one JSON object with an ``op``. Binary messages are not
part of the protocol.

Client to edge::

    {"op": "subscribe",   "topic": FILTER, "id": N}
    {"op": "unsubscribe", "topic": FILTER, "id": N}
    {"op": "publish", "topic": TOPIC, "payload": "text",
     "encoding": "utf-8" | "base64", "qos": 0 | 1, "retain": false, "id": N}

``id`` is any integer the client chooses; replies carry it back. ``encoding``
defaults to ``"utf-8"``, ``qos`` to 0, ``retain`` to false, ``payload`` to ``""``.
A publish may carry MQTT 5 metadata, which ``message`` ops (and MQTT 5 subscribers,
as properties) carry on: ``"content_type"``, ``"response_topic"``,
``"correlation_data"`` (base64), ``"user_properties"`` (a list of ``[key, value]``
pairs, order kept) and ``"message_expiry"`` (seconds; a ``message`` op carries what
remains, and an expired message is not delivered).
``FILTER`` may use the MQTT wildcards ``+`` and ``#``; ``TOPIC`` may not.

Edge to client::

    {"op": "ack", "id": N, "granted_qos": 0}        subscribe accepted
    {"op": "ack", "id": N}                          unsubscribe done, QoS 0 publish accepted
    {"op": "ack", "id": N, "delivered": n}          QoS 1 publish: routed to n subscribers
    {"op": "message", "topic": T, "payload": P, "encoding": "utf-8" | "base64",
     "qos": 0, "retain": bool}                      a message matching a subscription
    {"op": "error", "id": N, "reason": "..."}       the op with this id was refused

Payloads that are valid UTF-8 travel as text (``"encoding": "utf-8"``), others in
base64. Deliveries on ``/ws`` are at most once (``granted_qos`` is always 0: the
protocol has no delivery acknowledgement). A QoS 0 publish is acknowledged only
when it was refused (an ``error``) or when the client gave an ``id``.

An op that is well formed but cannot be done (policy denial, a bad topic, bad
base64, ``qos`` 2) gets an ``error`` reply and the connection stays open. A
message that is not the protocol closes the connection with a WebSocket close
code and a reason:

====  ======================================================================
1002  a WebSocket protocol error (bad framing, unmasked frame, ...)
1003  a binary message, or an unknown ``op``
1007  invalid UTF-8, not JSON, not a JSON object, ``op`` missing
1008  the client does not read its messages fast enough (queue overflow)
1009  a message larger than the edge's limit
====  ======================================================================

This module is sans-I/O: :func:`parse_op` turns text into an op,
the ``encode_*`` functions build the replies, and :class:`JsonWsSession` runs
one connection against the core (text in, texts out).

Errors::

    WsError                   root of edge.ws
    ├── WsCloseError          the connection must close with ``code`` and ``reason``
    └── OpError               one op is refused with ``reason``; the connection stays
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edge.core.router import Metadata

__all__ = [
    "OpError",
    "Publish",
    "Subscribe",
    "Unsubscribe",
    "WsCloseError",
    "WsError",
    "check_topic_filter",
    "check_topic_name",
    "decode_payload",
    "encode_ack",
    "encode_error",
    "encode_message",
    "encode_payload",
    "metadata_fields",
    "parse_op",
]

# RFC 6455 close codes used by the edge.
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_INVALID_PAYLOAD = 1007
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009

#: MQTT's limit on a topic's UTF-8 length, shared by every protocol of the edge.
MAX_TOPIC_BYTES = 65535


class WsError(Exception):
    """Root of the errors of :mod:`edge.ws`."""


class WsCloseError(WsError):
    """A message broke the protocol: close the connection with ``code`` and ``reason``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


class OpError(WsError):
    """One op cannot be done; reply with an ``error`` op and keep the connection."""

    def __init__(self, op_id: int | None, reason: str) -> None:
        super().__init__(reason)
        self.op_id = op_id
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Subscribe:
    """``{"op": "subscribe"}``: subscribe to a topic filter."""

    id: int | None
    topic: str


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    """``{"op": "unsubscribe"}``: drop a subscription."""

    id: int | None
    topic: str


@dataclass(frozen=True, slots=True)
class Publish:
    """``{"op": "publish"}``: publish a message (payload already decoded to bytes)."""

    id: int | None
    topic: str
    payload: bytes
    qos: int
    retain: bool
    meta: Metadata | None = None


ClientOp = Subscribe | Unsubscribe | Publish


def check_topic_name(topic: str, max_bytes: int = MAX_TOPIC_BYTES) -> str | None:
    """Return why ``topic`` cannot be published to, or ``None`` when it is valid.

    The MQTT rules: not empty, no wildcard (``+``, ``#``), no NUL character,
    valid UTF-8 (no lone surrogates), at most ``max_bytes`` bytes of UTF-8.
    """
    reason = _check_common(topic, max_bytes)
    if reason is not None:
        return reason
    if "+" in topic or "#" in topic:
        return "a topic to publish to must not contain the wildcards + or #"
    return None


def check_topic_filter(topic: str, max_bytes: int = MAX_TOPIC_BYTES) -> str | None:
    """Return why ``topic`` is not a valid subscription filter, or ``None``.

    ``+`` must fill a whole level; ``#`` must fill the last level.
    """
    reason = _check_common(topic, max_bytes)
    if reason is not None:
        return reason
    levels = topic.split("/")
    for index, level in enumerate(levels):
        if "+" in level and level != "+":
            return f"the wildcard + must fill a whole level (level {index + 1}: {level!r})"
        if "#" in level and (level != "#" or index != len(levels) - 1):
            return "the wildcard # must be the whole last level"
    return None


def _check_common(topic: str, max_bytes: int) -> str | None:
    if not topic:
        return "the topic is empty"
    if "\x00" in topic:
        return "the topic contains a NUL character"
    try:
        size = len(topic.encode("utf-8"))
    except UnicodeEncodeError:
        return "the topic is not valid UTF-8"
    if size > max_bytes:
        return f"the topic is {size} bytes of UTF-8, more than the limit of {max_bytes}"
    return None


def encode_payload(payload: bytes) -> tuple[str, str]:
    """Return ``(text, encoding)``: the payload as UTF-8 text when it is, else base64."""
    try:
        return payload.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(payload).decode("ascii"), "base64"


def decode_payload(text: str, encoding: str) -> bytes:
    """Turn a JSON payload back into bytes; raises ``ValueError`` naming what is wrong."""
    if encoding == "utf-8":
        try:
            return text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError("the payload is not valid UTF-8") from exc
    if encoding == "base64":
        try:
            return base64.b64decode(text.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError) as exc:
            raise ValueError("the payload is not valid base64") from exc
    raise ValueError(f"encoding must be 'utf-8' or 'base64', not {encoding!r}")


def parse_op(text: str, *, max_topic_bytes: int = MAX_TOPIC_BYTES) -> ClientOp:
    """Parse one client text message into an op.

    Raises :class:`WsCloseError` when the message is not the protocol (not JSON,
    not an object, no ``op``, unknown ``op``), :class:`OpError` when one field is
    wrong (the reply names the field).
    """
    try:
        obj = json.loads(text)
    except ValueError as exc:
        raise WsCloseError(CLOSE_INVALID_PAYLOAD, f"not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise WsCloseError(CLOSE_INVALID_PAYLOAD, "a message must be a JSON object")
    op = obj.get("op")
    if not isinstance(op, str):
        raise WsCloseError(CLOSE_INVALID_PAYLOAD, 'a message needs "op" (a string)')
    raw_id = obj.get("id")
    if raw_id is not None and (not isinstance(raw_id, int) or isinstance(raw_id, bool)):
        raise OpError(None, '"id" must be an integer')
    op_id: int | None = raw_id
    if op == "subscribe":
        topic = _field(obj, "topic", str, op_id)
        _raise_if(check_topic_filter(topic, max_topic_bytes), op_id)
        return Subscribe(op_id, topic)
    if op == "unsubscribe":
        topic = _field(obj, "topic", str, op_id)
        _raise_if(check_topic_filter(topic, max_topic_bytes), op_id)
        return Unsubscribe(op_id, topic)
    if op == "publish":
        topic = _field(obj, "topic", str, op_id)
        _raise_if(check_topic_name(topic, max_topic_bytes), op_id)
        text_payload = _field(obj, "payload", str, op_id, default="")
        encoding = _field(obj, "encoding", str, op_id, default="utf-8")
        qos = _field(obj, "qos", int, op_id, default=0)
        retain = _field(obj, "retain", bool, op_id, default=False)
        if qos not in (0, 1) or isinstance(qos, bool):
            raise OpError(op_id, f'"qos" must be 0 or 1, not {qos!r}')
        try:
            payload = decode_payload(text_payload, encoding)
        except ValueError as exc:
            raise OpError(op_id, str(exc)) from None
        return Publish(op_id, topic, payload, qos, retain, _metadata(obj, op_id))
    raise WsCloseError(CLOSE_UNSUPPORTED_DATA, f"unknown op {op[:40]!r}")


_META_FIELDS = (
    "content_type",
    "response_topic",
    "correlation_data",
    "user_properties",
    "message_expiry",
)


def _metadata(obj: dict[str, Any], op_id: int | None) -> Metadata | None:
    """The MQTT 5 metadata fields of a publish op, None when it has none."""
    if not any(name in obj for name in _META_FIELDS):
        return None
    meta = Metadata(
        content_type=_field(obj, "content_type", str, op_id, default=None),
        response_topic=_field(obj, "response_topic", str, op_id, default=None),
    )
    if meta.response_topic is not None:
        _raise_if(check_topic_name(meta.response_topic), op_id)
    correlation = _field(obj, "correlation_data", str, op_id, default=None)
    if correlation is not None:
        try:
            meta.correlation_data = base64.b64decode(correlation.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError):
            raise OpError(op_id, '"correlation_data" must be base64') from None
    pairs = _field(obj, "user_properties", list, op_id, default=[])
    for pair in pairs:
        if (
            not isinstance(pair, list)
            or len(pair) != 2
            or not all(isinstance(item, str) for item in pair)
        ):
            raise OpError(op_id, '"user_properties" must be a list of [key, value] strings')
        meta.user_properties.append((pair[0], pair[1]))
    expiry = _field(obj, "message_expiry", int, op_id, default=None)
    if expiry is not None:
        if not 0 < expiry < 1 << 32:
            raise OpError(op_id, '"message_expiry" must be 1 to 4294967295 seconds')
        meta.expires_at = time.monotonic() + expiry
    return meta


def _field(
    obj: dict[str, Any], name: str, kind: type[Any], op_id: int | None, **default: Any
) -> Any:
    if name not in obj:
        if "default" in default:
            return default["default"]
        raise OpError(op_id, f'"{name}" is required')
    value = obj[name]
    # bool is an int in Python; JSON true must not pass as qos 1.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise OpError(op_id, f'"{name}" must be {_KIND_NAMES.get(kind, kind.__name__)}')
    return value


_KIND_NAMES: dict[type[Any], str] = {
    str: "a string",
    int: "an integer",
    bool: "true or false",
    list: "a list",
}


def _raise_if(reason: str | None, op_id: int | None) -> None:
    if reason is not None:
        raise OpError(op_id, reason)


def _dumps(obj: dict[str, Any]) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def encode_ack(op_id: int | None, **fields: Any) -> str:
    """``{"op": "ack", "id": op_id, **fields}``."""
    return _dumps({"op": "ack", "id": op_id, **fields})


def encode_error(op_id: int | None, reason: str) -> str:
    """``{"op": "error", "id": op_id, "reason": reason}``."""
    return _dumps({"op": "error", "id": op_id, "reason": reason})


def metadata_fields(meta: Metadata, now: float) -> dict[str, Any]:
    """The JSON fields of ``meta`` (``/ws`` message ops and SSE events share them).

    ``now`` (monotonic seconds) turns the expiry into the seconds that remain.
    """
    fields: dict[str, Any] = {}
    if meta.content_type is not None:
        fields["content_type"] = meta.content_type
    if meta.response_topic is not None:
        fields["response_topic"] = meta.response_topic
    if meta.correlation_data is not None:
        fields["correlation_data"] = base64.b64encode(meta.correlation_data).decode("ascii")
    if meta.user_properties:
        fields["user_properties"] = [list(pair) for pair in meta.user_properties]
    if meta.expires_at is not None:
        fields["message_expiry"] = max(1, math.ceil(meta.expires_at - now))
    return fields


def encode_message(
    topic: str,
    payload: bytes,
    *,
    qos: int,
    retain: bool,
    meta: Metadata | None = None,
    now: float = 0.0,
) -> str:
    """``{"op": "message", ...}`` for one delivered message, with its metadata fields.

    ``now`` (monotonic seconds) turns the message's expiry into what remains.
    """
    text, encoding = encode_payload(payload)
    obj: dict[str, Any] = {
        "op": "message",
        "topic": topic,
        "payload": text,
        "encoding": encoding,
        "qos": qos,
        "retain": retain,
    }
    if meta is not None:
        obj.update(metadata_fields(meta, now))
    return _dumps(obj)


#: Signature of the callback a session calls when it has new texts to send.
Wakeup = Callable[[], None]
