"""A device's certificate and key set on its own TLS connection, over one shared context.

Python's ``ssl`` sets a certificate only on an :class:`ssl.SSLContext`, so a fleet of
distinct devices built one context per device: about 2 ms of CPU (``SSLContext()``,
the roots, ``load_cert_chain``, whose PEM key decoding alone goes through OpenSSL 3.0's
slow provider decoders) and about 26 KiB per device, more than the handshake itself.
OpenSSL has no such limit: ``SSL_use_cert_and_key`` sets the certificate, key and
chain on one ``SSL`` connection. This module does that through ``ctypes``, on the
``SSL *`` behind an :class:`ssl.SSLObject` wrapped from a context shared by every
device with the same roots and ALPN. Every device still presents its own certificate.

Loading (:meth:`Loader.load`), measured on OpenSSL 3.0 (``load_cert_chain`` about
1.5 ms): a plain ``d2i_X509`` of the leaf costs about 0.27 ms, most of it decoding
its public key through the provider decoders; the leaf's key is decoded the legacy
way instead (about 0.05 ms: :meth:`Loader._leaf_legacy`, OpenSSL 3.0 only, checked),
or else the leaf is parsed with its key's algorithm OID altered and given the
device's own key as its public key (:meth:`Loader._leaf_for_key`, about 0.1 ms,
checked byte for byte); an EC or RSA key in PKCS#8, SEC1 or
PKCS#1 through the legacy ``d2i_ECPrivateKey``/``d2i_RSAPrivateKey`` about 20 us (the
generic ``d2i_AutoPrivateKey`` is about 0.5 ms); other key types take the generic
path. The chain file (shared by most devices) is parsed once per :class:`Loader`.

The ``SSL *`` is read from the ``_ssl._SSLSocket`` object the way
``edge/tls/verifiedchain.py`` reads it (``devices`` may not import ``edge`` beyond its
wire codecs, so the few lines are repeated here): CPython has laid that object out as
``PyObject_HEAD; PyObject *Socket; SSL *ssl; PySSLContext *ctx; ...`` since 3.7, but it
is not an API, so each read is checked first: the word after ``ssl`` must be the
address of the object's own context, and OpenSSL must name that context's ``SSL_CTX``
for the ``SSL *``. When a check fails, or the interpreter is not CPython, or the
symbols are missing, :func:`available` is false and callers build a context per
device as before. Any material this module cannot load (encrypted key, unknown
format, a key that does not match its certificate) also makes it return None, and
the caller's per-device context reports the error in its usual words.
"""

from __future__ import annotations

import binascii
import ctypes
import ssl
import sys
from typing import Any

__all__ = [
    "Identity",
    "Loader",
    "available",
    "connection_pointer",
    "release_buffers",
    "release_identity",
]

_HEADER = object.__basicsize__
_WORD = ctypes.sizeof(ctypes.c_void_p)
_SSL_WORD = 1  # PySSLSocket.ssl
_CTX_WORD = 2  # PySSLSocket.ctx
_SSL_CTX_WORD = 0  # PySSLContext.ctx

_EVP_PKEY_RSA = 6
_EVP_PKEY_EC = 408

_OID_EC_PUBLIC_KEY = "1.2.840.10045.2.1"
_OID_RSA = "1.2.840.113549.1.1.1"

_P = ctypes.c_void_p
_PP = ctypes.POINTER(ctypes.c_char_p)


