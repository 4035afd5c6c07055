"""The device's TLS driver, sans-I/O: client and server SSL objects joined in memory.

No sockets: the bytes the client produces are fed to an in-memory server
``SSLObject`` and back, so every assertion is about what the client saw in them.
"""

from __future__ import annotations

import ssl
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from badcerts import with_bad_ip_san, with_version
from cryptography.hazmat.primitives.serialization import Encoding
from testmodules import load_device_support

from certs.authority import CertificateAuthority
from devices.tlsclient import (
    ApplicationData,
    CertificateRequest,
    ClientCertificateSent,
    ClientHelloSent,
    HandshakeComplete,
    RecordReader,
    ServerCertificateSeen,
    ServerHelloReceived,
    TlsAlert,
    TlsClient,
    TlsEvent,
    alert_name_from_reason,
    certificate_summary,
    make_device_context,
    parse_certificate_request_12,
    parse_client_hello,
)

support = load_device_support()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> object:
    """A PKI around the current time (OpenSSL checks validity with the system clock)."""
    return support.make_pki(tmp_path_factory.mktemp("pki"), datetime.now(UTC))


def _server_context(pki: object, *, version: ssl.TLSVersion, verify: bool = True) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ctx.maximum_version = version
    ctx.load_cert_chain(pki.server.cert, pki.server.key)  # type: ignore[attr-defined]
    if verify:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cafile=str(pki.ca_pem))  # type: ignore[attr-defined]
    return ctx


class MemoryServer:
    """An in-memory TLS server: feed it client bytes, collect its answers."""

    def __init__(self, ctx: ssl.SSLContext) -> None:
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.incoming, self.outgoing, server_side=True)
        self.done = False
        self.error: ssl.SSLError | None = None
        self.received = b""

    def feed(self, data: bytes) -> bytes:
        self.incoming.write(data)
        if not self.done and self.error is None:
            try:
                self.obj.do_handshake()
                self.done = True
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError as exc:
                self.error = exc
        if self.done:
            try:
                self.received += self.obj.read(65536)
            except (ssl.SSLWantReadError, ssl.SSLError) as exc:
                if not isinstance(exc, ssl.SSLWantReadError):
                    self.error = exc
        return self.outgoing.read()


def converse(client: TlsClient, server: MemoryServer, rounds: int = 6) -> list[TlsEvent]:
    """Shuttle bytes until both sides go quiet; return every client event."""
    events: list[TlsEvent] = []
    client.initiate()
    for _ in range(rounds):
        out = client.data_to_send()
        back = server.feed(out) if out else b""
        if back:
            client.receive_data(back)
        events += client.events_received()
        if not out and not back:
            break
    return events


def _client(
    pki: object,
    *,
    cert: object | None,
    ca: Path | None = None,
    keylog: Path | None = None,
    inspect: bool = False,
    hostname: str = "localhost",
) -> TlsClient:
    ctx = make_device_context(
        ca_pem=(ca or pki.ca_pem).read_text(),  # type: ignore[attr-defined]
        cert_file=str(cert.cert) if cert is not None else None,  # type: ignore[attr-defined]
        key_file=str(cert.key) if cert is not None else None,  # type: ignore[attr-defined]
        alpn=("mqtt",),
        keylog_filename=str(keylog) if keylog else None,
    )
    return TlsClient(ctx, hostname, inspect=inspect)


def of(events: list[TlsEvent], kind: type) -> list:  # type: ignore[type-arg]
    return [e for e in events if isinstance(e, kind)]


@pytest.fixture(autouse=True)
def _no_env_keylog(monkeypatch: pytest.MonkeyPatch) -> None:
    # A developer's SSLKEYLOGFILE must not change what these tests see.
    monkeypatch.delenv("SSLKEYLOGFILE", raising=False)


