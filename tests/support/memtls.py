"""TLS handshakes in memory (``ssl.MemoryBIO``) for tests of the device side's checks.

Shared by the tests of ``devices.legacykeys`` and ``devices.verifycache``: a device
context and a server context meet without sockets, and the verdict comes back as
text ("ok", or the side that refused and OpenSSL's reason).
"""

from __future__ import annotations

import base64
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding


def broken_signature(source: Path, target: Path) -> None:
    """``source``'s first certificate with one bit of its signature flipped, then the rest."""
    certs = x509.load_pem_x509_certificates(source.read_bytes())
    der = bytearray(certs[0].public_bytes(Encoding.DER))
    der[-3] ^= 0x01  # inside the signature value, the last field of the certificate
    pem = b"-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(bytes(der))
    pem += b"-----END CERTIFICATE-----\n"
    target.write_bytes(pem + b"".join(c.public_bytes(Encoding.PEM) for c in certs[1:]))


def _refusal(side: str, exc: ssl.SSLError) -> str:
    return f"{side}: {getattr(exc, 'verify_message', None) or exc.reason}"


def handshake(device: ssl.SSLContext, server: ssl.SSLContext, hostname: str = "localhost") -> str:
    """Run one handshake in memory: "ok", or the side and reason that refused it."""
    d_in, d_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    d = device.wrap_bio(d_in, d_out, server_hostname=hostname)
    s = server.wrap_bio(s_in, s_out, server_side=True)
    done = {"device": False, "server": False}
    for _ in range(20):
        for side, obj, out, peer_in in (("device", d, d_out, s_in), ("server", s, s_out, d_in)):
            if not done[side]:
                try:
                    obj.do_handshake()
                    done[side] = True
                except ssl.SSLWantReadError:
                    pass
                except ssl.SSLError as exc:
                    return _refusal(side, exc)
            peer_in.write(out.read())
        if done["device"] and done["server"]:
            # TLS 1.3: the server judges the device's certificate after the device is
            # done; a read on the device side then gets the server's alert.
            try:
                d.write(b"ping")
                s_in.write(d_out.read())
                assert s.read(4) == b"ping"
            except ssl.SSLError as exc:
                return _refusal("server", exc)
            peer = d.getpeercert()
            assert peer is not None
            assert peer["subject"]
            if server.verify_mode == ssl.CERT_REQUIRED:
                assert s.getpeercert()
            return "ok"
    raise AssertionError("the handshake did not finish")
