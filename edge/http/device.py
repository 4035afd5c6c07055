"""The device HTTPS API and the WebSocket endpoints on the same port.

Devices authenticate with their client certificate (the TLS layer's
:class:`~edge.core.session.SessionInfo`); the policy of the core decides, as for
MQTT. The HTTP API, as an aiohttp application:

``POST /topics/{topic}?qos=0|1&retain=true|false``
    Publish the request body (as AWS IoT's HTTPS publish does). ``200`` with
    ``{"topic", "qos", "retain", "delivered", "message_id"}``. Headers give the
    message MQTT 5 metadata, which MQTT 5 subscribers receive as properties:
    ``Content-Type`` (except the defaults clients add by themselves,
    ``application/octet-stream`` and ``application/x-www-form-urlencoded``),
    ``Message-Expiry`` (seconds), ``Response-Topic``,
    ``Correlation-Data`` (base64) and ``MQTT-User-Property: key=value``
    (repeatable, order kept); a malformed one is a ``400``. Reads give them back:
    the same headers on ``GET /topics/{topic}``, the ``/ws`` field names
    (``content_type``, ``user_properties``, ...) in SSE ``data``; an expired
    message is not returned.
``GET /topics/{topic}``
    The retained message of the topic: ``200`` with the payload as
    ``application/octet-stream`` and headers ``X-Edgesim-QoS``,
    ``X-Edgesim-Retain``, ``X-Edgesim-Topic``; ``404`` when there is none.
``GET /subscribe?topic=FILTER[&topic=FILTER...]``
    Server-Sent Events until the device disconnects: a comment line
    ``: subscribed`` once the subscriptions are in place, then for each message
    ``id: N`` / ``event: message`` / ``data: {"topic", "payload", "encoding",
    "qos", "retain"}`` where ``encoding`` is ``utf-8`` or ``base64``. A device
    that does not read ends with ``event: error``. Deliveries are at most once.

Topics travel percent-encoded in the path (``/topics/a%2Fb`` and ``/topics/a/b``
are the same topic). Errors are ``application/problem+json`` (RFC 9457):
``400`` bad topic or query, ``403`` policy denial (``detail`` is the reason),
``404`` unknown path or no retained message, ``405`` wrong method, ``413`` body
over the limit. Every refused request is an ``http.request`` event with
``status`` and ``reason``.

WebSocket upgrades to ``/mqtt`` (MQTT over WebSocket, subprotocol ``mqtt``) and
``/ws`` (the JSON protocol of :mod:`edge.ws.jsonproto`) are recognised from the
first request head of a connection and handed to :mod:`edge.ws`; everything
else goes to aiohttp through :mod:`edge.http.bridge`. An upgrade on a later
request of a keep-alive connection reaches aiohttp, whose first middleware hands
the connection to :mod:`edge.ws` the same way (:func:`edge.http.bridge.take_over`).

Errors (the root, ``HttpEdgeError``, is in :mod:`edge.http.bridge`)::

    HttpEdgeError
    └── DeviceApiError      the device API's errors
        └── Problem         one refused request: status, title, detail
                            (turned into a problem+json response at the boundary;
                            aiohttp's own HTTPException 4xx are translated too)
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import logging
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from edge.core.events import EventLog
from edge.core.hub import EdgeCore
from edge.core.router import Message, Metadata
from edge.core.session import SessionInfo
from edge.http.bridge import AiohttpBridge, BridgeError, HttpEdgeError, session_of, take_over
from edge.ws.coreops import check_read, publish_bytes
from edge.ws.endpoint import WebSocketConnection, WsRoute, WsSender
from edge.ws.jsonapp import JsonWsApp
from edge.ws.jsonproto import (
    CLOSE_GOING_AWAY,
    MAX_TOPIC_BYTES,
    check_topic_filter,
    check_topic_name,
    encode_payload,
    metadata_fields,
)
from edge.ws.mqtt import BrokerLike, mqtt_ws_factory

__all__ = [
    "DeviceApiConfig",
    "DeviceApiError",
    "DeviceConnection",
    "DeviceFrontend",
    "Problem",
    "build_device_app",
    "make_device_protocol_factory",
]

log = logging.getLogger("edgesim.http")

PROBLEM_JSON = "application/problem+json"


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceApiConfig:
    """Limits of the device HTTPS API and its WebSocket endpoints."""

    #: Largest publish body (AWS IoT's message limit is 128 KiB).
    max_body_bytes: int = 128 * 1024
    #: Longest topic, in bytes of UTF-8 (MQTT's own limit by default).
    max_topic_bytes: int = MAX_TOPIC_BYTES
    #: Messages an SSE stream or a /ws connection may have unsent before it is closed.
    max_queue: int = 1000
    #: Largest WebSocket message (a 128 KiB payload in base64 JSON fits).
    ws_max_message_bytes: int = 256 * 1024
    #: Largest first request head before the connection is handed to aiohttp as is.
    max_request_head: int = 16 * 1024
    #: Seconds a new connection may take to send its whole first request head
    #: (not reset by each byte: a slowloris head is cut off at this time).
    request_head_timeout: float = 30.0
    #: Seconds an HTTP keep-alive connection may stay idle between requests
    #: (aiohttp's own default is an hour).
    keepalive_timeout: float = 75.0
    #: Seconds a WebSocket closing handshake may take.
    ws_close_timeout: float = 5.0
    #: Seconds aiohttp waits for requests in flight when the frontend closes.
    shutdown_timeout: float = 5.0


class DeviceApiError(HttpEdgeError):
    """Root of the device API's errors."""


