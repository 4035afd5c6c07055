"""Instructions the broker spends per routed QoS 0 message, by MQTT level, counted by callgrind.

``python -m bench.message_cost [--messages N] [--fanout S] [--batch B] [--pairs 4>4 5>5 ...]``
re-runs itself under ``valgrind --tool=callgrind`` and prints, for each
publisher>subscriber pair of protocol levels (4: MQTT 3.1.1, 5: MQTT 5), the
instructions executed per routed message (one delivery to one subscriber) and
the ratio of each pair to 3.1.1 (``4>4``).

What is counted is the sans-I/O path a message takes through the edge: the
publisher's bytes are parsed (``MqttConnection.receive_data``), the policy is
asked, the router matches and fans out, and each subscriber's output is taken
(``data_to_send``). Publisher and subscribers send what ``python -m
bench.broker`` sends (QoS 0, 64-byte payload, an empty property block in MQTT
5), under ``--policy open`` as that benchmark's edge runs. TLS and the event
loop are left out: they cost the same at either level. Every call into the
broker goes through ``functools.reduce`` and callgrind collects only inside it
(``--toggle-collect``), as :mod:`bench.connect_cost` does.

Counts are not times (``python -m bench --only broker`` stays the measure of
record), but they repeat to a fraction of a percent on a shared, loaded
machine, so they tell whether a change to the MQTT 5 path adds or removes work.
Needs valgrind; the default run takes well under a minute.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable
from typing import Any

from bench import callgrind

__all__ = ["count", "main"]

_MARK = "EDGESIM_MESSAGE_COST_CHILD"
_TOPIC = b"bench/t"
_PAIRS = ("4>4", "5>5", "5>4", "4>5")


def _call(_: object, item: tuple[Callable[..., Any], tuple[Any, ...]]) -> Any:
    fn, args = item
    return fn(*args)


def _counted(fn: Callable[..., Any], *args: Any) -> Any:
    """Call ``fn`` inside ``functools.reduce``: the C function callgrind counts in."""
    return functools.reduce(_call, [(fn, args)], None)


def _packet(first: int, body: bytes) -> bytes:
    from edge.mqtt.codec import encode_varint

    return bytes((first,)) + encode_varint(len(body)) + body


def _props(level: int) -> bytes:
    return b"\x00" if level == 5 else b""


def _connect(client_id: str, level: int) -> bytes:
    cid = client_id.encode()
    body = b"\x00\x04MQTT" + bytes((level, 0x02)) + b"\x00\x00" + _props(level)
    return _packet(0x10, body + len(cid).to_bytes(2, "big") + cid)


def _run(pair: str, messages: int, fanout: int, batch: int, warmup: int) -> None:
    """Route ``messages`` through a fresh broker; only the measured part is counted."""
    from edge.core.events import EventLog
    from edge.core.hub import EdgeCore
    from edge.core.policy import Policy
    from edge.core.session import DeviceIdentity, SessionInfo
    from edge.mqtt.broker import MqttBroker, MqttConfig

    if messages % batch or warmup % batch:
        # Whole batches only: the count is divided by the messages asked for.
        raise ValueError(
            f"messages ({messages}) and warmup ({warmup}) must be a multiple of the batch ({batch})"
        )
    pub_level, sub_level = (int(x) for x in pair.split(">"))
    broker = MqttBroker(EdgeCore(EventLog(log_events=False), Policy.open()), MqttConfig())

    def session(name: str) -> SessionInfo:
        return SessionInfo(identity=DeviceIdentity(namespace="bench", name=name), peer="bench")

    subs = []
    for i in range(fanout):
        conn = broker.connection(session(f"s{i}"))
        subscribe = (
            b"\x00\x01" + _props(sub_level) + len(_TOPIC).to_bytes(2, "big") + _TOPIC + b"\x00"
        )
        conn.receive_data(_connect(f"s{i}", sub_level) + _packet(0x82, subscribe))
        assert conn.data_to_send()  # CONNACK, SUBACK
        subs.append(conn)
    pub = broker.connection(session("p"))
    pub.receive_data(_connect("p", pub_level))
    pub.data_to_send()
    one = _packet(0x30, len(_TOPIC).to_bytes(2, "big") + _TOPIC + _props(pub_level) + b"x" * 64)
    data = one * batch
    expected = len(_packet(0x30, b"\x00" * (2 + len(_TOPIC) + len(_props(sub_level)) + 64)))

    def rounds(n: int, counted: bool) -> None:
        for _ in range(n // batch):
            if counted:
                _counted(pub.receive_data, data)
            else:
                pub.receive_data(data)
            for conn in subs:
                out = _counted(conn.data_to_send) if counted else conn.data_to_send()
                if len(out) != expected * batch:
                    raise RuntimeError(f"{pair}: a subscriber got {len(out)} bytes")

    rounds(warmup, False)
    _callgrind("-z")
    rounds(messages, True)
    _callgrind("-d")


def _callgrind(flag: str) -> None:
    callgrind.control(_MARK, flag)


def count(pair: str, messages: int, fanout: int, batch: int, warmup: int) -> float:
    """Instructions per routed message (one delivery) for ``pair``, e.g. ``"5>5"``."""
    args = [
        "--child",
        pair,
        f"--messages={messages}",
        f"--fanout={fanout}",
        f"--batch={batch}",
        f"--warmup={warmup}",
    ]
    return callgrind.count("bench.message_cost", args, _MARK) / (messages * fanout)


def main(argv: list[str] | None = None) -> int:
    """Count each pair under callgrind and print instructions per routed message."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.message_cost", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--messages", type=int, default=2000, help="measured messages (2000)")
    parser.add_argument("--warmup", type=int, default=200, help="messages before counting (200)")
    parser.add_argument("--fanout", type=int, default=4, help="subscribers per message (4)")
    parser.add_argument("--batch", type=int, default=100, help="messages per receive_data (100)")
    parser.add_argument(
        "--pairs", nargs="+", choices=_PAIRS, default=list(_PAIRS), help="publisher>subscriber"
    )
    parser.add_argument("--child", choices=_PAIRS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _run(args.child, args.messages, args.fanout, args.batch, args.warmup)
        return 0
    if not callgrind.available():
        print("error: valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 2
    from edge.compiled import status

    print(f"build: {status()}")
    base: float | None = None
    for pair in args.pairs:
        per = count(pair, args.messages, args.fanout, args.batch, args.warmup)
        if pair == "4>4":
            base = per
        ratio = f", {per / base:.3f}x of 4>4" if base else ""
        print(f"{pair}: {per:,.0f} instructions per routed message{ratio}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
