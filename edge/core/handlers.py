"""Edge-side services reacting to messages: handlers registered on topic filters.

::

    registry = HandlerRegistry()

    @registry.on("devices/+/ota/request")
    async def ota(ctx: HandlerContext, message: Message) -> None:
        await ctx.publish(f"devices/{ctx.identity.name}/ota/offer", b"v2")

A handler is called with ``(ctx, message)`` for every message whose topic matches its
filter, after policy allowed the publication. Sync handlers run inline; async ones run
as tasks (so a slow handler never delays routing). A handler that raises is isolated:
the error is logged, a ``handler.failed`` event is emitted, and routing and the other
handlers go on. Messages a handler publishes are not dispatched back to that handler
(no accidental loops). ``await registry.drain()`` waits for running handler tasks.

Errors: registering an invalid filter raises ``ValueError`` (a programming error);
nothing else escapes.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeAlias

from edge.core.router import Message
from edge.core.session import DeviceIdentity, SessionInfo
from edge.core.topics import TopicTree, valid_filter

if TYPE_CHECKING:
    from edge.core.hub import EdgeCore, PublishResult

log = logging.getLogger("edgesim.handlers")

#: The edge's own identity, used as the origin of messages its services publish.
EDGE_IDENTITY = DeviceIdentity(namespace="edge", name="edge")

Handler: TypeAlias = Callable[["HandlerContext", Message], Awaitable[None] | None]


class HandlerContext:
    """What a handler sees: who published, and a way to publish as the edge."""

    __slots__ = ("_core", "handler_name", "session")

    def __init__(self, core: EdgeCore, session: SessionInfo | None, handler_name: str) -> None:
        self._core = core
        self.session = session
        self.handler_name = handler_name

    @property
    def identity(self) -> DeviceIdentity:
        """The authenticated publisher (the edge itself for internal messages)."""
        return self.session.identity if self.session is not None else EDGE_IDENTITY

    def publish_nowait(
        self, topic: str, payload: bytes, qos: int = 0, retain: bool = False
    ) -> PublishResult:
        """Publish as the edge (policy does not apply to the edge's own services)."""
        message = Message(
            topic,
            payload,
            qos,
            retain,
            f"handler:{self.handler_name}",
            "internal",
            time.monotonic(),
        )
        return self._core.publish(message, None)

    async def publish(
        self, topic: str, payload: bytes, qos: int = 0, retain: bool = False
    ) -> PublishResult:
        """Publish as the edge; see :meth:`publish_nowait`."""
        return self.publish_nowait(topic, payload, qos, retain)


class HandlerRegistry:
    """Handlers by topic filter."""

    __slots__ = ("_names", "_tasks", "_tree")

    def __init__(self) -> None:
        self._tree: TopicTree[str, Handler] = TopicTree()
        self._names: dict[str, str] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def register(self, topic_filter: str, handler: Handler, *, name: str | None = None) -> str:
        """Call ``handler`` for messages matching ``topic_filter``; return its name."""
        if not valid_filter(topic_filter):
            raise ValueError(f"handler filter {topic_filter!r} is not a valid topic filter")
        handler_name: str = name or str(getattr(handler, "__qualname__", repr(handler)))
        self._tree.add(topic_filter, handler_name, handler)
        self._names[handler_name] = topic_filter
        return handler_name

    def on(self, topic_filter: str, *, name: str | None = None) -> Callable[[Handler], Handler]:
        """Decorator form of :meth:`register`."""

        def decorate(handler: Handler) -> Handler:
            self.register(topic_filter, handler, name=name)
            return handler

        return decorate

    def unregister(self, name: str) -> bool:
        """Remove the handler called ``name``; True if it was registered."""
        topic_filter = self._names.pop(name, None)
        return topic_filter is not None and self._tree.remove(topic_filter, name)

    def __len__(self) -> int:
        """The number of registered handlers."""
        return len(self._names)

    def dispatch(self, core: EdgeCore, message: Message, session: SessionInfo | None) -> int:
        """Run every handler matching ``message``; return how many were started."""
        if not self._names:
            return 0
        started = 0
        for name, handler in self._tree.match(message.topic):
            if message.origin == f"handler:{name}":
                continue
            ctx = HandlerContext(core, session, name)
            started += 1
            try:
                result = handler(ctx, message)
            except Exception as exc:
                _failed(core, name, message, exc)
                continue
            if inspect.isawaitable(result):
                task = asyncio.ensure_future(_run(core, name, message, result))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        return started

    @property
    def running(self) -> int:
        """How many handler tasks are still running."""
        return len(self._tasks)

    async def drain(self, timeout: float = 10.0) -> None:
        """Wait until every running handler task (and those they start) has finished."""
        async with asyncio.timeout(timeout):
            while self._tasks:
                await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def close(self) -> None:
        """Cancel running handler tasks and wait for them."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _run(core: EdgeCore, name: str, message: Message, work: Awaitable[None]) -> None:
    try:
        await work
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        _failed(core, name, message, exc)


def _failed(core: EdgeCore, name: str, message: Message, exc: Exception) -> None:
    log.error("handler %s failed on %s", name, message.topic, exc_info=exc)
    core.metrics.handler_failures += 1
    core.events.emit(
        "handler.failed",
        "error",
        handler=name,
        topic=message.topic,
        identity=message.origin,
        reason=f"{type(exc).__name__}: {exc}",
    )
