"""WebSocket connections on the edge, driven by the websockets library's sans-I/O protocol.

:class:`WebSocketConnection` is the thin asyncio layer: it feeds the bytes of
the TLS transport to ``websockets.server.ServerProtocol``, writes what the
protocol wants written, and hands WebSocket messages to the application bound
to the request path (a :class:`WsApp`): ``/mqtt`` (:mod:`edge.ws.mqtt`) or
``/ws`` (:mod:`edge.ws.session`).

What the protocol does on its own: the opening handshake (``400`` for a bad
upgrade request), ping/pong, the closing handshake, close code 1002 for framing
errors and 1009 for a message over ``max_size``. What this layer adds: ``404``
for an unknown path, subprotocol negotiation per path, assembling fragmented
messages for applications that want whole messages, close code 1007 for text
that is not UTF-8, and a ``ws.closed`` event (with the code and reason) for
every WebSocket connection that ends.

Errors are those of :mod:`edge.ws.jsonproto` (``WsError`` and its children): an
application raises ``WsCloseError(code, reason)`` and the connection fails with
that code.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.typing import Subprotocol

from edge.core.events import EventLog
from edge.core.session import SessionInfo
from edge.ws.jsonproto import (
    CLOSE_INVALID_PAYLOAD,
    CLOSE_NORMAL,
    WsCloseError,
)

__all__ = ["WebSocketConnection", "WsApp", "WsRoute", "WsSender"]

log = logging.getLogger("edgesim.ws")


class WsSender(Protocol):
    """What an application may do to its WebSocket connection."""

    def send_text(self, text: str) -> None:
        """Send one text message."""

    def send_binary(self, data: bytes) -> None:
        """Send one binary message."""

    def close(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        """Start the closing handshake with ``code`` and ``reason``."""

    def fail(self, code: int, reason: str) -> None:
        """Close at once with ``code`` and ``reason`` (an error)."""

    @property
    def writable(self) -> bool:
        """False while the transport's buffer is over its high-water mark."""


class WsApp(Protocol):
    """The application behind one accepted WebSocket connection."""

    def on_message(self, data: bytes, text: bool, fin: bool) -> None:
        """A message (or, for streaming apps, one frame's worth of it) arrived.

        Raise :class:`~edge.ws.jsonproto.WsCloseError` to fail the connection.
        """

    def on_writable(self) -> None:
        """The transport drained below its low-water mark: queued data may go."""

    def on_closed(self, code: int, reason: str) -> None:
        """The connection ended (``code`` 1006 when it ended without a close frame)."""


#: ``factory(session, sender, subprotocol) -> WsApp``, called once the handshake succeeds.
AppFactory = Callable[[SessionInfo, WsSender, str | None], WsApp]


@dataclass(frozen=True, slots=True, kw_only=True)
class WsRoute:
    """One WebSocket path of the edge.

    ``subprotocols``: those the path speaks, by preference; empty means any or
    none (the client's offer is then ignored). ``streaming``: the app receives
    every frame as it arrives (MQTT, whose packets may span frames) instead of
    whole, assembled messages.
    """

    name: str
    app: AppFactory
    subprotocols: tuple[str, ...] = ()
    streaming: bool = False


