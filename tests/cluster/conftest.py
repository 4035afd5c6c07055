"""Fixtures shared by the cluster tests: quickstart PKIs and a nats-server on loopback.

- ``pki``: a quickstart PKI with the :data:`edgenodes.DEVICES` devices, as a path
  (what :class:`edgenodes.EdgeNode` and :func:`edgenodes.device_context` take).
- ``qs``: a quickstart PKI with one device, as the :class:`QuickstartResult`.
- ``server``: one nats-server (JetStream, its store under the test's ``tmp_path``).

The PKIs are module-scoped, as each module's own copy was: every module that uses one
gets its own, made once (issuing 40 device certificates is not free).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from edgenodes import DEVICES

from certs.quickstart import QuickstartResult, quickstart
from edge.cluster.natsserver import NatsServer


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A quickstart PKI with a certificate for every name in ``DEVICES``."""
    out = tmp_path_factory.mktemp("pki") / "pki"
    quickstart(out, devices=len(DEVICES))
    return out


@pytest.fixture(scope="module")
def qs(tmp_path_factory: pytest.TempPathFactory) -> QuickstartResult:
    """A quickstart PKI with one device, ``dev-00000``."""
    return quickstart(tmp_path_factory.mktemp("qs") / "pki", devices=1)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[NatsServer]:
    """A nats-server from the wheel on a loopback port, stopped after the test."""
    srv = NatsServer(store_dir=tmp_path / "nats").start()
    try:
        yield srv
    finally:
        srv.stop()