class Problem(DeviceApiError):
    """One refused request, answered as ``application/problem+json``."""

    def __init__(self, status: int, title: str, detail: str, **extra: Any) -> None:
        super().__init__(f"{status} {title}: {detail}")
        self.status = status
        self.title = title
        self.detail = detail
        self.extra = extra


# --- the aiohttp application --------------------------------------------------------

CORE = web.AppKey("edgesim_core", EdgeCore)
EVENTS = web.AppKey("edgesim_events", EventLog)
CONFIG = web.AppKey("edgesim_device_config", DeviceApiConfig)
STREAMS: web.AppKey[set[SseSubscriber]] = web.AppKey("edgesim_sse_streams")
#: ``connect(session) -> WebSocketConnection``: set by :class:`DeviceFrontend` so that an
#: upgrade on a later request of a keep-alive connection is served like a first one.
WS_CONNECT: web.AppKey[Callable[[SessionInfo], WebSocketConnection]] = web.AppKey(
    "edgesim_ws_connect"
)

_message_ids = itertools.count(1)


def build_device_app(
    core: EdgeCore, events: EventLog, config: DeviceApiConfig | None = None
) -> web.Application:
    """Build the device HTTP API as an aiohttp application (see the module docstring)."""
    app = web.Application(middlewares=[_websocket_middleware, _problem_middleware])
    app[CORE] = core
    app[EVENTS] = events
    app[CONFIG] = config or DeviceApiConfig()
    app[STREAMS] = set()
    app.router.add_route("POST", "/topics/{topic:.+}", _publish)
    app.router.add_route("GET", "/topics/{topic:.+}", _get_retained)
    app.router.add_route("GET", "/subscribe", _subscribe)
    app.router.add_route("GET", "/mqtt", _upgrade_required)
    app.router.add_route("GET", "/ws", _upgrade_required)
    app.on_shutdown.append(_end_streams)
    return app


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _websocket_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A WebSocket upgrade on a later request of a connection: hand it to edge.ws.

    The first request of a connection never gets here when it is an upgrade
    (:class:`DeviceConnection` sees it first). Any path goes, as there: the
    WebSocket layer answers 404 for one it does not serve.
    """
    connect = request.app.get(WS_CONNECT)
    if connect is None or not _is_websocket_upgrade(_request_head(request)):
        return await handler(request)
    connection = connect(session_of(request))
    # Done when the connection ends; aiohttp cancels this handler then, and the
    # WebSocket layer has written every byte of the answer itself.
    await take_over(request, connection, _request_head(request))
    raise ConnectionResetError("the WebSocket connection ended")


def _request_head(request: web.BaseRequest) -> bytes:
    """The request head as it came (method, target, headers in their order and case)."""
    version = request.version
    lines = [f"{request.method} {request.raw_path} HTTP/{version.major}.{version.minor}".encode()]
    lines.extend(name + b": " + value for name, value in request.raw_headers)
    return b"\r\n".join(lines) + b"\r\n\r\n"


@web.middleware
async def _problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Translate refusals (ours and aiohttp's) into problem+json and ``http.request`` events."""
    try:
        return await handler(request)
    except Problem as exc:
        problem = exc
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        detail = {
            404: f"no resource at {request.path}",
            405: f"{request.method} is not allowed on {request.path}",
        }.get(exc.status, exc.text or exc.reason)
        problem = Problem(exc.status, exc.reason, detail)
        if exc.status == 405:
            problem.extra["allow"] = exc.headers.get("Allow", "")
    return _problem_response(request, problem)


