"""Running an aiohttp application on transports the edge already owns.

aiohttp normally owns its sockets (``web.TCPSite``). On the edge the TLS layer
owns them: after the mutual-TLS handshake it hands a decrypted
``asyncio.Transport`` and a :class:`~edge.core.session.SessionInfo` to a
protocol. :class:`AiohttpBridge` bridges the two with aiohttp's public pieces
only:

- ``web.AppRunner(app).setup()`` runs the application's startup hooks and
  builds its low-level ``web.Server``;
- ``runner.server()`` is an ``asyncio.Protocol`` factory (the documented
  ``loop.create_server(server, ...)`` usage); each call returns aiohttp's
  ``RequestHandler`` for one connection, which needs from the transport only
  ``write``/``writelines``/``close``/``is_closing``, ``pause_reading``/
  ``resume_reading`` and ``get_extra_info`` (``peername``, ``sockname``,
  ``sslcontext``, ``socket``; a ``None`` socket skips TCP keepalive);
- ``runner.cleanup()`` closes the connections and runs the cleanup hooks.

Handlers find the device behind a request with :func:`session_of`, which reads
the registry the bridge keeps per connection (the TLS transport's
``edgesim.session`` extra is used when the registry has none).

A handler may switch its connection to another protocol with :func:`take_over`
(a WebSocket upgrade on any request of a keep-alive connection): from then on
the transport's callbacks go to that protocol, and aiohttp sees no more bytes.

Errors (the root of the device side of :mod:`edge.http` is defined here,
because :mod:`edge.http.device` builds on this module)::

    HttpEdgeError          root of edge.http's device-side errors
    ├── BridgeError        the bridge is used before start() or after close(),
    │                      or a request has no authenticated session
    └── DeviceApiError     (edge.http.device) a refused device request
        └── Problem        answered as application/problem+json

aiohttp's exceptions stay inside aiohttp's request handling; the device API
translates its 4xx ``HTTPException`` into ``Problem`` responses.
"""

from __future__ import annotations

import asyncio

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from edge.core.session import SessionInfo

__all__ = [
    "CONNECTIONS",
    "SESSIONS",
    "AiohttpBridge",
    "BridgeError",
    "HttpEdgeError",
    "session_of",
    "take_over",
]

#: Per-connection sessions of one application: aiohttp's connection protocol -> session.
SESSIONS = web.AppKey("edgesim_sessions", dict[RequestHandler, SessionInfo])
#: aiohttp's connection protocol -> the bridge's wrapper of it (for :func:`take_over`).
CONNECTIONS: web.AppKey[dict[RequestHandler, _SessionHandler]] = web.AppKey("edgesim_connections")


class HttpEdgeError(Exception):
    """Root of the errors of the device side of :mod:`edge.http`."""


class BridgeError(HttpEdgeError):
    """The bridge is used outside its ``start()`` ... ``close()`` lifetime,
    or a request reached a handler without an authenticated session."""


class AiohttpBridge:
    """An aiohttp application served on transports handed over by the TLS layer.

    Lifecycle: ``await start()`` once, then :meth:`connection` per accepted
    connection, then ``await close()``. ``handler_cancellation`` is on so that a
    device disconnecting cancels its handler (streaming responses end at once).
    """

    def __init__(
        self,
        app: web.Application,
        *,
        shutdown_timeout: float = 5.0,
        keepalive_timeout: float = 75.0,
    ) -> None:
        self._app = app
        app[SESSIONS] = {}
        app[CONNECTIONS] = {}
        self._runner = web.AppRunner(
            app,
            handler_cancellation=True,
            access_log=None,
            shutdown_timeout=shutdown_timeout,
            # Idle keep-alive connections are closed after this (aiohttp's default
            # is an hour, long enough for idle sockets to pile up).
            keepalive_timeout=keepalive_timeout,
        )
        self._server: web.Server | None = None
        self._closed = False

    @property
    def app(self) -> web.Application:
        """The application served."""
        return self._app

    async def start(self) -> None:
        """Run the application's startup hooks and build its connection handler."""
        if self._closed:
            raise BridgeError("the HTTP bridge is closed; build a new one")
        if self._server is None:
            await self._runner.setup()
            self._server = self._runner.server

    async def close(self) -> None:
        """Close every HTTP connection and run the application's cleanup hooks."""
        if self._closed:
            return
        self._closed = True
        if self._server is not None:
            await self._runner.cleanup()
            self._server = None

    def connection(self, session: SessionInfo) -> asyncio.Protocol:
        """Return aiohttp's protocol for one connection of ``session``.

        The caller then calls ``connection_made(transport)`` and forwards
        ``data_received``; the session is registered until ``connection_lost``.
        """
        if self._server is None:
            raise BridgeError("the HTTP bridge is not started (await start() first)")
        handler = self._server()
        return _SessionHandler(handler, session, self._app[SESSIONS], self._app[CONNECTIONS])


