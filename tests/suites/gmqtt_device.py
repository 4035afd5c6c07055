"""A device built on gmqtt (MQTT 5), for the suite tests: ``python gmqtt_device.py HOST PORT CA CERT KEY [options]``.

gmqtt reconnects by itself (``reconnect_delay``, unlimited retries by default), so the
DISCONNECT cases measure gmqtt's own behaviour; the publish options give the limit
cases something to judge.
"""

from __future__ import annotations

import argparse
import asyncio
import ssl
import sys
from typing import Any

from gmqtt import Client
from gmqtt.mqtt.constants import MQTTv50


async def run(args: argparse.Namespace) -> None:
    """Connect, publish what the options say, and keep going until killed."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=args.ca)
    ctx.load_cert_chain(args.cert, args.key)
    client = Client(args.client_id, clean_session=True)
    client.set_config({"reconnect_delay": args.reconnect_delay})
    published = False

    def on_connect(c: Any, flags: int, rc: int, properties: dict[str, Any]) -> None:
        nonlocal published
        print(f"connected rc={rc} properties={properties}", flush=True)
        if args.publish_count and not published:
            published = True
            extra: dict[str, Any] = {}
            if args.topic_alias is not None:
                extra["topic_alias"] = args.topic_alias
            for _ in range(args.publish_count):
                c.publish("edgesim/suite/qos1", b"x" * args.publish_size, qos=1, **extra)

    def on_disconnect(c: Any, packet: Any, exc: Any = None) -> None:
        print("disconnected", flush=True)

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    await client.connect(
        args.host, int(args.port), ssl=ctx, keepalive=args.keepalive, version=MQTTv50
    )
    await asyncio.Event().wait()


def main() -> int:
    """Parse the options and run until killed."""
    ap = argparse.ArgumentParser()
    for name in ("host", "port", "ca", "cert", "key"):
        ap.add_argument(name)
    ap.add_argument("--client-id", default="suite-gmqtt", help="'' lets the server assign one")
    ap.add_argument("--keepalive", type=int, default=60)
    ap.add_argument("--reconnect-delay", type=float, default=6.0, help="gmqtt's default is 6 s")
    ap.add_argument("--publish-count", type=int, default=0, help="QoS 1 messages at once")
    ap.add_argument("--publish-size", type=int, default=5)
    ap.add_argument("--topic-alias", type=int, help="send this Topic Alias")
    asyncio.run(run(ap.parse_args()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