def _problem_response(request: web.Request, problem: Problem) -> web.Response:
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": problem.title,
        "status": problem.status,
        "detail": problem.detail,
        "instance": request.path,
        **problem.extra,
    }
    headers = {}
    if problem.status == 405 and problem.extra.get("allow"):
        headers["Allow"] = str(problem.extra["allow"])
    try:
        session: SessionInfo | None = session_of(request)
    except BridgeError:
        session = None
    request.app[EVENTS].emit(
        "http.request",
        "denied" if problem.status == 403 else "refused",
        identity=str(session.identity) if session else None,
        peer=session.peer if session else request.remote,
        method=request.method,
        path=request.path,
        status=problem.status,
        reason=problem.detail,
        topic=problem.extra.get("topic"),
    )
    return web.Response(
        status=problem.status,
        text=json.dumps(body),
        content_type=PROBLEM_JSON,
        headers=headers,
    )


def _topic_from_path(request: web.Request, prefix: str = "/topics/") -> str:
    """Decode the topic from the raw path, strictly (invalid UTF-8 is a 400, not U+FFFD)."""
    config = request.app[CONFIG]
    raw = request.raw_path.split("?", 1)[0]
    encoded = raw[len(prefix) :]
    try:
        topic = urllib.parse.unquote_to_bytes(encoded).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Problem(
            400, "Bad topic", f"the topic is not valid UTF-8 (byte {exc.start} of the path)"
        ) from None
    reason = check_topic_name(topic, config.max_topic_bytes)
    if reason is not None:
        raise Problem(400, "Bad topic", reason, topic=topic)
    return topic


def _query_choice(request: web.Request, name: str, choices: dict[str, Any], default: Any) -> Any:
    values = request.query.getall(name, [])
    if not values:
        return default
    if len(values) > 1:
        raise Problem(400, "Bad query", f"{name} is given {len(values)} times")
    value = values[0].lower()
    if value not in choices:
        allowed = "|".join(choices)
        raise Problem(400, "Bad query", f"{name} must be {allowed}, not {values[0]!r}")
    return choices[value]


#: Content types HTTP clients add on their own (aiohttp and requests for bytes, curl
#: -d): they say nothing about the payload, so they do not become its Content Type.
_DEFAULT_TYPES = frozenset({"application/octet-stream", "application/x-www-form-urlencoded"})


def _metadata(request: web.Request) -> Metadata | None:
    """The MQTT 5 metadata the publish headers give (see the module docstring)."""
    headers = request.headers
    content_type = headers.get("Content-Type")
    if content_type in _DEFAULT_TYPES:
        # What HTTP clients send when nobody chose a type: not a content type to keep.
        content_type = None
    expiry = headers.get("Message-Expiry")
    response_topic = headers.get("Response-Topic")
    correlation = headers.get("Correlation-Data")
    user = headers.getall("MQTT-User-Property", [])
    given = (content_type, expiry, response_topic, correlation)
    if not user and all(value is None for value in given):
        return None
    meta = Metadata(content_type=content_type, response_topic=response_topic)
    if expiry is not None:
        if not expiry.isdigit() or not 0 < int(expiry) < 1 << 32:
            raise Problem(400, "Bad header", f"Message-Expiry {expiry!r}: seconds, 1 to 2^32-1")
        meta.expires_at = time.monotonic() + int(expiry)
    if response_topic is not None and (
        not response_topic or "+" in response_topic or "#" in response_topic
    ):
        raise Problem(400, "Bad header", f"Response-Topic {response_topic!r} is not a topic name")
    if correlation is not None:
        try:
            meta.correlation_data = base64.b64decode(correlation, validate=True)
        except ValueError:
            raise Problem(400, "Bad header", "Correlation-Data must be base64") from None
    for item in user:
        key, sep, value = item.partition("=")
        if not sep:
            raise Problem(400, "Bad header", f"MQTT-User-Property {item!r}: expected key=value")
        meta.user_properties.append((key.strip(), value.strip()))
    return meta


