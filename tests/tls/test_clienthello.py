"""The ClientHello reader, fed real ClientHellos from Python's ssl and hand-made bytes."""

from __future__ import annotations

import ssl

import pytest

from edge.tls.clienthello import (
    ClientFlightReader,
    FlightProblem,
    classify_plaintext,
    parse_client_hello,
    version_name,
)
from edge.tls.errors import ClientHelloError


def client_hello_bytes(
    *,
    sni: str | None = "edge.example.com",
    alpn: list[str] | None = None,
    maximum: ssl.TLSVersion | None = None,
) -> bytes:
    """The first flight of a real ``ssl`` client (a ClientHello record)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(alpn)
    if maximum is not None:
        ctx.maximum_version = maximum
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=sni)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def test_reads_sni_alpn_versions_and_suites() -> None:
    data = client_hello_bytes(alpn=["mqtt", "http/1.1"])
    reader = ClientFlightReader()
    reader.receive_data(data)
    hello = reader.client_hello
    assert hello is not None
    assert hello.sni == "edge.example.com"
    assert hello.alpn == ("mqtt", "http/1.1")
    assert hello.versions[0] == "TLSv1.3"
    assert "TLSv1.2" in hello.versions
    assert 0x1301 in hello.cipher_suites  # TLS_AES_128_GCM_SHA256
    assert 43 in hello.extensions
    assert reader.problem is None


def test_byte_by_byte_gives_the_same_result() -> None:
    data = client_hello_bytes(alpn=["mqtt"])
    whole = ClientFlightReader()
    whole.receive_data(data)
    pieces = ClientFlightReader()
    for i in range(len(data)):
        pieces.receive_data(data[i : i + 1])
    assert pieces.client_hello == whole.client_hello


def test_handshake_message_split_across_records() -> None:
    data = client_hello_bytes()
    body = data[5:]
    half = len(body) // 2
    # The same handshake message, fragmented into two TLS records.
    split = (
        data[:3]
        + half.to_bytes(2, "big")
        + body[:half]
        + data[:3]
        + (len(body) - half).to_bytes(2, "big")
        + body[half:]
    )
    reader = ClientFlightReader()
    reader.receive_data(split)
    assert reader.client_hello is not None
    assert reader.client_hello.sni == "edge.example.com"


def test_no_sni_and_tls12_only() -> None:
    reader = ClientFlightReader()
    reader.receive_data(client_hello_bytes(sni=None, maximum=ssl.TLSVersion.TLSv1_2))
    assert reader.client_hello is not None
    assert reader.client_hello.sni is None
    assert "TLSv1.3" not in reader.client_hello.versions


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"\x10\x1a\x00\x04MQTT\x04\x02\x00<", "MQTT CONNECT over plain TCP"),
        (b"GET / HTTP/1.1\r\n", "plain HTTP"),
        (b"POST /v1/publish HTTP/1.1\r\n", "plain HTTP"),
        (b"PROXY TCP4 1.2.3.4", "PROXY protocol"),
        (b"\x00\x01\x02\x03", "00 01 02 03"),
    ],
)
def test_plaintext_is_classified(data: bytes, words: str) -> None:
    reader = ClientFlightReader()
    reader.receive_data(data)
    assert reader.problem is FlightProblem.NOT_TLS
    assert words in reader.reason
    assert reader.done


def test_tls_record_of_wrong_major_version_is_not_tls() -> None:
    reader = ClientFlightReader()
    reader.receive_data(b"\x16\x07\x01\x00\x05hello")
    assert reader.problem is FlightProblem.NOT_TLS


def test_first_handshake_message_must_be_client_hello() -> None:
    reader = ClientFlightReader()
    reader.receive_data(b"\x16\x03\x01\x00\x08" + b"\x02\x00\x00\x04abcd")
    assert reader.problem is FlightProblem.MALFORMED
    assert "not ClientHello" in reader.reason


def test_truncated_client_hello_names_the_field() -> None:
    body = b"\x03\x03" + b"r" * 32 + b"\x00" + b"\x00\x40\x13\x01"  # suites length lies
    msg = b"\x01" + len(body).to_bytes(3, "big") + body
    reader = ClientFlightReader()
    reader.receive_data(b"\x16\x03\x01" + len(msg).to_bytes(2, "big") + msg)
    assert reader.problem is FlightProblem.MALFORMED
    assert "cipher_suites" in reader.reason


def test_oversized_record_is_malformed() -> None:
    reader = ClientFlightReader()
    reader.receive_data(b"\x16\x03\x01\xff\xff")
    assert reader.problem is FlightProblem.MALFORMED
    assert "exceeds" in reader.reason


def test_incomplete_hello_waits_for_more() -> None:
    data = client_hello_bytes()
    reader = ClientFlightReader()
    reader.receive_data(data[:20])
    assert reader.client_hello is None
    assert reader.problem is None
    assert not reader.done


def test_encrypted_records_after_change_cipher_spec_are_kept() -> None:
    reader = ClientFlightReader()
    encrypted = b"\x17\x03\x03\x00\x04abcd"
    reader.receive_data(client_hello_bytes() + b"\x14\x03\x03\x00\x01\x01" + encrypted)
    assert reader.client_hello is not None
    assert reader.encrypted_records == [encrypted]
    assert reader.client_certificates == ()
    assert not reader.done


def test_tls12_encrypted_finished_stops_reading() -> None:
    reader = ClientFlightReader()
    finished = b"\x16\x03\x03\x00\x04wxyz"  # a handshake record after CCS: encrypted
    reader.receive_data(client_hello_bytes() + b"\x14\x03\x03\x00\x01\x01" + finished)
    assert reader.done
    assert reader.problem is None


def test_parse_client_hello_without_extensions_uses_legacy_version() -> None:
    body = b"\x03\x02" + b"r" * 32 + b"\x00" + b"\x00\x02\x00\x2f" + b"\x01\x00"
    hello = parse_client_hello(body, 0x0301)
    assert hello.versions == ("TLSv1.1",)
    assert hello.cipher_suites == (0x002F,)
    assert hello.sni is None


def test_version_names() -> None:
    assert version_name(0x0304) == "TLSv1.3"
    assert version_name(0x1A1A) == "GREASE"
    assert version_name(0x0999) == "0x0999"


def test_empty_first_read() -> None:
    assert "closed without sending" in classify_plaintext(b"")


@pytest.mark.parametrize(
    ("cut", "field"),
    [(1, "legacy_version"), (20, "random"), (36, "session_id")],
)
def test_truncation_names_the_field(cut: int, field: str) -> None:
    body = b"\x03\x03" + b"r" * 32 + b"\x20" + b"s" * 32 + b"\x00\x02\x13\x01\x01\x00"
    with pytest.raises(ClientHelloError, match=f"ClientHello {field} is truncated"):
        parse_client_hello(body[:cut], 0x0301)


def test_extension_length_past_the_end() -> None:
    body = (
        b"\x03\x03"
        + b"r" * 32
        + b"\x00"
        + b"\x00\x02\x13\x01\x01\x00"
        + b"\x00\x08\x00\x00\x00\x09"
    )
    with pytest.raises(ClientHelloError, match="extensions"):
        parse_client_hello(body, 0x0301)


def test_bytes_after_the_hello_are_read_when_asked_in_any_pieces() -> None:
    # A TLS 1.2 client flight: ClientHello, then (next read) the cleartext
    # Certificate message, fed byte by byte; reading it is deferred until asked.
    certs = (b"leaf-der", b"ca-der")
    body = b"".join(len(c).to_bytes(3, "big") + c for c in certs)
    message = b"\x0b" + (3 + len(body)).to_bytes(3, "big") + len(body).to_bytes(3, "big") + body
    record = b"\x16\x03\x03" + len(message).to_bytes(2, "big") + message
    reader = ClientFlightReader()
    reader.receive_data(client_hello_bytes(maximum=ssl.TLSVersion.TLSv1_2))
    for i in range(len(record)):
        reader.receive_data(record[i : i + 1])
    assert reader.client_certificates == certs
    assert reader.done  # nothing after the Certificate message is of interest


def test_the_capture_stops_at_its_limit_after_the_hello() -> None:
    reader = ClientFlightReader()
    reader.receive_data(client_hello_bytes())
    record = b"\x17\x03\x03\x40\x00" + bytes(0x4000)  # 16 KiB encrypted records
    for _ in range(12):  # 192 KiB: past the 128 KiB capture limit
        reader.receive_data(record)
    assert reader.done
    # What fitted before the limit (and within the 64 KiB kept encrypted) is there.
    assert 1 <= len(reader.encrypted_records) <= 4
    assert all(r == record for r in reader.encrypted_records)


@pytest.mark.parametrize(
    ("extension", "field"),
    [
        # server_name: list length past the extension; a name past the list.
        (b"\x00\x00\x00\x02\x00\x09", "server_name extension"),
        (b"\x00\x00\x00\x06\x00\x04\x00\x00\x09ab", "server_name extension"),
        # ALPN: a protocol name past the list.
        (b"\x00\x10\x00\x04\x00\x02\x05m", "ALPN extension"),
        # supported_versions: an odd byte at the end of the list.
        (b"\x00\x2b\x00\x04\x03\x03\x04\x03", "supported_versions extension"),
    ],
)
def test_bad_lengths_inside_an_extension_name_it(extension: bytes, field: str) -> None:
    body = (
        b"\x03\x03"
        + b"r" * 32
        + b"\x00"
        + b"\x00\x02\x13\x01\x01\x00"
        + len(extension).to_bytes(2, "big")
        + extension
    )
    with pytest.raises(ClientHelloError, match=f"ClientHello {field} is truncated"):
        parse_client_hello(body, 0x0301)
