"""The ``edgesim`` pytest plugin: an edge, a PKI, devices and fleets as fixtures.

Registered through the ``pytest11`` entry point ``edgesim``, so any test suite in an
environment where edgesim is installed gets these fixtures without a ``conftest.py``:

=================  ========  ====================================================
fixture            scope     what it gives
=================  ========  ====================================================
``pki``            session   :class:`Pki`: a test PKI (root, intermediate, server
                             certificate) that issues healthy and defective devices
``edge``           function  :class:`EdgeHandle`: an edge in a background thread on
                             free loopback ports, trusting ``pki`` (options from
                             ``@pytest.mark.edgesim(...)``)
``edge_factory``   function  :class:`EdgeFactory`: ``edge_factory(policy="open")``
                             for more edges, or edges with other options
``device``         function  :class:`DeviceFactory`: connected devices
                             (``device("dev-1", protocol="mqtt")``; MQTT 5 with
                             ``mqtt_version=5``) and one-shot handshakes
                             (``device.run(...) -> DeviceResult``)
``fleet``          function  :class:`FleetRunner`: a bounded fleet run returning the
                             report dict
``edgesim_loop``   function  :class:`LoopThread`: the event loop thread the devices
                             and fleets of a test run on
``suite``          function  :class:`testkit.suites.fixture.SuiteRunner`: runs a
                             device test suite, or one case, against a device
                             command (``suite.run("tls", device_cmd=...)``)
=================  ========  ====================================================

This module lives in :mod:`testkit`, above :mod:`edge`, :mod:`devices` and :mod:`certs`:
it ties the edge and the device simulator together for test suites, and neither of
them imports it (``edge`` never imports ``devices``).

Threads: the edge runs on its own event loop thread (:class:`edge.server.ServerThread`);
devices and fleets run on a second loop thread (:class:`LoopThread`), so that both sync
and async tests can drive them: every handle has blocking methods, and an ``aio`` view
(or ``*_async`` methods) whose coroutines can be awaited from the test's own loop.
Reads of the edge's state (events, trust) run on the edge's loop, never across threads.
Every wait has a timeout; nothing sleeps.

Errors (foreign exceptions are translated at this boundary)::

    EdgesimPluginError           root: every error this plugin raises
    ├── UsageError               a fixture was called with a bad argument or option
    │                            (names the argument and what is allowed);
    │                            certs' IssueError, devices' FaultError and the fleet
    │                            planner's FleetError become it
    ├── EdgeStartError           the edge did not start (EdgeServerError,
    │                            EdgeConfigError translated)
    ├── TrustOperationError      the edge refused a trust change (edge.trust's TrustError)
    ├── DeviceFailure            a connected device's operation failed (DeviceError);
    │   │                        ``reason`` is the device's short reason word
    │   └── DeviceRefused        the edge did not accept a device's connection
    ├── FleetFailure             the fleet engine failed (FleetError)
    └── OperationTimeout         an operation did not finish in time (also a TimeoutError;
        │                        edge.trust's PropagationTimeout becomes it)
        └── EventTimeout         no edge event matched in time; lists the last events
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import re
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

if TYPE_CHECKING:
    from certs.authority import CertificateAuthority
    from devices.device import Action, ConnectedDevice, DeviceResult, DeviceSpec, Target
    from devices.fleet import ManifestEntry
    from devices.protocols import Ack, Message
    from edge.core.events import EventLog
    from edge.mqtt.properties import Properties
    from edge.server import EdgeServer, ServerThread
    from edge.trust.model import CrlInfo, SetInfo, VersionInfo
    from edge.trust.propagation import TrustService
    from edge.trust.servercerts import DeploymentInfo, ServerCertVersion
    from testkit.suites.fixture import SuiteRunner

__all__ = [
    "DEFECTS",
    "MQTT_PROTOCOLS",
    "PROTOCOLS",
    "AsyncDevice",
    "DeviceCredentials",
    "DeviceFactory",
    "DeviceFailure",
    "DeviceHandle",
    "DeviceRefused",
    "EdgeEvents",
    "EdgeFactory",
    "EdgeHandle",
    "EdgeOptions",
    "EdgeStartError",
    "EdgeTrust",
    "EdgesimPluginError",
    "EventTimeout",
    "FleetFailure",
    "FleetRunner",
    "LoopThread",
    "OperationTimeout",
    "Pki",
    "TrustOperationError",
    "UsageError",
    "event_matcher",
]

T = TypeVar("T")
Event = dict[str, Any]

#: Extra seconds a blocking call waits beyond an operation's own timeout, so that the
#: operation's own, more precise timeout error wins over the generic one.
_GRACE = 5.0
#: The largest fleet the ``fleet`` fixture runs: it is for CI suites, not load tests.
MAX_FLEET_DEVICES = 2000
_ID_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._@-]*")

#: Defects ``pki.device(id, fault=...)`` can issue, and the TLS alert the edge answers
#: each with (what ``DeviceResult.reason`` and the ``tls.refused`` event's ``alert`` say).
DEFECTS: Mapping[str, str] = {
    "expired": "certificate_expired",
    # OpenSSL maps X509_V_ERR_CERT_NOT_YET_VALID to bad_certificate, not to *_expired.
    "not-yet-valid": "bad_certificate",
    "wrong-ca": "unknown_ca",
    "no-client-auth": "unsupported_certificate",
    "revoked": "certificate_revoked",
}
#: Other spellings accepted for defects (the fleet's names).
_DEFECT_ALIASES: Mapping[str, str] = {"wrong-eku": "no-client-auth"}
#: Fleet fault names (devices.faults.KINDS) for the plugin's defect names.
_FLEET_KINDS: Mapping[str, str] = {
    "expired": "expired",
    "wrong-ca": "wrong-ca",
    "no-client-auth": "wrong-eku",
    "wrong-eku": "wrong-eku",
    "revoked": "revoked",
    "no-cert": "no-cert",
}

#: Device protocols, and the edge URL (an :class:`EdgeHandle` attribute) each one uses.
PROTOCOLS: Mapping[str, str] = {
    "mqtt": "mqtt_url",
    "https": "https_url",
    "wss": "wss_mqtt_url",
    "wss-mqtt": "wss_mqtt_url",
    "wss-json": "wss_json_url",
}


# --------------------------------------------------------------------------- errors


class EdgesimPluginError(Exception):
    """Root of every error the edgesim pytest plugin raises."""


class UsageError(EdgesimPluginError):
    """A fixture was called with a bad argument; the message names it and the choices."""


class EdgeStartError(EdgesimPluginError):
    """The edge could not start; the message says why and where."""


class TrustOperationError(EdgesimPluginError):
    """The edge refused a change to its certificate sets (the message is the edge's)."""


class DeviceFailure(EdgesimPluginError):
    """A device operation failed; ``reason`` is the device's short reason word."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class DeviceRefused(DeviceFailure):
    """The edge did not accept the device (``reason``: the alert or protocol refusal).

    ``ack`` is the protocol's refusing answer when there was one (``None`` for a TLS
    alert); under MQTT 5 its ``reason_code`` and ``reason_string`` say why.
    """

    def __init__(self, message: str, *, reason: str, ack: Ack | None = None) -> None:
        super().__init__(message, reason=reason)
        self.ack = ack

    @property
    def reason_code(self) -> int | None:
        """The MQTT 5 CONNACK reason code of the refusal (``None`` without one)."""
        return None if self.ack is None else self.ack.reason_code


class FleetFailure(EdgesimPluginError):
    """The fleet engine could not run the fleet."""


class OperationTimeout(EdgesimPluginError, TimeoutError):
    """An operation did not finish within its timeout."""


class EventTimeout(OperationTimeout):
    """No event of the edge matched within the timeout (the message lists recent ones)."""


# --------------------------------------------------------------------------- events


def event_matcher(
    predicate: Callable[[Event], bool] | None = None,
    *,
    kind: str | None = None,
    outcome: str | None = None,
    **fields: Any,
) -> Callable[[Event], bool]:
    """A predicate over edge events: ``predicate`` and every given filter must hold.

    ``kind`` matches exactly, or as a prefix when it ends in ``.`` (``"tls."``), as
    :meth:`edge.core.events.EventLog.query` does; ``fields`` must equal the event's.
    """

    def match(event: Event) -> bool:
        if kind is not None:
            got = str(event.get("kind", ""))
            if not (got == kind or (kind.endswith(".") and got.startswith(kind))):
                return False
        if outcome is not None and event.get("outcome") != outcome:
            return False
        if any(event.get(key) != value for key, value in fields.items()):
            return False
        return predicate is None or predicate(event)

    return match


def _describe_filters(
    predicate: Callable[[Event], bool] | None, kind: str | None, outcome: str | None, **fields: Any
) -> str:
    parts = [f"{k}={v!r}" for k, v in (("kind", kind), ("outcome", outcome)) if v is not None]
    parts += [f"{k}={v!r}" for k, v in fields.items()]
    if predicate is not None:
        parts.append(f"predicate {getattr(predicate, '__name__', repr(predicate))}")
    return ", ".join(parts) or "any event"


def _event_line(event: Event) -> str:
    extra = " ".join(
        f"{k}={event[k]!r}" for k in ("identity", "alert", "reason", "set") if event.get(k)
    )
    return f"#{event.get('id')} {event.get('kind')} {event.get('outcome')} {extra}".rstrip()


# --------------------------------------------------------------------------- loops


class LoopThread:
    """An asyncio event loop running in a daemon thread, driven from other threads.

    :meth:`run` blocks the caller until a coroutine finishes on the loop;
    :meth:`run_async` awaits it from another event loop. :meth:`close` cancels what
    is left, lets transports finish closing, and closes the loop.
    """

    def __init__(self, name: str = "edgesim-devices") -> None:
        # The stdlib loop: devices.tlsclient requires asyncio.Transport, which uvloop's
        # transports are not.
        self.loop = asyncio.new_event_loop()
        self._closed = False
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()
        if not self._ready.wait(30.0):
            raise EdgesimPluginError(f"the {name} loop thread did not start within 30 s")

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._ready.set)
        try:
            self.loop.run_forever()
            # Cancel leftovers and give their transports a turn to close their sockets.
            pending = asyncio.all_tasks(self.loop)
            for task in pending:
                task.cancel()
            if pending:
                self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.run_until_complete(self.loop.shutdown_default_executor())
        finally:
            self.loop.close()

    def _submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        if self._closed:
            coro.close()
            raise UsageError("this loop thread is closed (used after its test ended?)")
        if threading.current_thread() is self._thread:
            coro.close()
            raise UsageError(
                "a blocking edgesim call was made on the device loop itself; "
                "use the `aio` view or the *_async methods there"
            )
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float, what: str = "operation") -> T:
        """Run ``coro`` on the loop and wait up to ``timeout`` seconds for its result."""
        return _wait_future(self._submit(coro), timeout, what)

    async def run_async(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the loop and await its result from the caller's loop."""
        return await asyncio.wrap_future(self._submit(coro))

    def close(self, timeout: float = 30.0) -> None:
        """Stop the loop (cancelling what still runs) and join the thread; idempotent."""
        if self._closed:
            return
        self._closed = True
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout)