# --------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("reason", "name"),
    [
        ("TLSV1_ALERT_UNKNOWN_CA", "unknown_ca"),
        ("TLSV13_ALERT_CERTIFICATE_REQUIRED", "certificate_required"),
        ("SSLV3_ALERT_CERTIFICATE_EXPIRED", "certificate_expired"),
        ("SSLV3_ALERT_CERTIFICATE_REVOKED", "certificate_revoked"),
        ("SSLV3_ALERT_BAD_CERTIFICATE", "bad_certificate"),
        ("SSLV3_ALERT_UNSUPPORTED_CERTIFICATE", "unsupported_certificate"),
        ("TLSV1_ALERT_PROTOCOL_VERSION", "protocol_version"),
        ("SSLV3_ALERT_HANDSHAKE_FAILURE", "handshake_failure"),
        ("TLSV1_UNRECOGNIZED_NAME", "unrecognized_name"),
        ("CERTIFICATE_VERIFY_FAILED", None),
        (None, None),
    ],
)
def test_openssl_reasons_map_to_alert_names(reason: str | None, name: str | None) -> None:
    assert alert_name_from_reason(reason) == name


def test_client_hello_is_read_off_the_wire(pki: object) -> None:
    client = _client(pki, cert=pki.device)  # type: ignore[attr-defined]
    client.initiate()
    wire = client.data_to_send()
    (hello,) = of(client.events_received(), ClientHelloSent)
    assert hello.sni == "localhost"
    assert hello.alpn == ("mqtt",)
    assert hello.versions[0] == "TLSv1.3"
    assert "TLSv1.2" in hello.versions
    assert hello.size == len(wire) - 5  # one record: 5-byte header + the message
    # The same bytes parsed directly give the same answer and a 32-byte random.
    random, again = parse_client_hello(wire[9:])
    assert len(random) == 32
    assert again == hello


def test_record_reader_reassembles_split_records_and_messages() -> None:
    # Two handshake messages in one record, the record cut in three pieces.
    msg1 = bytes([2]) + (3).to_bytes(3, "big") + b"abc"
    msg2 = bytes([14]) + (0).to_bytes(3, "big")
    body = msg1 + msg2
    record = bytes([22, 3, 3]) + len(body).to_bytes(2, "big") + body
    reader = RecordReader()
    assert reader.feed(record[:3]) == []
    assert reader.feed(record[3:8]) == []
    items = reader.feed(record[8:])
    assert items == [("handshake", (2, b"abc")), ("handshake", (14, b""))]
    alert = bytes([21, 3, 3, 0, 2, 2, 48])
    assert reader.feed(alert) == [("alert", (2, 48))]
    reader.encrypted_from_now()
    assert reader.feed(record)[0][0] == "encrypted"


def test_certificate_request_12_counts_acceptable_ca_names() -> None:
    names = [b"\x30\x03abc", b"\x30\x01x"]
    listed = b"".join(len(n).to_bytes(2, "big") + n for n in names)
    body = (
        b"\x01\x40"  # one certificate type: ecdsa_sign
        + b"\x00\x02\x04\x03"  # one signature algorithm
        + len(listed).to_bytes(2, "big")
        + listed
    )
    assert parse_certificate_request_12(body) == 2
    with pytest.raises(ValueError, match="truncated"):
        parse_certificate_request_12(body[:-1])


# --------------------------------------------------------------------------- TLS 1.2


def test_tls12_shows_request_and_client_certificate_in_cleartext(pki: object) -> None:
    server = MemoryServer(_server_context(pki, version=ssl.TLSVersion.TLSv1_2))
    client = _client(pki, cert=pki.device)  # type: ignore[attr-defined]
    events = converse(client, server)
    (hello,) = of(events, ServerHelloReceived)
    assert hello.version == "TLSv1.2"
    (seen,) = of(events, ServerCertificateSeen)
    assert seen.source == "cleartext"
    server_der = pki.server.issued.cert.public_bytes(Encoding.DER)  # type: ignore[attr-defined]
    assert seen.chain[0] == server_der
    (request,) = of(events, CertificateRequest)
    assert request.requested is True
    assert request.how == "cleartext"
    # Python's ssl never calls SSL_CTX_set_client_CA_list: the list is empty.
    assert request.ca_names == 0
    (sent,) = of(events, ClientCertificateSent)
    assert sent.count is not None
    assert sent.count >= 1
    (done,) = of(events, HandshakeComplete)
    assert done.version == "TLSv1.2"
    assert server.done


