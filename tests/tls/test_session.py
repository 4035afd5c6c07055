"""The sans-I/O server session, fed bytes from an in-memory ``ssl`` client: no sockets."""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from edge.identity import describe_certificate
from edge.tls.clienthello import ClientFlightReader
from edge.tls.contexts import ContextCache, TlsSettings
from edge.tls.keylog import KeyLogTap, decrypt_client_certificates, hkdf_expand_label
from edge.tls.session import TlsServerSession, TlsState
from edge.tls.verdict import explain


@dataclass
class Wire:
    """A client SSLObject and a server session joined by memory, with the client's bytes recorded."""

    client: ssl.SSLObject
    c_in: ssl.MemoryBIO
    c_out: ssl.MemoryBIO
    server: TlsServerSession
    reader: ClientFlightReader = field(default_factory=ClientFlightReader)
    client_error: ssl.SSLError | None = None

    def pump(self) -> None:
        """Move bytes both ways until neither side has anything to say."""
        for _ in range(50):
            moved = False
            try:
                self.client.do_handshake()
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError as exc:
                self.client_error = self.client_error or exc
            data = self.c_out.read()
            if data:
                moved = True
                self.reader.receive_data(data)
                self.server.receive_data(data)
            out = self.server.data_to_send()
            if out:
                moved = True
                self.c_in.write(out)
            if not moved:
                return

    def client_read(self) -> bytes:
        """Read application data on the client; records an alert as ``client_error``."""
        self.pump()
        try:
            return self.client.read(65536)
        except ssl.SSLWantReadError:
            return b""
        except ssl.SSLError as exc:
            self.client_error = self.client_error or exc
            return b""


def connect(
    pki: Any,
    device: Any,
    *,
    crl_pem: bytes = b"",
    version: ssl.TLSVersion | None = None,
    server_min: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2,
    ca_set: Any = None,
) -> Wire:
    cache = ContextCache(
        TlsSettings(cert_file=pki.server_cert, key_file=pki.server_key, minimum_version=server_min)
    )
    server = TlsServerSession(cache.context_for(ca_set or pki.chain_set(crl_pem=crl_pem)))
    cctx = pki.client_context(device, version=version)
    c_in, c_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = cctx.wrap_bio(c_in, c_out, server_hostname="localhost")
    wire = Wire(client, c_in, c_out, server)
    wire.pump()
    return wire


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_accepted_device_exchanges_data_and_closes(pki: Any, version: ssl.TLSVersion) -> None:
    wire = connect(pki, pki.device("dev-ok"), version=version)
    assert wire.server.state is TlsState.ESTABLISHED
    assert wire.server.handshake_done
    peer = wire.server.ssl_object.getpeercert(binary_form=True)
    assert peer is not None
    info = describe_certificate(peer)
    assert info is not None
    assert "CN=dev-ok" in info.subject
    wire.client.write(b"\x10hello")
    wire.pump()
    assert wire.server.application_data() == b"\x10hello"
    wire.server.send(b"reply" * 10_000)
    received = b""
    while len(received) < 50_000:
        chunk = wire.client_read()
        assert chunk, "the client got no data"
        received += chunk
    assert received == b"reply" * 10_000
    wire.server.close()
    wire.c_in.write(wire.server.data_to_send())
    assert wire.client.read(10) == b""  # what SSLObject returns on close_notify
    assert wire.server.state.value == "closed"  # .value: mypy narrowed the enum above


def test_client_close_notify_is_seen(pki: Any) -> None:
    wire = connect(pki, pki.device("dev-bye"))
    with pytest.raises(ssl.SSLWantReadError):
        wire.client.unwrap()
    wire.pump()
    assert wire.server.peer_closed
    assert wire.server.close_reason == "close_notify"


def test_eof_without_close_notify(pki: Any) -> None:
    wire = connect(pki, pki.device("dev-eof"))
    wire.server.receive_data(b"")
    assert wire.server.peer_closed
    assert "EOF" in wire.server.close_reason


