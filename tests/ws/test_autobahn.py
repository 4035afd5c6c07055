"""The Autobahn WebSocket cases (through kosoku) against the edge and against websockets.

The edge's WebSocket framing is driven through a test-only echo route
(:meth:`edge.http.device.DeviceFrontend.add_ws_route`) on the real HTTPS listener,
with mutual TLS: kosoku speaks plain ``ws://``, so a small bridge here accepts its
connections on loopback and carries each one over TLS with a device certificate.
The same cases run side by side against a plain ``websockets`` echo server. The
rule: the edge fails no case that websockets passes.

Left out: 9.* (performance: messages up to 16 MiB, over the edge's 256 KiB
message limit, and minutes of run time) and 12.*/13.* (permessage-deflate, which
neither side here negotiates: every case would be "unimplemented" on both).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from kosoku import FailureError, run_fuzzingclient
from runreport import print_counts
from websockets.asyncio.server import ServerConnection, serve

from certs.quickstart import QuickstartResult, quickstart
from edge.config import EdgeConfig, HostPort, ListenersConfig, TrustConfig
from edge.core.session import SessionInfo
from edge.server import EdgeServer
from edge.ws.endpoint import WsRoute, WsSender

CASES = ["1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "10.*"]
#: Cases run at once by kosoku (bounded: the machine is shared).
CONCURRENCY = 4
#: The whole run of one side, at most.
RUN_SECONDS = 300
ECHO_PATH = "/autobahn-echo"


class EchoApp:
    """Sends every whole message back as it came (text as text, binary as binary)."""

    def __init__(self, sender: WsSender) -> None:
        self._sender = sender

    def on_message(self, data: bytes, text: bool, fin: bool) -> None:
        if text:
            self._sender.send_text(data.decode("utf-8"))
        else:
            self._sender.send_binary(data)

    def on_writable(self) -> None:
        """Nothing is queued here: the transport buffers."""

    def on_closed(self, code: int, reason: str) -> None:
        """Nothing to clean up."""


#: Identities of the devices whose WebSocket reached the echo (through TLS and the edge).
OPENED: list[str] = []


def echo_app(session: SessionInfo, sender: WsSender, subprotocol: str | None) -> EchoApp:
    OPENED.append(str(session.identity))
    return EchoApp(sender)


@pytest.fixture(scope="module")
def qs(tmp_path_factory: pytest.TempPathFactory) -> QuickstartResult:
    return quickstart(tmp_path_factory.mktemp("qs") / "pki", devices=1)


@contextlib.asynccontextmanager
async def tls_bridge(port: int, qs: QuickstartResult) -> AsyncIterator[int]:
    """Plain TCP on loopback -> mutual TLS to ``port``, one TLS connection per client."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=str(qs.root_cert))
    device = qs.devices_dir / "dev-00000"
    ctx.load_cert_chain(f"{device}.pem", f"{device}.key")

    async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, ssl.SSLError, OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        # One side ended: end the other at once (TLS cannot half-close), so that
        # the close behaviour kosoku measures is the edge's, not the bridge's.
        writer.close()

    async def carry(c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        try:
            e_reader, e_writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=ctx, server_hostname="localhost"
            )
        except (OSError, ssl.SSLError):
            c_writer.close()
            return
        await asyncio.gather(pump(c_reader, e_writer), pump(e_reader, c_writer))

    server = await asyncio.start_server(carry, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


async def run_cases(url: str) -> dict[str, tuple[bool, str]]:
    """Case id -> (passed, behaviour) for every case of :data:`CASES` against ``url``."""
    try:
        results = await asyncio.wait_for(
            run_fuzzingclient(url, CASES, concurrency=CONCURRENCY), RUN_SECONDS
        )
    except FailureError as failure:
        results = failure.results
    return {r.case_id: (r.passed, r.behavior.value) for r in results}


@pytest.mark.timeout(2 * RUN_SECONDS + 60)
async def test_edge_fails_no_autobahn_case_that_websockets_passes(
    tmp_path: Path, qs: QuickstartResult, request: pytest.FixtureRequest
) -> None:
    async def echo(ws: ServerConnection) -> None:
        async for message in ws:
            await ws.send(message)

    async with serve(echo, "127.0.0.1", 0, max_size=2**20, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        reference = await run_cases(f"ws://127.0.0.1:{port}{ECHO_PATH}")

    any_port = HostPort(host="127.0.0.1", port=0)
    cfg = EdgeConfig(
        state_dir=tmp_path / "state",
        listeners=ListenersConfig(mqtt=None, https=any_port, admin=None),
        trust=TrustConfig(store=tmp_path / "trust.db", watch_interval=None),
        pki_dir=qs.out,
        policy="open",
    )
    OPENED.clear()
    async with EdgeServer(cfg) as edge:
        edge.device_frontend.add_ws_route(ECHO_PATH, WsRoute(name="echo", app=echo_app))
        async with tls_bridge(edge.ports["https"], qs) as bridge_port:
            results = await run_cases(f"ws://127.0.0.1:{bridge_port}{ECHO_PATH}")

    assert len(reference) > 200, f"only {len(reference)} cases ran against websockets"
    assert set(results) == set(reference)
    # The cases went through the edge's TLS listener (with the device's certificate)
    # and its WebSocket layer to the echo.
    assert len(OPENED) >= len(results)
    assert set(OPENED) == {"default/dev-00000"}
    regressions = sorted(case for case, (ok, _) in results.items() if not ok and reference[case][0])
    lines = [
        f"autobahn (kosoku, {len(results)} cases {' '.join(CASES)}): "
        f"edge passed {sum(ok for ok, _ in results.values())}, "
        f"websockets passed {sum(ok for ok, _ in reference.values())}, "
        f"edge fails where websockets passes: {len(regressions)}",
    ]
    for case, (ok, behaviour) in sorted(results.items()):
        if not ok:
            lines.append(f"  edge {case}: {behaviour} (websockets: {reference[case][1]})")
    print_counts(request, lines)
    assert not regressions, regressions
