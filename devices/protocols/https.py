"""A minimal HTTP/1.1 client for a device, over the device's own TLS stream.

The edge's device API (see :mod:`edge.http.device`):

- ``POST /topics/{topic}?qos=&retain=`` publishes the body: ``200`` with JSON,
  ``403`` with a problem+json ``detail`` when the policy denies it;
- ``GET /topics/{topic}``: the retained message, ``404`` when there is none;
- ``GET /subscribe?topic=F``: Server-Sent Events; a ``: subscribed`` comment once
  the subscription is in place, then ``event: message`` / ``data: {"topic",
  "payload", "encoding", "qos", "retain"}``.

:class:`ResponseParser` is sans-I/O (bytes in, :class:`Response` heads, body bytes
and :class:`SseEvent` out) and is what the tests feed. :class:`HttpsSession` keeps one
connection for requests and opens a second one for the event stream, as a browser
would. The protocol acknowledgement of :meth:`HttpsSession.open` is the answer to
``HEAD /``: any status proves the edge accepted the device's certificate.

Errors: :class:`~devices.protocols.ProtocolError` (reason ``http-malformed``) for a
response that does not parse; the TLS stream's failures pass through unchanged.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from devices.protocols import Ack, Inbox, Message, ProtocolError
from devices.tlsclient import DeviceError, TlsFailure, TlsStream
from edge.mqtt.properties import Properties

__all__ = ["HttpsSession", "Response", "ResponseParser", "SseEvent", "SseParser"]

_MAX_HEAD = 64 * 1024


@dataclass(slots=True)
class Response:
    """One HTTP response: status, lower-cased headers, and the body once complete."""

    status: int
    reason: str
    headers: dict[str, str]
    body: bytes = b""

    def json(self) -> Any:
        """The body as JSON (None when it is not JSON)."""
        try:
            return json.loads(self.body)
        except ValueError:
            return None


@dataclass(frozen=True, slots=True)
class SseEvent:
    """One Server-Sent Event (``comment`` events carry a ``: text`` line)."""

    event: str = "message"
    data: str = ""
    id: str | None = None
    comment: str | None = None


@dataclass(slots=True)
class _Body:
    remaining: int | None  # Content-Length left; None: chunked or until close
    chunked: bool
    chunk_left: int = 0
    trailer: bool = False
    parts: list[bytes] = field(default_factory=list)


class ResponseParser:
    """Incremental HTTP/1.1 response parser.

    ``feed`` returns ``("head", Response)`` when a status line and headers are
    complete, ``("data", bytes)`` for each piece of body, ``("end", Response)`` with
    the whole body once it is complete (not for streams, which never end). Call
    :meth:`expect` with the request method before each response so that a ``HEAD``
    response is known to have no body.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._response: Response | None = None
        self._body: _Body | None = None
        self._methods: list[str] = []
        self.streaming = False

    def expect(self, method: str) -> None:
        """Note the method of the next request sent (responses come in order)."""
        self._methods.append(method)

    def feed(self, data: bytes) -> list[tuple[str, Any]]:
        """Consume bytes; see the class docstring for what comes out."""
        self._buf += data
        out: list[tuple[str, Any]] = []
        while True:
            if self._response is None:
                if not self._head(out):
                    return out
            elif not self._body_step(out):
                return out

    def _head(self, out: list[tuple[str, Any]]) -> bool:
        end = self._buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buf) > _MAX_HEAD:
                raise ProtocolError("HTTP response head too large", reason="http-malformed")
            return False
        head = bytes(self._buf[:end]).decode("latin-1")
        del self._buf[: end + 4]
        lines = head.split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise ProtocolError(f"bad HTTP status line {lines[0]!r}", reason="http-malformed")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                raise ProtocolError(f"bad HTTP header line {line!r}", reason="http-malformed")
            headers[name.strip().lower()] = value.strip()
        status = int(parts[1])
        response = Response(status, parts[2] if len(parts) > 2 else "", headers)
        method = self._methods.pop(0) if self._methods else "GET"
        out.append(("head", response))
        if status < 200:
            return True  # an interim response: the real one follows
        if method == "HEAD" or status in (204, 304):
            out.append(("end", response))
            return True
        chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        length: int | None = None
        if not chunked and "content-length" in headers:
            try:
                length = int(headers["content-length"])
            except ValueError as exc:
                raise ProtocolError("bad Content-Length", reason="http-malformed") from exc
        self._response = response
        self._body = _Body(length, chunked)
        self.streaming = headers.get("content-type", "").startswith("text/event-stream")
        return True

    def _body_step(self, out: list[tuple[str, Any]]) -> bool:
        body, response = self._body, self._response
        assert body is not None
        assert response is not None
        if body.chunked:
            return self._chunk_step(body, response, out)
        if body.remaining is None:
            # Until the connection closes: hand over what there is.
            if self._buf:
                self._emit(body, bytes(self._buf), out)
                self._buf.clear()
            return False
        take = min(body.remaining, len(self._buf))
        if take:
            self._emit(body, bytes(self._buf[:take]), out)
            del self._buf[:take]
            body.remaining -= take
        if body.remaining == 0:
            self._finish(body, response, out)
            return True
        return False

    def _chunk_step(self, body: _Body, response: Response, out: list[tuple[str, Any]]) -> bool:
        if body.chunk_left > 0:
            take = min(body.chunk_left, len(self._buf))
            if not take:
                return False
            self._emit(body, bytes(self._buf[:take]), out)
            del self._buf[:take]
            body.chunk_left -= take
            return True
        end = self._buf.find(b"\r\n")
        if end < 0:
            return False
        line = bytes(self._buf[:end]).decode("latin-1")
        del self._buf[: end + 2]
        if body.trailer:
            if line == "":
                self._finish(body, response, out)
            return True
        if line == "":
            return True  # the CRLF after a chunk's data
        try:
            size = int(line.split(";", 1)[0], 16)
        except ValueError as exc:
            raise ProtocolError(f"bad chunk size {line!r}", reason="http-malformed") from exc
        if size == 0:
            body.trailer = True
        body.chunk_left = size
        return True

    def _emit(self, body: _Body, data: bytes, out: list[tuple[str, Any]]) -> None:
        out.append(("data", data))
        if not self.streaming:
            body.parts.append(data)

    def _finish(self, body: _Body, response: Response, out: list[tuple[str, Any]]) -> None:
        response.body = b"".join(body.parts)
        out.append(("end", response))
        self._response = None
        self._body = None
        self.streaming = False


