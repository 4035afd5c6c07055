"""The admin API: certificate sets, server certificates, bindings, CRLs, status and events.

An aiohttp application on its own listener (default ``127.0.0.1:8081``), built
by :func:`make_admin_app` around a :class:`~edge.trust.propagation.TrustService`
and the edge's :class:`~edge.core.events.EventLog`; :func:`start_admin` serves
it and returns the bound port. Routes live under ``/v1/`` and are described by
the OpenAPI document at ``/v1/openapi.json`` (:mod:`edge.http.openapi`).

Authentication: every call except ``GET /v1/openapi.json``, the console's
static files under ``/ui/`` and, when configured so, ``GET /metrics`` needs
``Authorization: Bearer <token>`` (compared in constant time); a missing or
wrong token is ``401`` with ``WWW-Authenticate``, changes nothing, and is
recorded as an ``admin.denied`` event (without the token). With
``admin_ca_pem`` the caller must also present a client certificate issued by
that CA (the listener's SSL context comes from :func:`admin_ssl_context`).
:func:`load_or_create_token` keeps the token in ``<store>.token`` (mode 0600).

Errors are ``application/problem+json`` (RFC 9457): ``type``, ``title``,
``status``, ``detail``, plus ``findings`` (the same findings the CLI prints)
when an upload is refused. The translation at this boundary::

    RefusedError / LimitError    422  urn:edgesim:problem:refused / :limit
    NotFoundError                404  urn:edgesim:problem:not-found
    ConflictError                409  urn:edgesim:problem:conflict
    PropagationTimeout           504  urn:edgesim:problem:propagation-timeout
    StoreError, TrustError       503  urn:edgesim:problem:store
    any other exception          500  urn:edgesim:problem:internal (logged)
    bad query or body            400  urn:edgesim:problem:bad-request
    no or wrong credentials      401  urn:edgesim:problem:unauthorized
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import secrets
import ssl
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError
from cryptography import x509

from edge.core.events import EventLog
from edge.http import console_api
from edge.http.openapi import openapi_document
from edge.trust.errors import (
    ConflictError,
    LimitError,
    NotFoundError,
    PropagationTimeout,
    RefusedError,
    StoreError,
    TrustError,
)
from edge.trust.propagation import TrustService

__all__ = [
    "ADMIN_CA_KEY",
    "ADMIN_KEY",
    "CERT_LOGIN_KEY",
    "DISCONNECT_KEY",
    "EVENTS_KEY",
    "TOKEN_KEY",
    "TRUST_KEY",
    "admin_ssl_context",
    "load_or_create_token",
    "make_admin_app",
    "problem",
    "start_admin",
    "stop_admin",
]

TRUST_KEY = web.AppKey("trust", TrustService)
EVENTS_KEY = web.AppKey("events", EventLog)
TOKEN_KEY = web.AppKey("token", str)
ADMIN_CA_KEY = web.AppKey("admin_ca", list[x509.Certificate])
#: Whether a verified admin client certificate alone logs in (no token needed).
CERT_LOGIN_KEY = web.AppKey("certificate_login", bool)
#: On each authenticated request: how the admin was recognised (defined next to
#: the console's routes, which record it in their events).
ADMIN_KEY = console_api.ADMIN_KEY
#: Closes the live MQTT sessions a predicate on the session picks (the broker's
#: ``disconnect_devices``), or None when the edge serves no MQTT.
DISCONNECT_KEY = web.AppKey("disconnect", object)

log = logging.getLogger("edgesim.admin")

PROBLEM_JSON = "application/problem+json"
#: Bodies up to this size are read; the store refuses large uploads itself with a finding.
MAX_BODY = 16 * 1024 * 1024
_REALM = 'Bearer realm="edgesim-admin"'

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# -- tokens and TLS -------------------------------------------------------------


def load_or_create_token(store_path: str | Path) -> tuple[str, bool]:
    """Return the admin token kept next to the store, creating it on first use.

    The token lives in ``<store>.token`` with mode 0600; ``created`` is true when
    this call wrote it (the server then prints it once). Raises
    :class:`~edge.trust.errors.StoreError` when the file cannot be read or written.
    """
    path = Path(f"{store_path}.token")
    try:
        token = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        token = ""
    except (OSError, UnicodeDecodeError) as exc:
        raise StoreError(f"cannot read admin token {path}: {exc}") from exc
    if token:
        return token, False
    token = secrets.token_urlsafe(32)
    while token.startswith("-"):
        # A token that starts with '-' reads as an option in `--token T` (argparse).
        token = secrets.token_urlsafe(32)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Created with 0600 from the start: no window where others could read it.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as out:
            out.write(token + "\n")
        os.chmod(path, 0o600)
    except OSError as exc:
        raise StoreError(f"cannot write admin token {path}: {exc}") from exc
    return token, True


def admin_ssl_context(
    certfile: str | Path,
    keyfile: str | Path,
    admin_ca_pem: bytes | None = None,
    *,
    require_client_cert: bool = True,
) -> ssl.SSLContext:
    """A server context for the admin listener, verifying client certificates against
    ``admin_ca_pem`` when given.

    ``require_client_cert`` (the default) refuses a handshake without a certificate;
    False asks for one but lets a client without one in (it then needs the token).
    Either way a certificate that is presented must verify against the admin CAs,
    for the client-authentication purpose, or the handshake fails.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certfile, keyfile)
    if admin_ca_pem:
        context.load_verify_locations(cadata=admin_ca_pem.decode("ascii"))
        context.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    return context


