"""The bus between edge workers and nodes on core NATS (:class:`NatsBus`).

Each worker routes its own devices' publishes locally, then :meth:`NatsBus.forward`
sends each one once to NATS; the other workers deliver it to their subscribers. What
travels where:

``edgesim.m.<subject>``
    every publish. ``<subject>`` is the topic mapped the way nats-server's MQTT layer
    maps it (:func:`topic_subject`): ``/`` -> ``.``, ``.`` -> ``//``, an empty level
    -> ``/``. A worker subscribes only to the filters its devices hold
    (:func:`filter_subjects`: ``+`` -> ``*``, ``#`` -> ``>`` plus the parent level),
    reference-counted, so a message crosses to a worker only when it has interest.
    NATS sends one copy per matching subscription: copies are dropped by
    (origin worker, sequence). MQTT 5 shared subscriptions (``$share/g/f``) are NATS
    queue subscriptions on the same subjects, one queue per (group, filter), so one
    member in the whole cluster takes each message.
``edgesim.u``
    publishes whose topic cannot be a NATS subject (white space, a level that is
    exactly ``*`` or ``>``). Every worker listens; its router decides.
``edgesim.r``
    retained publishes (also sent on ``edgesim.m``): every worker stores them, so a
    subscriber anywhere gets them. A starting worker asks a running one for all
    retained messages (``edgesim.c.retained``) before it takes connections.
``edgesim.c.claim``, ``edgesim.c.adopt.<worker>``
    session takeover: a worker whose device connected with a client id claims it;
    a worker holding that id ends its connection (MQTT 5: DISCONNECT 0x8E) and
    hands a persistent session's subscriptions to the new owner.
``edgesim.ev``
    events of every worker, for the admin API's ``/v1/events`` (field ``worker``):
    one message per worker and window, ``{"worker": w, "shapes": [[field names]],
    "events": [[shape, kind, outcome, time_ns, *values]]}`` (:func:`_encode_events`).

The topic and everything MQTT 5 attaches travel in the message body, after a JSON
header line, so the receiver never reconstructs a topic from a subject: a subject is
only the coarse interest filter; each worker's router applies MQTT's own matching.

Delivery guarantee (README, "bus and delivery guarantees"): core NATS is at most
once. A QoS 1/2 publish is acknowledged to its device once this worker has routed it
locally and queued it for NATS; a subscriber on another worker gets it at most once,
at its granted QoS from then on. While this worker's NATS connection is down its
publishes reach only its own subscribers: they are counted in :attr:`NatsBus.dropped`,
never buffered for later.
"""

from __future__ import annotations

import asyncio
import binascii
import collections
import contextlib
import hashlib
import json
import logging
import re
import struct
import time
from collections.abc import Callable, Sequence
from typing import Any

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from edge.core.events import Event, EventLog
from edge.core.hub import EdgeCore
from edge.core.router import Message, Metadata, split_shared
from edge.core.session import PeerCertificate

__all__ = ["NatsBus", "filter_subjects", "topic_subject"]

log = logging.getLogger("edgesim.cluster.bus")

PREFIX = "edgesim"
MSG = f"{PREFIX}.m."
UNMAPPABLE = f"{PREFIX}.u"
RETAINED = f"{PREFIX}.r"
CLAIM = f"{PREFIX}.c.claim"
ADOPT = f"{PREFIX}.c.adopt."
RETAINED_SYNC = f"{PREFIX}.c.retained"
EVENTS = f"{PREFIX}.ev"

