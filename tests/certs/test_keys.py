"""Keys: generation, PEM round trips, 0600 files, passphrases, openssl-made keys."""

from __future__ import annotations

import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from certs.errors import KeyLoadError, PassphraseError
from certs.keys import (
    KEY_TYPES,
    PASSPHRASE_ENV,
    generate_key,
    key_description,
    key_pem,
    load_private_key,
    read_passphrase,
    read_private_key,
    write_private_key,
)

OpenSSL = Callable[..., subprocess.CompletedProcess[str]]

EXPECTED = {
    "rsa2048": "RSA 2048",
    "rsa3072": "RSA 3072",
    "rsa4096": "RSA 4096",
    "ec256": "EC P-256",
    "ec384": "EC P-384",
    "ed25519": "Ed25519",
}


@pytest.mark.parametrize("kind", ["rsa2048", "ec256", "ec384", "ed25519"])
def test_generate_and_round_trip(kind: str) -> None:
    key = generate_key(kind)
    assert key_description(key) == EXPECTED[kind]
    again = load_private_key(key_pem(key))
    assert key_pem(again) == key_pem(key)


def test_key_types_cover_descriptions() -> None:
    assert set(KEY_TYPES) == set(EXPECTED)


def test_unknown_key_type_is_named() -> None:
    with pytest.raises(KeyLoadError, match="unknown key type 'dsa'"):
        generate_key("dsa")


def test_write_private_key_is_0600(tmp_path: Path) -> None:
    path = tmp_path / "k.key"
    write_private_key(path, generate_key())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_write_private_key_tightens_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "k.key"
    path.write_text("old")
    path.chmod(0o644)
    write_private_key(path, generate_key())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert b"PRIVATE KEY" in path.read_bytes()


def test_encrypted_round_trip_and_wrong_passphrase(tmp_path: Path) -> None:
    path = tmp_path / "enc.key"
    key = generate_key()
    write_private_key(path, key, passphrase=b"s3cret")
    assert b"ENCRYPTED PRIVATE KEY" in path.read_bytes()
    assert key_pem(read_private_key(path, b"s3cret")) == key_pem(key)
    with pytest.raises(PassphraseError, match=r"enc\.key: wrong passphrase"):
        read_private_key(path, b"nope")
    with pytest.raises(PassphraseError, match=r"enc\.key: private key is encrypted"):
        read_private_key(path)


def test_passphrase_for_plain_key_is_ignored() -> None:
    key = generate_key()
    assert key_pem(load_private_key(key_pem(key), passphrase=b"unused")) == key_pem(key)


def test_not_a_key_says_what_it_is(tmp_path: Path) -> None:
    from certs.authority import CertificateAuthority

    ca = CertificateAuthority.create_root("R")
    path = tmp_path / "ca.pem"
    path.write_bytes(ca.cert_pem)
    with pytest.raises(KeyLoadError, match=r"ca\.pem: not a private key, it is PEM certificate"):
        read_private_key(path)


def test_empty_and_garbage_and_missing(tmp_path: Path) -> None:
    with pytest.raises(KeyLoadError, match="empty"):
        load_private_key(b"\n", source="e.key")
    with pytest.raises(KeyLoadError, match=r"g\.key: cannot load private key"):
        load_private_key(b"\x30\x03\x02\x01\x00", source="g.key")
    with pytest.raises(KeyLoadError, match="cannot read private key"):
        read_private_key(tmp_path / "missing.key")


def test_der_private_key_loads() -> None:
    from cryptography.hazmat.primitives import serialization

    key = generate_key()
    der = key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    assert key_pem(load_private_key(der)) == key_pem(key)


def test_read_passphrase_sources(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_bytes(b"from-file\nsecond line\n")
    assert read_passphrase(pw, environ={}) == b"from-file"
    assert read_passphrase(None, environ={PASSPHRASE_ENV: "from-env"}) == b"from-env"
    assert read_passphrase(None, environ={}, interactive=False) is None
    with pytest.raises(KeyLoadError, match="cannot read passphrase file"):
        read_passphrase(tmp_path / "nope", environ={})


@pytest.mark.interop
@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("args", "marker"),
    [
        (["-des3", "-traditional"], b"Proc-Type: 4,ENCRYPTED"),
        (["-des3"], b"BEGIN ENCRYPTED PRIVATE KEY"),
        (["-aes256"], b"BEGIN ENCRYPTED PRIVATE KEY"),
    ],
)
def test_openssl_genrsa_encrypted_keys(
    tmp_path: Path, openssl: OpenSSL, args: list[str], marker: bytes
) -> None:
    path = tmp_path / "rootCA.key"
    openssl("genrsa", *args, "-passout", "pass:hunter2", "-out", path, "2048")
    assert marker in path.read_bytes()
    key = read_private_key(path, b"hunter2")
    assert key_description(key) == "RSA 2048"
    with pytest.raises(PassphraseError, match=r"rootCA\.key: private key is encrypted"):
        read_private_key(path)
    with pytest.raises(PassphraseError, match=r"rootCA\.key: wrong passphrase"):
        read_private_key(path, b"wrong")


@pytest.mark.interop
@pytest.mark.timeout(60)
def test_openssl_reads_our_encrypted_key(tmp_path: Path, openssl: OpenSSL) -> None:
    path = tmp_path / "ours.key"
    write_private_key(path, generate_key("ec256"), passphrase=b"pw")
    out = openssl("pkey", "-in", path, "-passin", "pass:pw", "-noout", "-text")
    assert "NIST CURVE: P-256" in out.stdout
    bad = openssl("pkey", "-in", path, "-passin", "pass:bad", "-noout", check=False)
    assert bad.returncode != 0


@pytest.mark.interop
@pytest.mark.timeout(120)
@pytest.mark.parametrize("args", [["-des3", "-traditional"], ["-des3"], ["-aes256"]])
def test_every_wrong_passphrase_is_named_as_such(
    tmp_path: Path, openssl: OpenSSL, args: list[str]
) -> None:
    # CBC padding lets about one wrong passphrase in 256 "decrypt" to garbage; the
    # error must still say wrong passphrase, not "malformed key". 1,500 tries meet
    # such a passphrase with a probability above 99.7 %.
    path = tmp_path / "device.key"
    openssl("genrsa", *args, "-passout", "pass:right", "-out", path, "2048")
    data = path.read_bytes()
    for i in range(1500):
        with pytest.raises(PassphraseError, match="wrong passphrase"):
            load_private_key(data, passphrase=f"wrong-{i}".encode(), source="device.key")