class _Lib:
    """The libssl/libcrypto functions used, typed for ctypes."""

    def __init__(self, lib: Any, socket_type: type) -> None:
        self.socket_type = socket_type

        def fn(name: str, res: Any, *args: Any) -> Any:
            f = getattr(lib, name)
            f.restype = res
            f.argtypes = list(args)
            return f

        self.get_ssl_ctx = fn("SSL_get_SSL_CTX", _P, _P)
        self.use_cert_and_key = fn(
            "SSL_use_cert_and_key", ctypes.c_int, _P, _P, _P, _P, ctypes.c_int
        )
        self.d2i_x509 = fn("d2i_X509", _P, _P, _PP, ctypes.c_long)
        self.x509_free = fn("X509_free", None, _P)
        self.check_private_key = fn("X509_check_private_key", ctypes.c_int, _P, _P)
        self.d2i_auto_key = fn("d2i_AutoPrivateKey", _P, _P, _PP, ctypes.c_long)
        self.pkey_new = fn("EVP_PKEY_new", _P)
        self.pkey_assign = fn("EVP_PKEY_assign", ctypes.c_int, _P, ctypes.c_int, _P)
        self.pkey_free = fn("EVP_PKEY_free", None, _P)
        self.ec_key_by_curve = fn("EC_KEY_new_by_curve_name", _P, ctypes.c_int)
        self.ec_key_new = fn("EC_KEY_new", _P)
        self.ec_key_set_group = fn("EC_KEY_set_group", ctypes.c_int, _P, _P)
        self.ec_key_group = fn("EC_KEY_get0_group", _P, _P)
        # Curve NID -> a key kept for the process, whose group new keys copy.
        self._curves: dict[int, int] = {}
        self.d2i_ec_key = fn("d2i_ECPrivateKey", _P, ctypes.POINTER(_P), _PP, ctypes.c_long)
        self.ec_key_free = fn("EC_KEY_free", None, _P)
        self.d2i_rsa_key = fn("d2i_RSAPrivateKey", _P, _P, _PP, ctypes.c_long)
        self.rsa_free = fn("RSA_free", None, _P)
        self.txt2nid = fn("OBJ_txt2nid", ctypes.c_int, ctypes.c_char_p)
        self.sk_new = fn("OPENSSL_sk_new_null", _P)
        self.sk_push = fn("OPENSSL_sk_push", ctypes.c_int, _P, _P)
        self.sk_free = fn("OPENSSL_sk_free", None, _P)
        self.err_clear = fn("ERR_clear_error", None)
        self.free_buffers = fn("SSL_free_buffers", ctypes.c_int, _P)
        self.certs_clear = fn("SSL_certs_clear", None, _P)
        self.i2d_pubkey = fn("i2d_PUBKEY", ctypes.c_int, _P, ctypes.POINTER(_P))
        self.i2d_x509 = fn("i2d_X509", ctypes.c_int, _P, ctypes.POINTER(_P))
        self.i2d_re_tbs = fn("i2d_re_X509_tbs", ctypes.c_int, _P, _P)
        self.set_pubkey = fn("X509_set_pubkey", ctypes.c_int, _P, _P)
        self.crypto_free = fn("CRYPTO_free", None, _P, ctypes.c_char_p, ctypes.c_int)
        self.x509_new = fn("X509_new", _P)
        self.x509_pubkey_of = fn("X509_get_X509_PUBKEY", _P, _P)
        self.pubkey_param = fn(
            "X509_PUBKEY_get0_param", ctypes.c_int, _P, _P, _P, ctypes.POINTER(_P), _P
        )
        self.x509_get0_pubkey = fn("X509_get0_pubkey", _P, _P)
        self.pkey_get0 = fn("EVP_PKEY_get0", _P, _P)
        self.d2i_x509_into = fn("d2i_X509", _P, ctypes.POINTER(_P), _PP, ctypes.c_long)
        # Whether X509_PUBKEY's legacy flag may be written (None: not checked yet;
        # see Loader._leaf_legacy). Only OpenSSL 3.0's layout is known here.
        self.legacy_flag: bool | None = None if ssl.OPENSSL_VERSION_INFO[:2] == (3, 0) else False

    def encoded(self, i2d: Any, obj: int) -> bytes:
        """The DER ``i2d(obj)`` writes into a buffer OpenSSL allocates (b"" on failure)."""
        out = _P()
        size = i2d(obj, ctypes.byref(out))
        if size <= 0 or not out.value:
            self.err_clear()
            return b""
        try:
            return ctypes.string_at(out.value, size)
        finally:
            self.crypto_free(out.value, None, 0)

    def ec_key_on_curve(self, nid: int) -> int:
        """A new, empty ``EC_KEY`` on curve ``nid`` (0 when OpenSSL does not know it).

        ``EC_KEY_new_by_curve_name`` builds the group from the curve's parameters
        each time (about 25 us); copying a kept group is about 4 us.
        """
        template = self._curves.get(nid)
        if template is None:
            template = self._curves[nid] = self.ec_key_by_curve(nid) or 0
        if not template:
            return 0
        key = self.ec_key_new() or 0
        if key and self.ec_key_set_group(key, self.ec_key_group(template)) != 1:
            self.ec_key_free(key)
            key = 0
        return int(key)

    def ssl_pointer(self, obj: ssl.SSLObject) -> int | None:
        """The ``SSL *`` behind ``obj``, or None when the layout is not the expected one."""
        raw = getattr(obj, "_sslobj", None)
        if type(raw) is not self.socket_type:
            return None
        context = obj.context
        if _word(id(raw), _CTX_WORD) != id(context):
            return None
        ssl_ptr = _word(id(raw), _SSL_WORD)
        if not ssl_ptr or self.get_ssl_ctx(ssl_ptr) != _word(id(context), _SSL_CTX_WORD):
            return None
        return ssl_ptr


