"""MQTT 3.1.1 and MQTT 5 client for a device, on the edge's own codec (:mod:`edge.mqtt.codec`).

Runs over any :class:`devices.protocols.Channel`: the TLS stream directly
(``mqtts://``) or a WebSocket's binary frames (``wss://.../mqtt``). Bytes arrive by
callback and go through one incremental :class:`~edge.mqtt.codec.Parser`; replies are
matched to requests by packet id. QoS 1 and 2 are complete in both directions
(PUBACK; PUBREC/PUBREL/PUBCOMP). Keepalive pings use a loop timer, not a task.

The version is chosen per session by :class:`MqttOptions` (``version`` 4 is 3.1.1, 5
is 5.0). Under MQTT 5 the session also:

- sends CONNECT properties (Session Expiry, Receive Maximum, Maximum Packet Size,
  Topic Alias Maximum, Request Problem Information, User Properties) and reads the
  CONNACK's reason code, Reason String and capabilities;
- reports the reason code and properties of every acknowledgement on its
  :class:`~devices.protocols.Ack` (``reason_code``, ``properties``); a code of 0x80 or
  above is a refusal (``ok`` false, ``reason`` such as ``puback-0x87``);
- sends and receives PUBLISH properties, resolving the Topic Aliases the server sends
  (up to the Topic Alias Maximum the device announced) and, with
  ``MqttOptions.topic_aliases``, sending its own within the server's maximum;
- honours the server's Receive Maximum (at most that many QoS 1/2 publishes in flight;
  the rest wait) and Maximum Packet Size (a bigger packet is refused before it is
  sent: :class:`~devices.protocols.ProtocolError` ``packet-too-large``);
- treats a DISCONNECT from the server as the end of the session: every waiter gets
  :class:`ServerDisconnect` (``reason`` ``disconnect-0x8e`` ..., with the code, the
  Reason String and the properties).

3.1.1 sessions do none of this work: the per-message path is the one it always was.
A server that speaks only 3.1.1 answers an MQTT 5 CONNECT with a 3.1.1 CONNACK (return
code 1); the session reads it as what it means, 0x84 Unsupported Protocol Version.

Failures: the connection's :class:`~devices.tlsclient.TlsFailure` (an alert, the edge
closing) is raised from whatever request was waiting; an unparseable packet from the
server becomes :class:`~devices.protocols.ProtocolError` (reason ``mqtt-malformed``;
under MQTT 5 the session first tells the server why in a DISCONNECT).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from devices.protocols import Ack, Channel, Inbox, Message, ProtocolError
from devices.tlsclient import DeviceError, TlsFailure
from edge.mqtt import codec
from edge.mqtt.errors import MqttError
from edge.mqtt.properties import PROPERTIES, USER_PROPERTY, Properties
from edge.mqtt.reasons import (
    MALFORMED_PACKET,
    PROTOCOL_ERROR,
    TOPIC_ALIAS_INVALID,
    UNSUPPORTED_PROTOCOL_VERSION,
    reason_name,
)

__all__ = [
    "CONNACK_NAMES",
    "MQTT_VERSIONS",
    "MqttOptions",
    "MqttSession",
    "ServerDisconnect",
    "disconnect_detail",
    "parse_mqtt_version",
    "properties_dict",
    "version_label",
]

#: MQTT 3.1.1 CONNACK return codes (section 3.2.2.3).
CONNACK_NAMES: dict[int, str] = {
    0: "accepted",
    1: "unacceptable protocol version",
    2: "identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorized",
}

#: The spellings ``--mqtt-version`` and ``mqtt_version=`` accept, by protocol level.
MQTT_VERSIONS: dict[str, int] = {"3.1.1": 4, "4": 4, "5": 5, "5.0": 5}


def parse_mqtt_version(value: str | int) -> int:
    """The protocol level (4 or 5) for ``"3.1.1"``, ``"5"``, ``5``...; ``ValueError`` otherwise."""
    level = MQTT_VERSIONS.get(str(value).strip())
    if level is None:
        raise ValueError(f"MQTT version {value!r}: expected 3.1.1 or 5")
    return level


def version_label(level: int) -> str:
    """``"3.1.1"`` or ``"5"``: how reports and traces name a protocol level."""
    return "5" if level == 5 else "3.1.1"


@dataclass(frozen=True, slots=True, kw_only=True)
class MqttOptions:
    """How a device speaks MQTT: the version and, for MQTT 5, its CONNECT properties.

    ``None`` leaves a property out of the CONNECT (the server's default applies:
    Session Expiry 0, Receive Maximum and Maximum Packet Size unlimited, Topic Alias
    Maximum 0, problem information requested). ``topic_aliases`` makes the device
    send Topic Aliases for its publishes, within the server's Topic Alias Maximum.
    The properties are built once per options object, not per device.
    """

    version: int = 4
    session_expiry: int | None = None
    receive_maximum: int | None = None
    maximum_packet_size: int | None = None
    topic_alias_maximum: int | None = None
    request_problem_information: bool | None = None
    user_properties: tuple[tuple[str, str], ...] = ()
    topic_aliases: bool = False
    # Built once here, read (never changed) by every session sharing these options.
    _properties: Properties | None = field(
        default=None, init=False, repr=False, compare=False, hash=False
    )

    def __post_init__(self) -> None:
        if self.version not in (4, 5):
            raise ValueError(f"MQTT protocol level {self.version}: expected 4 (3.1.1) or 5")
        props = self._build()
        if self.version == 4 and props is not None:
            raise ValueError("CONNECT properties need MQTT 5 (--mqtt-version 5)")
        object.__setattr__(self, "_properties", props)

    def connect_properties(self) -> Properties | None:
        """The CONNECT properties these options ask for (``None`` when there are none).

        The same object every time: treat it as read-only.
        """
        return self._properties

    def _build(self) -> Properties | None:
        rpi = self.request_problem_information
        props = Properties(
            session_expiry_interval=self.session_expiry,
            receive_maximum=self.receive_maximum,
            maximum_packet_size=self.maximum_packet_size,
            topic_alias_maximum=self.topic_alias_maximum,
            request_problem_information=None if rpi is None else int(rpi),
            user_properties=list(self.user_properties),
        )
        return None if props.is_empty() else props


_V311 = MqttOptions()

# Attribute name of each property (the names of PROPERTIES, in snake case).
_ATTR = {
    ident: info.name.lower().replace(" ", "_").replace("-", "_")
    for ident, info in PROPERTIES.items()
}


def properties_dict(props: Properties | None) -> dict[str, Any]:
    """JSON-ready properties: ``{"receive_maximum": 20, "user_properties": [[k, v]]}``.

    Binary values (Correlation Data, Authentication Data) are shown in hex.
    """
    if props is None:
        return {}
    out: dict[str, Any] = {}
    for ident, value in props.items():
        if ident == USER_PROPERTY:
            continue
        name = _ATTR[ident]
        if name == "subscription_identifier":
            out.setdefault("subscription_identifiers", []).append(value)
        elif isinstance(value, bytes):
            out[name] = value.hex()
        else:
            out[name] = value
    if props.user_properties:
        out["user_properties"] = [list(pair) for pair in props.user_properties]
    return out


class ServerDisconnect(ProtocolError):
    """The server ended an MQTT 5 session with a DISCONNECT packet.

    ``reason`` is ``disconnect-0x..``; ``reason_code``, ``reason_string`` and
    ``properties`` are the packet's.
    """

    def __init__(self, packet: codec.Disconnect) -> None:
        code = packet.reason_code
        props = packet.properties
        self.reason_code = code
        self.properties = props
        self.reason_string = None if props is None else props.reason_string
        text = f"the server sent DISCONNECT {code:#04x} ({reason_name(code, codec.DISCONNECT)})"
        if self.reason_string:
            text += f": {self.reason_string}"
        super().__init__(text, reason=f"disconnect-{code:#04x}")


def disconnect_detail(exc: ServerDisconnect) -> dict[str, Any]:
    """The trace detail of a server's DISCONNECT: code, summary, Reason String, properties."""
    detail: dict[str, Any] = {
        "reason_code": exc.reason_code,
        "summary": _code_text("DISCONNECT", exc.reason_code, codec.DISCONNECT, exc.properties),
    }
    _add_props(detail, exc.properties)
    return detail


