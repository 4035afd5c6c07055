"""Per-connection device identities over one shared context (devices.identity), sans-I/O.

Client and server ``SSLObject``s are joined in memory; the server says which
certificate each device presented.
"""

from __future__ import annotations

import contextlib
import ssl
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import (
    BestAvailableEncryption,
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)

from certs.quickstart import quickstart
from devices.identity import Identity, Loader, available
from devices.tlsclient import (
    ApplicationData,
    ClientCertificateSent,
    TlsClient,
    TlsEvent,
    TlsFailure,
    make_device_context,
)

pytestmark = pytest.mark.skipif(not available(), reason="no per-connection identities here")


@pytest.fixture(scope="module", params=["ec256", "rsa2048"])
def pki(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp(f"pki-{request.param}")
    quickstart(out, devices=3, key_type=request.param)
    return out


def _converse(client: TlsClient, server: ssl.SSLObject) -> list[TlsEvent]:
    """Shuttle bytes until both sides go quiet; return the client's events."""
    events: list[TlsEvent] = []
    client.initiate()
    for _ in range(8):
        out = client.data_to_send()
        if out:
            _feed(server, out)
        back = _drain(server)
        if back:
            client.receive_data(back)
        events += client.events_received()
        if not out and not back:
            break
    return events


def _feed(server: ssl.SSLObject, data: bytes) -> None:
    incoming = _bios[id(server)][0]
    incoming.write(data)
    with contextlib.suppress(ssl.SSLWantReadError):
        server.do_handshake()


def _drain(server: ssl.SSLObject) -> bytes:
    data: bytes = _bios[id(server)][1].read()
    return data


_bios: dict[int, tuple[ssl.MemoryBIO, ssl.MemoryBIO]] = {}


def _server_pair(pki: Path, version: ssl.TLSVersion) -> ssl.SSLObject:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.maximum_version = version
    ctx.load_cert_chain(pki / "server.pem", pki / "server.key")
    ctx.load_verify_locations(cafile=str(pki / "root-ca.pem"))
    ctx.verify_mode = ssl.CERT_REQUIRED
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_side=True)
    _bios[id(obj)] = (incoming, outgoing)
    return obj


def _material(pki: Path, n: int) -> tuple[bytes, bytes, bytes]:
    devices = pki / "devices"
    return (
        (devices / f"dev-{n:05d}.pem").read_bytes(),
        (devices / f"dev-{n:05d}.key").read_bytes(),
        (devices / "chain.pem").read_bytes(),
    )


def _shared(pki: Path) -> ssl.SSLContext:
    return make_device_context(ca_pem=(pki / "root-ca.pem").read_text(), alpn=("mqtt",))


def _common_name(server: ssl.SSLObject) -> str:
    peer = server.getpeercert() or {}
    for rdn in peer.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return ""


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2])
def test_devices_on_one_context_each_present_their_own_certificate(
    pki: Path, version: ssl.TLSVersion
) -> None:
    shared, loader = _shared(pki), Loader()
    seen = []
    for n in range(3):
        identity = loader.load(*_material(pki, n))
        assert isinstance(identity, Identity)
        client = TlsClient(shared, "localhost", identity=identity)
        server = _server_pair(pki, version)
        events = _converse(client, server)
        assert client.handshake_done, events
        seen.append(_common_name(server))
        if version == ssl.TLSVersion.TLSv1_2:
            # Sent in cleartext: the leaf and the intermediate from the chain file.
            assert [e.count for e in events if isinstance(e, ClientCertificateSent)] == [2]
        # The connection works both ways after the identity and buffers were released.
        client.send(b"ping")
        _feed(server, client.data_to_send())
        assert server.read(100) == b"ping"
        server.write(b"pong")
        client.receive_data(_drain(server))
        assert [e.data for e in client.events_received() if isinstance(e, ApplicationData)] == [
            b"pong"
        ]
    assert seen == ["dev-00000", "dev-00001", "dev-00002"]
    loader.close()


def test_an_identity_can_be_set_on_a_second_connection(pki: Path) -> None:
    """An HTTPS device reconnects: its identity parses its PEM again for the new one."""
    shared, loader = _shared(pki), Loader()
    identity = loader.load(*_material(pki, 1))
    assert identity is not None
    for _ in range(2):
        client = TlsClient(shared, "localhost", identity=identity)
        server = _server_pair(pki, ssl.TLSVersion.TLSv1_3)
        _converse(client, server)
        assert client.handshake_done
        assert _common_name(server) == "dev-00001"


