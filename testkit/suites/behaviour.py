"""What the edge does after the handshake: serve well, or misbehave as the case says.

:func:`play` looks at the device's first bytes: ``0x10`` (an MQTT CONNECT) goes to
:func:`_mqtt`, an HTTP method to :func:`_http`. Each logs every packet it reads or
writes on the connection's record, with times, so the verdict can show them.

MQTT goes through the edge's own codec (:mod:`edge.mqtt.codec`) at the level the
device's CONNECT asked for (3.1.1 or 5). The MQTT 5 behaviours advertise a limit in
CONNACK (Maximum Packet Size, Receive Maximum, Topic Alias Maximum, Server Keep Alive,
an Assigned Client Identifier) and answer a device that breaks it as a broker must
(DISCONNECT 0x95, 0x93, 0x94), or end the session with a server DISCONNECT and a
reason code (``server_disconnect``); to a 3.1.1 device they are a plain broker.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

from edge.mqtt import codec
from edge.mqtt.errors import MqttError
from edge.mqtt.properties import Properties
from edge.mqtt.reasons import reason_name
from testkit.suites.server import AppConn

__all__ = ["play"]

_HTTP_METHODS = (b"GET ", b"POST", b"PUT ", b"HEAD", b"DELE", b"PATC", b"OPTI")


async def play(conn: AppConn, first: bytes) -> None:
    """Play the armed case's behaviour on ``conn``, whose device just sent ``first``."""
    if first[:1] == b"\x10":
        conn.rec.protocol = "mqtt"
        await _mqtt(conn, first)
    elif first[:4] in _HTTP_METHODS:
        conn.rec.protocol = "https"
        await _http(conn, first)
    else:
        conn.rec.protocol = "unknown"
        conn.log("in", "unknown", first_bytes=first[:16].hex(" "))
        # Keep reading until the device goes: the verdict only needs "it sent bytes".
        while await _recv_or_none(conn, 5.0) is not None:
            pass


async def _recv_or_none(conn: AppConn, timeout: float) -> bytes | None:
    try:
        return await conn.recv(timeout)
    except TimeoutError:
        return None


def _props_detail(props: Properties | None) -> dict[str, Any]:
    # The MQTT 5 properties a verdict may rest on, under their property names.
    if props is None:
        return {}
    out: dict[str, Any] = {}
    for name in (
        "session_expiry_interval",
        "receive_maximum",
        "maximum_packet_size",
        "topic_alias_maximum",
        "topic_alias",
        "server_keep_alive",
        "assigned_client_identifier",
        "server_reference",
        "reason_string",
    ):
        value = getattr(props, name)
        if value is not None:
            out[name] = value
    return out


def _describe(pkt: codec.Packet) -> tuple[str, dict[str, Any]]:
    name = type(pkt).__name__.upper()
    detail: dict[str, Any] = {}
    if isinstance(pkt, codec.Connect):
        detail = {
            "client_id": pkt.client_id,
            "clean_session": pkt.clean_session,
            "keepalive": pkt.keepalive,
            "protocol_level": pkt.protocol_level,
        }
    elif isinstance(pkt, codec.Publish):
        detail = {
            "topic": pkt.topic,
            "qos": pkt.qos,
            "dup": pkt.dup,
            "packet_id": pkt.packet_id,
            "bytes": len(pkt.payload),
        }
    elif isinstance(pkt, codec.Subscribe):
        detail = {"packet_id": pkt.packet_id, "filters": [f for f, _ in pkt.topics]}
    elif isinstance(
        pkt, codec.Puback | codec.Pubrec | codec.Pubrel | codec.Pubcomp | codec.Unsubscribe
    ):
        detail = {"packet_id": pkt.packet_id}
    elif isinstance(pkt, codec.Connack):
        detail = {"session_present": pkt.session_present, "return_code": pkt.return_code}
    elif isinstance(pkt, codec.Suback):
        detail = {"packet_id": pkt.packet_id, "return_codes": pkt.return_codes}
    elif isinstance(pkt, codec.Disconnect):
        detail = {
            "reason_code": pkt.reason_code,
            "reason": reason_name(pkt.reason_code, codec.DISCONNECT),
        }
    props = getattr(pkt, "properties", None)
    detail.update(_props_detail(props if isinstance(props, Properties) else None))
    return name, detail


