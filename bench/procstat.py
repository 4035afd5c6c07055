"""What the benchmarks read about processes: CPU time and resident memory, from /proc.

A child such as a broker is measured from outside by its pid, so that its CPU is
counted whichever language it is written in; ``"self"`` is the benchmark itself.
Linux only, like the benchmarks.
"""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

__all__ = ["context_switches", "cpu_seconds", "free_port", "rss_bytes", "stop_process"]

_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int | str) -> float:
    """User + system CPU time of process ``pid`` so far, in seconds."""
    # The command name in field 2 may hold spaces; everything after its ")" splits cleanly.
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def context_switches(pid: int | str) -> int:
    """Context switches so far, voluntary and not, summed over the threads of ``pid``.

    A voluntary one is a thread going to sleep (an event loop with nothing to do,
    a Go thread parking); the others are preemptions, when more threads want to run
    than there are cores. 0 for a process that has gone.
    """
    total = 0
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            text = (task / "status").read_text()
        except OSError:  # the thread ended meanwhile
            continue
        for line in text.splitlines():
            if line.startswith(("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:")):
                total += int(line.split()[1])
    return total


def rss_bytes(pid: int | str = "self") -> int:
    """Resident memory of process ``pid`` now, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago, for a child to listen on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def stop_process(proc: subprocess.Popen[bytes], grace: float = 20.0) -> None:
    """Terminate ``proc`` and reap it; kill it if it is still there after ``grace`` seconds."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
