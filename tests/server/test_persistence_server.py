"""Durable MQTT state through EdgeServer: a clean restart, the [persistence] table, the flag."""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
from pathlib import Path

import pytest

from certs.quickstart import QuickstartResult, quickstart
from edge.config import (
    EdgeConfig,
    EdgeConfigError,
    HostPort,
    ListenersConfig,
    PersistenceConfig,
    TrustConfig,
    config_from_dict,
)
from edge.mqtt.codec import Connack, Connect, Parser, Puback, Publish, Suback, Subscribe, encode
from edge.server import EdgeServer, EdgeServerError
from edge.server_cli import build_config


@pytest.fixture(scope="module")
def qs(tmp_path_factory: pytest.TempPathFactory) -> QuickstartResult:
    return quickstart(tmp_path_factory.mktemp("qs") / "pki", devices=2)


def config(tmp_path: Path, qs: QuickstartResult, **changes: object) -> EdgeConfig:
    return EdgeConfig(
        state_dir=tmp_path / "state",
        listeners=ListenersConfig(mqtt=HostPort(host="127.0.0.1", port=0), https=None, admin=None),
        trust=TrustConfig(store=tmp_path / "trust.db", watch_interval=None),
        pki_dir=qs.out,
        policy="open",
    ).with_overrides(**changes)


class Device:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.parser = Parser(server_side=False)
        self.backlog: list[object] = []

    @classmethod
    async def connect(cls, port: int, qs: QuickstartResult, device: str, clean: bool) -> Device:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(cafile=str(qs.root_cert))
        ctx.load_cert_chain(
            str(qs.devices_dir / f"{device}.pem"), str(qs.devices_dir / f"{device}.key")
        )
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=ctx, server_hostname="localhost"
        )
        self = cls(reader, writer)
        writer.write(encode(Connect(client_id=device, clean_session=clean)))
        return self

    async def next(self) -> object:
        while not self.backlog:
            data = await asyncio.wait_for(self.reader.read(65536), 10)
            assert data, "connection closed"
            self.backlog += self.parser.feed(data)
        return self.backlog.pop(0)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ssl.SSLError, ConnectionError):
            await self.writer.wait_closed()


@pytest.mark.timeout(60)
async def test_sessions_messages_and_retained_survive_a_clean_restart(
    tmp_path: Path, qs: QuickstartResult
) -> None:
    cfg = config(tmp_path, qs)
    async with EdgeServer(cfg) as edge:
        port = edge.ports["mqtt"]
        sub = await Device.connect(port, qs, "dev-00000", clean=False)
        assert await sub.next() == Connack(False, 0)
        sub.writer.write(encode(Subscribe(1, [("fleet/#", 1)])))
        assert isinstance(await sub.next(), Suback)
        await sub.close()
        pub = await Device.connect(port, qs, "dev-00001", clean=True)
        assert await pub.next() == Connack(False, 0)
        pub.writer.write(
            encode(Publish("fleet/a", b"\x00\xffone", qos=1, packet_id=1))
            + encode(Publish("fleet/r", b"kept", qos=1, retain=True, packet_id=2))
        )
        # Acknowledged only once committed to the state file.
        assert [await pub.next(), await pub.next()] == [Puback(1), Puback(2)]
        await pub.close()
    assert cfg.mqtt_state_path == tmp_path / "trust.db.mqtt"
    assert cfg.mqtt_state_path.exists()

    async with EdgeServer(cfg) as edge:
        restored = await edge.events.wait_for(lambda e: e["kind"] == "mqtt.restored")
        assert (restored["sessions"], restored["messages"], restored["retained"]) == (1, 2, 1)
        sub = await Device.connect(edge.ports["mqtt"], qs, "dev-00000", clean=False)
        assert await sub.next() == Connack(True, 0)
        got = [await sub.next(), await sub.next()]
        assert [(p.topic, p.payload) for p in got if isinstance(p, Publish)] == [
            ("fleet/a", b"\x00\xffone"),
            ("fleet/r", b"kept"),
        ]
        await sub.close()


@pytest.mark.timeout(60)
async def test_persistence_off_keeps_nothing_and_writes_no_file(
    tmp_path: Path, qs: QuickstartResult
) -> None:
    cfg = config(tmp_path, qs, persistence=PersistenceConfig(enabled=False))
    async with EdgeServer(cfg) as edge:
        assert edge.broker.store is None
        sub = await Device.connect(edge.ports["mqtt"], qs, "dev-00000", clean=False)
        assert await sub.next() == Connack(False, 0)
        await sub.close()
    assert not cfg.mqtt_state_path.exists()
    async with EdgeServer(cfg) as edge:
        sub = await Device.connect(edge.ports["mqtt"], qs, "dev-00000", clean=False)
        assert await sub.next() == Connack(False, 0)  # no session came back
        await sub.close()


@pytest.mark.timeout(60)
async def test_two_edges_on_one_state_file_are_refused(
    tmp_path: Path, qs: QuickstartResult
) -> None:
    cfg = config(tmp_path, qs)
    async with EdgeServer(cfg):
        second = config(tmp_path, qs, trust=TrustConfig(store=tmp_path / "other.db"))
        second = second.with_overrides(persistence=PersistenceConfig(path=cfg.mqtt_state_path))
        with pytest.raises(EdgeServerError, match="in use by another edge process"):
            async with EdgeServer(second):
                pass


def test_the_persistence_table_and_its_errors(tmp_path: Path) -> None:
    cfg = config_from_dict(
        {
            "persistence": {"path": "m.db", "synchronous": "normal", "batch_delay": 0.002},
            "mqtt": {"queue_qos0_messages": True},
        },
        base=tmp_path,
        source="edge.toml",
    )
    assert cfg.persistence == PersistenceConfig(
        enabled=True, path=tmp_path / "m.db", synchronous="normal", batch_delay=0.002
    )
    assert cfg.mqtt_state_path == tmp_path / "m.db"
    assert cfg.mqtt.queue_qos0_messages
    for table, message in (
        ({"synchronous": "never"}, 'synchronous: expected "full" or "normal"'),
        ({"batch_delay": 5}, "batch_delay: must be 0 to 1 seconds"),
        ({"enabled": "yes"}, "enabled: expected bool"),
        ({"fsync": True}, "unknown key(s) fsync in [persistence]"),
    ):
        with pytest.raises(EdgeConfigError, match=re.escape(message)):
            config_from_dict({"persistence": table}, base=tmp_path, source="edge.toml")


def test_the_persistence_flag(tmp_path: Path) -> None:
    from edge.cli import build_parser

    def flag(value: str) -> PersistenceConfig:
        args = build_parser().parse_args(["edge", "serve", "--persistence", value])
        return build_config(args).persistence

    assert not flag("off").enabled
    assert flag("on").enabled
    assert flag(str(tmp_path / "x.mqtt")).path == tmp_path / "x.mqtt"