def _send(conn: AppConn, pkt: codec.Packet, level: int = 4) -> None:
    name, detail = _describe(pkt)
    conn.log("out", name, **detail)
    conn.send(codec.encode(pkt, level))


def _connack_properties(
    behaviour: str, params: dict[str, Any], connect: codec.Connect, state: dict[str, Any]
) -> Properties | None:
    """The CONNACK properties that advertise the case's limit (MQTT 5 behaviours)."""
    if behaviour == "max_packet_size":
        return Properties(maximum_packet_size=int(params.get("max_packet_size", 128)))
    if behaviour == "receive_maximum":
        return Properties(receive_maximum=int(params.get("receive_maximum", 2)))
    if behaviour == "topic_alias_maximum":
        maximum = int(params.get("topic_alias_maximum", 2))
        # Absent means 0 (3.2.2.3.8); a 0 is sent anyway, so the evidence shows it.
        return Properties(topic_alias_maximum=maximum)
    if behaviour == "server_keep_alive":
        return Properties(server_keep_alive=int(params.get("server_keep_alive", 2)))
    if behaviour == "assigned_client_id" and connect.client_id == "":
        assigned = state.setdefault("assigned", f"edgesim-assigned-{secrets.token_hex(4)}")
        return Properties(assigned_client_identifier=assigned)
    return None


