"""Trust store costs: uploads, snapshots, resolution, propagation and the dry run.

Figures (medians over rounds, all measured in this one run, on a store file in a
temporary directory):

- ``upload_1_ms`` / ``upload_300_ms``: validate (lint) and commit one version of
  1 and of 300 CA certificates; ``upload_300_per_cert_ms`` the per-certificate share;
- ``snapshot_cold_ms`` / ``snapshot_warm_ms``: build the edge's snapshot of 200
  sets, first with every PEM parsed, then with the parse cache warm, and
  ``snapshot_cold_over_warm`` measured side by side;
- ``resolve_ns``: :meth:`TrustSnapshot.resolve` for a wildcard-bound hostname;
- ``propagate_ms``: ``activate`` until every worker applied it (delay 0, 4 workers);
- ``check_ms``: the dry run of one device certificate (path validation with a CRL).
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from certs.authority import CertificateAuthority
from certs.crl import build_crl
from edge.trust.check import check_in_store
from edge.trust.model import TrustSnapshot
from edge.trust.propagation import TrustService
from edge.trust.sqlite import SqliteTrustStore

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _roots(count: int) -> list[bytes]:
    """``count`` distinct self-signed P-256 CA certificates, PEM."""
    out = []
    for i in range(count):
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"bench root {i}")])
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW - timedelta(days=1))
            .not_valid_after(NOW + timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )
        out.append(cert.public_bytes(serialization.Encoding.PEM))
    return out


def _median_ms(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1000, 3)


def _timed(func: Callable[[], object]) -> float:
    start = time.perf_counter()
    func()
    return time.perf_counter() - start


async def _propagation(store: SqliteTrustStore, rounds: int) -> list[float]:
    service = TrustService(store)
    for i in range(4):
        service.register_worker(f"w{i}", lambda snapshot: None)
    await service.start()
    samples = []
    try:
        for i in range(rounds):
            start = time.perf_counter()
            await service.activate("s000", 1 + i % 2)
            await service.wait_active(timeout=10)
            samples.append(time.perf_counter() - start)
    finally:
        await service.close()
    return samples


def run(quick: bool = False) -> dict[str, object]:
    """Measure the trust store; print a short summary and return the figures."""
    rounds = 3 if quick else 7
    # One more set ("check") below brings the full run to the real limit of 200.
    sets = 49 if quick else 199
    pems = _roots(300 + sets + rounds * 2)
    big = b"".join(pems[:300])
    with tempfile.TemporaryDirectory(prefix="edgesim-bench-") as tmp:
        path = Path(tmp) / "store.db"
        store = SqliteTrustStore(path, clock=lambda: NOW)
        try:
            up1 = [_timed(partial(store.upload, f"one-{i}", pems[300 + i])) for i in range(rounds)]
            up300 = []
            for _ in range(rounds):
                up300.append(_timed(partial(store.upload, "big", big)))
                store.delete("big")  # the same file again: a fresh set, not a duplicate
            for info in store.list_sets():
                store.delete(info.name)
            for i in range(sets):
                store.upload(f"s{i:03d}", pems[300 + rounds + i % (len(pems) - 300 - rounds)])
            store.upload("s000", pems[-1], activate=False)
            store.bind("s001", "*.example.com")

            cold, warm = [], []
            for _ in range(rounds):
                fresh = SqliteTrustStore(path, clock=lambda: NOW)
                try:
                    cold.append(_timed(fresh.snapshot))
                    warm.append(_timed(fresh.snapshot))
                finally:
                    fresh.close()
            snap: TrustSnapshot = store.snapshot()
            n = 100_000
            start = time.perf_counter()
            for _ in range(n):
                snap.resolve("device-7.example.com")
            resolve_ns = (time.perf_counter() - start) / n * 1e9

            ca = CertificateAuthority.create_root("bench check root", now=NOW)
            store.upload("check", ca.cert_pem)
            crl = build_crl(ca, [], crl_number=1, last_update=NOW - timedelta(hours=1), days=1)
            store.add_crl("check", crl.public_bytes(serialization.Encoding.PEM))
            device = ca.issue_device("bench-device", now=NOW).cert_pem
            checks = [
                _timed(partial(check_in_store, store, "check", device, at=NOW))
                for _ in range(rounds * 3)
            ]
            propagate = asyncio.run(_propagation(store, rounds * 2))
        finally:
            store.close()
    figures: dict[str, object] = {
        "upload_1_ms": _median_ms(up1),
        "upload_300_ms": _median_ms(up300),
        "upload_300_per_cert_ms": round(_median_ms(up300) / 300, 3),
        "sets": sets,
        "snapshot_cold_ms": _median_ms(cold),
        "snapshot_warm_ms": _median_ms(warm),
        "snapshot_cold_over_warm": round(statistics.median(cold) / statistics.median(warm), 1),
        "resolve_ns": round(resolve_ns),
        "propagate_ms": _median_ms(propagate),
        "check_ms": _median_ms(checks),
    }
    print(
        f"trust: upload 1 cert {figures['upload_1_ms']} ms, 300 certs "
        f"{figures['upload_300_ms']} ms; snapshot of {sets} sets cold "
        f"{figures['snapshot_cold_ms']} ms / warm {figures['snapshot_warm_ms']} ms; "
        f"resolve {figures['resolve_ns']} ns; propagate {figures['propagate_ms']} ms; "
        f"check {figures['check_ms']} ms"
    )
    return figures


if __name__ == "__main__":
    run()
