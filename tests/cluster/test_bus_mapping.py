"""The bus's pure parts: topic-to-subject mapping (nats-server's rules), the wire form, imports."""

from __future__ import annotations

import subprocess
import sys

import pytest

from edge.cluster.bus import (
    _decode,
    _decode_events,
    _encode,
    _encode_events,
    filter_subjects,
    topic_subject,
)
from edge.core.events import EventLog
from edge.core.router import Message, Metadata
from edge.core.session import PeerCertificate

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize(
    ("topic", "subject"),
    [
        ("a/b/c", "a.b.c"),
        ("/a/b", "/.a.b"),
        ("a/b/", "a.b./"),
        ("a//b", "a./.b"),
        ("spBv1.0/x", "spBv1//0.x"),
        ("$SYS/broker", "$SYS.broker"),
        ("caf\u00e9/x", "caf\u00e9.x"),
    ],
)
def test_topics_map_as_nats_server_maps_them(topic: str, subject: str) -> None:
    assert topic_subject(topic) == subject


@pytest.mark.parametrize("topic", ["with space/x", "tab\there", "a/*/b", "a/>", "del\x7f"])
def test_topics_that_cannot_be_subjects_have_none(topic: str) -> None:
    assert topic_subject(topic) is None


@pytest.mark.parametrize(
    ("topic_filter", "subjects"),
    [
        ("a/+/c", ["a.*.c"]),
        ("a/#", ["a.>", "a"]),
        ("#", [">"]),
        ("+/#", ["*.>", "*"]),
        ("a.b/+", ["a//b.*"]),
        ("a/ b", [">"]),  # unmappable: everything, the router decides
        ("a/*", [">"]),
    ],
)
def test_filters_cover_what_mqtt_matches(topic_filter: str, subjects: list[str]) -> None:
    assert filter_subjects(topic_filter) == subjects


def test_a_message_crosses_the_wire_whole() -> None:
    meta = Metadata(
        content_type="text/plain",
        response_topic="r/1",
        correlation_data=b"\x00\x01",
        user_properties=[("k", "v"), ("k", "w")],
        payload_format=1,
        expires_at=None,
    )
    message = Message("t/\u00e9\n", b"\x00payload\n", 2, True, "set/dev", "mqtt", 1.0, meta=meta)
    message.source = "mqtt:set/dev:c"
    key, seq, back = _decode(_encode("w1", 7, message))
    assert (key, seq) == ("w1", 7)
    assert (back.topic, back.payload, back.qos, back.retain) == (
        "t/\u00e9\n",
        b"\x00payload\n",
        2,
        True,
    )
    assert (back.origin, back.protocol, back.source) == ("set/dev", "mqtt", "mqtt:set/dev:c")
    assert back.meta is not None
    assert back.meta.user_properties == [("k", "v"), ("k", "w")]
    assert back.meta.correlation_data == b"\x00\x01"
    assert back.meta.content_type == "text/plain"


def test_events_cross_the_wire_as_the_admin_worker_emits_them() -> None:
    # The emitting worker's raw listener sees each event as emitted; the admin worker
    # emits what the message decodes to: same kind, outcome, fields, time, plus worker.
    cert = PeerCertificate(
        subject="CN=dev-1",
        issuer="CN=ca",
        serial="0a",
        sha256="ab" * 32,
        not_before="2026-01-01T00:00:00Z",
        not_after="2027-01-01T00:00:00Z",
    )
    here = EventLog(log_events=False)
    heard: list[tuple[str, str, int | str, dict[str, object]]] = []
    here.add_raw_listener(
        lambda kind, outcome, when, fields: heard.append((kind, outcome, when, fields))
    )
    here.emit("tls.accepted", "accepted", identity="s/dev-1", certificate=cert, handshake_ms=1.5)
    here.emit("mqtt.connected", "accepted", identity="s/dev-1", client_id="c\u00e9", keepalive=0)
    here.emit("tls.accepted", "accepted", identity="s/dev-2", certificate=None, handshake_ms=2.0)
    here.emit("cluster.bus", "error", state="disconnected", worker="n/7")
    there = EventLog(log_events=False)
    for kind, outcome, fields in _decode_events(_encode_events("n/1", heard)):
        there.emit(kind, outcome, **fields)
    sent, got = list(here), list(there)
    assert len(got) == 4
    for a, b in zip(sent, got, strict=True):
        assert b.pop("worker") == a.pop("worker", "n/1")
        assert a == b, "an event changed on its way to the admin worker"
    assert got[0]["certificate"]["subject"] == "CN=dev-1"
    # The supervisor sends a single event as a dict.
    assert _decode_events(b'{"kind":"worker.restarted","outcome":"info","pid":7}') == [
        ("worker.restarted", "info", {"pid": 7})
    ]


def test_the_single_process_edge_never_imports_nats() -> None:
    code = (
        "import sys, edge.cli, edge.server, edge.server_cli, edge.core.hub, edge.mqtt.broker;"
        "assert 'nats' not in sys.modules, 'nats imported';"
        "assert not [m for m in sys.modules if m.startswith('edge.cluster')], 'edge.cluster imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
