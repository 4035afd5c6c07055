"""The supervisor of ``edgesim edge serve --workers N``: N edge worker processes on one machine.

What it does, in order:

1. prepares the state every worker shares (the embedded PKI, the seeded trust
   store), once, so workers do not race to create them;
2. without ``--cluster``, starts a nats-server on loopback (a random port, its files
   under ``<state dir>/nats/<node>``): one mechanism for one machine and many;
3. reserves each device port (``SO_REUSEPORT``, bound but never listening, so it
   takes no connections), so that port 0 becomes one port shared by every worker;
4. starts the workers (``edge serve ... --worker-index I``), worker 0 with the admin
   API; each binds its listeners only after it has loaded every active certificate
   set and joined the bus, then writes its ready file;
5. once all are ready, writes its own ready file (the ports, its pid, each worker's
   pid) and says where it listens;
6. restarts a worker that exits (after 0.25 s, doubling up to 8 s while it keeps
   failing within 10 s of starting), with ``worker.exited`` and ``worker.started``
   events on the bus (the admin API shows them);
7. on SIGINT or SIGTERM stops every worker (SIGTERM, then SIGKILL after 10 s), then
   its nats-server, and exits 0.

A worker dies with its supervisor (``PR_SET_PDEATHSIG``), so a killed supervisor
leaves no worker holding the ports.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from certs.cliutil import EXIT_OK, CliError, emit, say
from edge.config import EdgeConfig, HostPort

__all__ = ["SupervisorOptions", "run_supervisor"]

log = logging.getLogger("edgesim.cluster.supervisor")

#: Device listener kinds; each is shared by every worker.
DEVICE_KINDS = ("mqtt", "https", "multi")
#: Worker restarts back off from this delay, doubling while a worker keeps dying young.
RESTART_MIN = 0.25
RESTART_MAX = 8.0
#: A worker that ran this long before exiting is restarted after RESTART_MIN again.
STABLE_AFTER = 10.0


@dataclass
class SupervisorOptions:
    """What the supervisor needs beyond the edge's own configuration.

    ``worker_args`` are the ``edge serve`` arguments every worker gets (config,
    store, policy...); the supervisor adds the listeners, the ready file and the
    cluster flags.
    """

    workers: int
    cluster: list[str] = field(default_factory=list)
    node_id: str = ""
    worker_args: list[str] = field(default_factory=list)
    as_json: bool = False
    ready_timeout: float = 60.0


@dataclass
class _Worker:
    index: int
    proc: asyncio.subprocess.Process | None = None
    started_at: float = 0.0
    delay: float = RESTART_MIN
    task: asyncio.Task[None] | None = None


def _reserve(where: HostPort) -> socket.socket:
    """Hold ``where``'s port for the workers: SO_REUSEPORT, bound, never listening."""
    family = socket.AF_INET6 if ":" in where.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((where.host, where.port))
    except OSError as exc:
        sock.close()
        raise CliError(f"cannot reserve {where} for the workers: {exc.strerror or exc}") from None
    return sock


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: ask the kernel to SIGTERM the worker
    # when the supervisor dies, however it dies.
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Supervisor:
    """Runs the workers of one node (see the module text)."""

    def __init__(self, cfg: EdgeConfig, options: SupervisorOptions) -> None:
        self.cfg = cfg
        self.options = options
        self.node = options.node_id or socket.gethostname()
        self.servers = list(options.cluster)
        self.nats: Any = None
        self.listeners: dict[str, HostPort] = {}
        self.reserved: list[socket.socket] = []
        self.workers = [_Worker(i) for i in range(options.workers)]
        self.stopping = False
        self.tmp = Path(tempfile.mkdtemp(prefix="edgesim-workers-"))
        self.nc: Any = None
        self._nats_task: asyncio.Task[None] | None = None

    # -- start -----------------------------------------------------------------------

    async def start(self) -> None:
        from edge.server import EdgeServer, EdgeServerError

        try:
            await asyncio.to_thread(EdgeServer(self.cfg).prepare)
        except (EdgeServerError, OSError) as exc:
            raise CliError(str(exc)) from None
        except Exception as exc:
            raise CliError(f"cannot prepare the edge's state: {exc}") from None
        if not self.servers:
            from edge.cluster.natsserver import NatsServer, NatsServerError

            safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in self.node)
            store = self.cfg.state_dir / "nats" / safe
            self.nats = NatsServer(store_dir=store, name=safe or "n1")
            try:
                await asyncio.to_thread(self.nats.start)
            except NatsServerError as exc:
                raise CliError(str(exc)) from None
            self.servers = [self.nats.url]
            self._nats_task = asyncio.get_running_loop().create_task(self._watch_nats())
        for kind in DEVICE_KINDS:
            where = getattr(self.cfg.listeners, kind)
            if where is None:
                continue
            sock = _reserve(where)
            self.reserved.append(sock)
            self.listeners[kind] = replace(where, port=sock.getsockname()[1])
        admin = self.cfg.listeners.admin
        if admin is not None:
            port = admin.port or _free_port(admin.host)
            self.listeners["admin"] = replace(admin, port=port)
        await self._connect_bus()
        for worker in self.workers:
            await self._spawn(worker)
        try:
            await asyncio.gather(*(self._wait_ready(w) for w in self.workers))
        except CliError:
            await self.stop()
            raise
        for worker in self.workers:
            worker.task = asyncio.get_running_loop().create_task(self._watch(worker))
        self._write_ready()

    async def _watch_nats(self) -> None:
        # The nats-server this supervisor started is restarted on its port when it
        # dies; until then the workers serve their own devices (see the README).
        server = self.nats
        while not self.stopping:
            proc = server.proc
            if proc is None:
                return
            code = await asyncio.to_thread(proc.wait)
            if self.stopping:
                return
            await asyncio.to_thread(server.stop)  # reaps it and closes its log pipe
            say(f"edgesim edge: nats-server exited with status {code}; restarting it")
            while not self.stopping:
                try:
                    await asyncio.to_thread(server.start)
                    break
                except Exception as exc:
                    say(f"edgesim edge: nats-server did not restart: {exc}")
                    await asyncio.sleep(RESTART_MAX)  # back-off before the next try
            self._write_ready()
            await self._event("bus.restarted", "info", pid=server.proc.pid if server.proc else None)

    async def _connect_bus(self) -> None:
        # The supervisor's own events (a worker died, restarted) go on the bus, where
        # the admin API's /v1/events shows them. Optional: the workers need none of it.
        try:
            import nats

            self.nc = await nats.connect(
                self.servers,
                name=f"edgesim supervisor {self.node}",
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.25,
                pending_size=0,
            )
        except Exception as exc:
            log.warning("supervisor: no bus connection for events: %s", exc)
            self.nc = None

    async def _event(self, kind: str, outcome: str, **fields: Any) -> None:
        say(f"edgesim edge: {kind} " + " ".join(f"{k}={v}" for k, v in fields.items()))
        if self.nc is None or not self.nc.is_connected:
            return
        from edge.cluster.bus import EVENTS

        body = {"kind": kind, "outcome": outcome, "worker": "supervisor", **fields}
        with contextlib.suppress(Exception):
            await self.nc.publish(EVENTS, json.dumps(body).encode())
            await self.nc.flush(2)

    def _argv(self, worker: _Worker) -> list[str]:
        argv = [sys.executable, "-m", "edge.cli", "edge", "serve", *self.options.worker_args]
        for kind in DEVICE_KINDS:
            where = self.listeners.get(kind)
            argv += [f"--{kind}", "off" if where is None else f"{where.host}:{where.port}"]
        admin = self.listeners.get("admin")
        argv += [
            "--admin",
            f"{admin.host}:{admin.port}" if admin is not None and worker.index == 0 else "off",
        ]
        argv += [
            "--ready-file",
            str(self._ready_path(worker)),
            "--worker-index",
            str(worker.index),
            "--cluster",
            ",".join(self.servers),
            "--node-id",
            self.node,
        ]
        if self.nats is not None:
            argv.append("--local-bus")
        return argv

    def _ready_path(self, worker: _Worker) -> Path:
        return self.tmp / f"worker-{worker.index}.json"

    async def _spawn(self, worker: _Worker) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._ready_path(worker).unlink()
        worker.proc = await asyncio.create_subprocess_exec(
            *self._argv(worker), stdin=asyncio.subprocess.DEVNULL, preexec_fn=_die_with_parent
        )
        worker.started_at = time.monotonic()

    async def _wait_ready(self, worker: _Worker) -> None:
        # The worker writes its ready file once its listeners are up; its exit first
        # is a failure. Polling a file every 20 ms is the supervisor's only wait.
        proc = worker.proc
        assert proc is not None
        path = self._ready_path(worker)
        deadline = time.monotonic() + self.options.ready_timeout
        exited = asyncio.ensure_future(proc.wait())
        try:
            while not path.exists():
                if exited.done():
                    raise CliError(
                        f"worker {worker.index} exited with status {proc.returncode} before it"
                        " was ready (its messages are above)"
                    )
                if time.monotonic() > deadline:
                    raise CliError(
                        f"worker {worker.index} was not ready within"
                        f" {self.options.ready_timeout:g} s"
                    )
                await asyncio.wait({exited}, timeout=0.02)
        finally:
            if not exited.done():
                exited.cancel()

    async def _watch(self, worker: _Worker) -> None:
        while not self.stopping:
            proc = worker.proc
            assert proc is not None
            code = await proc.wait()
            if self.stopping:
                return
            lived = time.monotonic() - worker.started_at
            worker.delay = (
                RESTART_MIN if lived > STABLE_AFTER else min(worker.delay * 2, RESTART_MAX)
            )
            await self._event(
                "worker.exited",
                "error",
                index=worker.index,
                pid=proc.pid,
                status=code,
                restart_in=worker.delay,
            )
            await asyncio.sleep(worker.delay)  # back-off between restarts, not a wait for state
            if self.stopping:
                return
            await self._spawn(worker)
            try:
                await self._wait_ready(worker)
            except CliError as exc:
                say(f"edgesim edge: {exc}")
                continue
            assert worker.proc is not None
            self._write_ready()
            await self._event("worker.started", "info", index=worker.index, pid=worker.proc.pid)

    def _write_ready(self) -> None:
        ports = {kind: where.port for kind, where in self.listeners.items()}
        info = {
            "ports": ports,
            "pid": os.getpid(),
            "node": self.node,
            "nats": self.servers,
            "nats_pid": None if self.nats is None or self.nats.proc is None else self.nats.proc.pid,
            "workers": [
                {"index": w.index, "pid": None if w.proc is None else w.proc.pid}
                for w in self.workers
            ],
        }
        path = self.cfg.ready_file
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(info) + "\n", encoding="utf-8")
            os.replace(tmp, path)

    # -- stop ------------------------------------------------------------------------

    async def stop(self) -> None:
        """Stop every worker, then the nats-server this supervisor started."""
        self.stopping = True
        for worker in self.workers:
            if worker.task is not None:
                worker.task.cancel()
        procs = [w.proc for w in self.workers if w.proc is not None and w.proc.returncode is None]
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.nc.close(), 5)
        if self._nats_task is not None:
            self._nats_task.cancel()
        if self.nats is not None:
            await asyncio.to_thread(self.nats.stop)
        for sock in self.reserved:
            sock.close()
        for path in self.tmp.glob("*"):
            with contextlib.suppress(OSError):
                path.unlink()
        with contextlib.suppress(OSError):
            self.tmp.rmdir()


async def run_supervisor(cfg: EdgeConfig, options: SupervisorOptions) -> int:
    """Run the workers until SIGINT or SIGTERM; return the exit status."""
    supervisor = Supervisor(cfg, options)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await supervisor.start()
        where = {k: f"{w.host}:{w.port}" for k, w in supervisor.listeners.items()}
        say("edgesim edge: listening " + " ".join(f"{k}={v}" for k, v in where.items()))
        say(
            f"edgesim edge: {len(supervisor.workers)} workers on node {supervisor.node}, "
            f"bus {','.join(supervisor.servers)}"
            + (" (started here)" if supervisor.nats is not None else "")
        )
        if options.as_json:
            emit(
                {
                    "ports": {k: w.port for k, w in supervisor.listeners.items()},
                    "listen": where,
                    "workers": [w.proc.pid for w in supervisor.workers if w.proc is not None],
                    "nats": supervisor.servers,
                },
                as_json=True,
            )
        await stop.wait()
        say("edgesim edge: stopping")
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await supervisor.stop()
    return EXIT_OK
