"""Why a TLS handshake failed: the alert sent, OpenSSL's codes, and words a person can act on.

The handshake driver (:mod:`edge.tls.session`) turns an ``ssl.SSLError`` into a
:class:`HandshakeFailure` (facts only: alert, verify code, library reason). The
edge then calls :func:`explain` with what it knows about the connection (the
certificate set and version used, the certificate presented) to get a
:class:`HandshakeVerdict` with a plain-language reason and a hint.

The alert is the one OpenSSL sends. When it travels in cleartext (TLS 1.2, and
every alert before the ServerHello) the driver reads it from the outgoing bytes;
under TLS 1.3 encryption it is derived from the verify code with the same table
OpenSSL 3.0 uses (``ssl_verify_alarm_type`` in ``ssl/statem/statem_lib.c``).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, replace
from datetime import datetime

from edge.core.session import PeerCertificate
from edge.tls.wire import ALERT_CODES, ALERT_NAMES, CT_ALERT, record_header

__all__ = [
    "ALERT_CODES",
    "ALERT_NAMES",
    "HandshakeFailure",
    "HandshakeVerdict",
    "alert_record",
    "explain",
    "failure_from_ssl_error",
]


# OpenSSL X509_V_ERR_* code -> the alert OpenSSL 3.0 sends for it.
_VERIFY_ALERTS: dict[int, str] = {
    1: "internal_error",
    2: "unknown_ca",
    3: "unknown_ca",
    4: "bad_certificate",
    5: "bad_certificate",
    6: "bad_certificate",
    7: "decrypt_error",
    8: "decrypt_error",
    9: "bad_certificate",
    10: "certificate_expired",
    11: "bad_certificate",
    12: "certificate_expired",
    13: "bad_certificate",
    14: "bad_certificate",
    15: "bad_certificate",
    16: "bad_certificate",
    17: "internal_error",
    18: "unknown_ca",
    19: "unknown_ca",
    20: "unknown_ca",
    21: "unknown_ca",
    22: "unknown_ca",
    23: "certificate_revoked",
    24: "unknown_ca",
    25: "unknown_ca",
    26: "unsupported_certificate",
    27: "bad_certificate",
    28: "bad_certificate",
    33: "unknown_ca",
    62: "bad_certificate",
    63: "bad_certificate",
    64: "bad_certificate",
    66: "bad_certificate",
    67: "bad_certificate",
    68: "bad_certificate",
}

# OpenSSL SSL_R_* reason -> alert the server sends, for failures other than verification.
_REASON_ALERTS: dict[str, str] = {
    "UNSUPPORTED_PROTOCOL": "protocol_version",
    "WRONG_VERSION_NUMBER": "protocol_version",
    "VERSION_TOO_LOW": "protocol_version",
    "NO_PROTOCOLS_AVAILABLE": "protocol_version",
    "NO_SHARED_CIPHER": "handshake_failure",
    "NO_SUITABLE_SIGNATURE_ALGORITHM": "handshake_failure",
    "NO_SHARED_GROUPS": "handshake_failure",
    "NO_APPLICATION_PROTOCOL": "no_application_protocol",
    "LENGTH_MISMATCH": "decode_error",
    "BAD_PACKET_LENGTH": "decode_error",
    "RECORD_LENGTH_MISMATCH": "decode_error",
    "BAD_LENGTH": "decode_error",
    "LENGTH_TOO_SHORT": "decode_error",
    "BAD_EXTENSION": "decode_error",
    "PARSE_TLSEXT": "decode_error",
    "UNEXPECTED_MESSAGE": "unexpected_message",
    "UNEXPECTED_RECORD": "unexpected_message",
    "PACKET_LENGTH_TOO_LONG": "record_overflow",
    "ENCRYPTED_LENGTH_TOO_LONG": "record_overflow",
    "DECRYPTION_FAILED_OR_BAD_RECORD_MAC": "bad_record_mac",
    "BAD_SIGNATURE": "decrypt_error",
    "INAPPROPRIATE_FALLBACK": "inappropriate_fallback",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class HandshakeFailure:
    """The facts of a failed handshake, as the TLS library reported them."""

    #: Alert name sent to the client ("" when none was sent, e.g. the client hung up).
    alert: str
    #: True when the alert came FROM the client (it refused the edge's certificate).
    alert_from_client: bool = False
    #: OpenSSL ``X509_V_ERR_*`` code when certificate verification failed.
    verify_code: int | None = None
    verify_message: str = ""
    #: OpenSSL's reason string, e.g. ``PEER_DID_NOT_RETURN_A_CERTIFICATE``.
    library_reason: str = ""
    #: The protocol version the handshake had negotiated when it failed, if any.
    tls_version: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class HandshakeVerdict:
    """A refusal explained: the facts plus a reason and a hint in plain language."""

    alert: str
    alert_from_client: bool
    verify_code: int | None
    verify_message: str
    library_reason: str
    tls_version: str | None
    reason: str
    hint: str


def alert_record(alert: str) -> bytes:
    """Return a cleartext fatal alert record (for refusals decided before OpenSSL runs)."""
    # Record version 0x0303 is what TLS 1.2 and 1.3 both put on alerts.
    return bytes([CT_ALERT, 3, 3, 0, 2, 2, ALERT_CODES[alert]])


def cleartext_alert(outgoing: bytes) -> str | None:
    """Return the alert name of the last cleartext alert record in ``outgoing``, if any."""
    pos = 0
    found: str | None = None
    while (header := record_header(outgoing, pos)) is not None:
        ctype, _, length = header
        if ctype == CT_ALERT and length == 2 and pos + 7 <= len(outgoing):
            found = ALERT_NAMES.get(outgoing[pos + 6], f"alert {outgoing[pos + 6]}")
        pos += 5 + length
    return found


def failure_from_ssl_error(
    exc: ssl.SSLError, *, tls_version: str | None, outgoing: bytes = b""
) -> HandshakeFailure:
    """Translate an ``ssl.SSLError`` from a server handshake into a :class:`HandshakeFailure`.

    ``outgoing`` is what OpenSSL queued to send after the failure; a cleartext alert
    found there wins over the tables.
    """
    reason = str(getattr(exc, "reason", None) or "")
    seen = cleartext_alert(outgoing)
    if isinstance(exc, ssl.SSLCertVerificationError):
        code = int(exc.verify_code) if exc.verify_code is not None else None
        alert = seen or _VERIFY_ALERTS.get(code or 0, "certificate_unknown")
        return HandshakeFailure(
            alert=alert,
            verify_code=code,
            verify_message=str(exc.verify_message or ""),
            library_reason=reason,
            tls_version=tls_version,
        )
    if isinstance(exc, ssl.SSLEOFError) or reason == "UNEXPECTED_EOF_WHILE_READING":
        return HandshakeFailure(alert="", library_reason=reason or "EOF", tls_version=tls_version)
    for prefix in ("SSLV3_ALERT_", "TLSV1_ALERT_", "TLSV13_ALERT_"):
        if reason.startswith(prefix):
            name = reason[len(prefix) :].lower()
            name = {"no_application_protocol": "no_application_protocol"}.get(name, name)
            return HandshakeFailure(
                alert=name, alert_from_client=True, library_reason=reason, tls_version=tls_version
            )
    if reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE":
        alert = seen or (
            "certificate_required" if tls_version == "TLSv1.3" else "handshake_failure"
        )
    else:
        alert = seen or _REASON_ALERTS.get(reason, "handshake_failure")
    return HandshakeFailure(alert=alert, library_reason=reason, tls_version=tls_version)


def _fmt_date(value: str) -> str:
    try:
        return datetime.fromisoformat(value).strftime("%Y-%m-%d %H:%M:%S UTC")
    except ValueError:
        return value


def explain(
    failure: HandshakeFailure,
    *,
    set_name: str | None,
    set_version: int | None,
    certificate: PeerCertificate | None = None,
    ca_subjects: tuple[str, ...] = (),
) -> HandshakeVerdict:
    """Attach a plain-language reason and an actionable hint to a handshake failure.

    ``ca_subjects`` are the subject DNs of the CAs in the set, used to say whether
    the presented certificate's issuer is one of them.
    """
    where = f"set `{set_name}` v{set_version}" if set_name else "the active certificate set"
    code = failure.verify_code
    reason: str
    hint: str
    if failure.alert_from_client:
        reason = f"the client refused the edge's certificate (alert {failure.alert})"
        hint = "the device must trust the CA that issued the edge's server certificate"
    elif code is not None:
        reason, hint = _explain_verify(failure, where, certificate, ca_subjects)
    elif failure.library_reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE":
        reason = "no client certificate"
        hint = "the device must be configured with its certificate and key"
    elif failure.alert == "protocol_version":
        reason = "no TLS version in common (the edge accepts TLS 1.2 and newer by default)"
        hint = "enable TLS 1.2 or 1.3 on the device"
    elif failure.library_reason == "NO_SHARED_CIPHER":
        reason = "no cipher suite in common"
        hint = "enable a modern AEAD suite (AES-GCM or ChaCha20-Poly1305) on the device"
    elif failure.alert == "no_application_protocol":
        reason = "no application protocol (ALPN) in common"
        hint = "offer `mqtt`, `x-amzn-mqtt-ca` or `http/1.1` in ALPN, or none"
    elif not failure.alert:
        reason = "the client closed the connection during the handshake"
        hint = "check the device's own log: it may have refused the edge's certificate"
    elif failure.alert == "decode_error":
        reason = f"the client sent a malformed handshake ({failure.library_reason})"
        hint = "this is a bug in the device's TLS stack"
    else:
        reason = f"handshake failed: {failure.library_reason or failure.alert}"
        hint = "compare the device's TLS settings with the edge's (versions, suites, ALPN)"
    return HandshakeVerdict(
        alert=failure.alert,
        alert_from_client=failure.alert_from_client,
        verify_code=failure.verify_code,
        verify_message=failure.verify_message,
        library_reason=failure.library_reason,
        tls_version=failure.tls_version,
        reason=reason,
        hint=hint,
    )


def _explain_verify(
    failure: HandshakeFailure,
    where: str,
    cert: PeerCertificate | None,
    ca_subjects: tuple[str, ...],
) -> tuple[str, str]:
    code = failure.verify_code
    message = failure.verify_message or "verification failed"
    if code == 10:
        when = f" on {_fmt_date(cert.not_after)}" if cert else ""
        return f"client certificate expired{when}", "issue the device a new certificate"
    if code == 9:
        when = f" until {_fmt_date(cert.not_before)}" if cert else ""
        return (
            f"client certificate not yet valid{when}",
            "check the device's issuing time and the edge's clock",
        )
    if code == 23:
        serial = f" (serial {cert.serial})" if cert else ""
        return (
            f"client certificate revoked{serial} by a CRL in {where}",
            "issue the device a new certificate",
        )
    if code in (3, 33):
        return (
            f"no CRL in {where} for the certificate's issuer ({message})",
            "upload the CRL of every CA in the set, or none",
        )
    if code in (2, 18, 19, 20, 21, 24):
        if cert is not None:
            if cert.issuer in ca_subjects:
                reason = f"issued by `{cert.issuer}`, which is in {where}, but the chain does not verify ({message})"
                return reason, "upload the full chain up to the root"
            return (
                f"issued by `{cert.issuer}`, which is not in {where}",
                "upload the CA that issued the device certificate; for an intermediate, upload the chain, not only the root",
            )
        return (
            f"client certificate not trusted by {where} ({message})",
            "upload the CA chain that issued the device certificate (the chain, not only the root)",
        )
    if code == 26:
        return (
            "client certificate not valid for client authentication (extended key usage)",
            "issue it with extendedKeyUsage = clientAuth",
        )
    if code == 7:
        return (
            "client certificate signature does not verify",
            "the certificate is corrupt or forged",
        )
    return f"client certificate refused: {message}", "inspect it with `edgesim pki verify`"


def with_reason(verdict: HandshakeVerdict, reason: str, hint: str) -> HandshakeVerdict:
    """Return ``verdict`` with its reason and hint replaced."""
    return replace(verdict, reason=reason, hint=hint)
