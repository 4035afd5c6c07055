"""A firmware-update (OTA) responder: the topic-handler API in one small service.

Run it with ``edgesim edge serve --handlers edge.services.ota:setup``. A device
publishes a request on ``devices/{its identity}/ota/request`` (any payload; a JSON
object with ``"current"`` is echoed back) and receives the offer on
``devices/{its identity}/ota/offer``, which the default policy lets it subscribe
to. The handler runs for MQTT, HTTPS and WebSocket publishes alike, because the
core calls handlers, not the protocol adapters.
"""

from __future__ import annotations

import json
import os

from edge.core.handlers import HandlerContext, HandlerRegistry
from edge.core.router import Message

#: The firmware the responder offers; ``EDGESIM_OTA_VERSION`` overrides it.
DEFAULT_VERSION = "1.0.0"


async def answer(ctx: HandlerContext, message: Message) -> None:
    """Reply to one OTA request with the current offer, to the requesting device only."""
    current: object = None
    try:
        request = json.loads(message.payload or b"{}")
        if isinstance(request, dict):
            current = request.get("current")
    except (ValueError, UnicodeDecodeError):
        pass  # any payload is a request; only a JSON one carries "current"
    version = os.environ.get("EDGESIM_OTA_VERSION", DEFAULT_VERSION)
    offer = {
        "device": ctx.identity.name,
        "current": current,
        "version": version,
        "update": current != version,
        "url": f"https://localhost/firmware/{version}.bin",
    }
    await ctx.publish(f"devices/{ctx.identity.name}/ota/offer", json.dumps(offer).encode(), qos=1)


def setup(registry: HandlerRegistry) -> None:
    """Register the responder on ``devices/+/ota/request``."""
    registry.register("devices/+/ota/request", answer, name="ota")
