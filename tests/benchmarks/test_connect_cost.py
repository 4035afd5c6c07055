"""The connect-cost driver runs the edge's real connect path end to end (without callgrind)."""

from __future__ import annotations

import pytest

from bench import callgrind, connect_cost
from edge.tls import verifiedchain


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("server", "capture"),
    [("edge", "chain"), ("edge", "tap"), ("edge", "off"), ("bare", "chain")],
)
async def test_the_driver_completes_connects_against_each_server(
    server: str, capture: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # "tap" turns the verified-chain reader off for the process: restore it after.
    verifiedchain.available()
    monkeypatch.setattr(verifiedchain, "_LIB", verifiedchain._LIB)
    monkeypatch.setattr(verifiedchain, "_LOADED", verifiedchain._LOADED)
    # Each connect checks its CONNACK and closes: a driver that no longer matches
    # the edge raises here instead of counting the wrong work under callgrind.
    await connect_cost._drive(connects=3, warmup=1, server=server, capture=capture)
    assert verifiedchain.available() is (capture != "tap")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("ca_names", [False, True])
async def test_the_driver_connects_by_sni_among_server_certificates(ca_names: bool) -> None:
    # The device's context checks the hostname: a connect served with the wrong
    # certificate fails here instead of being counted.
    await connect_cost._drive(
        connects=2, warmup=1, server="edge", capture="chain", server_certs=5, ca_names=ca_names
    )


def test_counting_needs_valgrind_and_says_so(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("EDGESIM_CONNECT_COST_CHILD", raising=False)
    monkeypatch.setattr(callgrind.shutil, "which", lambda name: None)
    assert connect_cost.main(["--connects", "1"]) == 2
    assert "valgrind is not installed" in capsys.readouterr().err
