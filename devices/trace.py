"""Rendering a device's trace: aligned times and ✓/✗ for people, plain data for machines.

:func:`render` turns a :class:`~devices.device.DeviceResult` into the lines
``edgesim device connect`` prints; :func:`to_json` into the document ``--json``
prints. :func:`hint` says what to do about a refusal reason, in the words of the
person holding the device.
"""

from __future__ import annotations

from typing import Any

from devices.device import DeviceResult, Step

__all__ = ["HINTS", "describe", "describe_properties", "hint", "render", "to_json"]

#: What a firmware developer should check for each refusal reason.
HINTS: dict[str, str] = {
    "unknown_ca": (
        "the edge does not trust the CA that issued the device certificate: upload its "
        "root (or chain) to the certificate set bound to this hostname, and wait for it "
        "to propagate"
    ),
    "certificate_required": (
        "the device sent no client certificate: give it one (--cert/--key); with TLS 1.3 "
        "this alert arrives only after the device's handshake finished"
    ),
    "handshake_failure": (
        "the edge refused the handshake; with TLS 1.2 this is also what a device without "
        "a certificate gets"
    ),
    "certificate_expired": "the device certificate is outside its validity period: reissue it",
    "certificate_revoked": "the device certificate is on the CA's revocation list",
    "bad_certificate": (
        "the edge could not use the device certificate (bad signature, wrong key "
        "usage, or an incomplete chain: try --chain with the intermediates)"
    ),
    "unsupported_certificate": (
        "the device certificate's purpose does not allow client authentication (check "
        "extendedKeyUsage clientAuth)"
    ),
    "certificate_unknown": "the edge rejected the device certificate for an unspecified reason",
    "protocol_version": "the device and the edge share no TLS version",
    "access_denied": "the certificate is valid but this device may not connect here",
    "decrypt_error": "the device's key does not match its certificate",
    "unrecognized_name": "the edge serves no hostname matching the SNI sent (--sni)",
    "no_application_protocol": "the edge does not speak the ALPN protocol the device offered",
    "server-cert-untrusted": (
        "the device does not trust the edge's server certificate: pass the CA that "
        "issued it with --ca"
    ),
    "server-cert-hostname-mismatch": (
        "the server certificate is not valid for the name the device used: connect with "
        "a name in its subjectAltName (--sni) or reissue the server certificate"
    ),
    "server-cert-expired": "the edge's server certificate has expired",
    "server-cert-not-yet-valid": "the edge's server certificate is not valid yet (clock skew?)",
    "closed-by-edge": (
        "the edge closed the connection without an alert: look at the edge's event log "
        "for the reason"
    ),
    "connection-refused": "nothing listens at that host and port",
    "timeout": "the edge did not answer in time (--timeout)",
    "connack-5": "the edge's policy does not authorize this client",
    "connack-2": "the edge rejected the client id",
    "suback-0x80": "the edge's policy does not allow this subscription",
    "connack-0x84": ("the server does not speak this MQTT version: try --mqtt-version 3.1.1"),
    "connack-0x85": "the server rejected the client id (--client-id); see the Reason String",
    "connack-0x87": (
        "the server's policy does not authorize this client; the Reason String (if any) "
        "says which rule"
    ),
    "suback-0x87": "the server's policy does not allow this subscription",
    "puback-0x87": "the server's policy does not allow publishing to this topic",
    "pubrec-0x87": "the server's policy does not allow publishing to this topic",
    "packet-too-large": (
        "the message is bigger than the server's Maximum Packet Size (see its CONNACK)"
    ),
    "http-403": "the edge's policy denied the request",
    "ws-error": "the edge refused the WebSocket operation (the reason is in the trace)",
}


def hint(reason: str) -> str:
    """The advice for ``reason`` (empty when there is none)."""
    if reason in HINTS:
        return HINTS[reason]
    if reason.startswith("connack-"):
        return "the edge refused the MQTT session"
    if reason.startswith(("disconnect-", "dropped:disconnect-")):
        return "the server ended the MQTT 5 session with DISCONNECT; its reason code says why"
    if reason.startswith(("http-", "ws-rejected-")):
        return "the edge refused the HTTP request"
    return ""


_LABELS = {
    "tcp_connect": "TCP connect",
    "client_hello": "ClientHello sent",
    "server_hello": "ServerHello",
    "server_certificate": "server certificate",
    "certificate_request": "certificate requested",
    "client_certificate": "client certificate",
    "tls_handshake": "TLS handshake (device side)",
    "edge_after_handshake": "edge after handshake",
    "mqtt_connack": "MQTT CONNACK",
    "http_status": "HTTP response",
    "ws_accept": "WebSocket accept",
    "edge_verdict": "edge verdict",
    "subscribe": "subscribe",
    "publish": "publish",
    "message": "message received",
    "mqtt_disconnect": "MQTT DISCONNECT (server)",
    "timeout": "timeout",
}


