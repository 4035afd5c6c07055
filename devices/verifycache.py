"""A fleet context verifies the edge's certificate chain once, not once per device.

Why. Every device of a fleet that shares a context receives the same chain from the
edge (its leaf and intermediate) and verified it again: building the chain and two
ECDSA verifications, about 1.9 million instructions of the 7.2 million a device's
connect costs (callgrind, ``--tls-keys legacy``). Browsers keep the result of a
chain verification for the same reason (Chromium's certificate verifier caches
results by chain and host name).

What is kept. :meth:`VerifyCache.attach` installs, through ``ctypes``, a
certificate verification callback on the context's ``SSL_CTX``
(``SSL_CTX_set_cert_verify_callback``). For each handshake it takes the exact bytes
of every certificate the edge sent (leaf first) and the host name or IP address
being verified.
When that chain was verified in full by OpenSSL (``X509_verify_cert``) on this
context before, and none of its certificates is outside its validity period now,
the handshake goes on without verifying it again. Anything else goes through
``X509_verify_cert`` as before, and only a success is remembered. So:

- a chain never seen, a changed leaf, another intermediate, a missing one, or
  another host name or address is verified in full (a refusal keeps its usual reason);
- the edge's CertificateVerify signature is always checked by OpenSSL, so every
  device still proves that the edge holds the key of the certificate it sent;
- the edge's side of the handshake is unchanged: it verifies every device.

``edgesim fleet run --verify-cache off`` verifies every device's chain in full.
"""

from __future__ import annotations

import ctypes
import hashlib
import ssl
import threading
from typing import Any

__all__ = ["VerifyCache"]

_P = ctypes.c_void_p
#: ``int (*)(X509_STORE_CTX *, void *)``
_VERIFY = ctypes.CFUNCTYPE(ctypes.c_int, _P, _P)
#: Chains remembered per context (an edge usually sends one; a few for several SNIs).
_MAX = 64


def _functions() -> Any:
    import _ssl

    # The libssl/libcrypto that Python's ssl runs on (see devices.identity).
    lib = ctypes.CDLL(_ssl.__file__)
    table = {
        "SSL_CTX_set_cert_verify_callback": (None, [_P, _VERIFY, _P]),
        "SSL_get_SSL_CTX": (_P, [_P]),
        "X509_verify_cert": (ctypes.c_int, [_P]),
        "X509_STORE_CTX_get0_cert": (_P, [_P]),
        "X509_STORE_CTX_get0_untrusted": (_P, [_P]),
        "X509_STORE_CTX_get0_param": (_P, [_P]),
        "X509_VERIFY_PARAM_get0_host": (ctypes.c_char_p, [_P, ctypes.c_int]),
        "X509_VERIFY_PARAM_get1_ip_asc": (_P, [_P]),
        "CRYPTO_free": (None, [_P, ctypes.c_char_p, ctypes.c_int]),
        "OPENSSL_sk_num": (ctypes.c_int, [_P]),
        "OPENSSL_sk_value": (_P, [_P, ctypes.c_int]),
        "i2d_X509": (ctypes.c_int, [_P, ctypes.POINTER(ctypes.c_char_p)]),
        "X509_get0_notBefore": (_P, [_P]),
        "X509_get0_notAfter": (_P, [_P]),
        "X509_cmp_current_time": (ctypes.c_int, [_P]),
    }
    for name, (res, args) in table.items():
        f = getattr(lib, name)
        f.restype = res
        f.argtypes = args
    return lib


