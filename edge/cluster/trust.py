"""Certificate sets over NATS: a replicated trust store and cluster-wide propagation.

**What NATS holds.** Two JetStream KV buckets:

``edgesim_trust`` (the store)
    One key per change, ``op.<seq>`` (``seq`` = 1, 2, 3 ... zero-padded), holding the
    change as JSON: the store method (``upload``, ``activate``, ``bind``, ``add_crl``,
    ``deploy`` ...), its arguments and the time it was made. A change is appended with
    ``create()`` on the next free key, which is a compare-and-swap (JetStream's
    "expected last subject sequence 0"): two writers racing for the same slot cannot
    both win, and the loser re-reads and retries on the next one. With ``replicas=3``
    the bucket is a Raft-replicated R3 stream, so a change is acknowledged only once a
    quorum has it.

``edgesim_trust_workers`` (liveness and acknowledgements)
    One key per live edge worker, ``w.<node>.<worker>``, re-put every
    ``heartbeat_ttl / 3`` seconds and at once after each apply, holding the generation
    the worker has applied. The bucket's TTL (``max_age``) drops a worker that stopped
    heartbeating; limit markers tell watchers it happened, and after a grace period of
    one heartbeat (in which a live worker rewrites an expired key) it no longer counts.
    A clean stop deletes the key at once.

**What each worker holds.** A private SQLite cache (:class:`~edge.trust.sqlite.SqliteTrustStore`
in a scratch folder), rebuilt at start by replaying every ``op.*`` in order and kept
current by a KV watch. Replay uses each change's recorded time as "now", so every
cache reaches the same state and the same generation numbers, and a change refused
for one is refused for all. Handshakes use the snapshot the worker built from its cache:
they never wait on NATS.

**Propagation.** :class:`ClusterTrustService` is a
:class:`~edge.trust.propagation.TrustService` whose store is the replicated one. A
generation is *propagating* until every live worker of every node reports it applied
(its heartbeat key), then *active*. A live worker that does not apply holds it; a
worker whose heartbeat expired does not.

Only cluster mode imports this module (it imports ``nats``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import re
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nats
import nats.errors
from nats.aio.client import Client as NatsClient
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import (
    BucketNotFoundError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
)
from nats.js.errors import Error as JetStreamError
from nats.js.kv import KeyValue

from edge.core.events import EventLog
from edge.trust.errors import StoreError, TrustError
from edge.trust.propagation import TrustService
from edge.trust.sqlite import SqliteTrustStore

__all__ = [
    "MUTATIONS",
    "TRUST_BUCKET",
    "WORKERS_BUCKET",
    "ClusterTrustClient",
    "ClusterTrustService",
    "ReplicatedStore",
    "TrustLog",
    "cluster_status",
    "cluster_trust_source",
    "default_replicas",
    "dump_sets",
    "open_cluster_trust",
]

log = logging.getLogger("edgesim.cluster.trust")

#: The bucket holding the change log (the certificate-set store).
TRUST_BUCKET = "edgesim_trust"
#: The bucket holding one heartbeat/acknowledgement key per live worker.
WORKERS_BUCKET = "edgesim_trust_workers"

#: Store methods that change state; everything else is read from the local cache.
MUTATIONS = frozenset(
    {
        "upload",
        "activate",
        "rollback",
        "bind",
        "unbind",
        "set_options",
        "delete",
        "add_crl",
        "upload_server_cert",
        "deploy",
        "rollback_server_cert",
        "delete_server_cert",
        "seed_default",
        "seed_store",
    }
)

#: Errors of a NATS call that may have reached the server or not (no quorum, timeout).
_TRANSIENT: tuple[type[BaseException], ...] = (
    nats.errors.Error,
    JetStreamError,
    asyncio.TimeoutError,
    TimeoutError,
    OSError,
)

_KEY_UNSAFE = re.compile(r"[^-_=a-zA-Z0-9]")


def _key_part(text: str) -> str:
    """A node or worker id as one KV key token (no dots, only legal characters)."""
    return _KEY_UNSAFE.sub("_", text) or "_"


def _op_key(seq: int) -> str:
    return f"op.{seq:012d}"


# -- change encoding ------------------------------------------------------------


def _encode(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"$b": base64.b64encode(value).decode("ascii")}
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _encode(v) for k, v in value.items()}
    to_dict = getattr(value, "to_dict", None)
    if callable(to_dict):  # ServerSettings and friends travel as their dict form
        return _encode(to_dict())
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise TrustError(f"cannot send a {type(value).__name__} through the cluster store")


def _decode(value: Any) -> Any:
    if isinstance(value, list):
        return [_decode(v) for v in value]
    if isinstance(value, dict):
        if set(value) == {"$b"}:
            return base64.b64decode(value["$b"])
        return {k: _decode(v) for k, v in value.items()}
    return value


async def _bucket(js: Any, config: KeyValueConfig, timeout: float = 30.0) -> KeyValue:
    """Bind ``config.bucket`` (creating it), retrying while JetStream has no leader yet.

    Right after a cluster starts, or during an election, JetStream API calls time out
    or find no responders; that is not an error worth failing a worker start for.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            return await _bucket_once(js, config)
        except _TRANSIENT as exc:
            if loop.time() >= deadline:
                raise StoreError(
                    f"cannot open the NATS KV bucket {config.bucket}: {exc!r} "
                    f"(is JetStream enabled, with a quorum?)"
                ) from None
            log.info("bucket %s not ready yet: %r", config.bucket, exc)
            await asyncio.sleep(0.5)