def test_no_certificate_tls13_sends_certificate_required(pki: Any) -> None:
    wire = connect(pki, None, version=ssl.TLSVersion.TLSv1_3)
    wire.client_read()
    failure = wire.server.failure
    assert failure is not None
    assert failure.alert == "certificate_required"
    assert failure.library_reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE"
    assert wire.client_error is not None
    assert "CERTIFICATE_REQUIRED" in str(wire.client_error)
    verdict = explain(failure, set_name="default", set_version=1)
    assert verdict.reason == "no client certificate"
    assert "certificate and key" in verdict.hint


def test_no_certificate_tls12_sends_handshake_failure(pki: Any) -> None:
    wire = connect(pki, None, version=ssl.TLSVersion.TLSv1_2)
    failure = wire.server.failure
    assert failure is not None
    assert failure.alert == "handshake_failure"
    assert "HANDSHAKE_FAILURE" in str(wire.client_error)


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_unknown_ca(pki: Any, version: ssl.TLSVersion) -> None:
    wire = connect(pki, pki.device("dev-stranger", ca=pki.other), version=version)
    wire.client_read()
    failure = wire.server.failure
    assert failure is not None
    assert failure.alert == "unknown_ca"
    assert failure.verify_code == 20
    assert "unable to get local issuer certificate" in failure.verify_message
    assert "UNKNOWN_CA" in str(wire.client_error)


def test_tls12_certificate_is_captured_from_the_cleartext_flight(pki: Any) -> None:
    device = pki.device("dev-captured", ca=pki.other)
    wire = connect(pki, device, version=ssl.TLSVersion.TLSv1_2)
    assert wire.reader.client_certificates[0] == device.der
    cert = describe_certificate(wire.reader.client_certificates[0])
    assert cert is not None
    failure = wire.server.failure
    assert failure is not None
    verdict = explain(
        failure,
        set_name="default",
        set_version=3,
        certificate=cert,
        ca_subjects=tuple(c.subject.rfc4514_string() for c in pki.chain_set().ca_certs),
    )
    assert verdict.reason == "issued by `CN=Unknown Root`, which is not in set `default` v3"
    assert "not only the root" in verdict.hint


def test_expired_certificate(pki: Any) -> None:
    device = pki.device("dev-old", expired=True)
    wire = connect(pki, device, version=ssl.TLSVersion.TLSv1_2)
    failure = wire.server.failure
    assert failure is not None
    assert failure.alert == "certificate_expired"
    assert failure.verify_code == 10
    cert = describe_certificate(wire.reader.client_certificates[0])
    verdict = explain(failure, set_name="default", set_version=1, certificate=cert)
    assert verdict.reason.startswith("client certificate expired on ")
    assert "CERTIFICATE_EXPIRED" in str(wire.client_error)


def test_revoked_certificate_via_crl(pki: Any) -> None:
    device = pki.device("dev-revoked")
    crl = pki.crl(pki.inter, [device.issued])
    wire = connect(pki, device, crl_pem=crl, version=ssl.TLSVersion.TLSv1_3)
    wire.client_read()
    failure = wire.server.failure
    assert failure is not None
    assert failure.alert == "certificate_revoked"
    assert failure.verify_code == 23
    assert "CERTIFICATE_REVOKED" in str(wire.client_error)


def test_crl_does_not_refuse_other_devices(pki: Any) -> None:
    revoked = pki.device("dev-revoked-2")
    crl = pki.crl(pki.inter, [revoked.issued])
    wire = connect(pki, pki.device("dev-fine"), crl_pem=crl)
    assert wire.server.state is TlsState.ESTABLISHED


def test_tls11_client_gets_protocol_version(pki: Any) -> None:
    cache = ContextCache(TlsSettings(cert_file=pki.server_cert, key_file=pki.server_key))
    server = TlsServerSession(cache.context_for(pki.chain_set()))
    # A ClientHello offering only TLS 1.1 (Python's client refuses to build one
    # at the default security level, so the record is made by hand).
    body = b"\x03\x02" + b"r" * 32 + b"\x00" + b"\x00\x02\xc0\x13" + b"\x01\x00"
    msg = b"\x01" + len(body).to_bytes(3, "big") + body
    server.receive_data(b"\x16\x03\x01" + len(msg).to_bytes(2, "big") + msg)
    assert server.failure is not None
    assert server.failure.alert == "protocol_version"
    out = server.data_to_send()
    assert out[0] == 21
    assert out.endswith(b"\x02\x46")
    verdict = explain(server.failure, set_name="default", set_version=1)
    assert "TLS 1.2" in verdict.reason


