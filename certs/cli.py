"""``edgesim pki``: keys, CAs, certificates, conversions, CRLs.

Verbs: ``init-root``, ``genkey``, ``issue intermediate|server|device``,
``quickstart``, ``convert``, ``inspect``, ``revoke``, ``crl`` (and ``lint``,
``verify`` from :mod:`certs.cli_check` when installed).

Every :class:`~certs.errors.CertsError` is turned into a
:class:`~certs.cliutil.CliError` here (message printed, exit 1, no traceback).
Passphrases for existing keys come from ``--passphrase-file``, then
``$EDGESIM_KEY_PASSPHRASE``, then a prompt when stdin is a terminal.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from certs.authority import CertificateAuthority, IssuedCert
from certs.bundle import read_certificates
from certs.cliutil import (
    EXIT_CHECK_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    CliError,
    emit,
    int_at_least,
    iso_time,
    say,
)
from certs.errors import CertsError, PassphraseError
from certs.keys import (
    KEY_TYPES,
    PrivateKey,
    generate_key,
    key_description,
    read_passphrase,
    read_private_key,
    write_private_key,
    write_secret,
)
from certs.names import display_name

__all__ = ["register"]

Handler = Callable[[argparse.Namespace], int]


def _translate(func: Handler) -> Handler:
    """Turn toolkit errors into CLI errors (message, exit 1, no traceback)."""

    @functools.wraps(func)
    def wrapper(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except CertsError as exc:
            raise CliError(str(exc)) from exc
        except OSError as exc:
            where = f"{exc.filename}: " if exc.filename else ""
            raise CliError(f"{where}{exc.strerror or exc}") from exc

    return wrapper


_NON_NEGATIVE = int_at_least(0)


def load_key_for_cli(path: Path, passphrase_file: Path | None) -> PrivateKey:
    """Load a private key, asking for a passphrase only when the key is encrypted."""
    passphrase = read_passphrase(passphrase_file, interactive=False)
    try:
        return read_private_key(path, passphrase)
    except PassphraseError:
        if passphrase is not None:
            raise
        prompted = read_passphrase(None, prompt=f"Passphrase for {path}: ")
        if prompted is None:
            raise
        return read_private_key(path, prompted)


def _load_ca(args: argparse.Namespace) -> CertificateAuthority:
    key = load_key_for_cli(args.ca_key, args.passphrase_file)
    certs = read_certificates(args.ca_cert)
    try:
        return CertificateAuthority(certs[0], key, certs[1:])
    except CertsError as exc:
        raise CliError(f"{args.ca_cert} / {args.ca_key}: {exc}") from exc


def _issued_files_args(parser: argparse.ArgumentParser, stem: str) -> None:
    """Where an issued certificate and its new key go: ``--out``/NAME.pem and NAME.key."""
    parser.add_argument("--name", default=stem, help="file stem (NAME.pem/.key)")
    parser.add_argument("--key-type", choices=KEY_TYPES, default="ec256")
    parser.add_argument("--out", type=Path, required=True)


def _validity_args(parser: argparse.ArgumentParser, days: int) -> None:
    parser.add_argument(
        "--days", type=_NON_NEGATIVE, default=days, help=f"validity (default {days})"
    )
    parser.add_argument("--not-before", type=iso_time, help="ISO 8601 start (default: now)")
    parser.add_argument("--not-after", type=iso_time, help="ISO 8601 end (overrides --days)")


def _ca_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ca-cert", type=Path, required=True, help="issuing CA certificate")
    parser.add_argument("--ca-key", type=Path, required=True, help="issuing CA private key")
    parser.add_argument("--passphrase-file", type=Path, help="passphrase of the CA key")


# -- genkey -------------------------------------------------------------------


@_translate
def _cmd_genkey(args: argparse.Namespace) -> int:
    passphrase = read_passphrase(args.passphrase_file, environ={}) if args.passphrase_file else None
    key = generate_key(args.type)
    write_private_key(args.out, key, passphrase=passphrase)
    info = {"key": str(args.out), "type": key_description(key), "encrypted": bool(passphrase)}
    emit(info, as_json=args.json, human=lambda d: f"wrote {d['type']} key to {d['key']}")
    return EXIT_OK


# -- issue --------------------------------------------------------------------


def _write_issued(out: Path, name: str, issued: IssuedCert, fullchain: bool) -> dict[str, str]:
    out.mkdir(parents=True, exist_ok=True)
    cert_path = out / f"{name}.pem"
    key_path = out / f"{name}.key"
    cert_path.write_bytes(issued.fullchain_pem if fullchain else issued.cert_pem)
    write_secret(key_path, issued.key_pem())
    return {
        "cert": str(cert_path),
        "key": str(key_path),
        "subject": display_name(issued.cert.subject),
        "serial": format(issued.cert.serial_number, "x"),
        "not_after": issued.cert.not_valid_after_utc.isoformat(),
    }


def _human_issued(data: Any) -> str:
    return f"issued {data['subject']} -> {data['cert']} (key {data['key']})"


@_translate
def _cmd_issue_intermediate(args: argparse.Namespace) -> int:
    ca = _load_ca(args)
    sub = ca.issue_intermediate(
        args.cn,
        path_length=None if args.path_len < 0 else args.path_len,
        key_type=args.key_type,
        days=args.days,
        not_before=args.not_before,
        not_after=args.not_after,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    cert_path = args.out / f"{args.name}.pem"
    key_path = args.out / f"{args.name}.key"
    # The intermediate's file holds it and the intermediates above it (root excluded).
    cert_path.write_bytes(sub.chain_pem)
    write_private_key(key_path, sub.key)
    data = {
        "cert": str(cert_path),
        "key": str(key_path),
        "subject": display_name(sub.cert.subject),
        "serial": format(sub.cert.serial_number, "x"),
        "not_after": sub.cert.not_valid_after_utc.isoformat(),
    }
    emit(data, as_json=args.json, human=_human_issued)
    return EXIT_OK


@_translate
def _cmd_issue_server(args: argparse.Namespace) -> int:
    if not args.san and not args.cn:
        raise CliError("give at least one --san (or --cn)", EXIT_USAGE)
    ca = _load_ca(args)
    issued = ca.issue_server(
        args.san,
        common_name=args.cn,
        key_type=args.key_type,
        days=args.days,
        not_before=args.not_before,
        not_after=args.not_after,
    )
    data = _write_issued(args.out, args.name, issued, fullchain=True)
    emit(data, as_json=args.json, human=_human_issued)
    return EXIT_OK


@_translate
def _cmd_issue_device(args: argparse.Namespace) -> int:
    ca = _load_ca(args)
    manifest = ca.issue_devices_bulk(
        args.out,
        count=args.count,
        id_template=args.id_template,
        start=args.start,
        jobs=args.jobs,
        key_type=args.key_type,
        san_uri=args.san_uri,
        san_dns=args.san_dns,
        eku=("serverAuth",) if args.no_client_auth else ("clientAuth",),
        days=args.days,
        not_before=args.not_before,
        not_after=args.not_after,
    )
    data = {"manifest": str(manifest), "count": args.count, "out": str(args.out)}
    emit(
        data,
        as_json=args.json,
        human=lambda d: f"issued {d['count']} device certificates; manifest {d['manifest']}",
    )
    return EXIT_OK


# -- quickstart ---------------------------------------------------------------


@_translate
def _cmd_quickstart(args: argparse.Namespace) -> int:
    from certs.quickstart import quickstart

    result = quickstart(
        args.out,
        devices=args.devices,
        hosts=tuple(args.host),
        key_type=args.key_type,
        jobs=args.jobs,
        force=args.force,
    )

    def human(d: Any) -> str:
        return "\n".join(
            [
                f"PKI written to {d['out']}",
                f"  trust (root):        {d['root_cert']}",
                f"  CA chain (upload):   {d['ca_chain']}",
                f"  server cert + key:   {d['server_cert']}  {d['server_key']}",
                f"  server hosts:        {', '.join(d['hosts'])}",
                f"  devices ({d['device_count']}):         {d['manifest']}",
            ]
        )

    emit(result.as_dict(), as_json=args.json, human=human)
    return EXIT_OK


# -- registration -------------------------------------------------------------


def _json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON document")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``pki`` command group to the ``edgesim`` parser."""
    pki = subparsers.add_parser(
        "pki",
        help="keys, CAs, certificates, lint, verify",
        description="PKI toolkit: keys, CAs, certificates, conversions, CRLs.",
    )
    pki.set_defaults(group_parser=pki)
    verbs = pki.add_subparsers(dest="verb", metavar="VERB")

    _register_init_root(verbs)

    genkey = verbs.add_parser("genkey", help="generate a private key (mode 0600)")
    genkey.add_argument("--type", choices=KEY_TYPES, default="ec256")
    genkey.add_argument("--out", type=Path, required=True)
    genkey.add_argument("--passphrase-file", type=Path, help="encrypt with this passphrase")
    _json_flag(genkey)
    genkey.set_defaults(func=_cmd_genkey)

    issue = verbs.add_parser("issue", help="issue intermediate, server or device certificates")
    issue.set_defaults(group_parser=issue)
    kinds = issue.add_subparsers(dest="kind", metavar="KIND")

    inter = kinds.add_parser("intermediate", help="a subordinate CA")
    _ca_args(inter)
    inter.add_argument("--cn", required=True, help="common name")
    inter.add_argument("--path-len", type=int, default=0, help="path length (-1: no limit)")
    _issued_files_args(inter, "intermediate-ca")
    _validity_args(inter, 1825)
    _json_flag(inter)
    inter.set_defaults(func=_cmd_issue_intermediate)

    server = kinds.add_parser("server", help="a TLS server certificate (writes leaf + chain)")
    _ca_args(server)
    server.add_argument("--san", action="append", default=[], help="DNS name or IP (repeatable)")
    server.add_argument("--cn", help="common name (default: the first --san)")
    _issued_files_args(server, "server")
    _validity_args(server, 398)
    _json_flag(server)
    server.set_defaults(func=_cmd_issue_server)

    device = kinds.add_parser("device", help="device certificates in bulk, with manifest.jsonl")
    _ca_args(device)
    device.add_argument("--count", type=_NON_NEGATIVE, default=1)
    device.add_argument("--id-template", default="dev-{i:05d}", help="e.g. dev-{i:05d}")
    device.add_argument("--start", type=_NON_NEGATIVE, default=0, help="first index")
    device.add_argument("--san-uri", help="URI SAN template, e.g. spiffe://edge/{id}")
    device.add_argument("--san-dns", help="DNS SAN template, e.g. {id}.devices.test")
    device.add_argument("--no-client-auth", action="store_true", help="fault: serverAuth-only EKU")
    device.add_argument("--key-type", choices=KEY_TYPES, default="ec256")
    device.add_argument("--jobs", type=int, default=1, help="worker processes")
    device.add_argument("--out", type=Path, required=True)
    _validity_args(device, 365)
    _json_flag(device)
    device.set_defaults(func=_cmd_issue_device)

    quick = verbs.add_parser("quickstart", help="one command to a working PKI")
    quick.add_argument("--out", type=Path, required=True)
    quick.add_argument("--devices", type=_NON_NEGATIVE, default=10)
    quick.add_argument("--host", action="append", default=[], help="extra server host")
    quick.add_argument("--key-type", choices=KEY_TYPES, default="ec256")
    quick.add_argument("--jobs", type=int, default=1)
    quick.add_argument("--force", action="store_true", help="replace an existing PKI")
    _json_flag(quick)
    quick.set_defaults(func=_cmd_quickstart)

    _register_tools(verbs)

    try:
        # Imported by name: lint/verify live in their own module, which may be absent.
        check = importlib.import_module("certs.cli_check")
    except ModuleNotFoundError as exc:
        if exc.name != "certs.cli_check":
            raise
    else:
        check.register_check_verbs(verbs)


