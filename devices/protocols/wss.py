"""WebSocket client for a device: ``/mqtt`` (MQTT over WebSocket) and ``/ws`` (JSON).

The framing is the ``websockets`` library's sans-I/O :class:`ClientProtocol`, driven
over the device's own TLS stream, so the device still sees every TLS step. Two
endpoints:

- ``/mqtt`` with subprotocol ``mqtt``: MQTT 3.1.1 packets in binary frames, run by
  :class:`~devices.protocols.mqtt.MqttSession` over a :class:`WsChannel`;
- ``/ws``: the edge's JSON protocol (:mod:`edge.ws.jsonproto`)::

      -> {"op": "subscribe", "topic": F, "id": N}
      -> {"op": "publish", "topic": T, "payload": "...", "encoding": "utf-8"|"base64",
          "qos": 0|1, "retain": bool, "id": N}
      <- {"op": "ack", "id": N, ...}   {"op": "error", "id": N, "reason": "..."}
      <- {"op": "message", "topic": T, "payload": P, "encoding": ..., "retain": bool}

The acknowledgement of :meth:`WssSession.open` is the ``101 Switching Protocols``
answer (plus CONNACK on ``/mqtt``). Errors: a refused upgrade is an ``Ack`` with
reason ``ws-rejected-<status>``; a close frame from the edge ends the session with
:class:`~devices.protocols.ProtocolError` reason ``ws-closed-<code>``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
from collections.abc import Callable
from typing import Any

from websockets.client import ClientProtocol
from websockets.exceptions import InvalidState, InvalidStatus
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.typing import Subprotocol
from websockets.uri import parse_uri

from devices.protocols import Ack, Inbox, Message, ProtocolError
from devices.protocols.mqtt import MqttOptions, MqttSession
from devices.tlsclient import DeviceError, TlsFailure, TlsStream
from edge.mqtt.properties import Properties

__all__ = ["WsChannel", "WssSession"]


class WsChannel:
    """Binary WebSocket messages as a byte channel (what MQTT over WebSocket needs)."""

    def __init__(self, session: WssSession) -> None:
        self._session = session

    def write(self, data: bytes) -> None:
        """Send ``data`` as one binary message."""
        self._session._send_binary(data)

    def set_reader(
        self, reader: Callable[[bytes], None], on_error: Callable[[TlsFailure], None]
    ) -> None:
        """Deliver binary messages to ``reader``, the final failure to ``on_error``."""
        self._session._binary_reader = reader
        self._session._binary_error = on_error

    def close(self) -> None:
        """Close the WebSocket (close frame, then TLS)."""
        self._session._close_ws()


class WssSession:
    """A device's WebSocket session on ``/mqtt`` or ``/ws``."""

    name = "wss"

    def __init__(
        self,
        stream: TlsStream,
        *,
        url: str,
        path: str,
        client_id: str,
        clock: Callable[[], float],
        keepalive: int = 60,
        mqtt_options: MqttOptions | None = None,
    ) -> None:
        self._stream = stream
        self._mqtt_options = mqtt_options
        self._path = path
        self._client_id = client_id
        self._clock = clock
        self._keepalive = keepalive
        subprotocols = [Subprotocol("mqtt")] if path == "/mqtt" else None
        self._proto = ClientProtocol(parse_uri(url), subprotocols=subprotocols)
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._accepted: asyncio.Future[Response] = loop.create_future()
        self._inbox = Inbox(clock)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._ids = itertools.count(1)
        self._fragments: list[bytes] = []
        self._fragment_op: Opcode | None = None
        self._mqtt: MqttSession | None = None
        self._binary_reader: Callable[[bytes], None] | None = None
        self._binary_error: Callable[[TlsFailure], None] | None = None
        self.error: DeviceError | None = None
        self.messages_sent = 0
        stream.set_reader(self._on_data, self._on_error)

    # -- I/O plumbing

    def _flush(self) -> None:
        for chunk in self._proto.data_to_send():
            if chunk and self.error is None:
                self._stream.write(chunk)

    def _on_data(self, data: bytes) -> None:
        self._proto.receive_data(data)
        self._flush()
        for event in self._proto.events_received():
            if isinstance(event, Response):
                if not self._accepted.done():
                    self._accepted.set_result(event)
            elif isinstance(event, Frame):
                self._on_frame(event)
        if self._proto.handshake_exc is not None and not self._accepted.done():
            self._fail(
                ProtocolError(
                    f"bad WebSocket handshake: {self._proto.handshake_exc}", reason="ws-malformed"
                )
            )

    def _on_frame(self, frame: Frame) -> None:
        if frame.opcode in (Opcode.TEXT, Opcode.BINARY) and not frame.fin:
            self._fragment_op, self._fragments = frame.opcode, [bytes(frame.data)]
            return
        if frame.opcode is Opcode.CONT:
            self._fragments.append(bytes(frame.data))
            if not frame.fin or self._fragment_op is None:
                return
            frame = Frame(self._fragment_op, b"".join(self._fragments))
            self._fragments, self._fragment_op = [], None
        if frame.opcode is Opcode.BINARY:
            if self._binary_reader is not None:
                self._binary_reader(bytes(frame.data))
        elif frame.opcode is Opcode.TEXT:
            self._on_json(bytes(frame.data))
        elif frame.opcode is Opcode.CLOSE:
            close = self._proto.close_rcvd
            code = close.code if close is not None else 1005
            why = close.reason if close is not None else ""
            self._fail(
                ProtocolError(
                    f"the edge closed the WebSocket: {code} {why}".rstrip(),
                    reason=f"ws-closed-{code}",
                )
            )

    def _on_json(self, raw: bytes) -> None:
        try:
            data = json.loads(raw)
        except ValueError:
            self._fail(
                ProtocolError(
                    "the edge sent a text message that is not JSON", reason="ws-malformed"
                )
            )
            return
        if not isinstance(data, dict):
            return
        op = data.get("op")
        if op in ("ack", "error") and isinstance(data.get("id"), int):
            fut = self._pending.pop(data["id"], None)
            if fut is not None and not fut.done():
                fut.set_result(data)
        elif op == "message":
            raw_payload = data.get("payload", "")
            payload = (
                base64.b64decode(raw_payload)
                if data.get("encoding") == "base64"
                else str(raw_payload).encode()
            )
            self._inbox.put(
                str(data.get("topic", "")),
                payload,
                int(data.get("qos", 0)),
                bool(data.get("retain", False)),
            )

    def _on_error(self, error: TlsFailure) -> None:
        self._fail(error)

    def _fail(self, error: DeviceError) -> None:
        if self.error is None:
            self.error = error
        if not self._accepted.done():
            self._accepted.set_exception(error)
            self._accepted.exception()  # raised to whoever awaits open()
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(error)
                fut.exception()
        self._pending.clear()
        self._inbox.fail(error)
        if self._binary_error is not None and isinstance(error, TlsFailure | ProtocolError):
            on_error, self._binary_error = self._binary_error, None
            on_error(error)  # type: ignore[arg-type]

    def _send_binary(self, data: bytes) -> None:
        if self.error is not None:
            raise self.error
        self._proto.send_binary(data)
        self._flush()

    def _send_json(self, obj: dict[str, Any]) -> None:
        if self.error is not None:
            raise self.error
        self._proto.send_text(json.dumps(obj, separators=(",", ":")).encode())
        self._flush()

    def _close_ws(self) -> None:
        if self.error is None:
            # The protocol may already be closing (InvalidState), or the TLS stream
            # gone (DeviceError): either way there is nobody left to tell.
            with contextlib.suppress(InvalidState, DeviceError):
                self._proto.send_close(1000)
                self._flush()
        self._fail(ProtocolError("the session was closed by the device", reason="closed"))
        self._stream.close()

    # -- the session

    async def open(self) -> Ack:
        """Upgrade to WebSocket (and CONNECT on ``/mqtt``); return the acknowledgement."""
        self._proto.send_request(self._proto.connect())
        self._flush()
        response = await self._accepted
        exc = self._proto.handshake_exc
        if exc is not None:
            status = (
                exc.response.status_code if isinstance(exc, InvalidStatus) else response.status_code
            )
            return Ack(
                False,
                f"HTTP {status} {response.reason_phrase}: upgrade refused",
                {"status": status},
                reason=f"ws-rejected-{status}",
            )
        subprotocol = self._proto.subprotocol
        detail: dict[str, Any] = {"status": 101, "subprotocol": subprotocol}
        summary = "101 Switching Protocols" + (
            f", subprotocol {subprotocol}" if subprotocol else ""
        )
        if self._path != "/mqtt":
            return Ack(True, summary, detail)
        self._mqtt = MqttSession(
            WsChannel(self),
            client_id=self._client_id,
            clock=self._clock,
            keepalive=self._keepalive,
            options=self._mqtt_options,
        )
        connack = await self._mqtt.open()
        detail.update(connack.detail)
        return Ack(
            connack.ok,
            f"{summary}; {connack.summary}",
            detail,
            connack.reason,
            connack.reason_code,
            connack.properties,
        )

    async def _op(self, obj: dict[str, Any]) -> dict[str, Any]:
        op_id = next(self._ids)
        fut: asyncio.Future[dict[str, Any]] = self._loop.create_future()
        self._pending[op_id] = fut
        self._send_json({**obj, "id": op_id})
        return await fut

    async def subscribe(self, topic_filter: str, qos: int) -> Ack:
        """Subscribe (SUBSCRIBE on ``/mqtt``, a ``subscribe`` op on ``/ws``)."""
        if self._mqtt is not None:
            return await self._mqtt.subscribe(topic_filter, qos)
        reply = await self._op({"op": "subscribe", "topic": topic_filter})
        return _ack_of(reply)

    async def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int,
        retain: bool = False,
        properties: Properties | None = None,
    ) -> Ack:
        """Publish (PUBLISH on ``/mqtt``, a ``publish`` op on ``/ws``).

        ``properties`` need MQTT 5 over ``/mqtt``.
        """
        if self._mqtt is not None:
            self.messages_sent += 1
            return await self._mqtt.publish(topic, payload, qos, retain, properties)
        if properties is not None:
            raise ProtocolError("PUBLISH properties need MQTT 5 over /mqtt", reason="bad-input")
        self.messages_sent += 1
        try:
            text, encoding = payload.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            text, encoding = base64.b64encode(payload).decode("ascii"), "base64"
        reply = await self._op(
            {
                "op": "publish",
                "topic": topic,
                "payload": text,
                "encoding": encoding,
                "qos": qos,
                "retain": retain,
            }
        )
        return _ack_of(reply)

    async def next_message(self) -> Message:
        """The next delivered message."""
        if self._mqtt is not None:
            return await self._mqtt.next_message()
        return await self._inbox.get()

    @property
    def messages_received(self) -> int:
        """How many messages were delivered so far."""
        return self._mqtt.messages_received if self._mqtt is not None else self._inbox.count

    def close(self) -> None:
        """DISCONNECT on ``/mqtt``, then a close frame and the TLS goodbye."""
        if self._mqtt is not None:
            self._mqtt.close()  # sends DISCONNECT and closes through WsChannel
        else:
            self._close_ws()


def _ack_of(reply: dict[str, Any]) -> Ack:
    detail = {k: v for k, v in reply.items() if k not in ("op", "id")}
    if reply.get("op") == "ack":
        return Ack(True, "ack" + "".join(f" {k}={v}" for k, v in detail.items()), detail)
    reason = str(reply.get("reason", "refused"))
    return Ack(False, f"error: {reason}", detail, reason="ws-error")
