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
from typing import Any, Protocol

from devices.tlsclient import DeviceError, TlsFailure

__all__ = ["Ack", "Channel", "Inbox", "Message", "ProtocolError", "ProtocolSession"]


class ProtocolError(DeviceError):
    """The server's protocol bytes were invalid, or it refused at the protocol level."""

    reason = "protocol-error"


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
    """A message delivered to the device; ``received_at`` comes from the device's clock."""

    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False
    received_at: float = 0.0


@dataclass(slots=True)
class Ack:
    """The edge's answer to a protocol request: ``ok`` plus what the trace shows."""

    ok: bool
    summary: str
    detail: dict[str, Any] = field(default_factory=dict)
    reason: str = ""


class ProtocolSession(Protocol):
    """What :mod:`devices.device` needs from a protocol client."""

    name: str

    async def open(self) -> Ack:
        """Perform the protocol's own handshake; return its acknowledgement."""

    async def subscribe(self, topic_filter: str, qos: int) -> Ack:
        """Subscribe; return the edge's answer."""

    async def publish(self, topic: str, payload: bytes, qos: int, retain: bool = False) -> Ack:
        """Publish; return the edge's answer (after the QoS flow completes)."""

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
        self._items: deque[Message] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._error: DeviceError | None = None
        self.count = 0

    def put(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> None:
        """Add a message, stamped with the clock now."""
        self.count += 1
        self._items.append(Message(topic, payload, qos, retain, self._clock()))
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
        return self._items.popleft()
