"""MQTT 3.1.1 decoding, differentially: edgesim's codec against ``mqtt-codec`` (PyPI).

Every input holds at most one packet. Each side answers: the decoded packet (its
type and fields), "incomplete" (the bytes end inside the packet), or an error.
They agree when both decode equal fields, both say incomplete, or both refuse
(the error classes differ by design and are not compared). Any other answer pair
is a disagreement: a known, explained one is in ``TRIAGED`` below (each with the
spec section); any other fails the test, printing the packet hex and both answers.

mqtt-codec runs in ``.venv-oracle`` (``make oracle-venv``; ``make unit`` builds
it) as a subprocess, one call per batch: its only release cannot be installed
beside this project's build (tests/fuzz/oracle-requirements.txt says why). The
inputs: valid packets, mutated packets, framed and raw arbitrary bytes
(hypothesis), and every 3.1.1 packet of ``../shared/conformance/mqtt-sequences``.
The tally of answers and disagreements by class is printed at the end of the module.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge.mqtt.codec import (
    Connack,
    Connect,
    Packet,
    Parser,
    Pingresp,
    Puback,
    Pubcomp,
    Pubrec,
    Pubrel,
    Suback,
    Unsuback,
    encode,
)
from edge.mqtt.errors import MqttError
from tests.conformance.test_mqtt_sequences import DATA, load_cases, parse_payload
from tests.fuzz.test_mqtt_codec_properties import client_packets, connects, packet_ids

ROOT = Path(__file__).parents[2]
ORACLE_PYTHON = ROOT / ".venv-oracle" / "bin" / "python"
ORACLE = Path(__file__).with_name("mqtt_codec_oracle.py")

pytestmark = [
    pytest.mark.timeout(1800 if os.environ.get("HYPOTHESIS_PROFILE") == "long" else 180),
    pytest.mark.skipif(
        not ORACLE_PYTHON.exists(),
        reason="no .venv-oracle: `make oracle-venv` builds it (`make unit` does too)",
    ),
]

Answer = dict[str, Any]

# --- the two decoders ------------------------------------------------------------------

# Packets only a broker sends: parsed with a client-side parser. The rest (what a
# client sends, and the acknowledgements both send) with a server-side one.
_SERVER_TO_CLIENT_ONLY = {2, 9, 11, 13}


def frame(data: bytes) -> bytes:
    """``data`` cut after its first packet, when the fixed header says where that ends."""
    remaining, multiplier = 0, 1
    for i in range(1, min(len(data), 5)):
        remaining += (data[i] & 0x7F) * multiplier
        multiplier *= 128
        if data[i] < 128:
            return data[: i + 1 + remaining]
    return data


def edgesim_answer(data: bytes) -> Answer:
    """edgesim's answer for one input (the shape ``mqtt_codec_oracle.normalise`` gives)."""
    server_side = not data or data[0] >> 4 not in _SERVER_TO_CLIENT_ONLY
    parser = Parser(server_side=server_side, protocol_level=4)
    try:
        packets = parser.feed(data)
    except MqttError as exc:
        return {"error": type(exc).__name__, "detail": str(exc)}
    if not packets:
        return {"incomplete": True}
    assert len(packets) == 1, "frame() gives one packet at most"
    assert not parser.buffered
    return {"ok": normalise(packets[0])}


def normalise(p: Packet) -> dict[str, Any]:
    """edgesim's packet as the oracle script shapes mqtt-codec's."""
    kind = type(p).__name__.lower()
    if isinstance(p, Connect):
        will = p.will
        return {
            "type": kind,
            "client_id": p.client_id,
            "clean_session": p.clean_session,
            "keepalive": p.keepalive,
            "username": p.username,
            "password": None if p.password is None else p.password.hex(),
            "will": None
            if will is None
            else {
                "topic": will.topic,
                "payload": will.payload.hex(),
                "qos": will.qos,
                "retain": will.retain,
            },
            # Not in mqtt-codec's answer (it takes only MQTT/4): kept to triage by.
            "protocol": [p.protocol_name, p.protocol_level],
        }
    if isinstance(p, Connack):
        return {"type": kind, "session_present": p.session_present, "return_code": p.return_code}
    fields: dict[str, Any] = {"type": kind}
    for name in ("topic", "payload", "qos", "retain", "dup", "packet_id", "topics"):
        if hasattr(p, name):
            fields[name] = getattr(p, name)
    if "payload" in fields:
        fields["payload"] = fields["payload"].hex()
    if "topics" in fields and kind == "subscribe":
        fields["topics"] = [list(t) for t in fields["topics"]]
    if isinstance(p, Suback):
        fields["return_codes"] = p.return_codes
    return fields


