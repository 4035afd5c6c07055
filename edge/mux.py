"""One TLS port for MQTT, HTTPS and WebSocket: choosing the protocol of a connection.

Separate listeners remain the default (MQTT on one port, HTTPS + WebSocket on
another). A listener of kind ``"multi"`` serves all three on one port, the way
AWS IoT does on 443:

1. ALPN decides when the device offered it: ``mqtt`` (and AWS's
   ``x-amzn-mqtt-ca``) selects MQTT, ``http/1.1`` selects HTTP (WebSocket
   upgrades travel inside HTTP/1.1).
2. Without ALPN, the first bytes the device sends decide: an MQTT connection
   starts with a CONNECT packet (first byte ``0x10``), an HTTP/1.1 connection
   with a request method in capitals followed by a space.

:func:`select_protocol` is the pure decision (bytes in, answer out);
:class:`MuxProtocol` is the thin asyncio layer that buffers the first bytes,
asks :func:`select_protocol`, then hands the transport and the buffered bytes
to the chosen protocol.

Errors::

    MuxError                 the connection speaks none of the protocols served
                             (raised by select_protocol; MuxProtocol turns it into
                             a ``mux.refused`` event and closes the connection)
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Literal

from edge.core.events import EventLog
from edge.core.session import SessionInfo

__all__ = [
    "ALPN_HTTP",
    "ALPN_MQTT",
    "ListenerKind",
    "MuxError",
    "MuxProtocol",
    "Selected",
    "make_mux_protocol_factory",
    "select_protocol",
]

log = logging.getLogger("edgesim.mux")

#: What a listener serves: only MQTT, only HTTPS (+ WebSocket), or all of them.
ListenerKind = Literal["mqtt", "https", "multi"]
#: The protocol chosen for one connection.
Selected = Literal["mqtt", "http"]

#: ALPN protocol ids that select MQTT (``x-amzn-mqtt-ca`` is AWS IoT's name on 443).
ALPN_MQTT = ("mqtt", "x-amzn-mqtt-ca")
#: ALPN protocol ids that select HTTP (and so WebSocket).
ALPN_HTTP = ("http/1.1",)

# Methods an HTTP/1.1 device may start with; the longest is 7 letters ("OPTIONS").
_HTTP_METHODS = (b"GET", b"POST", b"PUT", b"DELETE", b"HEAD", b"OPTIONS", b"PATCH")
_LONGEST_METHOD = max(len(m) for m in _HTTP_METHODS) + 1  # with its space
_MQTT_CONNECT = 0x10
_KINDS = ("mqtt", "https", "multi")


class MuxError(Exception):
    """The connection speaks none of the protocols this listener serves.

    ``reason`` says what was seen, for the ``mux.refused`` event.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def select_protocol(
    alpn: str | None, first_bytes: bytes, listener_kind: ListenerKind
) -> Selected | None:
    """Choose the protocol of a connection, or return ``None`` when more bytes are needed.

    ``alpn`` is the protocol agreed in the TLS handshake (``None`` when the device
    offered none), ``first_bytes`` everything the device has sent so far (may be
    empty), ``listener_kind`` what the listener serves.

    Raises :class:`MuxError` when the connection cannot be served here: an ALPN
    protocol of the other kind on a single-protocol listener, an unknown ALPN
    protocol, or first bytes that are neither MQTT CONNECT nor an HTTP method;
    raises ``ValueError`` for an unknown ``listener_kind`` (a programming error).
    """
    if listener_kind not in _KINDS:
        raise ValueError(f"listener_kind must be one of {_KINDS}, not {listener_kind!r}")
    if alpn is not None:
        if alpn in ALPN_MQTT:
            chosen: Selected = "mqtt"
        elif alpn in ALPN_HTTP:
            chosen = "http"
        else:
            raise MuxError(f"ALPN protocol {alpn!r} is not served (mqtt, http/1.1)")
        if listener_kind == "multi" or _serves(listener_kind, chosen):
            return chosen
        raise MuxError(f"ALPN protocol {alpn!r} is not served on the {listener_kind} listener")
    if listener_kind == "mqtt":
        return "mqtt"
    if listener_kind == "https":
        return "http"
    return _sniff(first_bytes)


def _serves(listener_kind: ListenerKind, chosen: Selected) -> bool:
    return (listener_kind, chosen) in (("mqtt", "mqtt"), ("https", "http"))