#: Characters a NATS subject cannot hold (nats-server refuses them in MQTT topics too).
_BAD = re.compile(r"[\x00-\x20\x7f]")
#: How many (origin, sequence) pairs are remembered to drop copies.
_SEEN = 65_536
#: Mapped subjects kept per worker (a topic's subject is computed once).
_SUBJECTS = 50_000
#: How long a worker gathers its events before they go to the admin worker as one
#: NATS message. Sent per loop iteration they cost a publish, a wake-up of nats-server
#: and of the admin worker for every few events: at one connect in flight that was a
#: third of a worker's CPU per connect (``python -m bench --only workers``). A console
#: or ``/v1/events`` reader sees another worker's events up to this much later.
EVENT_WINDOW = 0.1
#: A batch this large goes out at once, whatever the window.
EVENT_BATCH = 512
#: Session claims go out at most once per this many seconds: the first at once, the
#: ones that follow within the window together at its end. Every claim message wakes
#: nats-server and every other worker. Against 20 ms, 100 ms cut the claim messages
#: fivefold under load and nats-server's CPU per connect of two workers from 0.11 to
#: 0.04 ms; in two of three side-by-side runs two workers went from 1.16-1.22x to
#: 1.06-1.08x one worker per connect, in the third the total did not move (ad hoc A/B
#: runs of ``bench.workers``' connect phase). The price: under load, a client id that
#: reconnects on another worker ends its old connection up to this much later. On an
#: edge that has sent no claim for a window, the claim goes at once.
CLAIM_WINDOW = 0.1


def topic_subject(topic: str) -> str | None:
    """The NATS subject (without prefix) of an MQTT topic name; None if it has none.

    The nats-server mapping: ``a/b`` -> ``a.b``, ``/a`` -> ``/.a``, ``a/`` -> ``a./``,
    ``a//b`` -> ``a./.b``, ``spBv1.0/x`` -> ``spBv1//0.x``.
    """
    if _BAD.search(topic):
        return None
    out = []
    for level in topic.split("/"):
        if not level:
            out.append("/")
        elif level in ("*", ">"):
            return None  # would read as a wildcard
        else:
            out.append(level.replace(".", "//"))
    return ".".join(out)


def filter_subjects(topic_filter: str) -> list[str]:
    """The NATS subjects (without prefix) covering an MQTT filter; [">"] if it has none.

    ``#`` also matches its parent level, so ``a/#`` gives ``a.>`` and ``a``.
    """
    if _BAD.search(topic_filter):
        return [">"]
    out = []
    for level in topic_filter.split("/"):
        if level == "+":
            out.append("*")
        elif level == "#":
            parent = ".".join(out)
            return [".".join([*out, ">"])] + ([parent] if parent else [])
        elif not level:
            out.append("/")
        elif level in ("*", ">"):
            return [">"]
        else:
            out.append(level.replace(".", "//"))
    return [".".join(out)]


def _encode(key: str, seq: int, message: Message) -> bytes:
    meta = message.meta
    m: list[Any] | None = None
    if meta is not None:
        left = None if meta.expires_at is None else meta.expires_at - time.monotonic()
        m = [
            meta.content_type,
            meta.response_topic,
            None if meta.correlation_data is None else meta.correlation_data.hex(),
            meta.user_properties,
            meta.payload_format,
            left,
        ]
    head = json.dumps(
        [
            key,
            seq,
            message.topic,
            message.qos,
            message.retain,
            message.origin,
            message.protocol,
            message.source,
            m,
        ],
        separators=(",", ":"),
    )
    return head.encode() + b"\n" + message.payload


def _decode(data: bytes) -> tuple[str, int, Message]:
    end = data.index(b"\n")
    key, seq, topic, qos, retain, origin, protocol, source, m = json.loads(data[:end])
    message = Message(topic, data[end + 1 :], qos, retain, origin, protocol, time.monotonic())
    message.source = source
    if m is not None:
        message.meta = Metadata(
            content_type=m[0],
            response_topic=m[1],
            correlation_data=None if m[2] is None else binascii.unhexlify(m[2]),
            user_properties=[(k, v) for k, v in m[3]],
            payload_format=m[4],
            expires_at=None if m[5] is None else time.monotonic() + m[5],
        )
    return key, seq, message


def _json_default(value: Any) -> Any:
    # Event fields are JSON-safe except a PeerCertificate (readers get its dict).
    if isinstance(value, PeerCertificate):
        return value.as_dict()
    return str(value)


_Emitted = tuple[str, str, "int | str", dict[str, Any]]


