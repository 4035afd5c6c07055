"""Protocol clients a device speaks over its TLS session: MQTT, HTTPS, WebSocket.

Every client offers the same small surface (:class:`ProtocolSession`) so that the
device (:mod:`devices.device`) runs one handshake sequence whatever the protocol:

- ``open()``: the protocol's acknowledgement (CONNACK, HTTP status, WebSocket accept);
  with TLS 1.3 this is also the moment the edge's verdict on the device certificate
  becomes known;
- ``subscribe(filter, qos)``, ``publish(topic, payload, qos, retain)``: each returns an
  :class:`Ack` describing what the edge answered;
- ``next_message()``: the next :class:`Message` delivered to the device;
- ``close()``.

Clients read bytes through a :class:`Channel` (the TLS stream, or a WebSocket's binary
frames for MQTT over WebSocket) by callback, not by a reading task, so that a held
fleet device costs little memory.

Errors: :class:`ProtocolError` (a subclass of :class:`devices.tlsclient.DeviceError`)
when the server's bytes make no sense or it refuses at the protocol level; its
``reason`` is short and machine-readable (``connack-5``, ``http-403``, ``ws-rejected-403``).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from devices.tlsclient import DeviceError, TlsFailure

if TYPE_CHECKING:
    from edge.mqtt.properties import Properties

__all__ = ["Ack", "Channel", "Inbox", "Message", "ProtocolError", "ProtocolSession", "Refused"]


class ProtocolError(DeviceError):
    """The server's protocol bytes were invalid, or it refused at the protocol level."""

    reason = "protocol-error"


class Refused(ProtocolError):
    """The server answered the protocol's handshake with a refusal; ``ack`` is that answer.

    ``ack.reason_code`` and ``ack.properties`` (Reason String...) say why under MQTT 5.
    """

    def __init__(self, message: str, ack: Ack) -> None:
        super().__init__(message, reason=ack.reason)
        self.ack = ack


class Channel(Protocol):
    """A duplex byte pipe with callback reading (see :class:`devices.tlsclient.TlsStream`)."""

    def write(self, data: bytes) -> None:
        """Send bytes."""

    def set_reader(
        self, reader: Callable[[bytes], None], on_error: Callable[[TlsFailure], None]
    ) -> None:
        """Deliver received bytes to ``reader`` and the final failure to ``on_error``."""

    def close(self) -> None:
        """Close politely."""


@dataclass(frozen=True, slots=True)
class Message:
    """A message delivered to the device; ``received_at`` comes from the device's clock.

    ``properties`` are the MQTT 5 PUBLISH properties as received (content type, user
    properties, response topic, correlation data, the remaining message expiry,
    subscription identifiers), ``None`` under MQTT 3.1.1 and the other protocols.
    ``topic`` is the full topic even when the server sent a Topic Alias.
    """

    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False
    received_at: float = 0.0
    properties: Properties | None = None


@dataclass(slots=True)
class Ack:
    """The edge's answer to a protocol request: ``ok`` plus what the trace shows.

    MQTT 5 answers carry ``reason_code`` (the CONNACK, PUBACK, PUBREC, PUBCOMP or
    UNSUBACK code; for a SUBACK the first filter's, all of them in
    ``detail["reason_codes"]``) and the packet's ``properties`` (Reason String, User
    Properties, and CONNACK's capabilities). Both stay ``None`` under MQTT 3.1.1, HTTP
    and the WebSocket JSON protocol.
    """

    ok: bool
    summary: str
    detail: dict[str, Any] = field(default_factory=dict)
    reason: str = ""
    reason_code: int | None = None
    properties: Properties | None = None

    @property
    def reason_string(self) -> str | None:
        """The MQTT 5 Reason String of the answer, if the server sent one."""
        return None if self.properties is None else self.properties.reason_string

    @property
    def user_properties(self) -> list[tuple[str, str]]:
        """The MQTT 5 User Properties of the answer, in wire order (empty if none)."""
        return [] if self.properties is None else self.properties.user_properties


class ProtocolSession(Protocol):
    """What :mod:`devices.device` needs from a protocol client."""

    name: str

    async def open(self) -> Ack:
        """Perform the protocol's own handshake; return its acknowledgement."""

    async def subscribe(self, topic_filter: str, qos: int) -> Ack:
        """Subscribe; return the edge's answer."""

    async def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int,
        retain: bool = False,
        properties: Properties | None = None,
    ) -> Ack:
        """Publish; return the edge's answer (after the QoS flow completes).

        ``properties`` (MQTT 5 PUBLISH properties) only where the session speaks MQTT 5;
        elsewhere they raise :class:`ProtocolError` with reason ``bad-input``.
        """

    async def next_message(self) -> Message:
        """Wait for the next delivered message."""

    def close(self) -> None:
        """Leave politely (DISCONNECT, close frame) and close the connection."""


class Inbox:
    """Received messages plus the connection's final failure; one waiter at a time.

    Cheaper than an :class:`asyncio.Queue` per held device.
    """

    __slots__ = ("_clock", "_error", "_items", "_waiter", "count")

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        # Made on the first message: an empty deque is about 600 bytes per held device.
        self._items: deque[Message] | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._error: DeviceError | None = None
        self.count = 0

    def put(
        self,
        topic: str,
        payload: bytes,
        qos: int = 0,
        retain: bool = False,
        properties: Properties | None = None,
    ) -> None:
        """Add a message, stamped with the clock now."""
        self.count += 1
        if self._items is None:
            self._items = deque()
        self._items.append(Message(topic, payload, qos, retain, self._clock(), properties))
        self._wake()

    def fail(self, error: DeviceError) -> None:
        """Record the failure that ends the connection; wakes the waiter."""
        if self._error is None:
            self._error = error
        self._wake()

    @property
    def error(self) -> DeviceError | None:
        """The failure that ended the connection, if any."""
        return self._error

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def get(self) -> Message:
        """Return the next message; raise the connection's failure when none are left."""
        while not self._items:
            if self._error is not None:
                raise self._error
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        assert self._items is not None  # non-empty, so made
        return self._items.popleft()
