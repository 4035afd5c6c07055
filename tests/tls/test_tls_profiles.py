"""``[tls] profile``: Mozilla's modern, intermediate and old configurations, checked by sslyze.

sslyze 6.3 (its own venv, ``.venv-sslyze``: see the Makefile) scans the edge's MQTT
and HTTPS listeners with a device certificate and checks the result against
Mozilla's intermediate configuration (guidelines 5.7). A plain OpenSSL-default
server on the same certificates is scanned too and must fail the check, so the
check is known to bite. Client-initiated renegotiation is attempted for real with
``openssl s_client -tls1_2`` and its ``R`` command, against the edge and against a
control server that allows it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from runreport import print_counts

from certs.quickstart import QuickstartResult, quickstart
from edge.config import (
    EdgeConfig,
    EdgeConfigError,
    HostPort,
    ListenersConfig,
    TlsConfig,
    TrustConfig,
    load_config,
)
from edge.server import EdgeServer
from edge.tls import canames
from edge.tls.contexts import ContextCache, TlsSettings
from edge.tls.errors import TlsConfigError
from edge.tls.profiles import PROFILES

ROOT = Path(__file__).resolve().parents[2]
SSLYZE = Path(os.environ.get("EDGESIM_SSLYZE", ROOT / ".venv-sslyze" / "bin" / "sslyze"))
#: Mozilla 5.7's intermediate TLS 1.2 suites (IANA names), as sslyze reports them.
INTERMEDIATE_IANA = {
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_DHE_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_DHE_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_DHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
}
#: SSL_OP_ALLOW_CLIENT_RENEGOTIATION (OpenSSL 3.0), which Python's ssl does not name.
ALLOW_CLIENT_RENEGOTIATION = 0x100


@pytest.fixture(scope="module")
def qs(tmp_path_factory: pytest.TempPathFactory) -> QuickstartResult:
    """A quickstart PKI: ECDSA P-256 server certificate for 366 days, one device."""
    return quickstart(tmp_path_factory.mktemp("qs") / "pki", devices=1)


def sslyze() -> Path:
    if not SSLYZE.exists():
        pytest.fail(
            f"sslyze not found at {SSLYZE}: run `make tls-audit-venv` (or set EDGESIM_SSLYZE)"
        )
    return SSLYZE


@contextlib.asynccontextmanager
async def running_edge(
    tmp_path: Path, qs: QuickstartResult, profile: str = "intermediate"
) -> AsyncIterator[dict[str, int]]:
    any_port = HostPort(host="127.0.0.1", port=0)
    cfg = EdgeConfig(
        state_dir=tmp_path / "state",
        listeners=ListenersConfig(mqtt=any_port, https=any_port, admin=None),
        trust=TrustConfig(store=tmp_path / "trust.db", watch_interval=None),
        pki_dir=qs.out,
        policy="open",
        tls=TlsConfig(profile=profile),
    )
    async with EdgeServer(cfg) as edge:
        yield dict(edge.ports)


@contextlib.asynccontextmanager
async def stdlib_server(ctx: ssl.SSLContext) -> AsyncIterator[int]:
    """An echo server on ``ctx`` (the control: OpenSSL's and Python's defaults)."""

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            while data := await reader.read(1024):
                writer.write(data)
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0, ssl=ctx)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


async def run_sslyze(
    qs: QuickstartResult, ports: list[int], out: Path, config: str = "intermediate"
) -> tuple[int, str, dict[str, object]]:
    device = qs.devices_dir / "dev-00000"
    proc = await asyncio.create_subprocess_exec(
        str(sslyze()),
        f"--mozilla_config={config}",
        "--cert",
        f"{device}.pem",
        "--key",
        f"{device}.key",
        "--certinfo_ca_file",
        str(qs.root_cert),
        "--json_out",
        str(out),
        *(f"127.0.0.1:{port}" for port in ports),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    stdout, _ = await asyncio.wait_for(proc.communicate(), 150)
    assert proc.returncode is not None
    report = json.loads(await asyncio.to_thread(out.read_text))
    return proc.returncode, stdout.decode(errors="replace"), report


def accepted(result: dict[str, object], field: str) -> set[str]:
    scan = result["scan_result"]
    assert isinstance(scan, dict)
    suites = scan[field]["result"]["accepted_cipher_suites"]
    return {s["cipher_suite"]["name"] for s in suites}


@pytest.mark.timeout(240)
async def test_sslyze_finds_both_listeners_compliant_with_mozilla_intermediate(
    tmp_path: Path, qs: QuickstartResult, request: pytest.FixtureRequest
) -> None:
    async with running_edge(tmp_path, qs) as ports:
        targets = [ports["mqtt"], ports["https"]]
        rc, text, report = await run_sslyze(qs, targets, tmp_path / "edge.json")
    assert rc == 0, text[-3000:]
    results = report["server_scan_results"]
    assert isinstance(results, list)
    assert len(results) == 2
    lines = []
    for result, name in zip(results, ("mqtt", "https"), strict=True):
        assert result["scan_status"] == "COMPLETED", result.get("connectivity_error_trace")
        tls12 = accepted(result, "tls_1_2_cipher_suites")
        tls13 = accepted(result, "tls_1_3_cipher_suites")
        # Scanned with the device certificate: the handshakes really completed.
        assert tls12
        assert tls13
        assert tls12 <= INTERMEDIATE_IANA
        assert not any("CBC" in s for s in tls12)
        for old in ("ssl_2_0", "ssl_3_0", "tls_1_0", "tls_1_1"):
            assert not accepted(result, f"{old}_cipher_suites")
        curves = result["scan_result"]["elliptic_curves"]["result"]
        supported = {c["name"] for c in curves["supported_curves"]}
        assert supported == {"X25519", "secp256r1", "secp384r1"}  # secp256r1: P-256
        reneg = result["scan_result"]["session_renegotiation"]["result"]
        assert reneg["is_vulnerable_to_client_renegotiation_dos"] is False
        lines.append(
            f"sslyze intermediate {name}: compliant; TLS 1.2 suites {len(tls12)}, "
            f"TLS 1.3 suites {len(tls13)}, groups {len(supported)} "
            f"({', '.join(sorted(supported))}), TLS <= 1.1 suites 0"
        )
    assert text.count("OK - Compliant.") == 2
    print_counts(request, lines)


@pytest.mark.timeout(240)
async def test_sslyze_fails_openssls_defaults_so_the_check_can_fail(
    tmp_path: Path, qs: QuickstartResult, request: pytest.FixtureRequest
) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(qs.server_cert), str(qs.server_key))
    async with stdlib_server(ctx) as port:
        rc, text, report = await run_sslyze(qs, [port], tmp_path / "default.json")
    assert rc != 0
    assert "FAILED - Not compliant" in text
    # What the profile removes: CBC suites in TLS 1.2, and the groups X448 and P-521.
    assert "CBC" in text
    assert "X448" in text
    assert "secp521r1" in text
    results = report["server_scan_results"]
    assert isinstance(results, list)
    tls12 = accepted(results[0], "tls_1_2_cipher_suites")
    print_counts(
        request,
        [
            f"sslyze intermediate control (OpenSSL defaults): not compliant; TLS 1.2 suites {len(tls12)}, "
            f"{len(tls12 - INTERMEDIATE_IANA)} outside Mozilla's list"
        ],
    )


def handshake(server: ssl.SSLContext, client: ssl.SSLContext) -> ssl.SSLObject:
    """Drive a handshake in memory; returns the client's SSLObject (raises on failure)."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    cli = client.wrap_bio(c_in, c_out, server_hostname="localhost")
    srv = server.wrap_bio(s_in, s_out, server_side=True)
    done = {"c": False, "s": False}
    for _ in range(20):
        for key, obj, out, peer_in in (("c", cli, c_out, s_in), ("s", srv, s_out, c_in)):
            if not done[key]:
                with contextlib.suppress(ssl.SSLWantReadError):
                    obj.do_handshake()
                    done[key] = True
            peer_in.write(out.read())
        if done["c"] and done["s"]:
            return cli
    raise AssertionError("handshake did not finish")


