"""Instructions the edge spends per mTLS connect, counted by callgrind: repeatable where timings are not.

``python -m bench.connect_cost [--connects N] [--server edge|bare] [--capture chain|tap|off]
[--server-certs N [--ca-names]]``
re-runs itself under ``valgrind --tool=callgrind`` and prints the instructions
executed on the server side per connect (TLS handshake, CONNECT/CONNACK,
DISCONNECT, close), averaged over N connects after a warm-up.

The server is the edge's real TLS endpoint and MQTT broker (``EdgeServer``,
default configuration, ``--policy open``) fed in process through a transport
double, with a client ``ssl.SSLObject`` on the other side; ``--server bare`` is
the least a Python MemoryBIO server can do per connect (handshake, CONNACK,
close), the floor the edge's own work adds to. ``--server-certs N`` deploys N
server certificates (``host0.example.com`` ... each its own, issued by the same
intermediate as the default one) before the edge starts, and the device connects
with the SNI of the middle one: the cost of selecting a server certificate by
SNI, against the default run where ``localhost`` resolves through the default
binding. They are deployed without CA names unless ``--ca-names`` is given, so
the difference is the selection, not the bigger CertificateRequest. Every call into the server goes
through ``functools.reduce``, and callgrind collects only inside that C function
(``--toggle-collect``), so the client's work is not counted.

Counts are not times: a Python instruction costs more than one of OpenSSL's on
a loaded machine (cache misses), so ``python -m bench --only broker`` stays the
measure of record; this tool tells whether a change to the connect path adds or
removes work, within a few thousand instructions, on a shared noisy machine.
Needs valgrind (Debian's package); a run of 60 connects takes about a minute.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["main"]

_MARK = "EDGESIM_CONNECT_COST_CHILD"
_CONNACK = b"\x20\x02\x00\x00"


def _call(_: object, item: tuple[Callable[..., Any], tuple[Any, ...]]) -> Any:
    fn, args = item
    return fn(*args)


def _server_call(fn: Callable[..., Any], *args: Any) -> Any:
    """Call ``fn`` inside ``functools.reduce``: the C function callgrind counts in."""
    return functools.reduce(_call, [(fn, args)], None)


def _connect_packet(client_id: str) -> bytes:
    cid = client_id.encode()
    body = b"\x00\x04MQTT\x04\x02\x00\x00" + len(cid).to_bytes(2, "big") + cid
    return bytes([0x10, len(body)]) + body


class _Transport:
    """What the server writes to: kept for the client; close() reports the loss."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.out: list[bytes] = []
        self.closing = False
        self.protocol: asyncio.Protocol | None = None
        self._loop = loop

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.out.append(bytes(data))

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        if not self.closing and self.protocol is not None:
            self.closing = True
            self._loop.call_soon(_server_call, self.protocol.connection_lost, None)

    def abort(self) -> None:
        self.close()

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def is_reading(self) -> bool:
        return True

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0