@_translate
def _cmd_init_root(args: argparse.Namespace) -> int:
    from certs.opensslconf import create_root_from_config, load_config

    config = load_config(args.config)
    args.out.mkdir(parents=True, exist_ok=True)
    key_path: Path = args.key if args.key is not None else args.out / "rootCA.key"
    if args.key is not None:
        key = load_key_for_cli(args.key, args.passphrase_file)
    else:
        kind = args.key_type
        if kind is None:
            bits = config.get("req", "default_bits") or "2048"
            kind = f"rsa{bits.strip()}"
            if kind not in KEY_TYPES:
                raise CliError(
                    f"{args.config}: default_bits = {bits} is not one of 2048, 3072, 4096"
                )
        key = generate_key(kind)
        passphrase = (
            read_passphrase(args.passphrase_file, environ={}) if args.passphrase_file else None
        )
        write_private_key(key_path, key, passphrase=passphrase)
    cert = create_root_from_config(config, key=key, days=args.days, digest=args.digest)
    from cryptography.hazmat.primitives import serialization

    cert_path = args.out / args.cert_name
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    data = {
        "cert": str(cert_path),
        "key": str(key_path),
        "subject": display_name(cert.subject),
        "serial": format(cert.serial_number, "x"),
        "not_after": cert.not_valid_after_utc.isoformat(),
        "extensions": [ext.oid._name for ext in cert.extensions],
    }
    emit(data, as_json=args.json, human=_human_issued)
    return EXIT_OK


