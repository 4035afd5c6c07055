"""The trust service: the store plus propagation to every edge worker.

A change (upload with activation, activation, rollback, binding, CRL, delete)
is persisted first, then propagates::

    pending ──> propagating ──(every worker applied)──> active

*pending*: stored, not yet sent to workers. *propagating*: the simulated
propagation delay is running, or workers are applying the new
:class:`~edge.trust.model.TrustSnapshot`. *active*: every registered worker has
applied it; :meth:`TrustService.current` returns it and new handshakes use it.
Established sessions keep the context they were accepted with: workers swap
contexts for *new* handshakes only, so propagation never drops a device.

Workers are callables ``apply(snapshot)`` run on the event loop; one may return
an awaitable (a worker in another thread or process that acknowledges later),
and the worker counts as having applied the snapshot when it completes. A
worker that raises is reported in :meth:`TrustService.status` and by a
``trust.apply_failed`` event, and keeps the generation from becoming active.

Events emitted: ``trust.uploaded``, ``trust.refused``, ``trust.activated``,
``trust.rolled_back``, ``trust.bound``, ``trust.unbound``, ``trust.deleted``,
``trust.crl_added``, ``trust.pending``, ``trust.propagating``, ``trust.active``,
``trust.apply_failed``, ``trust.error`` (the store could not be read while
polling); for server certificates ``cert.uploaded``, ``cert.refused``,
``cert.deployed``, ``cert.rolled_back``, ``cert.deleted`` and ``cert.expiring``
(at start and every ``expiry_interval`` seconds, for each certificate whose
deployed or latest version expires within ``expiry_warn_days``).

A deployment of a server certificate is a change like any other: it is stored,
then goes pending -> propagating -> active with the snapshot that carries it.

Errors are those of :mod:`edge.trust.errors`; waiting too long raises
:class:`~edge.trust.errors.PropagationTimeout`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from edge.core.events import EventLog
from edge.trust.check import check_in_store
from edge.trust.errors import NotFoundError, PropagationTimeout, RefusedError, TrustError
from edge.trust.model import CrlInfo, ServerSettings, SetInfo, TrustSnapshot, VersionInfo
from edge.trust.servercerts import DeploymentInfo, ServerCertInfo, ServerCertVersion, days_left
from edge.trust.store import TrustStore

__all__ = ["ApplyFunc", "TrustService"]

log = logging.getLogger("edgesim.trust")

#: What a worker registers: called with every new snapshot on the event loop.
ApplyFunc = Callable[[TrustSnapshot], Awaitable[None] | None]


@dataclass(slots=True)
class _Worker:
    name: str
    apply: ApplyFunc
    applied: int = -1
    error: str | None = None


class TrustService:
    """Owns a :class:`~edge.trust.store.TrustStore` and propagates its changes to workers.

    ``propagation_delay`` (seconds) simulates the time a change takes to reach
    every edge server, making the *propagating* state observable; 0 in tests.
    ``watch_interval`` (seconds), when set, also picks up changes other processes
    write to the same store (``edgesim trust --store``) by polling its generation.
    """

    def __init__(
        self,
        store: TrustStore,
        *,
        events: EventLog | None = None,
        propagation_delay: float = 0.0,
        watch_interval: float | None = None,
        expiry_warn_days: float = 30.0,
        expiry_interval: float = 86400.0,
    ) -> None:
        self.store = store
        #: Server certificates expiring within this many days are reported.
        self.expiry_warn_days = expiry_warn_days
        #: Seconds between two expiry checks (a day by default).
        self.expiry_interval = expiry_interval
        self._expiry_task: asyncio.Task[None] | None = None
        self.events = events if events is not None else EventLog(log_events=False)
        self.propagation_delay = propagation_delay
        self.watch_interval = watch_interval
        self._workers: dict[str, _Worker] = {}
        self._active: TrustSnapshot | None = None
        self._desired: TrustSnapshot | None = None
        self._state = "active"
        #: The snapshot being handed to workers, while a propagation runs.
        self._propagating: TrustSnapshot | None = None
        self._changed: asyncio.Event | None = None
        self._active_cond: asyncio.Condition | None = None
        self._task: asyncio.Task[None] | None = None

    # -- lifecycle ------------------------------------------------------------

    def register_worker(self, name: str, apply: ApplyFunc) -> None:
        """Register an edge worker; it receives every new snapshot.

        Registered after :meth:`start`, it gets the active snapshot at once
        (synchronously if ``apply`` returns nothing).
        """
        if name in self._workers:
            raise TrustError(f"a worker named {name!r} is already registered")
        worker = _Worker(name, apply)
        self._workers[name] = worker
        if self._active is not None:
            result = self._call(worker, self._active)
            if result is not None:
                task = asyncio.get_running_loop().create_task(
                    self._finish(worker, self._active, result)
                )
                task.add_done_callback(_log_task_error)

    def unregister_worker(self, name: str) -> None:
        """Forget a worker (a stopped edge worker no longer holds propagation back)."""
        self._workers.pop(name, None)

    async def start(self) -> None:
        """Load the stored state, apply it to every worker, and start propagating changes."""
        if self._task is not None:
            return
        self._changed = asyncio.Event()
        self._active_cond = asyncio.Condition()
        snapshot = await asyncio.to_thread(self.store.snapshot)
        self._desired = snapshot
        # The stored state is what the edge starts with: no simulated delay at boot.
        await self._apply_all(snapshot)
        self._active = snapshot
        self._state = "active"
        self.events.emit("trust.active", "info", generation=snapshot.generation)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="trust-propagation")
        if hasattr(self.store, "server_certs"):
            self._expiry_task = asyncio.get_running_loop().create_task(
                self._expiry_loop(), name="cert-expiry"
            )

    async def close(self) -> None:
        """Stop propagating (stored changes stay stored) and close the store."""
        for task in (self._task, self._expiry_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = self._expiry_task = None
        self.store.close()

    async def __aenter__(self) -> TrustService:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- what the edge reads --------------------------------------------------

    def current(self) -> TrustSnapshot:
        """Return the active snapshot: the one every worker has applied."""
        if self._active is None:
            raise TrustError("the trust service is not started")
        return self._active

    @property
    def state(self) -> str:
        """``active``, ``pending`` or ``propagating`` for the newest stored change."""
        return self._state

    async def wait_active(
        self, generation: int | None = None, timeout: float = 10.0
    ) -> TrustSnapshot:
        """Wait until ``generation`` (default: the newest stored change) is active."""
        if self._active_cond is None or self._desired is None:
            raise TrustError("the trust service is not started")
        target = self._desired.generation if generation is None else generation
        cond = self._active_cond
        try:
            async with asyncio.timeout(timeout):
                async with cond:
                    await cond.wait_for(
                        lambda: self._active is not None and self._active.generation >= target
                    )
        except TimeoutError:
            lagging = [
                f"{w.name} (applied {w.applied}{', error: ' + w.error if w.error else ''})"
                for w in self._workers.values()
                if w.applied < target
            ]
            raise PropagationTimeout(
                f"generation {target} not active after {timeout:g} s (state {self._state}); "
                f"workers not done: {', '.join(lagging) or 'none'}"
            ) from None
        return self.current()

    # -- propagation ----------------------------------------------------------

    async def _schedule(self) -> int:
        """Read the store's newest state; if it changed, mark it pending and wake the loop."""
        snapshot = await asyncio.to_thread(self.store.snapshot)
        if self._desired is None or self._changed is None:
            raise TrustError("the trust service is not started")
        if snapshot.generation > self._desired.generation:
            self._desired = snapshot
            if self._propagating is None:
                self._state = "pending"
            self.events.emit("trust.pending", "info", generation=snapshot.generation)
            self._changed.set()
        return self._desired.generation

    async def refresh(self) -> int:
        """Pick up changes written to the store by another process; return the newest generation."""
        return await self._schedule()

    async def _run(self) -> None:
        assert self._changed is not None
        while True:
            try:
                if self.watch_interval is None:
                    await self._changed.wait()
                else:
                    try:
                        async with asyncio.timeout(self.watch_interval):
                            await self._changed.wait()
                    except TimeoutError:
                        await self._schedule()
                        continue
                self._changed.clear()
                await self._propagate()
            except TrustError as exc:
                # A store that is briefly unreadable (locked, disk full) must not end
                # propagation for the life of the edge: report it and keep going.
                log.error("trust propagation: %s", exc)
                self.events.emit("trust.error", "error", reason=str(exc))

    async def _propagate(self) -> None:
        assert self._desired is not None
        assert self._active is not None
        target = self._desired
        if target.generation <= self._active.generation:
            return
        self._propagating = target
        self._state = "propagating"
        self.events.emit(
            "trust.propagating",
            "info",
            generation=target.generation,
            delay=self.propagation_delay,
        )
        try:
            if self.propagation_delay > 0:
                # The simulated time a change takes to reach every edge server. A
                # change stored meanwhile waits for its own full round.
                await asyncio.sleep(self.propagation_delay)
            if not await self._apply_all(target):
                # A worker failed: the change stays "propagating" until the next one.
                return
        finally:
            self._propagating = None
        self._active = target
        assert self._active_cond is not None
        async with self._active_cond:
            self._active_cond.notify_all()
        self._state = "active" if self._desired.generation == target.generation else "pending"
        self.events.emit(
            "trust.active",
            "info",
            generation=target.generation,
            sets={n: s.version for n, s in target.sets.items()},
        )

    def _call(self, worker: _Worker, snapshot: TrustSnapshot) -> Awaitable[None] | None:
        try:
            result = worker.apply(snapshot)
        except Exception as exc:  # a broken worker must not stop propagation to the others
            self._failed(worker, snapshot, exc)
            return None
        if result is None or not inspect.isawaitable(result):
            worker.applied = snapshot.generation
            worker.error = None
            return None
        return result

    async def _finish(
        self, worker: _Worker, snapshot: TrustSnapshot, pending: Awaitable[None]
    ) -> bool:
        try:
            await pending
        except asyncio.CancelledError as exc:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # the service itself is closing
            # The worker cancelled its own acknowledgement: a failure, not our shutdown.
            self._failed(worker, snapshot, exc)
            return False
        except Exception as exc:
            self._failed(worker, snapshot, exc)
            return False
        worker.applied = max(worker.applied, snapshot.generation)
        worker.error = None
        return True

    def _failed(self, worker: _Worker, snapshot: TrustSnapshot, exc: BaseException) -> None:
        worker.error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        log.error(
            "worker %s failed to apply generation %d: %s", worker.name, snapshot.generation, exc
        )
        self.events.emit(
            "trust.apply_failed",
            "error",
            worker=worker.name,
            generation=snapshot.generation,
            reason=worker.error,
        )

    async def _apply_all(self, snapshot: TrustSnapshot) -> bool:
        """Hand ``snapshot`` to every worker; True when all have applied it.

        Workers registered while others are applying get it too, so a worker
        that joins mid-propagation cannot leave the change stuck.
        """
        tried: set[str] = set()
        while True:
            todo = [
                w
                for w in self._workers.values()
                if w.name not in tried and w.applied < snapshot.generation
            ]
            if not todo:
                break
            pending = []
            for worker in todo:
                tried.add(worker.name)
                result = self._call(worker, snapshot)
                if result is not None:
                    pending.append(self._finish(worker, snapshot, result))
            if pending:
                await asyncio.gather(*pending)
        return all(w.applied >= snapshot.generation for w in self._workers.values())

    # -- mutations: persist, then propagate ----------------------------------

    async def upload(
        self,
        name: str,
        data: bytes,
        *,
        activate: bool = True,
        allow_sha1: bool = False,
        source: str = "FILE",
    ) -> VersionInfo:
        """Validate and store a new version of set ``name`` (activated unless told not to).

        ``source`` (the file name) is how refusal messages name the file.
        """
        try:
            info = await asyncio.to_thread(
                self.store.upload,
                name,
                data,
                activate=activate,
                allow_sha1=allow_sha1,
                source=source,
            )
        except RefusedError as exc:
            self._emit_refused(name, exc)
            raise
        self.events.emit(
            "trust.uploaded",
            "info",
            set=name,
            version=info.version,
            certificates=info.certificate_count,
        )
        if info.active:
            self.events.emit("trust.activated", "info", set=name, version=info.version)
        await self._schedule()
        return self._with_state(info)

    async def activate(self, name: str, version: int) -> VersionInfo:
        """Make ``version`` the active version of set ``name`` (also a rollback)."""
        info = await asyncio.to_thread(self.store.activate, name, version)
        self.events.emit("trust.activated", "info", set=name, version=version)
        await self._schedule()
        return self._with_state(info)

    async def rollback(self, name: str) -> VersionInfo:
        """Re-activate the previously active version of set ``name``."""
        info = await asyncio.to_thread(self.store.rollback, name)
        self.events.emit("trust.rolled_back", "info", set=name, version=info.version)
        await self._schedule()
        return self._with_state(info)

    async def bind(self, name: str, host: str) -> str:
        """Bind ``host`` (``*`` = default) to set ``name``; returns the stored hostname."""
        stored = await asyncio.to_thread(self.store.bind, name, host)
        self.events.emit("trust.bound", "info", set=name, host=stored)
        await self._schedule()
        return stored

    async def unbind(self, host: str) -> None:
        """Remove a hostname binding."""
        await asyncio.to_thread(self.store.unbind, host)
        self.events.emit("trust.unbound", "info", host=host.lower())
        await self._schedule()

    async def set_options(self, name: str, *, disconnect_on_revoke: bool) -> SetInfo:
        """Set set ``name``'s options; propagated like any other change."""
        info = await asyncio.to_thread(
            lambda: self.store.set_options(name, disconnect_on_revoke=disconnect_on_revoke)
        )
        self.events.emit(
            "trust.options_set", "info", set=name, disconnect_on_revoke=disconnect_on_revoke
        )
        await self._schedule()
        return info

    async def delete(self, name: str) -> None:
        """Delete set ``name`` with its versions, CRLs and bindings."""
        await asyncio.to_thread(self.store.delete, name)
        self.events.emit("trust.deleted", "info", set=name)
        await self._schedule()

    async def add_crl(self, name: str, data: bytes) -> CrlInfo:
        """Attach a CRL to set ``name``; revoked devices are refused once it is active."""
        try:
            info = await asyncio.to_thread(self.store.add_crl, name, data)
        except RefusedError as exc:
            self._emit_refused(name, exc)
            raise
        self.events.emit(
            "trust.crl_added", "info", set=name, issuer=info.issuer, revoked=info.revoked_count
        )
        await self._schedule()
        return info

    def _emit_refused(self, name: str, exc: RefusedError) -> None:
        """Log a refused upload (certificates or CRL) with the linter's findings."""
        self.events.emit(
            "trust.refused",
            "refused",
            set=name,
            reason=exc.message,
            findings=[f.to_dict() for f in exc.findings],
        )

    # -- reads ----------------------------------------------------------------

    async def list_sets(self) -> list[SetInfo]:
        """Return every set."""
        return await asyncio.to_thread(self.store.list_sets)

    async def get_set(self, name: str) -> SetInfo:
        """Return one set."""
        return await asyncio.to_thread(self.store.get_set, name)

    async def versions(self, name: str) -> list[VersionInfo]:
        """Return a set's versions, each with its propagation state."""
        return [self._with_state(v) for v in await asyncio.to_thread(self.store.versions, name)]

    async def crls(self, name: str) -> list[CrlInfo]:
        """Return the CRLs of a set."""
        return await asyncio.to_thread(self.store.crls, name)

    async def bindings(self) -> dict[str, str]:
        """Return the stored bindings (host -> set)."""
        return await asyncio.to_thread(self.store.bindings)

    async def check(
        self,
        name: str,
        leaf_pem: bytes,
        *,
        chain_pem: bytes = b"",
        version: int | None = None,
        at: datetime | None = None,
    ) -> dict[str, Any]:
        """Dry run of a device against set ``name`` (see :func:`edge.trust.check.check_in_store`)."""
        return await asyncio.to_thread(
            check_in_store, self.store, name, leaf_pem, chain_pem=chain_pem, version=version, at=at
        )

    def _item_state(self, have: object, want: object, moving: object) -> str:
        """``active`` when workers have ``want``; else where ``want`` is on its way."""
        if have == want:
            return "active"
        return "propagating" if moving == want else "pending"

    def _version_state(self, set_name: str, version: int, stored_active: bool) -> str:
        active = self._active.sets.get(set_name) if self._active else None
        applied = active is not None and active.version == version
        if stored_active:
            if applied:
                return "active"
            moving = self._propagating.sets.get(set_name) if self._propagating else None
            return "propagating" if moving is not None and moving.version == version else "pending"
        return "retiring" if applied else ""

    def _with_state(self, info: VersionInfo) -> VersionInfo:
        state = self._version_state(info.set_name, info.version, info.active) or info.state
        return dataclasses.replace(info, state=state)

    def status(self) -> dict[str, Any]:
        """Return propagation status: overall, per worker, per set and per binding."""
        if self._active is None or self._desired is None:
            raise TrustError("the trust service is not started")
        active, desired = self._active, self._desired
        moving = self._propagating or active

        def key(snapshot: TrustSnapshot, name: str) -> tuple[int, bytes, bool] | None:
            found = snapshot.sets.get(name)
            if found is None:
                return None
            return (found.version, found.crl_pem, found.disconnect_on_revoke)

        sets: list[dict[str, Any]] = []
        for name in sorted(set(active.sets) | set(desired.sets)):
            want = desired.sets.get(name)
            have = active.sets.get(name)
            sets.append(
                {
                    "name": name,
                    "version": want.version if want else None,
                    "applied_version": have.version if have else None,
                    "crls": len(want.crls) if want else 0,
                    "disconnect_on_revoke": want.disconnect_on_revoke if want else False,
                    "state": self._item_state(
                        key(active, name), key(desired, name), key(moving, name)
                    ),
                }
            )
        bindings: list[dict[str, Any]] = []
        for host in sorted(set(active.bindings) | set(desired.bindings)):
            target = desired.bindings.get(host)
            bindings.append(
                {
                    "host": host,
                    "set": target,
                    "state": self._item_state(
                        active.bindings.get(host), target, moving.bindings.get(host)
                    ),
                }
            )
        return {
            "state": self._state,
            "generation": desired.generation,
            "active_generation": active.generation,
            "propagation_delay": self.propagation_delay,
            "workers": [
                {"name": w.name, "applied_generation": w.applied, "error": w.error}
                for w in self._workers.values()
            ],
            "sets": sets,
            "bindings": bindings,
            "server_certs": self.server_cert_status(),
        }

    def set_status(self, name: str) -> dict[str, Any]:
        """Return one set's entry of :meth:`status`."""
        for entry in self.status()["sets"]:
            if entry["name"] == name:
                return dict(entry)
        raise NotFoundError(f"certificate set {name!r} has no active version")

    # -- server certificates --------------------------------------------------

    def _certs_store(self) -> Any:
        # Server certificates are an extension of the SQLite backend; a backend
        # without them says so instead of failing with an AttributeError.
        if not hasattr(self.store, "server_certs"):
            raise TrustError(f"{type(self.store).__name__} does not store server certificates")
        return self.store

    async def upload_server_cert(
        self,
        name: str,
        cert_data: bytes,
        key_data: bytes,
        *,
        passphrase: bytes | None = None,
        cert_source: str = "CERT",
        key_source: str = "KEY",
    ) -> ServerCertVersion:
        """Validate and store a new (staged) version of server certificate ``name``."""
        store = self._certs_store()
        try:
            info: ServerCertVersion = await asyncio.to_thread(
                store.upload_server_cert,
                name,
                cert_data,
                key_data,
                passphrase=passphrase,
                cert_source=cert_source,
                key_source=key_source,
            )
        except RefusedError as exc:
            self.events.emit(
                "cert.refused",
                "refused",
                cert=name,
                reason=exc.message,
                findings=[f.to_dict() for f in exc.findings],
            )
            raise
        self.events.emit(
            "cert.uploaded",
            "info",
            cert=name,
            version=info.version,
            hostnames=list(info.hostnames),
            not_after=info.not_after,
        )
        return info

    async def deploy(
        self,
        name: str,
        settings: ServerSettings | Mapping[str, Any] | None = None,
        *,
        version: int | None = None,
        default: bool | None = None,
    ) -> DeploymentInfo:
        """Store a deployment of ``name`` with ``settings`` and start propagating it."""
        store = self._certs_store()
        try:
            info: DeploymentInfo = await asyncio.to_thread(
                store.deploy, name, settings, version=version, default=default
            )
        except RefusedError as exc:
            self.events.emit(
                "cert.refused",
                "refused",
                cert=name,
                reason=exc.message,
                findings=[f.to_dict() for f in exc.findings],
            )
            raise
        self.events.emit(
            "cert.deployed",
            "info",
            cert=name,
            version=info.version,
            deployment=info.id,
            settings=info.settings.to_dict(),
        )
        await self._schedule()
        return self.deployment_state(info)

    async def rollback_server_cert(self, name: str) -> DeploymentInfo | None:
        """Re-activate the previous deployment of ``name`` (or undeploy its first one)."""
        store = self._certs_store()
        info: DeploymentInfo | None = await asyncio.to_thread(store.rollback_server_cert, name)
        self.events.emit(
            "cert.rolled_back",
            "info",
            cert=name,
            deployment=info.id if info else None,
            version=info.version if info else None,
        )
        await self._schedule()
        return self.deployment_state(info) if info else None

    async def delete_server_cert(self, name: str) -> None:
        """Delete server certificate ``name`` (versions, keys, deployments)."""
        store = self._certs_store()
        await asyncio.to_thread(store.delete_server_cert, name)
        self.events.emit("cert.deleted", "info", cert=name)
        await self._schedule()

    async def server_certs(self) -> list[ServerCertInfo]:
        """Return every server certificate, each deployment with its propagation state."""
        store = self._certs_store()
        found: list[ServerCertInfo] = await asyncio.to_thread(store.server_certs)
        return [self._cert_state(c) for c in found]

    async def get_server_cert(self, name: str) -> ServerCertInfo:
        """Return one server certificate (raises :class:`NotFoundError`)."""
        store = self._certs_store()
        found: ServerCertInfo = await asyncio.to_thread(store.get_server_cert, name)
        return self._cert_state(found)

    def deployment_state(self, info: DeploymentInfo) -> DeploymentInfo:
        """Return ``info`` with its propagation state (pending, propagating, active)."""
        active = self._active.server_certs.get(info.name) if self._active else None
        if active is not None and active.deployment == info.id:
            state = "active"
        else:
            moving = self._propagating.server_certs.get(info.name) if self._propagating else None
            state = (
                "propagating" if moving is not None and moving.deployment == info.id else "pending"
            )
        return dataclasses.replace(info, state=state)

    def _cert_state(self, info: ServerCertInfo) -> ServerCertInfo:
        if info.deployment is None:
            return info
        return dataclasses.replace(info, deployment=self.deployment_state(info.deployment))

    def server_cert_status(self) -> list[dict[str, Any]]:
        """Each server certificate workers serve or will serve: deployment, state, expiry."""
        if self._active is None or self._desired is None:
            raise TrustError("the trust service is not started")
        active, desired = self._active, self._desired
        moving = self._propagating or active
        now = self.store.now()
        out: list[dict[str, Any]] = []
        for name in sorted(set(active.server_certs) | set(desired.server_certs)):
            want = desired.server_certs.get(name)
            have = active.server_certs.get(name)
            going = moving.server_certs.get(name)
            shown = want or have
            assert shown is not None
            left = days_left(shown.not_after, now)
            out.append(
                {
                    "name": name,
                    "deployment": want.deployment if want else None,
                    "applied_deployment": have.deployment if have else None,
                    "version": want.version if want else None,
                    "hostnames": list(shown.hostnames),
                    "settings": shown.settings.to_dict(),
                    "default": desired.default_cert == name,
                    "not_after": shown.not_after,
                    "days_left": round(left, 1),
                    "expiring": left <= self.expiry_warn_days,
                    "state": self._item_state(
                        have.deployment if have else None,
                        want.deployment if want else None,
                        going.deployment if going else None,
                    ),
                }
            )
        return out

    async def check_expiry(self) -> list[dict[str, Any]]:
        """Emit ``cert.expiring`` for every certificate expiring within ``expiry_warn_days``.

        Looks at the deployed version of each certificate, or its latest upload when
        it is not deployed. Returns what was reported.
        """
        certs = await self.server_certs()
        now = self.store.now()
        reported: list[dict[str, Any]] = []
        for cert in certs:
            current = cert.deployed_version or (cert.versions[-1] if cert.versions else None)
            if current is None:
                continue
            left = days_left(current.not_after, now)
            if left > self.expiry_warn_days:
                continue
            entry = {
                "cert": cert.name,
                "version": current.version,
                "hostnames": list(current.hostnames),
                "not_after": current.not_after,
                "days_left": round(left, 1),
                "deployed": cert.deployment is not None,
            }
            self.events.emit("cert.expiring", "warning", **entry)
            reported.append(entry)
        return reported

    async def _expiry_loop(self) -> None:
        while True:
            try:
                await self.check_expiry()
            except TrustError as exc:
                log.error("server certificate expiry check: %s", exc)
                self.events.emit("trust.error", "error", reason=str(exc))
            await asyncio.sleep(self.expiry_interval)


def _log_task_error(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("trust worker task failed", exc_info=task.exception())
