"""Private keys: generate, load (PEM/DER, encrypted or not), write with mode 0600.

Errors (see :mod:`certs.errors`)::

    KeyLoadError          not a private key / unsupported / unreadable file
    └── PassphraseError   encrypted key without a passphrase, or a wrong one

Keys made by ``openssl genrsa -des3`` (legacy ``Proc-Type: 4,ENCRYPTED`` PEM
with DES-EDE3-CBC) and by OpenSSL 3 (PKCS#8 ``ENCRYPTED PRIVATE KEY``) both load
with the right passphrase.
"""

from __future__ import annotations

import getpass
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Literal, get_args

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from certs.bundle import describe_format, detect_format
from certs.errors import KeyLoadError, PassphraseError

__all__ = [
    "KEY_TYPES",
    "PASSPHRASE_ENV",
    "KeyType",
    "PrivateKey",
    "generate_key",
    "key_description",
    "key_pem",
    "load_private_key",
    "read_passphrase",
    "read_private_key",
    "write_private_key",
    "write_secret",
]

#: The key types the toolkit generates.
KeyType = Literal["rsa2048", "rsa3072", "rsa4096", "ec256", "ec384", "ed25519"]
#: Every :data:`KeyType`, in a stable order (for ``argparse`` choices).
KEY_TYPES: tuple[str, ...] = get_args(KeyType)
#: The private key classes that can sign certificates.
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
#: The environment variable consulted for a key passphrase.
PASSPHRASE_ENV = "EDGESIM_KEY_PASSPHRASE"

_CURVES: dict[str, ec.EllipticCurve] = {"ec256": ec.SECP256R1(), "ec384": ec.SECP384R1()}
_RSA_BITS = {"rsa2048": 2048, "rsa3072": 3072, "rsa4096": 4096}


def generate_key(kind: str = "ec256") -> PrivateKey:
    """Generate a new private key of ``kind`` (one of :data:`KEY_TYPES`)."""
    if kind in _CURVES:
        return ec.generate_private_key(_CURVES[kind])
    if kind in _RSA_BITS:
        return rsa.generate_private_key(public_exponent=65537, key_size=_RSA_BITS[kind])
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise KeyLoadError(f"unknown key type {kind!r}; choose one of: {', '.join(KEY_TYPES)}")


def key_description(key: object) -> str:
    """A short human description such as ``"EC P-256"``, ``"RSA 2048"``, ``"Ed25519"``.

    Accepts private or public keys.
    """
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        return f"RSA {key.key_size}"
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        names = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
        return f"EC {names.get(key.curve.name, key.curve.name)}"
    if isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        return "Ed25519"
    return type(key).__name__


def _what_instead(data: bytes) -> str:
    """Say what ``data`` is when it is not a private key (for error messages)."""
    return describe_format(detect_format(data))


