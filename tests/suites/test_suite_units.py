"""Units of the device test suites: loader errors, backoff scoring, every verdict's two sides."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from testkit.suites import BackoffRule, Case, ServerProfile, Status, builtin_suites, load_suite
from testkit.suites.loader import SuiteError, parse_suite
from testkit.suites.report import render_html, render_junit
from testkit.suites.server import ConnRecord
from testkit.suites.verdicts import DeviceExit, judge, score_backoff

pytestmark = pytest.mark.timeout(30)

_HEAD = '[suite]\nname = "x"\n'


def test_builtin_suites_load_and_list() -> None:
    names = builtin_suites()
    assert {"tls", "mqtt", "https"} <= set(names)
    tls = load_suite("tls")
    refuse = {c.id for c in tls.cases if c.expect == "refuse"}
    assert refuse == {
        "expired", "not_yet_valid", "wrong_host", "untrusted_root", "self_signed",
        "missing_intermediate", "client_auth_eku", "sha1_signed", "rsa1024",
    }  # fmt: skip
    assert all(c.must for c in tls.cases if c.expect in ("refuse",))


def test_pyproject_ships_suite_files_as_package_data() -> None:
    text = (Path(__file__).parents[2] / "pyproject.toml").read_text()
    assert '"testkit.suites.data" = ["*.toml"]' in text


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('[[case]]\nid = "a"\ntitle = "t"\nexpect = "maybe"\n', "case #1 (a): 'expect' is 'maybe'"),
        (
            '[[case]]\nid = "a"\ntitle = "t"\nexpect = "refuse"\ncolour = 1\n',
            "unknown key(s): colour",
        ),
        ('[[case]]\nid = "a"\ntitle = "t"\n', "case #1: missing 'expect'"),
        (
            '[[case]]\nid = "a"\ntitle = "t"\nexpect = "refuse"\nserver = { cert = "nope" }\n',
            "'server.cert' is 'nope'",
        ),
        (
            '[[case]]\nid = "a"\ntitle = "t"\nexpect = "refuse"\n[[case]]\nid = "a"\ntitle = "t"\nexpect = "accept"\n',
            "case #2: duplicate id 'a'",
        ),
        (
            '[[case]]\nid = "a"\ntitle = "t"\nexpect = "backoff"\nbehaviour = "connack_refused"\nprotocol = "https"\n',
            "behaviour 'connack_refused' is mqtt only",
        ),
        (
            '[[case]]\nid = "a"\ntitle = "t"\nexpect = "refuse"\ntimeout_s = true\n',
            "'timeout_s' must be a number",
        ),
    ],
)
def test_loader_names_file_case_and_field(body: str, message: str) -> None:
    with pytest.raises(SuiteError) as info:
        parse_suite(_HEAD + body, "my.toml")
    assert "my.toml" in str(info.value)
    assert message in str(info.value)


def test_unknown_suite_name_lists_builtins() -> None:
    with pytest.raises(SuiteError, match="built-in: https, mqtt, mqtt5, tls"):
        load_suite("nonesuch")


def test_backoff_scoring() -> None:
    rule = BackoffRule(min_delay_s=1.0)
    ok, problems, m = score_backoff([1.1, 2.3, 3.9, 8.8, 15.2], rule)
    assert ok, problems
    assert m["growth"] > 1.5
    # Exact doubling (paho), with timer noise, and a capped schedule: no jitter.
    for delays in (
        [1.0, 2.0, 4.0, 8.0, 16.0],
        [1.01, 2.0, 4.02, 8.0, 16.01],
        [1.0, 2.0, 4.0, 8.0, 8.0],
    ):
        ok, problems, _ = score_backoff(delays, rule)
        assert not ok, delays
        assert problems[0].startswith("no jitter (0 of 4 ratios stray from x2.00"), problems
    ok, problems, _ = score_backoff([0.1, 0.1, 0.1, 0.1, 0.1], rule)
    assert len(problems) == 3
    assert "below 1 s" in problems[0]
    # An immediate reconnect (delay 0) cannot grow.
    ok, problems, _ = score_backoff([0.0, 0.0, 1.0], BackoffRule(min_delay_s=0.0))
    assert "do not grow exponentially" in problems[0]


# --- every verdict's pass and fail sides, on synthetic connection records ---------------


def _conn(index: int = 1, **kw: Any) -> ConnRecord:
    rec = ConnRecord(index=index, opened=kw.pop("opened", 0.0))
    for k, v in kw.items():
        setattr(rec, k, v)
    return rec


def _case(expect: str, **kw: Any) -> Case:
    return Case(id="c", title="t", expect=expect, **kw)


def _judge(
    case: Case, conns: list[ConnRecord], state: dict[str, Any] | None = None, rc: int | None = 0
) -> tuple[str, str]:
    status, summary, evidence = judge(case, conns, state or {}, DeviceExit(rc), chain_bytes=9136)
    assert "connections" in evidence
    return status, summary


def _pk(t: float, name: str, direction: str = "in", **kw: Any) -> dict[str, Any]:
    return {"t": t, "dir": direction, "packet": name, **kw}


def test_refuse_sides() -> None:
    refused = _conn(
        alert="certificate_expired", handshake_failure="TLSV1_ALERT_CERTIFICATE_EXPIRED", closed=0.1
    )
    assert _judge(_case("refuse"), [refused])[0] == Status.PASS
    sent = _conn(handshake_done=0.05, tls_version="TLSv1.3", first_app=0.06, app_in=25, closed=0.2)
    status, summary = _judge(_case("refuse"), [sent])
    assert status == Status.FAIL
    assert "ACCEPTED" in summary


def test_accept_sides_and_buffer_hint() -> None:
    ok = _conn(handshake_done=0.05, tls_version="TLSv1.3", first_app=0.06, app_in=25, closed=0.2)
    assert _judge(_case("accept"), [ok])[0] == Status.PASS
    aborted = _conn(alert="decode_error", out_at_failure=9300, closed=0.1)
    status, summary = _judge(_case("accept", server=ServerProfile(cert="chain4_large")), [aborted])
    assert status == Status.FAIL
    assert "TLS input buffer is probably smaller than the chain" in summary
    alpn = _conn(
        edge_refusal="the case requires ALPN mqtt; the device offered no ALPN extension",
        closed=0.01,
    )
    assert _judge(_case("accept"), [alpn])[0] == Status.FAIL


def test_inform_clock_inference() -> None:
    refused = _conn(alert="bad_certificate", closed=0.1)
    status, summary = _judge(
        _case("inform", server=ServerProfile(cert="clock_recent"), must=False), [refused]
    )
    assert status == Status.INFO
    assert "clock is probably behind" in summary


def test_no_connection_is_an_error() -> None:
    assert _judge(_case("refuse"), [])[0] == Status.ERROR


def test_reconnect_sides() -> None:
    first = _conn(packets=[_pk(0.01, "CONNECT")], closed=5.0, closed_by="device (EOF)")
    second = _conn(2, opened=6.0)
    assert _judge(_case("reconnect"), [first, second])[0] == Status.PASS
    stuck = _conn(packets=[_pk(0.01, "CONNECT")], closed=20.0, closed_by="edge (case over)")
    assert _judge(_case("reconnect"), [stuck])[0] == Status.FAIL


def test_backoff_sides() -> None:
    rule = BackoffRule(attempts=4, min_delay_s=0.1)
    opens = [0.0, 1.2, 3.9, 7.9, 17.5]  # delays 1.15, 2.65, 3.95, 9.55: jittered growth
    conns = [_conn(i + 1, opened=t, closed=t + 0.05) for i, t in enumerate(opens)]
    assert _judge(_case("backoff", backoff=rule), conns)[0] == Status.PASS
    flat = [_conn(i + 1, opened=i * 0.3, closed=i * 0.3 + 0.05) for i in range(4)]
    status, summary = _judge(_case("backoff", backoff=rule), flat)
    assert status == Status.FAIL
    assert "do not grow exponentially" in summary
    assert "only 1 of 4" in _judge(_case("backoff", backoff=rule), flat[:1])[1]


def test_redeliver_sides() -> None:
    state = {"withheld": {"packet_id": 3, "topic": "a", "t": 0.1}}
    first = _conn(packets=[_pk(0.1, "PUBLISH", packet_id=3, dup=False)], closed=3.1)
    good = _conn(2, opened=4.0, packets=[_pk(4.1, "PUBLISH", packet_id=3, dup=True)])
    assert _judge(_case("redeliver"), [first, good], state)[0] == Status.PASS
    nodup = _conn(2, opened=4.0, packets=[_pk(4.1, "PUBLISH", packet_id=3, dup=False)])
    assert "without DUP" in _judge(_case("redeliver"), [first, nodup], state)[1]
    assert "never reconnected" in _judge(_case("redeliver"), [first], state)[1]
    # The original send alone is not a re-send, whatever the rounding of its time.
    early = {"withheld": {"packet_id": 3, "topic": "a", "t": 0.09}}
    assert "never reconnected" in _judge(_case("redeliver"), [first], early)[1]


def test_no_storm_sides() -> None:
    calm = _conn(packets=[_pk(0.1, "SUBSCRIBE", filters=["a"]), _pk(0.1, "SUBACK", "out")])
    assert _judge(_case("no_storm"), [calm])[0] == Status.PASS
    storm = _conn(packets=[_pk(0.1 + i * 0.01, "SUBSCRIBE", filters=["a"]) for i in range(5)])
    assert _judge(_case("no_storm"), [storm])[0] == Status.FAIL


def test_keepalive_sides() -> None:
    ok = _conn(packets=[_pk(0.0, "CONNECT"), _pk(2.0, "PINGREQ"), _pk(4.0, "PINGREQ")])
    assert _judge(_case("keepalive"), [ok], {"keepalive": 2})[0] == Status.PASS
    silent = _conn(packets=[_pk(0.0, "CONNECT"), _pk(5.0, "PINGREQ")])
    assert _judge(_case("keepalive"), [silent], {"keepalive": 2})[0] == Status.FAIL
    assert "disabled" in _judge(_case("keepalive"), [silent], {"keepalive": 0})[1]


def test_session_sides() -> None:
    state = {"stored_id": 7}
    ok = _conn(packets=[_pk(0.0, "CONNECT", clean_session=False), _pk(0.2, "PUBACK", packet_id=7)])
    assert _judge(_case("session"), [ok], state)[0] == Status.PASS
    resub = _conn(
        packets=[
            _pk(0.0, "CONNECT", clean_session=False),
            _pk(0.1, "SUBSCRIBE", filters=["a/b"]),
            _pk(0.2, "PUBACK", packet_id=7),
        ]
    )
    assert "re-subscribed" in _judge(_case("session"), [resub], state)[1]
    clean = _conn(packets=[_pk(0.0, "CONNECT", clean_session=True)])
    assert "clean session" in _judge(_case("session"), [clean], state)[1]


def test_http_sides() -> None:
    params = {"retry_after_s": 3}
    slow = _conn(packets=[_pk(0.0, "HTTP request")])
    again = _conn(2, packets=[_pk(3.2, "HTTP request")])
    assert _judge(_case("retry_after", params=params), [slow, again])[0] == Status.PASS
    early = _conn(2, packets=[_pk(0.5, "HTTP request")])
    assert _judge(_case("retry_after", params=params), [slow, early])[0] == Status.FAIL
    assert _judge(_case("truncated"), [slow], rc=18)[0] == Status.PASS
    assert _judge(_case("truncated"), [slow], rc=0)[0] == Status.FAIL
    assert _judge(_case("truncated"), [slow], rc=None)[0] == Status.INFO


def test_reports_render() -> None:
    doc = {
        "suite": "tls",
        "description": "d",
        "source": "s",
        "started": "2026-12-07T00:00:00+00:00",
        "duration_s": 1.0,
        "device_cmd": "dev",
        "endpoint": "localhost:1",
        "ok": False,
        "counts": {"pass": 1, "fail": 1},
        "cases": [
            {
                "id": "good",
                "title": "t",
                "expect": "accept",
                "must": True,
                "status": "pass",
                "summary": "ok",
                "duration_s": 0.1,
                "evidence": {},
            },
            {
                "id": "expired",
                "title": "t",
                "expect": "refuse",
                "must": True,
                "status": "fail",
                "summary": "ACCEPTED <x>",
                "duration_s": 0.1,
                "evidence": {},
            },
        ],
    }
    xml = render_junit(doc)
    assert 'failures="1"' in xml
    assert '<failure message="ACCEPTED &lt;x&gt;"' in xml
    html = render_html(doc)
    assert "ACCEPTED &lt;x&gt;" in html
    assert "FAILED" in html


def test_a_device_without_tls_is_an_error_not_a_refusal() -> None:
    plain = _conn(
        edge_refusal="the device did not start TLS: not TLS: looks like an MQTT CONNECT",
        closed=0.01,
    )
    status, summary = _judge(_case("refuse"), [plain])
    assert status == Status.ERROR
    assert "did not start TLS" in summary


def _m5(expect: str, behaviour: str, **kw: Any) -> Case:
    return Case(id="c", title="t", expect=expect, behaviour=behaviour, protocol="mqtt5", **kw)


_V5 = {"protocol_level": 5, "connack_t": 0.05}


def test_mqtt5_case_skips_a_311_device_and_errors_without_connect() -> None:
    case = _m5("max_packet", "max_packet_size")
    conn = _conn(packets=[_pk(0.0, "CONNECT")])
    status, summary = _judge(case, [conn], {"protocol_level": 4})
    assert status == Status.SKIP
    assert "spoke MQTT protocol level 4 (3.1.1)" in summary
    assert _judge(case, [conn], {})[0] == Status.ERROR


def test_max_packet_sides() -> None:
    case = _m5("max_packet", "max_packet_size", params={"max_packet_size": 128})
    small = _conn(packets=[_pk(0.0, "CONNECT"), _pk(0.1, "PUBLISH", size=40)])
    status, summary = _judge(case, [small], _V5)
    assert status == Status.PASS
    assert "largest 40 bytes" in summary
    big = {**_V5, "oversize": {"packet": "PUBLISH", "size": 329, "t": 0.1}}
    status, summary = _judge(case, [small], big)
    assert status == Status.FAIL
    assert "PUBLISH of 329 bytes" in summary
    assert "0x95" in summary
    held = _conn(packets=[_pk(0.0, "CONNECT")])
    assert "sent no PUBLISH at all, exit code 1: it held back" in _judge(case, [held], _V5, rc=1)[1]


def test_receive_maximum_sides() -> None:
    case = _m5("receive_maximum", "receive_maximum", params={"receive_maximum": 2})
    conn = _conn(packets=[_pk(0.0, "CONNECT")])
    ok = {**_V5, "qos_publishes": 5, "max_in_flight": 2}
    assert _judge(case, [conn], ok)[0] == Status.PASS
    over = {**ok, "exceeded": {"in_flight": 3, "t": 0.2}}
    status, summary = _judge(case, [conn], over)
    assert status == Status.FAIL
    assert "3 QoS 1/2 PUBLISHes unacknowledged" in summary
    assert "window was never full" in _judge(case, [conn], {**_V5, "qos_publishes": 1})[1]
    assert _judge(case, [conn], _V5)[0] == Status.ERROR


def test_topic_alias_sides() -> None:
    case = _m5("topic_alias", "topic_alias_maximum", params={"topic_alias_maximum": 2})
    conn = _conn(packets=[_pk(0.0, "CONNECT")])
    assert "[1, 2]" in _judge(case, [conn], {**_V5, "aliases": {1, 2}})[1]
    assert "no Topic Alias" in _judge(case, [conn], _V5)[1]
    bad = {**_V5, "bad_alias": {"alias": 3, "t": 0.1}}
    status, summary = _judge(case, [conn], bad)
    assert status == Status.FAIL
    assert "Topic Alias 3" in summary


def test_calm_sides_and_server_reference() -> None:
    params = {"reason_code": 0x9C, "server_reference": "127.0.0.1:{port}", "max_reconnects": 2}
    case = _m5("calm", "server_disconnect", params=params)
    state = {**_V5, "disconnect_t": 0.5}
    first = _conn(sni="localhost", closed=0.6, closed_by="edge")
    followed = _conn(2, opened=2.0, sni=None, closed=2.6)
    status, summary = _judge(case, [first, followed], state, rc=None)
    assert status == Status.PASS
    assert "followed the Server Reference" in summary
    storm = [first] + [
        _conn(i, opened=0.6 + i * 0.3, sni="localhost", closed=0.8 + i * 0.3) for i in range(2, 6)
    ]
    status, summary = _judge(case, storm, state, rc=None)
    assert status == Status.FAIL
    assert "4 reconnections" in summary
    assert "came back to the same server" in summary
    gone = _judge(case, [first], state, rc=0)
    assert gone[0] == Status.PASS
    assert "exited (code 0)" in gone[1]
    assert "did not reconnect within 10 s" in _judge(case, [first], state, rc=None)[1]
    early = _judge(case, [first], _V5, rc=0)
    assert early[0] == Status.ERROR
    assert "closed the connection before the edge's DISCONNECT" in early[1]


def test_assigned_id_sides() -> None:
    case = _m5("assigned_id", "assigned_client_id")
    state = {**_V5, "assigned": "edgesim-assigned-1"}
    first = _conn(packets=[_pk(0.0, "CONNECT", client_id="")], closed=1.0, closed_by="edge")
    good = _conn(2, opened=2.0, packets=[_pk(2.0, "CONNECT", client_id="edgesim-assigned-1")])
    assert _judge(case, [first, good], state)[0] == Status.PASS
    empty = _conn(2, opened=2.0, packets=[_pk(2.0, "CONNECT", client_id="")])
    status, summary = _judge(case, [first, empty], state)
    assert status == Status.FAIL
    assert "empty client id again" in summary
    assert "never reconnected" in _judge(case, [first], state)[1]
    own = _conn(packets=[_pk(0.0, "CONNECT", client_id="dev-1")])
    assert _judge(case, [own], state)[0] == Status.SKIP


def test_server_keep_alive_names_both_values() -> None:
    case = _m5("keepalive", "server_keep_alive")
    ok = _conn(packets=[_pk(0.0, "CONNECT"), _pk(1.5, "PINGREQ")])
    state = {**_V5, "keepalive": 2, "asked_keepalive": 60}
    status, summary = _judge(case, [ok], state)
    assert status == Status.PASS
    assert "Server Keep Alive; the device asked for 60 s" in summary
    late = _conn(packets=[_pk(0.0, "CONNECT"), _pk(45.0, "PINGREQ")])
    assert _judge(case, [late], state)[0] == Status.FAIL


def test_mqtt5_suite_loads_and_protocol_filter() -> None:
    from testkit.suites.model import RUNS_CASES

    suite = load_suite("mqtt5")
    assert {c.protocol for c in suite.cases} == {"mqtt5"}
    assert {c.params.get("reason_code") for c in suite.cases} >= {0x8B, 0x89, 0x8E, 0x9C, 0x9D}
    assert "mqtt5" not in RUNS_CASES["mqtt"]
    assert "mqtt" in RUNS_CASES["mqtt5"]
    with pytest.raises(SuiteError, match="behaviour 'server_disconnect' is mqtt5 only"):
        parse_suite(
            _HEAD
            + '[[case]]\nid = "a"\ntitle = "t"\nexpect = "calm"\nbehaviour = "server_disconnect"\nprotocol = "mqtt"\n'
        )