def test_garbage_is_a_decode_or_version_failure(pki: Any) -> None:
    cache = ContextCache(TlsSettings(cert_file=pki.server_cert, key_file=pki.server_key))
    server = TlsServerSession(cache.context_for(pki.chain_set()))
    server.receive_data(b"\x16\x03\x01\x00\x0d\x01\x00\x00\x09" + b"\xff" * 9)
    assert server.state is TlsState.CLOSED
    assert server.failure is not None
    assert server.failure.alert in {"decode_error", "handshake_failure", "illegal_parameter"}


def test_eof_mid_handshake(pki: Any) -> None:
    cache = ContextCache(TlsSettings(cert_file=pki.server_cert, key_file=pki.server_key))
    server = TlsServerSession(cache.context_for(pki.chain_set()))
    server.receive_data(b"\x16\x03\x01\x00")
    assert server.state is TlsState.HANDSHAKING
    server.receive_data(b"")
    assert server.failure is not None
    assert server.failure.alert == ""
    assert (
        "closed the connection" in explain(server.failure, set_name=None, set_version=None).reason
    )


def test_context_cache_builds_once_and_drops_inactive_versions(pki: Any) -> None:
    cache = ContextCache(TlsSettings(cert_file=pki.server_cert, key_file=pki.server_key))
    v1 = pki.chain_set(version=1)
    v2 = pki.chain_set(version=2)
    assert cache.context_for(v1) is cache.context_for(v1)
    assert cache.context_for(v2) is not cache.context_for(v1)
    cache.apply([v2])
    assert len(cache) == 1


def test_server_contexts_issue_no_tickets_and_refuse_renegotiation(pki: Any) -> None:
    cache = ContextCache(TlsSettings(cert_file=pki.server_cert, key_file=pki.server_key))
    ctx = cache.context_for(pki.chain_set())
    assert ctx.num_tickets == 0
    assert ctx.options & ssl.OP_NO_RENEGOTIATION
    assert ctx.verify_mode is ssl.CERT_REQUIRED
    assert not ctx.verify_flags & ssl.VERIFY_X509_STRICT


def test_adding_a_crl_to_the_same_version_builds_a_new_context(pki: Any) -> None:
    cache = ContextCache(TlsSettings(cert_file=pki.server_cert, key_file=pki.server_key))
    device = pki.device("dev-late-revoked")
    before = pki.chain_set(version=4)
    after = pki.chain_set(version=4, crl_pem=pki.crl(pki.inter, [device.issued]))
    assert cache.context_for(before) is not cache.context_for(after)
    cache.apply([after])
    assert len(cache) == 1


def test_tls13_refused_certificate_is_decrypted_from_the_key_log(pki: Any) -> None:
    tap = KeyLogTap()
    try:
        cache = ContextCache(
            TlsSettings(cert_file=pki.server_cert, key_file=pki.server_key, keylog_file=tap.path)
        )
        server = TlsServerSession(cache.context_for(pki.chain_set()))
        device = pki.device("dev-encrypted", ca=pki.other)
        cctx = pki.client_context(device, version=ssl.TLSVersion.TLSv1_3)
        c_in, c_out = ssl.MemoryBIO(), ssl.MemoryBIO()
        wire = Wire(cctx.wrap_bio(c_in, c_out, server_hostname="localhost"), c_in, c_out, server)
        wire.pump()
        assert server.failure is not None
        assert server.failure.alert == "unknown_ca"
        hello = wire.reader.client_hello
        assert hello is not None
        assert wire.reader.client_certificates == ()  # encrypted: nothing in cleartext
        secret = tap.pop(hello.random)
        assert secret is not None
        certs = decrypt_client_certificates(
            secret, server.cipher_suite, wire.reader.encrypted_records
        )
        assert certs[0] == device.der
    finally:
        tap.close()


