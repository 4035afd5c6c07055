"""``edgesim device`` (one simulated device) and the ``edgesim fleet`` group.

``edgesim device connect --url URL --cert C --key K --ca CA [...]`` connects once and
prints every step with its time; ``--json`` prints the same trace as data. Exit
status: 0 connected and every action succeeded, 1 refused or failed, 2 usage error.

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
from devices.trace import render, to_json

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
    p.add_argument("--json", action="store_true", help="print the trace as JSON")
    p.set_defaults(func=cmd_connect)


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


def _actions(args: argparse.Namespace) -> list[Action]:
    actions: list[Action] = [Subscribe(f, args.qos) for f in args.subscribe]
    actions += [Publish(t, m.encode(), args.qos, args.retain) for t, m in args.publish]
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
    target = Target(
        url=args.url, ca_pem=ca_pem, sni=args.sni, tls_max=args.tls_max, insecure=args.insecure
    )
    try:
        target.parts()
    except DeviceError as exc:
        raise CliError(f"--url: {exc}", EXIT_USAGE) from exc
    actions = _actions(args)

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
