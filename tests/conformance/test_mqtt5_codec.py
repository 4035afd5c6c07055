"""Mosquitto's MQTT 5 packet-sequence cases, read by the codec alone (no broker yet).

The broker does not speak MQTT 5 yet, so these tests ask only what the codec can
answer from the data (``../shared/conformance/mqtt-sequences``, see its README),
replaying each case's ``send`` payloads into one server-side :class:`Parser`
(after the runner's default MQTT 5 CONNECT when the case has one):

- every payload the data shows a server *accepting* (the next message is a normal
  reply or another send, or the case ends with the connection open) parses;
- every payload the broker sends (``recv``) parses with a client-side parser;
- where the data answers a payload with DISCONNECT or CONNACK 0x81/0x82/0x85 and
  the codec refuses it too, the codec's reason code is the data's, except in the
  categories of :data:`SPEC_VS_MOSQUITTO` where the codec follows the OASIS text
  and Mosquitto (which wrote the data) chose the other code.

A payload the data refuses but the codec parses is not a failure: most are the
broker's rules (a PUBREL for an unknown packet id, a topic alias above the maximum,
an unsupported authentication method) and wait for the broker's MQTT 5 support.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest

from edge.mqtt.codec import Connect, MqttError, Parser, encode
from edge.mqtt.properties import Properties
from tests.conformance.test_mqtt_sequences import DATA, parse_payload

pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason=f"no conformance data at {DATA}")

#: Where the codec and the data disagree on the reason code, and why. Each entry is a
#: pattern on the codec's error ``reason``, the code the codec gives, the data's code.
SPEC_VS_MOSQUITTO: list[tuple[str, int, int, str]] = [
    (
        r"is not allowed here$",
        0x81,
        0x82,
        "a property the packet type may not carry: 'a Malformed Packet' in section "
        "2.2.2.2; Mosquitto answers Protocol Error",
    ),
    (
        r"^(DISCONNECT|AUTH|PUBREL): fixed-header flags",
        0x81,
        0x82,
        "reserved fixed-header flags are malformed (section 2.1.3); Mosquitto says "
        "Protocol Error for these three types (and Malformed for the others)",
    ),
    (
        r"packet identifier 0$",
        0x81,
        0x82,
        "packet identifier 0: malformed, as the codec has always said for 3.1.1",
    ),
    (
        r"^reserved (packet )?type 0",
        0x81,
        0x82,
        "packet type 0 is reserved (section 2.1.2): malformed",
    ),
    (
        r"may not be sent by a client$",
        0x82,
        0x81,
        "a server-to-client packet from a client: a protocol error (the packet is "
        "well-formed, the direction is wrong); Mosquitto says Malformed",
    ),
    (
        r"^PUBLISH: (wildcard in topic name|DUP set on a QoS 0|empty topic name)",
        0x82,
        0x81,
        "PUBLISH rules without a stated class, kept as the 3.1.1 codec had them",
    ),
    (
        r"^SUBSCRIBE: (maximum QoS 3|retain handling 3)",
        0x82,
        0x81,
        "section 3.8.3.1: 'It is a Protocol Error' for QoS 3 and Retain Handling 3",
    ),
    (
        r"^(UN)?SUBSCRIBE: no topic filter$",
        0x82,
        0x81,
        "[MQTT-3.8.3-2], [MQTT-3.10.3-2]: a SUBSCRIBE/UNSUBSCRIBE without a filter is "
        "a Protocol Error",
    ),
]


def _cases() -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    for path in sorted(DATA.glob("*.json")):
        for group in json.loads(path.read_text()):
            if group.get("disable"):
                continue
            for test in group["tests"]:
                if test.get("ver", group.get("ver", 4)) == 5:
                    yield f"{path.stem}: {' '.join(group['group'].split())}", group, test


def _refusal(payload: str) -> int | None:
    """The reason code of an error DISCONNECT or CONNACK, else None."""
    data = parse_payload(payload)
    if data[:1] == b"\xe0" and len(data) >= 3 and data[2] >= 0x80:
        return data[2]
    if data[:1] == b"\x20" and len(data) >= 4 and data[3] >= 0x80:
        return data[3]
    return None


class Replay:
    """What the codec made of the data: accepted sends, recv payloads, refusals."""

    def __init__(self) -> None:
        self.accepted: list[tuple[str, str, str | None]] = []  # (case, payload, error)
        self.received: list[tuple[str, str, str | None]] = []
        # (case, payload, the data's code, the codec's code, the codec's reason)
        self.refused: list[tuple[str, str, int, int, str]] = []
        self.cases = 0

    def run(self) -> Replay:
        for where, group, test in _cases():
            self.cases += 1
            self._case(f"{where}: {' '.join(test['name'].split())}", group, test)
        return self

    def _case(self, case: str, group: dict[str, Any], test: dict[str, Any]) -> None:
        server = Parser(server_side=True)
        client = Parser(server_side=False, protocol_level=5)
        if test.get("connect", group.get("connect", True)):
            # The README's default: client id "<group> <test>", clean, keepalive 60,
            # MQTT level 5 with Receive Maximum 20.
            server.feed(
                encode(
                    Connect(
                        client_id=f"{group['group']} {test['name']}",
                        keepalive=60,
                        protocol_level=5,
                        properties=Properties(receive_maximum=20),
                    )
                )
            )
        open_at_end = not test.get("expect_disconnect", group.get("expect_disconnect", True))
        msgs = test["msgs"]
        # What the broker sends, all of it (error DISCONNECTs included): one stream.
        for msg in msgs:
            if msg["type"] == "recv":
                self.received.append((case, msg["payload"], _error(client, msg["payload"])))
        for i, msg in enumerate(msgs):
            if msg["type"] != "send":
                continue
            nxt = msgs[i + 1] if i + 1 < len(msgs) else None
            refused_with = (
                _refusal(nxt["payload"]) if nxt is not None and nxt["type"] == "recv" else None
            )
            try:
                server.feed(parse_payload(msg["payload"]))
            except MqttError as exc:
                if refused_with is not None:
                    self.refused.append(
                        (case, msg["payload"], refused_with, exc.reason_code, exc.reason)
                    )
                elif nxt is not None or open_at_end:
                    self.accepted.append((case, msg["payload"], exc.reason))
                return  # the connection is over either way
            if refused_with is not None:
                return  # refused by the broker's rules, not the codec's
            if nxt is not None or open_at_end:
                self.accepted.append((case, msg["payload"], None))


def _error(parser: Parser, payload: str) -> str | None:
    try:
        parser.feed(parse_payload(payload))
    except MqttError as exc:
        return exc.reason
    return None


@pytest.fixture(scope="module")
def replay() -> Replay:
    return Replay().run()


def test_the_data_has_the_mqtt5_cases(replay: Replay) -> None:
    # The conformance README and the notes count about 1,500 MQTT 5 cases.
    assert replay.cases > 1400


def test_every_payload_a_server_accepts_parses(replay: Replay) -> None:
    assert len(replay.accepted) > 230
    failed = [f"{case}: {payload!r}: {error}" for case, payload, error in replay.accepted if error]
    assert failed == []


def test_every_payload_the_broker_sends_parses_client_side(replay: Replay) -> None:
    assert len(replay.received) > 1400
    failed = [f"{case}: {payload!r}: {error}" for case, payload, error in replay.received if error]
    assert failed == []


def test_refusals_carry_the_datas_reason_code_or_a_documented_one(replay: Replay) -> None:
    agreed = 0
    unexplained: list[str] = []
    used: set[str] = set()
    for case, payload, expected, got, reason in replay.refused:
        if got == expected:
            agreed += 1
            continue
        for pattern, ours, theirs, _why in SPEC_VS_MOSQUITTO:
            if (got, expected) == (ours, theirs) and re.search(pattern, reason):
                used.add(pattern)
                break
        else:
            unexplained.append(
                f"{case}: {payload!r}: data {expected:#04x}, codec {got:#04x} {reason}"
            )
    assert unexplained == []
    # Agreement on the bulk: malformed lengths, UTF-8, duplicates, bad values, ...
    assert agreed > 950
    # Every documented disagreement still happens (else the list is stale).
    assert used == {pattern for pattern, *_ in SPEC_VS_MOSQUITTO}
