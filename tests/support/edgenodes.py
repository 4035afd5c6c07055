"""Real edge nodes for the cluster tests: ``edgesim edge serve --workers N`` processes.

- :class:`EdgeNode` runs one supervisor (and so its workers, and without ``cluster``
  its own nats-server) as a child process, waits for its ``--json`` line (printed
  once every worker is ready), and stops it with SIGTERM.
- :class:`AdminEvents` follows the node's ``/v1/events/stream`` (SSE), so tests
  wait for events instead of sleeping.
- :class:`Mqtt` is paho-mqtt (3.1.1 or 5, over TLS or WSS) with its results on
  asyncio futures; an MQTT 5 CONNACK names the worker (``edgesim-worker``).
- :func:`connect_on_each_worker` connects devices until every named worker holds one:
  which worker SO_REUSEPORT picks is the kernel's choice.
- :func:`edgesim` runs one ``edgesim`` command (``edgesim trust --cluster ...``) to its end.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import ssl
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import aiohttp

EDGESIM = [sys.executable, "-m", "edge.cli"]

#: The devices of the cluster tests' ``pki`` fixture (``tests/cluster/conftest.py``).
DEVICES = [f"dev-{i:05d}" for i in range(40)]


async def edgesim(*args: str, timeout: float = 60) -> tuple[int, str, str]:
    """Run ``edgesim ARGS`` to its end: exit status, stdout and stderr (as text).

    Bounded: a run that takes more than ``timeout`` seconds is killed (it must not
    outlive the test, holding ports and files) and fails the test here.
    """
    proc = await asyncio.create_subprocess_exec(
        *EDGESIM, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"edgesim {' '.join(args)} ran past {timeout} s") from None
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def device_context(pki: Path, device: str) -> ssl.SSLContext:
    """A device's TLS context for a quickstart PKI (trusts its root)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=str(pki / "root-ca.pem"))
    ctx.load_cert_chain(
        str(pki / "devices" / f"{device}.pem"), str(pki / "devices" / f"{device}.key")
    )
    return ctx


class EdgeNode:
    """One ``edge serve --workers N`` supervisor with its workers."""

    def __init__(
        self,
        base: Path,
        pki: Path,
        *,
        workers: int = 2,
        cluster: str | None = None,
        node_id: str = "n",
        policy: str = "open",
    ) -> None:
        self.base = base
        self.pki = pki
        self.workers = workers
        self.cluster = cluster
        self.node_id = node_id
        self.policy = policy
        self.proc: asyncio.subprocess.Process | None = None
        self.info: dict[str, Any] = {}
        self.log = base / "node.log"

    @property
    def store(self) -> Path:
        return self.base / "trust.db"

    @property
    def ready_file(self) -> Path:
        return self.base / "ready.json"

    async def start(self, timeout: float = 90.0) -> EdgeNode:
        self.base.mkdir(parents=True, exist_ok=True)
        argv = [
            *EDGESIM,
            "edge",
            "serve",
            "--workers",
            str(self.workers),
            "--pki",
            str(self.pki),
            "--store",
            str(self.store),
            "--state-dir",
            str(self.base / "state"),
            "--policy",
            self.policy,
            "--mqtt",
            "127.0.0.1:0",
            "--https",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--ready-file",
            str(self.ready_file),
            "--node-id",
            self.node_id,
            "--no-uvloop",
            "--json",
        ]
        if self.cluster:
            argv += ["--cluster", self.cluster]
        log = self.log.open("ab")
        self.proc = await asyncio.create_subprocess_exec(
            *argv,
            stdout=asyncio.subprocess.PIPE,
            stderr=log,
            stdin=asyncio.subprocess.DEVNULL,
            cwd=self.base,
        )
        log.close()
        assert self.proc.stdout is not None
        text = ""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    line = await self.proc.stdout.readline()
                    if not line:
                        raise RuntimeError(f"the node exited: {self.log.read_text()[-3000:]}")
                    text += line.decode()
                    with contextlib.suppress(ValueError):
                        json.loads(text)
                        break
        except BaseException:
            await self.stop()
            raise
        self.refresh()
        return self

    def refresh(self) -> dict[str, Any]:
        """Re-read the supervisor's ready file (worker pids change on restarts)."""
        self.info = json.loads(self.ready_file.read_text())
        return self.info

    @property
    def ports(self) -> dict[str, int]:
        return dict(self.info["ports"])

    def worker_pid(self, index: int) -> int:
        for worker in self.refresh()["workers"]:
            if worker["index"] == index:
                return int(worker["pid"])
        raise KeyError(index)

    def label(self, index: int) -> str:
        return f"{self.node_id}/{index}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['admin']}"

    @property
    def token(self) -> str:
        return Path(f"{self.store}.token").read_text().strip()

    async def stop(self, timeout: float = 30.0) -> int | None:
        proc = self.proc
        if proc is None:
            return None
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), timeout)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        return proc.returncode


class AdminEvents:
    """The node's event feed (``/v1/events/stream``), read into a list as it arrives."""

    def __init__(self, node: EdgeNode) -> None:
        self.node = node
        self.events: list[dict[str, Any]] = []
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._response: aiohttp.ClientResponse | None = None

    async def __aenter__(self) -> AdminEvents:
        self._session = aiohttp.ClientSession(
            headers={"Authorization": f"Bearer {self.node.token}"}
        )
        response = await self._session.get(f"{self.node.admin_url}/v1/events/stream")
        assert response.status == 200, await response.text()
        self._response = response
        self._task = asyncio.create_task(self._pump(response))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._response is not None:
            self._response.close()
        if self._session is not None:
            await self._session.close()

    async def _pump(self, response: aiohttp.ClientResponse) -> None:
        async for raw in response.content:
            line = raw.decode().strip()
            if line.startswith("data:"):
                self.events.append(json.loads(line[5:]))
                self._changed.set()

    async def wait(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 30.0, start: int = 0
    ) -> dict[str, Any]:
        """The first event (from index ``start``) satisfying ``predicate``."""
        async with asyncio.timeout(timeout):
            seen = start
            while True:
                for event in self.events[seen:]:
                    if predicate(event):
                        return event
                seen = max(seen, len(self.events))
                self._changed.clear()
                await self._changed.wait()


