"""``edgesim device`` (one simulated device) and the ``edgesim fleet`` group.

``edgesim device connect --url URL --cert C --key K --ca CA [...]`` connects once and
prints every step with its time; ``--json`` prints the same trace as data. Exit
status: 0 connected and every action succeeded, 1 refused or failed, 2 usage error.
``--mqtt-version 5`` speaks MQTT 5: the trace then shows every reason code, Reason
String and property the server sent (CONNACK, SUBACK, PUBACK/PUBREC/PUBCOMP, messages).

The ``fleet`` verbs live in :mod:`devices.fleet_cli` (``add_fleet_verbs``); this
module only creates the group so that the dispatcher finds it.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import NameOID

from certs.cliutil import EXIT_CHECK_FAILED, EXIT_OK, EXIT_USAGE, CliError, emit
from devices.device import (
    Action,
    DeviceError,
    DeviceSpec,
    Publish,
    Receive,
    Subscribe,
    Target,
    run_device,
)
from devices.protocols.mqtt import MqttOptions, parse_mqtt_version
from devices.trace import render, to_json
from edge.mqtt.codec import CONNECT
from edge.mqtt.properties import Properties, encode_properties

__all__ = ["cmd_connect", "register_device", "register_fleet"]


def register_device(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``device`` group and its ``connect`` verb."""
    group = subparsers.add_parser("device", help="one simulated device")
    group.set_defaults(group_parser=group)
    verbs = group.add_subparsers(dest="verb", metavar="VERB")
    p = verbs.add_parser(
        "connect",
        help="connect once and print every handshake step with its time",
        description=(
            "Connect one device over mutual TLS and show what it sees: TCP connect, "
            "ClientHello, the server certificate and the device's verdict, whether the "
            "edge asked for a certificate, the edge's verdict (the alert by name), the "
            "protocol acknowledgement and the topic actions."
        ),
    )
    p.add_argument(
        "--url",
        required=True,
        help="mqtts://HOST:PORT, https://HOST:PORT, wss://HOST:PORT/mqtt|/ws",
    )
    p.add_argument("--cert", help="device certificate (PEM; may also hold the key)")
    p.add_argument("--key", help="device private key (PEM)")
    p.add_argument("--chain", help="intermediate certificates to send after the device's")
    p.add_argument("--ca", required=True, help="CA certificate(s) the device trusts (PEM)")
    p.add_argument("--sni", help="server name to send and check (default: the URL's host)")
    p.add_argument(
        "--tls-max",
        choices=("1.2", "1.3"),
        help="highest TLS version to offer (1.2 shows the handshake in cleartext)",
    )
    p.add_argument(
        "--insecure",
        action="store_true",
        help="skip the server hostname check (the chain is still verified), like "
        "mosquitto_pub --insecure: to see what 'edgesim suite run tls' catches",
    )
    p.add_argument("--client-id", help="MQTT client id (default: --id)")
    p.add_argument("--id", help="device name in the trace (default: the certificate's common name)")
    p.add_argument(
        "--trace",
        action="store_true",
        help="decrypt the TLS 1.3 handshake from a key log to show the CertificateRequest",
    )
    p.add_argument(
        "--publish",
        nargs=2,
        action="append",
        metavar=("TOPIC", "MSG"),
        default=[],
        help="publish MSG to TOPIC (repeatable)",
    )
    p.add_argument(
        "--subscribe", action="append", metavar="FILTER", default=[], help="subscribe (repeatable)"
    )
    p.add_argument("--qos", type=int, default=0, choices=(0, 1, 2), help="QoS for actions")
    p.add_argument("--retain", action="store_true", help="publish with the retain flag")
    p.add_argument(
        "--receive",
        type=int,
        metavar="N",
        help="wait for N messages (default: 1 when subscribing and publishing, else 0)",
    )
    p.add_argument("--timeout", type=float, default=10.0, help="seconds for everything (10)")
    p.add_argument(
        "--settle",
        type=float,
        default=0.25,
        metavar="S",
        help=(
            "TLS 1.3: wait up to S seconds for the edge's first record (session tickets or "
            "an alert) before the first request, so that a refusal is not lost to a TCP "
            "reset (0.25; 0 sends at once)"
        ),
    )
    add_mqtt5_arguments(p)
    p.add_argument("--json", action="store_true", help="print the trace as JSON")
    p.set_defaults(func=cmd_connect)