def client_context(qs: QuickstartResult, version: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=str(qs.root_cert))
    device = qs.devices_dir / "dev-00000"
    ctx.load_cert_chain(f"{device}.pem", f"{device}.key")
    if version is not None:
        ctx.minimum_version = ctx.maximum_version = version
    return ctx


class ActiveSet:
    """The trust set the context verifies devices against (the quickstart chain)."""

    def __init__(self, qs: QuickstartResult) -> None:
        self.name = "default"
        self.version = 1
        self.ca_pem = qs.ca_chain.read_bytes()
        self.crl_pem = b""


@pytest.mark.timeout(30)
@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_each_profile_sets_versions_suites_groups_and_order(
    qs: QuickstartResult, profile: str
) -> None:
    cache = ContextCache(
        TlsSettings(cert_file=qs.server_cert, key_file=qs.server_key, profile=profile)
    )
    ctx = cache.build(ActiveSet(qs))
    spec = PROFILES[profile]
    assert ctx.minimum_version == spec.minimum_version
    assert ctx.options & ssl.OP_NO_RENEGOTIATION
    assert bool(ctx.options & ssl.OP_CIPHER_SERVER_PREFERENCE) == spec.server_preference
    names = {c["name"] for c in ctx.get_ciphers() if c["protocol"] != "TLSv1.3"}
    cbc = {c["name"] for c in ctx.get_ciphers() if "Enc=AES(" in c["description"]}
    if profile == "old":
        assert cbc  # the old profile exists for clients that need CBC suites
    else:
        assert not cbc
        assert names <= set(spec.ciphers.split(":"))
    # The groups list: a device offering only X448 (or P-521) is refused, P-256 is served.
    for group, ok in (("X448", False), ("P-521", False), ("P-256", True), ("X25519", True)):
        client = client_context(qs)
        assert canames.set_groups_list(client, group)
        if ok:
            assert handshake(ctx, client).version() in ("TLSv1.3", "TLSv1.2")
        else:
            with pytest.raises(ssl.SSLError):
                handshake(ctx, client)
    # Protocol versions: modern refuses TLS 1.2; the others serve it.
    if profile == "modern":
        with pytest.raises(ssl.SSLError):
            handshake(ctx, client_context(qs, ssl.TLSVersion.TLSv1_2))
    else:
        assert handshake(ctx, client_context(qs, ssl.TLSVersion.TLSv1_2)).version() == "TLSv1.2"


