"""The SQLite MQTT store: state across reopening the file, group commit on a loop, errors."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from edge.mqtt.broker import MqttBroker
from edge.mqtt.codec import Publish, Pubrec, Subscribe
from edge.mqtt.properties import Properties
from edge.mqtt.sqlite_store import MqttStoreError, SqliteMqttStore

from .test_persistence import Client, make

pytestmark = pytest.mark.timeout(30)


def test_state_survives_closing_and_reopening_the_file(tmp_path: Path) -> None:
    path = tmp_path / "state.mqtt"
    store = SqliteMqttStore(path)
    broker, _ = make(store)
    sub = Client(broker, "sub", level=5)
    sub.connect(props=Properties(session_expiry_interval=600))
    sub.send(Subscribe(1, [("t/#", 2)], properties=Properties(subscription_identifiers=[7])))
    sub.recv()
    sub.conn.connection_lost()
    pub = Client(broker, "pub", level=5)
    # Persistent: its QoS 2 message waits for PUBREL across the restart.
    pub.connect(props=Properties(session_expiry_interval=600))
    props = Properties(user_properties=[("a", "1"), ("a", "2")], correlation_data=b"\xff\x00")
    pub.send(
        Publish("t/r", b"\x00retained\xff", qos=1, retain=True, packet_id=1, properties=props),
        Publish("t/q2", b"two", qos=2, packet_id=2),
    )
    store.flush()
    assert len([p for p in pub.recv() if not isinstance(p, Pubrec)]) == 1  # PUBACK
    watch = Client(broker, "watch", level=5)
    watch.connect(clean=True)
    watch.send(Subscribe(1, [("t/r", 1)]))
    watch.recv()
    retained_bytes = watch.raw[-1]
    store.close()

    again = SqliteMqttStore(path)
    broker2, _ = make(again)
    assert broker2.session("fleet/sub", "sub") is not None
    watch2 = Client(broker2, "watch", level=5)
    watch2.connect(clean=True)
    watch2.send(Subscribe(1, [("t/r", 1)]))
    watch2.recv()
    assert watch2.raw[-1] == retained_bytes
    back = Client(broker2, "sub", level=5)
    assert back.connect(props=Properties(session_expiry_interval=600)).session_present
    (got,) = [p for p in back.recv() if isinstance(p, Publish)]
    assert got.payload == b"\x00retained\xff"
    assert got.properties is not None
    assert got.properties.user_properties == [("a", "1"), ("a", "2")]
    assert got.properties.subscription_identifiers == [7]
    publisher = broker2.session("fleet/pub", "pub")
    assert publisher is not None
    assert [m.message.payload for m in publisher.incoming_qos2.values()] == [b"two"]
    again.close()


def test_a_second_edge_cannot_open_the_same_file(tmp_path: Path) -> None:
    first = SqliteMqttStore(tmp_path / "s.mqtt")
    with pytest.raises(MqttStoreError, match="in use by another edge process"):
        SqliteMqttStore(tmp_path / "s.mqtt")
    first.close()
    SqliteMqttStore(tmp_path / "s.mqtt").close()  # the lock goes with the store


def test_errors_name_the_file_and_the_problem(tmp_path: Path) -> None:
    with pytest.raises(MqttStoreError, match="must be 'full' or 'normal'"):
        SqliteMqttStore(tmp_path / "a.mqtt", synchronous="sometimes")
    newer = tmp_path / "newer.mqtt"
    db = sqlite3.connect(newer)
    db.execute("PRAGMA user_version=99")
    db.close()
    with pytest.raises(MqttStoreError, match=r"newer.mqtt has schema version 99"):
        SqliteMqttStore(newer)
    garbage = tmp_path / "garbage.mqtt"
    garbage.write_bytes(b"not a database" * 100)
    with pytest.raises(MqttStoreError, match=r"cannot open MQTT state file .*garbage\.mqtt"):
        SqliteMqttStore(garbage)


async def test_acks_follow_the_group_commit_on_the_loop(tmp_path: Path) -> None:
    path = tmp_path / "g.mqtt"
    store = SqliteMqttStore(path)
    broker: MqttBroker
    broker, _ = make(store)
    store.start(asyncio.get_running_loop())
    sub = Client(broker, "sub")
    sub.connect()
    sub.send(Subscribe(1, [("t/#", 1)]))
    sub.conn.connection_lost()  # offline: every message is queued for it
    pub = Client(broker, "pub")
    pub.connect(clean=True)
    acked = asyncio.Event()
    count = 200
    pub.conn.wakeup = acked.set
    pub.send(*[Publish("t/x", b"%d" % n, qos=1, packet_id=n + 1) for n in range(count)])
    assert pub.conn.pending_bytes == 0  # nothing acknowledged before the commit
    got: list[int] = []
    while len(got) < count:
        await asyncio.wait_for(acked.wait(), 10)
        acked.clear()
        got += [p.packet_id for p in pub.recv()]  # type: ignore[attr-defined]
    assert got == list(range(1, count + 1))  # in order
    # Batched: far fewer commits than messages, and every acked message is on disk.
    assert store.commits < count
    reader = sqlite3.connect(path)
    assert reader.execute("SELECT count(*) FROM outgoing").fetchone() == (count,)
    reader.close()
    store.close()
