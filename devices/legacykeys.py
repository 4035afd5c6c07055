"""EC and RSA keys through OpenSSL's built-in methods in a fleet process (OpenSSL 3.0).

Why. On OpenSSL 3.0 (the one Python's ``ssl`` runs on here) every public key in every
certificate a device receives is decoded through ``OSSL_DECODER_CTX_new_for_pkey``,
which looks through every decoder of every provider each time: about 0.84 million
instructions per certificate, two certificates (the edge's leaf and intermediate)
per connect. Signing and verifying go through provider fetches as well. Counted
under callgrind, a device's connect was 10.05 million instructions, 8.6 million of
them in ``SSL_do_handshake``: the fleet needed more CPU per connect than the edge it
loads. In-memory handshakes in one process (device and server, EC P-256, this
module's tests and ``python -m bench --only fleet``) take about a third less CPU with
the built-in methods.

How. OpenSSL 3.0 still has its built-in ("legacy") EC and RSA ``EVP_PKEY_METHOD``\\ s,
and it uses them when an ENGINE supplies the method for a key type: a certificate's
public key is then decoded by the built-in ASN.1 method (``x509_pubkey_decode``) and
signatures are made and checked by the built-in ECDSA and RSA code. :func:`install`
registers, through ``ctypes``, an ENGINE whose only content is those built-in
methods (``EVP_PKEY_meth_find``), as the default for EC and RSA keys. No
cryptography is written here; nothing is skipped: chains, signatures, names, times
and the device's own signature are checked exactly as before (the tests present a
certificate with a broken signature, a wrong name and an unknown CA, and check
that each is still refused).

Scope. The ENGINE is process-wide. Only fleet processes install it (``edgesim fleet
run --tls-keys legacy``, the default); the edge never does, so the server side keeps
OpenSSL's provider path. It is installed only on OpenSSL 3.0.x (3.1 and later made
the decoders fast; 3.x builds without ENGINE support lack the symbols) and only on
CPython; elsewhere :func:`install` says why not and changes nothing.
"""

from __future__ import annotations

import ctypes
import ssl
import sys
import threading
from typing import Any

__all__ = ["KEY_TYPES", "active", "install", "uninstall"]

#: The key types handed to the built-in methods (OpenSSL's EVP_PKEY_RSA, EVP_PKEY_EC).
KEY_TYPES: dict[str, int] = {"RSA": 6, "EC": 408}

_P = ctypes.c_void_p
#: ``int (*)(ENGINE *, EVP_PKEY_METHOD **, const int **nids, int nid)``
_PKEY_METHS = ctypes.CFUNCTYPE(
    ctypes.c_int, _P, ctypes.POINTER(_P), ctypes.POINTER(ctypes.POINTER(ctypes.c_int)), ctypes.c_int
)


class _Engine:
    """The registered ENGINE and everything its callback needs kept alive."""

    def __init__(self, lib: Any, engine: int, callback: Any, nids: Any) -> None:
        self.lib = lib
        self.engine = engine
        self.callback = callback
        self.nids = nids


_lock = threading.Lock()
_engine: _Engine | None = None
#: Uninstalled ENGINEs, kept with their callbacks for the process: keys made while
#: one was in effect still name it, and OpenSSL calls its callback for them.
_kept: list[_Engine] = []
_status = "off"


def _functions() -> Any:
    import _ssl

    # dlsym on the extension's handle also searches the libraries it was linked with:
    # the libcrypto that Python's ssl runs on, not another copy.
    lib = ctypes.CDLL(_ssl.__file__)
    table = {
        "ENGINE_new": (_P, []),
        "ENGINE_free": (ctypes.c_int, [_P]),
        "ENGINE_set_id": (ctypes.c_int, [_P, ctypes.c_char_p]),
        "ENGINE_set_name": (ctypes.c_int, [_P, ctypes.c_char_p]),
        "ENGINE_set_pkey_meths": (ctypes.c_int, [_P, _PKEY_METHS]),
        "ENGINE_set_default_pkey_meths": (ctypes.c_int, [_P]),
        "ENGINE_unregister_pkey_meths": (None, [_P]),
        "ENGINE_get_pkey_meth_engine": (_P, [ctypes.c_int]),
        "ENGINE_finish": (ctypes.c_int, [_P]),
        "EVP_PKEY_meth_find": (_P, [ctypes.c_int]),
        "ERR_clear_error": (None, []),
    }
    for name, (res, args) in table.items():
        f = getattr(lib, name)  # AttributeError: a build without ENGINE support
        f.restype = res
        f.argtypes = args
    return lib


