"""Rendering a device trace: built from hand-made results, no network."""

from __future__ import annotations

from devices.device import DeviceResult, Step
from devices.trace import HINTS, describe, hint, render, to_json


def refused_result() -> DeviceResult:
    return DeviceResult(
        id="dev-1",
        outcome="refused",
        reason="unknown_ca",
        protocol="mqtt",
        message="the edge sent TLS alert unknown_ca",
        steps=[
            Step("tcp_connect", 0.0012, 0.0004, True, {"peer": "127.0.0.1:8883"}),
            Step(
                "client_hello",
                0.002,
                0.0,
                True,
                {"sni": "edge.local", "alpn": ["mqtt"], "versions": ["TLSv1.3", "TLSv1.2"]},
            ),
            Step(
                "certificate_request",
                0.004,
                0.0,
                True,
                {"requested": None, "how": "unknown (TLS 1.3, encrypted; use --trace)"},
            ),
            Step("edge_verdict", 0.0051, 0.0, False, {"alert": "unknown_ca"}),
        ],
    )


def test_render_aligns_times_marks_and_hint() -> None:
    lines = render(refused_result()).splitlines()
    assert lines[0] == "device dev-1 -> mqtt"
    assert lines[1] == (
        "      1.200 ms    +0.400 ms  ✓ TCP connect                  127.0.0.1:8883"
    )
    assert "SNI=edge.local ALPN=mqtt versions=TLSv1.3,TLSv1.2" in lines[2]
    assert "unknown (TLS 1.3, encrypted; use --trace)" in lines[3]
    assert "✗ edge verdict" in lines[4]
    assert lines[4].endswith("refused: TLS alert unknown_ca")
    # Every step line puts its mark in the same column.
    assert len({line.index("✓") if "✓" in line else line.index("✗") for line in lines[1:5]}) == 1
    assert lines[5] == "result: refused: unknown_ca (the edge sent TLS alert unknown_ca)"
    assert lines[6] == f"hint: {HINTS['unknown_ca']}"


def test_json_carries_the_same_trace_in_milliseconds() -> None:
    data = to_json(refused_result())
    assert (data["outcome"], data["reason"], data["as_expected"]) == (
        "refused",
        "unknown_ca",
        False,
    )
    assert data["steps"][0] == {
        "name": "tcp_connect",
        "t_start_ms": 1.2,
        "duration_ms": 0.4,
        "ok": True,
        "detail": {"peer": "127.0.0.1:8883"},
    }
    assert data["hint"] == HINTS["unknown_ca"]


def test_expected_refusal_counts_as_expected() -> None:
    result = refused_result()
    result.expected = "unknown_ca"
    assert result.as_expected


def test_connected_result_has_no_hint() -> None:
    result = DeviceResult(id="d", outcome="connected", reason="", protocol="https", messages_sent=2)
    assert render(result).splitlines()[-1] == "result: connected (sent 2, received 0)"
    assert to_json(result)["hint"] == ""


def test_hints_for_families_of_reasons() -> None:
    assert hint("connack-3") == "the edge refused the MQTT session"
    assert hint("http-400") == "the edge refused the HTTP request"
    assert hint("ws-rejected-404") == "the edge refused the HTTP request"
    assert hint("something-new") == ""


def test_describe_client_certificate_variants() -> None:
    encrypted = Step("client_certificate", 0, 0, True, {"certificates": None, "subject": "CN=d"})
    assert describe(encrypted) == "CN=d (sent if requested; encrypted in TLS 1.3)"
    inferred = Step(
        "client_certificate",
        0,
        0,
        True,
        {"certificates": None, "subject": "CN=d", "how": "encrypted, 918-byte Certificate record"},
    )
    assert describe(inferred) == "CN=d (sent; encrypted, 918-byte Certificate record)"
    empty = Step("client_certificate", 0, 0, True, {"certificates": 0})
    assert describe(empty) == "none sent (empty Certificate message)"
    sent = Step(
        "client_certificate", 0, 0, True, {"certificates": 2, "subject": "CN=d", "how": "cleartext"}
    )
    assert describe(sent) == "CN=d (2 certificate(s), cleartext)"
