"""The event log: what readers get back, whatever the log keeps inside."""

from __future__ import annotations

import asyncio
import json

import pytest

from edge.core import events as events_module
from edge.core.events import EventLog
from edge.core.session import PeerCertificate

CERT = PeerCertificate(
    subject="CN=dev-1",
    issuer="CN=Fleet CA",
    serial="1f",
    sha256="ab" * 32,
    not_before="2026-01-01T00:00:00+00:00",
    not_after="2027-01-01T00:00:00+00:00",
)


def test_events_read_back_as_plain_json_ready_dicts() -> None:
    log = EventLog(log_events=False)
    first = log.emit("tls.accepted", "accepted", identity="default/dev-1", certificate=CERT)
    log.emit("mqtt.connected", "accepted", identity="default/dev-1", client_id="dev-1")
    log.emit("tls.refused", "refused", peer="10.0.0.9:4711", certificate=None, time="T")
    assert first == 1
    got = log.query()
    assert [e["id"] for e in got] == [1, 2, 3]
    assert got[0]["certificate"] == CERT.as_dict()
    assert got[0]["kind"] == "tls.accepted"
    assert got[0]["outcome"] == "accepted"
    assert got[1] == {
        "id": 2,
        "time": got[1]["time"],
        "kind": "mqtt.connected",
        "outcome": "accepted",
        "identity": "default/dev-1",
        "client_id": "dev-1",
    }
    assert got[2]["time"] == "T"  # a given time is kept
    assert got[2]["certificate"] is None
    json.dumps(got)  # nothing but JSON types
    assert list(log) == got


def test_readers_get_copies_the_log_does_not_share() -> None:
    log = EventLog(log_events=False)
    log.emit("a.b", "info", n=1)
    log.query()[0]["n"] = 99
    assert log.query()[0]["n"] == 1


def test_filters_work_across_event_shapes() -> None:
    log = EventLog(log_events=False)
    log.emit("tls.accepted", "accepted", identity="s/a", sni=None)
    log.emit("tls.refused", "refused", peer="p")  # no identity field at all
    log.emit("mqtt.connected", "accepted", identity="s/b", client_id="b")
    log.emit("mqtt.connected", "accepted", identity="s/a", client_id="a")
    assert [e["id"] for e in log.query(identity="s/a")] == [1, 4]
    assert [e["id"] for e in log.query(kind="tls.")] == [1, 2]
    assert [e["id"] for e in log.query(outcome="accepted", since=1)] == [3, 4]
    assert [e["id"] for e in log.query(limit=1)] == [4]


def test_the_ring_keeps_the_newest_and_shapes_stay_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(events_module, "_MAX_SHAPES", 3)
    log = EventLog(capacity=5, log_events=False)
    for i in range(10):
        log.emit("x", "info", **{f"field{i}": i})  # a new shape every time
    assert [e["id"] for e in log.query()] == [6, 7, 8, 9, 10]
    assert log.query()[-1]["field9"] == 9
    assert len(log._shapes) == 3


@pytest.mark.timeout(10)
async def test_wait_for_and_listeners_see_dicts() -> None:
    log = EventLog(log_events=False)
    heard: list[dict[str, object]] = []
    log.add_listener(heard.append)

    # Emitted once wait_for is already waiting.
    asyncio.get_running_loop().call_soon(
        lambda: log.emit("tls.refused", "refused", certificate=CERT)
    )
    event = await log.wait_for(lambda e: e["kind"] == "tls.refused", timeout=5)
    assert event["certificate"] == CERT.as_dict()
    assert heard == [event]


@pytest.mark.timeout(10)
def test_raw_listeners_get_events_as_emitted_and_can_leave() -> None:
    log = EventLog(log_events=False)
    heard: list[tuple[str, str, int | str, dict[str, object]]] = []

    def broken(kind: str, outcome: str, when: int | str, fields: dict[str, object]) -> None:
        raise RuntimeError("a broken listener")

    log.add_raw_listener(broken)
    remove = log.add_raw_listener(lambda *event: heard.append(event))
    log.emit("tls.refused", "refused", certificate=CERT, reason="r")
    log.emit("probe", "info", time="2026-01-01T00:00:00.000Z")
    (kind, outcome, when, fields), (_, _, given, _) = heard
    assert (kind, outcome) == ("tls.refused", "refused")
    # The fields as given: the certificate object, no id, no formatted time.
    assert fields == {"certificate": CERT, "reason": "r"}
    assert isinstance(when, int)
    assert log.query()[0]["certificate"] == CERT.as_dict()  # readers still get a dict
    assert given == "2026-01-01T00:00:00.000Z"
    remove()
    log.emit("probe", "info")
    assert len(heard) == 2
    assert log.last_id == 3, "the broken listener stopped an emit"