def _wait_future(fut: concurrent.futures.Future[T], timeout: float, what: str) -> T:
    """The future's result; on timeout, cancel the work and raise OperationTimeout."""
    try:
        return fut.result(timeout)
    except TimeoutError:
        if fut.done() and not fut.cancelled():
            raise  # the operation's own timeout error, already precise
        fut.cancel()
        raise OperationTimeout(f"{what} did not finish within {timeout:g} s") from None


def _on_loop(loop: asyncio.AbstractEventLoop, fn: Callable[[], T], timeout: float, what: str) -> T:
    """Call ``fn()`` on ``loop``'s thread (where the edge's state may be read safely)."""

    async def call() -> T:
        return fn()

    return _wait_future(asyncio.run_coroutine_threadsafe(call(), loop), timeout, what)


# --------------------------------------------------------------------------- PKI


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceCredentials:
    """A device's certificate material, as files and as PEM.

    ``chain_*`` holds the intermediates the device sends after its certificate
    (none for a ``wrong-ca`` device, whose rogue root issued it directly).
    ``expected`` is ``"accept"`` for a healthy device, else the alert the edge
    answers its defect with (see :data:`DEFECTS`).
    """

    id: str
    fault: str | None
    cert_path: Path
    key_path: Path
    chain_path: Path | None
    cert_pem: bytes
    key_pem: bytes
    chain_pem: bytes
    serial: int
    expected: str

    @property
    def fullchain_pem(self) -> bytes:
        """The certificate followed by its chain."""
        return self.cert_pem + self.chain_pem

    def spec(self, client_id: str | None = None) -> DeviceSpec:
        """The :class:`devices.device.DeviceSpec` of this device."""
        from devices.device import DeviceSpec

        return DeviceSpec(
            id=self.id,
            cert_pem=self.cert_pem,
            key_pem=self.key_pem,
            chain_pem=self.chain_pem or None,
            expect=self.expected,
            client_id=client_id,
        )