class VerifyCache:
    """Chains the edge sent that OpenSSL verified in full, for the contexts attached."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lib: Any = None
        self._callback: Any = None
        #: sha256(host name, IP address, every certificate's DER) of chains verified on a context,
        #: keyed by the context's SSL_CTX address.
        self._verified: dict[int, dict[bytes, None]] = {}
        self._contexts: list[ssl.SSLContext] = []
        #: Handshakes that reused a verification, and those verified in full.
        self.hits = 0
        self.misses = 0

    def attach(self, context: ssl.SSLContext) -> bool:
        """Install the cache on ``context``; False (nothing changed) where it cannot be."""
        from devices.identity import connection_pointer

        with self._lock:
            if self._lib is None:
                try:
                    self._lib = _functions()
                except (ImportError, AttributeError, OSError):
                    return False
                self._callback = _VERIFY(self._verify)
            probe = context.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_hostname="probe")
            ssl_ptr = connection_pointer(probe)  # 0 unless the layout was checked
            if not ssl_ptr:
                return False
            ctx_ptr = self._lib.SSL_get_SSL_CTX(ssl_ptr)
            if not ctx_ptr:
                return False
            self._verified.setdefault(int(ctx_ptr), {})
            self._contexts.append(context)  # the SSL_CTX must outlive the callback's use
            self._lib.SSL_CTX_set_cert_verify_callback(ctx_ptr, self._callback, ctx_ptr)
            return True

    def _verify(self, store_ctx: int, ctx_ptr: int) -> int:
        # Called by OpenSSL inside the handshake (ctypes takes the GIL).
        lib = self._lib
        certs: list[int] = []
        try:
            certs = self._certs(store_ctx)
            key = self._key(store_ctx, certs)
        except Exception:  # an unreadable chain: OpenSSL judges it as always
            key = None
        seen = self._verified.get(int(ctx_ptr or 0))
        if key is not None and seen is not None and key in seen and self._in_time(certs):
            self.hits += 1
            return 1
        self.misses += 1
        ok = int(lib.X509_verify_cert(store_ctx))
        if ok == 1 and key is not None and seen is not None:
            if len(seen) >= _MAX:
                seen.pop(next(iter(seen)))
            seen[key] = None
        return ok

    def _certs(self, store_ctx: int) -> list[int]:
        lib = self._lib
        leaf = lib.X509_STORE_CTX_get0_cert(store_ctx)
        certs = [int(leaf)] if leaf else []
        chain = lib.X509_STORE_CTX_get0_untrusted(store_ctx)
        if chain:
            for i in range(lib.OPENSSL_sk_num(chain)):
                cert = lib.OPENSSL_sk_value(chain, i)
                if cert and int(cert) not in certs:
                    certs.append(int(cert))
        return certs

    def _key(self, store_ctx: int, certs: list[int]) -> bytes | None:
        lib = self._lib
        if not certs:
            return None
        digest = hashlib.sha256()
        param = lib.X509_STORE_CTX_get0_param(store_ctx)
        if not param:
            return None
        # What the name check compares against: a host name, or an IP address (Python
        # checks an IP literal given as server_hostname as an address, not a name).
        host = lib.X509_VERIFY_PARAM_get0_host(param, 0)
        digest.update(b"host:" + (host or b"") + b"\0")
        ip = lib.X509_VERIFY_PARAM_get1_ip_asc(param)
        if ip:
            digest.update(b"ip:" + ctypes.string_at(ip) + b"\0")
            lib.CRYPTO_free(ip, None, 0)
        for cert in certs:
            size = lib.i2d_X509(cert, None)
            if size <= 0:
                return None
            buf = ctypes.create_string_buffer(size)
            out = ctypes.c_char_p(ctypes.addressof(buf))
            if lib.i2d_X509(cert, ctypes.byref(out)) != size:
                return None
            digest.update(size.to_bytes(4, "big") + buf.raw)
        return digest.digest()

    def _in_time(self, certs: list[int]) -> bool:
        # X509_cmp_current_time: -1 when the time is before now, 1 after, 0 on error.
        lib = self._lib
        for cert in certs:
            if lib.X509_cmp_current_time(lib.X509_get0_notBefore(cert)) != -1:
                return False
            if lib.X509_cmp_current_time(lib.X509_get0_notAfter(cert)) != 1:
                return False
        return True
