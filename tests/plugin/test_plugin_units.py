"""The plugin's pieces used directly (the plugin is loaded here by its entry point too).

Pure parts (event matching, the PKI's defective material, option checks) need no
network; the rest starts real edges on loopback port 0.
"""

from __future__ import annotations

import asyncio
import re
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from testkit.pytest_plugin import (
    DEFECTS,
    DeviceFactory,
    EdgeFactory,
    EdgeHandle,
    EdgeOptions,
    EdgeStartError,
    EventTimeout,
    FleetRunner,
    LoopThread,
    OperationTimeout,
    Pki,
    TrustOperationError,
    UsageError,
    event_matcher,
)

NOW = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.fixture(scope="module")
def fixed_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A PKI made at a fixed time, so validity windows can be asserted exactly."""
    return Pki(tmp_path_factory.mktemp("fixed") / "pki", now=NOW)


# -- event matching ---------------------------------------------------------------


EVENT = {"id": 7, "kind": "tls.refused", "outcome": "refused", "alert": "unknown_ca"}


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({}, True),
        ({"kind": "tls.refused"}, True),
        ({"kind": "tls."}, True),
        ({"kind": "tls"}, False),
        ({"kind": "tls.accepted"}, False),
        ({"outcome": "refused", "alert": "unknown_ca"}, True),
        ({"alert": "certificate_expired"}, False),
        ({"identity": "default/dev-1"}, False),
    ],
)
def test_event_matcher_filters(filters: dict[str, str], expected: bool) -> None:
    assert event_matcher(None, **filters)(EVENT) is expected


def test_event_matcher_needs_predicate_and_filters() -> None:
    assert event_matcher(lambda e: e["id"] > 5, kind="tls.")(EVENT)
    assert not event_matcher(lambda e: e["id"] > 7, kind="tls.")(EVENT)
    assert not event_matcher(lambda e: True, outcome="accepted")(EVENT)


# -- the PKI -----------------------------------------------------------------------


def _cert(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


def test_healthy_device_material(fixed_pki: Pki) -> None:
    creds = fixed_pki.device("dev-1")
    cert = _cert(creds.cert_pem)
    assert cert.subject.rfc4514_string() == "CN=dev-1"
    assert cert.issuer == fixed_pki.intermediate.cert.subject
    assert cert.not_valid_before_utc <= NOW < cert.not_valid_after_utc
    assert creds.cert_path.read_bytes() == creds.cert_pem
    assert creds.key_path.read_bytes() == creds.key_pem
    assert creds.chain_path is not None
    assert creds.chain_path.read_bytes() == creds.chain_pem == fixed_pki.intermediate.cert_pem
    assert creds.fullchain_pem == creds.cert_pem + creds.chain_pem
    assert creds.expected == "accept"
    assert fixed_pki.device("dev-1") is creds
    spec = creds.spec("client-1")
    assert (spec.id, spec.client_id, spec.expect) == ("dev-1", "client-1", "accept")


def test_expired_and_not_yet_valid_sit_around_now(fixed_pki: Pki) -> None:
    expired = _cert(fixed_pki.device("dev-x", "expired").cert_pem)
    assert expired.not_valid_after_utc == NOW - timedelta(days=1)
    early = _cert(fixed_pki.device("dev-x", "not-yet-valid").cert_pem)
    assert early.not_valid_before_utc == NOW + timedelta(days=1)
    assert fixed_pki.device("dev-x", "expired").expected == "certificate_expired"


def test_wrong_ca_device_comes_from_the_rogue_root(fixed_pki: Pki) -> None:
    creds = fixed_pki.device("dev-w", "wrong-ca")
    cert = _cert(creds.cert_pem)
    rogue = fixed_pki.rogue_root.cert
    assert cert.issuer == rogue.subject
    assert rogue.public_key() != fixed_pki.root.cert.public_key()
    assert creds.chain_path is None
    assert creds.chain_pem == b""


def test_no_client_auth_device_is_for_servers_only(fixed_pki: Pki) -> None:
    cert = _cert(fixed_pki.device("dev-e", "wrong-eku").cert_pem)
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert fixed_pki.device("dev-e", "no-client-auth").expected == "unsupported_certificate"


def test_crl_lists_revoked_devices_and_counts_up(fixed_pki: Pki) -> None:
    revoked = fixed_pki.device("dev-r", "revoked")
    first = x509.load_pem_x509_crl(fixed_pki.crl_pem())
    second = x509.load_pem_x509_crl(fixed_pki.crl_pem())
    assert first.get_revoked_certificate_by_serial_number(revoked.serial) is not None
    assert first.get_revoked_certificate_by_serial_number(fixed_pki.device("dev-1").serial) is None
    assert first.is_signature_valid(fixed_pki.intermediate.cert.public_key())  # type: ignore[arg-type]
    assert first.issuer == fixed_pki.intermediate.cert.subject
    number = x509.CRLNumber
    assert (
        second.extensions.get_extension_for_class(number).value.crl_number
        == first.extensions.get_extension_for_class(number).value.crl_number + 1
    )
    assert revoked.serial in fixed_pki.revoked_serials


@pytest.mark.parametrize(
    ("device_id", "fault", "message"),
    [
        ("dev/1", None, "pki.device('dev/1'): a device id is letters"),
        ("", None, "pki.device(''): a device id"),
        ("dev-1", "broken", "unknown fault 'broken'; choose one of " + ", ".join(DEFECTS)),
    ],
)
def test_bad_device_requests_name_the_problem(
    fixed_pki: Pki, device_id: str, fault: str | None, message: str
) -> None:
    with pytest.raises(UsageError) as caught:
        fixed_pki.device(device_id, fault)
    assert message in str(caught.value)


def test_fleet_devices_are_issued_once(fixed_pki: Pki) -> None:
    five = fixed_pki.fleet_entries(5)
    assert [e.id for e in five] == [f"fleet-{i:05d}" for i in range(5)]
    assert fixed_pki.fleet_entries(3) == five[:3]
    assert all(e.cert.is_file() and e.key.is_file() for e in five)


# -- options -----------------------------------------------------------------------


def test_unknown_edge_option_is_named() -> None:
    with pytest.raises(UsageError, match=r"unknown option\(s\) polcy; known: admin, capture"):
        EdgeOptions.from_kwargs({"polcy": "open"}, "edge_factory()")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"policy": "lenient"}, "policy='lenient': expected 'open', 'default' or a table"),
        ({"tls_min": "1.9"}, "unknown TLS version '1.9'"),
        ({"identity_rule": "serial"}, "unknown identity rule 'serial'"),
        ({"propagation_delay": -1.0}, "propagation_delay: must be >= 0"),
    ],
)
def test_bad_edge_options_fail_before_starting(
    pki: Pki, tmp_path: Path, options: dict[str, object], message: str
) -> None:
    factory = EdgeFactory(pki, lambda: tmp_path)
    with pytest.raises(UsageError, match=re.escape(message)):
        factory(**options)
    assert factory.edges == []


# -- the loop thread -------------------------------------------------------------------


def test_loop_thread_runs_and_times_out() -> None:
    loop = LoopThread(name="edgesim-test-loop")
    try:

        async def answer() -> int:
            return 42

        async def never() -> None:
            await asyncio.get_running_loop().create_future()

        assert loop.run(answer(), 5, "answer") == 42
        with pytest.raises(OperationTimeout, match=r"waiting did not finish within 0\.1 s"):
            loop.run(never(), 0.1, "waiting")
    finally:
        loop.close()
    with pytest.raises(UsageError, match="closed"):
        loop.run(answer(), 5)


async def test_loop_thread_from_an_async_test() -> None:
    loop = LoopThread(name="edgesim-test-loop")
    try:

        async def where() -> str:
            return threading.current_thread().name

        assert await loop.run_async(where()) == "edgesim-test-loop"
    finally:
        loop.close()


# -- edges -------------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_event_timeout_lists_the_last_events(edge: EdgeHandle) -> None:
    with pytest.raises(EventTimeout) as caught:
        edge.wait_for_event(kind="tls.refused", alert="unknown_ca", timeout=0.2)
    text = str(caught.value)
    assert "kind='tls.refused', alert='unknown_ca' within 0.2 s" in text
    assert "edge.started" in text
    assert isinstance(caught.value, TimeoutError)
    started = edge.wait_for_event(kind="edge.started", timeout=5)
    assert started["ports"] == edge.ports
    assert edge.events.last_id >= started["id"]


@pytest.mark.timeout(30)
def test_refused_upload_raises_trust_error(edge: EdgeHandle) -> None:
    with pytest.raises(TrustOperationError, match="upload to set 'junk'"):
        edge.trust.upload("junk", b"not a certificate")
    assert [s.name for s in edge.trust.sets()] == ["default"]
    assert edge.trust.bindings() == {"*": "default"}
    assert edge.events.query(kind="trust.refused")


@pytest.mark.timeout(30)
@pytest.mark.edgesim(https=False, admin=False)
def test_marker_options_and_missing_listeners(edge: EdgeHandle, device: DeviceFactory) -> None:
    assert set(edge.ports) == {"mqtt"}
    with pytest.raises(UsageError, match="no https listener \\(start it with https=True\\)"):
        _ = edge.wss_json_url
    with pytest.raises(
        UsageError, match=r"device\(protocol='ftp'\): choose one of mqtt, https, wss"
    ):
        device("dev-1", protocol="ftp")
    with pytest.raises(UsageError, match="give fault= with a device id"):
        device(edge.pki.device("dev-1"), fault="expired")


@pytest.mark.timeout(30)
def test_stopped_edge_refuses_use(edge_factory: EdgeFactory) -> None:
    handle = edge_factory(admin=False)
    handle.stop()
    handle.stop()
    assert handle.stopped
    with pytest.raises(UsageError, match="this edge is stopped"):
        handle.events.query()


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"devices": 0}, "fleet(devices=0): between 1 and 2000"),
        ({"protocol": "ftp"}, "fleet(protocol='ftp'): choose mix, mqtt, https or wss"),
        ({"faults": {"not-yet-valid": 1}}, "fleet(faults={'not-yet-valid': ...}): unknown fault"),
        ({"faults": {"expired": -1}}, "a count >= 0"),
        ({"ramp": 0}, "must be positive"),
        ({"devices": 2, "faults": {"expired": 3}}, "fleet(): "),
    ],
)
def test_bad_fleet_requests_name_the_problem(
    fleet: FleetRunner, kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(UsageError) as caught:
        fleet(**kwargs)  # type: ignore[arg-type]
    assert message in str(caught.value)
    assert fleet.reports == []


@pytest.mark.timeout(30)
def test_device_handle_timeouts_and_close(device: DeviceFactory) -> None:
    with device("dev-1", protocol="mqtt", timeout=5) as dev:
        assert dev.subscribe("devices/dev-1/quiet").ok
        with pytest.raises(OperationTimeout, match=r"device dev-1 \(mqtt\): receive did not"):
            dev.receive(timeout=0.2)
        assert dev.url.startswith("mqtts://127.0.0.1:")
    assert dev.closed
    with pytest.raises(UsageError, match="device dev-1: publish devices/dev-1/x after close"):
        dev.publish("devices/dev-1/x", b"late")
    dev.close()


@pytest.mark.timeout(30)
def test_edge_that_cannot_start_says_why(edge_factory: EdgeFactory) -> None:
    with pytest.raises(EdgeStartError, match=r"the edge did not start: \[policy\]"):
        edge_factory(policy={"rules": "not a list"})
    assert edge_factory.edges == []


@pytest.mark.timeout(30)
@pytest.mark.edgesim(https=False, admin=False)
def test_add_server_cert_serves_its_hostname(edge: EdgeHandle) -> None:
    import socket
    import ssl

    deployment = edge.trust.add_server_cert("web", ["devices.example.com"], min_tls="1.3")
    assert (deployment.version, deployment.settings.set_name) == (1, "default")
    creds = edge.pki.device("dev-sni")
    folder = edge.pki.dir / "sni-test"
    folder.mkdir(exist_ok=True)
    (folder / "dev.pem").write_bytes(creds.fullchain_pem)
    (folder / "dev.key").write_bytes(creds.key_pem)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cadata=edge.pki.server_ca_pem.decode())
    ctx.load_cert_chain(str(folder / "dev.pem"), str(folder / "dev.key"))
    raw = socket.create_connection(("127.0.0.1", edge.ports["mqtt"]), timeout=10)
    with ctx.wrap_socket(raw, server_hostname="devices.example.com") as conn:
        cert = x509.load_der_x509_certificate(conn.getpeercert(True) or b"")
        assert cert.subject.rfc4514_string() == "CN=devices.example.com"
        assert conn.version() == "TLSv1.3"
    with pytest.raises(TrustOperationError, match="deploy server certificate 'web'"):
        edge.trust.deploy_server_cert("web", set_name="absent")
    assert edge.trust.rollback_server_cert("web") is None  # the first deployment: undeployed