def load_private_key(
    data: bytes, *, passphrase: bytes | None = None, source: str = "<key>"
) -> PrivateKey:
    """Parse a PEM or DER private key (PKCS#1, SEC1, PKCS#8; encrypted or not).

    ``source`` names the input in error messages. Raises :class:`PassphraseError`
    when the key is encrypted and ``passphrase`` is missing or wrong, and
    :class:`KeyLoadError` when ``data`` is not a usable private key.
    """
    stripped = data.strip()
    if not stripped:
        raise KeyLoadError(f"{source}: file is empty, expected a private key")
    is_pem = b"-----BEGIN" in stripped
    if is_pem and b"PRIVATE KEY-----" not in stripped:
        raise KeyLoadError(f"{source}: not a private key, it is {_what_instead(data)}")
    try:
        if is_pem:
            key = serialization.load_pem_private_key(data, password=passphrase)
        else:
            key = serialization.load_der_private_key(data, password=passphrase)
    except TypeError as exc:
        # cryptography signals "encrypted but no password" (and the reverse) with TypeError.
        if passphrase is None:
            raise PassphraseError(
                f"{source}: private key is encrypted and no passphrase was given "
                f"(use --passphrase-file, ${PASSPHRASE_ENV}, or a terminal prompt)"
            ) from exc
        # A passphrase given for an unencrypted key is harmless: load without it.
        return load_private_key(data, passphrase=None, source=source)
    except ValueError as exc:
        text = str(exc).lower()
        if passphrase is not None and ("password" in text or "decrypt" in text):
            raise PassphraseError(f"{source}: wrong passphrase for encrypted private key") from exc
        if passphrase is not None and is_pem and b"ENCRYPTED" in stripped:
            # A CBC-encrypted key (DES3, AES) checks the passphrase only through its
            # padding: about one wrong passphrase in 256 passes that check and
            # decrypts to bytes that are not a key.
            raise PassphraseError(
                f"{source}: wrong passphrase for encrypted private key "
                "(or the key is damaged: it decrypted to something that is not a key)"
            ) from exc
        what = "a malformed PEM private key" if is_pem else _what_instead(data)
        raise KeyLoadError(f"{source}: cannot load private key: it is {what}") from exc
    except UnsupportedAlgorithm as exc:
        raise KeyLoadError(f"{source}: unsupported private key algorithm: {exc}") from exc
    if not isinstance(
        key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
    ):
        raise KeyLoadError(
            f"{source}: {type(key).__name__} keys cannot sign certificates here; "
            "use RSA, EC or Ed25519"
        )
    return key


def read_private_key(path: Path | str, passphrase: bytes | None = None) -> PrivateKey:
    """Read and parse the private key file at ``path`` (see :func:`load_private_key`)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise KeyLoadError(f"{path}: cannot read private key: {exc.strerror or exc}") from exc
    return load_private_key(data, passphrase=passphrase, source=str(path))


def key_pem(key: PrivateKey, passphrase: bytes | None = None) -> bytes:
    """Serialise ``key`` as PKCS#8 PEM, encrypted with ``passphrase`` when given."""
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def write_secret(path: Path | str, data: bytes) -> None:
    """Write ``data`` to ``path`` so that only the owner can ever read it (mode 0600).

    The file is created with mode 0600 from the start (no window in which it is
    world-readable); an existing file is truncated and its mode tightened before
    the secret is written.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise KeyLoadError(f"{path}: cannot write private key: {exc.strerror or exc}") from exc
    try:
        if os.fstat(fd).st_mode & 0o077:
            # The file existed with looser permissions: tighten before writing the secret.
            os.fchmod(fd, 0o600)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def write_private_key(
    path: Path | str, key: PrivateKey, *, passphrase: bytes | None = None
) -> None:
    """Write ``key`` to ``path`` as PKCS#8 PEM with mode 0600, encrypted if ``passphrase``."""
    write_secret(path, key_pem(key, passphrase))


def read_passphrase(
    passphrase_file: Path | str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    interactive: bool | None = None,
    prompt: str = "Passphrase: ",
) -> bytes | None:
    """Find a key passphrase: the file, then ``$EDGESIM_KEY_PASSPHRASE``, then a prompt.

    The file's first line is used (trailing newline removed, like OpenSSL's
    ``-passin file:``). The prompt (``getpass``) happens only when ``interactive``
    is true, which defaults to "stdin is a terminal". Returns ``None`` when no
    passphrase is available.
    """
    if passphrase_file is not None:
        try:
            raw = Path(passphrase_file).read_bytes()
        except OSError as exc:
            raise KeyLoadError(
                f"{passphrase_file}: cannot read passphrase file: {exc.strerror or exc}"
            ) from exc
        return raw.splitlines()[0] if raw.strip() else b""
    env = os.environ if environ is None else environ
    if env.get(PASSPHRASE_ENV):
        return env[PASSPHRASE_ENV].encode()
    if interactive is None:
        interactive = sys.stdin.isatty()
    if interactive:
        return getpass.getpass(prompt).encode()
    return None
