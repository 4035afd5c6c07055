"""The certificate a refused device presented, from the chain OpenSSL built to verify it.

Python's ``ssl`` hands out no peer certificate after a failed verification, and
TLS 1.3 encrypts the client's ``Certificate`` message. OpenSSL itself keeps the
chain it tried to build, failed or not (``SSL_get0_verified_chain``; its first
element is the certificate the device presented), on the ``SSL`` object until
the object is freed; Python's ``ssl`` just has no method for it before 3.13.
This module asks the OpenSSL that ``_ssl`` is linked to, through ``ctypes``, for
that first element, as DER.

Why not the key log (:mod:`edge.tls.keylog`): it makes OpenSSL format and write
five lines on *every* TLS 1.3 handshake (about 0.16 ms of CPU per connect
measured side by side), to serve the few that are refused. This reads nothing
until a handshake has failed: an accepted device costs nothing. It also works
off Linux and after a HelloRetryRequest.

The ``SSL *`` pointer is read from the ``_ssl._SSLSocket`` object behind an
``ssl.SSLObject``. CPython has laid that object out the same way since 3.7
(``PyObject_HEAD; PyObject *Socket; SSL *ssl; PySSLContext *ctx; ...``), but it
is not an API, so every read is checked first, without dereferencing anything
unproven: the word after ``ssl`` must be the address of the object's own
``SSLContext`` (a Python object we hold), and OpenSSL must then name, for that
``SSL *``, the ``SSL_CTX`` that the ``SSLContext`` wraps. When a check fails (or
the interpreter is not CPython, or ``_ssl`` does not export OpenSSL's symbols),
:func:`available` is false and the edge falls back to the key log tap.
"""

from __future__ import annotations

import ctypes
import ssl
import sys
from typing import Any

__all__ = ["available", "disable", "presented_certificate"]

# Offsets of the fields read, in pointer-sized words after the object header.
_SSL_WORD = 1  # PySSLSocket.ssl
_CTX_WORD = 2  # PySSLSocket.ctx
_SSL_CTX_WORD = 0  # PySSLContext.ctx
_HEADER = object.__basicsize__
_WORD = ctypes.sizeof(ctypes.c_void_p)


class _OpenSsl:
    """The few libssl/libcrypto functions needed, typed for ctypes."""

    def __init__(self, lib: Any, socket_type: type) -> None:
        #: ``_ssl._SSLSocket``: the only type whose objects are read.
        self.socket_type = socket_type
        self.get0_verified_chain = lib.SSL_get0_verified_chain
        self.get0_verified_chain.restype = ctypes.c_void_p
        self.get0_verified_chain.argtypes = [ctypes.c_void_p]
        self.get_ssl_ctx = lib.SSL_get_SSL_CTX
        self.get_ssl_ctx.restype = ctypes.c_void_p
        self.get_ssl_ctx.argtypes = [ctypes.c_void_p]
        self.sk_num = lib.OPENSSL_sk_num
        self.sk_num.restype = ctypes.c_int
        self.sk_num.argtypes = [ctypes.c_void_p]
        self.sk_value = lib.OPENSSL_sk_value
        self.sk_value.restype = ctypes.c_void_p
        self.sk_value.argtypes = [ctypes.c_void_p, ctypes.c_int]
        self.i2d_x509 = lib.i2d_X509
        self.i2d_x509.restype = ctypes.c_int
        self.i2d_x509.argtypes = [ctypes.c_void_p, ctypes.c_void_p]


def _word(address: int, index: int) -> int:
    return ctypes.c_void_p.from_address(address + _HEADER + index * _WORD).value or 0


def _ssl_pointer(lib: _OpenSsl, obj: ssl.SSLObject) -> int | None:
    """The ``SSL *`` behind ``obj``, or None when the layout is not the expected one."""
    raw = getattr(obj, "_sslobj", None)
    if type(raw) is not lib.socket_type:
        return None
    if lib.socket_type.__basicsize__ < _HEADER + (_CTX_WORD + 1) * _WORD:
        return None
    context = obj.context
    if _word(id(raw), _CTX_WORD) != id(context):
        return None
    ssl_ptr = _word(id(raw), _SSL_WORD)
    if not ssl_ptr or lib.get_ssl_ctx(ssl_ptr) != _word(id(context), _SSL_CTX_WORD):
        return None
    return ssl_ptr


def _load() -> _OpenSsl | None:
    if sys.implementation.name != "cpython":
        return None
    try:
        import _ssl

        # dlsym on the extension's handle also searches the libraries it was linked
        # with: these are the libssl/libcrypto Python's ssl runs on, not another copy.
        lib = _OpenSsl(ctypes.CDLL(_ssl.__file__), _ssl._SSLSocket)  # type: ignore[attr-defined]
    except (ImportError, AttributeError, OSError):
        return None
    # Prove the layout on an object of our own before trusting it on a device's.
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).wrap_bio(
        ssl.MemoryBIO(), ssl.MemoryBIO(), server_side=True
    )
    ssl_ptr = _ssl_pointer(lib, probe)
    if ssl_ptr is None or lib.get0_verified_chain(ssl_ptr):
        return None  # a fresh SSL has verified nothing: anything else is not a chain
    return lib


_LIB: _OpenSsl | None = None
_LOADED = False


def _lib() -> _OpenSsl | None:
    global _LIB, _LOADED
    if not _LOADED:
        _LIB = _load()
        _LOADED = True
    return _LIB


def disable() -> None:
    """Stop reading OpenSSL's chain in this process, as on a Python where it cannot be.

    For measuring the key log fallback (``python -m bench.connect_cost --capture tap``);
    edges started afterwards in this process run the tap.
    """
    global _LIB, _LOADED
    _LIB, _LOADED = None, True


def available() -> bool:
    """True when :func:`presented_certificate` can read OpenSSL's chain on this Python."""
    return _lib() is not None


def presented_certificate(obj: ssl.SSLObject) -> bytes | None:
    """The DER certificate the peer of ``obj`` presented, as OpenSSL verified (or refused) it.

    Call it after the handshake ended (also after it failed). None when the peer
    sent no certificate, verification never ran, or :func:`available` is false.
    """
    lib = _lib()
    if lib is None:
        return None
    ssl_ptr = _ssl_pointer(lib, obj)
    if ssl_ptr is None:
        return None
    chain = lib.get0_verified_chain(ssl_ptr)
    if not chain or lib.sk_num(chain) < 1:
        return None
    x509 = lib.sk_value(chain, 0)
    if not x509:
        return None
    size = lib.i2d_x509(x509, None)
    if size <= 0:
        return None
    buf = ctypes.create_string_buffer(size)
    cursor = ctypes.c_void_p(ctypes.addressof(buf))
    # i2d_X509 writes at *cursor and advances it: pass the cursor's address.
    if lib.i2d_x509(x509, ctypes.byref(cursor)) != size:
        return None
    return buf.raw