class Pki:
    """A test PKI in ``folder`` (made by :func:`certs.quickstart.quickstart`).

    Everything it issues is valid from ``now`` (defects are placed around it), so
    a test never depends on the clock beyond the moment the PKI was made.
    """

    def __init__(self, folder: Path, *, now: datetime) -> None:
        from certs.errors import CertsError
        from certs.quickstart import quickstart

        self.now = now if now.tzinfo is not None else now.replace(tzinfo=UTC)
        try:
            made = quickstart(Path(folder), devices=0, now=self.now)
        except CertsError as exc:
            raise UsageError(f"cannot create the test PKI in {folder}: {exc}") from exc
        self.dir = made.out
        #: The self-signed root: what devices trust for the edge's server certificate.
        self.root: CertificateAuthority = made.root
        #: The intermediate that issues devices (and signs their CRL).
        self.intermediate: CertificateAuthority = made.intermediate
        self.root_cert_path = made.root_cert
        self.intermediate_cert_path = made.intermediate_cert
        self.intermediate_key_path = made.intermediate_key
        self.ca_chain_path = made.ca_chain
        self.server_cert_path = made.server_cert
        self.server_key_path = made.server_key
        self._devices: dict[tuple[str, str | None], DeviceCredentials] = {}
        self._revoked: dict[int, datetime] = {}
        self._crl_number = 0
        self._rogue: CertificateAuthority | None = None
        self._fleet: list[ManifestEntry] = []

    @property
    def server_ca_pem(self) -> bytes:
        """The root that signed the edge's server certificate (what devices trust)."""
        return self.root.cert_pem

    @property
    def ca_chain_pem(self) -> bytes:
        """Intermediate then root: what the edge's certificate set ``default`` holds."""
        return self.ca_chain_path.read_bytes()

    @property
    def rogue_root(self) -> CertificateAuthority:
        """The root that issues ``wrong-ca`` devices: unknown to the edge until uploaded."""
        return self._rogue_root()

    @property
    def revoked_serials(self) -> tuple[int, ...]:
        """Serials of every revoked device issued so far (what :meth:`crl_pem` lists)."""
        return tuple(self._revoked)

    def device(self, device_id: str, fault: str | None = None) -> DeviceCredentials:
        """Issue (once; later calls return the same) device ``device_id`` with ``fault``.

        ``fault``: ``None`` for a healthy device, or one of :data:`DEFECTS`
        (``expired``, ``not-yet-valid``, ``wrong-ca``, ``no-client-auth``, ``revoked``).
        A revoked device is refused only once the edge has the CRL:
        ``edge.trust.add_crl(pki.crl_pem())``.
        """
        __tracebackhide__ = True
        if not isinstance(device_id, str) or not _ID_RE.fullmatch(device_id):
            raise UsageError(
                f"pki.device({device_id!r}): a device id is letters, digits and . _ @ -, "
                "starting with a letter, digit or _"
            )
        defect = _defect(fault, "pki.device(fault=...)")
        key = (device_id, defect)
        known = self._devices.get(key)
        if known is None:
            known = self._devices[key] = self._issue(device_id, defect)
        return known

    def _rogue_root(self) -> CertificateAuthority:
        if self._rogue is None:
            from certs.authority import CertificateAuthority

            # Same look as the real root, another key: a CA the edge has never seen.
            self._rogue = CertificateAuthority.create_root("edgesim Root CA", now=self.now)
        return self._rogue

    def _issue(self, device_id: str, fault: str | None) -> DeviceCredentials:
        from certs.errors import CertsError

        now, ca = self.now, self.intermediate
        try:
            if fault == "expired":
                issued = ca.issue_device(
                    device_id,
                    not_before=now - timedelta(days=30),
                    not_after=now - timedelta(days=1),
                )
            elif fault == "not-yet-valid":
                issued = ca.issue_device(
                    device_id,
                    not_before=now + timedelta(days=1),
                    not_after=now + timedelta(days=30),
                )
            elif fault == "wrong-ca":
                issued = self._rogue_root().issue_device(device_id, now=now)
            elif fault == "no-client-auth":
                issued = ca.issue_device(device_id, eku=("serverAuth",), now=now)
            else:
                issued = ca.issue_device(device_id, now=now)
        except CertsError as exc:
            raise UsageError(f"pki.device({device_id!r}, fault={fault!r}): {exc}") from exc
        if fault == "revoked":
            self._revoked[issued.cert.serial_number] = now
        folder = self.dir / "issued" / (fault or "healthy")
        folder.mkdir(parents=True, exist_ok=True)
        cert_path, key_path = folder / f"{device_id}.pem", folder / f"{device_id}.key"
        chain_path = folder / f"{device_id}.chain.pem" if issued.chain else None
        key_pem = issued.key_pem()
        cert_path.write_bytes(issued.cert_pem)
        key_path.write_bytes(key_pem)
        key_path.chmod(0o600)
        if chain_path is not None:
            chain_path.write_bytes(issued.chain_pem)
        return DeviceCredentials(
            id=device_id,
            fault=fault,
            cert_path=cert_path,
            key_path=key_path,
            chain_path=chain_path,
            cert_pem=issued.cert_pem,
            key_pem=key_pem,
            chain_pem=issued.chain_pem,
            serial=issued.cert.serial_number,
            expected=DEFECTS[fault] if fault else "accept",
        )

    def revoke_serials(self, serials: Sequence[int]) -> None:
        """Add serials of certificates the intermediate issued to the CRL."""
        for serial in serials:
            self._revoked.setdefault(serial, self.now)

    def crl_pem(self) -> bytes:
        """A CRL, signed by the intermediate, listing every revoked device so far.

        Each call numbers its CRL one higher, so a newer CRL replaces the older one
        at the edge.
        """
        from cryptography.hazmat.primitives.serialization import Encoding

        from certs.crl import build_crl

        self._crl_number += 1
        crl = build_crl(
            self.intermediate,
            [(serial, when, "keyCompromise") for serial, when in self._revoked.items()],
            crl_number=self._crl_number,
            # Issued a minute before `now`: an edge clock a little behind still accepts it.
            last_update=self.now - timedelta(minutes=1),
            days=30,
        )
        return crl.public_bytes(Encoding.PEM)

    def fleet_entries(self, count: int) -> list[ManifestEntry]:
        """``count`` distinct healthy fleet devices (``fleet-00000``...), issued in bulk once."""
        from certs.errors import CertsError
        from devices.fleet import load_manifest

        if count > len(self._fleet):
            folder = self.dir / f"fleet-{count}"
            try:
                manifest = self.intermediate.issue_devices_bulk(
                    folder, count=count, id_template="fleet-{i:05d}", now=self.now
                )
            except CertsError as exc:
                raise UsageError(f"cannot issue {count} fleet devices: {exc}") from exc
            self._fleet = load_manifest(manifest)
        return self._fleet[:count]


def _defect(fault: str | None, where: str) -> str | None:
    if fault is None:
        return None
    name = _DEFECT_ALIASES.get(fault, fault)
    if name not in DEFECTS:
        raise UsageError(f"{where}: unknown fault {fault!r}; choose one of {', '.join(DEFECTS)}")
    return name


# --------------------------------------------------------------------------- edge


