"""Verdicts: from a case's connection records (and the device command's exit) to a result.

Each expectation has a *done* predicate (the engine stops the case early once the
answer is known) and a *judge* that returns ``(status, summary, evidence)``. The
evidence always carries the connections (alert, bytes each way, packets with times);
the judges add what they measured (delays, gaps, retries).

Backoff scoring (:func:`score_backoff`), for delays d1..dn between a connection's
close and the next connection:

- *minimum*: every delay >= ``min_delay_s``;
- *exponential*: the geometric mean of d(i+1)/d(i) is >= ``min_growth``;
- *jitter*: at least a third of the ratios (one at least) stray from the schedule's
  usual ratio (their median), and from 1 (a capped delay), by more than 5 % plus
  what a 30 ms timer error on either delay explains. A plain doubling schedule, or a
  constant one, has no such ratio.
"""

from __future__ import annotations

import itertools
import math
import statistics
from dataclasses import dataclass
from typing import Any

from edge.mqtt.codec import DISCONNECT
from edge.mqtt.reasons import reason_name
from testkit.suites.model import BackoffRule, Case, Status
from testkit.suites.server import ConnRecord

__all__ = ["DeviceExit", "done", "judge", "score_backoff"]

_JITTER_SPREAD = 0.05
_TIMER_NOISE_S = 0.03


@dataclass(frozen=True)
class DeviceExit:
    """How the device command ended (``None`` fields for a bench device)."""

    returncode: int | None
    output_tail: str = ""


def _packets(
    conns: list[ConnRecord], name: str, direction: str = "in"
) -> list[tuple[ConnRecord, dict[str, Any]]]:
    return [
        (c, p) for c in conns for p in c.packets if p["packet"] == name and p["dir"] == direction
    ]


def done(case: Case, conns: list[ConnRecord], now: float, state: dict[str, Any]) -> bool:
    """True once the case's answer is known (the engine may stop the device)."""
    expect = case.expect
    if not conns:
        return False
    first = conns[0]
    if expect in ("refuse", "accept", "inform"):
        return first.closed is not None or first.first_app is not None
    if expect == "reconnect":
        return len(conns) >= 2
    if expect == "backoff":
        rule = case.backoff or BackoffRule()
        return len(conns) >= rule.attempts
    if expect == "redeliver":
        return any(p.get("dup") and c.index > 1 for c, p in _packets(conns, "PUBLISH"))
    if expect == "keepalive":
        if _packets(conns, "PINGREQ"):
            return True
        ka = state.get("keepalive")
        return ka is not None and now > first.opened + 1.5 * ka + 2
    if expect == "session":
        acks = [
            p for _, p in _packets(conns, "PUBACK") if p.get("packet_id") == state.get("stored_id")
        ]
        return bool(acks) and now > acks[0]["t"] + float(case.params.get("observe_s", 2.0))
    if expect == "no_storm":
        sent = _packets(conns, "SUBACK", "out")
        return bool(sent) and now > sent[0][1]["t"] + float(case.params.get("observe_s", 5.0))
    if expect == "retry_after":
        return len(_packets(conns, "HTTP request")) >= 2
    if expect == "truncated":
        return len(_packets(conns, "HTTP request")) >= 2
    if expect in ("max_packet", "topic_alias"):
        if "oversize" in state or "bad_alias" in state or first.closed is not None:
            return True
        t = state.get("connack_t")
        return t is not None and now > t + float(case.params.get("observe_s", 3.0))
    if expect == "receive_maximum":
        if "exceeded" in state or first.closed is not None:
            return True
        t = state.get("released_t")
        return t is not None and now > t + float(case.params.get("observe_s", 2.0))
    if expect == "calm":
        if len(conns) > int(case.params.get("max_reconnects", 3)) + 1:
            return True  # a storm: the answer is known
        t = state.get("disconnect_t")
        return t is not None and now > t + float(case.params.get("observe_s", 10.0))
    if expect == "assigned_id":
        connects = _packets(conns, "CONNECT")
        return len(connects) >= 2 or (bool(connects) and connects[0][1]["client_id"] != "")
    return False


