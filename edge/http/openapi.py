"""The admin API's OpenAPI 3.1 description, written by hand.

Served at ``GET /v1/openapi.json``. A test checks that every route of
:data:`edge.http.admin.ROUTES` is described here with its method, so the two
cannot drift apart.
"""

from __future__ import annotations

import copy
from typing import Any

__all__ = ["openapi_document"]

_PROBLEM = {"$ref": "#/components/responses/Problem"}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _ok(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: str) -> dict[str, Any]:
    return {code: _PROBLEM for code in ("401", *codes)}


#: Largest integer a parameter may hold (SQLite's INTEGER; edge.http.admin.MAX_INT).
_MAX_INT = 2**63 - 1
#: Set and server certificate names (edge.trust.validate, edge.trust.servercerts).
_NAME_SCHEMA = {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"}
#: PEM text: anything with a non-blank character (whether it is PEM is the server's 422).
_PEM = {"type": "string", "pattern": "\\S", "description": "PEM"}
_NAME = {
    "name": "name",
    "in": "path",
    "required": True,
    "schema": _NAME_SCHEMA,
    "example": "default",
}
_VERSION = {
    "name": "version",
    "in": "path",
    "required": True,
    "schema": {"type": "integer", "minimum": 1, "maximum": _MAX_INT},
    "example": 1,
}
_HOST = {
    "name": "host",
    "in": "path",
    "required": True,
    "description": "a hostname, a wildcard like *.example.com, or * for the default binding",
    "schema": {"type": "string"},
    "example": "*",
}
_ACTIVATE = {
    "name": "activate",
    "in": "query",
    "description": "activate the new version at once (default true); false stages it",
    "schema": {"type": "boolean", "default": True},
}
_SHA1 = {
    "name": "allow_sha1",
    "in": "query",
    "description": "accept SHA-1 signatures in this version (legacy fleets)",
    "schema": {"type": "boolean", "default": False},
}
_FILENAME = {
    "name": "filename",
    "in": "query",
    "description": "the file's name, used in refusal messages (raw bodies only)",
    "schema": {"type": "string"},
}
_FILE_BODY = {
    "required": True,
    "description": "exactly one file: the raw body, or one file part of a multipart form",
    "content": {
        "application/x-pem-file": {"schema": {"type": "string"}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["file"],
                "properties": {"file": {"type": "string", "format": "binary"}},
                "additionalProperties": False,
            }
        },
    },
}

_UPLOAD = {
    "summary": "Upload one PEM file of CA certificates as a new version",
    "requestBody": _FILE_BODY,
    "responses": {
        "201": _ok(_ref("Version"), "stored (and activated unless activate=false)"),
        **_errors("400", "422"),
    },
}

_DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "edgesim admin API",
        "version": "1",
        "description": "Certificate sets (the CAs devices are verified against), their "
        "versions, hostname bindings, CRLs, propagation status and the edge's event log. "
        "Errors are RFC 9457 problem documents.",
    },
    "security": [{"bearer": []}],
    "paths": {
        "/v1/openapi.json": {
            "get": {
                "summary": "This document",
                "security": [],
                "responses": {"200": _ok({"type": "object"})},
            }
        },
        "/v1/sets": {
            "get": {
                "summary": "List certificate sets",
                "responses": {
                    "200": _ok(
                        {
                            "type": "object",
                            "properties": {"sets": {"type": "array", "items": _ref("Set")}},
                        }
                    ),
                    **_errors(),
                },
            },
            "post": {
                **_UPLOAD,
                "parameters": [
                    {"name": "name", "in": "query", "required": True, "schema": _NAME_SCHEMA},
                    _ACTIVATE,
                    _SHA1,
                    _FILENAME,
                ],
            },
        },
        "/v1/sets/{name}": {
            "parameters": [_NAME],
            "get": {
                "summary": "One set with its versions and propagation state",
                "responses": {"200": _ok(_ref("SetDetail")), **_errors("404")},
            },
            "delete": {
                "summary": "Delete a set with its versions, CRLs and bindings",
                "responses": {"204": {"description": "deleted"}, **_errors("404")},
            },
        },
        "/v1/sets/{name}/options": {
            "parameters": [_NAME],
            "patch": {
                "summary": "Set the set's options. disconnect_on_revoke (default false): once"
                " the change is active, a newly active CRL of this set closes the live MQTT"
                " sessions of the devices it revokes, and deleting the set closes the sessions"
                " it authenticated (MQTT 5: DISCONNECT 0x98 with a Reason String)",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["disconnect_on_revoke"],
                                "properties": {"disconnect_on_revoke": {"type": "boolean"}},
                            },
                            "example": {"disconnect_on_revoke": False},
                        }
                    },
                },
                "responses": {"200": _ok(_ref("Set")), **_errors("400", "404")},
            },
        },
        "/v1/sets/{name}/versions": {
            "parameters": [_NAME],
            "get": {
                "summary": "The set's versions, oldest first",
                "responses": {
                    "200": _ok(
                        {
                            "type": "object",
                            "properties": {"versions": {"type": "array", "items": _ref("Version")}},
                        }
                    ),
                    **_errors("404"),
                },
            },
            "post": {**_UPLOAD, "parameters": [_ACTIVATE, _SHA1, _FILENAME]},
        },
        "/v1/sets/{name}/versions/{version}": {
            "parameters": [_NAME, _VERSION],
            "get": {
                "summary": "One version, with its PEM",
                "responses": {
                    "200": _ok(
                        {
                            "allOf": [
                                _ref("Version"),
                                {"type": "object", "properties": {"pem": {"type": "string"}}},
                            ]
                        }
                    ),
                    **_errors("400", "404"),
                },
            },
        },
        "/v1/sets/{name}/versions/{version}/activate": {
            "parameters": [_NAME, _VERSION],
            "post": {
                "summary": "Make this version the active one (also how to roll back)",
                "responses": {"200": _ok(_ref("Version")), **_errors("400", "404")},
            },
        },
        "/v1/sets/{name}/rollback": {
            "parameters": [_NAME],
            "post": {
                "summary": "Re-activate the previously active version",
                "responses": {"200": _ok(_ref("Version")), **_errors("404", "409")},
            },
        },
        "/v1/sets/{name}/crls": {
            "parameters": [_NAME],
            "get": {
                "summary": "The set's CRLs",
                "responses": {
                    "200": _ok(
                        {
                            "type": "object",
                            "properties": {"crls": {"type": "array", "items": _ref("Crl")}},
                        }
                    ),
                    **_errors("404"),
                },
            },
            "post": {
                "summary": "Attach a CRL (PEM or DER) signed by a CA of the active version",
                "requestBody": _FILE_BODY,
                "responses": {"201": _ok(_ref("Crl")), **_errors("400", "404", "422")},
            },
        },
        "/v1/sets/{name}/check": {
            "parameters": [_NAME],
            "post": {
                "summary": "Dry run: would this device certificate be accepted?",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["certificate"],
                                "properties": {
                                    "certificate": _PEM,
                                    "chain": {"type": "string", "description": "PEM"},
                                    "version": {
                                        "type": "integer",
                                        "minimum": 1,
                                        "maximum": _MAX_INT,
                                    },
                                    "at": {"type": "string", "format": "date-time"},
                                },
                            }
                        }
                    },
                },
                "responses": {
                    "200": _ok(_ref("CheckResult")),
                    **_errors("400", "404", "422"),
                },
            },
        },
        "/v1/bindings": {
            "get": {
                "summary": "Hostname bindings with their propagation state",
                "responses": {
                    "200": _ok(
                        {
                            "type": "object",
                            "properties": {"bindings": {"type": "array", "items": _ref("Binding")}},
                        }
                    ),
                    **_errors(),
                },
            }
        },
        "/v1/bindings/{host}": {
            "parameters": [_HOST],
            "put": {
                "summary": "Bind a hostname (or * for the default) to a set",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["set"],
                                "properties": {"set": _NAME_SCHEMA},
                            },
                            "example": {"set": "default"},
                        }
                    },
                },
                "responses": {"200": _ok(_ref("Binding")), **_errors("400", "404", "409")},
            },
            "delete": {
                "summary": "Remove a binding",
                "responses": {"204": {"description": "removed"}, **_errors("404", "409")},
            },
        },
        "/v1/status": {
            "get": {
                "summary": "Propagation status: overall, per worker, per set, per binding",
                "responses": {"200": _ok(_ref("Status")), **_errors()},
            }
        },
        "/v1/devices/disconnect": {
            "post": {
                "summary": "End the live MQTT sessions of one device (identity set/name) or of"
                " every device of a set; MQTT 5 devices get DISCONNECT 0x98 with the reason",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "description": "exactly one of identity and set",
                                "oneOf": [{"required": ["identity"]}, {"required": ["set"]}],
                                "properties": {
                                    "identity": {"type": "string", "minLength": 1},
                                    "set": {"type": "string", "minLength": 1},
                                    "reason": {"type": "string"},
                                },
                            },
                            "example": {"set": "default", "reason": "maintenance"},
                        }
                    },
                },
                "responses": {
                    "200": _ok(
                        {"type": "object", "properties": {"disconnected": {"type": "integer"}}}
                    ),
                    **_errors("400"),
                },
            }
        },
        "/v1/events": {
            "get": {
                "summary": "The edge's event log, oldest first",
                "parameters": [
                    {"name": n, "in": "query", "schema": s}
                    for n, s in (
                        ("since", {"type": "integer", "minimum": 0, "maximum": _MAX_INT}),
                        ("kind", {"type": "string"}),
                        ("outcome", {"type": "string"}),
                        ("identity", {"type": "string"}),
                        ("after", {"type": "string", "format": "date-time"}),
                        ("before", {"type": "string", "format": "date-time"}),
                        ("limit", {"type": "integer", "minimum": 1, "maximum": _MAX_INT}),
                    )
                ],
                "responses": {
                    "200": _ok(
                        {
                            "type": "object",
                            "properties": {
                                "events": {"type": "array", "items": _ref("Event")},
                                "last_id": {"type": "integer"},
                            },
                        }
                    ),
                    **_errors("400"),
                },
            }
        },
    },
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "responses": {
            "Problem": {
                "description": "an RFC 9457 problem",
                "content": {"application/problem+json": {"schema": _ref("Problem")}},
            }
        },
        "schemas": {
            "Problem": {
                "type": "object",
                "required": ["type", "title", "status", "detail"],
                "properties": {
                    "type": {"type": "string", "format": "uri"},
                    "title": {"type": "string"},
                    "status": {"type": "integer"},
                    "detail": {"type": "string"},
                    "findings": {"type": "array", "items": _ref("Finding")},
                },
            },
            "Finding": {
                "type": "object",
                "properties": {
                    "severity": {"enum": ["error", "warning"]},
                    "code": {"type": "string"},
                    "position": {"type": ["integer", "null"]},
                    "subject": {"type": ["string", "null"]},
                    "message": {"type": "string"},
                    "hint": {"type": ["string", "null"]},
                },
            },
            "Version": {
                "type": "object",
                "properties": {
                    "set": {"type": "string"},
                    "version": {"type": "integer"},
                    "created_at": {"type": "string", "format": "date-time"},
                    "sha256": {"type": "string"},
                    "certificate_count": {"type": "integer"},
                    "subjects": {"type": "array", "items": {"type": "string"}},
                    "activated_at": {"type": ["string", "null"]},
                    "active": {"type": "boolean"},
                    "allow_sha1": {"type": "boolean"},
                    "state": {
                        "enum": [
                            "staged",
                            "inactive",
                            "pending",
                            "propagating",
                            "active",
                            "retiring",
                        ]
                    },
                    "warnings": {"type": "array", "items": _ref("Finding")},
                },
            },
            "Crl": {
                "type": "object",
                "properties": {
                    "set": {"type": "string"},
                    "issuer": {"type": "string"},
                    "sha256": {"type": "string"},
                    "this_update": {"type": "string"},
                    "next_update": {"type": ["string", "null"]},
                    "revoked_count": {"type": "integer"},
                    "added_at": {"type": "string"},
                },
            },
            "Set": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "created_at": {"type": "string"},
                    "active_version": {"type": ["integer", "null"]},
                    "latest_version": {"type": "integer"},
                    "hosts": {"type": "array", "items": {"type": "string"}},
                    "crls": {"type": "array", "items": _ref("Crl")},
                    "disconnect_on_revoke": {"type": "boolean"},
                },
            },
            "SetDetail": {
                "allOf": [
                    _ref("Set"),
                    {
                        "type": "object",
                        "properties": {
                            "versions": {"type": "array", "items": _ref("Version")},
                            "propagation": {"type": "object"},
                        },
                    },
                ]
            },
            "Binding": {
                "type": "object",
                "properties": {
                    "host": {"type": "string"},
                    "set": {"type": ["string", "null"]},
                    "state": {"enum": ["pending", "propagating", "active"]},
                },
            },
            "Status": {
                "type": "object",
                "properties": {
                    "state": {"enum": ["pending", "propagating", "active"]},
                    "generation": {"type": "integer"},
                    "active_generation": {"type": "integer"},
                    "propagation_delay": {"type": "number"},
                    "workers": {"type": "array", "items": {"type": "object"}},
                    "sets": {"type": "array", "items": {"type": "object"}},
                    "bindings": {"type": "array", "items": _ref("Binding")},
                },
            },
            "CheckResult": {
                "type": "object",
                "properties": {
                    "set": {"type": "string"},
                    "version": {"type": "integer"},
                    "ok": {"type": "boolean"},
                    "code": {"type": "string"},
                    "alert": {"type": ["string", "null"]},
                    "openssl_code": {"type": ["integer", "null"]},
                    "reason": {"type": "string"},
                    "hint": {"type": "string"},
                    "detail": {"type": "string"},
                    "chain": {"type": "array", "items": {"type": "object"}},
                },
            },
            "Event": {
                "type": "object",
                "required": ["id", "time", "kind", "outcome"],
                "properties": {
                    "id": {"type": "integer"},
                    "time": {"type": "string"},
                    "kind": {"type": "string"},
                    "outcome": {"type": "string"},
                },
                "additionalProperties": True,
            },
        },
    },
}