class _TailForwarder:
    """Takes the bytes aiohttp read past an upgrade request's head (aiohttp's
    ``set_parser`` hands them over), for the protocol that took the connection."""

    def __init__(self, protocol: asyncio.Protocol) -> None:
        self._protocol = protocol

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        self._protocol.data_received(data)
        return False, b""

    def feed_eof(self) -> None:
        """The end of the connection reaches the protocol through connection_lost."""


class _SessionHandler(asyncio.Protocol):
    """aiohttp's ``RequestHandler`` plus the session registry entry of its connection.

    After :meth:`switch`, the transport's callbacks go to the new protocol; aiohttp
    only hears of the connection's end (its handler task is then cancelled).
    """

    def __init__(
        self,
        handler: RequestHandler,
        session: SessionInfo,
        registry: dict[RequestHandler, SessionInfo],
        connections: dict[RequestHandler, _SessionHandler],
    ) -> None:
        self._handler = handler
        self._session = session
        self._registry = registry
        self._connections = connections
        self._transport: asyncio.Transport | None = None
        self._switched: asyncio.Protocol | None = None
        self._ended: asyncio.Future[None] | None = None
        self._paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._registry[self._handler] = self._session
        self._connections[self._handler] = self
        self._handler.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._switched is not None:
            self._switched.data_received(data)
        else:
            self._handler.data_received(data)

    def eof_received(self) -> bool | None:
        if self._switched is not None:
            return self._switched.eof_received()
        self._handler.eof_received()
        return None

    def pause_writing(self) -> None:
        self._paused = True
        if self._switched is not None:
            self._switched.pause_writing()
        else:
            self._handler.pause_writing()

    def resume_writing(self) -> None:
        self._paused = False
        if self._switched is not None:
            self._switched.resume_writing()
        else:
            self._handler.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._registry.pop(self._handler, None)
        self._connections.pop(self._handler, None)
        self._handler.connection_lost(exc)
        if self._switched is not None:
            self._switched.connection_lost(exc)
        if self._ended is not None and not self._ended.done():
            self._ended.set_result(None)

    def switch(self, protocol: asyncio.Protocol, head: bytes) -> asyncio.Future[None]:
        """Give the connection to ``protocol``, first feeding it ``head`` (see :func:`take_over`)."""
        if self._switched is not None or self._transport is None:
            raise BridgeError("this connection was already handed over, or is closed")
        self._switched = protocol
        self._ended = asyncio.get_running_loop().create_future()
        protocol.connection_made(self._transport)
        if self._paused:
            protocol.pause_writing()
        protocol.data_received(head)
        # A client that did not wait for the answer may have sent more: aiohttp holds
        # those bytes after an upgrade request and gives them to a parser set here.
        self._handler.set_parser(_TailForwarder(protocol))  # type: ignore[arg-type]
        return self._ended


def take_over(
    request: web.BaseRequest, protocol: asyncio.Protocol, head: bytes
) -> asyncio.Future[None]:
    """Switch the connection of ``request`` to ``protocol``, fed ``head`` first.

    For a protocol switch on a later request of a keep-alive connection (a
    WebSocket upgrade): ``head`` is the request head as the new protocol should
    read it. The handler must then await the returned future, which is done when
    the connection ends, and not answer the request itself (aiohttp cancels the
    handler at that end). Raises :class:`BridgeError` for a request that did not
    come through the bridge.
    """
    connections = request.app[CONNECTIONS] if isinstance(request, web.Request) else {}
    connection = connections.get(request.protocol)
    if connection is None:
        raise BridgeError("request did not come through the bridge")
    return connection.switch(protocol, head)


def session_of(request: web.BaseRequest) -> SessionInfo:
    """Return the authenticated device behind ``request``.

    Raises :class:`BridgeError` when the request did not come through the bridge
    (nor over a transport carrying ``edgesim.session``).
    """
    registry = request.app[SESSIONS] if isinstance(request, web.Request) else {}
    session = registry.get(request.protocol)
    if session is None and request.transport is not None:
        session = request.transport.get_extra_info("edgesim.session")
    if not isinstance(session, SessionInfo):
        raise BridgeError("request without an authenticated session")
    return session