async def _mqtt(conn: AppConn, data: bytes) -> None:
    rt = conn.rt
    case = rt.case
    behaviour = case.behaviour
    params = case.params
    state = rt.state
    parser = codec.Parser(server_side=True)
    first_conn = conn.rec.index == 1
    clean = True
    level = 4
    #: QoS 1/2 packet ids received and not acknowledged yet (receive_maximum).
    unacked: list[int] = []
    # Timers: (monotonic deadline, action name).
    timer: tuple[float, str] | None = None
    while True:
        try:
            packets = parser.feed(data)
        except MqttError as exc:
            conn.log("in", "MALFORMED", error=str(exc))
            conn.close()
            return
        for pkt in packets:
            name, detail = _describe(pkt)
            if not isinstance(pkt, codec.Connect):
                # The packet's size on the wire (the parser accepts only the minimal
                # encoding, so re-encoding gives the same length).
                detail["size"] = len(codec.encode(pkt, level))
            conn.log("in", name, **detail)
            limit = int(params.get("max_packet_size", 128))
            if behaviour == "max_packet_size" and level == 5 and detail.get("size", 0) > limit:
                state.setdefault(
                    "oversize", {"packet": name, "size": detail["size"], "t": rt.now()}
                )
                _send(conn, codec.Disconnect(0x95), level)  # Packet too large (3.14.2.1)
                conn.close()
                return
            if isinstance(pkt, codec.Connect):
                clean = pkt.clean_session
                level = pkt.protocol_level if pkt.protocol_level == 5 else 4
                state.setdefault("protocol_level", pkt.protocol_level)
                state.setdefault("asked_keepalive", pkt.keepalive)
                if behaviour == "server_keep_alive" and level == 5:
                    state.setdefault("keepalive", int(params.get("server_keep_alive", 2)))
                state.setdefault("keepalive", pkt.keepalive)
                if behaviour == "connack_withheld" and first_conn:
                    continue  # the point of the case: say nothing
                if behaviour == "connack_refused":
                    code = (
                        int(params.get("reason_code", 0x87))
                        if level == 5
                        else int(params.get("return_code", 5))
                    )
                    _send(conn, codec.Connack(False, code), level)
                    conn.close()
                    return
                present = not clean and (
                    behaviour == "session_present"
                    or (behaviour == "puback_withheld" and not first_conn)
                )
                props = _connack_properties(behaviour, params, pkt, state) if level == 5 else None
                _send(conn, codec.Connack(present, 0, props), level)
                state.setdefault("connack_t", rt.now())
                if behaviour == "close_after_connack":
                    conn.close()
                    return
                if behaviour == "server_disconnect":
                    timer = (time.monotonic() + float(params.get("after_s", 0.5)), "disconnect")
                if behaviour == "assigned_client_id" and first_conn and level == 5:
                    timer = (time.monotonic() + float(params.get("after_s", 1.0)), "drop")
                if behaviour == "session_present" and present:
                    topic = str(params.get("topic", "edgesim/suite/stored"))
                    state["stored_id"] = 7
                    _send(
                        conn,
                        codec.Publish(topic, b"stored while you were away", qos=1, packet_id=7),
                        level,
                    )
            elif isinstance(pkt, codec.Publish):
                alias = pkt.properties.topic_alias if pkt.properties is not None else None
                maximum = int(params.get("topic_alias_maximum", 2))
                if (
                    behaviour == "topic_alias_maximum"
                    and alias is not None
                    and not 0 < alias <= maximum
                ):
                    state.setdefault("bad_alias", {"alias": alias, "t": rt.now()})
                    _send(conn, codec.Disconnect(0x94), level)  # Topic Alias invalid
                    conn.close()
                    return
                if alias is not None:
                    state.setdefault("aliases", set()).add(alias)
                if pkt.qos == 0:
                    continue
                assert pkt.packet_id is not None
                if behaviour == "receive_maximum" and level == 5:
                    window = int(params.get("receive_maximum", 2))
                    if pkt.packet_id not in unacked:
                        unacked.append(pkt.packet_id)
                    state["qos_publishes"] = state.get("qos_publishes", 0) + 1
                    state["max_in_flight"] = max(state.get("max_in_flight", 0), len(unacked))
                    if len(unacked) > window:
                        state.setdefault("exceeded", {"in_flight": len(unacked), "t": rt.now()})
                        _send(conn, codec.Disconnect(0x93), level)  # Receive Maximum exceeded
                        conn.close()
                        return
                    if "released_t" not in state:
                        # Hold the acknowledgements so that the window fills up.
                        if timer is None:
                            timer = (
                                time.monotonic() + float(params.get("withhold_s", 2.0)),
                                "release",
                            )
                        continue
                    _ack(conn, pkt, level)
                    unacked.remove(pkt.packet_id)
                    continue
                if pkt.qos == 1 and behaviour == "puback_withheld" and first_conn:
                    if "withheld" not in state:
                        state["withheld"] = {
                            "packet_id": pkt.packet_id,
                            "topic": pkt.topic,
                            "t": rt.now(),
                        }
                        timer = (
                            time.monotonic() + float(params.get("withhold_s", 3.0)),
                            "drop",
                        )
                    continue
                _ack(conn, pkt, level)
            elif isinstance(pkt, codec.Pubrel):
                _send(conn, codec.Pubcomp(pkt.packet_id), level)
            elif isinstance(pkt, codec.Subscribe):
                if behaviour == "suback_failure":
                    _send(conn, codec.Suback(pkt.packet_id, [0x80] * len(pkt.topics)), level)
                else:
                    _send(
                        conn,
                        codec.Suback(pkt.packet_id, [min(q & 0x03, 2) for _, q in pkt.topics]),
                        level,
                    )
            elif isinstance(pkt, codec.Unsubscribe):
                codes = [0] * len(pkt.topics) if level == 5 else []
                _send(conn, codec.Unsuback(pkt.packet_id, codes), level)
            elif isinstance(pkt, codec.Pingreq):
                _send(conn, codec.Pingresp(), level)
            elif isinstance(pkt, codec.Disconnect):
                conn.close(by="device (DISCONNECT)")
                return
        wait: float | None = None
        if timer is not None:
            wait = max(0.0, timer[0] - time.monotonic())
        try:
            got = await conn.recv(wait)
        except TimeoutError:
            got = b""
            if timer is not None and time.monotonic() >= timer[0]:
                action = timer[1]
                timer = None
                if action == "drop":
                    # The withheld PUBACK (the device must reconnect and re-send with
                    # DUP, MQTT 3.1.1 4.4), or the assigned-id case's network failure.
                    conn.log("out", "CLOSE", reason=f"{behaviour}: the edge drops the connection")
                    conn.close(notify_peer=False)
                    return
                if action == "disconnect":
                    _server_disconnect(conn, params, level)
                    return
                if action == "release":
                    state["released_t"] = rt.now()
                    state["held_acks"] = len(unacked)
                    for packet_id in unacked:
                        _send(conn, codec.Puback(packet_id), level)
                    unacked.clear()
        if got is None:
            return
        data = got


