"""A device built on paho-mqtt, for the suite tests: ``python paho_device.py HOST PORT CA CERT KEY [options]``.

It reconnects by itself (``loop_forever`` with ``reconnect_delay_set``), so the
reconnect, backoff and redelivery cases measure paho's own behaviour.
"""

from __future__ import annotations

import argparse
import ssl
import sys

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode


def main() -> int:
    """Connect, optionally subscribe and publish QoS 1, and keep going until killed."""
    ap = argparse.ArgumentParser()
    for name in ("host", "port", "ca", "cert", "key"):
        ap.add_argument(name)
    ap.add_argument("--min-delay", type=float, default=1.0)
    ap.add_argument("--max-delay", type=float, default=120.0)
    ap.add_argument("--keepalive", type=int, default=60)
    ap.add_argument("--persistent", action="store_true", help="CleanSession=0")
    ap.add_argument("--subscribe", help="subscribe to this filter on every (non-resumed) connect")
    ap.add_argument(
        "--publish-qos1", action="store_true", help="publish one QoS 1 message after connecting"
    )
    ap.add_argument("--insecure", action="store_true", help="skip the hostname check")
    ap.add_argument("--mqtt5", action="store_true", help="speak MQTT 5 (protocol=MQTTv5)")
    ap.add_argument("--client-id", default="suite-paho", help="'' lets the server assign one")
    ap.add_argument("--publish-size", type=int, default=5, help="payload bytes of each publish")
    ap.add_argument("--publish-count", type=int, default=1, help="QoS 1 messages published at once")
    ap.add_argument("--topic-alias", type=int, help="MQTT 5: send this Topic Alias")
    ap.add_argument(
        "--resubscribe-on-failure",
        action="store_true",
        help="a buggy device: re-subscribe at once when SUBACK says 0x80",
    )
    args = ap.parse_args()
    if args.mqtt5:
        # MQTT 5 has no clean_session argument: Clean Start goes to connect().
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=args.client_id, protocol=mqtt.MQTTv5
        )
    else:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=args.client_id,
            clean_session=not args.persistent,
        )
    client.tls_set(
        ca_certs=args.ca, certfile=args.cert, keyfile=args.key, tls_version=ssl.PROTOCOL_TLS_CLIENT
    )
    client.tls_insecure_set(args.insecure)
    client.reconnect_delay_set(min_delay=args.min_delay, max_delay=args.max_delay)
    published = False

    def on_connect(
        c: mqtt.Client, userdata: object, flags: mqtt.ConnectFlags, rc: object, props: object
    ) -> None:
        nonlocal published
        print(f"connected rc={rc} session_present={flags.session_present}", flush=True)
        if args.subscribe and not flags.session_present:
            c.subscribe(args.subscribe, qos=1)
        if args.publish_qos1 and not published:
            published = True
            props = None
            if args.topic_alias is not None:
                props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
                props.TopicAlias = args.topic_alias
            for _ in range(args.publish_count):
                c.publish("edgesim/suite/qos1", b"x" * args.publish_size, qos=1, properties=props)

    def on_subscribe(
        c: mqtt.Client, userdata: object, mid: int, codes: list[ReasonCode], props: object
    ) -> None:
        print(f"suback {[int(x.value) for x in codes]}", flush=True)
        if args.resubscribe_on_failure and args.subscribe and any(x.is_failure for x in codes):
            c.subscribe(args.subscribe, qos=1)

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    if args.mqtt5:
        client.connect(
            args.host, int(args.port), keepalive=args.keepalive, clean_start=not args.persistent
        )
    else:
        client.connect(args.host, int(args.port), keepalive=args.keepalive)
    client.loop_forever(retry_first_connection=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