def judge(
    case: Case,
    conns: list[ConnRecord],
    state: dict[str, Any],
    device: DeviceExit,
    *,
    chain_bytes: int | None = None,
) -> tuple[str, str, dict[str, Any]]:
    """The verdict on ``case``: ``(status, summary, evidence)``."""
    evidence: dict[str, Any] = {"connections": [c.to_json() for c in conns]}
    if device.returncode is not None:
        evidence["device_exit_code"] = device.returncode
    if device.output_tail:
        evidence["device_output_tail"] = device.output_tail
    if chain_bytes is not None:
        evidence["server_chain_der_bytes"] = chain_bytes
    if not conns:
        return Status.ERROR, "the device never connected within the case's timeout", evidence
    first = conns[0]
    if first.edge_refusal.startswith(
        ("the device's own certificate", "the device did not start TLS")
    ):
        return Status.ERROR, f"the edge refused the device: {first.edge_refusal}", evidence
    if case.protocol == "mqtt5":
        level = state.get("protocol_level")
        if level is None:
            return Status.ERROR, "the device sent no MQTT CONNECT (an MQTT 5 case)", evidence
        if level != 5:
            return (
                Status.SKIP,
                f"the device spoke MQTT protocol level {level} (3.1.1); this case is for MQTT 5",
                evidence,
            )
    fn = _JUDGES[case.expect]
    status, summary = fn(case, conns, state, device, evidence)
    return status, summary, evidence


def _tls_outcome(c: ConnRecord) -> str:
    if c.handshake_done is None:
        how = f"alert {c.alert}" if c.alert else (c.handshake_failure or "closed")
        return f"aborted the handshake ({how}) after the edge sent {c.out_at_failure} bytes"
    if c.first_app is None:
        return f"completed the handshake ({c.tls_version}) but closed before sending any application byte"
    return f"completed the handshake ({c.tls_version}, {c.cipher}) and sent {c.app_in} application bytes"


def _refuse(
    case: Case,
    conns: list[ConnRecord],
    state: dict[str, Any],
    device: DeviceExit,
    ev: dict[str, Any],
) -> tuple[str, str]:
    c = conns[0]
    if c.first_app is None:
        return Status.PASS, f"refused: {_tls_outcome(c)}"
    return Status.FAIL, f"ACCEPTED a bad server ({case.server.cert}): {_tls_outcome(c)}"


def _accept(
    case: Case,
    conns: list[ConnRecord],
    state: dict[str, Any],
    device: DeviceExit,
    ev: dict[str, Any],
) -> tuple[str, str]:
    c = conns[0]
    if c.edge_refusal:
        return Status.FAIL, c.edge_refusal
    if c.first_app is not None:
        offered = ""
        if case.server.cipher is not None and case.server.cipher.startswith("TLS_"):
            offered = f"offered {case.server.cipher}; "
        return Status.PASS, f"accepted: {offered}{_tls_outcome(c)}" + (
            f", ALPN {c.alpn}" if c.alpn else ""
        )
    cause = ""
    chain = ev.get("server_chain_der_bytes")
    if c.handshake_done is None and case.server.cert in ("chain4_large", "sans1000") and chain:
        cause = (
            f"; the device aborted after {c.out_at_failure / 1024:.1f} KiB of the server flight "
            f"(chain {chain / 1024:.1f} KiB): its TLS input buffer is probably smaller than the chain"
        )
    elif c.handshake_done is None and case.server.split_records:
        cause = "; the device probably does not reassemble a handshake message split over records"
    elif c.handshake_done is None and c.alert in ("handshake_failure", "insufficient_security"):
        cause = "; no cipher suite, version or key type in common"
    return Status.FAIL, f"refused a good server: {_tls_outcome(c)}{cause}"