def oracle_answers(inputs: list[bytes]) -> list[Answer]:
    """mqtt-codec's answers for a batch: one subprocess for the whole batch."""
    lines = "".join(json.dumps({"hex": data.hex()}) + "\n" for data in inputs)
    done = subprocess.run(
        [str(ORACLE_PYTHON), str(ORACLE)],
        input=lines,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    answers = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(answers) == len(inputs), done.stderr
    return answers


# --- triage ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Triaged:
    """A known class of disagreement: how to recognise it, and why it is not a bug."""

    reason: str
    matches: Callable[[bytes, Answer, Answer], bool]


def _accepts(answer: Answer, *types: str) -> bool:
    return "ok" in answer and answer["ok"]["type"] in types


def _refuses(answer: Answer, *details: str) -> bool:
    """``answer`` is an error whose detail contains one of ``details``."""
    return "error" in answer and any(d in answer["detail"] for d in details)


def _binary_password(data: bytes, edge: Answer, oracle: Answer) -> bool:
    if not _accepts(edge, "connect") or edge["ok"]["password"] is None:
        return False
    try:
        bytes.fromhex(edge["ok"]["password"]).decode("utf-8")
    except UnicodeDecodeError:
        return oracle.get("error") == "Utf8DecodeError"
    return False


_FORBIDDEN = re.compile(r"forbidden character U\+([0-9A-F]{4,6})")


def _code_point(edge: Answer) -> int | None:
    match = _FORBIDDEN.search(edge.get("detail", ""))
    return int(match.group(1), 16) if match else None


_MINIMAL_CONNECT = b"\x00\x04MQTT\x04\x02\x00\x3c\x00\x00"


def _header_checked_late(data: bytes, edge: Answer, oracle: Answer) -> bool:
    if not (edge.get("incomplete") and _refuses(oracle, "Invalid flags", "Unknown packet type")):
        return False
    # Completed with a body that is valid for its type (a packet identifier, or a
    # minimal 3.1.1 CONNECT body), the packet is refused for that same header.
    body = _MINIMAL_CONNECT if data[0] >> 4 == 1 else b"\x00\x01"
    complete = edgesim_answer(_reframe(data[0], body))
    return _refuses(complete, "fixed-header flags", "reserved packet type")


TRIAGED: dict[str, Triaged] = {
    "binary password": Triaged(
        "mqtt-codec is wrong: it decodes the CONNECT password as a UTF-8 string and refuses "
        "other bytes; in 3.1.1 the password is Binary Data (section 3.1.3.5).",
        _binary_password,
    ),
    "other protocol level": Triaged(
        "By design: mqtt-codec takes only MQTT/4; edgesim also parses MQTT 3.1 (MQIsdp/3) and "
        "5, and any other level's CONNECT so that the broker can answer CONNACK 0x01 "
        "(section 3.1.2.2, [MQTT-3.1.2-2]).",
        lambda data, edge, oracle: (
            _accepts(edge, "connect")
            and edge["ok"]["protocol"] != ["MQTT", 4]
            and _refuses(oracle, "Invalid protocol level", "Invalid connect packet header")
        ),
    ),
    "header checked when complete": Triaged(
        "Timing only: mqtt-codec refuses a reserved packet type or wrong fixed-header flags "
        "on the first byte; edgesim reads the whole packet first, then refuses it (checked "
        "here by completing it). Both close the connection, as [MQTT-2.2.2-2] demands, "
        "which does not say when.",
        _header_checked_late,
    ),
    "U+0000 in a string": Triaged(
        "mqtt-codec is wrong: a UTF-8 string with U+0000 MUST make the receiver close the "
        "connection ([MQTT-1.5.3-2]); mqtt-codec accepts it, edgesim refuses it.",
        lambda data, edge, oracle: "ok" in oracle and _code_point(edge) == 0,
    ),
    "discouraged code point in a string": Triaged(
        "edgesim is stricter, as allowed: U+0001-U+001F, U+007F-U+009F and non-characters "
        "SHOULD NOT appear, and a receiver MAY close the connection (section 1.5.3); "
        "edgesim does, mqtt-codec accepts them.",
        lambda data, edge, oracle: "ok" in oracle and (_code_point(edge) or 0) > 0,
    ),
    "packet identifier 0": Triaged(
        "mqtt-codec is looser: packet identifiers are non-zero ([MQTT-2.3.1-1]; an "
        "acknowledgement carries the identifier of a packet that had one, [MQTT-2.3.1-6,7]).",
        lambda data, edge, oracle: (
            "ok" in oracle
            and oracle["ok"].get("packet_id") == 0
            and _refuses(edge, "packet identifier 0")
        ),
    ),
    "invalid topic name": Triaged(
        "mqtt-codec is looser: a PUBLISH topic name has no wildcards ([MQTT-3.3.2-2]) and "
        "is at least one character long ([MQTT-4.7.3-1]).",
        lambda data, edge, oracle: (
            _accepts(oracle, "publish")
            and _refuses(edge, "wildcard in topic name", "empty topic name")
        ),
    ),
    "invalid topic filter": Triaged(
        "mqtt-codec is looser: a topic filter is at least one character long "
        "([MQTT-4.7.3-1]) and uses '#' and '+' only as whole levels, '#' last "
        "([MQTT-4.7.1-2], [MQTT-4.7.1-3]).",
        lambda data, edge, oracle: (
            _accepts(oracle, "subscribe", "unsubscribe")
            and _refuses(edge, "invalid topic filter", "empty topic filter")
        ),
    ),
    "will QoS 3": Triaged(
        "mqtt-codec is looser: the will QoS MUST NOT be 3 ([MQTT-3.1.2-14]).",
        lambda data, edge, oracle: (
            _accepts(oracle, "connect")
            and oracle["ok"]["will"] is not None
            and oracle["ok"]["will"]["qos"] == 3
            and _refuses(edge, "will QoS 3")
        ),
    ),
    "will retain without will": Triaged(
        "mqtt-codec is looser: without the will flag the will retain flag MUST be 0 "
        "([MQTT-3.1.2-15]); mqtt-codec checks only the will QoS ([MQTT-3.1.2-13]).",
        lambda data, edge, oracle: (
            _accepts(oracle, "connect")
            and oracle["ok"]["will"] is None
            and _refuses(edge, "will QoS/retain set without the will flag")
        ),
    ),
    "password without user name": Triaged(
        "mqtt-codec is looser: without the user name flag the password flag MUST be 0 "
        "([MQTT-3.1.2-22]).",
        lambda data, edge, oracle: (
            _accepts(oracle, "connect")
            and oracle["ok"]["username"] is None
            and oracle["ok"]["password"] is not None
            and _refuses(edge, "password flag set without the user name flag")
        ),
    ),
}

# --- the comparison --------------------------------------------------------------------

TALLY: Counter[str] = Counter()


def compare(inputs: list[bytes]) -> list[tuple[Answer, Answer]]:
    """Decode ``inputs`` on both sides; fail on any disagreement not in ``TRIAGED``.

    Returns the answer pairs (edgesim's, mqtt-codec's), in input order.
    """
    inputs = [frame(data) for data in inputs]
    untriaged: list[str] = []
    pairs: list[tuple[Answer, Answer]] = []
    for data, oracle in zip(inputs, oracle_answers(inputs), strict=True):
        edge = edgesim_answer(data)
        pairs.append((edge, oracle))
        TALLY["compared"] += 1
        if "ok" in edge and "ok" in oracle:
            without = {k: v for k, v in edge["ok"].items() if k != "protocol"}
            agree = without == oracle["ok"]
            TALLY["both accept"] += agree
        elif "error" in edge and "error" in oracle:
            agree = True
            TALLY["both refuse"] += 1
        else:
            agree = edge.get("incomplete") is True and oracle.get("incomplete") is True
            TALLY["both incomplete"] += agree
        if agree:
            continue
        known = [name for name, t in TRIAGED.items() if t.matches(data, edge, oracle)]
        if known:
            TALLY[f"disagree: {known[0]}"] += 1
            continue
        TALLY["disagree: untriaged"] += 1
        untriaged.append(f"{data.hex()}\n  edgesim:    {edge}\n  mqtt-codec: {oracle}")
    assert not untriaged, f"{len(untriaged)} untriaged disagreements:\n" + "\n".join(untriaged[:20])
    return pairs


@pytest.fixture(scope="module", autouse=True)
def _print_tally(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    # Printed past the output capture, so that `make fuzz` and `make test` show it.
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None or not TALLY:
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line("")
        reporter.write_line("mqtt-codec oracle: " + ", ".join(f"{k} {v}" for k, v in TALLY.items()))


# --- the inputs ------------------------------------------------------------------------

server_packets: st.SearchStrategy[Packet] = st.one_of(
    st.builds(Connack, session_present=st.booleans(), return_code=st.integers(0, 5)),
    st.builds(
        Suback,
        packet_id=packet_ids,
        return_codes=st.lists(st.sampled_from([0, 1, 2, 0x80]), min_size=1, max_size=4),
    ),
    st.builds(Unsuback, packet_id=packet_ids),
    st.builds(Pubrec, packet_id=packet_ids),
    st.builds(Pubrel, packet_id=packet_ids),
    st.builds(Pubcomp, packet_id=packet_ids),
    st.builds(Puback, packet_id=packet_ids),
    st.just(Pingresp()),
)
valid_packets = st.one_of(connects(4), client_packets(4), server_packets).map(
    lambda p: encode(p, protocol_level=4)
)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        value, digit = value >> 7, value & 0x7F
        out.append(digit | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _reframe(first: int, body: bytes) -> bytes:
    return bytes([first]) + _varint(len(body)) + body


def _split_header(packet: bytes) -> tuple[int, bytes]:
    i = 1
    while packet[i] & 0x80:
        i += 1
    return packet[0], packet[i + 1 :]


@st.composite
def mutated_packets(draw: st.DrawFn) -> bytes:
    """A valid packet with one change, mostly re-framed so the length still fits."""
    first, body = _split_header(draw(valid_packets))
    how = draw(st.sampled_from(["flip", "flags", "truncate", "insert", "delete", "raw"]))
    if how == "flags":
        first = (first & 0xF0) | draw(st.integers(0, 15))
    elif how == "raw":  # a byte anywhere, the length left as it was
        packet = bytearray(_reframe(first, body))
        packet[draw(st.integers(0, len(packet) - 1))] = draw(st.integers(0, 255))
        return bytes(packet)
    elif body:
        at = draw(st.integers(0, len(body) - 1))
        if how == "flip":
            body = body[:at] + bytes([draw(st.integers(0, 255))]) + body[at + 1 :]
        elif how == "truncate":
            body = body[:at]
        elif how == "delete":
            body = body[:at] + body[at + 1 :]
        else:
            body = body[:at] + draw(st.binary(min_size=1, max_size=3)) + body[at:]
    return _reframe(first, body)


framed_bytes = st.builds(
    _reframe,
    st.sampled_from([t << 4 | f for t in range(16) for f in (0, 2)] + [0x31, 0x3A, 0x3D]),
    st.binary(max_size=40),
)
arbitrary_inputs = st.one_of(framed_bytes, st.binary(min_size=1, max_size=60))


def batches(inputs: st.SearchStrategy[bytes]) -> st.SearchStrategy[list[bytes]]:
    """20-40 inputs: one oracle subprocess each."""
    return st.lists(inputs, min_size=20, max_size=40)


@given(batch=batches(valid_packets))
def test_valid_packets_agree(batch: list[bytes]) -> None:
    pairs = compare(batch)
    # Valid packets: a comparison where both sides refuse would prove nothing.
    assert all("ok" in edge for edge, _ in pairs)


@given(batch=batches(mutated_packets()))
def test_mutated_packets_agree(batch: list[bytes]) -> None:
    compare(batch)


@given(batch=batches(arbitrary_inputs))
def test_arbitrary_bytes_agree(batch: list[bytes]) -> None:
    compare(batch)


def conformance_packets() -> list[bytes]:
    """Every packet sent or expected in the 3.1.1 cases, split at packet boundaries."""
    packets: list[bytes] = []
    for case in load_cases(DATA, versions=(4,)):
        for msg in case.msgs:
            if msg["type"] not in ("send", "recv"):
                continue
            data = parse_payload(msg["payload"])
            while data:
                packet = frame(data)
                packets.append(packet)
                data = data[len(packet) :]
    return packets


def test_conformance_packets_agree() -> None:
    if not DATA.is_dir():
        pytest.skip(f"no conformance data at {DATA}")
    packets = conformance_packets()
    assert len(packets) > 200  # the data set's 3.1.1 part, not an empty glob
    pairs = compare(packets)
    both = sum("ok" in edge and "ok" in oracle for edge, oracle in pairs)
    assert both > 100, f"only {both} of {len(pairs)} packets decoded on both sides"