# -- server certificates (kept in one block so the additions stay together) -------

_SETTINGS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "deployment settings; on deploy, keys left out keep the current value",
    "properties": {
        "set": {
            "type": ["string", "null"],
            "description": "the certificate set verifying devices; null: the hostname's binding",
        },
        "client_auth": {"enum": ["required", "none"]},
        "min_tls": {"enum": ["1.2", "1.3"]},
        "send_ca_names": {
            "type": "boolean",
            "description": "list the set's CA names in the CertificateRequest",
        },
        "identity_rule": {
            "type": ["string", "null"],
            "description": "cn, san-dns, san-uri, san-email, sha256 or subject; null: the edge's",
        },
    },
    "additionalProperties": False,
}
_WAIT = {
    "name": "wait",
    "in": "query",
    "description": "answer once the change is active on every worker",
    "schema": {"type": "boolean", "default": False},
}
_CERT_PATHS: dict[str, Any] = {
    "/v1/certs": {
        "get": {
            "summary": "List server certificates with their deployment and expiry",
            "responses": {
                "200": _ok(
                    {
                        "type": "object",
                        "properties": {
                            "certs": {"type": "array", "items": _ref("ServerCert")},
                            "expiry_warn_days": {"type": "number"},
                        },
                    }
                ),
                **_errors(),
            },
        }
    },
    "/v1/certs/{name}": {
        "parameters": [_NAME],
        "get": {
            "summary": "One server certificate (never its private key)",
            "responses": {"200": _ok(_ref("ServerCert")), **_errors("404")},
        },
        "post": {
            "summary": "Upload a server certificate (leaf then chain) and its key as a new,"
            " staged version",
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["certificate", "key"],
                            "properties": {
                                "certificate": _PEM,
                                "key": {**_PEM, "description": "PEM, maybe encrypted"},
                                "passphrase": {"type": "string", "minLength": 1},
                                "certificate_filename": {"type": "string", "minLength": 1},
                                "key_filename": {"type": "string", "minLength": 1},
                            },
                        }
                    }
                },
            },
            "responses": {
                "201": _ok(_ref("ServerCertVersion"), "stored (staged until deployed)"),
                **_errors("400", "422"),
            },
        },
        "delete": {
            "summary": "Delete a server certificate with its versions, keys and deployments",
            "responses": {"204": {"description": "deleted"}, **_errors("404")},
        },
    },
    "/v1/certs/{name}/deploy": {
        "parameters": [_NAME],
        "post": {
            "summary": "Deploy a version with settings: pending, propagating, then active",
            "parameters": [_WAIT],
            "requestBody": {
                "required": False,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "properties": {
                                "settings": _SETTINGS_SCHEMA,
                                "version": {"type": "integer", "minimum": 1, "maximum": _MAX_INT},
                                "default": {"type": ["boolean", "null"]},
                            },
                        }
                    }
                },
            },
            "responses": {
                "201": _ok(_ref("Deployment")),
                **_errors("400", "404", "422", "504"),
            },
        },
    },
    "/v1/certs/{name}/rollback": {
        "parameters": [_NAME],
        "post": {
            "summary": "Re-activate the previous deployment (the first one: undeploy)",
            "parameters": [_WAIT],
            "responses": {
                "200": _ok(
                    {
                        "type": "object",
                        "properties": {
                            "name": {"type": "string"},
                            "deployment": {"anyOf": [_ref("Deployment"), {"type": "null"}]},
                        },
                    }
                ),
                **_errors("404", "409", "504"),
            },
        },
    },
}
_CERT_SCHEMAS: dict[str, Any] = {
    "ServerSettings": _SETTINGS_SCHEMA,
    "Deployment": {
        "type": "object",
        "properties": {
            "id": {"type": "integer"},
            "name": {"type": "string"},
            "version": {"type": "integer"},
            "settings": _ref("ServerSettings"),
            "created_at": {"type": "string"},
            "state": {"enum": ["pending", "propagating", "active"]},
        },
    },
    "ServerCertVersion": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "version": {"type": "integer"},
            "created_at": {"type": "string"},
            "sha256": {"type": "string"},
            "hostnames": {"type": "array", "items": {"type": "string"}},
            "subject": {"type": "string"},
            "issuer": {"type": "string"},
            "not_after": {"type": "string"},
            "key_type": {"type": "string"},
            "warnings": {"type": "array", "items": _ref("Finding")},
        },
    },
    "ServerCert": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "hostnames": {"type": "array", "items": {"type": "string"}},
            "not_after": {"type": ["string", "null"]},
            "days_left": {"type": "number"},
            "expiring": {"type": "boolean"},
            "latest_version": {"type": "integer"},
            "default": {"type": "boolean"},
            "deployment": {"anyOf": [_ref("Deployment"), {"type": "null"}]},
            "previous_deployment": {"type": ["integer", "null"]},
            "versions": {"type": "array", "items": _ref("ServerCertVersion")},
        },
    },
}
_DOCUMENT["paths"].update(_CERT_PATHS)
_DOCUMENT["components"]["schemas"].update(_CERT_SCHEMAS)
_DOCUMENT["components"]["schemas"]["Status"]["properties"]["server_certs"] = {
    "type": "array",
    "items": {"type": "object"},
}