class Mqtt:
    """paho-mqtt with asyncio results: CONNACK properties, messages, the server's DISCONNECT."""

    def __init__(
        self,
        port: int,
        client_id: str,
        ctx: ssl.SSLContext,
        *,
        version: int = 5,
        transport: str = "tcp",
        clean: bool = True,
        session_expiry: int = 0,
    ) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        self._loop = asyncio.get_running_loop()
        self.port = port
        self.client_id = client_id
        self.version = version
        self.connected: asyncio.Future[tuple[int, dict[str, str]]] = self._loop.create_future()
        self.disconnected: asyncio.Future[int] = self._loop.create_future()
        self.messages: asyncio.Queue[tuple[str, bytes, int, bool]] = asyncio.Queue()
        self._acks: dict[int, asyncio.Future[Any]] = {}
        kwargs: dict[str, Any] = {"protocol": mqtt.MQTTv5 if version == 5 else mqtt.MQTTv311}
        if version != 5:
            kwargs["clean_session"] = clean
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, transport=transport, **kwargs
        )
        if transport == "websockets":
            client.ws_set_options(path="/mqtt")
        client.tls_set_context(ctx)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_ack
        client.on_publish = self._on_publish
        self.client = client
        self._clean = clean
        self._props = None
        if version == 5:
            props = Properties(PacketTypes.CONNECT)
            if session_expiry:
                props.SessionExpiryInterval = session_expiry
            self._props = props
        self.worker: str | None = None

    def _call(self, fn: Any, *args: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is gone after the test
            self._loop.call_soon_threadsafe(fn, *args)

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        users = dict(getattr(props, "UserProperty", []) or [])
        self._call(_resolve, self.connected, (int(rc.value), users))

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        self._call(_resolve, self.disconnected, int(rc.value))
        self._call(_resolve, self.connected, (int(rc.value), {}))

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        self._call(
            self.messages.put_nowait, (msg.topic, bytes(msg.payload), msg.qos, bool(msg.retain))
        )

    def _on_ack(self, client: Any, userdata: Any, mid: int, rcs: Any, props: Any) -> None:
        self._call(self._ack, mid, [int(rc.value) for rc in rcs] if rcs else [])

    def _on_publish(self, client: Any, userdata: Any, mid: int, rc: Any, props: Any) -> None:
        self._call(self._ack, mid, int(rc.value))

    def _ack(self, mid: int, value: Any) -> None:
        future = self._acks.setdefault(mid, self._loop.create_future())
        if not future.done():
            future.set_result(value)

    async def connect(self, timeout: float = 20.0) -> int:
        """Connect; return the CONNACK code (``worker`` names the worker for MQTT 5)."""
        kwargs: dict[str, Any] = {"keepalive": 30}
        if self.version == 5:
            kwargs["clean_start"] = self._clean
            kwargs["properties"] = self._props
        self.client.connect_async("localhost", self.port, **kwargs)
        self.client.loop_start()
        code, users = await asyncio.wait_for(self.connected, timeout)
        self.worker = users.get("edgesim-worker")
        return code

    async def subscribe(self, topic: str, qos: int = 0, timeout: float = 20.0) -> list[int]:
        _, mid = self.client.subscribe(topic, qos)
        future = self._acks.setdefault(mid, self._loop.create_future())
        result: list[int] = await asyncio.wait_for(future, timeout)
        return result

    async def publish(
        self, topic: str, payload: bytes, qos: int = 0, retain: bool = False, timeout: float = 20.0
    ) -> None:
        info = self.client.publish(topic, payload, qos, retain)
        future = self._acks.setdefault(info.mid, self._loop.create_future())
        await asyncio.wait_for(future, timeout)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.disconnect()
        await asyncio.to_thread(self.client.loop_stop)


def _resolve(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)


async def connect_on_each_worker(
    port: int,
    pki: Path,
    devices: Iterable[str],
    labels: Iterable[str],
) -> dict[str, Mqtt]:
    """MQTT 5 clients, one per worker label, trying ``devices`` in turn.

    Clients landing on a worker already covered are closed. Raises if the devices run
    out first (each connect is a fresh 4-tuple: the kernel's hash spreads them).
    """
    wanted = set(labels)
    found: dict[str, Mqtt] = {}
    for device in devices:
        client = Mqtt(port, device, device_context(pki, device))
        assert await client.connect() == 0
        if client.worker in wanted and client.worker not in found:
            found[client.worker] = client
            if len(found) == len(wanted):
                return found
        else:
            await client.close()
    for client in found.values():
        await client.close()
    raise AssertionError(f"reached only {sorted(found)} of {sorted(wanted)}")


async def drain(queue: asyncio.Queue[Any]) -> list[Any]:
    """Everything queued right now."""
    out = []
    while not queue.empty():
        out.append(queue.get_nowait())
    return out


def pids_alive(pids: Iterable[int]) -> list[int]:
    """The pids of ``pids`` that still run."""
    alive = []
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        alive.append(pid)
    return alive
