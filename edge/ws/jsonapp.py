"""``/ws``: the JSON protocol (:mod:`edge.ws.jsonproto`) bound to a WebSocket connection.

A thin translator between :class:`~edge.ws.endpoint.WebSocketConnection` (frames)
and :class:`~edge.ws.session.JsonWsSession` (ops): text messages go in, queued
replies and deliveries go out while the transport accepts them. While the
transport is paused the session's queue absorbs deliveries; when it overflows
the session asks for a 1008 close.
"""

from __future__ import annotations

from edge.core.events import EventLog
from edge.core.hub import EdgeCore
from edge.core.session import SessionInfo
from edge.ws.endpoint import WsSender
from edge.ws.jsonproto import CLOSE_UNSUPPORTED_DATA, MAX_TOPIC_BYTES, WsCloseError
from edge.ws.session import JsonWsSession

__all__ = ["JsonWsApp"]


class JsonWsApp:
    """The application behind one ``/ws`` connection."""

    def __init__(
        self,
        core: EdgeCore,
        session: SessionInfo,
        sender: WsSender,
        *,
        events: EventLog | None = None,
        max_queue: int = 1000,
        max_topic_bytes: int = MAX_TOPIC_BYTES,
    ) -> None:
        self._sender = sender
        self.session = JsonWsSession(
            core, session, events=events, max_queue=max_queue, max_topic_bytes=max_topic_bytes
        )
        self.session.wakeup = self._flush

    def on_message(self, data: bytes, text: bool, fin: bool) -> None:
        """Run one client op; a binary message is not the protocol (1003)."""
        if not text:
            raise WsCloseError(
                CLOSE_UNSUPPORTED_DATA, "binary messages are not part of /ws; send JSON text"
            )
        # The endpoint already checked the text is UTF-8.
        self.session.receive_text(data.decode("utf-8"))
        self._flush()

    def on_writable(self) -> None:
        """Send what queued while the transport was paused."""
        self._flush()

    def on_closed(self, code: int, reason: str) -> None:
        """Drop the connection's subscriptions."""
        self.session.close()

    def _flush(self) -> None:
        if self.session.close_request is not None:
            code, reason = self.session.close_request
            self._sender.fail(code, reason)
            self.session.close()
            return
        if not self._sender.writable:
            return
        for text in self.session.data_to_send():
            self._sender.send_text(text)
