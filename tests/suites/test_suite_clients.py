"""The suites against real clients nobody here wrote: mosquitto_pub, openssl s_client, curl, paho.

Each test runs a few cases of a built-in suite (or a faster copy of an MQTT case)
with the client as ``--device-cmd``, on loopback, and checks the verdicts. The
measured paho backoff is printed (``pytest -s`` shows it) and asserted.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import shutil
import socket
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from edge.cli import main as edgesim
from testkit.suites import (
    RunOptions,
    Status,
    SuiteReport,
    load_suite,
    parse_suite,
    run_suite,
    run_suite_sync,
)
from testkit.suites.fixture import SuiteRunner

pytestmark = pytest.mark.interop

REFUSE = (
    "expired", "not_yet_valid", "wrong_host", "untrusted_root", "self_signed",
    "missing_intermediate", "client_auth_eku", "sha1_signed", "rsa1024",
)  # fmt: skip
ACCEPT = (
    "good", "rsa2048", "rsa4096", "ec_p256", "ec_p384", "tls12_only", "tls13_only",
    "chain_4_intermediates", "sans_1000", "split_records",
)  # fmt: skip
PAHO = f"{sys.executable} {Path(__file__).with_name('paho_device.py')} {{host}} {{port}} {{ca}} {{cert}} {{key}}"
MOSQ = "mosquitto_pub -h {host} -p {port} --cafile {ca} --cert {cert} --key {key} -t suite/t -m hi -q 1"
CURL = "curl -sS --max-time 5 --cacert {ca} --cert {cert} --key {key} https://{host}:{port}/"


def _needs(tool: str) -> None:
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed")


def _run(
    suite: str, cmd: str, cases: tuple[str, ...] = (), protocol: str | None = None
) -> dict[str, tuple[str, str]]:
    report = _report(
        load_suite(suite) if not suite.lstrip().startswith("[") else parse_suite(suite),
        cmd,
        cases,
        protocol,
    )
    return {r.case.id: (r.status, r.summary) for r in report.results}


def _report(
    suite: object, cmd: str, cases: tuple[str, ...] = (), protocol: str | None = None
) -> SuiteReport:
    options = RunOptions(device_cmd=cmd, only=cases, protocol=protocol, console=io.StringIO())
    return run_suite_sync(suite, options)  # type: ignore[arg-type]


def _all(results: dict[str, tuple[str, str]], status: str) -> None:
    wrong = {k: v for k, v in results.items() if v[0] != status}
    assert not wrong, wrong


@pytest.mark.timeout(90)
def test_mosquitto_pub_verifying_passes_every_refuse_and_accept_case() -> None:
    _needs("mosquitto_pub")
    results = _run("tls", MOSQ, REFUSE + ACCEPT)
    assert len(results) == len(REFUSE + ACCEPT)
    _all(results, Status.PASS)
    assert "alert certificate_expired" in results["expired"][1]
    assert "alert unknown_ca" in results["untrusted_root"][1]


@pytest.mark.timeout(60)
def test_mosquitto_pub_insecure_fails_wrong_host_only() -> None:
    _needs("mosquitto_pub")
    results = _run("tls", MOSQ + " --insecure", ("wrong_host", "expired", "untrusted_root"))
    assert results["wrong_host"][0] == Status.FAIL
    assert "ACCEPTED a bad server (wrong_host)" in results["wrong_host"][1]
    assert results["expired"][0] == results["untrusted_root"][0] == Status.PASS


@pytest.mark.timeout(60)
def test_mosquitto_pub_alpn_case_both_sides() -> None:
    _needs("mosquitto_pub")
    assert (
        _run("tls", MOSQ + " --tls-alpn x-amzn-mqtt-ca", ("alpn_required",))["alpn_required"][0]
        == Status.PASS
    )
    status, summary = _run("tls", MOSQ, ("alpn_required",))["alpn_required"]
    assert status == Status.FAIL
    assert "offered no ALPN extension" in summary


@pytest.mark.timeout(60)
def test_accept_case_fail_side_with_a_device_that_trusts_the_wrong_roots() -> None:
    _needs("mosquitto_pub")
    wrong_ca = MOSQ.replace("--cafile {ca}", "--cafile {cert}")
    status, summary = _run("tls", wrong_ca, ("good",))["good"]
    assert status == Status.FAIL
    assert "refused a good server" in summary


S_CLIENT = (
    "sh -c 'printf x | openssl s_client -connect {host}:{port} -servername {host} "
    "-verify_hostname {host} -CAfile {ca} -cert {cert} -key {key} %s'"
)


@pytest.mark.timeout(90)
def test_openssl_s_client_passes_with_verify_return_error_and_fails_without() -> None:
    _needs("openssl")
    cases = (*REFUSE, "good", "chain_4_intermediates")
    strict = _run("tls", S_CLIENT % "-verify_return_error", cases)
    _all(strict, Status.PASS)
    lax = _run("tls", S_CLIENT % "", cases)
    assert {k for k, v in lax.items() if v[0] == Status.FAIL} == set(REFUSE)
    assert lax["good"][0] == Status.PASS


@pytest.mark.timeout(60)
def test_openssl_s_client_with_crl_check_refuses_the_revoked_case() -> None:
    _needs("openssl")
    crl = S_CLIENT % "-verify_return_error -crl_check -CRL {crl}"
    status, summary = _run("tls", crl, ("revoked",))["revoked"]
    assert status == Status.INFO
    assert "checks revocation" in summary
    status, summary = _run("tls", S_CLIENT % "-verify_return_error", ("revoked",))["revoked"]
    assert "does not check revocation" in summary


@pytest.mark.timeout(90)
def test_curl_passes_the_tls_cases_over_https_and_fails_them_with_insecure() -> None:
    _needs("curl")
    results = _run("tls", CURL, (*REFUSE, *ACCEPT, "alpn_required"), protocol="https")
    assert results.pop("alpn_required")[0] == Status.SKIP
    _all(results, Status.PASS)
    lax = _run("tls", CURL.replace("curl ", "curl -k "), REFUSE, protocol="https")
    _all(lax, Status.FAIL)


@pytest.mark.timeout(60)
def test_curl_https_behaviour_cases_both_sides() -> None:
    _needs("curl")
    good = _run("https", CURL + " --retry 1")
    _all(good, Status.PASS)
    assert "honouring Retry-After: 3" in good["http_503_retry_after"][1]
    assert "exit code 18" in good["http_closed_mid_response"][1]
    # curl honours Retry-After even with --retry-delay: a script retrying at once fails.
    hasty = _run("https", "sh -c '" + CURL + "; " + CURL + "'", ("http_503_retry_after",))
    assert hasty["http_503_retry_after"][0] == Status.FAIL
    blind = _run("https", "sh -c '" + CURL + "; exit 0'", ("http_closed_mid_response",))
    assert blind["http_closed_mid_response"][0] == Status.FAIL


FAST_MQTT = """
[suite]
name = "fast-mqtt"
description = "the mqtt suite's cases with short delays, for tests"
[[case]]
id = "connack_withheld"
title = "CONNACK withheld"
expect = "reconnect"
behaviour = "connack_withheld"
timeout_s = 15
[[case]]
id = "connack_refused_backoff"
title = "CONNACK refused, backoff"
expect = "backoff"
behaviour = "connack_refused"
timeout_s = 20
backoff = { attempts = 6, min_delay_s = 0.2 }
[[case]]
id = "close_after_connack_backoff"
title = "close after CONNACK, backoff"
expect = "backoff"
behaviour = "close_after_connack"
timeout_s = 20
backoff = { attempts = 6, min_delay_s = 0.2 }
[[case]]
id = "puback_withheld"
title = "PUBACK withheld"
expect = "redeliver"
behaviour = "puback_withheld"
params = { withhold_s = 1.0 }
timeout_s = 15
[[case]]
id = "suback_failure"
title = "SUBACK 0x80"
expect = "no_storm"
behaviour = "suback_failure"
params = { observe_s = 1.5 }
timeout_s = 15
[[case]]
id = "keepalive_pingreq"
title = "keep-alive"
expect = "keepalive"
timeout_s = 15
[[case]]
id = "session_present"
title = "session present"
expect = "session"
behaviour = "session_present"
params = { observe_s = 1.0 }
timeout_s = 15
"""


@pytest.mark.timeout(120)
def test_paho_reconnect_behaviour_is_measured() -> None:
    paho = (
        PAHO
        + " --min-delay 0.25 --max-delay 30 --keepalive 2 --persistent --subscribe a/b --publish-qos1"
    )
    report = _report(parse_suite(FAST_MQTT, "<fast>"), paho)
    by_id = {r.case.id: r for r in report.results}
    refused = by_id["connack_refused_backoff"]
    closed = by_id["close_after_connack_backoff"]
    print("\npaho reconnect_delay_set(0.25, 30):")
    for r in (refused, closed):
        print(f"  {r.case.id}: {r.status}: {r.summary}")
    # paho doubles its delay exactly, without jitter, after a refused CONNACK ...
    delays = refused.evidence["delays_s"]
    assert refused.status == Status.FAIL
    assert "no jitter" in refused.summary
    assert [round(b / a) for a, b in itertools.pairwise(delays)] == [2, 2, 2, 2]
    # ... and resets it on every accepted CONNACK, so an edge that drops it right
    # after CONNACK sees a constant minimum delay.
    assert closed.status == Status.FAIL
    assert "do not grow exponentially" in closed.summary
    assert max(closed.evidence["delays_s"]) < 0.6
    for case in (
        "connack_withheld",
        "puback_withheld",
        "suback_failure",
        "keepalive_pingreq",
        "session_present",
    ):
        assert by_id[case].status == Status.PASS, (case, by_id[case].summary)


@pytest.mark.timeout(60)
def test_paho_resubscribe_storm_fails_suback_case() -> None:
    paho = PAHO + " --min-delay 0.25 --subscribe a/b --resubscribe-on-failure"
    results = _run(FAST_MQTT, paho, ("suback_failure",))
    assert results["suback_failure"][0] == Status.FAIL
    assert "tight loop" in results["suback_failure"][1]


@pytest.mark.timeout(90)
def test_mosquitto_pub_fails_the_mqtt_behaviour_cases() -> None:
    # A one-shot client: it never reconnects, never pings, asks for a clean session.
    _needs("mosquitto_pub")
    suite = FAST_MQTT.replace("timeout_s = 15", "timeout_s = 4")
    results = _run(
        suite,
        MOSQ,
        (
            "connack_withheld",
            "connack_refused_backoff",
            "puback_withheld",
            "keepalive_pingreq",
            "session_present",
        ),
    )
    _all(results, Status.FAIL)
    assert "only 1 of 6" in results["connack_refused_backoff"][1]


@pytest.mark.timeout(60)
def test_cli_run_writes_reports_and_exits_1_on_a_must_failure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _needs("mosquitto_pub")
    report, junit, html = tmp_path / "r.json", tmp_path / "r.xml", tmp_path / "r.html"
    args = [
        "suite",
        "run",
        "tls",
        "--case",
        "wrong_host",
        "--case",
        "good",
        "--report",
        str(report),
        "--junit",
        str(junit),
        "--html",
        str(html),
    ]
    assert edgesim([*args, "--device-cmd", MOSQ]) == 0
    doc = json.loads(report.read_text())
    assert doc["ok"] is True
    assert [c["status"] for c in doc["cases"]] == ["pass", "pass"]
    assert doc["cases"][0]["evidence"]["connections"][0]["alert_from_device"]
    assert edgesim([*args, "--device-cmd", MOSQ + " --insecure"]) == 1
    assert 'failures="1"' in junit.read_text()
    assert "ACCEPTED a bad server" in html.read_text()
    out = capsys.readouterr().out
    assert "FAIL wrong_host" in out
    assert "suite tls: FAILED" in out


def test_cli_list_and_bad_suite(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert edgesim(["suite", "list"]) == 0
    assert "tls" in capsys.readouterr().out
    bad = tmp_path / "bad.toml"
    bad.write_text('[suite]\nname = "b"\n[[case]]\nid = "x"\ntitle = "t"\nexpect = "nah"\n')
    assert edgesim(["suite", "run", str(bad)]) == 1
    assert "bad.toml: case #1 (x): 'expect' is 'nah'" in capsys.readouterr().err


@pytest.mark.timeout(60)
def test_suite_fixture_runs_a_suite_and_one_case(suite: SuiteRunner) -> None:
    _needs("mosquitto_pub")
    report = suite.run("tls", device_cmd=MOSQ, cases=["expired", "good"])
    report.assert_ok()
    assert "PASS expired" in suite.console
    result = suite.case("tls", "wrong_host", device_cmd=MOSQ + " --insecure")
    assert result.status == Status.FAIL
    bad = suite.run("tls", device_cmd=MOSQ + " --insecure", cases=["wrong_host"])
    with pytest.raises(AssertionError, match="wrong_host: fail: ACCEPTED a bad server"):
        bad.assert_ok()


@pytest.mark.timeout(60)
async def test_suite_fixture_from_an_async_test(suite: SuiteRunner) -> None:
    _needs("mosquitto_pub")
    report = await suite.run_async("tls", device_cmd=MOSQ, cases=["self_signed"])
    report.assert_ok()


class _Prompted(io.StringIO):
    """A console that starts a bench 'device' each time the engine asks for one."""

    def __init__(self, start: Callable[[], None]) -> None:
        super().__init__()
        self._start = start

    def write(self, s: str) -> int:
        if "connect or reconnect the device now" in s:
            self._start()
        return super().write(s)


@pytest.mark.timeout(60)
async def test_bench_device_mode_prompts_and_takes_the_next_connection(tmp_path: Path) -> None:
    _needs("mosquitto_pub")
    procs: list[asyncio.subprocess.Process] = []
    workdir = tmp_path / "bench"
    port_holder: dict[str, int] = {}

    def start() -> None:
        # The bench device: the same mosquitto_pub, started by hand (here: by the prompt).
        cmd = MOSQ.format(
            host="localhost",
            port=port_holder["port"],
            ca=workdir / "ca.pem",
            cert=workdir / "device.pem",
            key=workdir / "device.key",
        )

        async def run() -> None:
            procs.append(await asyncio.create_subprocess_exec(*cmd.split()))

        asyncio.get_running_loop().create_task(run())

    console = _Prompted(start)
    options = RunOptions(
        device_cmd=None,
        only=("expired", "good"),
        workdir=workdir,
        listen_port=_free_port(),
        console=console,
    )
    port_holder["port"] = options.listen_port
    report = await run_suite(load_suite("tls"), options)
    for proc in procs:
        await asyncio.wait_for(proc.wait(), 10)
    assert [r.status for r in report.results] == [Status.PASS, Status.PASS], console.getvalue()
    assert console.getvalue().count("connect or reconnect the device now") == 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


EDGESIM_DEVICE = (
    f"{Path(sys.executable).with_name('edgesim')} device connect --url mqtts://{{host}}:{{port}} "
    "--ca {ca} --cert {cert} --key {key} --publish suite/t hi --timeout 5"
)


@pytest.mark.timeout(120)
def test_edgesim_device_connect_and_its_insecure_flag() -> None:
    # About 1.5 s per case (a fresh Python each time): the refuse cases once, and the
    # ones a hostname-check bypass could plausibly touch with --insecure.
    strict = _run("tls", EDGESIM_DEVICE, (*REFUSE, "good", "alpn_required"))
    _all(strict, Status.PASS)
    some = ("wrong_host", "expired", "untrusted_root", "self_signed", "good")
    lax = _run("tls", EDGESIM_DEVICE + " --insecure", some)
    assert {k for k, v in lax.items() if v[0] == Status.FAIL} == {"wrong_host"}


@pytest.mark.timeout(60)
def test_max_fragment_length_ignored_shows_the_devices_limit() -> None:
    _needs("openssl")
    small = S_CLIENT % "-verify_return_error -maxfraglen 512"
    status, summary = _run("tls", small, ("mfl_ignored",))["mfl_ignored"]
    assert status == Status.INFO
    assert "asked for max_fragment_length and did NOT take 16 KiB records" in summary
    assert "alert record_overflow" in summary
    status, summary = _run("tls", S_CLIENT % "-verify_return_error", ("mfl_ignored",))[
        "mfl_ignored"
    ]
    assert "did not ask for a smaller record size and took 16 KiB records" in summary