class WebSocketConnection(asyncio.Protocol):
    """One WebSocket connection: handshake, frames, and the app bound to its path.

    The connection is created after the first request head was recognised as a
    WebSocket upgrade; the bytes already read are fed with ``data_received``.
    """

    def __init__(
        self,
        session: SessionInfo,
        routes: dict[str, WsRoute],
        *,
        events: EventLog | None = None,
        max_size: int = 2**20,
        close_timeout: float = 5.0,
    ) -> None:
        self._session = session
        self._routes = routes
        self._events = events
        self._close_timeout = close_timeout
        self._proto = ServerProtocol(max_size=max_size, select_subprotocol=_no_subprotocol)
        self._transport: asyncio.Transport | None = None
        self._app: WsApp | None = None
        self._route: WsRoute | None = None
        self._path = ""
        self._fragments: list[bytes] = []
        self._fragment_text = False
        self._close_timer: asyncio.TimerHandle | None = None
        self._ended = False
        self._writable = True

    @property
    def app(self) -> WsApp | None:
        """The application bound to the path (``None`` before the handshake)."""
        return self._app

    @property
    def protocol_name(self) -> str:
        """``mqtt-ws`` on the ``/mqtt`` path (MQTT over WebSocket), else ``ws``."""
        route = self._route
        return "mqtt-ws" if route is not None and route.name == "mqtt" else "ws"

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport; the handshake request arrives with data_received."""
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        """Feed the protocol, act on its events, write what it produced."""
        self._proto.receive_data(data)
        self._process()

    def eof_received(self) -> bool | None:
        """The device half-closed: let the protocol finish, then close."""
        self._proto.receive_eof()
        self._process()
        return None

    def pause_writing(self) -> None:
        """The transport's buffer is full: apps keep their messages queued."""
        self._writable = False

    def resume_writing(self) -> None:
        """The transport drained: let the app send what it queued."""
        self._writable = True
        if self._app is not None:
            self._app.on_writable()

    def connection_lost(self, exc: Exception | None) -> None:
        """Tell the app (once) and report ``ws.closed``."""
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        self._transport = None
        self._end()

    # WsSender

    @property
    def writable(self) -> bool:
        """False while the transport's buffer is over its high-water mark."""
        return self._writable and self._transport is not None

    @property
    def is_open(self) -> bool:
        """True between the accepted handshake and the start of the close."""
        return self._proto.state is State.OPEN

    def send_text(self, text: str) -> None:
        """Send one text message (dropped once the connection is closing)."""
        if self._proto.state is State.OPEN:
            self._proto.send_text(text.encode("utf-8"))
            self._flush()

    def send_binary(self, data: bytes) -> None:
        """Send one binary message (dropped once the connection is closing)."""
        if self._proto.state is State.OPEN:
            self._proto.send_binary(data)
            self._flush()

    def close(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        """Start the closing handshake; the transport closes when the device answers."""
        if self._proto.state is State.OPEN:
            self._proto.send_close(code, _short(reason))
            self._flush()
            self._arm_close_timer()

    def fail(self, code: int, reason: str) -> None:
        """Send a close frame with ``code``/``reason`` and close the transport."""
        if self._proto.state in (State.OPEN, State.CONNECTING):
            self._proto.fail(code, _short(reason))
            self._flush()

    # internals

    def _process(self) -> None:
        for event in self._proto.events_received():
            if isinstance(event, Request):
                self._handshake(event)
            elif isinstance(event, Frame):
                self._frame(event)
        self._flush()
        if self._proto.close_expected():
            self._arm_close_timer()

    def _handshake(self, request: Request) -> None:
        path = request.path.split("?", 1)[0]
        self._path = path
        route = self._routes.get(path)
        if route is None:
            response = self._proto.reject(404, f"no WebSocket endpoint at {path}\n")
            self._proto.send_response(response)
            self._emit_refused(f"no WebSocket endpoint at {path}", 404)
            return
        self._route = route
        self._proto.available_subprotocols = [Subprotocol(s) for s in route.subprotocols]
        response = self._proto.accept(request)
        if response.status_code != 101:
            self._proto.send_response(response)
            reason = str(self._proto.handshake_exc or f"HTTP {response.status_code}")
            self._emit_refused(reason, response.status_code)
            return
        self._proto.send_response(response)
        self._flush()
        subprotocol = response.headers.get("Sec-WebSocket-Protocol")
        if self._events is not None:
            self._events.emit(
                "ws.connected",
                "accepted",
                identity=str(self._session.identity),
                peer=self._session.peer,
                path=path,
                subprotocol=subprotocol,
                connection_id=self._session.connection_id,
            )
        self._app = route.app(self._session, self, subprotocol)

    def _frame(self, frame: Frame) -> None:
        app = self._app
        if app is None or self._route is None:
            return
        if frame.opcode not in (Opcode.TEXT, Opcode.BINARY, Opcode.CONT):
            return  # ping/pong/close: the protocol already answered
        if frame.opcode is not Opcode.CONT:
            self._fragment_text = frame.opcode is Opcode.TEXT
        try:
            if self._route.streaming:
                app.on_message(bytes(frame.data), self._fragment_text, frame.fin)
                return
            self._fragments.append(bytes(frame.data))
            if not frame.fin:
                return
            data = b"".join(self._fragments)
            self._fragments.clear()
            if self._fragment_text:
                _check_utf8(data)
            app.on_message(data, self._fragment_text, True)
        except WsCloseError as exc:
            self.fail(exc.code, exc.reason)

    def _flush(self) -> None:
        transport = self._transport
        if transport is None:
            return
        for chunk in self._proto.data_to_send():
            if chunk:
                transport.write(chunk)
            else:
                # SEND_EOF: the server closes the TCP connection (TLS transports
                # cannot half-close); close() still flushes what was written.
                transport.close()
                return

    def _arm_close_timer(self) -> None:
        if self._close_timer is None and self._transport is not None:
            loop = asyncio.get_running_loop()
            self._close_timer = loop.call_later(self._close_timeout, self._force_close)

    def _force_close(self) -> None:
        self._close_timer = None
        if self._transport is not None:
            self._transport.close()

    def _emit_refused(self, reason: str, status: int) -> None:
        self._ended = True  # never opened: no ws.closed
        if self._events is not None:
            self._events.emit(
                "ws.refused",
                "refused",
                identity=str(self._session.identity),
                peer=self._session.peer,
                path=self._path,
                status=status,
                reason=reason,
            )

    def _end(self) -> None:
        if self._ended:
            return
        self._ended = True
        proto = self._proto
        # The close that matters is the first one: ours when we sent a close
        # frame first, the device's otherwise (the echo repeats it).
        if proto.close_sent is not None and not proto.close_rcvd_then_sent:
            code, reason, by = proto.close_sent.code, proto.close_sent.reason, "edge"
        elif proto.close_rcvd is not None:
            code, reason, by = proto.close_rcvd.code, proto.close_rcvd.reason, "device"
        else:
            code, reason, by = 1006, "connection lost without a close frame", "network"
        if self._app is not None:
            self._app.on_closed(code, reason)
        if self._events is not None and self._route is not None:
            self._events.emit(
                "ws.closed",
                "closed",
                identity=str(self._session.identity),
                peer=self._session.peer,
                path=self._path,
                code=int(code),
                reason=reason,
                closed_by=by,
                connection_id=self._session.connection_id,
            )


def _no_subprotocol(protocol: ServerProtocol, offered: Sequence[Subprotocol]) -> Subprotocol | None:
    """Pick the route's subprotocol; a route without any ignores the client's offer."""
    available = protocol.available_subprotocols
    if not available:
        return None
    return ServerProtocol.select_subprotocol(protocol, offered)


def _check_utf8(data: bytes) -> None:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise WsCloseError(
            CLOSE_INVALID_PAYLOAD, f"text message is not UTF-8 ({exc.reason} at byte {exc.start})"
        ) from None


def _short(reason: str) -> str:
    """Cut a close reason to the 123 bytes of UTF-8 a close frame can carry."""
    data = reason.encode("utf-8")
    if len(data) <= 123:
        return reason
    return data[:120].decode("utf-8", "ignore") + "..."