def _inform(
    case: Case,
    conns: list[ConnRecord],
    state: dict[str, Any],
    device: DeviceExit,
    ev: dict[str, Any],
) -> tuple[str, str]:
    c = conns[0]
    accepted = c.first_app is not None
    profile = case.server.cert
    if profile == "clock_recent":
        text = (
            "accepted a certificate valid only from one minute ago: the device clock is set "
            "(or it does not check notBefore; see the not-yet-valid case)"
            if accepted
            else "refused a certificate valid from one minute ago: the device clock is probably "
            "behind (e.g. it booted at 1970 and has no time yet)"
        )
    elif profile == "clock_1970":
        text = (
            "accepted a certificate valid since 1970: control passed"
            if accepted
            else "refused a certificate valid 1970-2099: it refuses for another reason than time"
        )
    elif profile == "revoked":
        text = (
            "accepted a revoked certificate: the device does not check revocation (most do not)"
            if accepted
            else "refused a revoked certificate: the device checks revocation (CRL/OCSP)"
        )
    elif case.server.split_records == 16384:
        asked = [
            n
            for code, n in ((1, "max_fragment_length"), (28, "record_size_limit"))
            if code in c.extensions_offered
        ]
        did = (
            "asked for " + " and ".join(asked) if asked else "did not ask for a smaller record size"
        )
        text = (
            f"the device {did} and "
            + ("took" if accepted else "did NOT take")
            + " 16 KiB records anyway"
            + (
                ""
                if accepted or not asked
                else ": its input buffer is smaller than 16 KiB, so it needs a server that honours its limit"
            )
        )
    else:
        text = _tls_outcome(c)
    ev["inference"] = text
    return Status.INFO, f"{text} [{_tls_outcome(c)}]"


def _reconnect(
    case: Case,
    conns: list[ConnRecord],
    state: dict[str, Any],
    device: DeviceExit,
    ev: dict[str, Any],
) -> tuple[str, str]:
    first = conns[0]
    connects = [p for p in first.packets if p["packet"] == "CONNECT"]
    if not connects:
        return Status.ERROR, "the device sent no CONNECT on its first connection"
    if len(conns) < 2:
        if first.closed is None or first.closed_by.startswith("edge"):
            return (
                Status.FAIL,
                "no CONNACK, and the device neither gave up nor reconnected within the case timeout",
            )
        return (
            Status.FAIL,
            f"the device closed after {first.closed - connects[0]['t']:.1f} s without CONNACK but never reconnected",
        )
    assert first.closed is not None
    waited = first.closed - connects[0]["t"]
    gap = conns[1].opened - first.closed
    ev["connack_wait_s"] = round(waited, 3)
    ev["reconnect_delay_s"] = round(gap, 3)
    return Status.PASS, f"gave up on CONNACK after {waited:.1f} s and reconnected {gap:.2f} s later"