async def _publish(request: web.Request) -> web.Response:
    """``POST /topics/{topic}``: publish the body."""
    session = session_of(request)
    config = request.app[CONFIG]
    topic = _topic_from_path(request)
    qos = _query_choice(request, "qos", {"0": 0, "1": 1}, 0)
    retain = _query_choice(
        request, "retain", {"true": True, "false": False, "1": True, "0": False}, False
    )
    limit = config.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise Problem(
            413, "Payload too large", f"the body is {request.content_length} bytes, over {limit}"
        )
    body = bytearray()
    # Chunked bodies have no Content-Length: count while reading.
    async for chunk in request.content.iter_chunked(64 * 1024):
        body += chunk
        if len(body) > limit:
            raise Problem(413, "Payload too large", f"the body is over {limit} bytes")
    result = publish_bytes(
        request.app[CORE],
        session,
        topic,
        bytes(body),
        qos=qos,
        retain=retain,
        protocol="http",
        meta=_metadata(request),
    )
    if not result.allowed:
        raise Problem(403, "Forbidden", result.reason or "refused by policy", topic=topic)
    return web.json_response(
        {
            "topic": topic,
            "qos": qos,
            "retain": retain,
            "delivered": result.delivered,
            "message_id": next(_message_ids),
        }
    )


async def _get_retained(request: web.Request) -> web.Response:
    """``GET /topics/{topic}``: the retained message."""
    session = session_of(request)
    topic = _topic_from_path(request)
    core = request.app[CORE]
    denied = check_read(core, session, topic)
    if denied is not None:
        raise Problem(403, "Forbidden", denied, topic=topic)
    now = time.monotonic()
    core.purge_expired(now)  # an expired message is dropped from the store, not returned
    message = core.retained(topic)
    if message is None:
        raise Problem(404, "No retained message", f"no retained message on {topic}", topic=topic)
    content_type = "application/octet-stream"
    # A list, not a dict: MQTT-User-Property repeats.
    headers = [
        ("X-Edgesim-Topic", urllib.parse.quote(message.topic, safe="/")),
        ("X-Edgesim-QoS", str(message.qos)),
        ("X-Edgesim-Retain", "true"),
    ]
    meta = message.meta
    if meta is not None:
        # The publish headers, given back (see the module docstring).
        fields = metadata_fields(meta, now)
        content_type = fields.pop("content_type", content_type)
        for name, header in _META_HEADERS:
            if name in fields:
                headers.append((header, str(fields[name])))
        for key, value in meta.user_properties:
            headers.append(("MQTT-User-Property", f"{key}={value}"))
    headers.append(("Content-Type", content_type))
    return web.Response(body=message.payload, headers=headers)


#: Metadata field -> the HTTP header that carries it (both ways).
_META_HEADERS = (
    ("message_expiry", "Message-Expiry"),
    ("response_topic", "Response-Topic"),
    ("correlation_data", "Correlation-Data"),
)


async def _upgrade_required(request: web.Request) -> web.Response:
    """``/mqtt`` and ``/ws`` without a WebSocket upgrade."""
    raise Problem(
        426,
        "Upgrade required",
        f"{request.path} is a WebSocket endpoint: send Upgrade: websocket and Connection: Upgrade",
    )