def describe(step: Step) -> str:
    """One line of text about a step's detail."""
    d = step.detail
    name = step.name
    if name == "tcp_connect":
        return str(d.get("peer", ""))
    if name == "client_hello":
        alpn = ",".join(d.get("alpn") or []) or "-"
        return f"SNI={d.get('sni') or '-'} ALPN={alpn} versions={','.join(d.get('versions') or [])}"
    if name == "server_hello":
        retry = " (HelloRetryRequest)" if d.get("hello_retry") else ""
        return f"{d.get('version')} {d.get('cipher_suite')}{retry}"
    if name == "server_certificate":
        who = d.get("subject", "(not seen: encrypted in TLS 1.3; --trace decrypts it)")
        san = ",".join(d.get("san") or [])
        facts = f"{who}" + (f" SAN={san}" if san else "")
        if d.get("not_after"):
            facts += f" until {d['not_after']}"
        return f"{facts}: {d.get('verdict', '')}"
    if name == "certificate_request":
        requested = d.get("requested")
        if requested is None:
            return str(d.get("how", "unknown"))
        text = "yes" if requested else "no"
        extra = f", {d['ca_names']} acceptable CA name(s)" if d.get("ca_names") else ""
        return f"{text} ({d.get('how')}{extra})"
    if name == "client_certificate":
        count = d.get("certificates")
        subject = d.get("subject", "")
        if count is None:
            if not subject:
                return "no certificate configured"
            how = d.get("how", "encrypted")
            if how == "encrypted":
                return f"{subject} (sent if requested; encrypted in TLS 1.3)"
            return f"{subject} (sent; {how})"
        if count == 0:
            return "none sent (empty Certificate message)"
        return f"{subject} ({count} certificate(s), {d.get('how')})"
    if name == "tls_handshake":
        alpn = d.get("alpn") or "-"
        return f"{d.get('version')} {d.get('cipher')} ALPN={alpn}"
    if name == "edge_after_handshake":
        return str(d.get("note", ""))
    if name == "edge_verdict":
        if "alert" in d:
            return f"refused: TLS alert {d['alert']}"
        return str(d.get("verdict", ""))
    if name in (
        "mqtt_connack",
        "http_status",
        "ws_accept",
        "subscribe",
        "publish",
        "mqtt_disconnect",
    ):
        target = d.get("filter") or d.get("topic") or ""
        return f"{target} -> {d.get('summary', '')}" if target else str(d.get("summary", ""))
    if name == "message":
        return f"{d.get('topic')}: {d.get('payload')!s}"
    return ", ".join(f"{k}={v}" for k, v in d.items())


def describe_properties(step: Step) -> str:
    """The MQTT 5 properties of a step, on one line (empty when it has none).

    The Reason String is already in the step's summary, so it is left out here.
    """
    props = step.detail.get("properties")
    if not props:
        return ""
    parts: list[str] = []
    for key, value in props.items():
        if key == "reason_string":
            continue
        if key == "user_properties":
            parts.extend(f"user property {k}={v}" for k, v in value)
        else:
            parts.append(f"{key.replace('_', ' ')}={value}")
    return ", ".join(parts)


def render(result: DeviceResult) -> str:
    """Human-readable trace: one aligned line per step, then the outcome and a hint."""
    lines = [f"device {result.id} -> {result.protocol or '?'}"]
    for step in result.steps:
        mark = "✓" if step.ok else "✗"
        label = _LABELS.get(step.name, step.name)
        lines.append(
            f"  {step.t_start * 1000:9.3f} ms {step.duration * 1000:+9.3f} ms  {mark} "
            f"{label:<28} {describe(step)}"
        )
        props = describe_properties(step)
        if props:
            lines.append(f"{'':<56}properties: {props}")
    if result.outcome == "connected":
        summary = "connected"
        if result.messages_sent or result.messages_received:
            summary += f" (sent {result.messages_sent}, received {result.messages_received})"
    else:
        summary = f"{result.outcome}: {result.reason}"
        if result.message:
            summary += f" ({result.message})"
    lines.append(f"result: {summary}")
    advice = hint(result.reason) if result.outcome != "connected" else ""
    if advice:
        lines.append(f"hint: {advice}")
    return "\n".join(lines)


def to_json(result: DeviceResult) -> dict[str, Any]:
    """The trace as data (what ``--json`` prints), with the hint."""
    data = result.to_dict()
    data["hint"] = hint(result.reason) if result.outcome != "connected" else ""
    return data
