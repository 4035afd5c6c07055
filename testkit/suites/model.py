"""The case model: what a suite is, what one case asks of the device, what a run found.

A *suite* is an ordered list of :class:`Case`. Every case says three things:

- what the edge presents (:class:`ServerProfile`: the certificate profile, TLS
  versions, cipher, ALPN, record splitting);
- what the edge does once the device talks (``behaviour``: a well-behaved broker or
  HTTP server, or one that misbehaves on purpose, e.g. ``connack_refused``);
- what the device must do (``expect``), and whether a failure fails the run (``must``).

Expectations (:data:`EXPECTS`):

=================  ====================================================================
``refuse``         abort the handshake, or close before sending one application byte
``accept``         complete the handshake and send the first protocol packet
``inform``         nothing is required; the verdict is an inference (clock, revocation)
``reconnect``      close a connection that got no CONNACK, and connect again
``backoff``        reconnect with delays that follow the case's :class:`BackoffRule`
``redeliver``      re-send an unacknowledged QoS 1 PUBLISH with DUP set and the same id
``no_storm``       after SUBACK 0x80, never re-subscribe in a tight loop
``keepalive``      send PINGREQ (or another packet) within its keep-alive interval
``session``        on session-present=1, keep working without re-subscribing
``retry_after``    after HTTP 503 with Retry-After, wait at least that long
``truncated``      report a response cut short (non-zero exit) or retry it
``max_packet``     MQTT 5: send no packet over the CONNACK's Maximum Packet Size
``receive_maximum`` MQTT 5: keep at most the CONNACK's Receive Maximum QoS 1/2 PUBLISHes
                   unacknowledged
``topic_alias``    MQTT 5: use no Topic Alias above the CONNACK's Topic Alias Maximum
``calm``           after a server DISCONNECT, no reconnect sooner than ``min_delay_s``
                   and at most ``max_reconnects`` within ``observe_s``
``assigned_id``    MQTT 5: reconnect with the Assigned Client Identifier it was given
=================  ====================================================================

MQTT 5 cases have ``protocol = "mqtt5"``: the edge answers at the level the device's
CONNECT asked for, and a device that speaks 3.1.1 gets ``skip`` on them. The MQTT 3.1.1
behaviours answer an MQTT 5 device in MQTT 5 (a refused CONNACK says 0x87).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "BEHAVIOURS",
    "CERT_PROFILES",
    "EXPECTS",
    "PROTOCOLS",
    "RUNS_CASES",
    "BackoffRule",
    "Case",
    "CaseResult",
    "ServerProfile",
    "Status",
    "Suite",
    "SuiteError",
]

#: Server certificate profiles (see :mod:`testkit.suites.pki`).
CERT_PROFILES: tuple[str, ...] = (
    "good",
    "expired",
    "not_yet_valid",
    "wrong_host",
    "untrusted_root",
    "self_signed",
    "missing_intermediate",
    "client_auth_eku",
    "sha1",
    "rsa1024",
    "revoked",
    "rsa2048",
    "rsa4096",
    "ec256",
    "ec384",
    "chain4_large",
    "sans1000",
    "clock_recent",
    "clock_1970",
)

EXPECTS: tuple[str, ...] = (
    "refuse",
    "accept",
    "inform",
    "reconnect",
    "backoff",
    "redeliver",
    "no_storm",
    "keepalive",
    "session",
    "retry_after",
    "truncated",
    "max_packet",
    "receive_maximum",
    "topic_alias",
    "calm",
    "assigned_id",
)

#: What the edge does after the handshake. ``serve`` is a well-behaved MQTT broker
#: or HTTP server (whichever the device speaks); the rest misbehave on purpose.
BEHAVIOURS: dict[str, str] = {
    "serve": "any",
    "connack_withheld": "mqtt",
    "connack_refused": "mqtt",
    "close_after_connack": "mqtt",
    "puback_withheld": "mqtt",
    "suback_failure": "mqtt",
    "keepalive": "mqtt",
    "session_present": "mqtt",
    "http_503": "https",
    "http_close_mid_response": "https",
    # MQTT 5: the CONNACK advertises a limit, or the edge ends the session with a reason.
    "max_packet_size": "mqtt5",
    "receive_maximum": "mqtt5",
    "topic_alias_maximum": "mqtt5",
    "server_keep_alive": "mqtt5",
    "assigned_client_id": "mqtt5",
    "server_disconnect": "mqtt5",
}

#: Protocols a case may be restricted to (``any`` runs for every device).
PROTOCOLS: tuple[str, ...] = ("any", "mqtt", "mqtt5", "https")

#: What a device that speaks a protocol (``--protocol``) is tested with: an MQTT 5
#: device also takes the MQTT 3.1.1 behaviour cases (answered in MQTT 5).
RUNS_CASES: dict[str, tuple[str, ...]] = {
    "mqtt": ("any", "mqtt"),
    "mqtt5": ("any", "mqtt", "mqtt5"),
    "https": ("any", "https"),
}


class SuiteError(Exception):
    """Root of the suites' errors: a suite file that cannot be used, a profile that
    cannot be minted. The message names the file, case and field (or the profile)."""


class Status:
    """Verdict values. ``FAIL`` on a ``must`` case makes the run exit 1."""

    PASS = "pass"
    FAIL = "fail"
    INFO = "info"
    SKIP = "skip"
    ERROR = "error"


@dataclass(frozen=True, kw_only=True)
class BackoffRule:
    """What a reconnect schedule must look like (scored by :mod:`testkit.suites.backoff`)."""

    #: Connections to observe: ``attempts - 1`` delays are scored (>= 6 gives 5 delays).
    attempts: int = 6
    #: Every delay must be at least this long (AWS Device Advisor's rule is 1 s).
    min_delay_s: float = 1.0
    #: Require delays to grow exponentially (geometric mean of ratios >= ``min_growth``).
    exponential: bool = True
    min_growth: float = 1.5
    #: Require jitter: the ratios between successive delays must not all be equal.
    jitter: bool = True


@dataclass(frozen=True, kw_only=True)
class ServerProfile:
    """What the edge presents in the TLS handshake for one case."""

    cert: str = "good"
    #: ``("1.2", "1.3")`` by default; one entry pins the version.
    tls_versions: tuple[str, ...] = ("1.2", "1.3")
    #: An OpenSSL TLS 1.2 cipher name (TLS 1.2 is then forced), or a TLS 1.3 suite
    #: name, which the device must offer in its ClientHello (Python's ``ssl`` cannot
    #: restrict the TLS 1.3 suites a server picks from).
    cipher: str | None = None
    #: ALPN protocols the edge requires the device to offer (one of them).
    alpn: tuple[str, ...] = ()
    #: Re-cut the cleartext handshake into records of this many bytes (16 to 16384;
    #: forces TLS 1.2, where the Certificate message is cleartext). 16384 sends
    #: maximum-size records even to a device that asked for a smaller Max Fragment
    #: Length.
    split_records: int | None = None


@dataclass(frozen=True, kw_only=True)
class Case:
    """One test case of a suite."""

    id: str
    title: str
    expect: str
    must: bool = True
    server: ServerProfile = field(default_factory=ServerProfile)
    behaviour: str = "serve"
    protocol: str = "any"
    timeout_s: float = 20.0
    #: Why the case exists / what a failure means, shown in reports.
    why: str = ""
    #: Behaviour parameters (e.g. ``retry_after_s``, ``withhold_s``, ``topic``).
    params: dict[str, Any] = field(default_factory=dict)
    backoff: BackoffRule | None = None


@dataclass(frozen=True, kw_only=True)
class Suite:
    """An ordered list of cases, loaded from a TOML file."""

    name: str
    description: str
    cases: tuple[Case, ...]
    source: str = ""


@dataclass(kw_only=True)
class CaseResult:
    """The verdict on one case, with its evidence."""

    case: Case
    status: str
    summary: str
    duration_s: float
    #: Facts the verdict rests on: alerts, packets with times, bytes, intervals.
    evidence: dict[str, Any] = field(default_factory=dict)

    @property
    def failed_must(self) -> bool:
        """True when this result fails the run (a ``must`` case that failed or errored)."""
        return self.case.must and self.status in (Status.FAIL, Status.ERROR)

    def to_json(self) -> dict[str, Any]:
        """The result as a JSON-ready dict."""
        return {
            "id": self.case.id,
            "title": self.case.title,
            "expect": self.case.expect,
            "must": self.case.must,
            "behaviour": self.case.behaviour,
            "server": {
                "cert": self.case.server.cert,
                "tls_versions": list(self.case.server.tls_versions),
                "cipher": self.case.server.cipher,
                "alpn": list(self.case.server.alpn),
                "split_records": self.case.server.split_records,
            },
            "status": self.status,
            "summary": self.summary,
            "duration_s": round(self.duration_s, 3),
            "why": self.case.why,
            "evidence": self.evidence,
        }
