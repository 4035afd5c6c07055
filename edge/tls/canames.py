"""Put CA names in the server's CertificateRequest, which Python's ``ssl`` cannot do.

A server that asks for a client certificate may list the distinguished names of
the CAs it accepts (TLS 1.2 ``certificate_authorities`` field, TLS 1.3
extension); devices holding several certificates use the list to pick one, and
``openssl s_client`` prints it as "Acceptable client certificate CA names".
OpenSSL sends the names given to ``SSL_CTX_set_client_CA_list``; CPython never
calls it, so a Python server sends none ("No client certificate CA names sent").

:func:`set_client_ca_names` adds each certificate's subject through
``SSL_CTX_add_client_CA`` of the OpenSSL that ``_ssl`` is linked to, on the
``SSL_CTX`` behind an ``ssl.SSLContext``. That pointer is read from the
``PySSLContext`` object (its first field since Python 3.7); like
:mod:`edge.tls.verifiedchain`, the read is proved first: a probe ``SSL`` made
from the context must name the same ``SSL_CTX`` (``SSL_get_SSL_CTX``) before
anything is written. It runs when a context is built, never during a handshake.

:func:`set_groups_list` uses the same pointer for the other setting CPython 3.11
lacks: the list of key exchange groups (the TLS profiles of :mod:`edge.tls.profiles`).
"""

from __future__ import annotations

import ctypes
import ssl
import sys
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

__all__ = ["available", "client_ca_count", "set_client_ca_names", "set_groups_list"]

_HEADER = object.__basicsize__
_WORD = ctypes.sizeof(ctypes.c_void_p)


class _Lib:
    def __init__(self, lib: Any, socket_type: type) -> None:
        self.socket_type = socket_type
        self.get_ssl_ctx = lib.SSL_get_SSL_CTX
        self.get_ssl_ctx.restype = ctypes.c_void_p
        self.get_ssl_ctx.argtypes = [ctypes.c_void_p]
        self.add_client_ca = lib.SSL_CTX_add_client_CA
        self.add_client_ca.restype = ctypes.c_int
        self.add_client_ca.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        self.get_client_ca_list = lib.SSL_CTX_get_client_CA_list
        self.get_client_ca_list.restype = ctypes.c_void_p
        self.get_client_ca_list.argtypes = [ctypes.c_void_p]
        self.sk_num = lib.OPENSSL_sk_num
        self.sk_num.restype = ctypes.c_int
        self.sk_num.argtypes = [ctypes.c_void_p]
        self.d2i_x509 = lib.d2i_X509
        self.d2i_x509.restype = ctypes.c_void_p
        self.d2i_x509.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_long]
        self.x509_free = lib.X509_free
        self.x509_free.restype = None
        self.x509_free.argtypes = [ctypes.c_void_p]
        self.ctx_ctrl = lib.SSL_CTX_ctrl
        self.ctx_ctrl.restype = ctypes.c_long
        self.ctx_ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]


_LIB: _Lib | None = None
_LOADED = False


def _lib() -> _Lib | None:
    global _LIB, _LOADED
    if not _LOADED:
        _LOADED = True
        if sys.implementation.name == "cpython":
            try:
                import _ssl

                _LIB = _Lib(ctypes.CDLL(_ssl.__file__), _ssl._SSLSocket)  # type: ignore[attr-defined]
            except (ImportError, AttributeError, OSError):
                _LIB = None
    return _LIB


def _word(address: int, index: int) -> int:
    return ctypes.c_void_p.from_address(address + _HEADER + index * _WORD).value or 0


def _ssl_ctx(lib: _Lib, context: ssl.SSLContext) -> int | None:
    """The ``SSL_CTX *`` of ``context``, or None when the object layout is not the expected one."""
    candidate = _word(id(context), 0)
    if context.protocol == ssl.PROTOCOL_TLS_CLIENT:
        # A client context (the tests' devices limit their groups this way too).
        probe = context.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_hostname="probe.invalid")
    else:
        probe = context.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_side=True)
    raw = getattr(probe, "_sslobj", None)
    if type(raw) is not lib.socket_type:
        return None
    # PySSLSocket: PyObject_HEAD; PyObject *Socket; SSL *ssl; PySSLContext *ctx
    if _word(id(raw), 2) != id(context):
        return None
    ssl_ptr = _word(id(raw), 1)
    if not ssl_ptr or not candidate or lib.get_ssl_ctx(ssl_ptr) != candidate:
        return None
    return candidate


def available() -> bool:
    """True when this Python's ``ssl`` lets :func:`set_client_ca_names` work."""
    lib = _lib()
    if lib is None:
        return False
    return _ssl_ctx(lib, ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)) is not None


def set_client_ca_names(context: ssl.SSLContext, certs: tuple[x509.Certificate, ...]) -> bool:
    """Add the subject of each of ``certs`` to the CA names ``context`` sends; False if it cannot."""
    lib = _lib()
    if lib is None:
        return False
    ctx_ptr = _ssl_ctx(lib, context)
    if ctx_ptr is None:
        return False
    for cert in certs:
        der = cert.public_bytes(Encoding.DER)
        buf = ctypes.create_string_buffer(der, len(der))
        cursor = ctypes.c_void_p(ctypes.addressof(buf))
        # d2i_X509 reads from *cursor: pass the cursor's address.
        x509_ptr = lib.d2i_x509(None, ctypes.byref(cursor), len(der))
        if not x509_ptr:
            return False
        try:
            # Copies the subject name; the certificate itself is ours to free.
            if lib.add_client_ca(ctx_ptr, x509_ptr) != 1:
                return False
        finally:
            lib.x509_free(x509_ptr)
    return True


def client_ca_count(context: ssl.SSLContext) -> int:
    """How many CA names ``context`` sends (-1 when that cannot be read)."""
    lib = _lib()
    if lib is None:
        return -1
    ctx_ptr = _ssl_ctx(lib, context)
    if ctx_ptr is None:
        return -1
    names = lib.get_client_ca_list(ctx_ptr)
    return int(lib.sk_num(names)) if names else 0


#: ``SSL_CTRL_SET_GROUPS_LIST`` of ``ssl.h`` (``SSL_CTX_set1_groups_list`` is a macro over it).
_SET_GROUPS_LIST = 92


def set_groups_list(context: ssl.SSLContext, groups: str) -> bool:
    """Limit the key exchange groups ``context`` accepts to ``groups`` (OpenSSL's list syntax).

    Python 3.11's ``ssl`` can set one ECDH curve (``set_ecdh_curve``), not a list;
    ``SSL_CTX_set1_groups_list`` sets the list. False when it cannot be called here;
    a list OpenSSL rejects (an unknown name) raises ``ValueError``.
    """
    lib = _lib()
    if lib is None:
        return False
    ctx_ptr = _ssl_ctx(lib, context)
    if ctx_ptr is None:
        return False
    if lib.ctx_ctrl(ctx_ptr, _SET_GROUPS_LIST, 0, ctypes.c_char_p(groups.encode("ascii"))) != 1:
        raise ValueError(f"OpenSSL rejected the groups list {groups!r}")
    return True