class SseParser:
    """Incremental Server-Sent Events parser (the WHATWG event-stream format)."""

    def __init__(self) -> None:
        self._buf = ""
        self._event = "message"
        self._data: list[str] = []
        self._id: str | None = None

    def feed(self, data: bytes) -> list[SseEvent]:
        """Consume decoded body bytes; return complete events (and comments)."""
        self._buf += data.decode("utf-8", "replace").replace("\r\n", "\n").replace("\r", "\n")
        out: list[SseEvent] = []
        while "\n" in self._buf:
            line, self._buf = self._buf.split("\n", 1)
            if line == "":
                if self._data:
                    out.append(SseEvent(self._event, "\n".join(self._data), self._id))
                self._event, self._data = "message", []
            elif line.startswith(":"):
                out.append(SseEvent("comment", comment=line[1:].strip()))
            else:
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if name == "data":
                    self._data.append(value)
                elif name == "event":
                    self._event = value
                elif name == "id":
                    self._id = value
        return out


class _Connection:
    """One HTTP/1.1 connection: requests in order, one response future each."""

    def __init__(self, stream: TlsStream, host: str) -> None:
        self.stream = stream
        self.host = host
        self.parser = ResponseParser()
        self.loop = asyncio.get_running_loop()
        self.waiting: list[asyncio.Future[Response]] = []
        self.heads: list[asyncio.Future[Response]] = []
        self.on_data: Callable[[bytes], None] | None = None
        self.on_error: Callable[[DeviceError], None] | None = None
        self.error: DeviceError | None = None
        stream.set_reader(self._receive, self._fail)

    def request(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> tuple[asyncio.Future[Response], asyncio.Future[Response]]:
        if self.error is not None:
            raise self.error
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}", "User-Agent: edgesim-device"]
        for name, value in (headers or {}).items():
            lines.append(f"{name}: {value}")
        if body or method in ("POST", "PUT"):
            lines.append(f"Content-Length: {len(body)}")
        self.parser.expect(method)
        head: asyncio.Future[Response] = self.loop.create_future()
        done: asyncio.Future[Response] = self.loop.create_future()
        self.heads.append(head)
        self.waiting.append(done)
        self.stream.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        return head, done

    def _receive(self, data: bytes) -> None:
        try:
            items = self.parser.feed(data)
        except ProtocolError as exc:
            self._fail(exc)
            self.stream.close()
            return
        for kind, item in items:
            if kind == "head" and item.status >= 200 and self.heads:
                head = self.heads.pop(0)
                if not head.done():
                    head.set_result(item)
            elif kind == "data" and self.parser.streaming and self.on_data is not None:
                self.on_data(item)
            elif kind == "end" and self.waiting:
                done = self.waiting.pop(0)
                if not done.done():
                    done.set_result(item)

    def _fail(self, error: DeviceError | TlsFailure) -> None:
        self.error = error
        for fut in (*self.heads, *self.waiting):
            if not fut.done():
                fut.set_exception(error)
                fut.exception()  # reported through the awaiting request
        self.heads.clear()
        self.waiting.clear()
        if self.on_error is not None:
            self.on_error(error)


