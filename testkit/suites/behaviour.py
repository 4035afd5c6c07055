"""What the edge does after the handshake: serve well, or misbehave as the case says.

:func:`play` looks at the device's first bytes: ``0x10`` (an MQTT CONNECT) goes to
:func:`_mqtt`, an HTTP method to :func:`_http`. Each logs every packet it reads or
writes on the connection's record, with times, so the verdict can show them.

MQTT here is 3.1.1 through the edge's own codec (:mod:`edge.mqtt.codec`). The MQTT 5
cases (Maximum Packet Size, server DISCONNECT with a reason) will be added here as new
behaviour names once that codec speaks MQTT 5.
"""

from __future__ import annotations

import time
from typing import Any

from edge.mqtt import codec
from edge.mqtt.errors import MqttError
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


def _describe(pkt: codec.Packet) -> tuple[str, dict[str, Any]]:
    name = type(pkt).__name__.upper()
    detail: dict[str, Any] = {}
    if isinstance(pkt, codec.Connect):
        detail = {
            "client_id": pkt.client_id,
            "clean_session": pkt.clean_session,
            "keepalive": pkt.keepalive,
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
    return name, detail


def _send(conn: AppConn, pkt: codec.Packet) -> None:
    name, detail = _describe(pkt)
    conn.log("out", name, **detail)
    conn.send(codec.encode(pkt))


async def _mqtt(conn: AppConn, data: bytes) -> None:
    rt = conn.rt
    case = rt.case
    behaviour = case.behaviour
    params = case.params
    state = rt.state
    parser = codec.Parser(server_side=True)
    first_conn = conn.rec.index == 1
    clean = True
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
            conn.log("in", name, **detail)
            if isinstance(pkt, codec.Connect):
                clean = pkt.clean_session
                state.setdefault("keepalive", pkt.keepalive)
                if behaviour == "connack_withheld" and first_conn:
                    continue  # the point of the case: say nothing
                if behaviour == "connack_refused":
                    _send(conn, codec.Connack(False, int(params.get("return_code", 5))))
                    conn.close()
                    return
                present = not clean and (
                    behaviour == "session_present"
                    or (behaviour == "puback_withheld" and not first_conn)
                )
                _send(conn, codec.Connack(present, 0))
                if behaviour == "close_after_connack":
                    conn.close()
                    return
                if behaviour == "session_present" and present:
                    topic = str(params.get("topic", "edgesim/suite/stored"))
                    state["stored_id"] = 7
                    _send(
                        conn,
                        codec.Publish(topic, b"stored while you were away", qos=1, packet_id=7),
                    )
            elif isinstance(pkt, codec.Publish):
                if pkt.qos == 1:
                    if behaviour == "puback_withheld" and first_conn:
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
                    assert pkt.packet_id is not None
                    _send(conn, codec.Puback(pkt.packet_id))
                elif pkt.qos == 2:
                    assert pkt.packet_id is not None
                    _send(conn, codec.Pubrec(pkt.packet_id))
            elif isinstance(pkt, codec.Pubrel):
                _send(conn, codec.Pubcomp(pkt.packet_id))
            elif isinstance(pkt, codec.Subscribe):
                if behaviour == "suback_failure":
                    _send(conn, codec.Suback(pkt.packet_id, [0x80] * len(pkt.topics)))
                else:
                    _send(conn, codec.Suback(pkt.packet_id, [min(q, 2) for _, q in pkt.topics]))
            elif isinstance(pkt, codec.Unsubscribe):
                _send(conn, codec.Unsuback(pkt.packet_id))
            elif isinstance(pkt, codec.Pingreq):
                _send(conn, codec.Pingresp())
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
                # The withheld PUBACK: drop the connection so the device must
                # reconnect and re-send with DUP (MQTT 3.1.1 section 4.4).
                conn.log("out", "CLOSE", reason="PUBACK withheld; edge drops the connection")
                conn.close(notify_peer=False)
                return
        if got is None:
            return
        data = got


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
