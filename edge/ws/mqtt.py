"""``/mqtt``: MQTT over WebSocket, served by the same broker as the MQTT listener.

MQTT over WebSocket (MQTT 3.1.1 section 6) carries the MQTT byte stream in
binary WebSocket messages, negotiated with the subprotocol ``mqtt``; a packet
may span several messages and a message may hold several packets. So this
adapter needs no framing of its own: every binary frame's data goes into the
broker's sans-I/O connection (``edge.mqtt.broker.MqttConnection``), whatever
the connection wants to send goes out as one binary message.

A text frame is not MQTT: the connection closes with 1003. A malformed MQTT
packet or a protocol violation closes it with 1002 (protocol error); any other
end of the MQTT session (DISCONNECT, keep-alive expiry, a takeover) with 1000.
Either way the broker's ``close_reason`` is the close reason (which also appears
in the ``ws.closed`` event).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol

from edge.core.session import SessionInfo
from edge.ws.endpoint import WsApp, WsSender
from edge.ws.jsonproto import (
    CLOSE_NORMAL,
    CLOSE_PROTOCOL_ERROR,
    CLOSE_UNSUPPORTED_DATA,
    WsCloseError,
)

__all__ = ["BrokerLike", "MqttConnectionLike", "MqttWsApp", "mqtt_ws_factory"]


class MqttConnectionLike(Protocol):
    """The broker's sans-I/O connection (``edge.mqtt.broker.MqttConnection``) as driven here."""

    wakeup: Callable[[], None] | None
    should_close: bool
    close_reason: str
    protocol_error: bool

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the device."""

    def data_to_send(self) -> bytes:
        """Bytes to send to the device (empty when none)."""

    def tick(self, now: float) -> float | None:
        """Apply timeouts at ``now``; return the next deadline (``None``: none)."""

    def connection_lost(self, reason: str = ...) -> None:
        """The transport is gone."""


class BrokerLike(Protocol):
    """The broker (``edge.mqtt.broker.MqttBroker``) as this adapter uses it."""

    clock: Callable[[], float]

    def connection(self, session_info: SessionInfo) -> MqttConnectionLike:
        """A new connection state machine for an accepted device."""


class MqttWsApp:
    """One ``/mqtt`` WebSocket connection bound to one broker connection.

    Time comes from ``clock`` (the broker's); the connection's own deadlines
    (connect timeout, keep-alive) decide when the next tick runs.
    """

    def __init__(
        self,
        connection: MqttConnectionLike,
        sender: WsSender,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._mqtt = connection
        self._sender = sender
        self._clock = clock
        self._closed = False
        self._timer: asyncio.TimerHandle | None = None
        connection.wakeup = self._flush
        self._tick()

    @property
    def connection(self) -> MqttConnectionLike:
        """The broker connection this WebSocket carries (the device list reads it)."""
        return self._mqtt

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
            self._closed = True
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if self._mqtt.protocol_error:
                reason = self._mqtt.close_reason or "malformed MQTT packet"
                self._sender.close(CLOSE_PROTOCOL_ERROR, reason)
            else:
                self._sender.close(CLOSE_NORMAL, self._mqtt.close_reason or "MQTT session ended")

    def _tick(self) -> None:
        self._timer = None
        if self._closed:
            return
        deadline = self._mqtt.tick(self._clock())
        self._flush()
        if deadline is not None and not self._closed:
            loop = asyncio.get_running_loop()
            # The broker's clock and the loop's clock differ: wait the difference.
            delay = max(0.0, deadline - self._clock())
            self._timer = loop.call_later(delay, self._tick)


def mqtt_ws_factory(
    broker: BrokerLike,
) -> Callable[[SessionInfo, WsSender, str | None], WsApp]:
    """Return the ``/mqtt`` route's app factory: one broker connection per WebSocket."""

    def factory(session: SessionInfo, sender: WsSender, subprotocol: str | None) -> WsApp:
        return MqttWsApp(broker.connection(session), sender, clock=broker.clock)

    return factory