def install() -> str:
    """Hand EC and RSA keys to OpenSSL's built-in methods in this process.

    Returns what is in effect, in words for reports: ``"legacy EC/RSA methods
    (OpenSSL 3.0.x)"`` when installed (or already), else ``"provider (...)"`` with
    the reason it was not. Idempotent and thread-safe.
    """
    global _engine, _status
    with _lock:
        if _engine is not None:
            return _status
        if sys.implementation.name != "cpython":
            return "provider (not CPython)"
        if ssl.OPENSSL_VERSION_INFO[:2] != (3, 0):
            return f"provider ({ssl.OPENSSL_VERSION}: its decoders need no help)"
        try:
            lib = _functions()
        except (ImportError, AttributeError, OSError) as exc:
            return f"provider (OpenSSL without ENGINE support: {exc})"
        methods: dict[int, int] = {}
        for name, nid in KEY_TYPES.items():
            found = lib.EVP_PKEY_meth_find(nid)
            if not found:
                return f"provider (OpenSSL has no built-in {name} method)"
            methods[nid] = found
        nids = (ctypes.c_int * len(methods))(*methods)

        def pkey_meths(_e: Any, pmeth: Any, pnids: Any, nid: int) -> int:
            # Called by OpenSSL (with the GIL taken by ctypes) whenever it makes a
            # key context for one of these types: list the types, or give the method.
            if not pmeth:
                pnids[0] = ctypes.cast(nids, ctypes.POINTER(ctypes.c_int))
                return len(methods)
            method = methods.get(nid)
            pmeth[0] = method
            return 1 if method else 0

        callback = _PKEY_METHS(pkey_meths)
        engine = lib.ENGINE_new()
        if not engine:
            return "provider (ENGINE_new failed)"
        ok = (
            lib.ENGINE_set_id(engine, b"edgesim-builtin-keys")
            and lib.ENGINE_set_name(engine, b"OpenSSL's built-in EC and RSA methods")
            and lib.ENGINE_set_pkey_meths(engine, callback)
            and lib.ENGINE_set_default_pkey_meths(engine)
        )
        if not ok:
            lib.ENGINE_unregister_pkey_meths(engine)
            lib.ENGINE_free(engine)
            lib.ERR_clear_error()
            return "provider (the ENGINE could not be registered)"
        _engine = _Engine(lib, engine, callback, nids)
        # Prove it: OpenSSL must now name this ENGINE for every one of the types.
        for nid in methods:
            chosen = lib.ENGINE_get_pkey_meth_engine(nid)
            if chosen:
                lib.ENGINE_finish(chosen)
            if chosen != engine:
                _uninstall_locked()
                return "provider (OpenSSL did not take the ENGINE)"
        _status = f"legacy EC/RSA methods ({ssl.OPENSSL_VERSION.split(' ')[1]})"
        return _status


def _uninstall_locked() -> None:
    global _engine, _status
    if _engine is None:
        return
    _engine.lib.ENGINE_unregister_pkey_meths(_engine.engine)
    _kept.append(_engine)
    _status = "off"
    _engine = None


def uninstall() -> None:
    """Give EC and RSA keys back to the providers (keys already made keep their methods)."""
    with _lock:
        _uninstall_locked()


def active() -> bool:
    """True while :func:`install` is in effect in this process."""
    return _engine is not None
