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

__all__ = ["SESSIONS", "AiohttpBridge", "BridgeError", "HttpEdgeError", "session_of"]

#: Per-connection sessions of one application: aiohttp's connection protocol -> session.
SESSIONS = web.AppKey("edgesim_sessions", dict[RequestHandler, SessionInfo])


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
        return _SessionHandler(handler, session, self._app[SESSIONS])


class _SessionHandler(asyncio.Protocol):
    """aiohttp's ``RequestHandler`` plus the session registry entry of its connection."""

    def __init__(
        self,
        handler: RequestHandler,
        session: SessionInfo,
        registry: dict[RequestHandler, SessionInfo],
    ) -> None:
        self._handler = handler
        self._session = session
        self._registry = registry

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._registry[self._handler] = self._session
        self._handler.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self._handler.data_received(data)

    def eof_received(self) -> bool | None:
        self._handler.eof_received()
        return None

    def pause_writing(self) -> None:
        self._handler.pause_writing()

    def resume_writing(self) -> None:
        self._handler.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._registry.pop(self._handler, None)
        self._handler.connection_lost(exc)


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