@pytest.mark.parametrize(
    ("suite", "aead", "key_len", "algorithm"),
    [
        (0x1301, AESGCM, 16, hashes.SHA256()),
        (0x1302, AESGCM, 32, hashes.SHA384()),
        (0x1303, ChaCha20Poly1305, 32, hashes.SHA256()),
    ],
)
def test_decrypt_every_tls13_suite(suite: int, aead: Any, key_len: int, algorithm: Any) -> None:
    # A client flight built by hand: Certificate (two certs) in two records.
    secret = bytes(range(algorithm.digest_size))
    key = hkdf_expand_label(secret, b"key", key_len, algorithm)
    iv = hkdf_expand_label(secret, b"iv", 12, algorithm)
    entries = b"".join(
        len(c).to_bytes(3, "big") + c + b"\x00\x00" for c in (b"leaf-der", b"ca-der")
    )
    body = b"\x00" + len(entries).to_bytes(3, "big") + entries
    message = b"\x0b" + len(body).to_bytes(3, "big") + body
    records = []
    for seq, part in enumerate((message[:10], message[10:])):
        inner = part + b"\x16" + b"\x00" * 3  # content type, then padding
        header = b"\x17\x03\x03" + (len(inner) + 16).to_bytes(2, "big")
        nonce = bytes(a ^ b for a, b in zip(iv, seq.to_bytes(12, "big"), strict=True))
        records.append(header + aead(key).encrypt(nonce, inner, header))
    assert decrypt_client_certificates(secret, suite, records) == (b"leaf-der", b"ca-der")


def test_decrypt_with_a_wrong_secret_gives_nothing() -> None:
    record = b"\x17\x03\x03\x00\x20" + b"\x00" * 32
    assert decrypt_client_certificates(b"\x01" * 32, 0x1301, [record]) == ()
    assert decrypt_client_certificates(b"\x01" * 32, 0x9999, [record]) == ()


def test_key_log_tap_keeps_only_client_handshake_secrets(tmp_path: Any) -> None:
    tee = tmp_path / "keys.log"
    tap = KeyLogTap(tee=tee)
    try:
        with open(tap.path, "ab") as writer:
            writer.write(b"SERVER_HANDSHAKE_TRAFFIC_SECRET aa bb\n")
            writer.write(b"CLIENT_HANDSHAKE_TRAFFIC_SECRET 0102 0a0b\nCLIENT_HANDSHAKE_TRA")
            writer.flush()
            tap.drain()
            writer.write(b"FFIC_SECRET 0304 0c0d\n")
            writer.flush()
        assert tap.pop(b"\x01\x02") == b"\x0a\x0b"
        assert tap.pop(b"\x03\x04") == b"\x0c\x0d"
        assert len(tap) == 0
        assert tee.read_bytes().count(b"\n") == 3
    finally:
        tap.close()


def test_key_log_tap_reads_the_fifo_only_every_so_many_handshake_steps() -> None:
    tap = KeyLogTap()
    try:
        assert tap.steps_per_read >= 16  # a 64 KiB pipe at the least
        with open(tap.path, "ab") as writer:
            writer.write(b"CLIENT_HANDSHAKE_TRAFFIC_SECRET 0102 0a0b\n")
            writer.flush()
            for _ in range(tap.steps_per_read - 1):
                tap.handshake_step()
            assert len(tap) == 0  # not read yet
            tap.handshake_step()
            assert len(tap) == 1
    finally:
        tap.close()


def test_key_log_tap_drops_lines_of_handshakes_forgotten_before_they_were_read() -> None:
    tap = KeyLogTap()
    try:
        with open(tap.path, "ab") as writer:
            writer.write(b"CLIENT_HANDSHAKE_TRAFFIC_SECRET 0102 0a0b\n")
            writer.write(b"CLIENT_HANDSHAKE_TRAFFIC_SECRET 0304 0c0d\n")
            writer.flush()
            tap.forget(b"\x01\x02")  # that handshake ended before the FIFO was read
            assert tap.pop(b"\x03\x04") == b"\x0c\x0d"
            assert len(tap) == 0
            # The same random in a later line belongs to a handshake still running.
            writer.write(b"CLIENT_HANDSHAKE_TRAFFIC_SECRET 0102 0e0f\n")
            writer.flush()
            assert tap.pop(b"\x01\x02") == b"\x0e\x0f"
    finally:
        tap.close()