class _BareServer(asyncio.Protocol):
    """The least a MemoryBIO mTLS MQTT server does per connect (the floor)."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self._context = context
        self._handshaking = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport: Any = transport
        self._in, self._out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self._ssl = self._context.wrap_bio(self._in, self._out, server_side=True)

    def data_received(self, data: bytes) -> None:
        self._in.write(data)
        if self._handshaking:
            try:
                self._ssl.do_handshake()
                self._handshaking = False
                self._ssl.getpeercert(binary_form=True)
            except ssl.SSLWantReadError:
                pass
        if not self._handshaking:
            try:
                while self._in.pending:
                    chunk = self._ssl.read(65536)
                    if chunk[:1] == b"\x10":
                        self._ssl.write(_CONNACK)
                    elif chunk[:1] == b"\xe0" or not chunk:
                        self._transport.close()
                        break
            except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
                pass
        if self._out.pending:
            self._transport.write(self._out.read())

    def connection_lost(self, exc: Exception | None) -> None:
        pass


async def _drive(
    connects: int,
    warmup: int,
    server: str,
    capture: str,
    server_certs: int = 0,
    ca_names: bool = False,
    persistence: str = "on",
) -> None:
    with tempfile.TemporaryDirectory(prefix="edgesim-cost-") as tmp:
        await _drive_in(
            Path(tmp), connects, warmup, server, capture, server_certs, ca_names, persistence
        )


def _deploy_server_certs(store_path: Path, pki: Path, count: int, ca_names: bool) -> str:
    """Deploy ``count`` server certificates; return the SNI of the middle one."""
    from certs.authority import CertificateAuthority
    from edge.trust.sqlite import SqliteTrustStore

    ca = CertificateAuthority.load(pki / "intermediate-ca.pem", pki / "intermediate-ca.key")
    with SqliteTrustStore(store_path) as store:
        for i in range(count):
            issued = ca.issue_server([f"host{i}.example.com"])
            store.upload_server_cert(f"host{i}", issued.fullchain_pem, issued.key_pem())
            # No set named: the default binding's set (seeded at start) verifies devices.
            store.deploy(f"host{i}", {"send_ca_names": ca_names})
    return f"host{count // 2}.example.com"


async def _drive_in(
    work: Path,
    connects: int,
    warmup: int,
    server: str,
    capture: str,
    server_certs: int = 0,
    ca_names: bool = False,
    persistence: str = "on",
) -> None:
    from dataclasses import replace

    from certs.quickstart import quickstart
    from edge.cli import build_parser
    from edge.server import EdgeServer
    from edge.server_cli import build_config

    pki = quickstart(work / "pki", devices=1).out
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.load_verify_locations(cafile=str(pki / "root-ca.pem"))
    client_ctx.load_cert_chain(
        str(pki / "devices" / "dev-00000.pem"), str(pki / "devices" / "dev-00000.key")
    )
    # The configuration `edgesim edge serve` builds, as the broker benchmark runs it.
    serve = ["edge", "serve", "--pki", str(pki), "--mqtt", "127.0.0.1:0", "--https", "off"]
    serve += ["--multi", "off", "--admin", "off", "--policy", "open"]
    serve += ["--state-dir", str(work / "state"), "--persistence", persistence]
    config = build_config(build_parser().parse_args(serve))
    config = replace(config, tls=replace(config.tls, capture_tls13_certificates=capture != "off"))
    sni = "localhost"
    if server_certs:
        sni = _deploy_server_certs(config.store_path, pki, server_certs, ca_names)
    if capture == "tap":
        from edge.tls import verifiedchain

        verifiedchain.disable()
    edge = EdgeServer(config)
    await edge.start()
    loop = asyncio.get_running_loop()
    _count_scheduled_callbacks(loop)
    factory: Callable[[], asyncio.Protocol]
    if server == "bare":
        bare_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        bare_ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        bare_ctx.num_tickets = 0
        bare_ctx.load_cert_chain(str(pki / "server.pem"), str(pki / "server.key"))
        bare_ctx.verify_mode = ssl.CERT_REQUIRED
        bare_ctx.load_verify_locations(cafile=str(pki / "ca-chain.pem"))
        factory = functools.partial(_BareServer, bare_ctx)
    else:
        factory = edge.endpoints["mqtt"].protocol_factory
    try:
        for i in range(warmup + connects):
            if i == warmup:
                _callgrind("-z")  # count the measured connects only
            await _one(loop, factory, client_ctx, f"c{i}", sni)
        _callgrind("-d")
    finally:
        await edge.close()


def _count_scheduled_callbacks(loop: asyncio.AbstractEventLoop) -> None:
    """Route what the server schedules with call_soon through the counted trampoline.

    Task steps (this driver's own coroutine) are left out: they are not the server's.
    """
    call_soon = loop.call_soon

    def counted(callback: Callable[..., Any], *args: Any, context: Any = None) -> Any:
        if type(callback).__name__ == "TaskStepMethWrapper" or isinstance(
            getattr(callback, "__self__", None), asyncio.Future
        ):
            return call_soon(callback, *args, context=context)
        return call_soon(functools.partial(_server_call, callback, *args), context=context)

    loop.call_soon = counted  # type: ignore[method-assign,assignment]


async def _one(
    loop: asyncio.AbstractEventLoop,
    factory: Callable[[], asyncio.Protocol],
    client_ctx: ssl.SSLContext,
    client_id: str,
    sni: str = "localhost",
) -> None:
    transport = _Transport(loop)
    c_in, c_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=sni)
    protocol = _server_call(factory)
    transport.protocol = protocol
    _server_call(protocol.connection_made, transport)

    async def deliver(data: bytes) -> None:
        if data:
            _server_call(protocol.data_received, data)
        await asyncio.sleep(0)  # one loop turn: callbacks the server scheduled run
        for chunk in transport.out:
            c_in.write(chunk)
        transport.out.clear()

    for _ in range(4):
        try:
            client.do_handshake()
            client.write(_connect_packet(client_id))
            await deliver(c_out.read())
            break
        except ssl.SSLWantReadError:
            await deliver(c_out.read())
    reply = b""
    for _ in range(4):
        try:
            reply += client.read(64)
        except ssl.SSLWantReadError:
            await deliver(b"")
            continue
        break
    if reply[:1] != b"\x20":
        raise RuntimeError(f"no CONNACK: {reply!r}")
    client.write(b"\xe0\x00")  # DISCONNECT, then close_notify
    with contextlib.suppress(ssl.SSLWantReadError):
        client.unwrap()  # queues close_notify; the server's answer is not awaited
    await deliver(c_out.read())
    if not transport.closing:
        _server_call(protocol.eof_received)
        transport.close()
    await deliver(b"")


def _callgrind(flag: str) -> None:
    """Zero (-z) or dump (-d) this process's callgrind counters; a no-op outside callgrind."""
    if os.environ.get(_MARK):
        subprocess.run(
            ["callgrind_control", flag, str(os.getpid())], check=True, capture_output=True
        )


def _measured(out_dir: Path) -> int:
    dumps = sorted(out_dir.glob("callgrind.out.*"))
    # The dump requested after the measured connects is the second file (.1):
    # the first (no suffix) is written when the process exits.
    for path in dumps:
        if path.suffix == ".1":
            for line in path.read_text().splitlines():
                if line.startswith("summary:"):
                    return int(line.split()[1])
    raise RuntimeError(f"no callgrind dump of the measured connects in {out_dir}")


def main(argv: list[str] | None = None) -> int:
    """Run the measurement under callgrind and print instructions per connect."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.connect_cost", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--connects", type=int, default=60, help="measured connects (60)")
    parser.add_argument("--warmup", type=int, default=20, help="connects before counting (20)")
    parser.add_argument("--server", choices=("edge", "bare"), default="edge")
    parser.add_argument(
        "--capture",
        choices=("chain", "tap", "off"),
        default="chain",
        help="how a refused TLS 1.3 device is named: OpenSSL's verified chain (the default), "
        "the key log tap (the fallback where that chain cannot be read), or not at all",
    )
    parser.add_argument(
        "--server-certs",
        type=int,
        default=0,
        metavar="N",
        help="deploy N server certificates and connect with the SNI of one (0: none)",
    )
    parser.add_argument(
        "--ca-names",
        action="store_true",
        help="with --server-certs: send the set's CA names in the CertificateRequest",
    )
    parser.add_argument(
        "--persistence",
        choices=("on", "off"),
        default="on",
        help="the edge's durable MQTT state (on by default; the connects are clean sessions)",
    )
    args = parser.parse_args(argv)
    if os.environ.get(_MARK):
        asyncio.run(
            _drive(
                args.connects,
                args.warmup,
                args.server,
                args.capture,
                args.server_certs,
                args.ca_names,
                args.persistence,
            )
        )
        return 0
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("error: valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="edgesim-callgrind-") as tmp:
        out = Path(tmp)
        cmd = [
            "valgrind",
            "--tool=callgrind",
            "--collect-atstart=no",
            "--toggle-collect=functools_reduce",
            f"--callgrind-out-file={out / 'callgrind.out'}",
            sys.executable,
            "-m",
            "bench.connect_cost",
            *(argv if argv is not None else sys.argv[1:]),
        ]
        root = Path(__file__).resolve().parents[1]
        env = dict(os.environ, **{_MARK: "1"})
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
        done = subprocess.run(cmd, env=env, cwd=root, capture_output=True, check=False)
        if done.returncode != 0:
            sys.stderr.write(done.stderr.decode(errors="replace")[-3000:])
            return 1
        total = _measured(out)
    per = total / args.connects
    certs = ""
    if args.server_certs:
        certs = f", {args.server_certs} server certificates" + (
            " with CA names" if args.ca_names else ""
        )
    print(
        f"{args.server} (capture {args.capture}{certs}, persistence {args.persistence}):"
        f" {per:,.0f} instructions per connect "
        f"on the server side ({args.connects} connects after {args.warmup} of warm-up)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