def _encode_events(worker: str, batch: list[_Emitted]) -> bytes:
    """One NATS message for a window of events (see the module text).

    Events of a kind share their field names: those go once per message, each
    event as a list of values, which costs about half what a dict per event did.
    """
    shapes: dict[tuple[str, ...], int] = {}
    rows: list[list[Any]] = []
    for kind, outcome, when, fields in batch:
        names = tuple(fields)
        shape = shapes.get(names)
        if shape is None:
            shape = shapes[names] = len(shapes)
        rows.append([shape, kind, outcome, when, *fields.values()])
    body = {"worker": worker, "shapes": list(shapes), "events": rows}
    return json.dumps(body, separators=(",", ":"), default=_json_default).encode()


def _decode_events(data: bytes) -> list[tuple[str, str, dict[str, Any]]]:
    """The events of one ``edgesim.ev`` message as (kind, outcome, fields).

    ``fields`` holds ``time`` and ``worker``. Also reads a single event as a dict
    (what the supervisor sends).
    """
    body = json.loads(data)
    if isinstance(body, dict) and "events" not in body:
        body = [body]
    if isinstance(body, list):  # events as dicts
        return [(e.pop("kind"), e.pop("outcome"), e) for e in body]
    worker = body["worker"]
    shapes = body["shapes"]
    out = []
    for row in body["events"]:
        fields = dict(zip(shapes[row[0]], row[4:], strict=True))
        fields["time"] = row[3]
        fields.setdefault("worker", worker)
        out.append((row[1], row[2], fields))
    return out


def _queue_name(topic_filter: str) -> str:
    # Queue names are NATS tokens: one per (group, filter), whatever characters they hold.
    return "s" + hashlib.sha256(topic_filter.encode()).hexdigest()[:24]


