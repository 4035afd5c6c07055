"""The certificate a refused TLS 1.3 device presented, read from its encrypted flight.

The fallback of :mod:`edge.tls.verifiedchain`: the edge runs this tap only on a
Python where OpenSSL's verified chain cannot be read, because the tap costs CPU on
every TLS 1.3 connect where the chain costs nothing until a refusal.

Python's ``ssl`` hands out no peer certificate after a failed verification, and
TLS 1.3 encrypts the client's ``Certificate`` message. But OpenSSL can log every
handshake's secrets (``SSLContext.keylog_filename``, the ``SSLKEYLOGFILE``
format). :class:`KeyLogTap` points that log at a FIFO it reads without blocking,
keeps the ``CLIENT_HANDSHAKE_TRAFFIC_SECRET`` of each handshake in progress
(keyed by client random), and forgets it when the handshake ends. On a refusal,
:func:`decrypt_client_certificates` derives the handshake key and IV
(HKDF-Expand-Label, RFC 8446 section 7.1) and decrypts the client's records
(AES-GCM or ChaCha20-Poly1305) that :class:`~edge.tls.clienthello.ClientFlightReader`
kept, then parses the ``Certificate`` message.

Cost: OpenSSL's key log callback writes five lines per TLS 1.3 handshake to
the FIFO (five small ``write`` calls, no reader woken). The edge reads the FIFO
only every few hundred handshake steps or when a refusal needs a secret, and
keeps only the lines it needs; the decryption runs only on refusals. Counted
with callgrind, the tap costs about 320,000 instructions per handshake, four
fifths of them in OpenSSL formatting each line byte by byte (``sprintf``)
before Python's callback writes it; nothing on the edge's side can avoid
those while the key log is on. Measured side by side with the broker benchmark
(2026-11-27, when the tap was the edge's default): +0.16 ms of 2.36 ms per connect;
``python -m bench.connect_cost --capture tap`` counts it against ``chain``.
``tls.capture_tls13_certificates = false`` turns the tap off; without it (and
without the verified chain) a TLS 1.3 refusal names no certificate while a TLS 1.2
one does (its Certificate message is cleartext).
When ``tls.keylog_file`` is configured too, every line read is also appended
there (for Wireshark).

Nothing here raises on bad input: a secret that is missing, or records that do
not decrypt, give no certificate.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import IO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

__all__ = ["KeyLogTap", "decrypt_client_certificates", "hkdf_expand_label"]

# The only key log lines the tap needs: "<label> <client random hex> <secret hex>".
_CLIENT_HANDSHAKE_LINE = re.compile(
    rb"^CLIENT_HANDSHAKE_TRAFFIC_SECRET ([0-9a-fA-F]+) ([0-9a-fA-F]+)$", re.MULTILINE
)
# F_SETPIPE_SZ / F_GETPIPE_SZ (Linux): a larger pipe gives more slack between two reads.
_F_SETPIPE_SZ = 1031
_F_GETPIPE_SZ = 1032
_PIPE_SIZE = 1 << 20
_DEFAULT_PIPE_SIZE = 1 << 16
_READ_SIZE = 1 << 16
# One do_handshake call logs at most the five TLS 1.3 lines (label, 64 hex digits
# of client random, up to 96 of secret): under 1 KiB.
_MAX_BYTES_PER_STEP = 1024


class KeyLogTap:
    """A FIFO that OpenSSL writes its key log to, and the secrets of handshakes in progress.

    Reading is lazy: the edge calls :meth:`handshake_step` after every handshake
    step, which only counts; the FIFO is read when a refusal needs a secret
    (:meth:`pop`) or when what OpenSSL may have written since the last read
    approaches half the pipe's capacity (OpenSSL's write must never block the
    event loop that reads the pipe). A read keeps only the
    ``CLIENT_HANDSHAKE_TRAFFIC_SECRET`` lines, of handshakes not yet forgotten.
    """

    def __init__(self, *, tee: Path | None = None, capacity: int = 20_000) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="edgesim-keylog-"))
        self.path = self._dir / "keylog.fifo"
        os.mkfifo(self.path, 0o600)
        # Opened for reading first, non-blocking, so OpenSSL's open for writing
        # (when keylog_filename is set) does not wait for a reader.
        self._fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
        with contextlib.suppress(OSError):
            fcntl.fcntl(self._fd, _F_SETPIPE_SZ, _PIPE_SIZE)
        try:
            pipe_size = fcntl.fcntl(self._fd, _F_GETPIPE_SZ)
        except OSError:
            pipe_size = _DEFAULT_PIPE_SIZE
        #: Handshake steps between two reads: half the pipe, at the most a step writes.
        self.steps_per_read = max(1, pipe_size // 2 // _MAX_BYTES_PER_STEP)
        self._steps = 0
        self._partial = b""
        self._secrets: collections.OrderedDict[bytes, bytes] = collections.OrderedDict()
        # Handshakes forgotten since the last read: their line may still be in the pipe.
        self._forgotten: set[bytes] = set()
        self._capacity = capacity
        self._tee: IO[bytes] | None = tee.open("ab") if tee is not None else None

    def handshake_step(self) -> None:
        """Count one handshake step (``do_handshake`` call); read the FIFO when it is time."""
        self._steps += 1
        if self._steps >= self.steps_per_read:
            self.drain()

    def drain(self) -> None:
        """Read whatever OpenSSL wrote; keep client handshake secrets of live handshakes."""
        self._steps = 0
        chunks = []
        while True:
            try:
                chunk = os.read(self._fd, _READ_SIZE)
            except BlockingIOError:
                break
            if not chunk:
                break
            chunks.append(chunk)
            if len(chunk) < _READ_SIZE:
                break  # the pipe is empty: no need for a read that says so
        forgotten = self._forgotten
        if not chunks:
            forgotten.clear()
            return
        data = self._partial + b"".join(chunks)
        if self._tee is not None:
            self._tee.write(data[len(self._partial) :])
            self._tee.flush()
        cut = data.rfind(b"\n") + 1
        self._partial = data[cut:]
        secrets = self._secrets
        for match in _CLIENT_HANDSHAKE_LINE.finditer(data, 0, cut):
            try:
                random = bytes.fromhex(match[1].decode())
                secret = bytes.fromhex(match[2].decode())
            except ValueError:
                continue
            if random not in forgotten:
                secrets[random] = secret
        # Every line written before those handshakes ended has been read now.
        forgotten.clear()
        while len(secrets) > self._capacity:
            secrets.popitem(last=False)

    def pop(self, client_random: bytes) -> bytes | None:
        """Return and forget the client handshake secret of the handshake ``client_random``."""
        self.drain()
        return self._secrets.pop(client_random, None)

    def forget(self, client_random: bytes) -> None:
        """Forget a handshake that ended (successfully or not)."""
        if self._secrets.pop(client_random, None) is None:
            self._forgotten.add(client_random)

    def __len__(self) -> int:
        return len(self._secrets)

    def close(self) -> None:
        """Close and remove the FIFO (contexts still writing to it must be gone first)."""
        with contextlib.suppress(OSError):
            os.close(self._fd)
        if self._tee is not None:
            self._tee.close()
        shutil.rmtree(self._dir, ignore_errors=True)


def hkdf_expand_label(
    secret: bytes, label: bytes, length: int, algorithm: hashes.HashAlgorithm
) -> bytes:
    """HKDF-Expand-Label(secret, label, "", length) of RFC 8446 section 7.1."""
    full = b"tls13 " + label
    info = length.to_bytes(2, "big") + bytes([len(full)]) + full + b"\x00"
    return HKDFExpand(algorithm=algorithm, length=length, info=info).derive(secret)


def decrypt_client_certificates(
    secret: bytes, cipher_suite: int, records: list[bytes]
) -> tuple[bytes, ...]:
    """Decrypt a TLS 1.3 client flight and return the DER certificates it presented.

    ``records`` are whole TLS records (header included) of content type 23, in
    the order received. Returns ``()`` when the suite is unknown, a record does
    not decrypt, or the flight has no certificate.
    """
    if cipher_suite == 0x1301:
        aead: AESGCM | ChaCha20Poly1305 = AESGCM(
            hkdf_expand_label(secret, b"key", 16, hashes.SHA256())
        )
        iv = hkdf_expand_label(secret, b"iv", 12, hashes.SHA256())
    elif cipher_suite == 0x1302:
        aead = AESGCM(hkdf_expand_label(secret, b"key", 32, hashes.SHA384()))
        iv = hkdf_expand_label(secret, b"iv", 12, hashes.SHA384())
    elif cipher_suite == 0x1303:
        aead = ChaCha20Poly1305(hkdf_expand_label(secret, b"key", 32, hashes.SHA256()))
        iv = hkdf_expand_label(secret, b"iv", 12, hashes.SHA256())
    else:
        return ()
    handshake = bytearray()
    for seq, record in enumerate(records):
        nonce = bytes(a ^ b for a, b in zip(iv, seq.to_bytes(12, "big"), strict=True))
        try:
            inner = aead.decrypt(nonce, record[5:], record[:5])
        except (InvalidTag, ValueError):
            break  # application data under the next keys, or not ours: stop here
        inner = inner.rstrip(b"\x00")
        if inner and inner[-1] == 22:
            handshake += inner[:-1]
    return _certificates_from_handshake(bytes(handshake))


def _certificates_from_handshake(data: bytes) -> tuple[bytes, ...]:
    pos = 0
    while pos + 4 <= len(data):
        msg_type = data[pos]
        length = int.from_bytes(data[pos + 1 : pos + 4], "big")
        body = data[pos + 4 : pos + 4 + length]
        pos += 4 + length
        if msg_type != 11 or len(body) != length:
            continue
        # certificate_request_context<0..255>, certificate_list<0..2^24-1> of
        # { cert_data<1..2^24-1>, extensions<0..2^16-1> }
        ctx_len = body[0] if body else 0
        p = 1 + ctx_len
        if p + 3 > len(body):
            return ()
        end = p + 3 + int.from_bytes(body[p : p + 3], "big")
        p += 3
        certs: list[bytes] = []
        while p + 3 <= min(end, len(body)):
            n = int.from_bytes(body[p : p + 3], "big")
            certs.append(body[p + 3 : p + 3 + n])
            p += 3 + n
            if p + 2 > len(body):
                break
            p += 2 + int.from_bytes(body[p : p + 2], "big")
        return tuple(certs)
    return ()