@dataclass(frozen=True, slots=True, kw_only=True)
class EdgeOptions:
    """What an edge started by the plugin may vary (``edge_factory(**options)``).

    ``policy``: ``"default"`` (a device publishes under ``devices/<id>/#``), ``"open"``,
    or a policy table; ``identity_rule``: how a device is named (``cn``, ``san-uri``...);
    ``https``/``admin``: start those listeners; ``tls_min``: ``"1.2"`` or ``"1.3"``;
    ``propagation_delay``: seconds a trust change takes to reach the edge;
    ``capture_tls13_certificates``: name the certificate of a device refused over
    TLS 1.3 in its ``tls.refused`` event (on by default: tests want to know who was
    refused; see ``[tls] capture_tls13_certificates`` for what it costs);
    ``profile``: a cloud profile (``"aws-iot-core"``, ``"mosquitto"``, ``"emqx"``: the
    table in :mod:`edge.mqtt.profiles`) whose limits and reason codes the edge's MQTT
    broker applies; ``None`` takes ``--edgesim-profile`` from the pytest command line,
    and without it the edge follows the MQTT specification.
    """

    policy: str | Mapping[str, Any] = "default"
    identity_rule: str = "cn"
    https: bool = True
    admin: bool = True
    tls_min: str = "1.2"
    propagation_delay: float = 0.0
    capture_tls13_certificates: bool = True
    profile: str | None = None

    @classmethod
    def from_kwargs(cls, options: Mapping[str, Any], where: str) -> EdgeOptions:
        """Validate keyword options; a :class:`UsageError` names the bad one."""
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(options) - known)
        if unknown:
            raise UsageError(
                f"{where}: unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        return cls(**options)


class EdgeEvents:
    """Thread-safe reads of an edge's :class:`~edge.core.events.EventLog`."""

    def __init__(self, handle: EdgeHandle) -> None:
        self._handle = handle

    @property
    def log(self) -> EventLog:
        """The edge's EventLog itself: only for code running on the edge's loop."""
        return self._handle.server.events

    def query(self, **filters: Any) -> list[Event]:
        """:meth:`EventLog.query` (``kind``, ``outcome``, ``identity``, ``since``...)."""
        log = self._handle.server.events
        return self._handle.call_on_edge(lambda: log.query(**filters), "event query")

    def all(self) -> list[Event]:
        """Every event the edge still holds, oldest first."""
        return self.query()

    @property
    def last_id(self) -> int:
        """The id of the newest event (pass it as ``since=`` to wait for later ones)."""
        log = self._handle.server.events
        return self._handle.call_on_edge(lambda: int(log.last_id), "event id")

    def wait_for(
        self,
        predicate: Callable[[Event], bool] | None = None,
        /,
        *,
        kind: str | None = None,
        outcome: str | None = None,
        since: int = 0,
        timeout: float = 10.0,
        **fields: Any,
    ) -> Event:
        """Same as :meth:`EdgeHandle.wait_for_event`."""
        __tracebackhide__ = True
        return self._handle.wait_for_event(
            predicate, kind=kind, outcome=outcome, since=since, timeout=timeout, **fields
        )


class EdgeTrust:
    """The edge's certificate sets, changed synchronously from test code.

    Every change returns once it is *active* (propagated to the edge), so the next
    handshake already sees it. Refusals raise :class:`TrustOperationError`.
    """

    def __init__(self, handle: EdgeHandle, timeout: float = 30.0) -> None:
        self._handle = handle
        self._timeout = timeout

    @property
    def service(self) -> TrustService:
        """The edge's :class:`~edge.trust.propagation.TrustService` (edge loop only)."""
        service: TrustService = self._handle.server.trust
        return service

    def _change(self, make: Callable[[], Awaitable[T]], what: str) -> T:
        service = self.service
        timeout = self._timeout

        async def change() -> T:
            from edge.trust.errors import PropagationTimeout, TrustError

            try:
                result = await make()
                await service.wait_active(timeout=timeout)
            except PropagationTimeout as exc:
                raise OperationTimeout(f"{what}: {exc}") from exc
            except TrustError as exc:
                raise TrustOperationError(f"{what}: {exc}") from exc
            return result

        return self._handle.run_on_edge(change(), timeout + _GRACE, what)

    def upload(self, name: str, pem: bytes, *, activate: bool = True) -> VersionInfo:
        """Upload a new version of set ``name`` (a PEM root or chain), active by default."""
        return self._change(
            lambda: self.service.upload(name, pem, activate=activate, source=f"set {name}"),
            f"upload to set {name!r}",
        )

    def bind(self, name: str, host: str) -> str:
        """Bind ``host`` (``*``: every host without its own binding) to set ``name``."""
        return self._change(lambda: self.service.bind(name, host), f"bind {host!r} to {name!r}")

    def unbind(self, host: str) -> None:
        """Remove the binding of ``host``."""
        self._change(lambda: self.service.unbind(host), f"unbind {host!r}")

    def activate(self, name: str, version: int) -> VersionInfo:
        """Make ``version`` the active version of set ``name``."""
        return self._change(
            lambda: self.service.activate(name, version), f"activate {name!r} v{version}"
        )

    def rollback(self, name: str) -> VersionInfo:
        """Re-activate the previously active version of set ``name``."""
        return self._change(lambda: self.service.rollback(name), f"roll back {name!r}")

    def delete(self, name: str) -> None:
        """Delete set ``name`` with its versions, CRLs and bindings."""
        self._change(lambda: self.service.delete(name), f"delete set {name!r}")

    def set_options(self, name: str = "default", *, disconnect_on_revoke: bool) -> SetInfo:
        """Set a set's options (``disconnect_on_revoke``); returns once the change is active."""
        return self._change(
            lambda: self.service.set_options(name, disconnect_on_revoke=disconnect_on_revoke),
            f"set the options of set {name!r}",
        )

    def add_crl(self, pem: bytes, set_name: str = "default") -> CrlInfo:
        """Attach a CRL (``pki.crl_pem()``) to a set; its revoked devices are refused."""
        return self._change(
            lambda: self.service.add_crl(set_name, pem), f"add a CRL to set {set_name!r}"
        )

    def add_server_cert(
        self,
        name: str,
        hosts: Sequence[str],
        *,
        set_name: str | None = "default",
        days: int = 90,
        default: bool | None = None,
        **settings: Any,
    ) -> DeploymentInfo:
        """Issue a server certificate for ``hosts`` from the test PKI, upload and deploy it.

        ``set_name`` verifies devices on those hostnames (``None``: the hostname's
        binding); other deployment settings (``client_auth``, ``min_tls``,
        ``send_ca_names``, ``identity_rule``) pass through. Devices trust it
        through ``pki.server_ca_pem`` like the edge's own certificate. Returns
        once the deployment is active.
        """
        from certs.errors import CertsError

        try:
            issued = self._handle.pki.intermediate.issue_server(
                list(hosts), now=self._handle.pki.now, days=days
            )
        except CertsError as exc:
            raise UsageError(f"add_server_cert({name!r}): {exc}") from exc
        self.upload_server_cert(name, issued.fullchain_pem, issued.key_pem())
        return self.deploy_server_cert(name, set_name=set_name, default=default, **settings)

    def upload_server_cert(
        self, name: str, cert_pem: bytes, key_pem: bytes, *, passphrase: bytes | None = None
    ) -> ServerCertVersion:
        """Upload a server certificate (leaf then chain) and its key as a new, staged version."""
        return self._change(
            lambda: self.service.upload_server_cert(name, cert_pem, key_pem, passphrase=passphrase),
            f"upload server certificate {name!r}",
        )

    def deploy_server_cert(
        self,
        name: str,
        *,
        version: int | None = None,
        default: bool | None = None,
        **settings: Any,
    ) -> DeploymentInfo:
        """Deploy server certificate ``name`` with ``settings`` changed (``set_name=`` the set)."""
        if "set_name" in settings:
            settings["set"] = settings.pop("set_name")
        return self._change(
            lambda: self.service.deploy(name, settings, version=version, default=default),
            f"deploy server certificate {name!r}",
        )

    def rollback_server_cert(self, name: str) -> DeploymentInfo | None:
        """Re-activate the previous deployment of ``name`` (the first one: undeploy)."""
        return self._change(
            lambda: self.service.rollback_server_cert(name),
            f"roll back server certificate {name!r}",
        )

    def sets(self) -> list[SetInfo]:
        """Every certificate set."""
        return self._handle.run_on_edge(self.service.list_sets(), self._timeout, "list sets")

    def bindings(self) -> dict[str, str]:
        """The bindings, host -> set."""
        return self._handle.run_on_edge(self.service.bindings(), self._timeout, "bindings")

    def status(self) -> dict[str, Any]:
        """The trust service's status (sets, versions, propagation states)."""
        service = self.service
        return self._handle.call_on_edge(service.status, "trust status")


class EdgeHandle:
    """An edge running in a background thread, with its URLs, trust and events.

    URLs use ``127.0.0.1``, which the PKI's server certificate covers.
    """

    host = "127.0.0.1"

    def __init__(self, thread: ServerThread, pki: Pki, options: EdgeOptions) -> None:
        self.thread = thread
        self.pki = pki
        self.options = options
        self.trust = EdgeTrust(self)
        self.events = EdgeEvents(self)
        self._stopped = False

    @property
    def server(self) -> EdgeServer:
        """The :class:`~edge.server.EdgeServer` (its state belongs to the edge's loop)."""
        return self.thread.server

    @property
    def ports(self) -> dict[str, int]:
        """Bound ports by listener: ``mqtt``, ``https``, ``admin``."""
        return self.thread.ports

    def _port(self, kind: str, option: str) -> int:
        port = self.ports.get(kind)
        if port is None:
            raise UsageError(f"this edge has no {kind} listener (start it with {option})")
        return port

    @property
    def mqtt_url(self) -> str:
        """``mqtts://127.0.0.1:PORT``."""
        return f"mqtts://{self.host}:{self._port('mqtt', 'the default options')}"

    @property
    def https_url(self) -> str:
        """``https://127.0.0.1:PORT`` (the device HTTP API)."""
        return f"https://{self.host}:{self._port('https', 'https=True')}"

    @property
    def wss_mqtt_url(self) -> str:
        """``wss://127.0.0.1:PORT/mqtt``: MQTT over WebSocket."""
        return f"wss://{self.host}:{self._port('https', 'https=True')}/mqtt"

    @property
    def wss_json_url(self) -> str:
        """``wss://127.0.0.1:PORT/ws``: the edge's JSON WebSocket protocol."""
        return f"wss://{self.host}:{self._port('https', 'https=True')}/ws"

    @property
    def admin_url(self) -> str:
        """``http://127.0.0.1:PORT``: the admin API (bearer :attr:`admin_token`)."""
        return f"http://{self.host}:{self._port('admin', 'admin=True')}"

    @property
    def admin_token(self) -> str | None:
        """The admin API's bearer token."""
        return self.server.admin_token

    def url(self, protocol: str) -> str:
        """The URL a device speaking ``protocol`` (see :data:`PROTOCOLS`) connects to."""
        attr = PROTOCOLS.get(protocol)
        if attr is None:
            raise UsageError(f"protocol {protocol!r}: choose one of {', '.join(PROTOCOLS)}")
        url: str = getattr(self, attr)
        return url

    def target(self, protocol: str) -> Target:
        """A :class:`devices.device.Target` for ``protocol``, trusting the PKI's root."""
        from devices.device import Target

        return Target(url=self.url(protocol), ca_pem=self.pki.server_ca_pem.decode("ascii"))

    # -- running code on the edge's loop ------------------------------------------

    def _edge_loop(self) -> asyncio.AbstractEventLoop:
        loop = self.thread.loop
        if self._stopped or loop.is_closed():
            raise UsageError("this edge is stopped")
        return loop

    def run_on_edge(self, coro: Coroutine[Any, Any, T], timeout: float, what: str) -> T:
        """Run ``coro`` on the edge's loop and wait for its result."""
        try:
            loop = self._edge_loop()
        except UsageError:
            coro.close()
            raise
        return _wait_future(asyncio.run_coroutine_threadsafe(coro, loop), timeout, what)

    def call_on_edge(self, fn: Callable[[], T], what: str, timeout: float = 10.0) -> T:
        """Call ``fn()`` on the edge's loop (where its state may be read) and return it."""
        return _on_loop(self._edge_loop(), fn, timeout, what)

    async def _wait_event(
        self, match: Callable[[Event], bool], since: int, timeout: float, wanted: str
    ) -> Event:
        log = self.server.events
        try:
            event: Event = await log.wait_for(match, timeout=timeout, since=since)
        except TimeoutError:
            recent = "; ".join(_event_line(e) for e in log.query(since=since, limit=8))
            raise EventTimeout(
                f"no edge event with {wanted} within {timeout:g} s; last events: {recent or 'none'}"
            ) from None
        return event

    def wait_for_event(
        self,
        predicate: Callable[[Event], bool] | None = None,
        /,
        *,
        kind: str | None = None,
        outcome: str | None = None,
        since: int = 0,
        timeout: float = 10.0,
        **fields: Any,
    ) -> Event:
        """Wait for an event matching ``predicate`` and every filter; return it.

        Filters are as :func:`event_matcher`'s (``kind="tls.refused"``,
        ``alert="certificate_expired"``...). ``since`` (an event id) skips older
        events; by default events that already happened count, so there is no race.
        Raises :class:`EventTimeout`, listing the last events, after ``timeout`` s.
        """
        __tracebackhide__ = True
        match = event_matcher(predicate, kind=kind, outcome=outcome, **fields)
        wanted = _describe_filters(predicate, kind, outcome, **fields)
        return self.run_on_edge(
            self._wait_event(match, since, timeout, wanted), timeout + _GRACE, "event wait"
        )

    async def wait_for_event_async(
        self,
        predicate: Callable[[Event], bool] | None = None,
        /,
        *,
        kind: str | None = None,
        outcome: str | None = None,
        since: int = 0,
        timeout: float = 10.0,
        **fields: Any,
    ) -> Event:
        """:meth:`wait_for_event` for async tests (awaitable from any event loop)."""
        match = event_matcher(predicate, kind=kind, outcome=outcome, **fields)
        wanted = _describe_filters(predicate, kind, outcome, **fields)
        loop = self._edge_loop()
        fut = asyncio.run_coroutine_threadsafe(
            self._wait_event(match, since, timeout, wanted), loop
        )
        return await asyncio.wrap_future(fut)

    @property
    def stopped(self) -> bool:
        """Whether :meth:`stop` ran."""
        return self._stopped

    def stop(self, timeout: float = 30.0) -> None:
        """Close the edge and join its thread; idempotent."""
        if not self._stopped:
            self._stopped = True
            self.thread.stop(timeout)


class EdgeFactory:
    """Starts edges trusting ``pki`` on free loopback ports; :meth:`close` stops them all."""

    def __init__(
        self, pki: Pki, make_dir: Callable[[], Path], *, default_profile: str | None = None
    ) -> None:
        self.pki = pki
        self._make_dir = make_dir
        #: The profile of edges whose options name none (``--edgesim-profile``).
        self.default_profile = default_profile
        self.edges: list[EdgeHandle] = []

    def __call__(self, **options: Any) -> EdgeHandle:
        """Start an edge with :class:`EdgeOptions` ``options``; returns once it listens."""
        __tracebackhide__ = True
        return self.start(EdgeOptions.from_kwargs(options, "edge_factory()"))

    def start(self, options: EdgeOptions) -> EdgeHandle:
        """Start an edge with ``options``."""
        __tracebackhide__ = True
        from edge.config import (
            EdgeConfig,
            EdgeConfigError,
            HostPort,
            IdentityConfig,
            ListenersConfig,
            TlsConfig,
            TrustConfig,
        )
        from edge.identity import parse_rule
        from edge.mqtt.broker import MqttConfig
        from edge.mqtt.errors import MqttConfigError
        from edge.mqtt.profiles import apply_profile
        from edge.server import EdgeServer, EdgeServerError
        from edge.tls.contexts import parse_tls_version

        if options.policy not in ("open", "default") and not isinstance(options.policy, Mapping):
            raise UsageError(
                f"edge option policy={options.policy!r}: expected 'open', 'default' or a table"
            )
        try:
            rule = parse_rule(options.identity_rule)
            tls_min = parse_tls_version(options.tls_min)
        except (ValueError, EdgeConfigError) as exc:
            raise UsageError(f"edge options: {exc}") from None
        if options.propagation_delay < 0:
            raise UsageError("edge option propagation_delay: must be >= 0 seconds")
        profile = options.profile if options.profile is not None else self.default_profile
        mqtt = MqttConfig()
        if profile is not None:
            try:
                mqtt = apply_profile(mqtt, profile)
            except MqttConfigError as exc:
                raise UsageError(f"edge option profile: {exc}") from None
        folder = self._make_dir()
        any_port = HostPort(host=EdgeHandle.host, port=0)
        config = EdgeConfig(
            state_dir=folder / "state",
            listeners=ListenersConfig(
                mqtt=any_port,
                https=any_port if options.https else None,
                admin=any_port if options.admin else None,
            ),
            tls=TlsConfig(
                minimum_version=tls_min,
                capture_tls13_certificates=options.capture_tls13_certificates,
            ),
            identity=IdentityConfig(rule=rule),
            # A fresh store is seeded from pki_dir's ca-chain.pem: set `default` bound to `*`.
            trust=TrustConfig(
                store=folder / "trust.db",
                propagation_delay=options.propagation_delay,
                # Changes go through this edge's own trust service: nothing to poll for.
                watch_interval=None,
            ),
            pki_dir=self.pki.dir,
            policy=options.policy,
            mqtt=mqtt,
        )
        try:
            thread = EdgeServer.run_in_thread(config, timeout=30.0)
        except (EdgeServerError, EdgeConfigError, OSError) as exc:
            raise EdgeStartError(f"the edge did not start: {exc}") from exc
        handle = EdgeHandle(thread, self.pki, options)
        self.edges.append(handle)
        return handle

    def close(self) -> None:
        """Stop every edge this factory started (newest first)."""
        while self.edges:
            self.edges.pop().stop()


def _tls_version_name(value: str) -> str:
    """Normalise ``"1.3"``/``"TLSv1.3"`` to ``"1.3"`` (the fleet's ``tls_max``)."""
    return value.strip().lower().removeprefix("tlsv").removeprefix("tls")


# --------------------------------------------------------------------------- devices


class DeviceHandle:
    """A device connected to the edge (TLS and the protocol's acknowledgement done).

    Blocking methods for sync tests; :attr:`aio` has the same as coroutines for async
    tests. ``timeout`` defaults to the one the device was connected with.
    """

    def __init__(
        self,
        credentials: DeviceCredentials,
        protocol: str,
        url: str,
        held: ConnectedDevice,
        stack: contextlib.AsyncExitStack,
        loop: LoopThread,
        timeout: float,
        mqtt_version: str = "3.1.1",
    ) -> None:
        self.credentials = credentials
        self.protocol = protocol
        #: ``"3.1.1"`` or ``"5"`` for MQTT devices.
        self.mqtt_version = mqtt_version
        self.url = url
        self._held = held
        self._stack = stack
        self._loop = loop
        self.timeout = timeout
        self.closed = False
        self.aio = AsyncDevice(self)

    @property
    def id(self) -> str:
        """The device id (the certificate's CN)."""
        return self.credentials.id

    @property
    def connack(self) -> Ack | None:
        """The protocol's acknowledgement of the connection (MQTT: the CONNACK).

        Under MQTT 5 its ``reason_code`` and ``properties`` are the edge's (Receive
        Maximum, Topic Alias Maximum, Assigned Client Identifier...).
        """
        return self._held.ack

    # The *_op methods build the coroutines both views run on the device loop; the
    # request itself is created there, so nothing is left un-awaited if it is closed.

    async def _op(self, make: Callable[[], Awaitable[T]], timeout: float, what: str) -> T:
        from devices.tlsclient import DeviceError

        if self.closed:
            raise UsageError(f"device {self.id}: {what} after close()")
        try:
            async with asyncio.timeout(timeout):
                return await make()
        except TimeoutError:
            raise OperationTimeout(
                f"device {self.id} ({self.protocol}): {what} did not finish within {timeout:g} s"
            ) from None
        except DeviceError as exc:
            raise DeviceFailure(
                f"device {self.id} ({self.protocol}): {what} failed: {exc}", reason=exc.reason
            ) from exc

    def _publish_op(
        self,
        topic: str,
        payload: bytes | str,
        qos: int,
        retain: bool,
        timeout: float,
        properties: Properties | None = None,
    ) -> Coroutine[Any, Any, Ack]:
        data = payload.encode("utf-8") if isinstance(payload, str) else payload
        held = self._held
        return self._op(
            lambda: held.publish(topic, data, qos, retain, properties), timeout, f"publish {topic}"
        )

    def _subscribe_op(
        self, topic_filter: str, qos: int, timeout: float
    ) -> Coroutine[Any, Any, Ack]:
        held = self._held
        return self._op(
            lambda: held.subscribe(topic_filter, qos), timeout, f"subscribe {topic_filter}"
        )

    def _unsubscribe_op(self, topic_filter: str, timeout: float) -> Coroutine[Any, Any, Ack]:
        held = self._held
        return self._op(
            lambda: held.unsubscribe(topic_filter), timeout, f"unsubscribe {topic_filter}"
        )

    def _receive_op(self, timeout: float) -> Coroutine[Any, Any, Message]:
        return self._op(self._held.next_message, timeout, "receive")

    async def _close_op(self) -> None:
        if not self.closed:
            self.closed = True
            await self._stack.aclose()

    def publish(
        self,
        topic: str,
        payload: bytes | str,
        *,
        qos: int = 0,
        retain: bool = False,
        timeout: float | None = None,
        properties: Properties | None = None,
    ) -> Ack:
        """Publish (a ``str`` payload is sent as UTF-8); returns the edge's answer.

        Over MQTT 3.1.1 a denied publish is still acknowledged (3.1.1 has no negative
        PUBACK): the edge's ``policy.denied`` event says it; HTTP answers 403. Under
        MQTT 5 (``mqtt_version=5``) the answer carries ``reason_code`` (0x87 when
        denied) and ``properties`` (the Reason String); ``properties`` here are the
        PUBLISH properties to send (content type, user properties, ...).
        """
        __tracebackhide__ = True
        t = timeout or self.timeout
        return self._loop.run(
            self._publish_op(topic, payload, qos, retain, t, properties), t + _GRACE, "publish"
        )

    def subscribe(self, topic_filter: str, *, qos: int = 0, timeout: float | None = None) -> Ack:
        """Subscribe; returns the edge's answer (``ack.ok`` false when denied)."""
        __tracebackhide__ = True
        t = timeout or self.timeout
        return self._loop.run(self._subscribe_op(topic_filter, qos, t), t + _GRACE, "subscribe")

    def unsubscribe(self, topic_filter: str, *, timeout: float | None = None) -> Ack:
        """Unsubscribe (MQTT); under MQTT 5 the answer carries the UNSUBACK reason code."""
        __tracebackhide__ = True
        t = timeout or self.timeout
        return self._loop.run(self._unsubscribe_op(topic_filter, t), t + _GRACE, "unsubscribe")

    def receive(self, timeout: float | None = None) -> Message:
        """The next message delivered to the device (:class:`OperationTimeout` if none).

        Under MQTT 5 ``message.properties`` holds the PUBLISH properties.
        """
        __tracebackhide__ = True
        t = timeout or self.timeout
        return self._loop.run(self._receive_op(t), t + _GRACE, "receive")

    def close(self) -> None:
        """Disconnect politely; idempotent."""
        if not self.closed:
            self._loop.run(self._close_op(), self.timeout + _GRACE, "close")

    def __enter__(self) -> DeviceHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncDevice:
    """The coroutine view of a :class:`DeviceHandle`, awaitable from any event loop."""

    def __init__(self, handle: DeviceHandle) -> None:
        self._h = handle

    async def publish(
        self,
        topic: str,
        payload: bytes | str,
        *,
        qos: int = 0,
        retain: bool = False,
        timeout: float | None = None,
        properties: Properties | None = None,
    ) -> Ack:
        """See :meth:`DeviceHandle.publish`."""
        h = self._h
        return await h._loop.run_async(
            h._publish_op(topic, payload, qos, retain, timeout or h.timeout, properties)
        )

    async def subscribe(
        self, topic_filter: str, *, qos: int = 0, timeout: float | None = None
    ) -> Ack:
        """See :meth:`DeviceHandle.subscribe`."""
        h = self._h
        return await h._loop.run_async(h._subscribe_op(topic_filter, qos, timeout or h.timeout))

    async def unsubscribe(self, topic_filter: str, *, timeout: float | None = None) -> Ack:
        """See :meth:`DeviceHandle.unsubscribe`."""
        h = self._h
        return await h._loop.run_async(h._unsubscribe_op(topic_filter, timeout or h.timeout))

    async def receive(self, timeout: float | None = None) -> Message:
        """See :meth:`DeviceHandle.receive`."""
        h = self._h
        return await h._loop.run_async(h._receive_op(timeout or h.timeout))

    async def close(self) -> None:
        """See :meth:`DeviceHandle.close`."""
        h = self._h
        if not h.closed:
            await h._loop.run_async(h._close_op())


class DeviceFactory:
    """The ``device`` fixture: connected devices and one-shot handshakes.

    ``device_id`` is a device id (issued by the ``pki`` on first use, with
    ``fault``) or :class:`DeviceCredentials`. ``edge`` defaults to the test's
    ``edge`` fixture. Devices still connected at the end of the test are closed.
    ``mqtt_version`` (``"3.1.1"``, the default, or ``5``) is the MQTT version of an
    ``mqtt``/``wss`` device: under MQTT 5 acknowledgements carry reason codes and
    properties, and messages their PUBLISH properties.
    """

    def __init__(self, pki: Pki, loop: LoopThread, default_edge: Callable[[], EdgeHandle]) -> None:
        self.pki = pki
        self.loop = loop
        self._default_edge = default_edge
        self.handles: list[DeviceHandle] = []

    def _resolve(
        self,
        device_id: str | DeviceCredentials,
        protocol: str,
        fault: str | None,
        edge: EdgeHandle | None,
        mqtt_version: str | int = "3.1.1",
    ) -> tuple[DeviceCredentials, EdgeHandle, Target]:
        if isinstance(device_id, DeviceCredentials):
            if fault is not None:
                raise UsageError("device(): give fault= with a device id, not with credentials")
            creds = device_id
        else:
            creds = self.pki.device(device_id, fault)
        if protocol not in PROTOCOLS:
            raise UsageError(f"device(protocol={protocol!r}): choose one of {', '.join(PROTOCOLS)}")
        level = _mqtt_level(mqtt_version, protocol)
        where = edge if edge is not None else self._default_edge()
        target = where.target(protocol)
        if level == 5:
            from dataclasses import replace

            from devices.protocols.mqtt import MqttOptions

            target = replace(target, mqtt=MqttOptions(version=5))
        return creds, where, target

    async def _connect(
        self,
        creds: DeviceCredentials,
        protocol: str,
        target: Target,
        timeout: float,
        client_id: str | None,
    ) -> DeviceHandle:
        from devices.device import connected_device, context_for
        from devices.protocols import Refused
        from devices.tlsclient import DeviceError

        spec = creds.spec(client_id)
        stack = contextlib.AsyncExitStack()
        try:
            # Uncached: the module-wide context cache would outlive the test.
            context = context_for(spec, target, cache=False)
            held = await stack.enter_async_context(
                connected_device(spec, target, timeout=timeout, context=context)
            )
        except DeviceError as exc:
            await stack.aclose()
            raise DeviceRefused(
                f"device {creds.id} was not accepted over {protocol} ({target.url}): {exc} "
                f"[reason {exc.reason}]; use device.run(...) to see every step",
                reason=exc.reason,
                ack=exc.ack if isinstance(exc, Refused) else None,
            ) from None
        version = "5" if target.mqtt is not None and target.mqtt.version == 5 else "3.1.1"
        return DeviceHandle(creds, protocol, target.url, held, stack, self.loop, timeout, version)

    def __call__(
        self,
        device_id: str | DeviceCredentials,
        protocol: str = "mqtt",
        *,
        fault: str | None = None,
        edge: EdgeHandle | None = None,
        timeout: float = 10.0,
        client_id: str | None = None,
        mqtt_version: str | int = "3.1.1",
    ) -> DeviceHandle:
        """Connect a device and return its handle; :class:`DeviceRefused` if refused."""
        __tracebackhide__ = True
        creds, _edge, target = self._resolve(device_id, protocol, fault, edge, mqtt_version)
        handle = self.loop.run(
            self._connect(creds, protocol, target, timeout, client_id), timeout + _GRACE, "connect"
        )
        self.handles.append(handle)
        return handle

    async def connect_async(
        self,
        device_id: str | DeviceCredentials,
        protocol: str = "mqtt",
        *,
        fault: str | None = None,
        edge: EdgeHandle | None = None,
        timeout: float = 10.0,
        client_id: str | None = None,
        mqtt_version: str | int = "3.1.1",
    ) -> DeviceHandle:
        """:meth:`__call__` for async tests."""
        creds, _edge, target = self._resolve(device_id, protocol, fault, edge, mqtt_version)
        handle = await self.loop.run_async(
            self._connect(creds, protocol, target, timeout, client_id)
        )
        self.handles.append(handle)
        return handle

    def _run_coro(
        self,
        device_id: str | DeviceCredentials,
        protocol: str,
        fault: str | None,
        edge: EdgeHandle | None,
        actions: Sequence[Action],
        timeout: float,
        mqtt_version: str | int = "3.1.1",
    ) -> Coroutine[Any, Any, DeviceResult]:
        from devices.device import run_device

        creds, _edge, target = self._resolve(device_id, protocol, fault, edge, mqtt_version)
        return run_device(creds.spec(), target, actions=actions, timeout=timeout)

    def run(
        self,
        device_id: str | DeviceCredentials,
        protocol: str = "mqtt",
        *,
        fault: str | None = None,
        edge: EdgeHandle | None = None,
        actions: Sequence[Action] = (),
        timeout: float = 10.0,
        mqtt_version: str | int = "3.1.1",
    ) -> DeviceResult:
        """Run one device's whole handshake (and ``actions``); return its trace.

        Never raises for a refused device: the :class:`devices.device.DeviceResult`
        says ``outcome`` (``connected``, ``refused``, ``error``), ``reason`` (the
        alert, e.g. ``certificate_expired``; under MQTT 5 a refusal's code, e.g.
        ``connack-0x87`` or ``puback-0x87``) and the timed ``steps``.
        """
        __tracebackhide__ = True
        coro = self._run_coro(device_id, protocol, fault, edge, actions, timeout, mqtt_version)
        return self.loop.run(coro, timeout + _GRACE, "device run")

    async def run_async(
        self,
        device_id: str | DeviceCredentials,
        protocol: str = "mqtt",
        *,
        fault: str | None = None,
        edge: EdgeHandle | None = None,
        actions: Sequence[Action] = (),
        timeout: float = 10.0,
        mqtt_version: str | int = "3.1.1",
    ) -> DeviceResult:
        """:meth:`run` for async tests."""
        coro = self._run_coro(device_id, protocol, fault, edge, actions, timeout, mqtt_version)
        return await self.loop.run_async(coro)

    def close(self) -> None:
        """Close every device still connected."""
        while self.handles:
            handle = self.handles.pop()
            with contextlib.suppress(EdgesimPluginError):
                handle.close()


#: The protocols whose devices speak MQTT (and so may speak MQTT 5).
MQTT_PROTOCOLS = ("mqtt", "wss", "wss-mqtt")


def _mqtt_level(mqtt_version: str | int, protocol: str) -> int:
    """4 or 5 for ``mqtt_version``; :class:`UsageError` naming the choices otherwise."""
    from devices.protocols.mqtt import parse_mqtt_version

    try:
        level = parse_mqtt_version(mqtt_version)
    except ValueError:
        raise UsageError(f"device(mqtt_version={mqtt_version!r}): choose 3.1.1 or 5") from None
    if level == 5 and protocol not in MQTT_PROTOCOLS:
        raise UsageError(
            f"device(protocol={protocol!r}, mqtt_version=5): MQTT 5 needs an MQTT protocol "
            f"({', '.join(MQTT_PROTOCOLS)})"
        )
    return level


# --------------------------------------------------------------------------- fleets


@dataclass(slots=True)
class FleetRunner:
    """The ``fleet`` fixture: run a bounded fleet against an edge, return its report.

    See :meth:`__call__`; reports are :meth:`devices.report.FleetReport.to_json`
    documents (``ok``, ``devices``, ``outcomes``, ``fidelity``, ``latency``...).
    """

    pki: Pki
    loop: LoopThread
    default_edge: Callable[[], EdgeHandle]
    work_dir: Callable[[], Path]
    reports: list[dict[str, Any]] = field(default_factory=list)

    def __call__(
        self,
        devices: int = 50,
        protocol: str = "mix",
        faults: Mapping[str, int] | None = None,
        ramp: float = 200.0,
        timeout: float = 60.0,
        *,
        edge: EdgeHandle | None = None,
        seed: int = 0,
        device_timeout: float = 10.0,
        probe_message: bool = False,
        tls_max: str | None = None,
        mqtt_version: str | int = "3.1.1",
    ) -> dict[str, Any]:
        """Run ``devices`` devices arriving at ``ramp`` per second; return the report.

        ``mqtt_version`` (``"3.1.1"``, ``5`` or ``"mix"``) is that of the MQTT devices;
        the report's ``reason_codes`` counts their CONNACK (and refusal) codes.

        ``protocol``: ``mix`` (spread over MQTT, HTTPS and both WebSocket endpoints),
        ``mqtt``, ``https`` or ``wss``. ``faults`` maps a fault kind (``expired``,
        ``wrong-ca``, ``no-client-auth``/``wrong-eku``, ``revoked``, ``no-cert``) to a
        device count; revoked devices' CRL is given to the edge before the run. The
        run stops by itself: each device within ``device_timeout``, the whole fleet
        within ``timeout`` seconds (:class:`OperationTimeout` otherwise).
        """
        __tracebackhide__ = True
        from devices.faults import FaultError, FaultMaker, FaultShare, select_faults
        from devices.fleet import FleetError, FleetJob, RunnerSettings, plan_fleet, run_job_async
        from devices.fleet import Shard as FleetShard
        from devices.fleet import pick_urls as fleet_urls

        if not 1 <= devices <= MAX_FLEET_DEVICES:
            raise UsageError(f"fleet(devices={devices}): between 1 and {MAX_FLEET_DEVICES}")
        if ramp <= 0 or timeout <= 0 or device_timeout <= 0:
            raise UsageError("fleet(): ramp, timeout and device_timeout must be positive")
        if protocol not in ("mix", "mqtt", "https", "wss"):
            raise UsageError(f"fleet(protocol={protocol!r}): choose mix, mqtt, https or wss")
        version = str(mqtt_version)
        version = {"4": "3.1.1", "5.0": "5"}.get(version, version)
        if version not in ("3.1.1", "5", "mix"):
            raise UsageError(f"fleet(mqtt_version={mqtt_version!r}): choose 3.1.1, 5 or mix")
        shares = []
        for name, count in (faults or {}).items():
            kind = _FLEET_KINDS.get(name)
            if kind is None:
                raise UsageError(
                    f"fleet(faults={{{name!r}: ...}}): unknown fault; choose one of "
                    f"{', '.join(_FLEET_KINDS)}"
                )
            if not isinstance(count, int) or count < 0:
                raise UsageError(f"fleet(faults={{{name!r}: {count!r}}}): a count >= 0")
            shares.append(FaultShare(kind, count=count))
        where = edge if edge is not None else self.default_edge()
        urls = [where.mqtt_url]
        if "https" in where.ports:
            urls += [where.https_url, where.wss_mqtt_url, where.wss_json_url]
        work = self.work_dir()
        try:
            chosen = fleet_urls(urls, protocol)
            plan = select_faults(shares, devices, seed)
            maker = FaultMaker(
                ca_cert=self.pki.intermediate_cert_path,
                ca_key=self.pki.intermediate_key_path,
                out_dir=work / "faults",
                now=self.pki.now,
            )
            planned = plan_fleet(
                self.pki.fleet_entries(devices),
                devices=devices,
                urls=chosen,
                ramp=ramp,
                faults=plan,
                shard=FleetShard(),
                maker=maker,
            )
        except (FaultError, FleetError) as exc:
            raise UsageError(f"fleet(): {exc}") from exc
        if maker.revoked_serials:
            self.pki.revoke_serials(maker.revoked_serials)
            where.trust.add_crl(self.pki.crl_pem())
        settings = RunnerSettings(
            ca=self.pki.root_cert_path,
            device_timeout=device_timeout,
            probe_message=probe_message,
            tls_max=_tls_version_name(tls_max) if tls_max else None,
            mqtt_version=version,
        )
        job = FleetJob(
            devices=tuple(planned),
            fleet_size=devices,
            settings=settings,
            lead=0.05,
            started_iso=self.pki.now.isoformat(timespec="seconds").replace("+00:00", "Z"),
        )

        async def run() -> dict[str, Any]:
            try:
                report = await run_job_async(job)
            except FleetError as exc:
                raise FleetFailure(f"fleet: {exc}") from exc
            return report.to_json()

        doc = self.loop.run(run(), timeout, f"fleet of {devices} devices")
        self.reports.append(doc)
        return doc


# --------------------------------------------------------------------------- fixtures


def pytest_addoption(parser: pytest.Parser) -> None:
    """``--edgesim-profile NAME``: the cloud profile of every edge that names none."""
    from edge.mqtt.profiles import PROFILES

    parser.getgroup("edgesim").addoption(
        "--edgesim-profile",
        dest="edgesim_profile",
        choices=sorted(PROFILES),
        default=None,
        help="start the plugin's edges with this cloud profile (MQTT limits and reason "
        "codes of the production broker; edge.mqtt.profiles has the table)",
    )


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``edgesim`` marker."""
    config.addinivalue_line(
        "markers",
        "edgesim(**options): options of the `edge` fixture's edge "
        "(policy, identity_rule, https, admin, tls_min, propagation_delay, profile, "
        "capture_tls13_certificates)",
    )


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A session-wide test PKI that issues healthy and defective devices."""
    # The one clock read of the plugin: every certificate is placed around it.
    return Pki(tmp_path_factory.mktemp("edgesim-pki") / "pki", now=datetime.now(UTC))


@pytest.fixture
def edge_factory(
    request: pytest.FixtureRequest, pki: Pki, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EdgeFactory]:
    """Start edges with options (``edge_factory(policy="open")``); all stopped at teardown."""
    factory = EdgeFactory(
        pki,
        lambda: tmp_path_factory.mktemp("edgesim-edge"),
        default_profile=request.config.getoption("edgesim_profile"),
    )
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture
def edge(request: pytest.FixtureRequest, edge_factory: EdgeFactory) -> EdgeHandle:
    """An edge trusting ``pki``; options from ``@pytest.mark.edgesim(...)``."""
    marker = request.node.get_closest_marker("edgesim")
    if marker is not None and marker.args:
        raise UsageError("@pytest.mark.edgesim takes keyword options only, e.g. policy='open'")
    options = dict(marker.kwargs) if marker is not None else {}
    # Stopped by edge_factory's teardown, which runs after the device fixtures' own.
    return edge_factory.start(EdgeOptions.from_kwargs(options, "@pytest.mark.edgesim"))


@pytest.fixture
def edgesim_loop() -> Iterator[LoopThread]:
    """The event loop thread this test's devices and fleets run on."""
    loop = LoopThread()
    try:
        yield loop
    finally:
        loop.close()


@pytest.fixture
def device(
    request: pytest.FixtureRequest, pki: Pki, edgesim_loop: LoopThread, edge_factory: EdgeFactory
) -> Iterator[DeviceFactory]:
    """Connected devices (``device("dev-1", protocol="wss")``) and handshakes (``.run``)."""

    def default_edge() -> EdgeHandle:
        handle: EdgeHandle = request.getfixturevalue("edge")
        return handle

    factory = DeviceFactory(pki, edgesim_loop, default_edge)
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture
def fleet(
    request: pytest.FixtureRequest,
    pki: Pki,
    edgesim_loop: LoopThread,
    edge_factory: EdgeFactory,
    tmp_path_factory: pytest.TempPathFactory,
) -> FleetRunner:
    """A bounded fleet runner: ``fleet(devices=50, faults={"expired": 2}) -> report``."""

    def default_edge() -> EdgeHandle:
        handle: EdgeHandle = request.getfixturevalue("edge")
        return handle

    return FleetRunner(
        pki, edgesim_loop, default_edge, lambda: tmp_path_factory.mktemp("edgesim-fleet")
    )


@pytest.fixture
def suite(tmp_path_factory: pytest.TempPathFactory) -> SuiteRunner:
    """A :class:`~testkit.suites.fixture.SuiteRunner` with a fresh working directory."""
    from testkit.suites.fixture import SuiteRunner as _Runner

    return _Runner(tmp_path_factory.mktemp("suite"))
