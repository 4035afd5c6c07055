"""The bus's pure parts: topic-to-subject mapping (nats-server's rules), the wire form, imports."""

from __future__ import annotations

import subprocess
import sys

import pytest

from edge.cluster.bus import _decode, _encode, filter_subjects, topic_subject
from edge.core.router import Message, Metadata

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


def test_the_single_process_edge_never_imports_nats() -> None:
    code = (
        "import sys, edge.cli, edge.server, edge.server_cli, edge.core.hub, edge.mqtt.broker;"
        "assert 'nats' not in sys.modules, 'nats imported';"
        "assert not [m for m in sys.modules if m.startswith('edge.cluster')], 'edge.cluster imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