async def _bucket_once(js: Any, config: KeyValueConfig) -> KeyValue:
    try:
        kv: KeyValue = await js.key_value(config.bucket)
        return kv
    except BucketNotFoundError:
        pass
    try:
        kv = await js.create_key_value(config=config)
    except JetStreamError:
        # Another worker created it between our two calls: bind theirs.
        kv = await js.key_value(config.bucket)
    return kv


# -- the change log ---------------------------------------------------------------


class TrustLog:
    """The ``op.*`` change log in KV, replayed into a private SQLite cache.

    ``submit`` appends a change with compare-and-swap and returns what applying it to
    the cache returned (or raises what it raised), once this log's own watch has
    applied it, so a caller reads its own writes.
    """

    def __init__(
        self,
        nc: NatsClient,
        cache_path: Path,
        *,
        bucket: str = TRUST_BUCKET,
        replicas: int = 1,
        submit_timeout: float = 60.0,
        origin: str = "",
    ) -> None:
        self.nc = nc
        self.cache_path = cache_path
        self.bucket = bucket
        self.replicas = replicas
        #: How long a change may take to be written (covers a Raft election, 4-9 s).
        self.submit_timeout = submit_timeout
        self.origin = origin
        self.cache: SqliteTrustStore | None = None
        self.kv: KeyValue | None = None
        #: The highest change applied to the cache.
        self.applied = 0
        #: Called (on the loop) after each change applied once the initial replay is done.
        self.on_applied: Callable[[int], Awaitable[None]] | None = None
        self._tl = threading.local()
        self._mine: dict[str, asyncio.Future[Any]] = {}
        self._cond = asyncio.Condition()
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._watcher: Any = None
        self._probe_mark: int | None = None

    def _clock(self) -> datetime:
        # While a change is replayed, "now" is when it was made, so every cache agrees.
        at: datetime | None = getattr(self._tl, "at", None)
        return at if at is not None else datetime.now(UTC)

    async def start(self, timeout: float = 30.0) -> None:
        """Bind (or create) the bucket, replay every change into a fresh cache, then follow."""
        js = self.nc.jetstream()
        self.kv = await _bucket(
            js,
            KeyValueConfig(
                bucket=self.bucket,
                history=1,
                replicas=self.replicas,
                storage=StorageType.FILE,
                description="edgesim certificate sets: the change log (op.<seq>)",
            ),
            timeout,
        )
        self.cache = await asyncio.to_thread(self._fresh_cache)
        self._task = asyncio.get_running_loop().create_task(self._follow(), name="trust-log")
        try:
            async with asyncio.timeout(timeout):
                await self._ready.wait()
        except TimeoutError:
            await self.close()
            raise StoreError(
                f"could not read the cluster trust store (bucket {self.bucket}) "
                f"within {timeout:g} s"
            ) from None

    def _fresh_cache(self) -> SqliteTrustStore:
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        for suffix in ("", "-wal", "-shm", ".keys"):
            with contextlib.suppress(FileNotFoundError):
                Path(f"{self.cache_path}{suffix}").unlink()
        return SqliteTrustStore(self.cache_path, clock=self._clock)

    async def close(self) -> None:
        """Stop following the log and close the cache."""
        if self._task is not None:
            await _cancel_and_wait([self._task])
            self._task = None
        if self.cache is not None:
            self.cache.close()
            self.cache = None

    async def _follow(self) -> None:
        assert self.kv is not None
        while True:
            watcher = None
            try:
                watcher = self._watcher = await self.kv.watch("op.>")
                async for entry in watcher:
                    if entry is None:  # end of the initial values: the replay is done
                        self._ready.set()
                        continue
                    if entry.operation is not None or entry.value is None:
                        continue  # deletes and purges: not part of the log
                    await self._apply(int(entry.key.rsplit(".", 1)[1]), entry.value)
                # Stopped by probe(): watch again from the start; what we have is skipped.
                log.warning("trust log watch restarted after change %d", self.applied)
            except asyncio.CancelledError:
                if watcher is not None:
                    # Bounded: unsubscribing waits on a connection that may be cut.
                    with contextlib.suppress(Exception):
                        async with asyncio.timeout(2.0):
                            await watcher.stop()  # type: ignore[no-untyped-call]
                raise
            except _TRANSIENT as exc:
                # The watch's consumer could not be (re)created: no quorum, or cut off.
                log.warning("trust log watch failed, retrying: %s", exc)
                await asyncio.sleep(0.5)

    async def probe(self) -> None:
        """Restart the watch when a change it should have delivered is still missing.

        nats-py's watch recreates its consumer after a failure, but can stop doing so
        (seen here after NATS had no quorum for a while): the log must not stall
        silently. Called every heartbeat; a change missing on two calls in a row
        restarts the watch.
        """
        if self.kv is None or not self._ready.is_set():
            return
        try:
            async with asyncio.timeout(2.0):
                await self.kv.get(_op_key(self.applied + 1))
        except KeyNotFoundError:
            self._probe_mark = None
            return
        except _TRANSIENT:
            return
        if self._probe_mark != self.applied:
            self._probe_mark = self.applied  # maybe on its way: look again next time
            return
        self._probe_mark = None
        watcher = self._watcher
        if watcher is not None:
            log.warning("trust log watch stalled before change %d: restarting it", self.applied + 1)
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2.0):
                    await watcher.stop()

    async def _apply(self, seq: int, raw: bytes) -> None:
        if seq <= self.applied:
            return  # a re-watch delivers what we already have
        if seq != self.applied + 1:
            log.error("trust log: change %d follows %d (a gap); applying it", seq, self.applied)
        try:
            change = json.loads(raw)
        except ValueError as exc:
            log.error("trust log: change %d is not JSON (%s); skipped", seq, exc)
            self.applied = seq
            return
        value, error = await asyncio.to_thread(self._run, change)
        self.applied = seq
        fut = self._mine.get(str(change.get("id")))
        if fut is not None and not fut.done():
            if error is not None:
                fut.set_exception(error)
            else:
                fut.set_result(value)
        async with self._cond:
            self._cond.notify_all()
        if self._ready.is_set() and self.on_applied is not None:
            await self.on_applied(seq)

    def _run(self, change: dict[str, Any]) -> tuple[Any, BaseException | None]:
        """Apply one change to the cache (in a thread); return ``(result, error)``."""
        assert self.cache is not None
        method = str(change.get("method"))
        if method not in MUTATIONS:
            return None, TrustError(f"unknown change {method!r} in the cluster trust store")
        args = _decode(change.get("args", []))
        kwargs = _decode(change.get("kwargs", {}))
        try:
            self._tl.at = datetime.fromisoformat(str(change["at"]))
        except (KeyError, ValueError):
            self._tl.at = None
        try:
            if method == "seed_default":
                value: Any = self.cache.upload("default", args[0])
                self.cache.bind("default", "*")
            elif method == "seed_store":
                value = self._import_sets(args[0])
            else:
                value = getattr(self.cache, method)(*args, **kwargs)
            return value, None
        except TrustError as exc:
            return None, exc  # refused for every cache alike: a no-op change
        except Exception as exc:  # a bug must not stop the log for good
            log.exception("trust log: applying %s failed", method)
            return None, exc
        finally:
            self._tl.at = None

    def _import_sets(self, sets: list[dict[str, Any]]) -> int:
        """Replay a store file's sets (see :func:`dump_sets`); each step that fails is skipped.

        Versions are uploaded at their original time, so one that has expired since
        keeps its number; every cache skips exactly the same steps.
        """
        assert self.cache is not None
        cache, done = self.cache, 0
        now = getattr(self._tl, "at", None)

        def step(what: str, call: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
            nonlocal done
            try:
                call(*args, **kwargs)
                done += 1
            except TrustError as exc:
                log.warning("importing the store into the cluster: %s skipped: %s", what, exc)

        for entry in sets:
            name = str(entry["name"])
            for v in entry["versions"]:
                self._tl.at = datetime.fromisoformat(str(v["at"]))
                step(
                    f"{name} version",
                    cache.upload,
                    name,
                    v["pem"],
                    activate=False,
                    allow_sha1=bool(v["allow_sha1"]),
                )
            self._tl.at = now
            if entry["active"] is not None:
                step(f"{name} activation", cache.activate, name, int(entry["active"]))
            for der in entry["crls"]:
                step(f"{name} CRL", cache.add_crl, name, der)
            for host in entry["hosts"]:
                step(f"{name} binding {host}", cache.bind, name, host)
            if entry["disconnect_on_revoke"]:
                step(f"{name} options", cache.set_options, name, disconnect_on_revoke=True)
        return done

    async def _wait_applied(self, seq: int, timeout: float) -> bool:
        try:
            async with asyncio.timeout(timeout):
                async with self._cond:
                    await self._cond.wait_for(lambda: self.applied >= seq)
        except TimeoutError:
            return False
        return True

    async def submit(
        self, method: str, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        """Append a change and return its result once applied here (raises its error)."""
        if method not in MUTATIONS:
            raise TrustError(f"{method!r} is not a change of the trust store")
        assert self.kv is not None
        op_id = uuid.uuid4().hex
        payload = json.dumps(
            {
                "id": op_id,
                "method": method,
                "args": _encode(list(args)),
                "kwargs": _encode(kwargs or {}),
                "at": datetime.now(UTC).isoformat(),
                "origin": self.origin,
            }
        ).encode()
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self._mine[op_id] = fut
        deadline = loop.time() + self.submit_timeout
        last_error = "no reply"
        try:
            while not fut.done():
                left = deadline - loop.time()
                if left <= 0:
                    raise StoreError(
                        f"the cluster trust store did not take the change within "
                        f"{self.submit_timeout:g} s ({last_error}); is a NATS quorum up?"
                    )
                slot = self.applied + 1
                try:
                    await self.kv.create(_op_key(slot), payload)
                    break
                except KeyWrongLastSequenceError:
                    # Someone (maybe us, on an earlier try) holds the slot: catch up, retry.
                    await self._wait_applied(slot, min(left, 2.0))
                except nats.errors.MaxPayloadError:
                    raise StoreError(
                        f"the change is larger than the NATS server's max_payload "
                        f"({len(payload)} bytes encoded)"
                    ) from None
                except _TRANSIENT as exc:
                    # Written or not, we cannot tell: the watch resolves ``fut`` if it was,
                    # and the slot's compare-and-swap refuses a second copy.
                    last_error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                    await asyncio.wait([fut], timeout=min(left, 0.5))
            left = max(0.0, deadline - loop.time())
            try:
                async with asyncio.timeout(left):
                    return await asyncio.shield(fut)
            except TimeoutError:
                raise StoreError(
                    f"the change was written to the cluster trust store but not seen back "
                    f"within {self.submit_timeout:g} s"
                ) from None
        finally:
            self._mine.pop(op_id, None)

    async def seed(self, method: str, args: list[Any]) -> bool:
        """Write change ``method(*args)`` as the log's first one, if it is empty (first wins).

        ``seed_default`` (a CA bundle: set ``default`` bound to every host) or
        ``seed_store`` (what :func:`dump_sets` read from a store file).
        """
        assert self.kv is not None
        payload = json.dumps(
            {
                "id": uuid.uuid4().hex,
                "method": method,
                "args": _encode(args),
                "at": datetime.now(UTC).isoformat(),
                "origin": self.origin,
            }
        ).encode()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.submit_timeout
        while self.applied < 1:
            try:
                await self.kv.create(_op_key(1), payload)
                await self._wait_applied(1, max(0.0, deadline - loop.time()))
                return True
            except KeyWrongLastSequenceError:
                # Another worker seeded first: start with what it wrote.
                await self._wait_applied(1, max(0.0, deadline - loop.time()))
                return False
            except _TRANSIENT as exc:
                if loop.time() >= deadline:
                    raise StoreError(f"cannot seed the cluster trust store: {exc!r}") from None
                await self._wait_applied(1, 0.5)
        return False


def dump_sets(store: SqliteTrustStore) -> list[dict[str, Any]]:
    """A store file's certificate sets, for the cluster log's first change (``seed_store``).

    Every version (with its upload time), the active one, CRLs, bindings and options.
    Server certificates are not carried over: upload and deploy them again.
    """
    from cryptography.hazmat.primitives.serialization import Encoding

    out: list[dict[str, Any]] = []
    for info in store.list_sets():
        versions = []
        for v in store.versions(info.name):
            _, pem, allow_sha1 = store.version_pem(info.name, v.version)
            versions.append({"pem": pem, "allow_sha1": allow_sha1, "at": v.created_at})
        out.append(
            {
                "name": info.name,
                "versions": versions,
                "active": info.active_version,
                "crls": [c.public_bytes(Encoding.DER) for c in store.crl_objects(info.name)],
                "hosts": list(info.hosts),
                "disconnect_on_revoke": info.disconnect_on_revoke,
            }
        )
    return out


class ReplicatedStore:
    """A synchronous :class:`~edge.trust.store.TrustStore` over a :class:`TrustLog`.

    Reads come from the local cache; changes go through the log (blocking the calling
    thread, never the loop: :class:`TrustService` calls the store from threads).
    """

    def __init__(self, trust_log: TrustLog, loop: asyncio.AbstractEventLoop) -> None:
        self.log = trust_log
        self.loop = loop
        assert trust_log.cache is not None
        self.path = trust_log.cache.path

    def _change(self, method: str, *args: Any, **kwargs: Any) -> Any:
        if threading.get_ident() == getattr(self.loop, "_thread_id", None):
            raise TrustError("ReplicatedStore changes must not be made on the event loop thread")
        return asyncio.run_coroutine_threadsafe(
            self.log.submit(method, args, kwargs), self.loop
        ).result()

    def __getattr__(self, name: str) -> Any:
        if name in MUTATIONS:
            return lambda *a, **kw: self._change(name, *a, **kw)
        cache = self.log.cache
        if cache is None:
            raise TrustError("the cluster trust store is closed")
        return getattr(cache, name)

    # The protocol's methods named explicitly, so ``hasattr`` checks and mypy see them.
    def upload(self, *args: Any, **kwargs: Any) -> Any:
        """Store a new version (through the cluster log)."""
        return self._change("upload", *args, **kwargs)

    def snapshot(self) -> Any:
        """The cache's snapshot (the state this worker knows)."""
        assert self.log.cache is not None
        return self.log.cache.snapshot()

    def server_certs(self) -> Any:
        """Every server certificate, from the cache."""
        assert self.log.cache is not None
        return self.log.cache.server_certs()

    def now(self) -> datetime:
        """The current time (UTC)."""
        return datetime.now(UTC)

    def close(self) -> None:
        """The log owns the cache; closing happens in :meth:`TrustLog.close`."""


# -- propagation --------------------------------------------------------------------


class ClusterTrustService(TrustService):
    """A :class:`TrustService` whose changes are active once every live worker applied them.

    One per edge worker process. Its local workers are the ``apply`` callables
    registered as usual (one :class:`~edge.server.EdgeServer`); what they applied is
    published as this worker's heartbeat ``w.<node>.<worker>``.
    """

    def __init__(
        self,
        trust_log: TrustLog,
        workers_kv: KeyValue,
        *,
        node_id: str,
        worker_id: str,
        events: EventLog | None = None,
        heartbeat_ttl: float = 15.0,
        propagation_delay: float = 0.0,
        expiry_warn_days: float = 30.0,
    ) -> None:
        super().__init__(
            ReplicatedStore(trust_log, asyncio.get_running_loop()),
            events=events,
            propagation_delay=propagation_delay,
            expiry_warn_days=expiry_warn_days,
        )
        self.log = trust_log
        self.workers_kv = workers_kv
        self.node_id = node_id
        self.worker_id = worker_id
        self.heartbeat_ttl = heartbeat_ttl
        self.key = f"w.{_key_part(node_id)}.{_key_part(worker_id)}"
        #: Other workers' heartbeats: key -> (value, when seen, monotonic).
        self._peers: dict[str, tuple[dict[str, Any], float]] = {}
        #: Peers whose key the servers expired: key -> when to drop them (monotonic).
        self._expiring: dict[str, float] = {}
        self._expiring_changed = asyncio.Event()
        #: How long an expired worker still counts: one heartbeat period and a margin.
        self.expiry_grace = heartbeat_ttl / 3 + 1.0
        self._cluster = asyncio.Condition()
        self._booting = True
        self._tasks: list[asyncio.Task[None]] = []
        #: Set to stop heartbeating without deleting the key (tests: a worker that hangs).
        self.heartbeats_paused = False
        #: True once the heartbeat watch has delivered every current key.
        self._peers_ready = False
        self._workers_watcher: Any = None
        #: When the watch last delivered this worker's own heartbeat (monotonic).
        self._own_seen = time.monotonic()

    # -- lifecycle --------------------------------------------------------------

    async def start(self) -> None:
        """Apply the replayed state locally, then heartbeat and follow the cluster."""
        self.log.on_applied = self._log_applied
        await super().start()
        self._booting = False
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._heartbeat_loop(), name="trust-heartbeat"),
            loop.create_task(self._watch_workers(), name="trust-workers"),
            loop.create_task(self._expiry_timer(), name="trust-liveness"),
        ]
        await self._beat()

    async def close(self) -> None:
        """Stop heartbeating, withdraw this worker's key, stop following the log."""
        await _cancel_and_wait(self._tasks)
        self._tasks = []
        if not self.log.nc.is_closed:
            # A clean stop must not hold propagation back for a whole TTL.
            with contextlib.suppress(*_TRANSIENT):
                async with asyncio.timeout(2.0):
                    await self.workers_kv.delete(self.key)
        await self.log.close()
        await super().close()

    async def _log_applied(self, seq: int) -> None:
        await self.refresh()

    async def _schedule(self) -> int:
        newest = await super()._schedule()
        async with self._cluster:
            self._cluster.notify_all()
        return newest

    # -- acknowledgements ----------------------------------------------------------

    def local_generation(self) -> int:
        """The generation every local worker has applied."""
        if not self._workers:
            return self._active.generation if self._active else -1
        return min(w.applied for w in self._workers.values())

    def _heartbeat(self) -> dict[str, Any]:
        errors = [w.error for w in self._workers.values() if w.error]
        return {
            "node": self.node_id,
            "worker": self.worker_id,
            "generation": self.local_generation(),
            "seq": self.log.applied,
            "error": errors[0] if errors else None,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "at": datetime.now(UTC).isoformat(),
        }

    async def _beat(self) -> bool:
        if self.heartbeats_paused:
            return True
        try:
            async with asyncio.timeout(max(1.0, self.heartbeat_ttl / 3)):
                await self.workers_kv.put(self.key, json.dumps(self._heartbeat()).encode())
        except _TRANSIENT as exc:
            log.debug("heartbeat %s not written: %s", self.key, exc)
            return False
        return True

    async def _heartbeat_loop(self) -> None:
        ok = True
        while True:
            # After a failed write (no quorum, cut off) retry soon: the servers may have
            # expired our key meanwhile, and peers give it only a short grace.
            await asyncio.sleep(self.heartbeat_ttl / 3 if ok else 0.5)
            ok = await self._beat()
            if ok and not self.heartbeats_paused:
                await self.log.probe()
                self._check_own_echo()

    def _check_own_echo(self) -> None:
        """Restart the heartbeat watch when it stopped delivering our own heartbeats."""
        if time.monotonic() - self._own_seen <= 2 * self.heartbeat_ttl / 3 + 2.0:
            return
        self._own_seen = time.monotonic()
        watcher = self._workers_watcher
        if watcher is not None:
            log.warning("worker heartbeat watch stalled: restarting it")
            asyncio.get_running_loop().create_task(_stop_quietly(watcher))

    async def _watch_workers(self) -> None:
        while True:
            watcher = None
            try:
                watcher = self._workers_watcher = await self.workers_kv.watch("w.>")
                # The current keys replace what we knew only once all have arrived, so
                # a restarted watch never shows a moment with no peers.
                fresh: dict[str, tuple[dict[str, Any], float]] | None = {}
                async for entry in watcher:
                    if entry is None:
                        if fresh is not None:
                            self._peers = fresh
                            self._expiring = {k: t for k, t in self._expiring.items() if k in fresh}
                            fresh = None
                            self._peers_ready = True
                            async with self._cluster:
                                self._cluster.notify_all()
                        continue
                    if entry.key == self.key:
                        self._own_seen = time.monotonic()
                        continue
                    peers = fresh if fresh is not None else self._peers
                    if entry.operation == "PURGE":
                        # The servers expired the key (TTL). If NATS itself could not
                        # store heartbeats for a while (an election, no quorum), every
                        # worker's key expires at once: keep it for a grace period, in
                        # which a live worker writes a new one.
                        if entry.key in self._peers:
                            self._expiring[entry.key] = time.monotonic() + self.expiry_grace
                            self._expiring_changed.set()
                        continue
                    if entry.operation is not None or not entry.value:
                        # Deleted: the worker stopped cleanly. It holds nothing back.
                        peers.pop(entry.key, None)
                        self._expiring.pop(entry.key, None)
                    else:
                        with contextlib.suppress(ValueError):
                            peers[entry.key] = (json.loads(entry.value), time.monotonic())
                            self._expiring.pop(entry.key, None)
                    if fresh is None:
                        async with self._cluster:
                            self._cluster.notify_all()
                log.warning("worker heartbeat watch restarted")
            except asyncio.CancelledError:
                if watcher is not None:
                    await _stop_quietly(watcher)
                raise
            except _TRANSIENT as exc:
                log.warning("worker watch failed, retrying: %s", exc)
                await asyncio.sleep(0.5)

    async def _expiry_timer(self) -> None:
        """Drop a worker whose expired key was not re-written within the grace period.

        Liveness is the servers' judgement (the bucket's TTL), never a local clock: a
        worker cut off from NATS cannot activate anything anyway, and waits.
        """
        while True:
            self._expiring_changed.clear()
            now = time.monotonic()
            gone = [k for k, t in self._expiring.items() if t <= now]
            for key in gone:
                del self._expiring[key]
                self._peers.pop(key, None)
            if gone:
                async with self._cluster:
                    self._cluster.notify_all()
            wait = min((t - now for t in self._expiring.values()), default=None)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._expiring_changed.wait()

    def live_workers(self) -> list[dict[str, Any]]:
        """Every live worker's heartbeat, this one included."""
        return [self._heartbeat()] + [v for v, _ in self._peers.values()]

    def cluster_applied(self, generation: int) -> bool:
        """True when every live worker of every node has applied ``generation``."""
        if not self._peers_ready:
            return False  # not yet heard which workers are alive
        return all(int(w.get("generation", -1)) >= generation for w in self.live_workers())

    async def _apply_all(self, snapshot: Any) -> bool:
        ok = await super()._apply_all(snapshot)
        if self._booting:
            return ok  # the stored state is what a worker starts with
        await self._beat()
        if not ok:
            return False
        target = snapshot.generation
        async with self._cluster:
            await self._cluster.wait_for(
                lambda: (
                    self.cluster_applied(target)
                    or (self._desired is not None and self._desired.generation > target)
                )
            )
        return self.cluster_applied(target)

    # -- status -----------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """:meth:`TrustService.status` plus what every live worker of every node applied."""
        data = super().status()
        data["cluster"] = cluster_status(self.live_workers(), data["generation"])
        data["cluster"]["node"] = self.node_id
        data["cluster"]["worker"] = self.worker_id
        data["cluster"]["heartbeat_ttl"] = self.heartbeat_ttl
        return data


