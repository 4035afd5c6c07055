"""``/mqtt``: MQTT over WebSocket, served by the same broker as the MQTT listener.

MQTT over WebSocket (MQTT 3.1.1 section 6) carries the MQTT byte stream in
binary WebSocket messages, negotiated with the subprotocol ``mqtt``; a packet
may span several messages and a message may hold several packets. So this
adapter needs no framing of its own: every binary frame's data goes into the
broker's sans-I/O connection (``edge.mqtt.broker.MqttConnection``), whatever
the connection wants to send goes out as one binary message.

A text frame is not MQTT: the connection closes with 1003. When the MQTT
session ends (DISCONNECT, keep-alive expiry, a protocol error) the WebSocket
closes with 1000, or 1002 when the broker closed because of a malformed packet
(``MqttConnectionLike.close_reason`` says which).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol

from edge.core.events import EventLog
from edge.core.session import SessionInfo
from edge.ws.endpoint import WsApp, WsSender
from edge.ws.jsonproto import CLOSE_NORMAL, CLOSE_UNSUPPORTED_DATA, WsCloseError

__all__ = ["MqttConnectionLike", "MqttWsApp", "mqtt_ws_factory"]


class MqttConnectionLike(Protocol):
    """The broker's sans-I/O MQTT connection, as this adapter drives it."""

    wakeup: Callable[[], None] | None

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the device."""

    def data_to_send(self) -> bytes:
        """Bytes to send to the device (empty when none)."""

    @property
    def should_close(self) -> bool:
        """True once the MQTT session is over."""

    def tick(self, now: float) -> None:
        """Let time pass (keep-alive)."""

    def connection_lost(self, reason: str) -> None:
        """The transport is gone."""


#: ``factory(session, now) -> MqttConnectionLike``: a new broker connection.
MqttConnectionFactory = Callable[[SessionInfo, float], MqttConnectionLike]


class MqttWsApp:
    """One ``/mqtt`` WebSocket connection bound to one broker connection."""

    def __init__(
        self,
        connection: MqttConnectionLike,
        sender: WsSender,
        *,
        clock: Callable[[], float] = time.monotonic,
        tick_interval: float = 1.0,
    ) -> None:
        self._mqtt = connection
        self._sender = sender
        self._clock = clock
        self._interval = tick_interval
        self._closed = False
        connection.wakeup = self._flush
        self._timer: asyncio.TimerHandle | None = None
        self._schedule_tick()

    def on_message(self, data: bytes, text: bool, fin: bool) -> None:
        """Feed one frame's bytes to the broker connection."""
        if text:
            raise WsCloseError(CLOSE_UNSUPPORTED_DATA, "MQTT over WebSocket uses binary frames")
        self._mqtt.receive_data(data)
        self._flush()

    def on_writable(self) -> None:
        """Send what the broker queued while the transport was paused."""
        self._flush()

    def on_closed(self, code: int, reason: str) -> None:
        """Tell the broker the device is gone (its will message, session cleanup)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._closed:
            self._closed = True
            self._mqtt.connection_lost(f"websocket closed ({code}: {reason or 'no reason'})")

    def _flush(self) -> None:
        if self._closed or not self._sender.writable:
            return
        out = self._mqtt.data_to_send()
        if out:
            self._sender.send_binary(out)
        if self._mqtt.should_close:
            self._sender.close(CLOSE_NORMAL, "MQTT session ended")

    def _schedule_tick(self) -> None:
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._interval, self._tick)

    def _tick(self) -> None:
        self._timer = None
        if self._closed:
            return
        self._mqtt.tick(self._clock())
        self._flush()
        if not self._closed:
            self._schedule_tick()


def mqtt_ws_factory(
    connection_factory: MqttConnectionFactory,
    events: EventLog | None = None,
    *,
    clock: Callable[[], float] = time.monotonic,
) -> Callable[[SessionInfo, WsSender, str | None], WsApp]:
    """Return the ``/mqtt`` route's app factory over ``connection_factory``."""

    def factory(session: SessionInfo, sender: WsSender, subprotocol: str | None) -> WsApp:
        return MqttWsApp(connection_factory(session, clock()), sender, clock=clock)

    return factory