def score_backoff(delays: list[float], rule: BackoffRule) -> tuple[bool, list[str], dict[str, Any]]:
    """Score reconnect ``delays`` against ``rule``: ``(ok, problems, measures)``."""
    problems: list[str] = []
    pairs = [(a, b) for a, b in itertools.pairwise(delays) if a > 0 and b > 0]
    logs = [math.log(b / a) for a, b in pairs]
    growth = math.exp(statistics.fmean(logs)) if logs and len(pairs) == len(delays) - 1 else 0.0
    # Jitter: a ratio that is neither the schedule's usual ratio (the median) nor 1
    # (a capped delay) by more than 5 % plus what a 30 ms timer error on either delay
    # explains. A plain doubling or constant schedule has none.
    middle = statistics.median(logs) if logs else 0.0
    jittered = 0
    for (a, b), value in zip(pairs, logs, strict=True):
        tolerance = _JITTER_SPREAD + _TIMER_NOISE_S / a + _TIMER_NOISE_S / b
        if abs(value - middle) > tolerance and abs(value) > tolerance:
            jittered += 1
    needed = max(1, len(logs) // 3)
    measures = {
        "delays_s": [round(d, 3) for d in delays],
        "ratios": [round(b / a, 3) for a, b in pairs],
        "growth": round(growth, 3),
        "jittered_ratios": jittered,
    }
    short = [d for d in delays if d < rule.min_delay_s]
    if short:
        problems.append(
            f"{len(short)} delay(s) below {rule.min_delay_s:g} s (shortest {min(short):.3f} s)"
        )
    if rule.exponential and growth < rule.min_growth:
        problems.append(
            f"delays do not grow exponentially (mean ratio {growth:.2f} < {rule.min_growth:g})"
        )
    if rule.jitter and jittered < needed:
        problems.append(
            f"no jitter ({jittered} of {len(logs)} ratios stray from x{math.exp(middle):.2f} "
            f"beyond timer noise; {needed} needed)"
        )
    return not problems, problems, measures


def _backoff(
    case: Case,
    conns: list[ConnRecord],
    state: dict[str, Any],
    device: DeviceExit,
    ev: dict[str, Any],
) -> tuple[str, str]:
    rule = case.backoff or BackoffRule()
    delays = [b.opened - a.closed for a, b in itertools.pairwise(conns) if a.closed is not None]
    ev["rule"] = {
        "attempts": rule.attempts,
        "min_delay_s": rule.min_delay_s,
        "exponential": rule.exponential,
        "min_growth": rule.min_growth,
        "jitter": rule.jitter,
    }
    if len(conns) < rule.attempts:
        ev["delays_s"] = [round(d, 3) for d in delays]
        why = "the case ended"
        # A negative code is the engine's SIGTERM at the case's end, not the device's choice.
        if device.returncode is not None and device.returncode >= 0:
            why = f"the device exited (code {device.returncode})"
        return Status.FAIL, (
            f"only {len(conns)} of {rule.attempts} connection attempts before {why} "
            f"(delays {', '.join(f'{d:.2f}' for d in delays) or 'none'} s)"
        )
    ok, problems, measures = score_backoff(delays[: rule.attempts - 1], rule)
    ev.update(measures)
    shown = ", ".join(f"{d:.2f}" for d in measures["delays_s"])
    if ok:
        return (
            Status.PASS,
            f"delays {shown} s: growth x{measures['growth']}, "
            f"{measures['jittered_ratios']} jittered ratio(s)",
        )
    return Status.FAIL, f"delays {shown} s: " + "; ".join(problems)


def _redeliver(
    case: Case,
    conns: list[ConnRecord],
    state: dict[str, Any],
    device: DeviceExit,
    ev: dict[str, Any],
) -> tuple[str, str]:
    held = state.get("withheld")
    if held is None:
        return (
            Status.ERROR,
            "the device sent no QoS 1 PUBLISH on its first connection (the case needs one)",
        )
    ev["withheld"] = held
    # Every PUBLISH with the withheld id after the first (the original) is a re-send.
    resent = [
        (c, p) for c, p in _packets(conns, "PUBLISH") if p.get("packet_id") == held["packet_id"]
    ][1:]
    dup = [(c, p) for c, p in resent if p.get("dup")]
    if dup:
        c, p = dup[0]
        where = (
            "on the same connection"
            if c.index == 1
            else f"after reconnecting (connection {c.index})"
        )
        return (
            Status.PASS,
            f"re-sent packet id {held['packet_id']} with DUP=1 {where}, {p['t'] - held['t']:.2f} s after the first send",
        )
    if resent:
        return Status.FAIL, f"re-sent packet id {held['packet_id']} but without DUP=1"
    if len(conns) < 2:
        return (
            Status.FAIL,
            "never reconnected after the edge dropped the connection with the PUBACK withheld",
        )
    later = [p for c, p in _packets(conns, "PUBLISH") if c.index > 1]
    if later:
        return (
            Status.FAIL,
            f"reconnected and published {len(later)} message(s), but never re-sent packet id {held['packet_id']}",
        )
    return (
        Status.FAIL,
        f"reconnected but never re-sent the unacknowledged packet id {held['packet_id']}",
    )


def _no_storm(
    case: Case,
    conns: list[ConnRecord],
    state: dict[str, Any],
    device: DeviceExit,
    ev: dict[str, Any],
) -> tuple[str, str]:
    subs = _packets(conns, "SUBSCRIBE")
    if not subs:
        return Status.ERROR, "the device sent no SUBSCRIBE (the case needs one)"
    times = [p["t"] for _, p in subs]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    ev["subscribe_times_s"] = times
    tight = [g for g in gaps if g < float(case.params.get("min_retry_s", 1.0))]
    after = [c for c in conns if c.index > subs[0][0].index]
    sent = _packets(conns, "SUBACK", "out")
    window_end = (sent[0][1]["t"] if sent else 0.0) + float(case.params.get("observe_s", 5.0))
    owner = subs[0][0]
    # A close after the window is the engine stopping the device, not the device's choice.
    left = (
        owner.closed is not None
        and owner.closed <= window_end
        and owner.closed_by.startswith("device")
    )
    what = (
        f"{len(subs)} SUBSCRIBE(s) in {case.params.get('observe_s', 5.0)} s"
        + (f", gaps {', '.join(f'{g:.2f}' for g in gaps)} s" if gaps else "")
        + (f", {len(after)} reconnection(s)" if after else "")
        + (", then the device disconnected" if left else ", connection kept")
    )
    if len(tight) >= 3:
        return Status.FAIL, f"re-subscribes in a tight loop after SUBACK 0x80: {what}"
    return Status.PASS, f"did not loop on the refused subscription: {what}"


def _keepalive(
    case: Case,
    conns: list[ConnRecord],
    state: dict[str, Any],
    device: DeviceExit,
    ev: dict[str, Any],
) -> tuple[str, str]:
    ka = state.get("keepalive")
    if ka is None:
        return Status.ERROR, "the device sent no CONNECT"
    if ka == 0:
        return Status.FAIL, "keep-alive is 0 (disabled): a dead link is never noticed"
    c = conns[0]
    ins = [p["t"] for p in c.packets if p["dir"] == "in"]
    pings = [p["t"] for p in c.packets if p["dir"] == "in" and p["packet"] == "PINGREQ"]
    gaps = [b - a for a, b in itertools.pairwise(ins)]
    ev["keepalive_s"] = ka
    whose = ""
    if case.behaviour == "server_keep_alive":
        # The server's value is the one that counts (MQTT 5 3.2.2.3.14).
        whose = f", the Server Keep Alive; the device asked for {state.get('asked_keepalive')} s"
        ev["device_keepalive_s"] = state.get("asked_keepalive")
    ev["pingreq_times_s"] = pings
    tolerance = float(case.params.get("tolerance_s", 0.5))
    late = [g for g in gaps if g > ka + tolerance]
    if late:
        return Status.FAIL, f"silent for {max(late):.2f} s with keep-alive {ka} s{whose}"
    if not pings:
        if c.closed is not None and c.closed_by.startswith("device"):
            return (
                Status.FAIL,
                f"disconnected after {c.closed - ins[0]:.2f} s before any PINGREQ (keep-alive {ka} s)",
            )
        return Status.FAIL, f"no PINGREQ within {1.5 * ka:g} s (keep-alive {ka} s{whose})"
    first_gap = pings[0] - (ins[ins.index(pings[0]) - 1] if ins.index(pings[0]) else ins[0])
    return (
        Status.PASS,
        f"PINGREQ {first_gap:.2f} s after its previous packet (keep-alive {ka} s{whose})",
    )


def _session(
    case: Case,
    conns: list[ConnRecord],
    state: dict[str, Any],
    device: DeviceExit,
    ev: dict[str, Any],
) -> tuple[str, str]:
    c = conns[0]
    connects = [p for p in c.packets if p["packet"] == "CONNECT"]
    if not connects:
        return Status.ERROR, "the device sent no CONNECT"
    if connects[0].get("clean_session"):
        return (
            Status.FAIL,
            "the device asked for a clean session (CleanSession=1); the case needs a persistent one",
        )
    acked = [
        p for _, p in _packets(conns, "PUBACK") if p.get("packet_id") == state.get("stored_id")
    ]
    subs = _packets(conns, "SUBSCRIBE")
    if subs:
        return (
            Status.FAIL,
            f"re-subscribed ({', '.join(subs[0][1]['filters'])}) although CONNACK said session-present=1",
        )
    if not acked:
        return (
            Status.FAIL,
            "did not PUBACK the stored QoS 1 message sent after CONNACK (session-present=1)",
        )
    return (
        Status.PASS,
        f"kept the session: no SUBSCRIBE, PUBACK of the stored message at {acked[0]['t']:.2f} s",
    )


def _retry_after(
    case: Case,
    conns: list[ConnRecord],
    state: dict[str, Any],
    device: DeviceExit,
    ev: dict[str, Any],
) -> tuple[str, str]:
    reqs = [p["t"] for _, p in _packets(conns, "HTTP request")]
    after = float(case.params.get("retry_after_s", 3))
    if not reqs:
        return Status.ERROR, "the device sent no HTTP request"
    if len(reqs) < 2:
        return Status.PASS, f"did not retry within the case window (Retry-After {after:g} s)"
    gap = reqs[1] - reqs[0]
    ev["retry_gap_s"] = round(gap, 3)
    if gap + 0.05 < after:
        return Status.FAIL, f"retried {gap:.2f} s after a 503 that said Retry-After: {after:g}"
    return Status.PASS, f"retried {gap:.2f} s later, honouring Retry-After: {after:g}"


def _truncated(
    case: Case,
    conns: list[ConnRecord],
    state: dict[str, Any],
    device: DeviceExit,
    ev: dict[str, Any],
) -> tuple[str, str]:
    reqs = _packets(conns, "HTTP request")
    if not reqs:
        return Status.ERROR, "the device sent no HTTP request"
    if len(reqs) >= 2:
        return Status.PASS, "retried the request after the response was cut short"
    if device.returncode is None:
        return (
            Status.INFO,
            "did not retry; whether it noticed the cut is not visible from the edge (bench device)",
        )
    if device.returncode != 0:
        return Status.PASS, f"reported the cut-short response (exit code {device.returncode})"
    return Status.FAIL, "exited 0 after a response cut at 100 of 1000 bytes, and did not retry"


def _sizes(conns: list[ConnRecord]) -> list[tuple[str, int]]:
    return [
        (p["packet"], p["size"])
        for c in conns
        for p in c.packets
        if p["dir"] == "in" and "size" in p
    ]


def _max_packet(
    case: Case,
    conns: list[ConnRecord],
    state: dict[str, Any],
    device: DeviceExit,
    ev: dict[str, Any],
) -> tuple[str, str]:
    limit = int(case.params.get("max_packet_size", 128))
    ev["maximum_packet_size"] = limit
    over = state.get("oversize")
    if over is not None:
        ev["oversize"] = over
        return Status.FAIL, (
            f"sent a {over['packet']} of {over['size']} bytes although CONNACK said Maximum "
            f"Packet Size {limit} (MQTT 5 3.2.2.3.6: the client MUST NOT); the edge answered "
            "DISCONNECT 0x95 Packet too large. Check the limit before encoding, and drop or "
            "split the message instead"
        )
    sizes = _sizes(conns)
    publishes = [n for name, n in sizes if name == "PUBLISH"]
    ev["largest_packet"] = max((n for _, n in sizes), default=0)
    exit_text = "" if device.returncode is None else f", exit code {device.returncode}"
    if publishes:
        return Status.PASS, (
            f"kept every packet within Maximum Packet Size {limit}: {len(publishes)} PUBLISH(es), "
            f"largest {max(publishes)} bytes{exit_text}"
        )
    return Status.PASS, (
        f"sent no PUBLISH at all{exit_text}: it held back a message over Maximum Packet Size "
        f"{limit}, or had nothing to send (publish one over {limit} bytes to exercise the case)"
    )


def _receive_maximum(
    case: Case,
    conns: list[ConnRecord],
    state: dict[str, Any],
    device: DeviceExit,
    ev: dict[str, Any],
) -> tuple[str, str]:
    window = int(case.params.get("receive_maximum", 2))
    ev["receive_maximum"] = window
    ev["max_in_flight"] = state.get("max_in_flight", 0)
    ev["qos_publishes"] = state.get("qos_publishes", 0)
    over = state.get("exceeded")
    if over is not None:
        ev["exceeded"] = over
        return Status.FAIL, (
            f"had {over['in_flight']} QoS 1/2 PUBLISHes unacknowledged although CONNACK said "
            f"Receive Maximum {window} (MQTT 5 4.9); the edge answered DISCONNECT 0x93. Its "
            "in-flight window must shrink to the server's Receive Maximum"
        )
    if not state.get("qos_publishes"):
        return Status.ERROR, (
            f"the device sent no QoS 1/2 PUBLISH; the case needs more than {window} of them"
        )
    sent = state["qos_publishes"]
    if sent <= window:
        return Status.PASS, (
            f"sent {sent} QoS 1/2 PUBLISH(es), never more than Receive Maximum {window} "
            "unacknowledged (the window was never full: publish more to test it)"
        )
    return Status.PASS, (
        f"waited for acknowledgements: {sent} QoS 1/2 PUBLISHes, at most "
        f"{state['max_in_flight']} unacknowledged (Receive Maximum {window})"
    )


def _topic_alias(
    case: Case,
    conns: list[ConnRecord],
    state: dict[str, Any],
    device: DeviceExit,
    ev: dict[str, Any],
) -> tuple[str, str]:
    maximum = int(case.params.get("topic_alias_maximum", 2))
    ev["topic_alias_maximum"] = maximum
    used = sorted(state.get("aliases", set()))
    ev["aliases_used"] = used
    bad = state.get("bad_alias")
    if bad is not None:
        ev["bad_alias"] = bad
        return Status.FAIL, (
            f"sent Topic Alias {bad['alias']} although CONNACK said Topic Alias Maximum "
            f"{maximum} (MQTT 5 3.3.2.3.4); the edge answered DISCONNECT 0x94 Topic Alias invalid"
        )
    if used:
        return Status.PASS, f"used Topic Alias(es) {used}, all within the maximum {maximum}"
    return Status.PASS, f"used no Topic Alias (the maximum was {maximum})"


def _calm(
    case: Case,
    conns: list[ConnRecord],
    state: dict[str, Any],
    device: DeviceExit,
    ev: dict[str, Any],
) -> tuple[str, str]:
    code = int(case.params.get("reason_code", 0x8B))
    min_delay = float(case.params.get("min_delay_s", 1.0))
    allowed = int(case.params.get("max_reconnects", 3))
    window = float(case.params.get("observe_s", 10.0))
    if "disconnect_t" not in state:
        after = float(case.params.get("after_s", 0.5))
        return Status.ERROR, (
            f"the device closed the connection before the edge's DISCONNECT (due {after:g} s "
            "after CONNACK): the case needs a device that stays connected"
        )
    delays = [b.opened - a.closed for a, b in itertools.pairwise(conns) if a.closed is not None]
    ev["delays_s"] = [round(d, 3) for d in delays]
    ev["rule"] = {"min_delay_s": min_delay, "max_reconnects": allowed, "observe_s": window}
    if case.params.get("server_reference") is not None:
        # Dialling the reference (an IP address) sends no SNI where the first dial did.
        followed = [c.index for c in conns[1:] if c.sni != conns[0].sni]
        ev["followed_server_reference"] = bool(followed)
    code_text = f"DISCONNECT {code:#04x} {reason_name(code, DISCONNECT)}"
    reconnects = len(conns) - 1
    if reconnects == 0:
        if device.returncode is not None and device.returncode >= 0:
            return Status.PASS, (
                f"exited (code {device.returncode}) after {code_text} and did not reconnect: "
                "no storm (a device that never reconnects passes this case)"
            )
        return Status.PASS, f"did not reconnect within {window:g} s after {code_text}"
    short = [d for d in delays if d < min_delay]
    problems = []
    if short:
        problems.append(f"reconnected {min(short):.2f} s after the close (minimum {min_delay:g} s)")
    if reconnects > allowed:
        problems.append(f"{reconnects} reconnections in {window:g} s (at most {allowed})")
    shown = ", ".join(f"{d:.2f}" for d in delays)
    follow = ""
    if ev.get("followed_server_reference"):
        follow = "; it followed the Server Reference"
    elif "followed_server_reference" in ev:
        follow = "; it came back to the same server, not the Server Reference"
    if problems:
        return Status.FAIL, (
            f"reconnect storm after {code_text}: "
            + "; ".join(problems)
            + f" (delays {shown} s){follow}"
        )
    return Status.PASS, (
        f"{reconnects} reconnection(s) after {code_text}, delays {shown} s{follow}"
    )


def _assigned_id(
    case: Case,
    conns: list[ConnRecord],
    state: dict[str, Any],
    device: DeviceExit,
    ev: dict[str, Any],
) -> tuple[str, str]:
    connects = [p for _, p in _packets(conns, "CONNECT")]
    if not connects:
        return Status.ERROR, "the device sent no CONNECT"
    if connects[0]["client_id"] != "":
        return Status.SKIP, (
            f"the device sent its own client id {connects[0]['client_id']!r}; the case is for "
            "devices that let the server assign one (empty client id)"
        )
    assigned = state.get("assigned", "")
    ev["assigned_client_identifier"] = assigned
    if len(connects) < 2:
        first = conns[0]
        how = "after the edge dropped the connection"
        if first.closed_by.startswith("device"):
            how = "(it disconnected by itself first)"
        return Status.FAIL, (
            f"got Assigned Client Identifier {assigned!r} but never reconnected {how}, so "
            "never used it"
        )
    again = connects[1]["client_id"]
    ev["reconnect_client_id"] = again
    if again == assigned:
        return Status.PASS, f"reconnected with the Assigned Client Identifier {assigned!r}"
    if again == "":
        return Status.FAIL, (
            f"reconnected with an empty client id again, not {assigned!r}: each reconnect "
            "starts a new session, so its subscriptions and unacknowledged QoS 1 are lost"
        )
    return Status.FAIL, f"reconnected as {again!r}, not the assigned {assigned!r}"


_JUDGES = {
    "refuse": _refuse,
    "accept": _accept,
    "inform": _inform,
    "reconnect": _reconnect,
    "backoff": _backoff,
    "redeliver": _redeliver,
    "no_storm": _no_storm,
    "keepalive": _keepalive,
    "session": _session,
    "retry_after": _retry_after,
    "truncated": _truncated,
    "max_packet": _max_packet,
    "receive_maximum": _receive_maximum,
    "topic_alias": _topic_alias,
    "calm": _calm,
    "assigned_id": _assigned_id,
}
