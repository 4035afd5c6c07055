"""``edgesim cert``: server certificates per hostname and their deployment settings.

Verbs: ``upload``, ``issue`` (from a local PKI), ``list``, ``show``, ``delete``,
``deploy``, ``rollback``, ``status``. Like ``edgesim trust``, every verb works
against a running edge's admin API (``--admin URL``, ``--token``...) or directly
on a store file (``--store PATH``); ``--json`` prints one JSON document.

An upload stores a new *version* (staged); ``deploy`` makes a version serve its
hostnames with the given settings, changing only the settings named on the
command line (a rotation is ``upload`` then ``deploy NAME``). On a running edge
the deployment then propagates (pending -> propagating -> active); on a store
file it is stored and applies when an edge starts (or, for an edge watching the
file, at its next poll).

Exit status: 0 done, 1 refused or failed (a refusal prints every finding, one per
line), 2 usage error. Private keys are never printed, in JSON or otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from certs.cliutil import EXIT_USAGE, CliError, say
from edge.trust.cli import (
    DEFAULT_STORE,
    TOKEN_ENV,
    Refused,
    _client_context,
    _finding_line,
    _quote,
    _read,
    _Remote,
    _run_with,
    _table,
    _token_beside,
)
from edge.trust.errors import RefusedError, TrustError
from edge.trust.model import CLIENT_AUTH_CHOICES
from edge.trust.sqlite import SqliteTrustStore

__all__ = ["register"]


class _CertBackend(Protocol):
    def upload(
        self, name: str, cert: bytes, key: bytes, passphrase: bytes | None, sources: tuple[str, str]
    ) -> Any: ...
    def list_certs(self) -> Any: ...
    def get_cert(self, name: str) -> Any: ...
    def delete(self, name: str) -> Any: ...
    def deploy(
        self, name: str, settings: dict[str, Any], version: int | None, default: bool | None
    ) -> Any: ...
    def rollback(self, name: str) -> Any: ...
    def status(self) -> Any: ...


class _LocalCerts:
    def __init__(self, store: SqliteTrustStore, warn_days: float) -> None:
        self.store = store
        self.warn_days = warn_days

    def upload(
        self, name: str, cert: bytes, key: bytes, passphrase: bytes | None, sources: tuple[str, str]
    ) -> Any:
        return self.store.upload_server_cert(
            name, cert, key, passphrase=passphrase, cert_source=sources[0], key_source=sources[1]
        ).to_dict()

    def list_certs(self) -> Any:
        now = self.store.now()
        return {
            "certs": [c.to_dict(now, self.warn_days) for c in self.store.server_certs()],
            "expiry_warn_days": self.warn_days,
        }

    def get_cert(self, name: str) -> Any:
        return self.store.get_server_cert(name).to_dict(self.store.now(), self.warn_days)

    def delete(self, name: str) -> Any:
        self.store.delete_server_cert(name)
        return None

    def deploy(
        self, name: str, settings: dict[str, Any], version: int | None, default: bool | None
    ) -> Any:
        info = self.store.deploy(name, settings, version=version, default=default).to_dict()
        info["state"] = "stored"
        return info

    def rollback(self, name: str) -> Any:
        info = self.store.rollback_server_cert(name)
        return {"name": name, "deployment": info.to_dict() if info else None}

    def status(self) -> Any:
        now = self.store.now()
        rows = []
        for c in self.store.server_certs():
            d = c.to_dict(now, self.warn_days)
            rows.append(
                {
                    "name": c.name,
                    "deployment": c.deployment.id if c.deployment else None,
                    "version": c.deployment.version if c.deployment else None,
                    "hostnames": d["hostnames"],
                    "settings": c.deployment.settings.to_dict() if c.deployment else None,
                    "default": c.default,
                    "not_after": d["not_after"],
                    "days_left": d.get("days_left"),
                    "expiring": d.get("expiring", False),
                    "state": "stored" if c.deployment else "not deployed",
                }
            )
        return {
            "state": "stored",
            "note": f"no edge contacted: the state stored in {self.store.path}",
            "server_certs": rows,
        }


class _RemoteCerts:
    def __init__(self, remote: _Remote, *, wait: bool = False) -> None:
        self.remote = remote
        #: deploy/rollback answer once the change is active on every worker.
        self.wait = wait

    def upload(
        self, name: str, cert: bytes, key: bytes, passphrase: bytes | None, sources: tuple[str, str]
    ) -> Any:
        body: dict[str, Any] = {
            "certificate": cert.decode("ascii", errors="replace"),
            "key": key.decode("ascii", errors="replace"),
            "certificate_filename": sources[0],
            "key_filename": sources[1],
        }
        if passphrase is not None:
            body["passphrase"] = passphrase.decode("utf-8", errors="replace")
        return self.remote._call(
            "POST", f"/v1/certs/{_quote(name)}", body=json.dumps(body).encode()
        )

    def list_certs(self) -> Any:
        return self.remote._call("GET", "/v1/certs")

    def get_cert(self, name: str) -> Any:
        return self.remote._call("GET", f"/v1/certs/{_quote(name)}")

    def delete(self, name: str) -> Any:
        return self.remote._call("DELETE", f"/v1/certs/{_quote(name)}")

    def deploy(
        self, name: str, settings: dict[str, Any], version: int | None, default: bool | None
    ) -> Any:
        body = {"settings": settings, "version": version, "default": default}
        return self.remote._call(
            "POST",
            f"/v1/certs/{_quote(name)}/deploy",
            body=json.dumps(body).encode(),
            query={"wait": str(self.wait).lower()},
        )

    def rollback(self, name: str) -> Any:
        return self.remote._call(
            "POST", f"/v1/certs/{_quote(name)}/rollback", query={"wait": str(self.wait).lower()}
        )

    def status(self) -> Any:
        status = self.remote._call("GET", "/v1/status")
        return {
            "state": status.get("state"),
            "generation": status.get("generation"),
            "server_certs": status.get("server_certs", []),
        }


@contextmanager
def _backend(args: argparse.Namespace) -> Iterator[_CertBackend]:
    url = args.admin or os.environ.get("EDGESIM_ADMIN_URL")
    if url:
        token = args.token or os.environ.get(TOKEN_ENV) or _token_beside(args.store)
        wait = bool(getattr(args, "wait", False))
        yield _RemoteCerts(_Remote(url, token, context=_client_context(args)), wait=wait)
        return
    path = Path(args.store) if args.store else DEFAULT_STORE
    try:
        store = SqliteTrustStore(path, key_file=args.key_file)
    except TrustError as exc:
        raise CliError(str(exc)) from None
    try:
        yield _LocalCerts(store, args.expiry_days)
    except RefusedError as exc:
        raise Refused(exc.message, [f.to_dict() for f in exc.findings]) from None
    except TrustError as exc:
        raise CliError(str(exc)) from None
    finally:
        store.close()


def _run(
    args: argparse.Namespace,
    action: Callable[[_CertBackend], Any],
    human: Callable[[Any], str],
) -> int:
    return _run_with(_backend, args, action, human)


# -- human output ---------------------------------------------------------------


def _days(value: Any) -> str:
    return "-" if value is None else f"{float(value):.0f}"


def _human_version(v: dict[str, Any]) -> str:
    for w in v.get("warnings", []):
        say("warning:" + _finding_line(w)[1:])
    return (
        f"{v['name']} version {v['version']}: {', '.join(v['hostnames'])} "
        f"(expires {v['not_after']}), staged; deploy it with 'edgesim cert deploy {v['name']}'"
    )


def _human_list(data: Any) -> str:
    certs = data["certs"]
    if not certs:
        return "no server certificates"
    rows = [["NAME", "HOSTNAMES", "DEPLOYED", "SET", "STATE", "DAYS LEFT", ""]]
    for c in certs:
        d = c.get("deployment")
        settings = d["settings"] if d else {}
        set_name = settings.get("set") or (
            "-" if settings.get("client_auth") == "none" else "binding"
        )
        rows.append(
            [
                c["name"] + (" (default)" if c.get("default") else ""),
                ",".join(c["hostnames"]),
                f"v{d['version']}" if d else "no",
                set_name if d else "-",
                (d.get("state") or "stored") if d else "staged",
                _days(c.get("days_left")),
                "EXPIRING" if c.get("expiring") else "",
            ]
        )
    return _table(rows)


def _human_show(c: dict[str, Any]) -> str:
    d = c.get("deployment")
    lines = [
        f"server certificate {c['name']}" + (" (default)" if c.get("default") else ""),
        f"hostnames: {', '.join(c['hostnames'])}",
        f"expires: {c['not_after']} ({_days(c.get('days_left'))} days)"
        + (" EXPIRING" if c.get("expiring") else ""),
    ]
    if d:
        s = d["settings"]
        lines.append(
            f"deployment {d['id']}: version {d['version']}, {d.get('state') or 'stored'}; "
            f"set {s['set'] or '(the hostname binding)'}, client certificate {s['client_auth']}, "
            f"TLS >= {s['min_tls']}, CA names {'sent' if s['send_ca_names'] else 'not sent'}, "
            f"identity rule {s['identity_rule'] or '(the edge default)'}"
        )
    else:
        lines.append("not deployed")
    rows = [["VERSION", "CREATED", "NOT AFTER", "KEY", "SUBJECT", "ISSUER"]]
    for v in c["versions"]:
        rows.append(
            [
                str(v["version"]),
                v["created_at"],
                v["not_after"],
                v["key_type"],
                v["subject"],
                v["issuer"],
            ]
        )
    lines.append(_table(rows))
    return "\n".join(lines)


def _human_deploy(d: dict[str, Any]) -> str:
    return (
        f"{d['name']}: deployment {d['id']} of version {d['version']} {d.get('state') or 'stored'}"
    )


def _human_rollback(data: dict[str, Any]) -> str:
    d = data.get("deployment")
    if d is None:
        return f"{data['name']}: undeployed (it had no earlier deployment)"
    return f"{data['name']}: back to deployment {d['id']} (version {d['version']}), {d.get('state') or 'stored'}"


def _human_status(data: dict[str, Any]) -> str:
    lines = [f"state: {data.get('state')}"]
    if data.get("note"):
        lines.append(data["note"])
    rows = [["NAME", "VERSION", "HOSTNAMES", "STATE", "DAYS LEFT", ""]]
    for c in data["server_certs"]:
        rows.append(
            [
                c["name"] + (" (default)" if c.get("default") else ""),
                str(c.get("version") or "-"),
                ",".join(c.get("hostnames") or []),
                str(c.get("state")),
                _days(c.get("days_left")),
                "EXPIRING" if c.get("expiring") else "",
            ]
        )
    lines.append(_table(rows) if len(rows) > 1 else "no server certificates deployed")
    return "\n".join(lines)


# -- verbs ----------------------------------------------------------------------


def _passphrase(args: argparse.Namespace, key: bytes, key_path: str) -> bytes | None:
    from certs.errors import CertsError
    from certs.keys import read_passphrase

    try:
        found = read_passphrase(args.passphrase_file, interactive=False)
        if found is None and b"ENCRYPTED" in key and sys.stdin.isatty():
            found = read_passphrase(None, prompt=f"Passphrase for {key_path}: ")
    except CertsError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    return found


def _cmd_upload(args: argparse.Namespace) -> int:
    cert = _read(args.cert, "certificate file")
    key = _read(args.key, "key file")
    passphrase = _passphrase(args, key, args.key)
    return _run(
        args,
        lambda b: b.upload(args.name, cert, key, passphrase, (args.cert, args.key)),
        _human_version,
    )


def _cmd_issue(args: argparse.Namespace) -> int:
    from certs.authority import CertificateAuthority
    from certs.errors import CertsError

    if args.pki:
        ca_cert = Path(args.pki) / "intermediate-ca.pem"
        ca_key = Path(args.pki) / "intermediate-ca.key"
    elif args.ca_cert and args.ca_key:
        ca_cert, ca_key = Path(args.ca_cert), Path(args.ca_key)
    else:
        raise CliError("give --pki DIR, or --ca-cert FILE and --ca-key FILE", EXIT_USAGE)
    ca_key_data = _read(str(ca_key), "CA key")
    passphrase = _passphrase(args, ca_key_data, str(ca_key))
    try:
        ca = CertificateAuthority.load(ca_cert, ca_key, passphrase)
        issued = ca.issue_server(
            args.host,
            key_type=args.key_type,
            days=args.days,
            now=datetime.now(UTC),
        )
    except CertsError as exc:
        raise CliError(str(exc)) from None
    except OSError as exc:
        raise CliError(f"cannot read the issuing CA: {exc}") from None
    cert = issued.fullchain_pem
    return _run(
        args,
        lambda b: b.upload(args.name, cert, issued.key_pem(), None, (f"issued:{args.name}", "key")),
        _human_version,
    )


def _cmd_list(args: argparse.Namespace) -> int:
    return _run(args, lambda b: b.list_certs(), _human_list)


def _cmd_show(args: argparse.Namespace) -> int:
    return _run(args, lambda b: b.get_cert(args.name), _human_show)


def _cmd_delete(args: argparse.Namespace) -> int:
    return _run(
        args, lambda b: b.delete(args.name), lambda _: f"deleted server certificate {args.name}"
    )


def _cmd_deploy(args: argparse.Namespace) -> int:
    settings: dict[str, Any] = {}
    if args.set is not None and args.binding_set:
        raise CliError("give --set SET or --binding-set, not both", EXIT_USAGE)
    if args.set is not None:
        settings["set"] = args.set
    if args.binding_set:
        settings["set"] = None
    if args.client_auth is not None:
        settings["client_auth"] = args.client_auth
    if args.min_tls is not None:
        settings["min_tls"] = args.min_tls
    if args.ca_names is not None:
        settings["send_ca_names"] = args.ca_names
    if args.identity_rule is not None:
        settings["identity_rule"] = None if args.identity_rule == "default" else args.identity_rule
    return _run(
        args, lambda b: b.deploy(args.name, settings, args.version, args.default), _human_deploy
    )


def _cmd_rollback(args: argparse.Namespace) -> int:
    return _run(args, lambda b: b.rollback(args.name), _human_rollback)


def _cmd_status(args: argparse.Namespace) -> int:
    return _run(args, lambda b: b.status(), _human_status)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``cert`` command group to the ``edgesim`` parser."""
    common = argparse.ArgumentParser(add_help=False)
    where = common.add_argument_group("where the trust store is")
    where.add_argument(
        "--store",
        metavar="PATH",
        help=f"the store file, used when no --admin is given (default {DEFAULT_STORE})",
    )
    where.add_argument(
        "--key-file",
        metavar="PATH",
        help="the file encrypting server keys in a --store (default: <store>.keys, mode 0600)",
    )
    where.add_argument(
        "--admin",
        metavar="URL",
        help="a running edge's admin API, e.g. http://127.0.0.1:8081 (or EDGESIM_ADMIN_URL)",
    )
    where.add_argument("--token", help=f"the admin API token (or {TOKEN_ENV})")
    where.add_argument(
        "--admin-cacert", metavar="FILE", help="PEM: the CA of an https admin URL's certificate"
    )
    where.add_argument(
        "--admin-cert", metavar="FILE", help="PEM: an admin client certificate (with --admin-key)"
    )
    where.add_argument("--admin-key", metavar="FILE", help="PEM: the admin client key")
    common.add_argument(
        "--expiry-days",
        type=float,
        default=30.0,
        metavar="DAYS",
        help="with --store: report certificates expiring within DAYS (default 30; a running "
        "edge uses its [trust] cert_expiry_days)",
    )
    common.add_argument("--json", action="store_true", help="print one JSON document")

    cert = subparsers.add_parser(
        "cert",
        help="server certificates per hostname and their deployment settings",
        description="Server certificates: each serves the hostnames in its SANs with its own "
        "deployment settings (certificate set, client certificate required or not, minimum "
        "TLS version, CA names, identity rule).",
    )
    cert.set_defaults(group_parser=cert)
    verbs = cert.add_subparsers(dest="verb", metavar="VERB")

    def verb(name: str, func: Callable[[argparse.Namespace], int], text: str) -> Any:
        parser = verbs.add_parser(name, parents=[common], help=text, description=text)
        parser.set_defaults(func=func)
        return parser

    p = verb(
        "upload", _cmd_upload, "upload a server certificate and its key as a new (staged) version"
    )
    p.add_argument("name", metavar="NAME", help="the server certificate (created if new)")
    p.add_argument("--cert", required=True, metavar="FILE", help="PEM: the leaf, then its chain")
    p.add_argument("--key", required=True, metavar="FILE", help="PEM or DER: its private key")
    p.add_argument(
        "--passphrase-file",
        type=Path,
        help="passphrase of an encrypted --key (else $EDGESIM_KEY_PASSPHRASE, else a prompt)",
    )
    p = verb("issue", _cmd_issue, "issue a server certificate from a local PKI and upload it")
    p.add_argument("name", metavar="NAME")
    p.add_argument(
        "--host",
        action="append",
        required=True,
        metavar="HOST",
        help="a DNS name or wildcard for the SANs (repeat for several)",
    )
    p.add_argument("--pki", metavar="DIR", help="a folder made by 'edgesim pki quickstart'")
    p.add_argument("--ca-cert", metavar="FILE", help="PEM: the issuing CA (then its chain)")
    p.add_argument("--ca-key", metavar="FILE", help="the issuing CA's key")
    p.add_argument("--passphrase-file", type=Path, help="passphrase of the CA key")
    p.add_argument(
        "--days",
        type=int,
        default=366,
        help="validity in days (default 366: Mozilla's limit for TLS server certificates)",
    )
    p.add_argument("--key-type", default="ec256", help="ec256 (default), ec384, rsa2048...")
    verb("list", _cmd_list, "list server certificates with hostnames, deployment and expiry")
    p = verb("show", _cmd_show, "show one server certificate (never its key)")
    p.add_argument("name", metavar="NAME")
    p = verb("delete", _cmd_delete, "delete a server certificate with its versions and keys")
    p.add_argument("name", metavar="NAME")
    p = verb(
        "deploy",
        _cmd_deploy,
        "deploy a version with its settings (unnamed settings keep their current value)",
    )
    p.add_argument("name", metavar="NAME")
    p.add_argument("--set", metavar="SET", help="the certificate set verifying devices")
    p.add_argument(
        "--binding-set",
        action="store_true",
        help="verify devices with the set bound to the hostname ('edgesim trust bind')",
    )
    p.add_argument(
        "--client-auth",
        choices=CLIENT_AUTH_CHOICES,
        help="require a client certificate (default) or request none",
    )
    p.add_argument("--min-tls", choices=("1.2", "1.3"), help="minimum TLS version (default 1.2)")
    ca = p.add_mutually_exclusive_group()
    ca.add_argument(
        "--ca-names",
        dest="ca_names",
        action="store_const",
        const=True,
        help="send the set's CA names in the CertificateRequest (default)",
    )
    ca.add_argument(
        "--no-ca-names", dest="ca_names", action="store_const", const=False, help="send no CA names"
    )
    p.add_argument(
        "--identity-rule",
        choices=("cn", "san-dns", "san-uri", "san-email", "sha256", "subject", "default"),
        help="which certificate field names the device ('default': the edge's rule)",
    )
    p.add_argument("--version", type=int, help="the version to deploy (default: the latest)")
    p.add_argument(
        "--wait",
        action="store_true",
        help="with --admin: answer once the deployment is active on every worker",
    )
    default = p.add_mutually_exclusive_group()
    default.add_argument(
        "--default",
        dest="default",
        action="store_const",
        const=True,
        help="also serve connections whose SNI matches no hostname",
    )
    default.add_argument(
        "--no-default",
        dest="default",
        action="store_const",
        const=False,
        help="stop being the default certificate",
    )
    p = verb("rollback", _cmd_rollback, "re-activate the previous deployment (the first: undeploy)")
    p.add_argument("name", metavar="NAME")
    p.add_argument(
        "--wait",
        action="store_true",
        help="with --admin: answer once the rollback is active on every worker",
    )
    verb("status", _cmd_status, "propagation state and expiry of each deployed certificate")
