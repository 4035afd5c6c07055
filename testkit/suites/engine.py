"""Run a suite: one endpoint, one case at a time, one verdict per case.

For each case the engine mints (or reuses) the case's server chain, arms the
endpoint with it, then either starts the device command (``--device-cmd``, run once
per case with ``{host} {port} {ca} {cert} {key} {crl}`` substituted) or asks on the
console for the bench device to reconnect. It waits, on the endpoint's change
signal, until the case's answer is known (:func:`testkit.suites.verdicts.done`), the
command exits with no connection left open, or the case times out; then it stops the
command, closes what is left, and judges.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from testkit.suites.behaviour import play
from testkit.suites.model import RUNS_CASES, Case, CaseResult, Status, Suite, SuiteError
from testkit.suites.pki import PkiError, SuitePki
from testkit.suites.server import CaseRuntime, SuiteServer, build_context
from testkit.suites.verdicts import DeviceExit, done, judge

__all__ = ["RunOptions", "SuiteReport", "run_suite", "run_suite_sync"]

_PLACEHOLDERS = ("host", "port", "ca", "cert", "key", "crl")


@dataclass(kw_only=True)
class RunOptions:
    """How to run a suite."""

    #: Shell-style command template, run once per case; ``None``: a bench device.
    device_cmd: str | None = None
    listen_host: str = "127.0.0.1"
    listen_port: int = 0
    #: The name the device dials, and the good certificate's SAN.
    server_name: str = "localhost"
    #: What the device speaks (``mqtt``, ``mqtt5`` or ``https``): cases for another
    #: protocol are skipped (:data:`~testkit.suites.model.RUNS_CASES`); ``None`` runs all.
    protocol: str | None = None
    #: Run only these case ids (all when empty).
    only: tuple[str, ...] = ()
    workdir: Path | None = None
    #: Scale every case timeout (CI on slow machines).
    timeout_scale: float = 1.0
    console: TextIO | None = field(default=None)
    #: Called with each result as soon as it is known.
    on_result: Callable[[CaseResult], None] | None = None


@dataclass(kw_only=True)
class SuiteReport:
    """The results of one run."""

    suite: Suite
    results: list[CaseResult]
    started: str
    duration_s: float
    device_cmd: str | None
    endpoint: str

    @property
    def ok(self) -> bool:
        """True when no ``must`` case failed."""
        return not any(r.failed_must for r in self.results)

    def assert_ok(self) -> None:
        """Raise AssertionError naming every failed ``must`` case and why."""
        failed = [r for r in self.results if r.failed_must]
        if failed:
            lines = "\n".join(f"  {r.case.id}: {r.status}: {r.summary}" for r in failed)
            raise AssertionError(
                f"suite {self.suite.name}: {len(failed)} must case(s) failed:\n{lines}"
            )

    def counts(self) -> dict[str, int]:
        """Results by status."""
        out = {s: 0 for s in (Status.PASS, Status.FAIL, Status.INFO, Status.SKIP, Status.ERROR)}
        for r in self.results:
            out[r.status] += 1
        return out

    def to_json(self) -> dict[str, Any]:
        """The JSON report document."""
        return {
            "suite": self.suite.name,
            "description": self.suite.description,
            "source": self.suite.source,
            "started": self.started,
            "duration_s": round(self.duration_s, 3),
            "device_cmd": self.device_cmd,
            "endpoint": self.endpoint,
            "ok": self.ok,
            "counts": self.counts(),
            "cases": [r.to_json() for r in self.results],
        }


def _substitute(template: str, values: dict[str, str]) -> list[str]:
    argv = shlex.split(template)
    out = []
    for arg in argv:
        for key in _PLACEHOLDERS:
            arg = arg.replace("{" + key + "}", values[key])
        out.append(arg)
    return out


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is not None:
        return
    # The command runs in its own process group, so a wrapper shell's children go too.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), 3.0)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()


async def _run_case(
    case: Case,
    server: SuiteServer,
    pki: SuitePki,
    options: RunOptions,
    values: dict[str, str],
    out: TextIO,
) -> CaseResult:
    started = time.monotonic()
    try:
        material = pki.material(case.server.cert)
        context = build_context(case, material, str(pki.ca_path))
    except (PkiError, OSError, ValueError) as exc:
        return CaseResult(
            case=case,
            status=Status.ERROR,
            summary=f"cannot set up the server: {exc}",
            duration_s=0.0,
        )
    rt = CaseRuntime(case, material, context)
    server.arm(rt)
    timeout = case.timeout_s * options.timeout_scale
    proc: asyncio.subprocess.Process | None = None
    output: list[bytes] = []
    reader_task: asyncio.Task[None] | None = None
    if options.device_cmd is not None:
        argv = _substitute(options.device_cmd, values)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            server.arm(None)
            return CaseResult(
                case=case,
                status=Status.ERROR,
                summary=f"cannot start the device command {argv[0]!r}: {exc.strerror}",
                duration_s=0.0,
            )
        assert proc.stdout is not None
        stdout = proc.stdout

        async def _drain() -> None:
            while chunk := await stdout.read(4096):
                output.append(chunk)

        reader_task = asyncio.create_task(_drain())
    else:
        out.write(
            f"  -> connect or reconnect the device now ({case.title}; timeout {timeout:g} s)\n"
        )
        out.flush()
    deadline = started + timeout
    exited_at: float | None = None
    while True:
        now = time.monotonic()
        if done(case, rt.conns, rt.now(), rt.state) or now >= deadline:
            break
        if proc is not None and proc.returncode is not None:
            exited_at = exited_at or now
            # The command is gone: once its connections have closed (or a moment for a
            # connection still in the accept queue has passed) nothing more will come.
            if rt.open_connections == 0 and now - exited_at > 0.3:
                break
        rt.changed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(rt.changed.wait(), min(0.25, max(0.01, deadline - now)))
    # A moment for a command that is finishing by itself (keeps its exit code honest).
    if proc is not None and proc.returncode is None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), 1.0)
    server.arm(None)
    rt.stopped_at = rt.now()
    if proc is not None:
        await _stop(proc)
    await rt.close_all()
    if reader_task is not None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(reader_task, 2.0)
    # Let the connection handlers record their close.
    for _ in range(20):
        if rt.open_connections == 0:
            break
        rt.changed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(rt.changed.wait(), 0.1)
    tail = b"".join(output)[-600:].decode("utf-8", "replace").strip()
    device = DeviceExit(proc.returncode if proc is not None else None, tail)
    status, summary, evidence = judge(
        case, rt.conns, rt.state, device, chain_bytes=material.chain_der_bytes
    )
    if time.monotonic() >= deadline and status in (Status.FAIL, Status.ERROR):
        evidence["timed_out"] = True
    evidence["server_certificate"] = material.description
    return CaseResult(
        case=case,
        status=status,
        summary=summary,
        duration_s=time.monotonic() - started,
        evidence=evidence,
    )


_MARK = {
    Status.PASS: "PASS",
    Status.FAIL: "FAIL",
    Status.INFO: "INFO",
    Status.SKIP: "SKIP",
    Status.ERROR: "ERR ",
}


async def run_suite(suite: Suite, options: RunOptions) -> SuiteReport:
    """Run ``suite`` and return its report; prints one live line per case."""
    out = options.console or sys.stdout
    if options.protocol is not None and options.protocol not in RUNS_CASES:
        raise SuiteError(
            f"protocol {options.protocol!r}: choose one of {', '.join(RUNS_CASES)} "
            "(what the device speaks)"
        )
    started_wall = datetime.now(UTC).isoformat(timespec="seconds")
    started = time.monotonic()
    tmp: tempfile.TemporaryDirectory[str] | None = None
    if options.workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="edgesim-suite-")
        workdir = Path(tmp.name)
    else:
        workdir = options.workdir
    try:
        pki = SuitePki(workdir)
        server = SuiteServer(options.listen_host, options.listen_port, play)
        await server.start()
        endpoint = f"{options.server_name}:{server.port}"
        values = {
            "host": options.server_name,
            "port": str(server.port),
            "ca": str(pki.ca_path),
            "cert": str(pki.cert_path),
            "key": str(pki.key_path),
            "crl": str(pki.crl_path),
        }
        out.write(
            f"suite {suite.name}: {len(suite.cases)} cases on {endpoint} "
            f"(listening on {options.listen_host}:{server.port}); device trusts {pki.ca_path}\n"
        )
        out.flush()
        results: list[CaseResult] = []
        try:
            for i, case in enumerate(suite.cases, 1):
                if options.only and case.id not in options.only:
                    continue
                if options.protocol and case.protocol not in RUNS_CASES[options.protocol]:
                    result = CaseResult(
                        case=case,
                        status=Status.SKIP,
                        summary=f"{case.protocol} case; the device speaks {options.protocol}",
                        duration_s=0.0,
                    )
                else:
                    result = await _run_case(case, server, pki, options, values, out)
                results.append(result)
                must = "must" if case.must else "info"
                out.write(
                    f"[{i:2d}/{len(suite.cases)}] {_MARK[result.status]} {case.id:<28} ({must}) "
                    f"{result.summary}  [{result.duration_s:.1f} s]\n"
                )
                out.flush()
                if options.on_result is not None:
                    options.on_result(result)
        finally:
            await server.close()
        return SuiteReport(
            suite=suite,
            results=results,
            started=started_wall,
            duration_s=time.monotonic() - started,
            device_cmd=options.device_cmd,
            endpoint=endpoint,
        )
    finally:
        if tmp is not None:
            tmp.cleanup()


def run_suite_sync(suite: Suite, options: RunOptions) -> SuiteReport:
    """:func:`run_suite` from synchronous code (the CLI, the pytest fixture)."""
    return asyncio.run(run_suite(suite, options))