def _code_text(kind: str, code: int, packet_type: int, props: Properties | None) -> str:
    """``"PUBACK 0x87 Not authorized: <reason string>"``."""
    text = f"{kind} {code:#04x} {reason_name(code, packet_type)}"
    if props is not None and props.reason_string:
        text += f": {props.reason_string}"
    return text


class MqttSession:
    """One MQTT 3.1.1 or MQTT 5 client session over a channel."""

    name = "mqtt"

    __slots__ = (
        "_alias_out",
        "_aliases_in",
        "_channel",
        "_connack",
        "_early",
        "_ids",
        "_inbox",
        "_keepalive",
        "_level",
        "_loop",
        "_max_out",
        "_options",
        "_parser",
        "_pending",
        "_ping_handle",
        "_qos2_inbound",
        "_quota",
        "_quota_waiters",
        "_server_alias_max",
        "clean_session",
        "client_id",
        "connack",
        "disconnect",
        "messages_sent",
    )

    def __init__(
        self,
        channel: Channel,
        *,
        client_id: str,
        clock: Callable[[], float],
        keepalive: int = 60,
        clean_session: bool = True,
        options: MqttOptions | None = None,
    ) -> None:
        self._channel = channel
        self.client_id = client_id
        self.clean_session = clean_session
        self._keepalive = keepalive
        self._options = options or _V311
        self._level = self._options.version
        self._loop = asyncio.get_running_loop()
        self._parser = codec.Parser(server_side=False, protocol_level=self._level)
        if self._options.maximum_packet_size is not None:
            # What the device announced it accepts: anything bigger is the server's error.
            self._parser.max_packet_size = self._options.maximum_packet_size
        self._inbox = Inbox(clock)
        self._connack: asyncio.Future[codec.Connack] = self._loop.create_future()
        self._pending: dict[int, asyncio.Future[codec.Packet]] = {}
        # Made on the first QoS 2 message: an empty set is 216 bytes per held device.
        self._qos2_inbound: set[int] | None = None
        self._ids = itertools.cycle(range(1, 65536))
        self._ping_handle: asyncio.TimerHandle | None = None
        # MQTT 5 state, set from the CONNACK; all None (no work) under 3.1.1.
        self._quota: int | None = None  # publishes the server's Receive Maximum still allows
        self._quota_waiters: deque[asyncio.Future[None]] | None = None
        self._max_out: int | None = None  # the server's Maximum Packet Size
        self._aliases_in: dict[int, str] | None = None
        self._alias_out: dict[str, int] | None = None
        self._server_alias_max = 0
        # MQTT 5: the server's first bytes until there are two (the CONNACK's form is
        # told by its remaining length); None once told, and always under 3.1.1.
        self._early: bytes | None = b"" if self._level == 5 else None
        #: The CONNACK as received (its ``reason_code`` and ``properties``).
        self.connack: codec.Connack | None = None
        #: The DISCONNECT the server sent (MQTT 5), if it ended the session that way.
        self.disconnect: codec.Disconnect | None = None
        self.messages_sent = 0
        channel.set_reader(self._on_data, self._on_error)

    @property
    def protocol_level(self) -> int:
        """4 (MQTT 3.1.1) or 5 (MQTT 5.0)."""
        return self._level

    def _encode(self, packet: codec.Packet) -> bytes:
        return codec.encode(packet, self._level)

    # -- callbacks from the channel

    def _on_data(self, data: bytes) -> None:
        if self._early is not None:
            data = self._early + data
            if len(data) < 2:
                self._early = data
                return
            self._early = None
            if data[:2] == b"\x20\x02":
                # A v5 CONNACK always has a property length: remaining length 2 is a
                # 3.1.1 server refusing the version (return code 1). Read it as 3.1.1.
                self._parser.set_protocol_level(4)
        try:
            packets = self._parser.feed(data)
        except MqttError as exc:
            if self._level == 5 and self.connack is not None:
                # MQTT 5 lets the client say why it hangs up (section 4.13).
                code = exc.reason_code if exc.reason_code >= 0x80 else MALFORMED_PACKET
                with contextlib.suppress(DeviceError, ValueError):
                    self._channel.write(self._encode(codec.Disconnect(code)))
            self._fail(
                ProtocolError(f"bad MQTT packet from the edge: {exc}", reason="mqtt-malformed")
            )
            self._channel.close()
            return
        for packet in packets:
            self._dispatch(packet)

    def _dispatch(self, packet: codec.Packet) -> None:
        if isinstance(packet, codec.Connack):
            if not self._connack.done():
                self._connack.set_result(packet)
        elif isinstance(packet, codec.Publish):
            self._on_publish(packet)
        elif isinstance(packet, codec.Pubrel):
            # Inbound QoS 2, step 3: the message was delivered at PUBLISH time.
            if self._qos2_inbound is not None:
                self._qos2_inbound.discard(packet.packet_id)
            self._channel.write(self._encode(codec.Pubcomp(packet.packet_id)))
        elif isinstance(packet, codec.Pingresp):
            pass
        elif isinstance(
            packet, codec.Suback | codec.Puback | codec.Pubrec | codec.Pubcomp | codec.Unsuback
        ):
            fut = self._pending.pop(packet.packet_id, None)
            if fut is not None and not fut.done():
                fut.set_result(packet)
        elif isinstance(packet, codec.Disconnect):
            self.disconnect = packet
            self._fail(ServerDisconnect(packet))
            self._channel.close()
        elif isinstance(packet, codec.Auth):
            # Devices authenticate by certificate and never start enhanced
            # authentication: an AUTH from the server is a protocol error.
            self._protocol_error(PROTOCOL_ERROR, "the server sent AUTH unasked")

    def _on_publish(self, packet: codec.Publish) -> None:
        props = packet.properties
        topic = packet.topic
        if props is not None and props.topic_alias is not None:
            resolved = self._resolve_alias(topic, props.topic_alias)
            if resolved is None:
                return
            topic = resolved
        if packet.qos == 2 and packet.packet_id is not None:
            if self._qos2_inbound is None:
                self._qos2_inbound = set()
            first = packet.packet_id not in self._qos2_inbound
            self._qos2_inbound.add(packet.packet_id)
            self._channel.write(self._encode(codec.Pubrec(packet.packet_id)))
            if not first:
                return  # a retransmission: already delivered once
        elif packet.qos == 1 and packet.packet_id is not None:
            self._channel.write(self._encode(codec.Puback(packet.packet_id)))
        self._inbox.put(topic, packet.payload, packet.qos, packet.retain, props)

    def _resolve_alias(self, topic: str, alias: int) -> str | None:
        """The topic of a PUBLISH that carries a Topic Alias (section 3.3.2.3.4)."""
        maximum = self._options.topic_alias_maximum or 0
        if alias > maximum:
            self._protocol_error(
                TOPIC_ALIAS_INVALID,
                f"Topic Alias {alias} above the device's Topic Alias Maximum {maximum}",
            )
            return None
        if self._aliases_in is None:
            self._aliases_in = {}
        if topic:
            self._aliases_in[alias] = topic
            return topic
        known = self._aliases_in.get(alias)
        if known is None:
            self._protocol_error(TOPIC_ALIAS_INVALID, f"Topic Alias {alias} was never set")
        return known

    def _protocol_error(self, code: int, text: str) -> None:
        """The server broke the protocol: DISCONNECT with ``code``, then fail every waiter."""
        with contextlib.suppress(DeviceError, ValueError):
            self._channel.write(self._encode(codec.Disconnect(code)))
        self._fail(
            ProtocolError(
                f"{text}: the device disconnected with {code:#04x} ({reason_name(code)})",
                reason=f"mqtt-{code:#04x}",
            )
        )
        self._channel.close()

    def _on_error(self, error: TlsFailure) -> None:
        self._fail(error)

    def _fail(self, error: DeviceError) -> None:
        self._inbox.fail(error)
        if not self._connack.done():
            self._connack.set_exception(error)
            self._connack.exception()  # reported to whoever awaits; silence the warning
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(error)
                fut.exception()
        self._pending.clear()
        if self._quota_waiters:
            for waiter in self._quota_waiters:
                if not waiter.done():
                    waiter.set_exception(error)
                    waiter.exception()
            self._quota_waiters.clear()
        if self._ping_handle is not None:
            self._ping_handle.cancel()
            self._ping_handle = None

    # -- requests

    def _request(self, packet_id: int) -> asyncio.Future[codec.Packet]:
        if self._inbox.error is not None:
            raise self._inbox.error
        fut: asyncio.Future[codec.Packet] = self._loop.create_future()
        self._pending[packet_id] = fut
        return fut

    def _next_id(self) -> int:
        while True:
            packet_id = next(self._ids)
            if packet_id not in self._pending:
                return packet_id

    def _write(self, data: bytes, what: str) -> None:
        """Send a packet, unless it is over the server's Maximum Packet Size (MQTT 5)."""
        if self._max_out is not None and len(data) > self._max_out:
            raise ProtocolError(
                f"{what} of {len(data)} bytes exceeds the server's Maximum Packet Size "
                f"{self._max_out}: not sent",
                reason="packet-too-large",
            )
        self._channel.write(data)

    async def open(self) -> Ack:
        """Send CONNECT and wait for CONNACK."""
        self._channel.write(
            codec.encode(
                codec.Connect(
                    client_id=self.client_id,
                    clean_session=self.clean_session,
                    keepalive=self._keepalive,
                    protocol_level=self._level,
                    properties=self._options.connect_properties() if self._level == 5 else None,
                )
            )
        )
        connack = await self._connack
        self.connack = connack
        if self._level == 5:
            return self._open5(connack)
        code = connack.return_code
        name = CONNACK_NAMES.get(code, "unknown code")
        detail = {"return_code": code, "meaning": name, "session_present": connack.session_present}
        if code != 0:
            return Ack(False, f"CONNACK {code} ({name})", detail, reason=f"connack-{code}")
        if self._keepalive > 0:
            self._schedule_ping()
        return Ack(True, "CONNACK 0 (accepted)", detail)

    def _open5(self, connack: codec.Connack) -> Ack:
        code = connack.reason_code
        props = connack.properties
        if self._parser.protocol_level == 4:
            # The 3.1.1 form (see _on_data): the server does not speak MQTT 5.
            self._parser.set_protocol_level(5)
            detail: dict[str, Any] = {
                "mqtt_version": "5",
                "return_code": code,
                "reason_code": UNSUPPORTED_PROTOCOL_VERSION if code == 1 else code,
                "meaning": CONNACK_NAMES.get(code, "unknown code"),
                "session_present": connack.session_present,
                "form": "MQTT 3.1.1",
            }
            summary = (
                f"CONNACK return code {code} ({detail['meaning']}) in MQTT 3.1.1 form: "
                "the server does not speak MQTT 5"
            )
            reason = f"connack-{detail['reason_code']:#04x}"
            return Ack(
                code == 0, summary, detail, "" if code == 0 else reason, detail["reason_code"]
            )
        detail = {
            "mqtt_version": "5",
            "return_code": code,
            "reason_code": code,
            "meaning": reason_name(code, codec.CONNACK),
            "session_present": connack.session_present,
        }
        if props is not None:
            detail["properties"] = properties_dict(props)
            if props.reason_string is not None:
                detail["reason_string"] = props.reason_string
        summary = _code_text("CONNACK", code, codec.CONNACK, props)
        if code >= 0x80:
            return Ack(False, summary, detail, f"connack-{code:#04x}", code, props)
        if props is not None:
            self._apply_limits(props)
        keepalive = self._keepalive
        if props is not None and props.server_keep_alive is not None:
            keepalive = props.server_keep_alive  # the server's word is final (3.2.2.3.14)
            self._keepalive = keepalive
        if keepalive > 0:
            self._schedule_ping()
        return Ack(True, summary, detail, "", code, props)

    def _apply_limits(self, props: Properties) -> None:
        if props.receive_maximum is not None:
            self._quota = props.receive_maximum
            self._quota_waiters = deque()
        if props.maximum_packet_size is not None:
            self._max_out = props.maximum_packet_size
        if props.topic_alias_maximum and self._options.topic_aliases:
            self._server_alias_max = props.topic_alias_maximum
            self._alias_out = {}
        if props.assigned_client_identifier is not None:
            self.client_id = props.assigned_client_identifier

    def _schedule_ping(self) -> None:
        # Ping at 3/4 of the keepalive so that the edge never sees 1.5x silence.
        self._ping_handle = self._loop.call_later(self._keepalive * 0.75, self._ping)

    def _ping(self) -> None:
        if self._inbox.error is not None:
            return
        self._channel.write(codec.encode(codec.Pingreq()))
        self._schedule_ping()

    async def subscribe(self, topic_filter: str, qos: int) -> Ack:
        """SUBSCRIBE one filter; the Ack holds the SUBACK return (or reason) codes."""
        packet_id = self._next_id()
        fut = self._request(packet_id)
        self._write(self._encode(codec.Subscribe(packet_id, [(topic_filter, qos)])), "SUBSCRIBE")
        suback = await fut
        assert isinstance(suback, codec.Suback)
        codes = list(suback.return_codes)
        if self._level == 5:
            props = suback.properties
            ok = all(c < 0x80 for c in codes)
            text = ", ".join(f"{c:#04x} {reason_name(c, codec.SUBACK)}" for c in codes)
            if props is not None and props.reason_string:
                text += f": {props.reason_string}"
            detail: dict[str, Any] = {"return_codes": codes, "reason_codes": codes}
            _add_props(detail, props)
            bad = next((c for c in codes if c >= 0x80), None)
            reason = "" if bad is None else f"suback-{bad:#04x}"
            return Ack(ok, f"SUBACK {text}", detail, reason, codes[0], props)
        ok = all(c != codec.SUBACK_FAILURE for c in codes)
        text = ", ".join(
            "0x80 (refused)" if c == codec.SUBACK_FAILURE else f"granted QoS {c}" for c in codes
        )
        return Ack(
            ok, f"SUBACK {text}", {"return_codes": codes}, reason="" if ok else "suback-0x80"
        )

    async def unsubscribe(self, topic_filter: str) -> Ack:
        """UNSUBSCRIBE one filter and wait for UNSUBACK."""
        packet_id = self._next_id()
        fut = self._request(packet_id)
        self._write(self._encode(codec.Unsubscribe(packet_id, [topic_filter])), "UNSUBSCRIBE")
        reply = await fut
        if self._level != 5 or not isinstance(reply, codec.Unsuback) or not reply.reason_codes:
            return Ack(True, "UNSUBACK")
        codes = list(reply.reason_codes)
        props = reply.properties
        detail: dict[str, Any] = {"reason_codes": codes}
        _add_props(detail, props)
        bad = next((c for c in codes if c >= 0x80), None)
        return Ack(
            bad is None,
            _code_text("UNSUBACK", codes[0], codec.UNSUBACK, props),
            detail,
            "" if bad is None else f"unsuback-{bad:#04x}",
            codes[0],
            props,
        )

    async def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int,
        retain: bool = False,
        properties: Properties | None = None,
    ) -> Ack:
        """PUBLISH and complete the QoS flow (nothing, PUBACK, or PUBREC/PUBREL/PUBCOMP).

        ``properties`` (MQTT 5 only) are sent with the message: content type, user
        properties, response topic, correlation data, message expiry...
        """
        if properties is not None and self._level != 5:
            raise ProtocolError(
                "PUBLISH properties need MQTT 5 (mqtt_version 5)", reason="bad-input"
            )
        if self._alias_out is not None:
            topic, properties = self._alias(topic, properties)
        if qos == 0:
            if self._inbox.error is not None:
                raise self._inbox.error
            self._write(
                self._encode(codec.Publish(topic, payload, 0, retain, properties=properties)),
                "PUBLISH",
            )
            self.messages_sent += 1
            return Ack(True, "sent (QoS 0: no acknowledgement)", {"qos": 0})
        if self._quota is not None:
            await self._take_quota()
        try:
            packet_id = self._next_id()
            data = self._encode(
                codec.Publish(
                    topic, payload, qos, retain, packet_id=packet_id, properties=properties
                )
            )
            fut = self._request(packet_id)
            try:
                self._write(data, "PUBLISH")
            except ProtocolError:
                self._pending.pop(packet_id, None)
                raise
            self.messages_sent += 1
            reply = await fut
            if self._level == 5:
                return await self._publish5_flow(packet_id, qos, reply)
        finally:
            if self._quota is not None:
                self._give_quota()
        if qos == 1:
            return Ack(True, "PUBACK", {"qos": 1, "packet_id": packet_id})
        if not isinstance(reply, codec.Pubrec):
            raise ProtocolError(
                f"expected PUBREC for packet {packet_id}, got {type(reply).__name__}"
            )
        fut = self._request(packet_id)
        self._channel.write(codec.encode(codec.Pubrel(packet_id)))
        await fut
        return Ack(True, "PUBREC, PUBCOMP", {"qos": 2, "packet_id": packet_id})

    async def _publish5_flow(self, packet_id: int, qos: int, reply: codec.Packet) -> Ack:
        detail: dict[str, Any] = {"qos": qos, "packet_id": packet_id}
        if qos == 1:
            if not isinstance(reply, codec.Puback):
                raise ProtocolError(
                    f"expected PUBACK for packet {packet_id}, got {type(reply).__name__}"
                )
            return _ack5("PUBACK", codec.PUBACK, "puback", reply, detail)
        if not isinstance(reply, codec.Pubrec):
            raise ProtocolError(
                f"expected PUBREC for packet {packet_id}, got {type(reply).__name__}"
            )
        if reply.reason_code >= 0x80:
            # A refused QoS 2 message ends at PUBREC: no PUBREL follows (4.3.3).
            return _ack5("PUBREC", codec.PUBREC, "pubrec", reply, detail)
        fut = self._request(packet_id)
        self._channel.write(self._encode(codec.Pubrel(packet_id)))
        comp = await fut
        if not isinstance(comp, codec.Pubcomp):
            raise ProtocolError(
                f"expected PUBCOMP for packet {packet_id}, got {type(comp).__name__}"
            )
        ack = _ack5("PUBCOMP", codec.PUBCOMP, "pubcomp", comp, detail)
        detail["pubrec_reason_code"] = reply.reason_code
        ack.summary = (
            f"{_code_text('PUBREC', reply.reason_code, codec.PUBREC, reply.properties)}, "
            f"{ack.summary}"
        )
        if ack.ok and reply.properties is not None and ack.properties is None:
            ack.properties = reply.properties
        return ack

    def _alias(self, topic: str, properties: Properties | None) -> tuple[str, Properties | None]:
        """Topic and properties with a Topic Alias: the topic in full only the first time."""
        assert self._alias_out is not None
        alias = self._alias_out.get(topic)
        first = alias is None
        if alias is None:
            if len(self._alias_out) >= self._server_alias_max:
                return topic, properties  # aliases used up: send the topic in full
            alias = self._alias_out[topic] = len(self._alias_out) + 1
        props = Properties() if properties is None else _copy(properties)
        props.topic_alias = alias
        return (topic if first else ""), props

    async def _take_quota(self) -> None:
        assert self._quota is not None
        assert self._quota_waiters is not None
        while self._quota <= 0:
            if self._inbox.error is not None:
                raise self._inbox.error
            waiter: asyncio.Future[None] = self._loop.create_future()
            self._quota_waiters.append(waiter)
            await waiter
        self._quota -= 1

    def _give_quota(self) -> None:
        assert self._quota is not None
        assert self._quota_waiters is not None
        self._quota += 1
        while self._quota_waiters:
            waiter = self._quota_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    @property
    def send_quota(self) -> int | None:
        """How many more QoS 1/2 publishes the server's Receive Maximum allows now.

        ``None`` when the server set no Receive Maximum (or under 3.1.1).
        """
        return self._quota

    async def next_message(self) -> Message:
        """The next PUBLISH delivered to the device."""
        return await self._inbox.get()

    @property
    def messages_received(self) -> int:
        """How many messages were delivered so far."""
        return self._inbox.count

    def close(self) -> None:
        """Send DISCONNECT (if still connected) and close the channel."""
        if self._ping_handle is not None:
            self._ping_handle.cancel()
            self._ping_handle = None
        if self._inbox.error is None:
            with contextlib.suppress(DeviceError):
                self._channel.write(codec.encode(codec.Disconnect()))
        self._inbox.fail(ProtocolError("the session was closed by the device", reason="closed"))
        self._channel.close()


def _copy(props: Properties) -> Properties:
    """A shallow copy (the caller's properties object is not changed by aliasing)."""
    out = Properties()
    for slot in Properties.__slots__:
        value = getattr(props, slot)
        setattr(out, slot, list(value) if isinstance(value, list) else value)
    return out


def _add_props(detail: dict[str, Any], props: Properties | None) -> None:
    if props is not None:
        detail["properties"] = properties_dict(props)
        if props.reason_string is not None:
            detail["reason_string"] = props.reason_string


def _ack5(
    kind: str,
    packet_type: int,
    word: str,
    packet: codec.Puback | codec.Pubrec | codec.Pubcomp,
    detail: dict[str, Any],
) -> Ack:
    code = packet.reason_code
    props = packet.properties
    detail["reason_code"] = code
    _add_props(detail, props)
    ok = code < 0x80
    return Ack(
        ok,
        _code_text(kind, code, packet_type, props),
        detail,
        "" if ok else f"{word}-{code:#04x}",
        code,
        props,
    )