def _problem(response: Response) -> str:
    data = response.json()
    if isinstance(data, dict):
        for key in ("detail", "reason", "title"):
            if isinstance(data.get(key), str):
                return str(data[key])
    return response.reason


class HttpsSession:
    """The device's HTTPS client: publish by POST, subscribe by Server-Sent Events."""

    name = "https"

    def __init__(
        self,
        stream: TlsStream,
        *,
        host: str,
        clock: Callable[[], float],
        reconnect: Callable[[], Awaitable[TlsStream]],
    ) -> None:
        self._conn = _Connection(stream, host)
        self._host = host
        self._reconnect = reconnect
        self._inbox = Inbox(clock)
        self._events: list[_Connection] = []
        self.messages_sent = 0

    async def open(self) -> Ack:
        """``HEAD /``: any HTTP status means the edge accepted the TLS session."""
        _head, done = self._conn.request("HEAD", "/")
        response = await done
        return Ack(
            True,
            f"HTTP {response.status} {response.reason} to HEAD / (any status: TLS accepted)",
            {"status": response.status, "request": "HEAD /"},
        )

    async def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int,
        retain: bool = False,
        properties: Properties | None = None,
    ) -> Ack:
        """``POST /topics/{topic}?qos=&retain=``; 200 is success (no MQTT 5 properties)."""
        if properties is not None:
            raise ProtocolError("PUBLISH properties need MQTT 5", reason="bad-input")
        path = f"/topics/{quote(topic, safe='/')}?qos={qos}&retain={'true' if retain else 'false'}"
        _head, done = self._conn.request(
            "POST", path, payload, {"Content-Type": "application/octet-stream"}
        )
        response = await done
        self.messages_sent += 1
        detail: dict[str, Any] = {"status": response.status}
        data = response.json()
        if isinstance(data, dict):
            detail["response"] = data
        if response.status == 200:
            return Ack(True, f"HTTP 200 {response.reason}".rstrip(), detail)
        return Ack(
            False,
            f"HTTP {response.status}: {_problem(response)}",
            detail,
            reason=f"http-{response.status}",
        )

    async def retained(self, topic: str) -> tuple[int, bytes]:
        """``GET /topics/{topic}``: (status, payload); 404 when nothing is retained."""
        _head, done = self._conn.request("GET", f"/topics/{quote(topic, safe='/')}")
        response = await done
        return response.status, response.body

    async def subscribe(self, topic_filter: str, qos: int) -> Ack:
        """Open an event stream on a second connection; wait until it is subscribed."""
        conn = _Connection(await self._reconnect(), self._host)
        self._events.append(conn)
        sse = SseParser()
        subscribed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def on_data(data: bytes) -> None:
            for event in sse.feed(data):
                if event.comment is not None:
                    if event.comment.startswith("subscribed") and not subscribed.done():
                        subscribed.set_result(None)
                elif event.event == "message":
                    self._deliver(event, topic_filter)
                elif event.event == "error":
                    conn._fail(
                        ProtocolError(f"event stream ended: {event.data}", reason="sse-error")
                    )

        def on_error(error: DeviceError) -> None:
            if not subscribed.done():
                subscribed.set_exception(error)
                subscribed.exception()
            self._inbox.fail(error)

        conn.on_data = on_data
        conn.on_error = on_error
        head, _done = conn.request(
            "GET",
            f"/subscribe?topic={quote(topic_filter, safe='')}",
            headers={"Accept": "text/event-stream"},
        )
        response = await head
        if response.status != 200:
            body = await _done
            return Ack(
                False,
                f"HTTP {body.status}: {_problem(body)}",
                {"status": body.status},
                reason=f"http-{body.status}",
            )
        await subscribed
        return Ack(True, "HTTP 200, event stream subscribed", {"status": 200, "granted_qos": 0})

    def _deliver(self, event: SseEvent, topic_filter: str) -> None:
        try:
            data = json.loads(event.data)
        except ValueError:
            self._inbox.put(topic_filter, event.data.encode())
            return
        if not isinstance(data, dict):
            self._inbox.put(topic_filter, event.data.encode())
            return
        raw = data.get("payload", "")
        payload = base64.b64decode(raw) if data.get("encoding") == "base64" else str(raw).encode()
        self._inbox.put(
            str(data.get("topic", topic_filter)),
            payload,
            int(data.get("qos", 0)),
            bool(data.get("retain", False)),
        )

    async def next_message(self) -> Message:
        """The next message from any event stream."""
        return await self._inbox.get()

    @property
    def messages_received(self) -> int:
        """How many messages were delivered so far."""
        return self._inbox.count

    def close(self) -> None:
        """Close every connection."""
        self._inbox.fail(ProtocolError("the session was closed by the device", reason="closed"))
        self._conn.stream.close()
        for conn in self._events:
            conn.stream.close()