# -- problems -------------------------------------------------------------------


def problem(
    status: int,
    slug: str,
    title: str,
    detail: str,
    *,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> web.Response:
    """An RFC 9457 problem response."""
    body = {"type": f"urn:edgesim:problem:{slug}", "title": title, "status": status}
    body["detail"] = detail
    body.update(extra)
    return web.Response(
        status=status,
        text=json.dumps(body),
        content_type=PROBLEM_JSON,
        headers=headers,
    )


def _translate(exc: TrustError) -> web.Response:
    if isinstance(exc, RefusedError):
        limit = isinstance(exc, LimitError)
        slug, title = ("limit", "Limit exceeded") if limit else ("refused", "Upload refused")
        return problem(422, slug, title, exc.message, findings=[f.to_dict() for f in exc.findings])
    if isinstance(exc, NotFoundError):
        return problem(404, "not-found", "Not found", str(exc))
    if isinstance(exc, ConflictError):
        return problem(409, "conflict", "Conflict", str(exc))
    if isinstance(exc, PropagationTimeout):
        return problem(504, "propagation-timeout", "Propagation timeout", str(exc))
    return problem(503, "store", "Trust store unavailable", str(exc))


class _BadRequest(Exception):
    """A query parameter or body the handler cannot use (becomes a 400 problem)."""


@web.middleware
async def _problems(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except TrustError as exc:
        return _translate(exc)
    except _BadRequest as exc:
        return problem(400, "bad-request", "Bad request", str(exc))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return problem(
            exc.status,
            "http",
            exc.reason,
            f"{request.method} {request.path}: {exc.reason}",
            headers={k: v for k, v in exc.headers.items() if k.lower() == "allow"},
        )
    except Exception:
        # A bug, not bad input: keep the traceback in the log, give the caller a problem.
        log.exception("admin API: %s %s failed", request.method, request.path)
        return problem(
            500, "internal", "Internal error", "the edge failed; its log has the details"
        )


def _unauthorized(request: web.Request, detail: str, error: str | None = None) -> web.Response:
    # Audit trail: who tried what, never the token they sent.
    request.app[EVENTS_KEY].emit(
        "admin.denied",
        "denied",
        peer=request.remote,
        method=request.method,
        path=request.path,
        reason=detail,
    )
    challenge = _REALM + (f', error="{error}"' if error else "")
    return problem(
        401,
        "unauthorized",
        "Unauthorized",
        detail,
        headers={"WWW-Authenticate": challenge},
    )


def _admin_certificate(request: web.Request) -> x509.Certificate | None:
    """The client certificate of the request's connection when one of the admin CAs
    issued it, else None.

    The TLS layer verified the chain (:func:`admin_ssl_context`); the issuer check
    guards against a listener whose context trusts more than the admin CAs.
    """
    admin_cas = request.app[ADMIN_CA_KEY]
    if not admin_cas or request.transport is None:
        return None
    ssl_object = request.transport.get_extra_info("ssl_object")
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    if not der:
        return None
    cert = x509.load_der_x509_certificate(der)
    if not any(ca.subject == cert.issuer for ca in admin_cas):
        return None
    return cert


def _cross_site(request: web.Request) -> str | None:
    """Why a request authenticated by its client certificate alone looks cross-site, or None.

    A browser presents its client certificate to any page's request, so unlike the
    bearer token (which only the console's own script sends) it is an ambient
    credential: without this check another site could make an admin's browser call
    the API (CSRF). Browsers say where a request comes from in ``Sec-Fetch-Site``
    (and ``Origin``); tools such as curl send neither and are let through.
    """
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None and site not in ("same-origin", "none"):
        return f"a {site} request cannot use the admin client certificate"
    origin = request.headers.get("Origin")
    if origin is not None and origin != f"{request.scheme}://{request.host}":
        return f"a request from {origin} cannot use the admin client certificate"
    return None


@web.middleware
async def _auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path == "/v1/openapi.json" and request.method in ("GET", "HEAD"):
        return await handler(request)
    if console_api.is_public(request):
        return await handler(request)
    expected = request.app[TOKEN_KEY]
    header = request.headers.get("Authorization", "")
    if request.app[CERT_LOGIN_KEY] and not header:
        # Certificate login: a verified admin client certificate alone is enough.
        cert = _admin_certificate(request)
        if cert is not None:
            why = _cross_site(request)
            if why is not None:
                return _forbidden(request, why)
            request[ADMIN_KEY] = f"certificate {cert.subject.rfc4514_string()}"
            return await handler(request)
        if not expected:
            return _unauthorized(request, "present an admin client certificate")
    if expected:
        scheme, _, given = header.partition(" ")
        if not header:
            detail = "send 'Authorization: Bearer <token>' (the admin token)"
            if request.app[CERT_LOGIN_KEY]:
                detail += " or present an admin client certificate"
            return _unauthorized(request, detail)
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), expected.encode()
        ):
            return _unauthorized(request, "the bearer token is wrong", "invalid_token")
    request[ADMIN_KEY] = "token"
    if request.app[ADMIN_CA_KEY] and not request.app[CERT_LOGIN_KEY]:
        # Token and certificate both required.
        cert = _admin_certificate(request)
        if cert is None:
            return _unauthorized(
                request, "an admin client certificate from the admin CA is required"
            )
        request[ADMIN_KEY] = f"token and certificate {cert.subject.rfc4514_string()}"
    return await handler(request)


