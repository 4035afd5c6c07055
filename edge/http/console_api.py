"""The admin API's live parts and the web console's files.

Handlers :mod:`edge.http.admin` mounts next to its certificate-set routes (and
:mod:`edge.http.openapi` describes):

- ``GET /v1/events/stream``: the event log as Server-Sent Events, with the same
  filters as ``/v1/events`` (and ``kind`` may list several, comma-separated);
  resumes from ``since`` or ``Last-Event-ID``; ``since=now`` sends live events only.
  The console's device and certificate-set views refresh on these events instead
  of polling.
- ``GET /v1/devices``, ``POST /v1/devices/{connection_id}/disconnect``: the
  connected devices, and closing one (an MQTT client through the broker's
  ``disconnect_devices``: MQTT 5 gets DISCONNECT 0x98, "administrative action").
- ``POST /v1/publish``, ``GET /v1/topics/stream?filter=``: publish a test message
  through the core, and watch the messages matching a filter (SSE).
- ``GET /metrics``: Prometheus text or OpenMetrics (:mod:`edge.http.metrics_export`).
- ``GET /ui/...``: the console's static files (``edge/http/console/``).

The live routes need the running edge (``EDGE_KEY``); an admin app built
without one answers them with 503. The console's files carry no data and are
served without the token (a browser cannot send a header on navigation); every
call the console makes sends ``Authorization: Bearer``. That header, never a
cookie, is the only credential, so another site cannot make a browser send an
authenticated request (no CSRF), and responses are the API's JSON, which the
console inserts with ``textContent`` only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from importlib import resources
from typing import Any

from aiohttp import web
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import CollectorRegistry

from edge.core.events import Event, EventLog
from edge.core.router import Message
from edge.core.topics import valid_name
from edge.http.metrics_export import protocol_of, registry_for
from edge.ws.jsonproto import MAX_TOPIC_BYTES

__all__ = [
    "ADMIN_KEY",
    "CONSOLE_FILES",
    "EDGE_KEY",
    "METRICS_AUTH_KEY",
    "ROUTES",
    "STREAMS_KEY",
    "install",
]

#: On each authenticated request: how the admin was recognised (``token``, or
#: ``certificate <subject>``); set by the admin API's auth middleware.
ADMIN_KEY = web.RequestKey("admin", str)
#: The running :class:`~edge.server.EdgeServer`, when there is one.
EDGE_KEY = web.AppKey("edge", object)
#: Whether ``/metrics`` needs the token (scrapers on loopback often send none).
METRICS_AUTH_KEY = web.AppKey("metrics_auth", bool)
#: Open SSE responses' tasks, cancelled when the admin app shuts down (a stream
#: never ends by itself, and aiohttp would otherwise wait for it).
STREAMS_KEY: web.AppKey[_Streams] = web.AppKey("streams")
_REGISTRY_KEY = web.AppKey("metrics_registry", CollectorRegistry)
_EVENTS_KEY = web.AppKey("console_events", EventLog)

#: The console's files and their content types: nothing else under /ui is served.
CONSOLE_FILES = {
    "index.html": "text/html",
    "console.js": "text/javascript",
    "console.css": "text/css",
}
#: Only the console's own files, no inline script or style, no other origin.
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_KEEPALIVE = 15.0
#: Messages a topic stream buffers for a slow browser before dropping the newest.
_STREAM_QUEUE = 1000


class _Streams:
    """The tasks serving open SSE responses."""

    def __init__(self) -> None:
        self.tasks: set[asyncio.Task[Any]] = set()


def _edge(request: web.Request) -> Any:
    edge = request.app.get(EDGE_KEY)
    if edge is None or getattr(edge, "core", None) is None:
        raise web.HTTPServiceUnavailable(reason="no running edge behind this admin API")
    return edge


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        text=json.dumps(data, indent=1, default=str),
        status=status,
        content_type="application/json",
    )


async def _sse(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",
        }
    )
    await response.prepare(request)
    return response


async def _streaming(request: web.Request, body: Any) -> web.StreamResponse:
    """Run ``body`` as a tracked task, so that shutdown can end it."""
    task = asyncio.current_task()
    assert task is not None
    streams = request.app[STREAMS_KEY].tasks
    streams.add(task)
    try:
        result: web.StreamResponse = await body
        return result
    finally:
        streams.discard(task)


# -- events ------------------------------------------------------------------------


def _event_filter(request: web.Request) -> dict[str, str | None]:
    q = request.query
    return {
        "kind": q.get("kind") or None,
        "outcome": q.get("outcome") or None,
        "identity": q.get("identity") or None,
    }


def _since(request: web.Request, events: EventLog) -> int:
    raw = request.headers.get("Last-Event-ID") or request.query.get("since") or "0"
    if raw == "now":  # live events only, no history
        return events.last_id
    try:
        return max(0, int(raw))
    except ValueError:
        raise web.HTTPBadRequest(reason="since must be an event id or 'now'") from None


async def _events_stream(request: web.Request) -> web.StreamResponse:
    return await _streaming(request, _run_events_stream(request))


async def _run_events_stream(request: web.Request) -> web.StreamResponse:
    events = request.app[_EVENTS_KEY]
    filters = _event_filter(request)
    since = _since(request, events)
    loop = asyncio.get_running_loop()
    owner = threading.get_ident()
    queue: asyncio.Queue[Event] = asyncio.Queue(_STREAM_QUEUE)

    def put(event: Event) -> None:
        with contextlib.suppress(asyncio.QueueFull):  # a stalled browser misses events
            queue.put_nowait(event)

    def on_event(event: Event) -> None:
        # New events arrive through a listener, not by re-reading the ring (10,000
        # events) on every one: a fleet emits thousands per second.
        if not _matches(event, filters):
            return
        if threading.get_ident() == owner:
            put(event)
        else:  # emitted on another thread (the log allows it)
            loop.call_soon_threadsafe(put, event)

    remove = events.add_listener(on_event)
    try:
        response = await _sse(request)
        # Tells the browser the stream is open before the first event arrives.
        await response.write(b": open\n\n")
        kinds = filters["kind"]
        history = events.query(
            since=since,
            kind=kinds if kinds is None or "," not in kinds else None,
            outcome=filters["outcome"],
            identity=filters["identity"],
        )
        for event in history:
            if not _matches(event, filters):  # several kinds: filtered here
                continue
            await response.write(_frame(event["id"], event))
            since = event["id"]
        while True:
            try:
                event = await asyncio.wait_for(queue.get(), _KEEPALIVE)
            except TimeoutError:
                await response.write(b": keepalive\n\n")
                continue
            if event["id"] > since:  # not already sent as history
                await response.write(_frame(event["id"], event))
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        remove()
    return response


def _matches(event: Event, filters: dict[str, str | None]) -> bool:
    """The same filters as :meth:`EventLog.query` (``kind`` ending in ``.`` is a prefix),
    and ``kind`` may list several, separated by commas (``trust.,connection.closed``)."""
    kinds = filters["kind"]
    if kinds is not None:
        got = event["kind"]
        if not any(
            got == kind or (kind.endswith(".") and got.startswith(kind))
            for kind in kinds.split(",")
        ):
            return False
    outcome, identity = filters["outcome"], filters["identity"]
    if outcome is not None and event["outcome"] != outcome:
        return False
    return identity is None or event.get("identity") == identity


def _frame(event_id: int | None, data: Any) -> bytes:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}data: {json.dumps(data, default=str)}\n\n".encode()


# -- devices -----------------------------------------------------------------------


def _connections(edge: Any) -> list[Any]:
    return [
        proto
        for endpoint in list(edge.endpoints.values())
        for proto in list(endpoint.open_protocols)
        if proto.info is not None
    ]


def _application(proto: Any) -> Any:
    """The innermost application of a connection: through the HTTPS port's
    ``DeviceConnection`` and a WebSocket to the MQTT or ``/ws`` app behind it."""
    app = proto.app
    inner = getattr(app, "inner", None)
    if inner is not None:
        app = getattr(inner, "app", None) or inner
    return app


def _device(edge: Any, proto: Any) -> dict[str, Any]:
    info = proto.info
    protocol = protocol_of(proto)
    app = _application(proto)
    client_id = None
    subscriptions: dict[str, int] = {}
    mqtt_level = None
    router = edge.core.router
    conn = getattr(app, "connection", None)
    if conn is not None and hasattr(conn, "protocol_level"):  # MQTT, over TCP or WebSocket
        client_id = conn.client_id or None
        mqtt_level = conn.protocol_level
        session = conn.session
        if session is not None:
            subscriptions = router.subscriptions(session.subscriber_id)
    else:
        ws_session = getattr(app, "session", None)  # the /ws JSON protocol
        subscriber_id = getattr(ws_session, "subscriber_id", None)
        if isinstance(subscriber_id, str):
            subscriptions = router.subscriptions(subscriber_id)
    cert = info.certificate
    since = time.time() - (time.monotonic() - proto._started)
    return {
        "connection_id": info.connection_id,
        "identity": str(info.identity),
        "set": info.set_name,
        "version": info.set_version,
        "protocol": protocol,
        "mqtt_protocol_level": mqtt_level,
        "client_id": client_id,
        "peer": info.peer,
        "sni": info.sni,
        "tls_version": info.tls_version,
        "connected_since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(since)),
        "subscriptions": subscriptions,
        "messages_in": info.messages_in,
        "messages_out": info.messages_out,
        "bytes_in": proto.bytes_in,
        "bytes_out": proto.bytes_out,
        "certificate": cert.as_dict() if cert is not None else None,
    }


async def _devices(request: web.Request) -> web.Response:
    edge = _edge(request)
    devices = [_device(edge, proto) for proto in _connections(edge)]
    devices.sort(key=lambda d: d["connection_id"])
    return _json({"devices": devices})


async def _disconnect(request: web.Request) -> web.Response:
    edge = _edge(request)
    try:
        wanted = int(request.match_info["connection_id"])
    except ValueError:
        raise web.HTTPBadRequest(reason="connection_id must be a number") from None
    for proto in _connections(edge):
        if proto.info.connection_id != wanted:
            continue
        device = _device(edge, proto)
        reason = "disconnected by an administrator"
        broker = edge.broker
        if device["mqtt_protocol_level"] is not None and broker is not None:
            # The broker's administrative DISCONNECT: an MQTT 5 client hears why
            # (0x98 Administrative action, with the reason), and wills are published.
            broker.disconnect_devices(lambda info: info.connection_id == wanted, reason)
        else:
            proto.shutdown(reason)
        request.app[_EVENTS_KEY].emit(
            "admin.disconnected",
            "info",
            identity=device["identity"],
            peer=device["peer"],
            connection_id=wanted,
            reason=reason,
            admin=request.get(ADMIN_KEY, ""),
        )
        return _json({"ok": True, "device": device})
    raise web.HTTPNotFound(reason=f"no connected device with connection id {wanted}")


# -- topics ------------------------------------------------------------------------


async def _publish(request: web.Request) -> web.Response:
    edge = _edge(request)
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError):
        raise web.HTTPBadRequest(reason="the body must be JSON") from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(reason="the body must be a JSON object")
    topic = body.get("topic")
    payload = body.get("payload", "")
    qos = body.get("qos", 0)
    retain = body.get("retain", False)
    if not isinstance(topic, str) or not valid_name(topic) or not _utf8(topic):
        raise web.HTTPBadRequest(reason="topic must be a topic name (no wildcards, no NUL)")
    if len(topic.encode("utf-8")) > MAX_TOPIC_BYTES:
        raise web.HTTPBadRequest(reason=f"topic must be at most {MAX_TOPIC_BYTES} bytes of UTF-8")
    if not isinstance(payload, str) or not _utf8(payload):
        raise web.HTTPBadRequest(reason="payload must be a string (sent as UTF-8)")
    if isinstance(qos, float) and qos.is_integer():
        qos = int(qos)  # 1.0 is the integer 1 in JSON Schema
    if isinstance(qos, bool) or qos not in (0, 1, 2) or not isinstance(retain, bool):
        raise web.HTTPBadRequest(reason="qos must be 0, 1 or 2, retain a boolean")
    message = Message(
        topic,
        payload.encode(),
        qos=qos,
        retain=retain,
        origin="admin",
        protocol="internal",
        published_at=time.monotonic(),
    )
    result = edge.core.publish(message, None)
    return _json({"ok": result.allowed, "delivered": result.delivered, "reason": result.reason})


def _utf8(text: str) -> bool:
    """False for text UTF-8 cannot carry (JSON may hold lone surrogates like \\ud800)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class _Watcher:
    """A router subscriber that queues messages for one topic stream."""

    def __init__(self, name: str) -> None:
        self.subscriber_id = name
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(_STREAM_QUEUE)
        self.dropped = 0

    def deliver(self, message: Message, qos: int, retained: bool) -> None:
        try:
            self.queue.put_nowait(
                {
                    "topic": message.topic,
                    "payload": message.payload.decode("utf-8", "replace"),
                    "size": len(message.payload),
                    "qos": qos,
                    "retained": retained,
                    "origin": message.origin,
                    "protocol": message.protocol,
                    "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                }
            )
        except asyncio.QueueFull:
            self.dropped += 1


async def _topics_stream(request: web.Request) -> web.StreamResponse:
    return await _streaming(request, _run_topics_stream(request))


async def _run_topics_stream(request: web.Request) -> web.StreamResponse:
    edge = _edge(request)
    topic_filter = request.query.get("filter", "")
    if not topic_filter:
        raise web.HTTPBadRequest(reason="filter is required (for example devices/#)")
    watcher = _Watcher(f"admin:{id(request):x}")
    # The admin subscribes as the edge (no device session): policy does not apply.
    if edge.core.subscribe(watcher, topic_filter, 0, None) is None:
        raise web.HTTPBadRequest(reason=f"cannot subscribe to {topic_filter!r}")
    try:
        response = await _sse(request)
        await response.write(b": open\n\n")
        while True:
            try:
                item = await asyncio.wait_for(watcher.queue.get(), _KEEPALIVE)
            except TimeoutError:
                await response.write(b": keepalive\n\n")
                continue
            await response.write(_frame(None, item))
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        edge.core.unsubscribe_all(watcher)
    return response


# -- metrics and files -------------------------------------------------------------


async def _metrics(request: web.Request) -> web.Response:
    registry = request.app[_REGISTRY_KEY]
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    # Collecting walks every open connection: off the loop it would race the
    # connections it reads, so it stays here (a few ms for thousands of devices).
    body = encoder(registry)
    return web.Response(body=body, headers={"Content-Type": content_type})


async def _ui_redirect(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound("/ui/")


async def _ui_file(request: web.Request) -> web.Response:
    name = request.match_info.get("file") or "index.html"
    content_type = CONSOLE_FILES.get(name)
    if content_type is None:
        raise web.HTTPNotFound(reason=f"no console file {name!r}")
    body = resources.files("edge.http.console").joinpath(name).read_bytes()
    return web.Response(
        body=body,
        headers={
            "Content-Type": f"{content_type}; charset=utf-8",
            "Content-Security-Policy": _CSP,
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
            "Cache-Control": "no-store",
        },
    )


def is_public(request: web.Request) -> bool:
    """True for the paths served without the token: console files, and /metrics if so configured."""
    path = request.path
    if request.method not in ("GET", "HEAD"):
        return False
    if path == "/ui" or path.startswith("/ui/"):
        return True
    return path == "/metrics" and not request.app.get(METRICS_AUTH_KEY, True)


#: (method, path, handler) for :data:`edge.http.admin.ROUTES`.
ROUTES: tuple[tuple[str, str, Any], ...] = (
    ("GET", "/v1/events/stream", _events_stream),
    ("GET", "/v1/devices", _devices),
    ("POST", "/v1/devices/{connection_id}/disconnect", _disconnect),
    ("POST", "/v1/publish", _publish),
    ("GET", "/v1/topics/stream", _topics_stream),
    ("GET", "/metrics", _metrics),
    ("GET", "/ui", _ui_redirect),
    ("GET", "/ui/", _ui_file),
    ("GET", "/ui/{file}", _ui_file),
)


async def _end_streams(app: web.Application) -> None:
    for task in list(app[STREAMS_KEY].tasks):
        task.cancel()


def install(app: web.Application, events: EventLog, *, edge: Any, metrics_auth: bool) -> None:
    """Give ``app`` what these routes read, and end open streams on shutdown."""
    app[_EVENTS_KEY] = events
    if edge is not None:
        app[EDGE_KEY] = edge
    app[METRICS_AUTH_KEY] = metrics_auth
    app[STREAMS_KEY] = _Streams()
    app[_REGISTRY_KEY] = registry_for(events, edge)
    app.on_shutdown.append(_end_streams)