#: OpenSSL 3.0's ``struct X509_pubkey_st``: ``X509_ALGOR *algor; ASN1_BIT_STRING
#: *public_key; EVP_PKEY *pkey; OSSL_LIB_CTX *libctx; char *propq; unsigned int
#: flag_force_legacy : 1`` (crypto/x509/x_pubkey.c): the flag is bit 0 of word 5.
_PUBKEY_FLAG_WORD = 5


def _raw_word(address: int) -> int:
    return ctypes.c_void_p.from_address(address).value or 0


def _legacy_flag_layout(lib: _Lib, pub: int) -> bool:
    """True when the fresh ``X509_PUBKEY`` at ``pub`` is laid out as OpenSSL 3.0's.

    A new one has its algorithm and bit string allocated and nothing else: word 0
    must be the algorithm OpenSSL itself returns, word 1 set, words 2-5 zero.
    """
    words = [_raw_word(pub + i * _WORD) for i in range(_PUBKEY_FLAG_WORD + 1)]
    algor = ctypes.c_void_p()
    lib.pubkey_param(None, None, None, ctypes.byref(algor), pub)
    return bool(words[0]) and words[0] == algor.value and bool(words[1]) and not any(words[2:])


def _word(address: int, index: int) -> int:
    return ctypes.c_void_p.from_address(address + _HEADER + index * _WORD).value or 0


def _load() -> _Lib | None:
    if sys.implementation.name != "cpython":
        return None
    try:
        import _ssl

        # dlsym on the extension's handle also searches the libraries it was linked
        # with: the libssl/libcrypto that Python's ssl runs on, not another copy.
        socket_type = _ssl._SSLSocket  # type: ignore[attr-defined]
        if socket_type.__basicsize__ < _HEADER + (_CTX_WORD + 1) * _WORD:
            return None
        lib = _Lib(ctypes.CDLL(_ssl.__file__), socket_type)
    except (ImportError, AttributeError, OSError):
        return None
    # Prove the layout on an object of our own before trusting it on a device's.
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).wrap_bio(
        ssl.MemoryBIO(), ssl.MemoryBIO(), server_hostname="probe.invalid"
    )
    if lib.ssl_pointer(probe) is None:
        return None
    return lib


_LIB: _Lib | None = None
_LOADED = False


def _lib() -> _Lib | None:
    global _LIB, _LOADED
    if not _LOADED:
        _LIB = _load()
        _LOADED = True
    return _LIB


def available() -> bool:
    """True when identities can be set per connection on this Python."""
    return _lib() is not None


# --------------------------------------------------------------------------- PEM and DER


def _pem_blocks(pem: bytes) -> list[tuple[bytes, bytes]]:
    """(label, DER) of every PEM block in ``pem``; headers (encrypted PEM) give no block."""
    out: list[tuple[bytes, bytes]] = []
    pos = 0
    while (start := pem.find(b"-----BEGIN ", pos)) >= 0:
        label_end = pem.find(b"-----", start + 11)
        if label_end < 0:
            break
        label = pem[start + 11 : label_end]
        end = pem.find(b"-----END " + label + b"-----", label_end)
        if end < 0:
            break
        body = pem[label_end + 5 : end]
        pos = end + 14 + len(label)
        if b":" in body:  # Proc-Type/DEK-Info headers: an encrypted legacy key
            out.append((label, b""))
            continue
        try:
            out.append((label, binascii.a2b_base64(body)))
        except binascii.Error:
            out.append((label, b""))
    return out