def _forbidden(request: web.Request, detail: str) -> web.Response:
    request.app[EVENTS_KEY].emit(
        "admin.denied",
        "denied",
        peer=request.remote,
        method=request.method,
        path=request.path,
        reason=detail,
    )
    return problem(403, "forbidden", "Forbidden", detail)


async def _whoami(request: web.Request) -> web.Response:
    """``GET /v1/whoami``: how this request was authenticated (the console's login check)."""
    return _json({"admin": request[ADMIN_KEY]})


# -- request helpers ------------------------------------------------------------


def _trust(request: web.Request) -> TrustService:
    return request.app[TRUST_KEY]


def _flag(request: web.Request, name: str, default: bool) -> bool:
    raw = request.query.get(name)
    if raw is None:
        return default
    # JSON Schema's booleans, as the OpenAPI description says: anything else (1, yes,
    # an empty value) is refused rather than guessed at.
    if raw == "true":
        return True
    if raw == "false":
        return False
    raise _BadRequest(f"query parameter {name}={raw!r}: expected true or false")


#: The largest integer a query or path parameter may hold: SQLite's INTEGER (and
#: the OpenAPI description's ``maximum``); beyond it no version or id can exist.
MAX_INT = 2**63 - 1


def _int(raw: str | None, name: str, *, minimum: int = 0) -> int | None:
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise _BadRequest(f"{name}={raw!r}: expected an integer") from None
    if value < minimum:
        raise _BadRequest(f"{name}={raw!r}: must be at least {minimum}")
    if value > MAX_INT:
        raise _BadRequest(f"{name}={raw!r}: must be at most {MAX_INT}")
    return value


def _body_int(body: dict[str, Any], key: str, *, minimum: int = 1) -> int | None:
    """An optional integer field of a JSON body (``3.0`` is 3, as in JSON Schema)."""
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= MAX_INT:
        raise _BadRequest(f"'{key}' must be an integer from {minimum} to {MAX_INT}")
    return value