# -- live views, test publishing, metrics and the console (edge.http.console_api) --

_SSE = {"description": "a Server-Sent Events stream", "content": {"text/event-stream": {}}}
_FILTERS = [
    {"name": n, "in": "query", "schema": {"type": "string"}}
    for n in ("kind", "outcome", "identity")
]
_CONSOLE_PATHS: dict[str, Any] = {
    "/v1/whoami": {
        "get": {
            "summary": "How this request was authenticated: the console's login check",
            "description": "With certificate login configured ([admin] client_ca), a "
            "verified admin client certificate alone authenticates; otherwise the token.",
            "responses": {
                "200": _ok(
                    {
                        "type": "object",
                        "properties": {
                            "admin": {
                                "type": "string",
                                "description": "'token', or 'certificate <subject>'",
                            }
                        },
                    }
                ),
                **_errors("403"),
            },
        }
    },
    "/v1/events/stream": {
        "get": {
            "summary": "New events as Server-Sent Events (data: one Event as JSON; id: its id)",
            "description": "Resumes after `since` or the Last-Event-ID header (`since=now`: "
            "live events only); `kind` may list several kinds or prefixes, comma-separated "
            "(`trust.,connection.closed`); a comment line every 15 s keeps idle streams open.",
            "parameters": [
                {
                    "name": "since",
                    "in": "query",
                    "schema": {
                        "oneOf": [
                            {"type": "integer", "minimum": 0, "maximum": _MAX_INT},
                            {"const": "now"},
                        ]
                    },
                },
                *_FILTERS,
            ],
            "responses": {"200": _SSE, **_errors("400")},
        }
    },
    "/v1/devices": {
        "get": {
            "summary": "Connected devices (after a TLS handshake), oldest connection first",
            "responses": {
                "200": _ok(
                    {
                        "type": "object",
                        "properties": {"devices": {"type": "array", "items": _ref("Device")}},
                    }
                ),
                **_errors("503"),
            },
        }
    },
    "/v1/devices/{connection_id}/disconnect": {
        "post": {
            "summary": "Close a device's connection (MQTT 5: DISCONNECT 0x98, administrative action)",
            "parameters": [
                {
                    "name": "connection_id",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "integer"},
                }
            ],
            "responses": {
                "200": _ok(
                    {
                        "type": "object",
                        "properties": {"ok": {"type": "boolean"}, "device": _ref("Device")},
                    }
                ),
                **_errors("400", "404", "503"),
            },
        }
    },
    "/v1/publish": {
        "post": {
            "summary": "Publish a test message through the edge's router (as the edge: no policy)",
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["topic"],
                            "properties": {
                                "topic": {
                                    "type": "string",
                                    "description": "a topic name: no wildcards, no NUL",
                                    "pattern": "^[^+#\\u0000]+$",
                                    "maxLength": 65535,
                                },
                                "payload": {"type": "string", "description": "sent as UTF-8"},
                                "qos": {"type": "integer", "enum": [0, 1, 2]},
                                "retain": {"type": "boolean"},
                            },
                        },
                        "example": {"topic": "demo/hello", "payload": "hi", "qos": 0},
                    }
                },
            },
            "responses": {
                "200": _ok(
                    {
                        "type": "object",
                        "properties": {
                            "ok": {"type": "boolean"},
                            "delivered": {"type": "integer"},
                            "reason": {"type": "string"},
                        },
                    }
                ),
                **_errors("400", "503"),
            },
        }
    },
    "/v1/topics/stream": {
        "get": {
            "summary": "Messages matching a topic filter, as Server-Sent Events",
            "parameters": [
                {"name": "filter", "in": "query", "required": True, "schema": {"type": "string"}}
            ],
            "responses": {"200": _SSE, **_errors("400", "503")},
        }
    },
    "/metrics": {
        "get": {
            "summary": "Prometheus metrics (text format, or OpenMetrics when Accept asks for it)",
            "description": "Needs the token unless `[metrics] auth = false`.",
            "responses": {
                "200": {
                    "description": "the metrics",
                    "content": {"text/plain": {}, "application/openmetrics-text": {}},
                },
                **_errors(),
            },
        }
    },
    "/ui": {
        "get": {
            "summary": "The web console (redirects to /ui/)",
            "security": [],
            "responses": {"302": {"description": "to /ui/"}},
        }
    },
    "/ui/": {
        "get": {
            "summary": "The web console's page (static; its calls send the token)",
            "security": [],
            "responses": {"200": {"description": "HTML", "content": {"text/html": {}}}},
        }
    },
    "/ui/{file}": {
        "get": {
            "summary": "The web console's static files",
            "security": [],
            "parameters": [
                {"name": "file", "in": "path", "required": True, "schema": {"type": "string"}}
            ],
            "responses": {"200": {"description": "the file"}, "404": _PROBLEM},
        }
    },
}
_DOCUMENT["paths"].update(_CONSOLE_PATHS)
_DOCUMENT["components"]["schemas"]["Device"] = {
    "type": "object",
    "properties": {
        "connection_id": {"type": "integer"},
        "identity": {"type": "string"},
        "set": {"type": "string"},
        "version": {"type": "integer"},
        "protocol": {
            "type": "string",
            "enum": ["mqtt", "http", "ws", "mqtt-ws", "tls", "handshake"],
            "description": "ws: the /ws JSON protocol; mqtt-ws: MQTT over WebSocket (/mqtt)",
        },
        "mqtt_protocol_level": {"type": ["integer", "null"]},
        "client_id": {"type": ["string", "null"]},
        "peer": {"type": "string"},
        "sni": {"type": ["string", "null"]},
        "tls_version": {"type": "string"},
        "connected_since": {"type": "string", "format": "date-time"},
        "subscriptions": {"type": "object", "additionalProperties": {"type": "integer"}},
        "messages_in": {
            "type": "integer",
            "description": "messages the device published on this connection (allowed or not)",
        },
        "messages_out": {
            "type": "integer",
            "description": "messages handed to the device (MQTT PUBLISH packets sent, re-sends "
            "included; /ws and SSE messages queued)",
        },
        "bytes_in": {"type": "integer", "description": "application bytes received (after TLS)"},
        "bytes_out": {"type": "integer", "description": "application bytes sent (before TLS)"},
        "certificate": {"type": ["object", "null"]},
    },
}


def openapi_document() -> dict[str, Any]:
    """Return the OpenAPI 3.1 document (a fresh copy the caller may change)."""
    return copy.deepcopy(_DOCUMENT)