def test_tls12_server_not_asking_is_seen(pki: object) -> None:
    server = MemoryServer(_server_context(pki, version=ssl.TLSVersion.TLSv1_2, verify=False))
    client = _client(pki, cert=pki.device)  # type: ignore[attr-defined]
    events = converse(client, server)
    (request,) = of(events, CertificateRequest)
    assert request.requested is False
    assert not of(events, ClientCertificateSent)


def test_tls12_unknown_ca_alert_arrives_during_the_handshake(pki: object) -> None:
    server = MemoryServer(_server_context(pki, version=ssl.TLSVersion.TLSv1_2))
    client = _client(pki, cert=pki.foreign)  # type: ignore[attr-defined]
    events = converse(client, server)
    (alert,) = of(events, TlsAlert)
    assert (alert.name, alert.sent_by) == ("unknown_ca", "edge")
    assert not of(events, HandshakeComplete)


# --------------------------------------------------------------------------- TLS 1.3


def test_tls13_without_the_key_log_sees_only_the_leaf(pki: object) -> None:
    server = MemoryServer(_server_context(pki, version=ssl.TLSVersion.TLSv1_3))
    client = _client(pki, cert=pki.device)  # type: ignore[attr-defined]
    events = converse(client, server)
    assert not of(events, ServerCertificateSeen)
    (done,) = of(events, HandshakeComplete)
    assert done.version == "TLSv1.3"
    assert done.alpn is None  # the server offers no ALPN
    assert done.peer_certificate["subject"] == ((("commonName", "127.0.0.1"),),)


@pytest.mark.parametrize(
    ("verify", "has_cert", "requested", "sent", "records"),
    [
        (True, True, True, None, 3),  # Certificate, CertificateVerify, Finished
        (True, False, True, 0, 2),  # empty Certificate, Finished
        (False, True, False, None, 1),  # Finished alone
    ],
)
def test_tls13_request_is_inferred_from_the_devices_flight(
    pki: object,
    verify: bool,
    has_cert: bool,
    requested: bool,
    sent: int | None,
    records: int,
) -> None:
    server = MemoryServer(_server_context(pki, version=ssl.TLSVersion.TLSv1_3, verify=verify))
    client = _client(pki, cert=pki.device if has_cert else None)  # type: ignore[attr-defined]
    events = converse(client, server)
    (request,) = of(events, CertificateRequest)
    assert request.requested is requested
    assert request.how == f"inferred: the device's encrypted flight has {records} record(s)"
    certs = of(events, ClientCertificateSent)
    if requested:
        (cert,) = certs
        assert cert.count == sent
    else:
        assert not certs


def test_tls13_handshake_is_decrypted_from_the_key_log(pki: object, tmp_path: Path) -> None:
    server = MemoryServer(_server_context(pki, version=ssl.TLSVersion.TLSv1_3))
    client = _client(pki, cert=pki.device, keylog=tmp_path / "keys", inspect=True)  # type: ignore[attr-defined]
    events = converse(client, server)
    (request,) = of(events, CertificateRequest)
    assert (request.requested, request.how) == (True, "decrypted")
    (seen,) = of(events, ServerCertificateSeen)
    assert seen.source == "decrypted"
    assert len(seen.chain) >= 1
    (sent,) = of(events, ClientCertificateSent)
    assert sent.how == "decrypted"
    assert sent.count is not None
    assert sent.count >= 1


def test_tls13_server_not_asking_is_seen_when_decrypted(pki: object, tmp_path: Path) -> None:
    server = MemoryServer(_server_context(pki, version=ssl.TLSVersion.TLSv1_3, verify=False))
    client = _client(pki, cert=pki.device, keylog=tmp_path / "keys", inspect=True)  # type: ignore[attr-defined]
    events = converse(client, server)
    (request,) = of(events, CertificateRequest)
    assert (request.requested, request.how) == (False, "decrypted")


