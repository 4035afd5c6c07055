"""``edge serve`` options: topic handlers (``--handlers``), the ``[mqtt]`` table, defaults."""

from __future__ import annotations

import asyncio
import ssl
import sys
from pathlib import Path
from types import ModuleType

import pytest

from certs.cliutil import CliError
from certs.quickstart import QuickstartResult, quickstart
from edge.config import (
    EdgeConfig,
    EdgeConfigError,
    HostPort,
    ListenersConfig,
    TrustConfig,
    load_config,
)
from edge.core.handlers import HandlerRegistry
from edge.mqtt.codec import Connack, Connect, Parser, Publish, Suback, Subscribe, encode
from edge.server import EdgeServer
from edge.server_cli import load_handlers
from edge.services import ota


@pytest.fixture(scope="module")
def qs(tmp_path_factory: pytest.TempPathFactory) -> QuickstartResult:
    """A quickstart PKI with two devices."""
    return quickstart(tmp_path_factory.mktemp("qs") / "pki", devices=2)


def test_defaults_listen_for_mqtt_https_and_admin_on_loopback() -> None:
    listeners = EdgeConfig().listeners
    assert listeners.mqtt == HostPort(host="127.0.0.1", port=8883)
    assert listeners.https == HostPort(host="127.0.0.1", port=8443)
    assert listeners.admin == HostPort(host="127.0.0.1", port=8081)
    assert EdgeConfig().tls.capture_tls13_certificates is True


def test_mqtt_table_reaches_the_broker_config(tmp_path: Path) -> None:
    path = tmp_path / "edge.toml"
    path.write_text("[mqtt]\nmax_packet_size = 4096\nconnect_timeout = 2.5\n")
    cfg = load_config(path)
    assert cfg.mqtt.max_packet_size == 4096
    assert cfg.mqtt.connect_timeout == 2.5


def test_mqtt_table_errors_name_the_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "edge.toml"
    path.write_text("[mqtt]\nmax_pakcet_size = 4096\n")
    with pytest.raises(EdgeConfigError, match=r"edge\.toml \[mqtt\].*max_pakcet_size"):
        load_config(path)
    path.write_text('[mqtt]\nconnect_timeout = "soon"\n')
    with pytest.raises(EdgeConfigError, match=r"connect_timeout: expected a number"):
        load_config(path)


@pytest.fixture
def handler_module(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """A module with a registry, a setup function and a non-callable, importable by name."""
    module = ModuleType("edgesim_test_handlers")
    module.registry = HandlerRegistry()  # type: ignore[attr-defined]
    module.calls = []  # type: ignore[attr-defined]

    def setup(registry: HandlerRegistry) -> None:
        module.calls.append(registry)  # type: ignore[attr-defined]

    def broken(registry: HandlerRegistry) -> None:
        raise RuntimeError("no database")

    module.setup = setup  # type: ignore[attr-defined]
    module.broken = broken  # type: ignore[attr-defined]
    module.number = 3  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, module.__name__, module)
    return module


def test_load_handlers_uses_the_named_registry_and_calls_setups(handler_module: ModuleType) -> None:
    name = handler_module.__name__
    registry = load_handlers([f"{name}:registry", f"{name}:setup", "edge.services.ota:setup"])
    assert registry is handler_module.registry
    assert handler_module.calls == [registry]
    assert len(registry) == 1  # the OTA responder; the test's setup registers nothing


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no-colon", "expected MODULE:ATTR"),
        ("edgesim_no_such_module:setup", "cannot import edgesim_no_such_module"),
        ("edgesim_test_handlers:missing", "has no 'missing'"),
        ("edgesim_test_handlers:number", "neither a function nor a HandlerRegistry"),
        ("edgesim_test_handlers:broken", "setup failed: no database"),
    ],
)
def test_load_handlers_errors_name_the_spec(
    handler_module: ModuleType, spec: str, message: str
) -> None:
    with pytest.raises(CliError, match=message) as exc:
        load_handlers([spec])
    assert spec in exc.value.message


def test_two_registries_are_refused(handler_module: ModuleType) -> None:
    name = handler_module.__name__
    with pytest.raises(CliError, match="only one HandlerRegistry"):
        load_handlers([f"{name}:registry", f"{name}:registry"])


async def _read_packet(
    reader: asyncio.StreamReader, parser: Parser, pending: list[object]
) -> object:
    while not pending:
        data = await reader.read(65536)
        assert data, "the edge closed the connection"
        pending.extend(parser.feed(data))
    return pending.pop(0)


@pytest.mark.timeout(30)
async def test_ota_responder_answers_a_device_over_mqtt(
    tmp_path: Path, qs: QuickstartResult
) -> None:
    handlers = HandlerRegistry()
    ota.setup(handlers)
    cfg = EdgeConfig(
        state_dir=tmp_path / "state",
        listeners=ListenersConfig(mqtt=HostPort(host="127.0.0.1", port=0), https=None, admin=None),
        trust=TrustConfig(store=tmp_path / "trust.db", watch_interval=None),
        pki_dir=qs.out,
    )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=str(qs.root_cert))
    ctx.load_cert_chain(
        str(qs.devices_dir / "dev-00001.pem"), str(qs.devices_dir / "dev-00001.key")
    )
    async with EdgeServer(cfg, handlers=handlers) as edge:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", edge.ports["mqtt"], ssl=ctx, server_hostname="localhost"
        )
        parser, pending = Parser(server_side=False), []
        try:
            writer.write(encode(Connect(client_id="dev-00001", keepalive=30)))
            assert await _read_packet(reader, parser, pending) == Connack(return_code=0)
            writer.write(
                encode(Subscribe(packet_id=1, topics=[("devices/dev-00001/ota/offer", 1)]))
            )
            suback = await _read_packet(reader, parser, pending)
            assert isinstance(suback, Suback)
            assert suback.return_codes == [1]
            writer.write(
                encode(
                    Publish(topic="devices/dev-00001/ota/request", payload=b'{"current": "0.9"}')
                )
            )
            offer = await asyncio.wait_for(_read_packet(reader, parser, pending), 10)
            assert isinstance(offer, Publish)
            assert offer.topic == "devices/dev-00001/ota/offer"
            body = offer.payload.decode()
            assert '"device": "dev-00001"' in body
            assert '"current": "0.9"' in body
            assert '"update": true' in body
        finally:
            writer.close()
            await writer.wait_closed()