def test_other_key_encodings_load(pki: Path) -> None:
    cert, key_pem, chain = _material(pki, 0)
    key = load_pem_private_key(key_pem, None)
    loader = Loader()
    for fmt in (PrivateFormat.PKCS8, PrivateFormat.TraditionalOpenSSL):
        encoded = key.private_bytes(Encoding.PEM, fmt, NoEncryption())
        assert loader.load(cert, encoded, chain) is not None, fmt
    # The key in the certificate file itself, as `--cert` with a combined PEM allows.
    assert loader.load(cert + key_pem, cert + key_pem, chain) is not None


def test_material_it_cannot_use_is_left_to_a_context_of_its_own(pki: Path) -> None:
    """None: the caller builds a context, which reports the problem in its own words."""
    cert, key_pem, chain = _material(pki, 0)
    _other_cert, other_key, _ = _material(pki, 1)
    key = load_pem_private_key(key_pem, None)
    encrypted = key.private_bytes(
        Encoding.PEM, PrivateFormat.PKCS8, BestAvailableEncryption(b"secret")
    )
    loader = Loader()
    assert loader.load(cert, other_key, chain) is None  # the key is another device's
    assert loader.load(cert, encrypted, chain) is None
    assert loader.load(b"not a certificate", key_pem, chain) is None
    assert (
        loader.load(cert, b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n") is None
    )
    assert (
        loader.load(
            cert, key_pem, b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
        )
        is None
    )


def test_the_leaf_is_set_without_decoding_its_key_and_sent_byte_for_byte(pki: Path) -> None:
    """The fast leaf (its key's OID altered, the device's key as its public key) is
    used, and what reaches the server is exactly the certificate file's DER."""
    cert, key_pem, chain = _material(pki, 1)
    loader = Loader()
    der = ssl.PEM_cert_to_DER_cert(cert.decode())
    key = loader._key(key_pem)
    x509 = loader._leaf_for_key(der, key)
    assert x509, "the fast path declined a matching pair"
    loader._lib.x509_free(x509)
    _other, other_key_pem, _ = _material(pki, 2)
    other = loader._key(other_key_pem)
    assert loader._leaf_for_key(der, other) == 0  # another device's key: refused
    loader._lib.pkey_free(key)
    loader._lib.pkey_free(other)
    identity = loader.load(cert, key_pem, chain)
    assert identity is not None
    client = TlsClient(_shared(pki), "localhost", identity=identity)
    server = _server_pair(pki, ssl.TLSVersion.TLSv1_3)
    _converse(client, server)
    assert client.handshake_done
    assert server.getpeercert(binary_form=True) == der
    loader.close()


@pytest.mark.skipif(ssl.OPENSSL_VERSION_INFO[:2] != (3, 0), reason="OpenSSL 3.0's layout only")
def test_on_openssl_3_0_the_leaf_key_is_decoded_the_legacy_way(pki: Path) -> None:
    cert, _key_pem, chain = _material(pki, 0)
    loader = Loader()
    der = ssl.PEM_cert_to_DER_cert(cert.decode())
    x509 = loader._leaf_legacy(der)
    assert x509
    lib = loader._lib
    assert lib.legacy_flag is True  # the layout checks passed and the key is a legacy one
    assert lib.pkey_get0(lib.x509_get0_pubkey(x509))
    assert lib.encoded(lib.i2d_x509, x509) == der
    lib.x509_free(x509)
    # A pair that does not match is still refused when loading.
    _other, other_key, _ = _material(pki, 1)
    assert loader.load(cert, other_key, chain) is None


def test_a_one_connection_identity_refuses_a_second(pki: Path) -> None:
    shared, loader = _shared(pki), Loader()
    identity = loader.load(*_material(pki, 2), reusable=False)
    assert identity is not None
    first = TlsClient(shared, "localhost", identity=identity)
    _converse(first, _server_pair(pki, ssl.TLSVersion.TLSv1_3))
    assert first.handshake_done
    with pytest.raises(TlsFailure) as caught:
        TlsClient(shared, "localhost", identity=identity)
    assert caught.value.reason == "bad-device-cert"
