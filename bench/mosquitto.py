"""Mosquitto 2.0 as the reference broker the benchmarks measure the edge against.

Every benchmark starts it the same way: a config on a free loopback port, with a
mutual TLS listener when given the PKI files, then waits for its "running" log
line and keeps draining its stderr (it logs each connection, and a full pipe
would block it). Each caller adds the lines its measurement needs.
"""

from __future__ import annotations

import getpass
import shutil
import subprocess
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from bench.procstat import free_port, stop_process

__all__ = ["Mosquitto", "TlsFiles", "mosquitto_binary", "start_mosquitto"]


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """The CA chain that verifies devices, and the server's certificate chain and key."""

    cafile: Path
    certfile: Path
    keyfile: Path


@dataclass(slots=True)
class Mosquitto:
    """A running Mosquitto and the port it listens on."""

    proc: subprocess.Popen[bytes]
    port: int
    drain: threading.Thread

    @property
    def pid(self) -> int:
        """Its process id (for CPU and memory readings)."""
        return self.proc.pid

    def stop(self) -> None:
        """Terminate it and wait (kill it if it does not go within 20 s)."""
        stop_process(self.proc)
        # The drain thread ends at EOF once the process is gone; then the pipe can close.
        self.drain.join(10)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


def mosquitto_binary() -> str | None:
    """Where mosquitto is (Debian installs it in /usr/sbin, often not on PATH)."""
    return shutil.which("mosquitto") or shutil.which(
        "mosquitto", path="/usr/sbin:/usr/local/sbin:/usr/bin"
    )


def start_mosquitto(work: Path, *, tls: TlsFiles | None, extra: Sequence[str] = ()) -> Mosquitto:
    """Start Mosquitto on a free 127.0.0.1 port; return once it logs that it runs.

    With ``tls`` the listener requires a client certificate verified by
    ``tls.cafile``, as the edge does. ``extra`` lines go at the end of the config.
    """
    binary = mosquitto_binary()
    if binary is None:
        raise RuntimeError("mosquitto is not installed (apt-get install mosquitto)")
    port = free_port()
    lines = [
        # Started as root, mosquitto would switch to user "mosquitto", who cannot
        # read the private temporary folder holding the PKI.
        f"user {getpass.getuser()}",
        "allow_anonymous true",
        "log_dest stderr",
        "log_type error",
        "log_type notice",
        # "running" is logged at the information level.
        "log_type information",
        f"listener {port} 127.0.0.1",
    ]
    if tls is not None:
        lines += [
            f"cafile {tls.cafile}",
            f"certfile {tls.certfile}",
            f"keyfile {tls.keyfile}",
            "require_certificate true",
        ]
    conf = work / "mosquitto.conf"
    conf.write_text("\n".join([*lines, *extra, ""]))
    proc = subprocess.Popen(
        [binary, "-c", str(conf)], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL
    )
    assert proc.stderr is not None
    seen = b""
    while b" running" not in seen:
        line = proc.stderr.readline()
        if not line:
            proc.wait()
            raise RuntimeError(f"mosquitto did not start: {seen.decode(errors='replace')}")
        seen += line
    drain = threading.Thread(target=_drain, args=(proc.stderr,), daemon=True)
    drain.start()
    return Mosquitto(proc, port, drain)


def _drain(stream: IO[bytes]) -> None:
    while stream.read(65536):
        pass
