"""Run every benchmark module and save the figures: ``python -m bench [--quick] [--only NAME ...]``."""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

#: Benchmark modules in the order they run; each has ``run(quick) -> dict``.
MODULES = (
    "issuance",
    "pkicheck",
    "trust",
    "broker",
    "persistence",
    "durability",
    "mqtt_core",
    "http_ws",
    "flood",
    "device",
    "fleet",
    "plugin",
    "workers",
    "cluster_trust",
)


def main(argv: list[str] | None = None) -> int:
    """Run the selected benchmarks; exit 1 if any of them failed to run."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer rounds and smaller loads")
    parser.add_argument("--only", nargs="+", choices=MODULES, help="run only these benchmarks")
    parser.add_argument(
        "--out", type=Path, default=Path("bench/results/latest.json"), help="where to save figures"
    )
    args = parser.parse_args(argv)
    results: dict[str, Any] = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
    }
    failed = []
    for name in args.only or MODULES:
        try:
            module = importlib.import_module(f"bench.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"bench.{name}":
                print(f"== {name}: not available", file=sys.stderr)
                continue
            raise
        print(f"== {name}", flush=True)
        start = time.monotonic()
        try:
            figures = module.run(quick=args.quick)
        except Exception:
            traceback.print_exc()
            failed.append(name)
            results[name] = {"error": traceback.format_exc(limit=3)}
            continue
        results[name] = {**figures, "wall_seconds": round(time.monotonic() - start, 1)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"figures saved to {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
