"""EdgeServer: the edge's listeners and lifecycle, from an :class:`~edge.config.EdgeConfig`.

``start()`` prepares, in order: the server certificate (from ``[tls]``, from a
``--pki`` folder, or an embedded quickstart PKI created once under the state
directory), the trust store (seeded with the PKI's ``ca-chain.pem`` as set
``default`` bound to every host when it is empty), the trust service that
propagates set changes to this edge, the core (router, policy, events), the
MQTT broker, the device HTTPS front end when an HTTPS or multi listener is
configured, then one TLS listener per configured kind and the admin API.
``ports`` then maps each listener kind to the port it bound (port 0 in the
config picks a free one). ``close()`` undoes all of it, in reverse.

Every TLS listener is a plain TCP server whose connections drive TLS themselves
(:mod:`edge.tls.connection`), so refusals carry their reason and the client gets
the real alert.

Errors::

    EdgeServerError          the edge cannot start: the message says what and where
                             (a port in use, an unreadable certificate or key,
                             a store that cannot be opened). Foreign errors
                             (OSError, TlsConfigError, StoreError, IssueError) are
                             translated into it at start().
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import ssl
import threading
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.config import EdgeConfig, HostPort
from edge.core.events import EventLog
from edge.core.handlers import HandlerRegistry
from edge.core.hub import EdgeCore
from edge.core.policy import Policy
from edge.tls import verifiedchain
from edge.tls.connection import AppProtocolFactory, EndpointOptions, ListenerKind, TlsEndpoint
from edge.tls.contexts import ContextCache, TlsSettings
from edge.tls.errors import TlsError
from edge.tls.keylog import KeyLogTap
from edge.trust.model import TrustSnapshot
from edge.trust.revoke import plan_revocations

__all__ = ["BusFactory", "EdgeServer", "EdgeServerError", "Pki", "ServerThread", "TrustSource"]

log = logging.getLogger("edgesim.server")

#: Hosts the embedded PKI's server certificate covers.
EMBEDDED_HOSTS = ("localhost", "127.0.0.1")
#: Devices the embedded PKI issues on first start (for `edgesim device` and demos).
EMBEDDED_DEVICES = 10


class EdgeServerError(Exception):
    """The edge could not start (or stop) cleanly; the message says why and where."""


@dataclass(frozen=True, slots=True)
class Pki:
    """The server certificate, key and CA chain (the PKI's, if any) this edge runs with."""

    cert: Path
    key: Path
    ca_chain: Path | None


#: Loads the trust store and starts the service that applies certificate sets to this
#: edge (``server.trust``, ``server.store``), before any listener binds: a worker takes
#: connections only once every active set is loaded. The default reads the SQLite store
#: (:meth:`EdgeServer.start_sqlite_trust`); a cluster plugs its own source in here.
TrustSource = Callable[["EdgeServer", "Pki"], Awaitable[None]]
#: Builds and starts the bus to the other workers once the core and broker exist
#: (:mod:`edge.core.bus`); it returns the bus, whose ``close()`` runs at shutdown.
BusFactory = Callable[["EdgeServer"], Awaitable[Any]]


class EdgeServer:
    """Owns the edge's listeners, trust service, core and broker.

    ``factories`` replaces or adds application protocols by name (``"mqtt"``,
    ``"http"``): ``factory(session) -> asyncio.Protocol``. ``reuse_port`` binds the
    device listeners with ``SO_REUSEPORT`` (workers sharing a port); ``trust_source``
    and ``bus`` are the cluster's plug-in points (:data:`TrustSource`,
    :data:`BusFactory`); ``worker`` names this worker in MQTT 5 CONNACKs.
    """

    def __init__(
        self,
        config: EdgeConfig | None = None,
        *,
        factories: Mapping[str, AppProtocolFactory] | None = None,
        events: EventLog | None = None,
        handlers: HandlerRegistry | None = None,
        reuse_port: bool = False,
        trust_source: TrustSource | None = None,
        bus: BusFactory | None = None,
        worker: str | None = None,
    ) -> None:
        self.config = config or EdgeConfig()
        self.reuse_port = reuse_port
        self.worker = worker
        self._trust_source = trust_source
        self._bus_factory = bus
        #: The bus to the other workers, once started (None in one process).
        self.bus: Any = None
        # Formatting every event for a log nobody reads costs CPU on every connect.
        self.events = (
            events
            if events is not None
            else EventLog(log_events=logging.getLogger("edgesim.events").isEnabledFor(logging.INFO))
        )
        self._extra_factories = dict(factories or {})
        #: Topic handlers (services such as an OTA responder) the core calls for
        #: every matching publish, on any protocol.
        self.handlers = handlers if handlers is not None else HandlerRegistry()
        self.ports: dict[str, int] = {}
        self.endpoints: dict[str, TlsEndpoint] = {}
        self.core: EdgeCore | None = None
        self.broker: Any = None
        self.trust: Any = None
        self.store: Any = None
        self.contexts: ContextCache | None = None
        self.keylog: KeyLogTap | None = None
        #: The HTTPS listener's device side (``edge.http.device.DeviceFrontend``), once started.
        self.device_frontend: Any = None
        self.admin_token: str | None = None
        self._snapshot: TrustSnapshot = TrustSnapshot(0, {}, {})
        self._servers: list[asyncio.Server] = []
        self._cleanups: list[Callable[[], Any]] = []
        self._started = False

    # -- lifecycle -----------------------------------------------------------

    async def __aenter__(self) -> EdgeServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Bind every listener; afterwards ``ports`` holds the bound ports."""
        if self._started:
            return
        self._started = True
        try:
            await self._start()
        except BaseException:
            await self.close()
            raise

    async def _start(self) -> None:
        from certs.errors import CertsError
        from edge.trust.errors import TrustError

        cfg = self.config
        try:
            pki = await asyncio.to_thread(self._prepare_pki)
            keylog_file = cfg.tls.keylog_file
            if cfg.tls.capture_tls13_certificates and not verifiedchain.available():
                # OpenSSL's verified chain cannot be read on this Python: the tap
                # reads OpenSSL's key log instead and copies it to keylog_file, if any.
                self.keylog = KeyLogTap(tee=keylog_file)
                self._cleanups.append(self.keylog.close)
                keylog_file = self.keylog.path
            self.contexts = ContextCache(
                TlsSettings(
                    cert_file=pki.cert,
                    key_file=pki.key,
                    minimum_version=cfg.tls.minimum_version,
                    profile=cfg.tls.profile,
                    num_tickets=cfg.tls.num_tickets,
                    alpn=cfg.tls.alpn,
                    keylog_file=keylog_file,
                )
            )
            if self._trust_source is not None:
                await self._trust_source(self, pki)
            else:
                await self.start_sqlite_trust(pki)
        except (TlsError, CertsError, TrustError, OSError) as exc:
            raise EdgeServerError(str(exc)) from None
        self.core = EdgeCore(self.events, self._policy(), handlers=self.handlers)
        factories = await self._start_apps()
        if self.worker is not None and self.broker is not None:
            self.broker.label_worker(self.worker)
        if self._bus_factory is not None:
            # Before any listener: the bus must know every subscription, and a
            # starting worker loads the retained messages before its first device.
            self.core.router.shared_by_bus = True
            try:
                self.bus = await self._bus_factory(self)
            except Exception as exc:
                raise EdgeServerError(f"cannot join the cluster bus: {exc}") from None
            self.core.bus = self.bus
            self._cleanups.append(self.bus.close)
        options = cfg.tls
        listeners: list[tuple[ListenerKind, HostPort]] = []
        for kind in ("mqtt", "https", "multi"):
            where = getattr(cfg.listeners, kind)
            if where is not None:
                listeners.append((kind, where))
        loop = asyncio.get_running_loop()
        for kind, where in listeners:
            endpoint = TlsEndpoint(
                contexts=self.contexts,
                snapshot=self._current_snapshot,
                factories=factories,
                events=self.events,
                options=EndpointOptions(
                    kind=kind,
                    handshake_timeout=options.handshake_timeout,
                    max_handshakes=options.max_handshakes,
                    max_connections=options.max_connections,
                    max_lingering=options.max_lingering,
                    max_unauthenticated_per_source=options.max_unauthenticated_per_source,
                    handshake_rate_per_source=options.handshake_rate_per_source,
                    identity_rule=cfg.identity.rule,
                ),
                keylog=self.keylog,
            )
            try:
                server = await loop.create_server(
                    endpoint.protocol_factory,
                    where.host,
                    where.port,
                    backlog=4096,
                    reuse_port=self.reuse_port or None,
                )
            except OSError as exc:
                raise EdgeServerError(
                    f"cannot listen for {kind} on {where}: {exc.strerror or exc}"
                ) from None
            self._servers.append(server)
            self.endpoints[kind] = endpoint
            self.ports[kind] = server.sockets[0].getsockname()[1]
        await self._start_admin()
        self.events.emit("edge.started", "info", ports=dict(self.ports), store=str(cfg.store_path))
        if cfg.ready_file is not None:
            _write_atomically(cfg.ready_file, json.dumps({"ports": self.ports, "pid": os.getpid()}))

    async def close(self) -> None:
        """Stop accepting, close every connection, stop services; safe to call twice."""
        for server in self._servers:
            server.close()
        for endpoint in self.endpoints.values():
            endpoint.close_all()
        for server in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 5)
        for endpoint in self.endpoints.values():
            # Sockets close in connection_lost; let those callbacks run. A device
            # that reads nothing never drains its close_notify: drop it then.
            try:
                await endpoint.wait_idle(5)
            except TimeoutError:
                endpoint.abort_all()
                with contextlib.suppress(TimeoutError):
                    await endpoint.wait_idle(5)
        self._servers.clear()
        while self._cleanups:
            cleanup = self._cleanups.pop()
            try:
                result = cleanup()
                if asyncio.iscoroutine(result):
                    await result
            except Exception:  # keep closing the rest
                log.exception("cleanup failed")

    # -- pieces --------------------------------------------------------------

    def prepare(self) -> Pki:
        """Create the embedded PKI and seed an empty store, without starting anything.

        A supervisor calls this once before its workers start, so that they do not
        race to create the same files.
        """
        from edge.trust.sqlite import SqliteTrustStore

        pki = self._prepare_pki()
        store = SqliteTrustStore(self.config.store_path)
        try:
            self._seed(store, pki)
        finally:
            store.close()
        return pki

    def _seed(self, store: Any, pki: Pki) -> None:
        if pki.ca_chain is not None and not store.list_sets():
            # A fresh store: trust the PKI the edge runs with, for every hostname.
            store.upload("default", pki.ca_chain.read_bytes())
            store.bind("default", "*")
            log.info("trust store %s seeded with set `default` from %s", store.path, pki.ca_chain)

    def _prepare_pki(self) -> Pki:
        cfg = self.config
        if cfg.tls.cert is not None or cfg.tls.key is not None:
            if cfg.tls.cert is None or cfg.tls.key is None:
                raise EdgeServerError("[tls] needs both cert and key (or neither)")
            return Pki(cfg.tls.cert, cfg.tls.key, None)
        folder = cfg.pki_dir
        if folder is None:
            folder = cfg.state_dir / "pki"
            if not (folder / "server.pem").exists():
                from certs.quickstart import quickstart

                log.info("creating an embedded test PKI in %s", folder)
                quickstart(folder, devices=EMBEDDED_DEVICES, hosts=EMBEDDED_HOSTS)
        for name in ("server.pem", "server.key"):
            if not (folder / name).exists():
                raise EdgeServerError(
                    f"{folder}: no {name} (is it a folder made by `edgesim pki quickstart`?)"
                )
        chain = folder / "ca-chain.pem"
        return Pki(folder / "server.pem", folder / "server.key", chain if chain.exists() else None)

    def add_cleanup(self, cleanup: Callable[[], Any]) -> None:
        """Run ``cleanup`` (a function or coroutine function) at :meth:`close`, in reverse order."""
        self._cleanups.append(cleanup)

    async def start_sqlite_trust(self, pki: Pki) -> None:
        """The default :data:`TrustSource`: the SQLite store, polled for changes.

        Several processes may share one store file: each one's trust service polls
        it (``[trust] watch_interval``) and applies what changed.
        """
        from edge.trust.propagation import TrustService
        from edge.trust.sqlite import SqliteTrustStore

        cfg = self.config
        store = await asyncio.to_thread(SqliteTrustStore, cfg.store_path)
        self.store = store
        self._cleanups.append(store.close)
        await asyncio.to_thread(self._seed, store, pki)
        trust = TrustService(
            store,
            events=self.events,
            propagation_delay=cfg.trust.propagation_delay,
            watch_interval=cfg.trust.watch_interval,
            expiry_warn_days=cfg.trust.cert_expiry_days,
        )
        self.trust = trust
        trust.register_worker(self.worker_name, self._apply_snapshot)
        await trust.start()
        self._cleanups.append(trust.close)

    @property
    def worker_name(self) -> str:
        """This edge's name as a trust worker (the cluster worker's, or a per-process one)."""
        return self.worker or f"edge-{os.getpid()}-{id(self):x}"

    def apply_snapshot(self, snapshot: TrustSnapshot) -> None:
        """Install a trust snapshot for new handshakes and end revoked sessions.

        What a :data:`TrustSource` calls when its certificate sets change.
        """
        self._apply_snapshot(snapshot)

    def _apply_snapshot(self, snapshot: TrustSnapshot) -> None:
        previous = self._snapshot
        self._install_snapshot(snapshot)
        # After the install, so a revoked device that reconnects at once is refused.
        self._end_revoked_sessions(previous, snapshot)

    def _end_revoked_sessions(self, previous: TrustSnapshot, snapshot: TrustSnapshot) -> None:
        """Close the MQTT sessions that sets with ``disconnect_on_revoke`` on now refuse.

        MQTT only: HTTP requests are short and each one is authorised anew, and a
        ``/ws`` WebSocket has no reason code to carry (see the README).
        """
        broker = self.broker
        if broker is None:
            return
        plan = plan_revocations(previous, snapshot)
        if plan:
            broker.disconnect_each(plan.reason_for, 0x98)  # Administrative action

    def _install_snapshot(self, snapshot: TrustSnapshot) -> None:
        # New handshakes read self._snapshot; established sessions keep their context.
        if self.contexts is not None:
            # Build every context now, not in a handshake; a server certificate that
            # cannot load raises here, so the worker fails and the old snapshot stays.
            routes = []
            table = snapshot.routes
            if table is not None:
                routes = [*table.exact.values(), *table.wildcard.values()]
                if table.default is not None:
                    routes.append(table.default)
            for route in routes:
                if route.server is not None and route.error is None:
                    self.contexts.context_for_route(route)
            for active in snapshot.sets.values():
                self.contexts.context_for(active)
            self._snapshot = snapshot
            self.contexts.apply(list(snapshot.sets.values()), routes)
        else:
            self._snapshot = snapshot

    def _current_snapshot(self) -> TrustSnapshot:
        return self._snapshot

    def _policy(self) -> Policy:
        spec = self.config.policy
        if spec == "open":
            return Policy.open()
        if spec == "default":
            return Policy.default()
        if isinstance(spec, Mapping):
            try:
                return Policy.from_dict(spec)
            except Exception as exc:
                raise EdgeServerError(f"[policy]: {exc}") from None
        raise EdgeServerError(f"policy {spec!r}: expected open, default or a table")

    async def _start_apps(self) -> dict[str, AppProtocolFactory]:
        factories: dict[str, AppProtocolFactory] = {}
        core = self.core
        assert core is not None
        listeners = self.config.listeners
        wants_mqtt = listeners.mqtt is not None or listeners.multi is not None
        wants_http = listeners.https is not None or listeners.multi is not None
        if wants_mqtt and "mqtt" not in self._extra_factories:
            from edge.mqtt.broker import MqttBroker

            store = await self._start_mqtt_store()
            self.broker = MqttBroker(core, self.config.mqtt, store=store)
            if store is not None:
                from edge.mqtt.sqlite_store import MqttStoreError

                try:
                    counts = await asyncio.to_thread(self.broker.restore)
                except MqttStoreError as exc:
                    raise EdgeServerError(str(exc)) from None
                store.start(asyncio.get_running_loop())
                log.info("MQTT state %s restored: %s", store.path, counts)
                self.events.emit("mqtt.restored", "info", path=str(store.path), **counts)
            factories["mqtt"] = _mqtt_factory(self.broker)
            closer = getattr(self.broker, "close", None)
            if closer is not None:
                self._cleanups.append(closer)
            # MQTT 5 session expiry and delayed wills must fire even when no
            # connection ticks: one loop timer a second drives them.
            self._cleanups.append(_every(asyncio.get_running_loop(), 1.0, self.broker))
        if wants_http and "http" not in self._extra_factories:
            from edge.http.device import DeviceApiConfig, make_device_protocol_factory

            http = self.config.http
            frontend = make_device_protocol_factory(
                core,
                self.broker,
                DeviceApiConfig(
                    request_head_timeout=http.request_head_timeout,
                    keepalive_timeout=http.keepalive_timeout,
                ),
                events=self.events,
            )
            await frontend.start()
            self._cleanups.append(frontend.close)
            factories["http"] = frontend
            self.device_frontend = frontend
        factories.update(self._extra_factories)
        return factories

    async def _start_mqtt_store(self) -> Any:
        """Open the MQTT state file (None: persistence is off)."""
        persistence = self.config.persistence
        if not persistence.enabled:
            return None
        from edge.mqtt.sqlite_store import MqttStoreError, SqliteMqttStore

        path = self.config.mqtt_state_path
        if self.worker is not None:
            # Workers sharing one state file would each restore every session: each
            # worker keeps its own, and its replacement (same label) recovers it.
            label = "".join(c if c.isalnum() or c in "-_" else "-" for c in self.worker)
            path = path.with_name(f"{path.name}.{label}")
        try:
            store = await asyncio.to_thread(
                SqliteMqttStore,
                path,
                synchronous=persistence.synchronous,
                batch_delay=persistence.batch_delay,
            )
        except MqttStoreError as exc:
            raise EdgeServerError(str(exc)) from None
        # Cleanups run last-in first-out: the store closes after the broker, so the
        # broker's last changes (sessions going offline) are written.
        self._cleanups.append(store.close)
        return store

    async def _start_admin(self) -> None:
        where = self.config.listeners.admin
        if where is None:
            return
        try:
            from edge.http import admin
        except ModuleNotFoundError:
            log.warning("admin API not available in this build; not listening on %s", where)
            return
        # The token lives next to the store (``<store>.token``), where `edgesim trust` finds it.
        self.admin_token, created = admin.load_or_create_token(self.config.store_path)
        if created:
            log.info("admin token written to %s.token", self.config.store_path)
        broker = self.broker
        settings = self.config.admin
        admin_ca_pem: bytes | None = None
        ssl_context = None
        try:
            if settings.client_ca is not None:
                admin_ca_pem = settings.client_ca.read_bytes()
            if settings.cert is not None and settings.key is not None:
                ssl_context = admin.admin_ssl_context(
                    settings.cert,
                    settings.key,
                    admin_ca_pem,
                    require_client_cert=settings.client_cert == "required",
                )
            app = admin.make_admin_app(
                self.trust,
                self.events,
                token=self.admin_token,
                admin_ca_pem=admin_ca_pem,
                certificate_login=admin_ca_pem is not None,
                disconnect=None if broker is None else broker.disconnect_devices,
                edge=self,
                metrics_auth=self.config.metrics_auth,
            )
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise EdgeServerError(f"admin listener [admin]: {exc}") from None
        try:
            runner, port = await admin.start_admin(app, where.host, where.port, ssl_context)
        except OSError as exc:
            raise EdgeServerError(
                f"cannot listen for admin on {where}: {exc.strerror or exc}"
            ) from None
        self._cleanups.append(lambda: admin.stop_admin(runner))
        self.ports["admin"] = port

    # -- threads ---------------------------------------------------------------

    @classmethod
    def run_in_thread(
        cls, config: EdgeConfig | None = None, *, timeout: float = 30.0, **kwargs: Any
    ) -> ServerThread:
        """Start an edge on its own event loop in a daemon thread; returns once it listens."""
        handle = ServerThread(cls(config, **kwargs))
        handle.start(timeout)
        return handle


def _every(loop: asyncio.AbstractEventLoop, interval: float, broker: Any) -> Callable[[], None]:
    """Call ``broker.maintain(now)`` every ``interval`` seconds; return the canceller."""
    handle: list[asyncio.TimerHandle] = []

    def tick() -> None:
        broker.maintain(broker.clock())
        handle[0] = loop.call_later(interval, tick)

    handle.append(loop.call_later(interval, tick))
    return lambda: handle[0].cancel()


def _mqtt_factory(broker: Any) -> AppProtocolFactory:
    from edge.mqtt.protocol import MqttProtocolFactory

    return MqttProtocolFactory(broker)


def new_event_loop(use_uvloop: bool = True) -> asyncio.AbstractEventLoop:
    """A uvloop loop when available and wanted, else the stdlib's."""
    if use_uvloop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


class ServerThread:
    """An :class:`EdgeServer` running in a background thread (for tests and embedding)."""

    def __init__(self, server: EdgeServer) -> None:
        self.server = server
        self.loop = new_event_loop(server.config.use_uvloop)
        self._thread = threading.Thread(target=self._run, name="edgesim-edge", daemon=True)
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None

    @property
    def ports(self) -> dict[str, int]:
        """The bound ports by listener kind."""
        return dict(self.server.ports)

    def start(self, timeout: float) -> None:
        """Start the thread and wait until the edge listens (or failed to)."""
        self._thread.start()
        if not self._ready.wait(timeout):
            raise EdgeServerError(f"the edge did not start within {timeout:g} s")
        if self._error is not None:
            self._thread.join(timeout)
            raise self._error

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._main())
        finally:
            self.loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        try:
            await self.server.start()
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await self.server.close()

    def stop(self, timeout: float = 30.0) -> None:
        """Close the edge and join the thread."""
        if self._thread.is_alive() and self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout)

    def __enter__(self) -> ServerThread:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text + "\n", encoding="utf-8")
    os.replace(tmp, path)
