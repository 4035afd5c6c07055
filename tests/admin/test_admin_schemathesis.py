"""The admin API under schemathesis 4.x: every phase, every check, with the token.

A real edge (MQTT, HTTPS and admin listeners, quickstart PKI) is started here and
``schemathesis run`` drives its OpenAPI description (``GET /v1/openapi.json``,
:mod:`edge.http.openapi`) through the examples, coverage, fuzzing and stateful
phases, time-boxed, with the settings and the documented deviations of
``tests/admin/schemathesis.toml``. Required: no 5xx, auth enforced on every
operation, no invalid input accepted, responses that match the description. The
run's counts are printed from its JSON report.

Auth is also checked here directly: every operation that the description says
needs the token answers 401 without it, and with a wrong one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from runreport import print_counts

from certs.quickstart import QuickstartResult, quickstart
from edge.config import EdgeConfig, HostPort, ListenersConfig, TrustConfig
from edge.http.openapi import openapi_document
from edge.server import EdgeServer

HERE = Path(__file__).parent
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
#: The run's time box (fuzzing and stateful repeat until it is spent).
MAX_TIME = int(os.environ.get("EDGESIM_SCHEMATHESIS_SECONDS", "90"))


@pytest.fixture(scope="module")
def qs(tmp_path_factory: pytest.TempPathFactory) -> QuickstartResult:
    return quickstart(tmp_path_factory.mktemp("qs") / "pki", devices=1)


@contextlib.asynccontextmanager
async def running_edge(tmp_path: Path, qs: QuickstartResult) -> AsyncIterator[EdgeServer]:
    any_port = HostPort(host="127.0.0.1", port=0)
    cfg = EdgeConfig(
        state_dir=tmp_path / "state",
        listeners=ListenersConfig(mqtt=any_port, https=any_port, admin=any_port),
        trust=TrustConfig(store=tmp_path / "trust.db", watch_interval=None),
        pki_dir=qs.out,
        policy="open",
    )
    async with EdgeServer(cfg) as edge:
        yield edge


def summary(report: dict[str, object]) -> list[str]:
    """The counts of a schemathesis JSON report, one line each."""
    return [f"  {key}: {json.dumps(value)[:300]}" for key, value in report.items()]


@pytest.mark.timeout(MAX_TIME + 180)
async def test_admin_api_passes_every_schemathesis_phase(
    tmp_path: Path, qs: QuickstartResult, request: pytest.FixtureRequest
) -> None:
    assert SCHEMATHESIS.exists(), f"schemathesis not found next to {sys.executable}"
    async with running_edge(tmp_path, qs) as edge:
        url = f"http://127.0.0.1:{edge.ports['admin']}/v1/openapi.json"
        proc = await asyncio.create_subprocess_exec(
            str(SCHEMATHESIS),
            "--config-file",
            str(HERE / "schemathesis.toml"),
            "run",
            url,
            "--header",
            f"Authorization: Bearer {edge.admin_token}",
            "--phases",
            "examples,coverage,fuzzing,stateful",
            "--checks",
            "all",
            "--max-time",
            str(MAX_TIME),
            "--report",
            "json",
            "--report-json-path",
            str(tmp_path / "report.json"),
            "--no-color",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            cwd=tmp_path,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), MAX_TIME + 150)
    text = out.decode(errors="replace")
    tail = text[text.find("==== SUMMARY") :] if "==== SUMMARY" in text else text[-3000:]
    lines = [f"schemathesis (all phases, all checks, {MAX_TIME} s):"]
    lines += [f"  {line}" for line in tail.splitlines() if line.strip()]
    print_counts(request, lines)
    assert proc.returncode == 0, text[-12000:]
    # The run really reached the API: cases were generated and every phase ran.
    cases = re.search(r"(\d+) generated", tail)
    assert cases is not None
    assert int(cases.group(1)) > 100


@pytest.mark.timeout(60)
async def test_every_operation_needing_the_token_refuses_without_it(
    tmp_path: Path, qs: QuickstartResult, request: pytest.FixtureRequest
) -> None:
    document = openapi_document()
    needs_token = []
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method == "parameters":
                continue
            if operation.get("security", document["security"]):
                needs_token.append((method.upper(), path))
    assert len(needs_token) > 25
    refused = 0
    async with running_edge(tmp_path, qs) as edge, aiohttp.ClientSession() as http:
        base = f"http://127.0.0.1:{edge.ports['admin']}"
        for method, path in needs_token:
            # Path parameters get plausible values: auth comes before routing's checks.
            concrete = re.sub(r"\{version\}|\{connection_id\}", "1", path)
            concrete = re.sub(r"\{[a-z_]+\}", "default", concrete)
            for headers in ({}, {"Authorization": "Bearer not-the-token"}):
                async with http.request(
                    method, base + concrete, headers=headers, json={}
                ) as response:
                    assert response.status == 401, (method, path, headers, response.status)
                    assert response.headers["WWW-Authenticate"].startswith("Bearer")
                    refused += 1
    print_counts(
        request,
        [
            f"admin auth: {len(needs_token)} operations need the token; {refused}/{refused} "
            "requests without it or with a wrong one refused with 401"
        ],
    )