def _ack(conn: AppConn, pkt: codec.Publish, level: int) -> None:
    assert pkt.packet_id is not None
    if pkt.qos == 1:
        _send(conn, codec.Puback(pkt.packet_id), level)
    else:
        _send(conn, codec.Pubrec(pkt.packet_id), level)


def _server_disconnect(conn: AppConn, params: dict[str, Any], level: int) -> None:
    """Send the case's DISCONNECT (MQTT 5) and close; a 3.1.1 device just sees the close."""
    rt = conn.rt
    code = int(params.get("reason_code", 0x8B))
    rt.state.setdefault("disconnect_t", rt.now())
    if level == 5:
        reference = params.get("server_reference")
        props = Properties(
            reason_string=f"edgesim suite: {reason_name(code, codec.DISCONNECT)}",
            server_reference=None
            if reference is None
            else str(reference).replace("{port}", str(conn.local_port)),
        )
        _send(conn, codec.Disconnect(code, props), level)
    else:
        conn.log("out", "CLOSE", reason="MQTT 3.1.1 has no server DISCONNECT")
    conn.close()


async def _http(conn: AppConn, data: bytes) -> None:
    rt = conn.rt
    buf = data
    while b"\r\n\r\n" not in buf:
        more = await _recv_or_none(conn, 10.0)
        if more is None:
            conn.log("in", "HTTP (incomplete)", bytes=len(buf))
            return
        buf += more
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, _, rest = lines[0].partition(" ")
    path = rest.rpartition(" ")[0]
    headers = {
        k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])
    }
    length = int(headers.get("content-length", "0") or 0)
    while len(body) < length:
        more = await _recv_or_none(conn, 10.0)
        if more is None:
            break
        body += more
    conn.log("in", "HTTP request", method=method, path=path, body_bytes=len(body))
    behaviour = rt.case.behaviour
    if behaviour == "http_503":
        after = int(rt.case.params.get("retry_after_s", 3))
        reply = (
            f"HTTP/1.1 503 Service Unavailable\r\nRetry-After: {after}\r\n"
            "Content-Length: 0\r\nConnection: close\r\n\r\n"
        ).encode()
        conn.log("out", "HTTP 503", retry_after_s=after)
        conn.send(reply)
        conn.close()
    elif behaviour == "http_close_mid_response":
        conn.log("out", "HTTP 200 (cut after 100 of 1000 body bytes)")
        conn.send(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: 1000\r\n\r\n"
            + b"x" * 100
        )
        # No close_notify: the edge "crashes" mid-response.
        conn.close(notify_peer=False)
    else:
        reply_body = b'{"ok": true}\n'
        conn.log("out", "HTTP 200")
        conn.send(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
            + f"Content-Length: {len(reply_body)}\r\n\r\n".encode()
            + reply_body
        )
        conn.close()