def _tlv(der: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, start of content, end of content) of the DER element at ``pos``."""
    tag = der[pos]
    length = der[pos + 1]
    pos += 2
    if length & 0x80:
        count = length & 0x7F
        if not 1 <= count <= 4:
            raise ValueError("bad DER length")
        length = int.from_bytes(der[pos : pos + count], "big")
        pos += count
    end = pos + length
    if end > len(der):
        raise ValueError("truncated DER")
    return tag, pos, end


def _oid_text(content: bytes) -> str:
    first = content[0]
    parts = [min(first // 40, 2), first - 40 * min(first // 40, 2)]
    value = 0
    for byte in content[1:]:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            parts.append(value)
            value = 0
    return ".".join(map(str, parts))


def _pkcs8(der: bytes) -> tuple[str, str | None, bytes]:
    """(algorithm OID, parameter OID or None, inner private key DER) of a PKCS#8 key."""
    tag, pos, _end = _tlv(der, 0)
    if tag != 0x30:
        raise ValueError("not a SEQUENCE")
    tag, _, pos = _tlv(der, pos)  # version INTEGER
    if tag != 0x02:
        raise ValueError("no version")
    tag, alg_pos, alg_end = _tlv(der, pos)
    if tag != 0x30:
        raise ValueError("no AlgorithmIdentifier")
    tag, oid_start, oid_end = _tlv(der, alg_pos)
    if tag != 0x06:
        raise ValueError("no algorithm OID")
    algorithm = _oid_text(der[oid_start:oid_end])
    param: str | None = None
    if oid_end < alg_end:
        tag, p_start, p_end = _tlv(der, oid_end)
        if tag == 0x06:
            param = _oid_text(der[p_start:p_end])
    tag, k_start, k_end = _tlv(der, alg_end)
    if tag != 0x04:
        raise ValueError("no privateKey OCTET STRING")
    return algorithm, param, der[k_start:k_end]


# --------------------------------------------------------------------------- identities


class Identity:
    """A device's certificate, key and chain, to set on each of its connections.

    The parsed OpenSSL objects are handed to the first connection and then dropped:
    the connection holds references of its own (OpenSSL counts them), and a held
    device's parsed leaf and key cost about 9.6 KiB, while a fleet device usually
    connects once. A later connection of the same device (an HTTPS reconnect)
    parses the PEM again (about 0.3 ms); an identity loaded with ``reusable=False``
    drops its PEM too after the first connection (about 1 KiB per held device).
    """

    __slots__ = ("_cert_pem", "_chain", "_chain_pem", "_key", "_key_pem", "_loader", "_x509")

    def __init__(
        self,
        loader: Loader,
        pems: tuple[bytes, bytes, bytes],
        parsed: tuple[int, int, int | None],
    ) -> None:
        self._loader = loader
        self._cert_pem, self._key_pem, self._chain_pem = pems
        self._x509, self._key, self._chain = parsed

    def apply(self, obj: ssl.SSLObject) -> int:
        """Set this identity on ``obj``'s connection (before its handshake).

        Returns the connection's ``SSL *`` (for :func:`release_buffers` and
        :func:`release_identity`), 0 when it cannot be set.
        """
        lib = self._loader._lib
        ssl_ptr = lib.ssl_pointer(obj)
        if ssl_ptr is None:
            return 0
        if not self._x509:
            if not self._cert_pem:
                return 0  # not reusable, and used
            parsed = self._loader._parse(self._cert_pem, self._key_pem, self._chain_pem)
            if parsed is None:
                return 0
            self._x509, self._key, self._chain = parsed
        ok = lib.use_cert_and_key(ssl_ptr, self._x509, self._key, self._chain, 1) == 1
        if not ok:
            lib.err_clear()
        self._drop()
        return ssl_ptr if ok else 0

    def _drop(self) -> None:
        lib = self._loader._lib
        if self._x509:
            lib.x509_free(self._x509)
            self._x509 = 0
        if self._key:
            lib.pkey_free(self._key)
            self._key = 0

    def __del__(self) -> None:
        self._drop()


