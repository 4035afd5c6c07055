"""edge.toml loading, `edgesim edge serve` flags, and the command run as a real process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import ssl
import sys
from pathlib import Path

import pytest

from certs.cliutil import CliError
from certs.quickstart import quickstart
from edge.cli import build_parser
from edge.config import EdgeConfigError, HostPort, load_config, parse_host_port
from edge.identity import IdentityRule
from edge.server_cli import build_config


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "edge.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_full_config_file(tmp_path: Path) -> None:
    cfg = load_config(
        write(
            tmp_path,
            """
state_dir = "state"
[listeners]
mqtt = "0.0.0.0:1883"
https = "127.0.0.1:0"
admin = "off"
[tls]
cert = "pki/server.pem"
key = "pki/server.key"
minimum_version = "1.3"
num_tickets = 2
alpn = ["mqtt"]
handshake_timeout = 2.5
max_handshakes = 10
capture_tls13_certificates = true
[identity]
rule = "san-uri"
[trust]
store = "/var/lib/edge/trust.db"
propagation_delay = 1
[policy]
preset = "open"
""",
        )
    )
    assert cfg.state_dir == tmp_path / "state"
    assert cfg.listeners.mqtt == HostPort(host="0.0.0.0", port=1883)
    assert cfg.listeners.https == HostPort(host="127.0.0.1", port=0)
    assert cfg.listeners.admin is None
    assert cfg.tls.cert == tmp_path / "pki" / "server.pem"
    assert cfg.tls.minimum_version is ssl.TLSVersion.TLSv1_3
    assert cfg.tls.num_tickets == 2
    assert cfg.tls.alpn == ("mqtt",)
    assert cfg.tls.handshake_timeout == 2.5
    assert cfg.tls.capture_tls13_certificates is True
    assert cfg.identity.rule is IdentityRule.SAN_URI
    assert cfg.store_path == Path("/var/lib/edge/trust.db")
    assert cfg.trust.propagation_delay == 1.0
    assert cfg.policy == "open"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[tls]\nnum_ticket = 1\n", "unknown key(s) num_ticket in [tls]"),
        ("[tls]\nnum_tickets = -1\n", "[tls].num_tickets: must be >= 0"),
        ("[tls]\nhandshake_timeout = true\n", "[tls].handshake_timeout: expected a number"),
        ('[tls]\nminimum_version = "1.7"\n', "unknown TLS version '1.7'"),
        (
            '[listeners]\nmqtt = "localhost:http"\n',
            "[listeners].mqtt: 'localhost:http' is not HOST:PORT",
        ),
        ('[listeners]\nmqtt = "localhost:70000"\n', "port 70000 is out of range"),
        ('[identity]\nrule = "serial"\n', "unknown identity rule 'serial' (choose one of: cn,"),
        ('[policy]\npreset = "closed"\n', "[policy].preset"),
        ("listeners = [\n", "not valid TOML"),
    ],
)
def test_config_errors_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(EdgeConfigError) as exc:
        load_config(path)
    assert message in str(exc.value)
    assert str(path) in str(exc.value)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(EdgeConfigError, match="cannot read config"):
        load_config(tmp_path / "nope.toml")


def test_parse_host_port_forms() -> None:
    assert parse_host_port("8883", where="x") == HostPort(host="127.0.0.1", port=8883)
    assert parse_host_port("[::1]:0", where="x") == HostPort(host="::1", port=0)
    assert parse_host_port("off", where="x") is None


def test_flags_override_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[listeners]\nmqtt = "127.0.0.1:1"\nadmin = "127.0.0.1:2"\n')
    args = build_parser().parse_args(
        [
            "edge",
            "serve",
            "--config",
            str(path),
            "--mqtt",
            "127.0.0.1:0",
            "--admin",
            "off",
            "--policy",
            "open",
            "--store",
            str(tmp_path / "s.db"),
        ]
    )
    cfg = build_config(args)
    assert cfg.listeners.mqtt == HostPort(host="127.0.0.1", port=0)
    assert cfg.listeners.admin is None
    assert cfg.policy == "open"
    assert cfg.store_path == tmp_path / "s.db"


def test_bad_flag_is_a_usage_error(tmp_path: Path) -> None:
    args = build_parser().parse_args(["edge", "serve", "--mqtt", "nowhere:port"])
    with pytest.raises(CliError) as exc:
        build_config(args)
    assert exc.value.code == 2
    assert "--mqtt" in exc.value.message


def test_pki_must_be_a_folder(tmp_path: Path) -> None:
    args = build_parser().parse_args(["edge", "serve", "--pki", str(tmp_path / "none")])
    with pytest.raises(CliError, match="not a folder"):
        build_config(args)


@pytest.mark.timeout(60)
async def test_serve_runs_until_sigterm(tmp_path: Path) -> None:
    pki = quickstart(tmp_path / "pki", devices=1)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "edge.cli",
        "edge",
        "serve",
        "--pki",
        str(pki.out),
        "--mqtt",
        "127.0.0.1:0",
        "--https",
        "off",
        "--admin",
        "off",
        "--state-dir",
        str(tmp_path / "state"),
        "--ready-file",
        str(tmp_path / "ready.json"),
        "--policy",
        "open",
        stderr=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL,
    )
    assert proc.stderr is not None
    try:
        line = await asyncio.wait_for(proc.stderr.readline(), 30)
        assert line.startswith(b"edgesim edge: listening mqtt=127.0.0.1:"), line
        port = int(line.split(b"mqtt=127.0.0.1:")[1].split()[0])
        assert json.loads((tmp_path / "ready.json").read_text())["ports"] == {"mqtt": port}
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(cafile=str(pki.root_cert))
        ctx.load_cert_chain(
            str(pki.devices_dir / "dev-00000.pem"), str(pki.devices_dir / "dev-00000.key")
        )
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=ctx, server_hostname="localhost"
        )
        # MQTT 3.1.1 CONNECT, clean session, client id "dev-00000".
        writer.write(bytes.fromhex("101500044d5154540402003c0009646576") + b"-00000")
        assert await asyncio.wait_for(reader.readexactly(4), 10) == b"\x20\x02\x00\x00"
        writer.close()
        with contextlib.suppress(ssl.SSLError, ConnectionError):
            await writer.wait_closed()
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
        rest = await proc.stderr.read()
        assert b"stopping" in rest
        assert b"Traceback" not in rest
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@pytest.mark.timeout(60)
async def test_serve_reports_a_port_in_use_without_traceback(tmp_path: Path) -> None:
    pki = quickstart(tmp_path / "pki", devices=0)
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    taken = server.sockets[0].getsockname()[1]
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "edge.cli",
            "edge",
            "serve",
            "--pki",
            str(pki.out),
            "--mqtt",
            f"127.0.0.1:{taken}",
            "--admin",
            "off",
            "--state-dir",
            str(tmp_path / "state"),
            stderr=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL,
        )
        _, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 1
        assert f"cannot listen for mqtt on 127.0.0.1:{taken}".encode() in err
        assert b"Traceback" not in err
    finally:
        server.close()
        await server.wait_closed()


def test_profile_flag_and_mqtt_table_select_a_cloud_profile(tmp_path: Path) -> None:
    args = build_parser().parse_args(["edge", "serve", "--profile", "aws-iot-core"])
    cfg = build_config(args)
    assert cfg.mqtt.profile == "aws-iot-core"
    assert cfg.mqtt.maximum_qos == 1
    assert cfg.mqtt.max_filters_per_subscribe == 8
    path = write(tmp_path, '[mqtt]\nprofile = "mosquitto"\nreceive_maximum = 7\n')
    mqtt = load_config(path).mqtt
    assert (mqtt.profile, mqtt.reason_strings, mqtt.receive_maximum) == ("mosquitto", False, 7)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["edge", "serve", "--profile", "nope"])