def _sniff(data: bytes) -> Selected | None:
    if not data:
        return None
    if data[0] == _MQTT_CONNECT:
        return "mqtt"
    head = data[:_LONGEST_METHOD]
    for method in _HTTP_METHODS:
        token = method + b" "
        if head.startswith(token):
            return "http"
        # A prefix of a method (``b"PO"``) is not decided yet.
        if token.startswith(head):
            return None
    if data.startswith(b"PRI * HTTP/2"[: len(data)]):
        raise MuxError("HTTP/2 is not served (use HTTP/1.1 or ALPN http/1.1)")
    raise MuxError(f"first bytes {data[:8]!r} are neither an MQTT CONNECT nor an HTTP request")


ProtocolFactory = Callable[[SessionInfo], asyncio.Protocol]


class MuxProtocol(asyncio.Protocol):
    """Buffer a connection's first bytes, choose its protocol, then step aside.

    After the choice, every callback (data, EOF, flow control, loss) goes straight
    to the chosen protocol; this object only forwards.
    """

    def __init__(
        self,
        session: SessionInfo,
        factories: dict[Selected, ProtocolFactory],
        listener_kind: ListenerKind,
        events: EventLog | None = None,
        first_bytes_timeout: float = 10.0,
    ) -> None:
        self._session = session
        self._factories = factories
        self._kind: ListenerKind = listener_kind
        self._events = events
        self._timeout = first_bytes_timeout
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None
        self._inner: asyncio.Protocol | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._paused = False
        #: The protocol chosen, once known (for tests and events).
        self.selected: Selected | None = None

    @property
    def protocol_name(self) -> str:
        """The chosen protocol's label (see ``EdgeTlsProtocol``), ``tls`` until chosen."""
        name = getattr(self._inner, "protocol_name", None)
        return name if isinstance(name, str) else "tls"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Decide at once when ALPN (or the listener kind) is enough; else wait for bytes."""
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._decide()
        if self._inner is None and not transport.is_closing():
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self._timeout, self._expire)

    def data_received(self, data: bytes) -> None:
        """Forward, or buffer until the first bytes decide."""
        if self._inner is not None:
            self._inner.data_received(data)
            return
        self._buffer += data
        self._decide()

    def eof_received(self) -> bool | None:
        """Forward EOF; before a decision, an EOF ends the connection."""
        if self._inner is not None:
            return self._inner.eof_received()
        self._refuse("connection closed before the protocol was known")
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        """Forward the loss and stop the first-bytes timer."""
        self._cancel_timer()
        if self._inner is not None:
            self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        """Forward flow control (remembered until a protocol is chosen)."""
        self._paused = True
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        """Forward flow control (remembered until a protocol is chosen)."""
        self._paused = False
        if self._inner is not None:
            self._inner.resume_writing()

    def _decide(self) -> None:
        transport = self._transport
        assert transport is not None
        try:
            chosen = select_protocol(self._session.alpn, bytes(self._buffer), self._kind)
        except MuxError as exc:
            self._refuse(exc.reason)
            return
        if chosen is None:
            return
        self._cancel_timer()
        self.selected = chosen
        inner = self._factories[chosen](self._session)
        self._inner = inner
        inner.connection_made(transport)
        if self._paused:
            inner.pause_writing()
        if self._buffer and not transport.is_closing():
            data = bytes(self._buffer)
            self._buffer.clear()
            inner.data_received(data)

    def _expire(self) -> None:
        self._timer = None
        self._refuse(f"no protocol bytes within {self._timeout:g} s")

    def _refuse(self, reason: str) -> None:
        self._cancel_timer()
        if self._events is not None:
            self._events.emit(
                "mux.refused",
                "refused",
                identity=str(self._session.identity),
                peer=self._session.peer,
                sni=self._session.sni,
                alpn=self._session.alpn,
                reason=reason,
            )
        if self._transport is not None:
            self._transport.close()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def make_mux_protocol_factory(
    *,
    mqtt: ProtocolFactory,
    http: ProtocolFactory,
    listener_kind: ListenerKind = "multi",
    events: EventLog | None = None,
    first_bytes_timeout: float = 10.0,
) -> ProtocolFactory:
    """Return ``factory(session) -> asyncio.Protocol`` serving MQTT and HTTP on one listener.

    ``mqtt`` is the MQTT listener's protocol factory, ``http`` the device HTTPS
    one (:meth:`edge.http.device.DeviceFrontend.protocol_factory`).
    """
    factories: dict[Selected, ProtocolFactory] = {"mqtt": mqtt, "http": http}

    def factory(session: SessionInfo) -> asyncio.Protocol:
        return MuxProtocol(session, factories, listener_kind, events, first_bytes_timeout)

    return factory