async def _quiet(exc: Exception) -> None:
    log.debug("nats: %s", exc)


async def _cancel_and_wait(tasks: list[asyncio.Task[None]], limit: float = 10.0) -> None:
    """Cancel ``tasks`` and wait until they have ended, cancelling again while they run.

    One cancel is not always enough on Python 3.11: ``asyncio.wait_for`` (which
    nats-py's requests use) swallows a cancellation that arrives as its inner future
    completes, and the task's loop goes on. A close that awaited such a task once
    hung for good; this one repeats the cancel, and gives up (logged) after ``limit``.
    """
    pending = {t for t in tasks if not t.done()}
    deadline = time.monotonic() + limit
    while pending and time.monotonic() < deadline:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.25)
    for task in pending:
        log.warning("task %s did not end within %.0f s of being cancelled", task.get_name(), limit)
    for task in tasks:
        if task.done() and not task.cancelled() and task.exception() is not None:
            log.warning("task %s ended with %r", task.get_name(), task.exception())


async def _stop_quietly(watcher: Any) -> None:
    """Stop a KV watch; bounded, since unsubscribing waits on a connection that may be cut."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(2.0):
            await watcher.stop()


def cluster_status(workers: list[dict[str, Any]], generation: int) -> dict[str, Any]:
    """Group heartbeats per node: ``{"nodes": [{"node", "workers": [...]}], "live_workers"}``."""
    nodes: dict[str, list[dict[str, Any]]] = {}
    for w in workers:
        applied = int(w.get("generation", -1))
        nodes.setdefault(str(w.get("node")), []).append(
            {
                "worker": w.get("worker"),
                "applied_generation": applied,
                "state": "active" if applied >= generation else "propagating",
                "error": w.get("error"),
                "pid": w.get("pid"),
                "host": w.get("host"),
                "heartbeat_at": w.get("at"),
            }
        )
    return {
        "generation": generation,
        "live_workers": len(workers),
        "nodes": [
            {"node": n, "workers": sorted(ws, key=lambda w: str(w["worker"]))}
            for n, ws in sorted(nodes.items())
        ],
    }


async def open_workers_bucket(
    nc: NatsClient, *, replicas: int = 1, heartbeat_ttl: float = 15.0, timeout: float = 30.0
) -> KeyValue:
    """Bind (or create) the heartbeat bucket: keys expire ``heartbeat_ttl`` after their last put."""
    return await _bucket(
        nc.jetstream(),
        KeyValueConfig(
            bucket=WORKERS_BUCKET,
            history=1,
            replicas=replicas,
            ttl=heartbeat_ttl,
            # File, not memory: a memory stream restarted on a node of the cluster
            # comes back empty, and was seen to stall the bucket after quorum loss.
            storage=StorageType.FILE,
            # The server places a marker when a key ages out, so watchers see it go.
            limit_marker_ttl=max(1.0, heartbeat_ttl),
            description="edgesim workers: heartbeats and applied trust generations",
        ),
        timeout,
    )


async def open_cluster_trust(
    nc: NatsClient,
    *,
    node_id: str,
    worker_id: str,
    events: EventLog | None = None,
    cache_dir: str | Path | None = None,
    replicas: int | None = None,
    heartbeat_ttl: float = 15.0,
    seed: bytes | None = None,
    seed_store: str | Path | None = None,
    propagation_delay: float = 0.0,
    expiry_warn_days: float = 30.0,
    start_timeout: float = 30.0,
    submit_timeout: float = 60.0,
) -> ClusterTrustService:
    """What an edge worker runs in place of its :class:`TrustService` in cluster mode.

    Replays the cluster's change log into a fresh cache under ``cache_dir`` (a
    temporary folder by default) and returns a service that is not started yet: the
    caller registers its ``apply`` callable and calls ``start()``, as with
    :class:`TrustService`. When the cluster has no change at all yet, the first
    worker to start writes the first one: the sets of the store file ``seed_store``
    if it has any (how an edge that ran alone keeps its sets when it scales out), else
    ``seed`` (a CA bundle) as set ``default`` bound to every host. ``replicas`` is the R of
    both buckets when this call creates them (default: :func:`default_replicas`).
    """
    if replicas is None:
        replicas = default_replicas(nc)
    folder = Path(cache_dir) if cache_dir is not None else Path(tempfile.mkdtemp(prefix="edgesim-"))
    name = f"trust-cache-{_key_part(node_id)}-{_key_part(worker_id)}.db"
    trust_log = TrustLog(
        nc,
        folder / name,
        replicas=replicas,
        origin=f"{node_id}/{worker_id}",
        submit_timeout=submit_timeout,
    )
    await trust_log.start(timeout=start_timeout)
    try:
        if trust_log.applied == 0:
            dumped = await asyncio.to_thread(_dump_file, seed_store) if seed_store else []
            if dumped:
                await trust_log.seed("seed_store", [dumped])
            elif seed is not None:
                await trust_log.seed("seed_default", [seed])
        workers_kv = await open_workers_bucket(
            nc, replicas=replicas, heartbeat_ttl=heartbeat_ttl, timeout=start_timeout
        )
    except BaseException:
        await trust_log.close()
        raise
    return ClusterTrustService(
        trust_log,
        workers_kv,
        node_id=node_id,
        worker_id=worker_id,
        events=events,
        heartbeat_ttl=heartbeat_ttl,
        propagation_delay=propagation_delay,
        expiry_warn_days=expiry_warn_days,
    )


def cluster_trust_source(
    servers: list[str],
    *,
    node: str,
    worker: str,
    heartbeat_ttl: float = 15.0,
    replicas: int | None = None,
    cache_dir: str | Path | None = None,
    submit_timeout: float = 60.0,
) -> Callable[[Any, Any], Awaitable[None]]:
    """An :data:`edge.server.TrustSource` for an edge worker of a cluster.

    At start, the worker opens its own NATS connection to ``servers``, replays the
    cluster's store into a cache under ``<state dir>/cluster`` (or ``cache_dir``) and
    installs a :class:`ClusterTrustService` as ``server.trust``. The first worker of
    an empty cluster imports the node's store file (``--store``), or else the PKI's CA
    chain as set ``default``. Handshakes then use this worker's copy only.
    """

    async def start(server: Any, pki: Any) -> None:
        cfg = server.config
        nc = await nats.connect(
            servers=list(servers),
            name=f"edgesim-trust-{node}-{worker}",
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
        )
        try:
            service = await open_cluster_trust(
                nc,
                node_id=node,
                worker_id=worker,
                events=server.events,
                cache_dir=cache_dir if cache_dir is not None else cfg.state_dir / "cluster",
                replicas=replicas,
                heartbeat_ttl=heartbeat_ttl,
                seed=pki.ca_chain.read_bytes() if pki.ca_chain is not None else None,
                seed_store=cfg.store_path,
                propagation_delay=cfg.trust.propagation_delay,
                expiry_warn_days=cfg.trust.cert_expiry_days,
                submit_timeout=submit_timeout,
            )
        except BaseException:
            await nc.close()
            raise
        server.trust = service
        server.store = service.store
        # Cleanups run in reverse: the service (its heartbeat key withdrawn) before nc.
        server.add_cleanup(nc.close)
        service.register_worker(server.worker_name, server.apply_snapshot)
        try:
            await service.start()
        except BaseException:
            await service.close()
            raise
        server.add_cleanup(service.close)

    return start


def _dump_file(path: str | Path) -> list[dict[str, Any]]:
    if not Path(path).exists():
        return []
    store = SqliteTrustStore(path)
    try:
        return dump_sets(store)
    finally:
        store.close()


def default_replicas(nc: NatsClient) -> int:
    """3 when the NATS cluster has at least 3 servers (given or discovered), else 1."""
    return 3 if len({u.netloc for u in nc.servers}) >= 3 else 1


class ClusterTrustClient:
    """Synchronous access to the cluster store for the CLI (``edgesim trust --cluster``).

    Runs its own event loop in a thread, connects to ``servers`` (comma-separated
    ``nats://`` URLs), replays the log into a temporary cache and offers a
    :class:`ReplicatedStore`: reads from the cache, changes through the log.
    """

    def __init__(self, servers: str, *, timeout: float = 60.0) -> None:
        self.urls = [u.strip() for u in servers.split(",") if u.strip()]
        if not self.urls:
            raise TrustError(f"--cluster {servers!r}: no nats:// URL given")
        self.timeout = timeout
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._dir = tempfile.TemporaryDirectory(prefix="edgesim-cli-")
        self.nc: NatsClient | None = None
        self.log: TrustLog | None = None
        self.workers_kv: KeyValue | None = None
        try:
            self.store = self._call(self._open())
        except BaseException:
            self.close()
            raise

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(self.timeout + 5)

    async def _open(self) -> ReplicatedStore:
        try:
            self.nc = await nats.connect(
                servers=self.urls,
                connect_timeout=min(5.0, self.timeout),
                max_reconnect_attempts=3,
                error_cb=_quiet,  # the failure is reported once, below, not as a traceback
            )
        except Exception as exc:
            raise StoreError(f"cannot connect to NATS at {','.join(self.urls)}: {exc}") from None
        replicas = default_replicas(self.nc)
        self.log = TrustLog(
            self.nc,
            Path(self._dir.name) / "cache.db",
            replicas=replicas,
            origin=f"cli@{socket.gethostname()}",
            submit_timeout=self.timeout,
        )
        await self.log.start(timeout=self.timeout)
        self.workers_kv = await open_workers_bucket(
            self.nc, replicas=replicas, timeout=self.timeout
        )
        return ReplicatedStore(self.log, self._loop)

    async def _workers(self) -> list[dict[str, Any]]:
        assert self.workers_kv is not None
        found: list[dict[str, Any]] = []
        watcher = await self.workers_kv.watch("w.>")
        try:
            async for entry in watcher:
                if entry is None:
                    break  # the current value of every key has been seen
                if entry.operation is None and entry.value:
                    with contextlib.suppress(ValueError):
                        found.append(json.loads(entry.value))
        finally:
            with contextlib.suppress(Exception):
                await watcher.stop()  # type: ignore[no-untyped-call]
        return found

    def workers(self) -> list[dict[str, Any]]:
        """Every live worker's heartbeat (what it applied)."""
        result: list[dict[str, Any]] = self._call(self._workers())
        return result

    def status(self) -> dict[str, Any]:
        """The cluster's propagation status, per set and binding, per node and worker."""
        assert self.log is not None
        assert self.log.cache is not None
        cache = self.log.cache
        generation = cache.generation()
        workers = self.workers()
        cluster = cluster_status(workers, generation)
        done = all(int(w.get("generation", -1)) >= generation for w in workers)
        state = "active" if done else "propagating"
        return {
            "state": state,
            "generation": generation,
            "note": f"cluster store at {','.join(self.urls)}: {len(workers)} live worker(s)",
            "sets": [
                {
                    "name": s.name,
                    "version": s.active_version,
                    "state": state if s.active_version else "no active version",
                    "disconnect_on_revoke": s.disconnect_on_revoke,
                }
                for s in cache.list_sets()
            ],
            "bindings": [
                {"host": h, "set": n, "state": state} for h, n in cache.bindings().items()
            ],
            "cluster": cluster,
        }

    def close(self) -> None:
        """Close the log, the connection and the loop."""

        async def shut() -> None:
            if self.log is not None:
                await self.log.close()
            if self.nc is not None and not self.nc.is_closed:
                await self.nc.close()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(shut(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
        self._dir.cleanup()