def add_mqtt5_arguments(p: argparse.ArgumentParser) -> None:
    """``--mqtt-version`` and the MQTT 5 CONNECT and PUBLISH properties."""
    g = p.add_argument_group(
        "MQTT 5", "for mqtts:// and wss://.../mqtt; every option below needs --mqtt-version 5"
    )
    g.add_argument(
        "--mqtt-version",
        choices=("3.1.1", "5"),
        default="3.1.1",
        help="MQTT version to speak (3.1.1); 5 shows reason codes, Reason Strings and properties",
    )
    g.add_argument(
        "--session-expiry", type=int, metavar="S", help="CONNECT Session Expiry Interval"
    )
    g.add_argument("--receive-maximum", type=int, metavar="N", help="CONNECT Receive Maximum")
    g.add_argument(
        "--maximum-packet-size", type=int, metavar="BYTES", help="CONNECT Maximum Packet Size"
    )
    g.add_argument(
        "--topic-alias-maximum",
        type=int,
        metavar="N",
        help="CONNECT Topic Alias Maximum: how many aliases the server may send the device",
    )
    g.add_argument(
        "--no-problem-information",
        action="store_true",
        help="CONNECT Request Problem Information 0 (no Reason Strings on most packets)",
    )
    g.add_argument(
        "--user-property",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a CONNECT User Property (repeatable)",
    )
    g.add_argument(
        "--topic-aliases",
        action="store_true",
        help="send Topic Aliases for publishes, within the server's Topic Alias Maximum",
    )
    g.add_argument("--content-type", help="PUBLISH Content Type")
    g.add_argument(
        "--message-expiry", type=int, metavar="S", help="PUBLISH Message Expiry Interval"
    )
    g.add_argument("--response-topic", help="PUBLISH Response Topic")
    g.add_argument("--correlation-data", metavar="TEXT", help="PUBLISH Correlation Data (UTF-8)")
    g.add_argument(
        "--publish-property",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a PUBLISH User Property (repeatable)",
    )


def _pairs(values: list[str], flag: str) -> list[tuple[str, str]]:
    out = []
    for value in values:
        key, sep, val = value.partition("=")
        if not sep or not key:
            raise CliError(f"{flag} {value!r}: expected KEY=VALUE", EXIT_USAGE)
        out.append((key, val))
    return out


def mqtt_options(args: argparse.Namespace) -> tuple[MqttOptions | None, Properties | None]:
    """The MQTT options and the PUBLISH properties the ``--mqtt-version`` group asks for."""
    level = parse_mqtt_version(args.mqtt_version)
    rpi = False if args.no_problem_information else None
    publish = Properties(
        content_type=args.content_type,
        message_expiry_interval=args.message_expiry,
        response_topic=args.response_topic,
        correlation_data=(
            None if args.correlation_data is None else args.correlation_data.encode("utf-8")
        ),
        user_properties=_pairs(args.publish_property, "--publish-property"),
    )
    try:
        options = MqttOptions(
            version=level,
            session_expiry=args.session_expiry,
            receive_maximum=args.receive_maximum,
            maximum_packet_size=args.maximum_packet_size,
            topic_alias_maximum=args.topic_alias_maximum,
            request_problem_information=rpi,
            user_properties=tuple(_pairs(args.user_property, "--user-property")),
            topic_aliases=args.topic_aliases,
        )
        if level == 5:
            # Values the wire cannot carry (Receive Maximum 0...) are usage errors now,
            # not a failed CONNECT later.
            encode_properties(options.connect_properties(), CONNECT)
    except ValueError as exc:
        raise CliError(f"--mqtt-version {args.mqtt_version}: {exc}", EXIT_USAGE) from exc
    if level != 5:
        if not publish.is_empty() or args.topic_aliases:
            raise CliError("PUBLISH properties need --mqtt-version 5", EXIT_USAGE)
        return None, None
    return options, None if publish.is_empty() else publish


