"""Shared helpers for the device tests: a PKI, a Mosquitto broker, a TLS test server.

Loaded by the device test modules with ``testmodules.load_device_support()`` (tests
are not a package). Holds no tests itself.

OpenSSL checks validity against the system clock in a real handshake, so the PKI is
built around ``now`` given by the caller; expired certificates end a day before it.
"""

from __future__ import annotations

import contextlib
import getpass
import queue
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from certs.authority import CertificateAuthority, IssuedCert
from certs.crl import build_crl


@dataclass
class Files:
    """A certificate and its key written to disk."""

    cert: Path
    key: Path
    issued: IssuedCert


@dataclass
class Pki:
    """Everything the device tests need, on disk under ``root``."""

    root: Path
    ca: CertificateAuthority
    ca_pem: Path
    other_ca_pem: Path
    server: Files
    device: Files
    expired: Files
    revoked: Files
    foreign: Files
    crl: Path


def _write(folder: Path, name: str, issued: IssuedCert) -> Files:
    cert = folder / f"{name}.pem"
    key = folder / f"{name}.key"
    cert.write_bytes(issued.fullchain_pem)
    key.write_bytes(issued.key_pem())
    return Files(cert, key, issued)


def make_pki(folder: Path, now: datetime) -> Pki:
    """A root, the edge's certificate for 127.0.0.1/localhost, and devices good and bad."""
    ca = CertificateAuthority.create_root("Device Test Root", now=now)
    other = CertificateAuthority.create_root("Somebody Else's Root", now=now)
    ca_pem = folder / "ca.pem"
    ca_pem.write_bytes(ca.cert_pem)
    other_pem = folder / "other-ca.pem"
    other_pem.write_bytes(other.cert_pem)
    server = _write(folder, "server", ca.issue_server(["127.0.0.1", "localhost"], now=now))
    device = _write(folder, "device-1", ca.issue_device("device-1", now=now))
    expired = _write(
        folder,
        "expired",
        ca.issue_device(
            "device-old", not_before=now - timedelta(days=30), not_after=now - timedelta(days=1)
        ),
    )
    revoked = _write(folder, "revoked", ca.issue_device("device-stolen", now=now))
    foreign = _write(folder, "foreign", other.issue_device("device-foreign", now=now))
    an_hour_ago = now - timedelta(hours=1)
    crl_obj = build_crl(
        ca,
        [(revoked.issued.cert.serial_number, an_hour_ago, None)],
        crl_number=1,
        last_update=an_hour_ago,
        next_update=now + timedelta(days=1),
    )
    crl = folder / "crl.pem"
    crl.write_bytes(crl_obj.public_bytes(serialization.Encoding.PEM))
    return Pki(folder, ca, ca_pem, other_pem, server, device, expired, revoked, foreign, crl)


def free_port() -> int:
    """A port that was free a moment ago (for servers that cannot take port 0)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Broker:
    """A running Mosquitto: its port and the log lines it wrote."""

    port: int
    log: list[str]


@contextlib.contextmanager
def mosquitto(
    pki: Pki,
    folder: Path,
    *,
    tls_version: str | None = None,
    allow_anonymous: bool = True,
    crl: bool = True,
    timeout: float = 10.0,
    extra: Sequence[str] = (),
) -> Iterator[Broker]:
    """Run Mosquitto 2.0 with mTLS (``require_certificate true``) on a free loopback port.

    ``extra`` lines are appended to its configuration (an ``acl_file``, limits...).

    Readiness is its own log line ("mosquitto version X running", written once it
    listens), read as it arrives.
    """
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    port = free_port()
    conf = folder / f"mosquitto-{port}.conf"
    lines = [
        # Run as root, Mosquitto drops to user "mosquitto", which cannot read the
        # test's private temporary folder: stay the current user instead.
        f"user {getpass.getuser()}",
        "per_listener_settings false",
        "persistence false",
        "log_dest stderr",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "log_type information",
        f"allow_anonymous {'true' if allow_anonymous else 'false'}",
        f"listener {port} 127.0.0.1",
        f"cafile {pki.ca_pem}",
        f"certfile {pki.server.cert}",
        f"keyfile {pki.server.key}",
        "require_certificate true",
        # Without it CONNACK waits behind the session tickets for a delayed ACK (40 ms).
        "set_tcp_nodelay true",
    ]
    if crl:
        lines.append(f"crlfile {pki.crl}")
    if tls_version:
        lines.append(f"tls_version {tls_version}")
    lines.extend(extra)
    conf.write_text("\n".join(lines) + "\n")
    proc = subprocess.Popen(
        [binary, "-c", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    log: list[str] = []
    ready: queue.Queue[bool] = queue.Queue()

    def pump() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            log.append(line.rstrip())
            if line.rstrip().endswith(" running"):
                ready.put(True)
        ready.put(False)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        try:
            ok = ready.get(timeout=timeout)
        except queue.Empty:
            ok = False
        if not ok:
            raise RuntimeError("mosquitto did not start:\n" + "\n".join(log))
        yield Broker(port, log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        reader.join(timeout=5)
        if proc.stderr is not None:
            proc.stderr.close()