class SseSubscriber:
    """One ``GET /subscribe`` stream as the router's subscriber: a bounded queue."""

    def __init__(self, session: SessionInfo, max_queue: int) -> None:
        self._session = session
        self.subscriber_id = f"sse:{session.connection_id}:{next(_message_ids)}"
        self._queue: asyncio.Queue[tuple[Message, bool] | str] = asyncio.Queue()
        self._max = max_queue
        self._ended = False

    def deliver(self, message: Message, qos: int, retained: bool) -> None:
        """Queue the message; past the limit, end the stream (the device is too slow)."""
        if self._ended:
            return
        if self._queue.qsize() >= self._max:
            self.end(f"client too slow: more than {self._max} messages unsent")
            return
        self._queue.put_nowait((message, retained))
        self._session.messages_out += 1

    def end(self, reason: str) -> None:
        """End the stream with an ``error`` event carrying ``reason``."""
        if not self._ended:
            self._ended = True
            self._queue.put_nowait(reason)

    async def next(self) -> tuple[Message, bool] | str:
        """The next message, or the reason the stream ends."""
        return await self._queue.get()


async def _subscribe(request: web.Request) -> web.StreamResponse:
    """``GET /subscribe?topic=F``: Server-Sent Events until the device goes away."""
    session = session_of(request)
    config = request.app[CONFIG]
    core = request.app[CORE]
    filters = request.query.getall("topic", [])
    if not filters:
        raise Problem(400, "Bad query", "topic is required (a topic filter)")
    for topic_filter in filters:
        reason = check_topic_filter(topic_filter, config.max_topic_bytes)
        if reason is not None:
            raise Problem(400, "Bad topic", reason, topic=topic_filter)
    subscriber = SseSubscriber(session, config.max_queue)
    events = request.app[EVENTS]
    subscribed: list[str] = []
    ended = "device disconnected"
    try:
        for topic_filter in filters:
            granted = core.subscribe(subscriber, topic_filter, 0, session)
            if granted is None:
                raise Problem(
                    403,
                    "Forbidden",
                    f"not authorized to subscribe to {topic_filter}",
                    topic=topic_filter,
                )
            subscribed.append(topic_filter)
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        await response.prepare(request)
        await response.write(f": subscribed {' '.join(filters)}\n\n".encode())
        events.emit(
            "http.subscribed",
            "accepted",
            identity=str(session.identity),
            peer=session.peer,
            topics=list(filters),
            connection_id=session.connection_id,
        )
        streams = request.app[STREAMS]
        streams.add(subscriber)
        try:
            ended = await _pump(response, subscriber)
        finally:
            streams.discard(subscriber)
        return response
    finally:
        for topic_filter in subscribed:
            core.unsubscribe(subscriber, topic_filter)
        if subscribed:
            events.emit(
                "http.stream_closed",
                "closed",
                identity=str(session.identity),
                peer=session.peer,
                topics=subscribed,
                reason=ended,
                connection_id=session.connection_id,
            )


async def _pump(response: web.StreamResponse, subscriber: SseSubscriber) -> str:
    """Write messages until the subscriber ends; return why it ended."""
    sequence = 0
    while True:
        item = await subscriber.next()
        if isinstance(item, str):
            await response.write(f"event: error\ndata: {json.dumps({'reason': item})}\n\n".encode())
            return item
        message, retained = item
        sequence += 1
        await response.write(_sse_event(message, retained, sequence))


def _sse_event(message: Message, retained: bool, sequence: int) -> bytes:
    text, encoding = encode_payload(message.payload)
    obj: dict[str, Any] = {
        "topic": message.topic,
        "payload": text,
        "encoding": encoding,
        "qos": 0,
        "retain": retained,
    }
    if message.meta is not None:
        obj.update(metadata_fields(message.meta, time.monotonic()))
    data = json.dumps(obj, separators=(",", ":"))
    return f"id: {sequence}\nevent: message\ndata: {data}\n\n".encode()


async def _end_streams(app: web.Application) -> None:
    """On shutdown, end every SSE stream so that aiohttp need not wait for them."""
    streams: set[SseSubscriber] = app[STREAMS]
    for subscriber in list(streams):
        subscriber.end("edge shutting down")


# --- one connection: WebSocket upgrade or HTTP --------------------------------------

#: ``factory(session, sender, subprotocol) -> WsApp`` for ``/mqtt`` (see :mod:`edge.ws.mqtt`).
MqttWsFactory = Callable[[SessionInfo, WsSender, str | None], Any]