def _register_init_root(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    init = verbs.add_parser(
        "init-root",
        help="create a root CA from an OpenSSL config (like openssl req -x509 -config)",
        description="Build the self-signed root 'openssl req -x509 -config CONF -new -nodes "
        "-key KEY -sha256 -days N' builds, from the same config file.",
    )
    init.add_argument("--config", type=Path, required=True, help="OpenSSL config (root.conf)")
    init.add_argument("--key", type=Path, help="existing private key (default: generate one)")
    init.add_argument(
        "--key-type", choices=KEY_TYPES, help="type of a generated key (default: RSA default_bits)"
    )
    init.add_argument(
        "--passphrase-file", type=Path, help="passphrase of --key, or to encrypt a generated key"
    )
    init.add_argument(
        "--days", type=_NON_NEGATIVE, default=30, help="validity (default 30, as openssl)"
    )
    init.add_argument("--digest", help="signature digest, e.g. sha256 (default: default_md)")
    init.add_argument("--cert-name", default="rootCA.crt", help="certificate file name")
    init.add_argument("--out", type=Path, required=True, help="output directory")
    _json_flag(init)
    init.set_defaults(func=_cmd_init_root)


def _optional_passphrase(path: Path | None) -> bytes | None:
    return read_passphrase(path, interactive=False)


@_translate
def _cmd_convert(args: argparse.Namespace) -> int:
    from certs.bundle import convert

    data = args.input.read_bytes()
    out = convert(
        data,
        to=args.to,
        source=str(args.input),
        passphrase=_optional_passphrase(args.passphrase_file),
    )
    if args.output is None:
        if args.to == "der" and sys.stdout.isatty():
            raise CliError("refusing to write DER to a terminal; use -o FILE", EXIT_USAGE)
        sys.stdout.buffer.write(out)
        sys.stdout.flush()
    else:
        args.output.write_bytes(out)
        say(f"wrote {args.to.upper()} to {args.output}")
    return EXIT_OK


@_translate
def _cmd_inspect(args: argparse.Namespace) -> int:
    from certs.inspect import inspect_data, render

    data = args.file.read_bytes()
    items = inspect_data(
        data, source=str(args.file), passphrase=_optional_passphrase(args.passphrase_file)
    )
    emit(items, as_json=args.json, human=render)
    unknown = all(item["kind"] == "unknown" for item in items)
    return EXIT_CHECK_FAILED if unknown else EXIT_OK


def _human_crl(d: Any) -> str:
    return f"CRL {d['crl']}: number {d['crl_number']}, {len(d['revoked'])} revoked"


def _crl_result(path: Path, crl: Any) -> dict[str, Any]:
    from certs.crl import crl_number, revoked_entries

    return {
        "crl": str(path),
        "crl_number": crl_number(crl),
        "next_update": crl.next_update_utc.isoformat() if crl.next_update_utc else None,
        "revoked": [
            {"serial": f"{s:x}", "date": d.isoformat(), "reason": r}
            for s, d, r in revoked_entries(crl)
        ],
    }


@_translate
def _cmd_revoke(args: argparse.Namespace) -> int:
    from certs.crl import revoke

    ca = _load_ca(args)
    certs = [c for path in args.certs for c in read_certificates(path)[:1]]
    crl = revoke(ca, args.crl, certs, reason=args.reason, days=args.days)
    emit(_crl_result(args.crl, crl), as_json=args.json, human=_human_crl)
    return EXIT_OK


@_translate
def _cmd_crl(args: argparse.Namespace) -> int:
    from certs.crl import parse_serial, revoke

    ca = _load_ca(args)
    serials = [parse_serial(s) for s in args.revoked_serial]
    crl = revoke(ca, args.out, serials=serials, reason=args.reason, days=args.days)
    emit(_crl_result(args.out, crl), as_json=args.json, human=_human_crl)
    return EXIT_OK


def _register_tools(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from certs.crl import REASONS

    conv = verbs.add_parser(
        "convert", help="convert DER, PEM, PKCS#7, PKCS#12 (or a CRL) to PEM or DER"
    )
    conv.add_argument("input", type=Path, metavar="IN")
    conv.add_argument("-o", "--output", type=Path, metavar="OUT", help="default: stdout")
    conv.add_argument("--to", choices=("pem", "der"), required=True)
    conv.add_argument("--passphrase-file", type=Path, help="PKCS#12 passphrase")
    conv.set_defaults(func=_cmd_convert)

    insp = verbs.add_parser("inspect", help="describe certificates, CRLs and keys in a file")
    insp.add_argument("file", type=Path, metavar="FILE")
    insp.add_argument("--passphrase-file", type=Path, help="for encrypted keys / PKCS#12")
    _json_flag(insp)
    insp.set_defaults(func=_cmd_inspect)

    rev = verbs.add_parser("revoke", help="add certificates to a CRL (created if missing)")
    _ca_args(rev)
    rev.add_argument("--crl", type=Path, required=True, help="CRL file (PEM), updated in place")
    rev.add_argument("certs", type=Path, nargs="+", metavar="CERT")
    rev.add_argument("--reason", choices=sorted(REASONS), help="revocation reason")
    rev.add_argument("--days", type=_NON_NEGATIVE, default=7, help="next update in N days")
    _json_flag(rev)
    rev.set_defaults(func=_cmd_revoke)

    crl = verbs.add_parser("crl", help="write (or renew) a CRL signed by the CA")
    _ca_args(crl)
    crl.add_argument(
        "--revoked-serial", action="append", default=[], metavar="HEX", help="repeatable"
    )
    crl.add_argument("--reason", choices=sorted(REASONS), help="reason for the added serials")
    crl.add_argument("--out", type=Path, required=True, help="CRL file; renewed if it exists")
    crl.add_argument("--days", type=_NON_NEGATIVE, default=7, help="next update in N days")
    _json_flag(crl)
    crl.set_defaults(func=_cmd_crl)