def register_fleet(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``fleet`` group; its verbs come from :mod:`devices.fleet_cli` when installed."""
    group = subparsers.add_parser("fleet", help="a simulated fleet of devices")
    group.set_defaults(group_parser=group)
    verbs = group.add_subparsers(dest="verb", metavar="VERB")
    try:
        module = importlib.import_module("devices.fleet_cli")
    except ModuleNotFoundError as exc:
        if exc.name != "devices.fleet_cli":
            raise
        return
    module.add_fleet_verbs(verbs)


def _read_text(path: str, what: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise CliError(f"--{what} {path}: {exc.strerror}", EXIT_USAGE) from exc
    except UnicodeDecodeError as exc:
        raise CliError(f"--{what} {path}: not a PEM text file", EXIT_USAGE) from exc


def _common_name(cert_path: str | None) -> str | None:
    """The first certificate's CN: edges commonly require it as the MQTT client id."""
    if cert_path is None:
        return None
    try:
        cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
    except (OSError, ValueError):
        return None  # reported with its path when the device loads it
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else None


def _actions(args: argparse.Namespace, properties: Properties | None = None) -> list[Action]:
    actions: list[Action] = [Subscribe(f, args.qos) for f in args.subscribe]
    actions += [Publish(t, m.encode(), args.qos, args.retain, properties) for t, m in args.publish]
    receive = args.receive
    if receive is None:
        receive = 1 if args.subscribe and args.publish else 0
    if receive < 0:
        raise CliError("--receive must be 0 or more", EXIT_USAGE)
    if receive:
        actions.append(Receive(receive))
    return actions


def cmd_connect(args: argparse.Namespace) -> int:
    """``edgesim device connect``: run one device and print its trace."""
    if args.key and not args.cert:
        raise CliError("--key given without --cert", EXIT_USAGE)
    if args.timeout <= 0:
        raise CliError("--timeout must be positive", EXIT_USAGE)
    if args.settle < 0:
        raise CliError("--settle must be 0 or more", EXIT_USAGE)
    for path, what in ((args.cert, "cert"), (args.key, "key"), (args.chain, "chain")):
        if path is not None and not Path(path).is_file():
            raise CliError(f"--{what} {path}: no such file", EXIT_USAGE)
    ca_pem = _read_text(args.ca, "ca")
    if "-----BEGIN CERTIFICATE-----" not in ca_pem:
        raise CliError(f"--ca {args.ca}: no PEM certificate in it", EXIT_USAGE)
    spec = DeviceSpec(
        id=args.id or _common_name(args.cert) or "device",
        cert_path=args.cert,
        key_path=args.key,
        chain_path=args.chain,
        client_id=args.client_id,
    )
    mqtt, publish_properties = mqtt_options(args)
    target = Target(
        url=args.url,
        ca_pem=ca_pem,
        sni=args.sni,
        tls_max=args.tls_max,
        mqtt=mqtt,
        insecure=args.insecure,
    )
    try:
        scheme, _host, _port, path = target.parts()
    except DeviceError as exc:
        raise CliError(f"--url: {exc}", EXIT_USAGE) from exc
    if mqtt is not None and not (scheme == "mqtts" or path == "/mqtt"):
        raise CliError(
            "--mqtt-version 5 needs an MQTT URL (mqtts:// or wss://.../mqtt)", EXIT_USAGE
        )
    actions = _actions(args, publish_properties)

    with tempfile.TemporaryDirectory(prefix="edgesim-keylog-") as tmp:
        keylog = None
        if args.trace:
            # SSLKEYLOGFILE, when set, is where Wireshark expects the keys: share it.
            keylog = os.environ.get("SSLKEYLOGFILE") or str(Path(tmp) / "keylog.txt")
        result = asyncio.run(
            run_device(
                spec,
                target,
                actions=actions,
                timeout=args.timeout,
                inspect=args.trace,
                keylog_filename=keylog,
                settle=args.settle,
            )
        )
    if result.outcome == "error" and result.reason in ("bad-input", "bad-ca", "bad-device-cert"):
        raise CliError(result.message, EXIT_USAGE)
    emit(to_json(result), as_json=args.json, human=lambda _d: render(result))
    return EXIT_OK if result.outcome == "connected" else EXIT_CHECK_FAILED