class NatsBus:
    """The :class:`~edge.core.bus.Bus` of one worker, on core NATS (see the module text).

    ``worker`` names this worker (``node/index``; it appears in events and CONNACKs);
    ``broker`` is the MQTT broker whose sessions claims end (None: no MQTT here);
    ``admin`` says whether this worker serves the admin API, and so collects the
    other workers' events; ``forward_events`` whether its own go on the bus (the
    only admin of a one-machine cluster keeps its own: no one else reads them).
    """

    def __init__(
        self,
        core: EdgeCore,
        servers: Sequence[str],
        *,
        worker: str,
        events: EventLog,
        broker: Any = None,
        admin: bool = False,
        forward_events: bool = True,
        on_state: Callable[[str], None] | None = None,
    ) -> None:
        self.core = core
        self.servers = list(servers)
        self.worker = worker
        self.events = events
        self.broker = broker
        self.admin = admin
        self.forward_events = forward_events
        self._on_state = on_state
        # The key in every message from this worker: unique per process start, so a
        # restarted worker's sequence numbers never look like copies of old ones.
        self.key = re.sub(r"[^A-Za-z0-9_-]", "_", f"{worker}-{time.time_ns():x}")
        self.nc: Client | None = None
        self.nc_shared: Client | None = None
        self._seq = 0
        self._seen: dict[tuple[str, int], None] = {}
        self._subjects: dict[str, str] = {}
        self._interest: dict[str, int] = {}
        self._subs: dict[str, list[Subscription]] = {}
        self._outbox: collections.deque[tuple[str, Any, Any]] = collections.deque()
        self._wake = asyncio.Event()
        self._sender: asyncio.Task[None] | None = None
        self._unlisten: Callable[[], None] | None = None
        self._relaying = False
        self._unsettled = False
        self._claims_out: list[tuple[str, str]] = []
        self._claims_timer: asyncio.TimerHandle | None = None
        self._claims_last = float("-inf")
        self._events_out: list[_Emitted] = []
        self._events_timer: asyncio.TimerHandle | None = None
        #: Publishes not sent because the NATS connection was down.
        self.dropped = 0
        #: Messages received from other workers and routed here.
        self.received = 0
        #: Copies dropped because they had already arrived.
        self.duplicates = 0

    # -- lifecycle -------------------------------------------------------------------

    async def start(self, *, sync_timeout: float = 2.0) -> None:
        """Connect, subscribe the control subjects and load every retained message."""
        self.nc = await nats.connect(
            self.servers,
            name=f"edgesim {self.worker}",
            no_echo=True,  # this worker's own publishes never come back
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.25,
            connect_timeout=2,
            ping_interval=5,
            max_outstanding_pings=2,
            pending_size=0,  # never buffer while disconnected: see the guarantee
            disconnected_cb=self._disconnected,
            reconnected_cb=self._reconnected,
            error_cb=self._error,
        )
        # Queue members for shared subscriptions sit on a second connection: NATS
        # would never give the publishing connection its own message, and this worker
        # may hold the member that should get it.
        self.nc_shared = await nats.connect(
            self.servers,
            name=f"edgesim {self.worker} shared",
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.25,
            connect_timeout=2,
            ping_interval=5,
            pending_size=0,
            error_cb=self._error,
        )
        nc = self.nc
        await nc.subscribe(UNMAPPABLE, cb=self._on_message)
        await nc.subscribe(RETAINED, cb=self._on_message)
        await nc.subscribe(CLAIM, cb=self._on_claim)
        await nc.subscribe(ADOPT + self.key, cb=self._on_adopt)
        await self._sync_retained(sync_timeout)
        await nc.subscribe(RETAINED_SYNC, cb=self._on_retained_sync)
        if self.admin:
            await nc.subscribe(EVENTS, cb=self._on_event)
        if self.forward_events:
            self._unlisten = self.events.add_raw_listener(self._forward_event)
        await nc.flush()
        self._sender = asyncio.get_running_loop().create_task(self._send_loop())

    async def close(self) -> None:
        """Flush what is queued and disconnect."""
        if self._unlisten is not None:
            self._unlisten()
            self._unlisten = None
        if self._sender is not None:
            self._send_events()  # what the windows still held
            self._send_claims()
            self._outbox.append(("stop", None, None))
            self._wake.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._sender, 5)
            self._sender = None
        for nc in (self.nc, self.nc_shared):
            if nc is not None and not nc.is_closed:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(nc.drain(), 5)
        self.nc = self.nc_shared = None

    @property
    def connected(self) -> bool:
        """True while this worker's NATS connection is up."""
        return self.nc is not None and self.nc.is_connected

    # -- the Bus hooks (synchronous: they queue for the sender task) -----------------

    def forward(self, message: Message) -> None:
        """Queue ``message`` for the other workers (dropped and counted while disconnected)."""
        nc = self.nc
        if nc is None or not nc.is_connected:
            self.dropped += 1
            return
        topic = message.topic
        subject = self._subjects.get(topic)
        if subject is None:
            mapped = topic_subject(topic)
            subject = UNMAPPABLE if mapped is None else MSG + mapped
            if len(self._subjects) >= _SUBJECTS:
                self._subjects.clear()
            self._subjects[topic] = subject
        self._seq += 1
        data = _encode(self.key, self._seq, message)
        outbox = self._outbox
        outbox.append(("pub", subject, data))
        if message.retain and subject != UNMAPPABLE:
            outbox.append(("pub", RETAINED, data))
        if not self._wake.is_set():
            self._wake.set()

    def watch(self, topic_filter: str) -> None:
        """Subscribe on NATS for ``topic_filter`` when it is this worker's first."""
        count = self._interest.get(topic_filter, 0)
        self._interest[topic_filter] = count + 1
        if count == 0:
            self._unsettled = True
            self._queue(("sub", topic_filter, None))

    def unwatch(self, topic_filter: str) -> None:
        """Unsubscribe on NATS when the last local subscriber of ``topic_filter`` has gone."""
        count = self._interest.get(topic_filter, 0)
        if count <= 1:
            self._interest.pop(topic_filter, None)
            if count == 1:
                self._queue(("unsub", topic_filter, None))
        else:
            self._interest[topic_filter] = count - 1

    def settle(self, done: Callable[[], None]) -> bool:
        """If subscriptions were queued since the last settle, call ``done`` once NATS has them.

        "Has them" means the server answered a PING sent after the SUBs (a flush):
        it has registered them. Across a cluster of nats-servers the interest still
        travels the routes after that (milliseconds); see the README.
        """
        if not self._unsettled:
            return False
        self._unsettled = False
        self._queue(("settle", done, None))
        return True

    def claim(self, identity: str, client_id: str) -> None:
        """Tell every worker that this one now holds ``client_id`` of ``identity``."""
        if self.nc is None or not self.nc.is_connected:
            return
        self._claims_out.append((identity, client_id))
        if self._claims_timer is not None:
            return  # a send is already due: this claim goes with it
        loop = asyncio.get_running_loop()
        due = self._claims_last + CLAIM_WINDOW
        if loop.time() >= due:
            self._send_claims()  # none sent lately: this one goes at once
        else:
            self._claims_timer = loop.call_at(due, self._send_claims)

    def _send_claims(self) -> None:
        if self._claims_timer is not None:
            self._claims_timer.cancel()
            self._claims_timer = None
        if self._claims_out:
            self._claims_last = asyncio.get_running_loop().time()
            self._queue(("claims", None, None))

    # -- sending ---------------------------------------------------------------------

    def _queue(self, item: tuple[str, Any, Any]) -> None:
        self._outbox.append(item)
        if not self._wake.is_set():
            self._wake.set()

    async def _send_loop(self) -> None:
        # One task sends everything, in the order the hooks queued it: a subscription
        # is on the wire before a publish queued after it, and one worker's
        # publishes reach NATS in order (NATS keeps per-publisher order).
        outbox = self._outbox
        while True:
            await self._wake.wait()
            self._wake.clear()
            while outbox:
                op, subject, data = outbox.popleft()
                try:
                    if op == "pub":
                        assert self.nc is not None
                        await self.nc.publish(subject, data)
                    elif op == "sub":
                        await self._subscribe(subject)
                    elif op == "claims":
                        claims, self._claims_out = self._claims_out, []
                        if not claims:
                            continue
                        body = json.dumps([self.key, claims]).encode()
                        assert self.nc is not None
                        await self.nc.publish(CLAIM, body)
                    elif op == "events":
                        batch, self._events_out = self._events_out, []
                        if not batch:
                            continue
                        assert self.nc is not None
                        await self.nc.publish(EVENTS, _encode_events(self.worker, batch))
                    elif op == "settle":
                        await self._flush()
                        subject()
                    elif op == "unsub":
                        for sub in self._subs.pop(subject, []):
                            await sub.unsubscribe()
                    else:
                        return
                except Exception as exc:  # a dropped connection: the message is lost
                    if op == "pub":
                        self.dropped += 1
                    else:
                        log.warning("bus %s %s failed: %s", op, subject, exc)

    async def _flush(self) -> None:
        for nc in (self.nc, self.nc_shared):
            if nc is not None and nc.is_connected:
                with contextlib.suppress(Exception):
                    await nc.flush(timeout=2)

    async def _subscribe(self, topic_filter: str) -> None:
        assert self.nc is not None
        assert self.nc_shared is not None
        if topic_filter in self._subs:
            return
        shared = split_shared(topic_filter)
        subs: list[Subscription] = []
        if shared is None:
            for subject in filter_subjects(topic_filter):
                subs.append(await self.nc.subscribe(MSG + subject, cb=self._on_message))
        else:
            queue = _queue_name(topic_filter)

            async def on_shared(msg: Msg) -> None:
                self._on_shared(topic_filter, msg)

            subjects = [MSG + subject for subject in filter_subjects(shared[1])]
            for full in [*subjects, UNMAPPABLE]:
                subs.append(await self.nc_shared.subscribe(full, queue=queue, cb=on_shared))
        self._subs[topic_filter] = subs

    # -- receiving -------------------------------------------------------------------

    def _fresh(self, key: str, seq: int) -> bool:
        seen = self._seen
        mark = (key, seq)
        if mark in seen:
            self.duplicates += 1
            return False
        seen[mark] = None
        if len(seen) > _SEEN:
            del seen[next(iter(seen))]
        return True

    async def _on_message(self, msg: Msg) -> None:
        try:
            key, seq, message = _decode(msg.data)
        except (ValueError, TypeError, IndexError) as exc:
            log.warning("bus: undecodable message on %s: %s", msg.subject, exc)
            return
        if key == self.key or not self._fresh(key, seq):
            return
        self.received += 1
        core = self.core
        core.metrics.messages_out += core.router.publish(message)

    def _on_shared(self, topic_filter: str, msg: Msg) -> None:
        try:
            _key, _seq, message = _decode(msg.data)
        except (ValueError, TypeError, IndexError) as exc:
            log.warning("bus: undecodable message on %s: %s", msg.subject, exc)
            return
        self.received += 1
        self.core.metrics.messages_out += self.core.router.deliver_shared(topic_filter, message)

    async def _on_claim(self, msg: Msg) -> None:
        try:
            claimer, claims = json.loads(msg.data)
        except (ValueError, TypeError) as exc:
            log.warning("bus: bad claim: %s", exc)
            return
        broker = self.broker
        if claimer == self.key or broker is None:
            return
        sessions = broker.sessions
        for identity, client_id in claims:
            if (identity, client_id) not in sessions:
                continue  # the usual case: this worker never had that client id
            subscriptions = broker.release(
                identity, client_id, f"session taken over on another edge worker ({claimer})"
            )
            if subscriptions:
                body = json.dumps([identity, client_id, subscriptions]).encode()
                self._queue(("pub", ADOPT + claimer, body))

    async def _on_adopt(self, msg: Msg) -> None:
        try:
            identity, client_id, subscriptions = json.loads(msg.data)
        except (ValueError, TypeError) as exc:
            log.warning("bus: bad session hand-over: %s", exc)
            return
        if self.broker is not None:
            count = self.broker.adopt(identity, client_id, [(f, int(q)) for f, q in subscriptions])
            self.events.emit(
                "mqtt.session_adopted",
                "info",
                identity=identity,
                client_id=client_id,
                subscriptions=count,
            )

    async def _sync_retained(self, timeout: float) -> None:
        assert self.nc is not None
        try:
            reply = await self.nc.request(RETAINED_SYNC, b"", timeout=timeout)
        except (NoRespondersError, NatsTimeoutError):
            return  # the first worker: nothing retained yet
        data = reply.data
        offset = 0
        router = self.core.router
        while offset + 4 <= len(data):
            (size,) = struct.unpack_from(">I", data, offset)
            offset += 4
            _key, _seq, message = _decode(data[offset : offset + size])
            offset += size
            router.publish(message)

    async def _on_retained_sync(self, msg: Msg) -> None:
        parts = []
        for message in self.core.router.retained_matching("#"):
            body = _encode(self.key, 0, message)
            parts.append(struct.pack(">I", len(body)) + body)
        for message in self.core.router.retained_matching("$SYS/#"):
            body = _encode(self.key, 0, message)
            parts.append(struct.pack(">I", len(body)) + body)
        await msg.respond(b"".join(parts))

    # -- events ----------------------------------------------------------------------

    def _forward_event(self, kind: str, outcome: str, when: int | str, fields: Event) -> None:
        if self._relaying:
            return  # it came from another worker: forwarded once is enough
        nc = self.nc
        if nc is None or not nc.is_connected:
            return
        # Events gathered over EVENT_WINDOW go out as one NATS message, encoded then.
        out = self._events_out
        out.append((kind, outcome, when, fields))
        if len(out) >= EVENT_BATCH:
            self._send_events()
        elif self._events_timer is None:
            loop = asyncio.get_running_loop()
            self._events_timer = loop.call_later(EVENT_WINDOW, self._send_events)

    def _send_events(self) -> None:
        if self._events_timer is not None:
            self._events_timer.cancel()
            self._events_timer = None
        if self._events_out:
            self._queue(("events", None, None))

    async def _on_event(self, msg: Msg) -> None:
        try:
            batch = _decode_events(msg.data)
            self._relaying = True
            emit = self.events.emit
            for kind, outcome, fields in batch:
                emit(kind, outcome, **fields)
        except (ValueError, KeyError, AttributeError, TypeError, IndexError) as exc:
            log.warning("bus: bad event: %s", exc)
        finally:
            self._relaying = False

    # -- connection state ------------------------------------------------------------

    async def _disconnected(self) -> None:
        self.events.emit("cluster.bus", "error", state="disconnected", worker=self.worker)
        if self._on_state is not None:
            self._on_state("disconnected")

    async def _reconnected(self) -> None:
        self.events.emit("cluster.bus", "info", state="connected", worker=self.worker)
        if self._on_state is not None:
            self._on_state("connected")

    async def _error(self, exc: Exception) -> None:
        log.debug("bus connection: %s", exc)
