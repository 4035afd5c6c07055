"""Cost of checking certificates: ``lint_chain`` and ``verify_path`` per call.

The trust store lints every upload and the edge's diagnostics verify device chains,
so both should stay far below a handshake's cost. Measured side by side in one run
on the same root -> intermediate -> device chain (EC P-256 and RSA 2048):

- ``lint_chain`` (profile ``chain``), ``verify_path`` without and with CRLs;
- cryptography's bare ``PolicyBuilder`` client verifier on the same chain, so the
  ratio shows what our policy, purpose, key and CRL checks add on top.

Figures are medians of per-call times in microseconds.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store

from certs.authority import CertificateAuthority
from certs.crl import build_crl
from certs.lint import lint_chain
from certs.verify import verify_path

NOW = datetime(2026, 3, 1, tzinfo=UTC)


def _median_us(func: Callable[[], object], rounds: int, calls: int) -> float:
    """Median over ``rounds`` of the mean per-call time of ``calls`` calls, in µs."""
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            func()
        samples.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(samples)


def _crl(ca: CertificateAuthority) -> x509.CertificateRevocationList:
    return build_crl(ca, [], crl_number=1, last_update=NOW - timedelta(hours=1))


def _one(key_type: str, rounds: int, calls: int) -> dict[str, float]:
    root = CertificateAuthority.create_root("Bench Root", key_type=key_type, now=NOW)
    inter = root.issue_intermediate("Bench Int", key_type=key_type, now=NOW)
    device = inter.issue_device("bench-device", key_type=key_type, now=NOW)
    leaf = device.cert
    crls = [_crl(root), _crl(inter)]
    bare = PolicyBuilder().store(Store([root.cert])).time(NOW).build_client_verifier()

    figures = {
        "lint_chain_us": _median_us(
            lambda: lint_chain([leaf, inter.cert, root.cert], at=NOW), rounds, calls
        ),
        "verify_path_us": _median_us(
            lambda: verify_path(leaf, roots=[root.cert], untrusted=[inter.cert], at=NOW),
            rounds,
            calls,
        ),
        "verify_path_crl_us": _median_us(
            lambda: verify_path(leaf, roots=[root.cert], untrusted=[inter.cert], at=NOW, crls=crls),
            rounds,
            calls,
        ),
        "bare_verifier_us": _median_us(lambda: bare.verify(leaf, [inter.cert]), rounds, calls),
    }
    figures["verify_over_bare"] = figures["verify_path_us"] / figures["bare_verifier_us"]
    return {k: round(v, 2) for k, v in figures.items()}


def run(quick: bool = False) -> dict[str, object]:
    """Measure both key types; print a short summary and return the figures."""
    rounds, calls = (3, 20) if quick else (7, 100)
    results: dict[str, object] = {"rounds": rounds, "calls_per_round": calls}
    for key_type in ("ec256", "rsa2048"):
        figures = _one(key_type, rounds, calls)
        results[key_type] = figures
        print(
            f"{key_type}: lint {figures['lint_chain_us']:.0f} us, "
            f"verify {figures['verify_path_us']:.0f} us "
            f"(with CRLs {figures['verify_path_crl_us']:.0f} us), "
            f"bare cryptography verifier {figures['bare_verifier_us']:.0f} us "
            f"(x{figures['verify_over_bare']:.2f})"
        )
    return results


if __name__ == "__main__":
    run()