def connection_pointer(obj: ssl.SSLObject) -> int:
    """The ``SSL *`` behind ``obj`` (0 when it cannot be read safely on this Python)."""
    lib = _lib()
    if lib is None:
        return 0
    return lib.ssl_pointer(obj) or 0


def release_buffers(ssl_ptr: int) -> None:
    """Free the connection's read and write buffers if nothing is waiting in them.

    Python sets ``SSL_MODE_RELEASE_BUFFERS``, but a read that ends in "want read"
    (every read of an idle connection does) leaves OpenSSL's 16 KiB read buffer
    allocated: about 16 KiB per held device. ``SSL_free_buffers`` does nothing
    while a partial record is buffered.
    """
    lib = _LIB
    if lib is not None and ssl_ptr:
        lib.free_buffers(ssl_ptr)


def release_identity(ssl_ptr: int) -> None:
    """Drop the connection's own certificate and key once they can no longer be used.

    Call it only after a TLS 1.3 handshake on a context without post-handshake
    authentication: the certificate is then never sent again on this connection.
    """
    lib = _LIB
    if lib is not None and ssl_ptr:
        lib.certs_clear(ssl_ptr)


class Loader:
    """Loads device identities; chains (shared files) are parsed once and kept."""

    __slots__ = ("_chains", "_lib")

    def __init__(self) -> None:
        lib = _lib()
        if lib is None:
            raise RuntimeError("per-connection identities are not available on this Python")
        self._lib = lib
        # Chain PEM -> a STACK_OF(X509) (0: not loadable) and its members, for the run.
        self._chains: dict[bytes, tuple[int, list[int]]] = {}

    def load(
        self, cert_pem: bytes, key_pem: bytes, chain_pem: bytes = b"", *, reusable: bool = True
    ) -> Identity | None:
        """The identity of a leaf (plus any certificates after it), key and chain PEM.

        None when this module cannot load it (the caller builds a context instead).
        ``reusable=False``: for one connection only (the PEM is not kept).
        """
        parsed = self._parse(cert_pem, key_pem, chain_pem)
        if parsed is None:
            return None
        pems = (cert_pem, key_pem, chain_pem) if reusable else (b"", b"", b"")
        return Identity(self, pems, parsed)

    def _parse(
        self, cert_pem: bytes, key_pem: bytes, chain_pem: bytes
    ) -> tuple[int, int, int | None] | None:
        lib = self._lib
        certs = [der for label, der in _pem_blocks(cert_pem) if label == b"CERTIFICATE"]
        if not certs or not all(certs):
            return None
        extra = certs[1:]
        chain: int | None = None
        if extra or chain_pem:
            chain = self._chain(b"".join(extra), chain_pem)
            if chain == 0:
                return None
        key = self._key(key_pem)
        if not key:
            return None
        # The cheapest parse that works here (see _leaf_legacy and _leaf_for_key).
        x509 = self._leaf_legacy(certs[0])
        if x509 and lib.check_private_key(x509, key) == 1:
            return x509, key, chain
        if x509:
            lib.x509_free(x509)
            lib.err_clear()
        x509 = self._leaf_for_key(certs[0], key)
        if x509:
            return x509, key, chain
        x509 = self._x509(certs[0])
        # A key that does not match its certificate is refused here, not mid-connect.
        if not x509 or lib.check_private_key(x509, key) != 1:
            if x509:
                lib.x509_free(x509)
            lib.pkey_free(key)
            lib.err_clear()
            return None
        return x509, key, chain

    def _leaf_legacy(self, der: bytes) -> int:
        """The leaf parsed with its public key decoded the legacy way (OpenSSL 3.0).

        ``d2i_X509`` decodes the leaf's public key through the provider decoders
        (``OSSL_DECODER_CTX_new_for_pkey`` looks through every decoder each time):
        about 0.2 ms of the 0.27 ms a leaf costs. OpenSSL's own legacy decoder
        (``EVP_PKEY_ASN1_METHOD.pub_decode``, what ``d2i_EC_PUBKEY`` uses) runs when
        the ``X509_PUBKEY`` it decodes into has ``flag_force_legacy`` set; ``d2i_X509``
        into an ``X509_new()`` reuses that object's ``X509_PUBKEY``, so the flag is
        set there first: about 0.05 ms, and the certificate keeps its own bytes.
        The flag is not API: it is written only on OpenSSL 3.0, only after the
        object's first words were checked (:func:`_legacy_flag_layout`), and the
        first result is checked too (a legacy key has ``EVP_PKEY_get0``); when a
        check fails this path is off for the process. 0 when not used.
        """
        lib = self._lib
        if lib.legacy_flag is False:
            return 0
        x509 = lib.x509_new() or 0
        pub = lib.x509_pubkey_of(x509) if x509 else 0
        # The layout is the library's: checked until one parse has proved it.
        if not pub or not (lib.legacy_flag or _legacy_flag_layout(lib, pub)):
            if x509:
                lib.x509_free(x509)
            lib.legacy_flag = False
            return 0
        flags = ctypes.c_uint.from_address(pub + _PUBKEY_FLAG_WORD * _WORD)
        flags.value |= 1
        # d2i frees the object it was given when it fails, and clears the pointer.
        ref = ctypes.c_void_p(x509)
        buf = ctypes.c_char_p(der)
        got = lib.d2i_x509_into(ctypes.byref(ref), ctypes.byref(buf), len(der)) or 0
        if not got:
            lib.err_clear()
            return 0
        pkey = lib.x509_get0_pubkey(got)
        # A provider-decoded key would mean the flag is not where it was written.
        lib.legacy_flag = bool(pkey and lib.pkey_get0(pkey))
        return int(got)

    def _leaf_for_key(self, der: bytes, key: int) -> int:
        """The leaf parsed without decoding its public key: the device's key stands in.

        Where :meth:`_leaf_legacy` cannot be used (an OpenSSL other than 3.0), this
        avoids the provider decoders with public API only. The public key is
        already known: it is the public half of the device's key. So the leaf is
        parsed with its key's algorithm OID altered (no decoder matches, about
        0.06 ms), and the key is set as its public key (``X509_set_pubkey``, the way a certificate is built).
        Used only when the key's SubjectPublicKeyInfo occurs in the leaf (the pair
        matches: what ``X509_check_private_key`` checked) and the leaf re-encodes
        to exactly its original bytes, the ones the edge verifies. 0 otherwise:
        the caller parses the leaf as it is.
        """
        lib = self._lib
        spki = lib.encoded(lib.i2d_pubkey, key)
        at = der.find(spki) if spki else -1
        if at < 0:
            return 0
        try:
            # SubjectPublicKeyInfo ::= SEQUENCE { AlgorithmIdentifier { OID, ... }, BIT STRING }
            _tag, body, _end = _tlv(spki, 0)
            _tag, alg, _end = _tlv(spki, body)
            tag, _start, oid_end = _tlv(spki, alg)
        except (ValueError, IndexError):
            return 0
        if tag != 0x06:
            return 0
        last = at + oid_end - 1
        # Still a valid OID (last byte below 0x80), now one no decoder knows.
        altered = der[:last] + (b"\x7e" if der[last] == 0x7F else b"\x7f") + der[last + 1 :]
        x509 = self._x509(altered)
        if not x509:
            lib.err_clear()
            return 0
        if (
            lib.set_pubkey(x509, key) == 1
            # Marks the parsed TBSCertificate modified: encoded anew from now on.
            and lib.i2d_re_tbs(x509, None) > 0
            and lib.encoded(lib.i2d_x509, x509) == der
        ):
            return x509
        lib.x509_free(x509)
        lib.err_clear()
        return 0

    def _x509(self, der: bytes) -> int:
        buf = ctypes.c_char_p(der)
        return self._lib.d2i_x509(None, ctypes.byref(buf), len(der)) or 0

    def _chain(self, extra_der: bytes, chain_pem: bytes) -> int:
        cache_key = extra_der + b"\0" + chain_pem
        found = self._chains.get(cache_key)
        if found is not None:
            return found[0]
        blocks = [der for label, der in _pem_blocks(chain_pem) if label == b"CERTIFICATE"]
        lib = self._lib
        stack, members = 0, []
        if all(blocks):
            ders = [*self._split(extra_der), *blocks]
            members = [self._x509(der) for der in ders]
            stack = (lib.sk_new() or 0) if all(members) else 0
            if stack and not all(lib.sk_push(stack, x) > 0 for x in members):
                lib.sk_free(stack)
                stack = 0
            if not stack:
                for x in members:
                    if x:
                        lib.x509_free(x)
                members = []
                lib.err_clear()
        self._chains[cache_key] = (stack, members)
        return stack

    def close(self) -> None:
        """Free the chains (connections that use them hold references of their own).

        Call it when no identity of this loader will be set on a connection again
        (the fleet does, once every device has finished).
        """
        lib = self._lib
        for stack, members in self._chains.values():
            for x in members:
                lib.x509_free(x)
            if stack:
                lib.sk_free(stack)
        self._chains.clear()

    @staticmethod
    def _split(concatenated: bytes) -> list[bytes]:
        out = []
        pos = 0
        while pos < len(concatenated):
            _tag, _start, end = _tlv(concatenated, pos)
            out.append(concatenated[pos:end])
            pos = end
        return out

    def _key(self, key_pem: bytes) -> int:
        blocks = [(label, der) for label, der in _pem_blocks(key_pem) if label.endswith(b"KEY")]
        if len(blocks) != 1 or not blocks[0][1]:
            return 0
        label, der = blocks[0]
        try:
            if label == b"PRIVATE KEY":
                algorithm, param, inner = _pkcs8(der)
                if algorithm == _OID_EC_PUBLIC_KEY and param is not None:
                    return self._ec_key(inner, self._lib.txt2nid(param.encode()))
                if algorithm == _OID_RSA:
                    return self._rsa_key(inner)
                return self._auto_key(der)
            if label == b"EC PRIVATE KEY":
                return self._ec_key(der, 0)
            if label == b"RSA PRIVATE KEY":
                return self._rsa_key(der)
        except (ValueError, IndexError):
            return 0
        return 0

    def _auto_key(self, der: bytes) -> int:
        buf = ctypes.c_char_p(der)
        key = self._lib.d2i_auto_key(None, ctypes.byref(buf), len(der)) or 0
        if not key:
            self._lib.err_clear()
        return key

    def _ec_key(self, der: bytes, nid: int) -> int:
        lib = self._lib
        # PKCS#8 carries the curve outside the inner key: give d2i a key with the group.
        ec = ctypes.c_void_p(lib.ec_key_on_curve(nid) if nid else None)
        buf = ctypes.c_char_p(der)
        if nid and not ec.value:
            lib.err_clear()
            return 0
        got = lib.d2i_ec_key(ctypes.byref(ec), ctypes.byref(buf), len(der))
        if not got:
            if ec.value:
                lib.ec_key_free(ec.value)
            lib.err_clear()
            return 0
        return self._wrap(_EVP_PKEY_EC, got, lib.ec_key_free)

    def _rsa_key(self, der: bytes) -> int:
        buf = ctypes.c_char_p(der)
        rsa = self._lib.d2i_rsa_key(None, ctypes.byref(buf), len(der))
        if not rsa:
            self._lib.err_clear()
            return 0
        return self._wrap(_EVP_PKEY_RSA, rsa, self._lib.rsa_free)

    def _wrap(self, kind: int, raw: int, free: Any) -> int:
        lib = self._lib
        pkey = lib.pkey_new()
        if not pkey or lib.pkey_assign(pkey, kind, raw) != 1:
            if pkey:
                lib.pkey_free(pkey)
            free(raw)
            lib.err_clear()
            return 0
        return int(pkey)
