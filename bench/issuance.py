"""Device certificate issuance throughput: EC P-256 key + signature + PEM files.

Figures (medians over rounds, all measured in this one run):

- ``in_memory_per_s``: :meth:`CertificateAuthority.issue_device` without files;
- ``bulk_1job_per_s`` / ``bulk_1job_per_cpu_s``: :meth:`issue_devices_bulk`
  writing ``.pem``/``.key``/manifest into a RAM-backed directory
  (``/dev/shm`` when present), wall clock and per CPU-second of this process
  (the "per core" figure);
- ``bulk_njobs_per_s`` with ``jobs = os.cpu_count()`` (and per CPU-second of
  parent and workers, ``bulk_njobs_per_cpu_s``), and the speed-up
  ``njobs_over_1job`` measured side by side (it only shows with idle cores);
- ``bulk_1job_disk_per_s``: the same into the default temporary directory.
  On a disk shared with other busy processes, file creation (kernel time)
  can dominate: compare it with the RAM figure before blaming the code.
"""

from __future__ import annotations

import os
import resource
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from certs.authority import CertificateAuthority

NOW = datetime(2026, 1, 1, tzinfo=UTC)


RAM_DIR = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


def _bulk(
    ca: CertificateAuthority, count: int, jobs: int, where: str | None = RAM_DIR
) -> tuple[float, float]:
    """One bulk run into a fresh directory: (wall seconds, CPU seconds used).

    CPU counts this process and the worker processes (reaped children).
    """
    with tempfile.TemporaryDirectory(prefix="edgesim-bench-", dir=where) as tmp:
        wall = time.perf_counter()
        cpu = _cpu_seconds()
        ca.issue_devices_bulk(Path(tmp), count=count, jobs=jobs, now=NOW)
        return time.perf_counter() - wall, _cpu_seconds() - cpu


def _cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def run(quick: bool = False) -> dict[str, object]:
    """Measure issuance rates; print a short summary and return the figures."""
    count = 500 if quick else 3000
    rounds = 1 if quick else 3
    jobs = max(2, os.cpu_count() or 1)
    root = CertificateAuthority.create_root("bench root", now=NOW)
    inter = root.issue_intermediate("bench intermediate", now=NOW)

    mem_rates = []
    for _ in range(rounds):
        start = time.perf_counter()
        for i in range(count):
            inter.issue_device(f"dev-{i}", now=NOW)
        mem_rates.append(count / (time.perf_counter() - start))

    one_wall, one_cpu, many_wall, many_cpu, disk = [], [], [], [], []
    for _ in range(rounds):
        wall, _ = _bulk(inter, count, 1, None)
        disk.append(count / wall)
        # Alternate 1 job and N jobs so both see the same machine load.
        wall, cpu = _bulk(inter, count, 1)
        one_wall.append(count / wall)
        one_cpu.append(count / cpu)
        wall, cpu = _bulk(inter, count * jobs, jobs)
        many_wall.append(count * jobs / wall)
        many_cpu.append(count * jobs / cpu)

    figures: dict[str, object] = {
        "count_per_round": count,
        "rounds": rounds,
        "jobs": jobs,
        "in_memory_per_s": round(statistics.median(mem_rates)),
        "bulk_1job_per_s": round(statistics.median(one_wall)),
        "bulk_1job_per_cpu_s": round(statistics.median(one_cpu)),
        "bulk_njobs_per_s": round(statistics.median(many_wall)),
        "bulk_njobs_per_cpu_s": round(statistics.median(many_cpu)),
        "njobs_over_1job": round(statistics.median(many_wall) / statistics.median(one_wall), 2),
        "bulk_1job_disk_per_s": round(statistics.median(disk)),
        "ram_dir": RAM_DIR,
        "disk_dir": tempfile.gettempdir(),
    }
    print(
        f"issuance EC P-256: in memory {figures['in_memory_per_s']}/s; "
        f"bulk 1 job {figures['bulk_1job_per_s']}/s "
        f"({figures['bulk_1job_per_cpu_s']} per CPU-second); "
        f"{jobs} jobs {figures['bulk_njobs_per_s']}/s (x{figures['njobs_over_1job']}, "
        f"{figures['bulk_njobs_per_cpu_s']} per CPU-second); "
        f"1 job into {figures['disk_dir']}: {figures['bulk_1job_disk_per_s']}/s"
    )
    return figures


if __name__ == "__main__":
    run()