def _version(request: web.Request) -> int:
    value = _int(request.match_info["version"], "version", minimum=1)
    assert value is not None
    return value


async def _file_body(request: web.Request) -> tuple[bytes, str]:
    """The uploaded file and its name: the raw body (``?filename=``), or one multipart file."""
    if request.content_type.startswith("multipart/"):
        found: list[tuple[bytes, str]] = []
        try:
            reader = await request.multipart()
            while True:
                part = await reader.next()
                if part is None:
                    break
                if isinstance(part, BodyPartReader) and part.filename is not None:
                    found.append((bytes(await part.read(decode=True)), part.filename or "FILE"))
                elif isinstance(part, BodyPartReader):
                    # A form field beside the file would be ignored: say so instead.
                    raise _BadRequest(
                        f"a multipart upload holds one file part only; part {part.name!r}"
                        " is not a file (no filename)"
                    )
                else:
                    raise _BadRequest("nested multipart bodies are not accepted")
        except (HttpProcessingError, ValueError) as exc:
            # aiohttp's multipart reader raises these for a body it cannot parse
            # (a bad part header, a missing boundary, a bad transfer encoding).
            detail = getattr(exc, "message", "") or str(exc) or type(exc).__name__
            raise _BadRequest(f"the multipart body is malformed: {detail}") from None
        if len(found) != 1:
            raise _BadRequest(
                f"a multipart upload must hold exactly one file, this one holds {len(found)}"
            )
        return found[0]
    return await request.read(), request.query.get("filename") or "FILE"


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _BadRequest(f"the body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise _BadRequest("the body must be a JSON object")
    return body


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(data, status=status, headers=headers)


# -- handlers -------------------------------------------------------------------


async def _openapi(request: web.Request) -> web.Response:
    return _json(openapi_document())


async def _list_sets(request: web.Request) -> web.Response:
    return _json({"sets": [s.to_dict() for s in await _trust(request).list_sets()]})


async def _upload(request: web.Request, name: str) -> web.Response:
    data, filename = await _file_body(request)
    info = await _trust(request).upload(
        name,
        data,
        activate=_flag(request, "activate", True),
        allow_sha1=_flag(request, "allow_sha1", False),
        source=filename,
    )
    location = f"/v1/sets/{name}/versions/{info.version}"
    return _json(info.to_dict(), status=201, headers={"Location": location})


async def _upload_by_query(request: web.Request) -> web.Response:
    name = request.query.get("name")
    if not name:
        raise _BadRequest("query parameter 'name' (the certificate set) is required")
    return await _upload(request, name)


async def _upload_version(request: web.Request) -> web.Response:
    return await _upload(request, request.match_info["name"])


async def _get_set(request: web.Request) -> web.Response:
    trust = _trust(request)
    name = request.match_info["name"]
    info = (await trust.get_set(name)).to_dict()
    info["versions"] = [v.to_dict() for v in await trust.versions(name)]
    info["propagation"] = next(
        (s for s in trust.status()["sets"] if s["name"] == name),
        {"name": name, "state": "no active version"},
    )
    return _json(info)


async def _delete_set(request: web.Request) -> web.Response:
    await _trust(request).delete(request.match_info["name"])
    return web.Response(status=204)


async def _set_options(request: web.Request) -> web.Response:
    """``PATCH /v1/sets/{name}/options``: set ``disconnect_on_revoke`` (a JSON boolean)."""
    body = await _json_body(request)
    value = body.get("disconnect_on_revoke")
    if not isinstance(value, bool):
        raise _BadRequest("'disconnect_on_revoke' is required and must be true or false")
    info = await _trust(request).set_options(request.match_info["name"], disconnect_on_revoke=value)
    return _json(info.to_dict())


async def _versions(request: web.Request) -> web.Response:
    versions = await _trust(request).versions(request.match_info["name"])
    return _json({"versions": [v.to_dict() for v in versions]})


async def _get_version(request: web.Request) -> web.Response:
    trust = _trust(request)
    name, number = request.match_info["name"], _version(request)
    info = next((v for v in await trust.versions(name) if v.version == number), None)
    if info is None:
        raise NotFoundError(f"certificate set {name!r} has no version {number}")
    _, pem, _ = await asyncio.to_thread(trust.store.version_pem, name, number)
    return _json({**info.to_dict(), "pem": pem.decode("ascii")})


async def _activate(request: web.Request) -> web.Response:
    info = await _trust(request).activate(request.match_info["name"], _version(request))
    return _json(info.to_dict())


async def _rollback(request: web.Request) -> web.Response:
    info = await _trust(request).rollback(request.match_info["name"])
    return _json(info.to_dict())


async def _list_crls(request: web.Request) -> web.Response:
    crls = await _trust(request).crls(request.match_info["name"])
    return _json({"crls": [c.to_dict() for c in crls]})


async def _add_crl(request: web.Request) -> web.Response:
    data, _ = await _file_body(request)
    info = await _trust(request).add_crl(request.match_info["name"], data)
    return _json(info.to_dict(), status=201)


async def _check(request: web.Request) -> web.Response:
    body = await _json_body(request)
    certificate = body.get("certificate")
    if not isinstance(certificate, str) or not certificate.strip():
        raise _BadRequest("'certificate' (the device certificate, PEM text) is required")
    chain = body.get("chain") or ""
    if not isinstance(chain, str):
        raise _BadRequest("'chain' must be PEM text")
    version = _body_int(body, "version")
    at = _parse_time(body.get("at"), "at")
    result = await _trust(request).check(
        request.match_info["name"],
        certificate.encode(),
        chain_pem=chain.encode(),
        version=version,
        at=at,
    )
    return _json(result)


def _parse_time(raw: object, name: str) -> datetime | None:
    if raw is None or raw == "":
        return None
    if not isinstance(raw, str):
        raise _BadRequest(f"'{name}' must be an ISO-8601 time")
    try:
        when = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise _BadRequest(f"'{name}'={raw!r} is not an ISO-8601 time") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


async def _bindings(request: web.Request) -> web.Response:
    trust = _trust(request)
    states = {b["host"]: b["state"] for b in trust.status()["bindings"]}
    stored = await trust.bindings()
    return _json(
        {
            "bindings": [
                {"host": h, "set": s, "state": states.get(h, "pending")} for h, s in stored.items()
            ]
        }
    )


async def _bind(request: web.Request) -> web.Response:
    body = await _json_body(request)
    name = body.get("set")
    if not isinstance(name, str) or not name:
        raise _BadRequest("'set' (the certificate set to bind) is required")
    host = await _trust(request).bind(name, request.match_info["host"])
    return _json({"host": host, "set": name})


async def _unbind(request: web.Request) -> web.Response:
    await _trust(request).unbind(request.match_info["host"])
    return web.Response(status=204)


async def _status(request: web.Request) -> web.Response:
    return _json(_trust(request).status())


# -- server certificates ------------------------------------------------------------


def _text_field(body: dict[str, Any], key: str, *, required: bool) -> str | None:
    value = body.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise _BadRequest(f"{key!r} must be a non-empty string")
    return value


async def _list_certs(request: web.Request) -> web.Response:
    trust = _trust(request)
    now = trust.store.now()
    certs = await trust.server_certs()
    return _json(
        {
            "certs": [c.to_dict(now, trust.expiry_warn_days) for c in certs],
            "expiry_warn_days": trust.expiry_warn_days,
        }
    )


async def _upload_cert(request: web.Request) -> web.Response:
    # JSON, not multipart: a certificate and its key are two documents, and the
    # passphrase of an encrypted key travels with them (never stored or logged).
    body = await _json_body(request)
    cert = _text_field(body, "certificate", required=True)
    key = _text_field(body, "key", required=True)
    passphrase = _text_field(body, "passphrase", required=False)
    assert cert is not None
    assert key is not None
    info = await _trust(request).upload_server_cert(
        request.match_info["name"],
        cert.encode(),
        key.encode(),
        passphrase=passphrase.encode() if passphrase else None,
        cert_source=_text_field(body, "certificate_filename", required=False) or "certificate",
        key_source=_text_field(body, "key_filename", required=False) or "key",
    )
    return _json(info.to_dict(), status=201)


async def _get_cert(request: web.Request) -> web.Response:
    trust = _trust(request)
    info = await trust.get_server_cert(request.match_info["name"])
    return _json(info.to_dict(trust.store.now(), trust.expiry_warn_days))


async def _delete_cert(request: web.Request) -> web.Response:
    await _trust(request).delete_server_cert(request.match_info["name"])
    return web.Response(status=204)


async def _deploy_cert(request: web.Request) -> web.Response:
    body = await _json_body(request) if request.can_read_body else {}
    settings = body.get("settings", {})
    if not isinstance(settings, dict):
        raise _BadRequest("'settings' must be a JSON object")
    version = _body_int(body, "version")
    default = body.get("default")
    if default is not None and not isinstance(default, bool):
        raise _BadRequest("'default' must be true, false or null")
    trust = _trust(request)
    info = await trust.deploy(
        request.match_info["name"], settings, version=version, default=default
    )
    if _flag(request, "wait", False):
        await trust.wait_active()
        info = trust.deployment_state(info)
    return _json(info.to_dict(), status=201)


async def _rollback_cert(request: web.Request) -> web.Response:
    trust = _trust(request)
    info = await trust.rollback_server_cert(request.match_info["name"])
    if _flag(request, "wait", False):
        await trust.wait_active()
        info = trust.deployment_state(info) if info else None
    return _json(
        {"name": request.match_info["name"], "deployment": info.to_dict() if info else None}
    )


async def _disconnect_devices(request: web.Request) -> web.Response:
    """``POST /v1/devices/disconnect``: end live MQTT sessions (MQTT 5: DISCONNECT 0x98)."""
    body = await _json_body(request)
    # Presence decides, not truth: {"identity": null, "set": "a"} names both (found by
    # schemathesis: it was taken as "set" alone).
    if ("identity" in body) == ("set" in body):
        raise _BadRequest("give exactly one of 'identity' (set/name) or 'set'")
    identity, set_name = body.get("identity"), body.get("set")
    chosen_value = identity if "identity" in body else set_name
    if not isinstance(chosen_value, str) or not chosen_value:
        raise _BadRequest("'identity' and 'set' are non-empty strings")
    reason = body.get("reason", "disconnected by an administrator")
    if not isinstance(reason, str):
        raise _BadRequest("'reason' is a string")
    disconnect = request.app[DISCONNECT_KEY]
    if disconnect is None:  # no MQTT listener: no MQTT session to end
        return _json({"disconnected": 0})

    def chosen(info: Any) -> bool:
        if identity is not None:
            return bool(str(info.identity) == identity)
        return bool(info.identity.namespace == set_name)

    count = disconnect(chosen, reason)  # type: ignore[operator]
    return _json({"disconnected": count})


def _log_time(query: Mapping[str, str], name: str) -> str | None:
    """A time filter of the event log, checked, in the log's own format (UTC, ``Z``).

    The log compares times as strings; a value that is not a time used to be compared
    all the same (and matched nothing, or everything) instead of being refused.
    """
    raw = query.get(name)
    if raw is None:
        return None
    when = _parse_time(raw, name)
    if when is None:
        raise _BadRequest(f"query parameter {name}=: expected an ISO-8601 time")
    utc = when.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


async def _events(request: web.Request) -> web.Response:
    q = request.query
    events = request.app[EVENTS_KEY].query(
        since=_int(q.get("since"), "since") or 0,
        kind=q.get("kind") or None,
        outcome=q.get("outcome") or None,
        identity=q.get("identity") or None,
        after_time=_log_time(q, "after"),
        before_time=_log_time(q, "before"),
        limit=_int(q.get("limit"), "limit", minimum=1),
    )
    return _json({"events": events, "last_id": request.app[EVENTS_KEY].last_id})


#: (method, path, handler): the whole API; :mod:`edge.http.openapi` describes each.
ROUTES: tuple[tuple[str, str, Handler], ...] = (
    ("GET", "/v1/openapi.json", _openapi),
    ("GET", "/v1/whoami", _whoami),
    ("GET", "/v1/sets", _list_sets),
    ("POST", "/v1/sets", _upload_by_query),
    ("GET", "/v1/sets/{name}", _get_set),
    ("DELETE", "/v1/sets/{name}", _delete_set),
    ("PATCH", "/v1/sets/{name}/options", _set_options),
    ("GET", "/v1/sets/{name}/versions", _versions),
    ("POST", "/v1/sets/{name}/versions", _upload_version),
    ("GET", "/v1/sets/{name}/versions/{version}", _get_version),
    ("POST", "/v1/sets/{name}/versions/{version}/activate", _activate),
    ("POST", "/v1/sets/{name}/rollback", _rollback),
    ("GET", "/v1/sets/{name}/crls", _list_crls),
    ("POST", "/v1/sets/{name}/crls", _add_crl),
    ("POST", "/v1/sets/{name}/check", _check),
    ("GET", "/v1/bindings", _bindings),
    ("PUT", "/v1/bindings/{host}", _bind),
    ("DELETE", "/v1/bindings/{host}", _unbind),
    ("GET", "/v1/status", _status),
    ("GET", "/v1/events", _events),
    ("GET", "/v1/certs", _list_certs),
    ("GET", "/v1/certs/{name}", _get_cert),
    ("POST", "/v1/certs/{name}", _upload_cert),
    ("DELETE", "/v1/certs/{name}", _delete_cert),
    ("POST", "/v1/certs/{name}/deploy", _deploy_cert),
    ("POST", "/v1/certs/{name}/rollback", _rollback_cert),
    ("POST", "/v1/devices/disconnect", _disconnect_devices),
    # Live views, test publishing, /metrics and the web console (edge.http.console_api).
    *console_api.ROUTES,
)


def make_admin_app(
    trust: TrustService,
    events: EventLog,
    *,
    token: str | None,
    admin_ca_pem: bytes | None = None,
    certificate_login: bool = False,
    disconnect: Callable[[Callable[[Any], bool], str], int] | None = None,
    edge: Any = None,
    metrics_auth: bool = True,
) -> web.Application:
    """Build the admin application.

    ``token`` is the bearer token every call needs; ``admin_ca_pem`` additionally
    requires a client certificate issued by one of those CAs (the listener must
    then use :func:`admin_ssl_context`). With ``certificate_login`` such a
    certificate alone logs in instead, the token staying an alternative: this is
    how the web console logs in with an admin's browser certificate (requests it
    authenticates must not come from another site: see ``_cross_site``). At
    least one of token and CA must be given: an admin API open to anyone on the
    listener is refused with ``ValueError``, and so is ``certificate_login``
    without a CA.
    ``disconnect`` is the broker's ``disconnect_devices`` (None: no MQTT served).
    ``edge`` (the running :class:`~edge.server.EdgeServer`) backs the device list,
    publishing, topic streams and the connection metrics; ``metrics_auth=False``
    serves ``/metrics`` without the token.
    """
    if not token and not admin_ca_pem:
        raise ValueError("the admin API needs a token or an admin CA (or both)")
    if certificate_login and not admin_ca_pem:
        raise ValueError("certificate_login needs admin_ca_pem (the admin CAs)")
    app = web.Application(middlewares=[_problems, _auth], client_max_size=MAX_BODY)
    app[TRUST_KEY] = trust
    app[EVENTS_KEY] = events
    app[TOKEN_KEY] = token or ""
    app[ADMIN_CA_KEY] = x509.load_pem_x509_certificates(admin_ca_pem) if admin_ca_pem else []
    app[CERT_LOGIN_KEY] = certificate_login
    app[DISCONNECT_KEY] = disconnect
    console_api.install(app, events, edge=edge, metrics_auth=metrics_auth)
    for method, path, handler in ROUTES:
        app.router.add_route(method, path, handler)
    return app


async def start_admin(
    app: web.Application,
    host: str = "127.0.0.1",
    port: int = 8081,
    ssl_context: ssl.SSLContext | None = None,
) -> tuple[web.AppRunner, int]:
    """Serve ``app`` on ``host:port`` (0: any free port); return the runner and the bound port.

    Stop it with ``await runner.cleanup()``.
    """
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
    try:
        await site.start()
    except OSError:
        await runner.cleanup()
        raise
    bound = runner.addresses[0][1]
    return runner, int(bound)


async def stop_admin(runner: web.AppRunner) -> None:
    """Stop a listener :func:`start_admin` started, leaving no connection open.

    ``runner.cleanup()`` ends requests and closes connections, but over TLS a
    close waits for the client's close_notify (up to 30 s), and a browser keeping
    its connection does not send one: the event loop would then close under a
    live socket. What is still open after the cleanup is aborted.
    """
    server = runner.server
    handlers = list(server.connections) if server is not None else []
    await runner.cleanup()
    for handler in handlers:
        transport = handler.transport
        if transport is not None:
            transport.abort()
