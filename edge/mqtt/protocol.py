"""The thin asyncio adapter between a transport and an :class:`MqttConnection`.

``MqttServerProtocol(broker, session)`` works on any ``asyncio.Transport``: a plain
TCP one in tests, or the TLS layer's own transport carrying the decrypted stream.
It feeds received bytes to the sans-I/O connection, writes what the connection
produces, arms one timer (``loop.call_at``) for the connection's next deadline
(connect timeout, keepalive), and closes the transport when the connection says
so. Deliveries from other connections arrive through the connection's ``wakeup``
callback and are written in one batch per event-loop iteration.

Flow control: while the transport asks to pause writing, output stays in the
connection (which then sheds QoS 0 beyond ``max_write_buffer``) and reading from
this client is paused too, so a client that does not read cannot make the edge
buffer without bound.

``mqtt.connected`` / ``mqtt.refused`` / ``mqtt.disconnected`` events (with the
reason) come from the connection, through the core's event log, so every I/O
layer reports the same. No exception escapes the protocol callbacks: protocol
errors close the connection with a reason.
"""

from __future__ import annotations

import asyncio
from typing import cast

from edge.core.deadlines import Deadline, Deadlines
from edge.core.session import SessionInfo
from edge.mqtt.broker import MqttBroker, MqttConnection

__all__ = ["MqttProtocolFactory", "MqttServerProtocol"]


class MqttServerProtocol(asyncio.Protocol):
    """One MQTT connection over an asyncio transport."""

    __slots__ = (
        "_awaiting_connect",
        "_closed",
        "_closing",
        "_connect_deadlines",
        "_flush_scheduled",
        "_gone",
        "_loop",
        "_paused",
        "_timer",
        "_transport",
        "broker",
        "connection",
        "session",
    )

    def __init__(
        self,
        broker: MqttBroker,
        session: SessionInfo,
        *,
        connect_deadlines: Deadlines | None = None,
    ) -> None:
        self.broker = broker
        self.session = session
        # Shared by a listener's connections (broker.config.connect_timeout from
        # now): one loop timer for all their connect timeouts instead of one each.
        self._connect_deadlines = connect_deadlines
        self.connection: MqttConnection | None = None
        self._transport: asyncio.Transport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | Deadline | None = None
        self._awaiting_connect = True
        self._paused = False
        self._flush_scheduled = False
        self._closing = False
        # Made only when someone awaits the end of the connection (see closed):
        # a future per connected device is memory nobody reads.
        self._closed: asyncio.Future[None] | None = None
        self._gone = False

    @property
    def closed(self) -> asyncio.Future[None] | None:
        """Resolved when the transport has gone; ``None`` before ``connection_made``."""
        if self._closed is None and self._loop is not None:
            self._closed = self._loop.create_future()
            if self._gone:
                self._closed.set_result(None)
        return self._closed

    @property
    def protocol_name(self) -> str:
        """``mqtt``: the label metrics and the device list give this connection."""
        return "mqtt"

    # --- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Create the sans-I/O connection and arm the connect timeout."""
        # uvloop's transports (and the TLS layer's) are duck-typed, not subclasses.
        self._transport = cast(asyncio.Transport, transport)
        self._loop = asyncio.get_running_loop()
        conn = self.connection = self.broker.connection(self.session)
        conn.wakeup = self._wakeup
        deadline = conn.tick(self.broker.clock())
        if self._connect_deadlines is not None and deadline is not None:
            self._timer = self._connect_deadlines.add(self._on_timer)
        else:
            self._schedule(deadline)

    def data_received(self, data: bytes) -> None:
        """Feed the bytes, write the replies, close if the connection asks."""
        conn = self.connection
        assert conn is not None
        # The _flush() below sends whatever this writes: no wake-up callback for it.
        self._flush_scheduled = True
        try:
            conn.receive_data(data)
        except BaseException:
            self._flush_scheduled = False
            raise
        if self._awaiting_connect and conn.connected:
            # The connect timeout is over; the keepalive deadline takes its place.
            self._awaiting_connect = False
            self._schedule(conn.tick(self.broker.clock()))
        self._flush()

    def eof_received(self) -> bool | None:
        """The client half-closed: close our side too (MQTT has no half-close)."""
        return False

    def pause_writing(self) -> None:
        """The transport's buffer is full: hold output and stop reading this client."""
        self._paused = True
        if self._transport is not None and not self._closing:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        """The transport drained: write what waited and read again."""
        self._paused = False
        if self._transport is not None and not self._closing:
            self._transport.resume_reading()
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        """Tear down: cancel the timer, end the connection (will), resolve ``closed``."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        conn = self.connection
        if conn is not None:
            reason = "connection closed by the client" if exc is None else f"connection lost: {exc}"
            conn.wakeup = None
            conn.connection_lost(reason)
        self._transport = None
        self._gone = True
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(None)

    # --- internals ---------------------------------------------------------------------

    def _wakeup(self) -> None:
        if not self._flush_scheduled and self._loop is not None:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        transport = self._transport
        conn = self.connection
        if transport is None or conn is None or self._closing:
            return
        if conn.should_close:
            # Last words (a CONNACK refusal, say) go out even when paused.
            self._closing = True
            data = conn.data_to_send()
            if data:
                transport.write(data)
            transport.close()
            return
        if not self._paused:
            data = conn.data_to_send()
            if data:
                transport.write(data)
        if self._timer is None and self.broker.config.retry_interval is not None:
            # A client without keepalive has no timer; new in-flight messages need one.
            self._schedule(conn.tick(self.broker.clock()))

    def _schedule(self, deadline: float | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if deadline is None or self._loop is None:
            return
        delay = max(0.0, deadline - self.broker.clock())
        self._timer = self._loop.call_at(self._loop.time() + delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        conn = self.connection
        if conn is None:
            return
        deadline = conn.tick(self.broker.clock())
        self._flush()
        if not conn.should_close:
            self._schedule(deadline)


class MqttProtocolFactory:
    """Makes the :class:`MqttServerProtocol` of each session a TLS listener accepts.

    One per listener: its connections share one :class:`~edge.core.deadlines.Deadlines`
    for their CONNECT timeouts. A class rather than a closure so that the call,
    once per connect, stays in compiled code (:mod:`edge.compiled`).
    """

    __slots__ = ("broker", "connect_deadlines")

    def __init__(self, broker: MqttBroker) -> None:
        self.broker = broker
        self.connect_deadlines = Deadlines(broker.config.connect_timeout)

    def __call__(self, session: SessionInfo) -> asyncio.Protocol:
        """The protocol for one accepted ``session``."""
        return MqttServerProtocol(self.broker, session, connect_deadlines=self.connect_deadlines)