def test_tls13_refusal_arrives_after_the_device_handshake(pki: object) -> None:
    server = MemoryServer(_server_context(pki, version=ssl.TLSVersion.TLSv1_3))
    client = _client(pki, cert=None)
    events = converse(client, server)
    # The device finished its side before the edge judged it ...
    assert of(events, HandshakeComplete)
    # ... and reads the edge's alert only afterwards.
    (alert,) = of(events, TlsAlert)
    assert (alert.name, alert.sent_by) == ("certificate_required", "edge")
    assert server.error is not None


def test_sending_after_a_refusal_is_quiet(pki: object) -> None:
    server = MemoryServer(_server_context(pki, version=ssl.TLSVersion.TLSv1_3))
    client = _client(pki, cert=None)
    converse(client, server)
    assert client.closed
    client.send(b"CONNECT")  # no foreign exception, no second report
    assert client.events_received() == []
    assert client.data_to_send() == b""


def test_application_data_flows_both_ways(pki: object) -> None:
    server = MemoryServer(_server_context(pki, version=ssl.TLSVersion.TLSv1_3))
    client = _client(pki, cert=pki.device)  # type: ignore[attr-defined]
    converse(client, server)
    client.send(b"ping")
    server.feed(client.data_to_send())
    assert server.received == b"ping"
    server.obj.write(b"pong")
    client.receive_data(server.outgoing.read())
    assert [e.data for e in of(client.events_received(), ApplicationData)] == [b"pong"]


# --------------------------------------------------------------------------- device verdicts


def test_untrusted_server_is_the_device_verdict(pki: object) -> None:
    server = MemoryServer(_server_context(pki, version=ssl.TLSVersion.TLSv1_3))
    client = _client(pki, cert=pki.device, ca=pki.other_ca_pem)  # type: ignore[attr-defined]
    events = converse(client, server)
    (alert,) = of(events, TlsAlert)
    assert alert.sent_by == "device"
    assert alert.reason == "server-cert-untrusted"
    assert alert.verify_message


def test_hostname_mismatch_is_the_device_verdict(pki: object) -> None:
    server = MemoryServer(_server_context(pki, version=ssl.TLSVersion.TLSv1_2))
    client = _client(pki, cert=pki.device, hostname="wrong.example")  # type: ignore[attr-defined]
    events = converse(client, server)
    (alert,) = of(events, TlsAlert)
    assert alert.reason == "server-cert-hostname-mismatch"
    assert "wrong.example" in alert.verify_message


def test_bad_ca_text_is_a_clear_error() -> None:
    from devices.tlsclient import TlsFailure

    with pytest.raises(TlsFailure, match="CA bundle") as info:
        make_device_context(ca_pem="not a certificate")
    assert info.value.reason == "bad-ca"


def test_sslkeylogfile_is_honoured(
    pki: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A lean context ignores SSLKEYLOGFILE unless told; the device tells it.
    monkeypatch.setenv("SSLKEYLOGFILE", str(tmp_path / "wireshark.keys"))
    server = MemoryServer(_server_context(pki, version=ssl.TLSVersion.TLSv1_3))
    client = _client(pki, cert=pki.device)  # type: ignore[attr-defined]
    converse(client, server)
    lines = (tmp_path / "wireshark.keys").read_text().splitlines()
    assert any(line.startswith("CLIENT_HANDSHAKE_TRAFFIC_SECRET ") for line in lines)


def test_the_trace_summary_of_a_certificate_cryptography_cannot_read() -> None:
    # Both gaps between OpenSSL and cryptography: a version field of 126 (the
    # loader raises InvalidVersion) and an IP address SAN of 5 bytes (reading
    # the extensions raises ValueError). A trace says so and carries on.
    ca = CertificateAuthority.create_root("Trace Root")
    now = datetime.now(UTC)
    cert, _ = with_bad_ip_san(ca, "odd", start=now, end=now + timedelta(days=1))
    der = cert.public_bytes(Encoding.DER)
    summary = certificate_summary(der)
    assert summary["subject"] == "CN=odd"
    (san,) = summary["san"]
    assert san.startswith("(extensions cannot be parsed: ")
    unreadable = certificate_summary(with_version(ca.cert.public_bytes(Encoding.DER), 126))
    assert unreadable == {"error": "not a parseable certificate"}