class DeviceConnection(asyncio.Protocol):
    """One device connection on the HTTPS port.

    Reads until the first request head is complete; a WebSocket upgrade goes to
    :class:`~edge.ws.endpoint.WebSocketConnection`, anything else to aiohttp. From
    then on this object only forwards the transport's callbacks.
    """

    def __init__(self, frontend: DeviceFrontend, session: SessionInfo) -> None:
        self._frontend = frontend
        self._session = session
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._inner: asyncio.Protocol | None = None
        self._paused = False
        self._timer: asyncio.TimerHandle | None = None

    @property
    def inner(self) -> asyncio.Protocol | None:
        """The protocol the connection was handed to (``None`` while reading the head)."""
        return self._inner

    @property
    def protocol_name(self) -> str:
        """``ws`` or ``mqtt-ws`` once upgraded to a WebSocket, else ``http``."""
        inner = self._inner
        if isinstance(inner, WebSocketConnection):
            return inner.protocol_name
        return "http"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport until the first request head decides."""
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._frontend._connections.add(self)
        timeout = self._frontend.config.request_head_timeout
        self._timer = asyncio.get_running_loop().call_later(timeout, self._head_timeout)

    def _head_timeout(self) -> None:
        # aiohttp's own idle limit starts only once it has the connection; until
        # then a device that sends nothing would hold it for ever.
        self._timer = None
        if self._inner is None and self._transport is not None:
            self._frontend.events.emit(
                "http.request",
                "refused",
                identity=str(self._session.identity),
                peer=self._session.peer,
                status=408,
                reason=f"no complete request head within "
                f"{self._frontend.config.request_head_timeout:g} s",
            )
            self._transport.close()

    def data_received(self, data: bytes) -> None:
        """Forward, or buffer until the first request head is complete."""
        if self._inner is not None:
            self._inner.data_received(data)
            return
        self._buffer += data
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            # A head with bare-LF line endings ends at an empty line too: aiohttp
            # answers it (400, or the request when its parser accepts it). Waiting
            # for a CRLF that never comes would hold the connection until the
            # head timeout with no answer at all.
            end = self._buffer.find(b"\n\n")
        if end < 0 and len(self._buffer) <= self._frontend.config.max_request_head:
            return
        head = bytes(self._buffer[: end if end >= 0 else len(self._buffer)])
        if _is_websocket_upgrade(head):
            inner: asyncio.Protocol = self._frontend.websocket_connection(self._session)
        else:
            inner = self._frontend.bridge.connection(self._session)
        self._hand_over(inner)

    def _hand_over(self, inner: asyncio.Protocol) -> None:
        transport = self._transport
        assert transport is not None
        self._cancel_timer()
        self._inner = inner
        inner.connection_made(transport)
        if self._paused:
            inner.pause_writing()
        data = bytes(self._buffer)
        self._buffer.clear()
        inner.data_received(data)

    def eof_received(self) -> bool | None:
        """Forward EOF; before the head is complete, EOF ends the connection."""
        if self._inner is not None:
            return self._inner.eof_received()
        return None

    def pause_writing(self) -> None:
        """Forward flow control."""
        self._paused = True
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        """Forward flow control."""
        self._paused = False
        if self._inner is not None:
            self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        """Forward the loss."""
        self._cancel_timer()
        self._frontend._connections.discard(self)
        if self._inner is not None:
            self._inner.connection_lost(exc)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def close(self) -> None:
        """Close the connection: WebSockets with 1001 (going away), others at once."""
        inner = self._inner
        if isinstance(inner, WebSocketConnection) and inner.is_open:
            inner.fail(CLOSE_GOING_AWAY, "edge shutting down")
        elif inner is None and self._transport is not None:
            self._transport.close()


def _is_websocket_upgrade(head: bytes) -> bool:
    """True if the request head asks for ``Upgrade: websocket`` (RFC 6455 section 4.1)."""
    lines = head.split(b"\r\n")
    if not lines or not lines[0].startswith(b"GET "):
        return False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"upgrade" and b"websocket" in value.lower():
            return True
    return False


class DeviceFrontend:
    """The HTTPS port's device side: the HTTP API, ``/mqtt`` and ``/ws``.

    Lifecycle: ``await start()``, then use :meth:`protocol_factory` (or the
    frontend itself, which is callable the same way) as the TLS listener's
    ``factory(session) -> asyncio.Protocol``, then ``await close()``.
    ``mqtt_ws`` builds the ``/mqtt`` application; without it ``/mqtt`` is a 404.
    """

    def __init__(
        self,
        core: EdgeCore,
        events: EventLog,
        config: DeviceApiConfig | None = None,
        *,
        mqtt_ws: MqttWsFactory | None = None,
    ) -> None:
        self.core = core
        self.events = events
        self.config = config or DeviceApiConfig()
        self.app = build_device_app(core, events, self.config)
        self.app[WS_CONNECT] = self.websocket_connection
        self.bridge = AiohttpBridge(
            self.app,
            shutdown_timeout=self.config.shutdown_timeout,
            keepalive_timeout=self.config.keepalive_timeout,
        )
        self._connections: set[DeviceConnection] = set()
        routes = {
            "/ws": WsRoute(name="ws", app=self._json_app),
        }
        if mqtt_ws is not None:
            routes["/mqtt"] = WsRoute(
                name="mqtt", app=mqtt_ws, subprotocols=("mqtt", "mqttv3.1"), streaming=True
            )
        self._routes = routes

    @property
    def open_connections(self) -> int:
        """Connections currently open on this frontend (HTTP and WebSocket)."""
        return len(self._connections)

    async def start(self) -> None:
        """Start the HTTP application (its startup hooks)."""
        await self.bridge.start()

    async def close(self) -> None:
        """Close WebSockets with 1001, end SSE streams, close HTTP connections."""
        for connection in list(self._connections):
            connection.close()
        await self.bridge.close()

    async def __aenter__(self) -> DeviceFrontend:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def protocol_factory(self, session: SessionInfo) -> asyncio.Protocol:
        """The TLS listener's ``factory(session) -> asyncio.Protocol``."""
        return DeviceConnection(self, session)

    __call__ = protocol_factory

    def add_ws_route(self, path: str, route: WsRoute) -> None:
        """Serve ``route`` at ``path`` too (tests: the Autobahn echo; embedders: their apps).

        Refuses the paths the edge serves itself, so ``/mqtt`` and ``/ws`` stay theirs.
        """
        if not path.startswith("/"):
            raise ValueError(f"a WebSocket path starts with '/', got {path!r}")
        if path in self._routes or path in ("/mqtt", "/ws"):
            raise ValueError(f"the WebSocket path {path} is taken")
        self._routes[path] = route

    def websocket_connection(self, session: SessionInfo) -> WebSocketConnection:
        """A WebSocket connection serving this frontend's paths."""
        return WebSocketConnection(
            session,
            self._routes,
            events=self.events,
            max_size=self.config.ws_max_message_bytes,
            close_timeout=self.config.ws_close_timeout,
        )

    def _json_app(
        self, session: SessionInfo, sender: WsSender, subprotocol: str | None
    ) -> JsonWsApp:
        return JsonWsApp(
            self.core,
            session,
            sender,
            events=self.events,
            max_queue=self.config.max_queue,
            max_topic_bytes=self.config.max_topic_bytes,
        )


def make_device_protocol_factory(
    core: EdgeCore,
    broker: BrokerLike | None,
    config: DeviceApiConfig | None = None,
    *,
    events: EventLog | None = None,
) -> DeviceFrontend:
    """Build the HTTPS listener's protocol factory (a :class:`DeviceFrontend`).

    ``await factory.start()`` before the listener accepts and ``await
    factory.close()`` when it stops; between the two, ``factory(session)`` returns
    the protocol for one connection. ``broker`` (an ``edge.mqtt.broker.MqttBroker``)
    serves ``/mqtt``; ``events`` defaults to the core's event log.
    """
    log_ = events if events is not None else getattr(core, "events", None)
    if not isinstance(log_, EventLog):
        raise TypeError("an EventLog is needed: pass events= or a core with .events")
    mqtt_ws = None
    if broker is not None:
        mqtt_ws = mqtt_ws_factory(broker)
    return DeviceFrontend(core, log_, config, mqtt_ws=mqtt_ws)
