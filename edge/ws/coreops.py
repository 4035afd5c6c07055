"""The two core operations the HTTP and WebSocket adapters share.

Both adapters publish raw bytes and read retained messages on behalf of an
authenticated device; these helpers do it the same way for both, so that an
HTTP publish and a ``/ws`` publish are the same :class:`~edge.core.router.Message`
to the core (origin ``set/name``, protocol ``http`` or ``ws``).

Nothing here raises: refusals are return values (and the core's ``policy.denied``
events).
"""

from __future__ import annotations

import time

from edge.core.hub import EdgeCore, PublishResult
from edge.core.router import Message, Metadata
from edge.core.session import SessionInfo

__all__ = ["check_read", "publish_bytes"]


def publish_bytes(
    core: EdgeCore,
    session: SessionInfo,
    topic: str,
    payload: bytes,
    *,
    qos: int,
    retain: bool,
    protocol: str,
    meta: Metadata | None = None,
) -> PublishResult:
    """Publish ``payload`` on ``topic`` for ``session`` through policy, router and handlers.

    ``meta`` is the message's MQTT 5 style metadata (content type, user properties, ...).
    """
    message = Message(
        topic,
        payload,
        qos,
        retain,
        origin=str(session.identity),
        protocol=protocol,
        published_at=time.monotonic(),
        meta=meta,
    )
    return core.publish(message, session)


def check_read(core: EdgeCore, session: SessionInfo, topic: str) -> str | None:
    """Return why ``session`` may not read ``topic``'s retained message, or ``None``.

    Reading a retained message is subscribing once, so the subscribe policy
    applies; a refusal is a ``policy.denied`` event like the core's own.
    """
    policy = core.policy
    if policy.open_access:
        return None
    reason = policy.may_subscribe(session.identity, session.identity.name, topic)
    if reason is not None:
        core.events.emit(
            "policy.denied",
            "denied",
            identity=str(session.identity),
            peer=session.peer,
            action="read-retained",
            topic=topic,
            reason=reason,
        )
    return reason
