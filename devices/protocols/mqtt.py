"""MQTT 3.1.1 client for a device, on the edge's own codec (:mod:`edge.mqtt.codec`).

Runs over any :class:`devices.protocols.Channel`: the TLS stream directly
(``mqtts://``) or a WebSocket's binary frames (``wss://.../mqtt``). Bytes arrive by
callback and go through one incremental :class:`~edge.mqtt.codec.Parser`; replies are
matched to requests by packet id. QoS 1 and 2 are complete in both directions
(PUBACK; PUBREC/PUBREL/PUBCOMP). Keepalive pings use a loop timer, not a task.

Failures: the connection's :class:`~devices.tlsclient.TlsFailure` (an alert, the edge
closing) is raised from whatever request was waiting; an unparseable packet from the
server becomes :class:`~devices.protocols.ProtocolError` (reason ``mqtt-malformed``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Callable

from devices.protocols import Ack, Channel, Inbox, Message, ProtocolError
from devices.tlsclient import DeviceError, TlsFailure
from edge.mqtt import codec

__all__ = ["CONNACK_NAMES", "MqttSession"]

#: MQTT 3.1.1 CONNACK return codes (section 3.2.2.3).
CONNACK_NAMES: dict[int, str] = {
    0: "accepted",
    1: "unacceptable protocol version",
    2: "identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorized",
}


class MqttSession:
    """One MQTT 3.1.1 client session over a channel."""

    name = "mqtt"

    __slots__ = (
        "_channel",
        "_connack",
        "_ids",
        "_inbox",
        "_keepalive",
        "_loop",
        "_parser",
        "_pending",
        "_ping_handle",
        "_qos2_inbound",
        "clean_session",
        "client_id",
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
    ) -> None:
        self._channel = channel
        self.client_id = client_id
        self.clean_session = clean_session
        self._keepalive = keepalive
        self._loop = asyncio.get_running_loop()
        self._parser = codec.Parser(server_side=False)
        self._inbox = Inbox(clock)
        self._connack: asyncio.Future[codec.Connack] = self._loop.create_future()
        self._pending: dict[int, asyncio.Future[codec.Packet]] = {}
        self._qos2_inbound: set[int] = set()
        self._ids = itertools.cycle(range(1, 65536))
        self._ping_handle: asyncio.TimerHandle | None = None
        self.messages_sent = 0
        channel.set_reader(self._on_data, self._on_error)

    # -- callbacks from the channel

    def _on_data(self, data: bytes) -> None:
        try:
            packets = self._parser.feed(data)
        except codec.MqttError as exc:
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
            self._qos2_inbound.discard(packet.packet_id)
            self._channel.write(codec.encode(codec.Pubcomp(packet.packet_id)))
        elif isinstance(packet, codec.Pingresp):
            pass
        elif isinstance(
            packet, codec.Suback | codec.Puback | codec.Pubrec | codec.Pubcomp | codec.Unsuback
        ):
            fut = self._pending.pop(packet.packet_id, None)
            if fut is not None and not fut.done():
                fut.set_result(packet)

    def _on_publish(self, packet: codec.Publish) -> None:
        if packet.qos == 2 and packet.packet_id is not None:
            first = packet.packet_id not in self._qos2_inbound
            self._qos2_inbound.add(packet.packet_id)
            self._channel.write(codec.encode(codec.Pubrec(packet.packet_id)))
            if not first:
                return  # a retransmission: already delivered once
        elif packet.qos == 1 and packet.packet_id is not None:
            self._channel.write(codec.encode(codec.Puback(packet.packet_id)))
        self._inbox.put(packet.topic, packet.payload, packet.qos, packet.retain)

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

    async def open(self) -> Ack:
        """Send CONNECT and wait for CONNACK."""
        self._channel.write(
            codec.encode(
                codec.Connect(
                    client_id=self.client_id,
                    clean_session=self.clean_session,
                    keepalive=self._keepalive,
                )
            )
        )
        connack = await self._connack
        code = connack.return_code
        name = CONNACK_NAMES.get(code, "unknown code")
        detail = {"return_code": code, "meaning": name, "session_present": connack.session_present}
        if code != 0:
            return Ack(False, f"CONNACK {code} ({name})", detail, reason=f"connack-{code}")
        if self._keepalive > 0:
            self._schedule_ping()
        return Ack(True, "CONNACK 0 (accepted)", detail)

    def _schedule_ping(self) -> None:
        # Ping at 3/4 of the keepalive so that the edge never sees 1.5x silence.
        self._ping_handle = self._loop.call_later(self._keepalive * 0.75, self._ping)

    def _ping(self) -> None:
        if self._inbox.error is not None:
            return
        self._channel.write(codec.encode(codec.Pingreq()))
        self._schedule_ping()

    async def subscribe(self, topic_filter: str, qos: int) -> Ack:
        """SUBSCRIBE one filter; the Ack holds the SUBACK return codes."""
        packet_id = self._next_id()
        fut = self._request(packet_id)
        self._channel.write(codec.encode(codec.Subscribe(packet_id, [(topic_filter, qos)])))
        suback = await fut
        assert isinstance(suback, codec.Suback)
        codes = list(suback.return_codes)
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
        self._channel.write(codec.encode(codec.Unsubscribe(packet_id, [topic_filter])))
        await fut
        return Ack(True, "UNSUBACK")

    async def publish(self, topic: str, payload: bytes, qos: int, retain: bool = False) -> Ack:
        """PUBLISH and complete the QoS flow (nothing, PUBACK, or PUBREC/PUBREL/PUBCOMP)."""
        if qos == 0:
            if self._inbox.error is not None:
                raise self._inbox.error
            self._channel.write(codec.encode(codec.Publish(topic, payload, 0, retain)))
            self.messages_sent += 1
            return Ack(True, "sent (QoS 0: no acknowledgement)", {"qos": 0})
        packet_id = self._next_id()
        fut = self._request(packet_id)
        self._channel.write(
            codec.encode(codec.Publish(topic, payload, qos, retain, packet_id=packet_id))
        )
        self.messages_sent += 1
        reply = await fut
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
