"""``edgesim trust``: certificate sets, versions, bindings, CRLs, status and the dry run.

Every verb works against a running edge through its admin API (``--admin URL``
with ``--token`` or ``EDGESIM_ADMIN_TOKEN``; for ``https`` also
``--admin-cacert`` and an optional ``--admin-cert``/``--admin-key``), or directly on a store file
(``--store PATH``, default ``./.edgesim/trust.db``, where ``edgesim edge serve`` keeps it) when no edge runs,
or on a cluster's store in NATS JetStream KV (``--cluster nats://HOST:PORT[,...]``), which every
edge node joined with ``edgesim edge serve --cluster`` follows. All paths print the same output; ``--json`` prints one JSON document instead.

Exit status: 0 done (``check``: the device would be accepted), 1 refused or
failed (``check``: the device would be refused), 2 usage error. A refused upload
prints every finding, one per line::

    edgesim: error: upload refused: 1 problem
      certificate 1 (CN=device-1) is not a CA certificate; ... hint: remove ...

Errors from the store (:class:`~edge.trust.errors.TrustError`) and from the
admin API (problem documents, unreachable URL) become
:class:`~certs.cliutil.CliError` here, so no traceback reaches the user.
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

from certs.cliutil import EXIT_CHECK_FAILED, EXIT_OK, EXIT_USAGE, CliError, emit, say
from edge.trust.check import check_in_store
from edge.trust.errors import RefusedError, TrustError
from edge.trust.model import DEFAULT_HOST
from edge.trust.sqlite import SqliteTrustStore

__all__ = ["DEFAULT_STORE", "register"]

#: Where the store lives when neither ``--store`` nor ``--admin`` is given.
DEFAULT_STORE = Path(".edgesim") / "trust.db"
TOKEN_ENV = "EDGESIM_ADMIN_TOKEN"


class Refused(CliError):
    """A refusal with findings: printed one per line, exit status 1."""

    def __init__(self, message: str, findings: Sequence[dict[str, Any]]) -> None:
        super().__init__(message, EXIT_CHECK_FAILED)
        self.findings = list(findings)


#: A CLI group's backend (trust sets, server certificates), for :func:`_run_with`.
_B = TypeVar("_B")


class _Backend(Protocol):
    """What every verb needs, returning JSON-safe values (the admin API's shapes)."""

    def upload(
        self, name: str, data: bytes, *, activate: bool, allow_sha1: bool, source: str
    ) -> Any: ...
    def list_sets(self) -> Any: ...
    def get_set(self, name: str) -> Any: ...
    def versions(self, name: str) -> Any: ...
    def activate(self, name: str, version: int) -> Any: ...
    def rollback(self, name: str) -> Any: ...
    def bind(self, name: str, host: str) -> Any: ...
    def unbind(self, host: str) -> Any: ...
    def delete(self, name: str) -> Any: ...
    def set_options(self, name: str, *, disconnect_on_revoke: bool) -> Any: ...
    def add_crl(self, name: str, data: bytes) -> Any: ...
    def status(self) -> Any: ...
    def check(
        self, name: str, leaf: bytes, chain: bytes, version: int | None, at: datetime | None
    ) -> Any: ...


class _Local:
    """The verbs on a store file (no edge running: no propagation, changes apply at start)."""

    def __init__(self, store: SqliteTrustStore) -> None:
        self.store = store

    def upload(
        self, name: str, data: bytes, *, activate: bool, allow_sha1: bool, source: str
    ) -> Any:
        return self.store.upload(
            name, data, activate=activate, allow_sha1=allow_sha1, source=source
        ).to_dict()

    def list_sets(self) -> Any:
        return {"sets": [s.to_dict() for s in self.store.list_sets()]}

    def get_set(self, name: str) -> Any:
        info = self.store.get_set(name).to_dict()
        info["versions"] = [v.to_dict() for v in self.store.versions(name)]
        return info

    def versions(self, name: str) -> Any:
        return {"versions": [v.to_dict() for v in self.store.versions(name)]}

    def activate(self, name: str, version: int) -> Any:
        return self.store.activate(name, version).to_dict()

    def rollback(self, name: str) -> Any:
        return self.store.rollback(name).to_dict()

    def bind(self, name: str, host: str) -> Any:
        return {"host": self.store.bind(name, host), "set": name}

    def unbind(self, host: str) -> Any:
        self.store.unbind(host)
        return None

    def delete(self, name: str) -> Any:
        self.store.delete(name)
        return None

    def set_options(self, name: str, *, disconnect_on_revoke: bool) -> Any:
        return self.store.set_options(name, disconnect_on_revoke=disconnect_on_revoke).to_dict()

    def add_crl(self, name: str, data: bytes) -> Any:
        return self.store.add_crl(name, data).to_dict()

    def status(self) -> Any:
        stored = self.store.status()
        return {
            "state": "stored",
            "generation": stored["generation"],
            "note": f"no edge contacted: the state stored in {self.store.path}",
            "sets": [
                {
                    "name": s.name,
                    "version": s.active_version,
                    "state": "stored" if s.active_version else "no active version",
                    "disconnect_on_revoke": s.disconnect_on_revoke,
                }
                for s in self.store.list_sets()
            ],
            "bindings": [
                {"host": h, "set": s, "state": "stored"} for h, s in self.store.bindings().items()
            ],
            "server_certs": _stored_server_certs(self.store),
        }

    def check(
        self, name: str, leaf: bytes, chain: bytes, version: int | None, at: datetime | None
    ) -> Any:
        return check_in_store(self.store, name, leaf, chain_pem=chain, version=version, at=at)


def _stored_server_certs(store: SqliteTrustStore, warn_days: float = 30.0) -> list[dict[str, Any]]:
    """Each stored server certificate's deployment and expiry (``trust status`` on a file)."""
    now = store.now()
    out = []
    for cert in store.server_certs():
        d = cert.to_dict(now, warn_days)
        out.append(
            {
                "name": cert.name,
                "version": cert.deployment.version if cert.deployment else None,
                "hostnames": d["hostnames"],
                "not_after": d["not_after"],
                "days_left": d.get("days_left"),
                "expiring": d.get("expiring", False),
                "state": "stored" if cert.deployment else "not deployed",
            }
        )
    return out


class _Remote:
    """The verbs through a running edge's admin API."""

    def __init__(
        self,
        url: str,
        token: str | None,
        *,
        context: ssl.SSLContext | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.context = context
        self.timeout = timeout

    def _call(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        content_type: str = "application/json",
        query: dict[str, str] | None = None,
    ) -> Any:
        url = self.url + path + ("?" + urllib.parse.urlencode(query) if query else "")
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if body is not None:
            headers["Content-Type"] = content_type
        request = urllib.request.Request(url, data=body, method=method, headers=headers)
        try:
            with urllib.request.urlopen(
                request, timeout=self.timeout, context=self.context
            ) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            with exc:
                raw = exc.read()
            raise _problem(exc.code, raw, url) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            # With TLS 1.3 a refused client certificate shows up as the server closing
            # the connection after the handshake, not as an SSL error.
            tls_refused = isinstance(reason, ssl.SSLError) or (
                self.url.startswith("https:") and isinstance(exc, ConnectionResetError)
            )
            if tls_refused:
                raise CliError(
                    f"TLS with the admin API at {self.url} failed: {reason}; check "
                    "--admin-cacert, and --admin-cert/--admin-key if it requires an admin "
                    "client certificate"
                ) from None
            raise CliError(
                f"cannot reach the admin API at {self.url}: {reason}; is the edge running? "
                "(without an edge, use --store PATH)"
            ) from None
        return json.loads(raw) if raw else None

    def upload(
        self, name: str, data: bytes, *, activate: bool, allow_sha1: bool, source: str
    ) -> Any:
        return self._call(
            "POST",
            "/v1/sets",
            body=data,
            content_type="application/x-pem-file",
            query={
                "name": name,
                "activate": str(activate).lower(),
                "allow_sha1": str(allow_sha1).lower(),
                "filename": source,
            },
        )

    def list_sets(self) -> Any:
        return self._call("GET", "/v1/sets")

    def get_set(self, name: str) -> Any:
        return self._call("GET", f"/v1/sets/{_quote(name)}")

    def versions(self, name: str) -> Any:
        return self._call("GET", f"/v1/sets/{_quote(name)}/versions")

    def activate(self, name: str, version: int) -> Any:
        return self._call("POST", f"/v1/sets/{_quote(name)}/versions/{version}/activate")

    def rollback(self, name: str) -> Any:
        return self._call("POST", f"/v1/sets/{_quote(name)}/rollback")

    def bind(self, name: str, host: str) -> Any:
        body = json.dumps({"set": name}).encode()
        return self._call("PUT", f"/v1/bindings/{_quote(host)}", body=body)

    def unbind(self, host: str) -> Any:
        return self._call("DELETE", f"/v1/bindings/{_quote(host)}")

    def delete(self, name: str) -> Any:
        return self._call("DELETE", f"/v1/sets/{_quote(name)}")

    def set_options(self, name: str, *, disconnect_on_revoke: bool) -> Any:
        body = json.dumps({"disconnect_on_revoke": disconnect_on_revoke}).encode()
        return self._call("PATCH", f"/v1/sets/{_quote(name)}/options", body=body)

    def add_crl(self, name: str, data: bytes) -> Any:
        return self._call(
            "POST",
            f"/v1/sets/{_quote(name)}/crls",
            body=data,
            content_type="application/octet-stream",
        )

    def status(self) -> Any:
        return self._call("GET", "/v1/status")

    def check(
        self, name: str, leaf: bytes, chain: bytes, version: int | None, at: datetime | None
    ) -> Any:
        body = {
            "certificate": leaf.decode("ascii", errors="replace"),
            "chain": chain.decode("ascii", errors="replace"),
            "version": version,
            "at": at.isoformat() if at else None,
        }
        return self._call("POST", f"/v1/sets/{_quote(name)}/check", body=json.dumps(body).encode())


def _quote(part: str) -> str:
    return urllib.parse.quote(part, safe="*")


def _problem(status: int, raw: bytes, url: str) -> CliError:
    try:
        doc = json.loads(raw)
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        return CliError(f"admin API answered {status} for {url}")
    detail = str(doc.get("detail") or doc.get("title") or f"HTTP {status}")
    if status == 401:
        return CliError(f"{detail} (pass --token or set {TOKEN_ENV})")
    findings = doc.get("findings")
    if isinstance(findings, list) and findings:
        return Refused(detail, findings)
    return CliError(detail, EXIT_USAGE if status == 400 else EXIT_CHECK_FAILED)


#: Where the cluster's NATS servers are when ``--cluster`` is not given.
CLUSTER_ENV = "EDGESIM_CLUSTER"


class _ClusterLocal(_Local):
    """The verbs on the cluster's store in NATS JetStream KV (``--cluster nats://...``)."""

    def __init__(self, client: Any) -> None:
        super().__init__(client.store)
        self.client = client

    def status(self) -> Any:
        return self.client.status()


@contextmanager
def _store_errors() -> Iterator[None]:
    """Turn a store error raised while a verb runs into the CLI's error, without a traceback.

    A refusal keeps its findings (:class:`Refused` prints one per line); any other
    :class:`~edge.trust.errors.TrustError` becomes a :class:`~certs.cliutil.CliError`
    with the store's message.
    """
    try:
        yield
    except RefusedError as exc:
        raise Refused(exc.message, [f.to_dict() for f in exc.findings]) from None
    except TrustError as exc:
        raise CliError(str(exc)) from None


@contextmanager
def _cluster_backend(servers: str) -> Iterator[_Backend]:
    # Imported here: only cluster mode may import nats (the edgesim[cluster] extra).
    try:
        from edge.cluster.trust import ClusterTrustClient
    except ImportError as exc:
        raise CliError(
            f"--cluster needs the NATS client: pip install 'edgesim[cluster]' ({exc})"
        ) from None
    try:
        client = ClusterTrustClient(servers)
    except TrustError as exc:
        raise CliError(str(exc)) from None
    try:
        with _store_errors():
            yield _ClusterLocal(client)
    finally:
        client.close()


@contextmanager
def _backend(args: argparse.Namespace) -> Iterator[_Backend]:
    cluster = (
        getattr(args, "cluster", None)
        or getattr(args, "group_cluster", None)
        or os.environ.get(CLUSTER_ENV)
    )
    url = args.admin or os.environ.get("EDGESIM_ADMIN_URL")
    if cluster and not url:
        with _cluster_backend(cluster) as backend:
            yield backend
        return
    if url:
        token = args.token or os.environ.get(TOKEN_ENV) or _token_beside(args.store)
        yield _Remote(url, token, context=_client_context(args))
        return
    path = Path(args.store) if args.store else DEFAULT_STORE
    try:
        store = SqliteTrustStore(path)
    except TrustError as exc:
        raise CliError(str(exc)) from None
    try:
        with _store_errors():
            yield _Local(store)
    finally:
        store.close()


def _client_context(args: argparse.Namespace) -> ssl.SSLContext | None:
    """The TLS context for an ``https`` admin URL: its CA, and an admin client certificate."""
    if not (args.admin_cacert or args.admin_cert):
        return None
    if bool(args.admin_cert) != bool(args.admin_key):
        raise CliError("give --admin-cert and --admin-key together", EXIT_USAGE)
    try:
        context = ssl.create_default_context(cafile=args.admin_cacert)
        if args.admin_cert:
            context.load_cert_chain(args.admin_cert, args.admin_key)
    except (OSError, ssl.SSLError) as exc:
        raise CliError(f"cannot load the admin TLS files: {exc}") from None
    return context


def _token_beside(store: str | None) -> str | None:
    """The token the edge created next to the store, when this user can read it."""
    path = Path(f"{store or DEFAULT_STORE}.token")
    try:
        return path.read_text(encoding="ascii").strip() or None
    except (OSError, UnicodeDecodeError):
        return None


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def _time(raw: str | None) -> datetime | None:
    if raw is None:
        return None
    try:
        when = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise CliError(
            f"--at {raw!r} is not an ISO-8601 time (e.g. 2026-06-01T12:00:00Z)", EXIT_USAGE
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


# -- human output ---------------------------------------------------------------


def _finding_line(f: dict[str, Any]) -> str:
    text = f"  {f.get('message', '')}"
    if f.get("hint"):
        text += f" hint: {f['hint']}"
    return text


def _version_line(v: dict[str, Any]) -> str:
    state = v.get("state") or ("active" if v.get("active") else "")
    return (
        f"{v['set']} version {v['version']}: {v['certificate_count']} certificate(s), "
        f"{state or 'stored'}"
    )


def _table(rows: list[list[str]]) -> str:
    if not rows:
        return ""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def _human_sets(data: Any) -> str:
    rows = [["NAME", "ACTIVE", "LATEST", "HOSTS", "CRLS"]]
    for s in data["sets"]:
        rows.append(
            [
                s["name"],
                str(s["active_version"] or "-"),
                str(s["latest_version"]),
                ",".join(s["hosts"]) or "-",
                str(len(s["crls"])),
            ]
        )
    return _table(rows) if data["sets"] else "no certificate sets"


def _human_versions(data: Any) -> str:
    rows = [["VERSION", "STATE", "CERTS", "CREATED", "SUBJECTS"]]
    for v in data["versions"]:
        rows.append(
            [
                str(v["version"]),
                v.get("state") or "",
                str(v["certificate_count"]),
                v["created_at"],
                "; ".join(v["subjects"]),
            ]
        )
    return _table(rows)


def _human_set(data: Any) -> str:
    lines = [
        f"set {data['name']}: active version {data['active_version'] or 'none'}, "
        f"latest {data['latest_version']}",
        f"hosts: {', '.join(data['hosts']) or 'none'}",
        f"disconnect on revoke: {_on_off(data.get('disconnect_on_revoke', False))}",
    ]
    if "propagation" in data:
        lines.append(f"propagation: {data['propagation'].get('state')}")
    lines.append(_human_versions(data))
    for crl in data["crls"]:
        lines.append(
            f"CRL from {crl['issuer']}: {crl['revoked_count']} revoked, "
            f"next update {crl['next_update'] or 'none'}"
        )
    return "\n".join(lines)


def _on_off(value: object) -> str:
    return "on" if value else "off"


def _human_status(data: Any) -> str:
    lines = [f"state: {data['state']} (generation {data['generation']})"]
    if data.get("note"):
        lines.append(data["note"])
    cluster = data.get("cluster")
    for node in cluster["nodes"] if cluster else []:
        for w in node["workers"]:
            lines.append(
                f"node {node['node']} worker {w['worker']}: applied generation "
                f"{w['applied_generation']} ({w['state']})"
                + (f", error: {w['error']}" if w.get("error") else "")
            )
    for w in [] if cluster else data.get("workers", []):
        lines.append(
            f"worker {w['name']}: applied generation {w['applied_generation']}"
            + (f", error: {w['error']}" if w.get("error") else "")
        )
    if data["sets"]:
        rows = [["SET", "VERSION", "STATE", "DISCONNECT ON REVOKE"]]
        rows += [
            [
                s["name"],
                str(s.get("version") or "-"),
                s["state"],
                _on_off(s.get("disconnect_on_revoke")),
            ]
            for s in data["sets"]
        ]
        lines.append(_table(rows))
    if data["bindings"]:
        rows = [["HOST", "SET", "STATE"]]
        rows += [[b["host"], str(b["set"] or "-"), b["state"]] for b in data["bindings"]]
        lines.append(_table(rows))
    else:
        lines.append("no bindings: devices are refused until a set is bound to their hostname")
    certs = data.get("server_certs") or []
    if certs:
        rows = [["SERVER CERT", "HOSTNAMES", "STATE", "DAYS LEFT", ""]]
        rows += [
            [
                c["name"],
                ",".join(c.get("hostnames") or []),
                str(c.get("state")),
                f"{float(c['days_left']):.0f}" if c.get("days_left") is not None else "-",
                "EXPIRING" if c.get("expiring") else "",
            ]
            for c in certs
        ]
        lines.append(_table(rows))
    return "\n".join(lines)


def _human_check(data: Any) -> str:
    verdict = "accepted" if data["ok"] else "refused"
    text = f"{verdict} by set {data['set']} version {data['version']}"
    if not data["ok"]:
        text += f": {data['reason']} [{data['code']}"
        if data.get("alert"):
            text += f", TLS alert {data['alert']}"
        text += "]"
        if data.get("hint"):
            text += f"\nhint: {data['hint']}"
    return text


# -- verbs ----------------------------------------------------------------------


def _run_with(
    backend_for: Callable[[argparse.Namespace], AbstractContextManager[_B]],
    args: argparse.Namespace,
    action: Callable[[_B], Any],
    human: Callable[[Any], str],
) -> int:
    """Run ``action`` on the backend ``backend_for(args)`` opens; print the result.

    A refusal prints its findings (JSON with ``--json``) and exits 2. Shared by the
    ``trust`` and ``cert`` groups, whose backends differ.
    """
    try:
        with backend_for(args) as backend:
            data = action(backend)
    except Refused as exc:
        if args.json:
            emit({"ok": False, "error": exc.message, "findings": exc.findings}, as_json=True)
        say(f"edgesim: error: {exc.message}")
        for f in exc.findings:
            say(_finding_line(f))
        return EXIT_CHECK_FAILED
    emit(data if data is not None else {"ok": True}, as_json=args.json, human=human)
    return EXIT_OK


def _run(
    args: argparse.Namespace,
    action: Callable[[_Backend], Any],
    human: Callable[[Any], str],
) -> int:
    return _run_with(_backend, args, action, human)


def _cmd_upload(args: argparse.Namespace) -> int:
    data = _read(args.file, "certificate file")

    def human(v: Any) -> str:
        for w in v.get("warnings", []):
            say("warning:" + _finding_line(w)[1:])
        return _version_line(v)

    return _run(
        args,
        lambda b: b.upload(
            args.name,
            data,
            activate=not args.no_activate,
            allow_sha1=args.allow_sha1,
            source=args.file,
        ),
        human,
    )


def _cmd_list(args: argparse.Namespace) -> int:
    return _run(args, lambda b: b.list_sets(), _human_sets)


def _cmd_show(args: argparse.Namespace) -> int:
    return _run(args, lambda b: b.get_set(args.name), _human_set)


def _cmd_versions(args: argparse.Namespace) -> int:
    return _run(args, lambda b: b.versions(args.name), _human_versions)


def _cmd_activate(args: argparse.Namespace) -> int:
    return _run(args, lambda b: b.activate(args.name, args.version), _version_line)


def _cmd_rollback(args: argparse.Namespace) -> int:
    return _run(args, lambda b: b.rollback(args.name), _version_line)


def _host(args: argparse.Namespace) -> str:
    if args.default and args.host:
        raise CliError("give --host HOST or --default, not both", EXIT_USAGE)
    if args.default:
        return DEFAULT_HOST
    if not args.host:
        raise CliError("give --host HOST (or --default for the default binding)", EXIT_USAGE)
    return str(args.host)


def _cmd_bind(args: argparse.Namespace) -> int:
    host = _host(args)
    return _run(args, lambda b: b.bind(args.name, host), lambda d: f"{d['host']} -> set {d['set']}")


def _cmd_unbind(args: argparse.Namespace) -> int:
    host = _host(args)
    return _run(args, lambda b: b.unbind(host), lambda d: f"unbound {host}")


def _cmd_delete(args: argparse.Namespace) -> int:
    return _run(args, lambda b: b.delete(args.name), lambda d: f"deleted set {args.name}")


def _cmd_set_option(args: argparse.Namespace) -> int:
    on = args.disconnect_on_revoke == "on"
    return _run(
        args,
        lambda b: b.set_options(args.name, disconnect_on_revoke=on),
        lambda d: f"set {args.name}: disconnect on revoke {_on_off(d['disconnect_on_revoke'])}",
    )


def _cmd_crl(args: argparse.Namespace) -> int:
    data = _read(args.file, "CRL file")
    return _run(
        args,
        lambda b: b.add_crl(args.name, data),
        lambda c: f"CRL from {c['issuer']} attached to {c['set']}: {c['revoked_count']} revoked",
    )


def _cmd_status(args: argparse.Namespace) -> int:
    return _run(args, lambda b: b.status(), _human_status)


def _cmd_check(args: argparse.Namespace) -> int:
    leaf = _read(args.device_cert, "device certificate")
    chain = _read(args.chain, "chain file") if args.chain else b""
    at = _time(args.at)
    result: dict[str, Any] = {}

    def action(b: _Backend) -> Any:
        result.update(b.check(args.set, leaf, chain, args.version, at))
        return result

    status = _run(args, action, _human_check)
    if status != EXIT_OK:
        return status
    return EXIT_OK if result.get("ok") else EXIT_CHECK_FAILED


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``trust`` command group to the ``edgesim`` parser."""
    common = argparse.ArgumentParser(add_help=False)
    where = common.add_argument_group("where the trust store is")
    where.add_argument(
        "--store",
        metavar="PATH",
        help=f"the store file, used when no --admin is given (default {DEFAULT_STORE})",
    )
    where.add_argument(
        "--admin",
        metavar="URL",
        help="a running edge's admin API, e.g. http://127.0.0.1:8081 (or EDGESIM_ADMIN_URL)",
    )
    where.add_argument(
        "--cluster",
        metavar="URLS",
        help="the cluster's store in NATS: nats://HOST:PORT[,...] (or EDGESIM_CLUSTER); "
        "changes reach every edge node that joined with edge serve --cluster",
    )
    where.add_argument("--token", help=f"the admin API token (or {TOKEN_ENV})")
    where.add_argument(
        "--admin-cacert", metavar="FILE", help="PEM: the CA of an https admin URL's certificate"
    )
    where.add_argument(
        "--admin-cert", metavar="FILE", help="PEM: an admin client certificate (with --admin-key)"
    )
    where.add_argument("--admin-key", metavar="FILE", help="PEM: the admin client key")
    common.add_argument("--json", action="store_true", help="print one JSON document")

    trust = subparsers.add_parser(
        "trust",
        help="certificate sets, bindings, status",
        description="Certificate sets: the CA certificates devices are verified against, "
        "their versions, hostname bindings, CRLs and propagation.",
    )
    trust.set_defaults(group_parser=trust)
    # Also before the verb (`edgesim trust --cluster URLS upload ...`); its own dest,
    # since the verb's parser would reset a shared one to None.
    trust.add_argument("--cluster", dest="group_cluster", metavar="URLS", help=argparse.SUPPRESS)
    verbs = trust.add_subparsers(dest="verb", metavar="VERB")

    def verb(name: str, func: Callable[[argparse.Namespace], int], text: str) -> Any:
        parser = verbs.add_parser(name, parents=[common], help=text, description=text)
        parser.set_defaults(func=func)
        return parser

    p = verb("upload", _cmd_upload, "upload one PEM file of CA certificates as a new version")
    p.add_argument("name", metavar="NAME", help="the certificate set (created if new)")
    p.add_argument("file", metavar="FILE", help="one PEM file: a root, or a chain ending at one")
    p.add_argument(
        "--no-activate", action="store_true", help="stage the version without activating it"
    )
    p.add_argument(
        "--allow-sha1", action="store_true", help="accept SHA-1 signatures in this version"
    )
    verb("list", _cmd_list, "list certificate sets")
    p = verb("show", _cmd_show, "show one set with its versions, hosts and CRLs")
    p.add_argument("name", metavar="NAME")
    p = verb("versions", _cmd_versions, "list a set's versions")
    p.add_argument("name", metavar="NAME")
    p = verb("activate", _cmd_activate, "make a version the active one (also a rollback)")
    p.add_argument("name", metavar="NAME")
    p.add_argument("version", metavar="VERSION", type=int)
    p = verb("rollback", _cmd_rollback, "re-activate the previously active version")
    p.add_argument("name", metavar="NAME")
    for name, func, text in (
        ("bind", _cmd_bind, "bind a hostname (the device's SNI) to a set"),
        ("unbind", _cmd_unbind, "remove a hostname binding"),
    ):
        p = verb(name, func, text)
        if name == "bind":
            p.add_argument("name", metavar="NAME")
        p.add_argument("--host", metavar="HOST", help="a hostname or a wildcard *.example.com")
        p.add_argument(
            "--default",
            action="store_true",
            help="the default binding: connections without SNI or with an unbound hostname",
        )
    p = verb("delete", _cmd_delete, "delete a set with its versions, bindings and CRLs")
    p.add_argument("name", metavar="NAME")
    p = verb(
        "set-option",
        _cmd_set_option,
        "set a set's options: --disconnect-on-revoke on closes the set's live MQTT sessions "
        "(DISCONNECT 0x98) when a newly active CRL revokes them or the set is deleted",
    )
    p.add_argument("name", metavar="NAME")
    p.add_argument(
        "--disconnect-on-revoke",
        choices=("on", "off"),
        required=True,
        help="default off: a revoked device stays connected until it reconnects",
    )
    p = verb("crl", _cmd_crl, "attach a CRL (PEM or DER) signed by a CA of the set")
    p.add_argument("name", metavar="NAME")
    p.add_argument("file", metavar="FILE")
    verb("status", _cmd_status, "propagation status per set and binding")
    p = verb("check", _cmd_check, "would this device certificate be accepted? (exit 0 yes, 1 no)")
    p.add_argument("set", metavar="SET")
    p.add_argument("device_cert", metavar="DEVICE_CERT", help="PEM: the device certificate")
    p.add_argument("--chain", metavar="FILE", help="PEM: intermediates the device sends")
    p.add_argument("--version", type=int, help="check against this version (default: active)")
    p.add_argument("--at", metavar="TIME", help="validation time, ISO-8601 (default: now)")