@pytest.mark.timeout(30)
def test_profile_names_and_minimum_versions_are_checked(
    tmp_path: Path, qs: QuickstartResult
) -> None:
    with pytest.raises(
        TlsConfigError, match=r"unknown TLS profile 'strict'.*modern, intermediate, old"
    ):
        ContextCache(
            TlsSettings(cert_file=qs.server_cert, key_file=qs.server_key, profile="strict")
        )
    toml = tmp_path / "edge.toml"
    toml.write_text('[tls]\nprofile = "fast"\n')
    with pytest.raises(EdgeConfigError, match=r"\[tls\]\.profile: unknown TLS profile 'fast'"):
        load_config(toml)
    toml.write_text('[tls]\nprofile = "modern"\nminimum_version = "1.2"\n')
    with pytest.raises(EdgeConfigError, match=r"minimum_version: '1.2' is below profile modern's"):
        load_config(toml)
    toml.write_text('[tls]\nprofile = "old"\nminimum_version = "1.2"\n')
    cfg = load_config(toml)
    assert cfg.tls.profile == "old"
    assert cfg.tls.minimum_version is ssl.TLSVersion.TLSv1_2
    assert EdgeConfig().tls.profile == "intermediate"


async def attempt_renegotiation(port: int, qs: QuickstartResult) -> tuple[bool, str]:
    """``openssl s_client -tls1_2``, then ``R``: True when a second handshake completed.

    Waits on s_client's own output (end of the first handshake, then the outcome of
    the renegotiation), never on the clock.
    """
    device = qs.devices_dir / "dev-00000"
    proc = await asyncio.create_subprocess_exec(
        "openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-tls1_2",
        "-cert", f"{device}.pem", "-key", f"{device}.key", "-CAfile", str(qs.root_cert),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    assert proc.stdin is not None
    assert proc.stdout is not None
    seen: list[str] = []

    async def until(*marks: str) -> str:
        assert proc.stdout is not None
        while line := (await proc.stdout.readline()).decode(errors="replace"):
            seen.append(line)
            for mark in marks:
                if mark in line:
                    return mark
        return ""

    try:
        # "Verify return code" closes s_client's report of the first handshake.
        assert await asyncio.wait_for(until("Verify return code"), 20), "".join(seen)
        proc.stdin.write(b"R\n")
        await proc.stdin.drain()
        assert await asyncio.wait_for(until("RENEGOTIATING"), 20), "".join(seen)
        # A second handshake prints the chain again ("depth=0"); a refusal, an error.
        outcome = await asyncio.wait_for(until("depth=0", ":error:", "errno="), 20)
        return outcome == "depth=0", "".join(seen)
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


@pytest.mark.timeout(90)
async def test_client_initiated_renegotiation_is_refused(
    tmp_path: Path, qs: QuickstartResult, request: pytest.FixtureRequest
) -> None:
    async with running_edge(tmp_path, qs) as ports:
        results = {}
        for name in ("mqtt", "https"):
            renegotiated, log = await attempt_renegotiation(ports[name], qs)
            assert not renegotiated, log
            assert "no renegotiation" in log, log
            results[name] = renegotiated
    # The control: the edge's own context with the protection taken off (and OpenSSL
    # 3.0's default refusal lifted) renegotiates, so the probe above can fail.
    cache = ContextCache(TlsSettings(cert_file=qs.server_cert, key_file=qs.server_key))
    ctx = cache.build(ActiveSet(qs))
    ctx.options &= ~ssl.OP_NO_RENEGOTIATION
    ctx.options |= ALLOW_CLIENT_RENEGOTIATION
    async with stdlib_server(ctx) as port:
        renegotiated, log = await attempt_renegotiation(port, qs)
    assert renegotiated, log
    print_counts(
        request,
        [
            f"renegotiation: refused on {len(results)} edge listeners (mqtt, https); "
            "accepted by the unprotected control, 1/1"
        ],
    )
