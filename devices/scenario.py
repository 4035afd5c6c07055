"""Scenario files: the options of ``edgesim fleet run`` written down in TOML.

A scenario sets the same options as the command line, under a ``[fleet]`` table (or
at the top level), with the long option names (``-`` or ``_`` alike)::

    [fleet]
    manifest = "pki/devices/manifest.jsonl"
    url = ["mqtts://127.0.0.1:8883", "wss://127.0.0.1:8443/mqtt"]
    ca = "pki/root-ca.pem"
    protocol = "mix"
    devices = 1000
    ramp = "200/s"
    duration = "30s"
    msg-rate = "500/s"
    faults = "expired=1%,wrong-ca=1%"
    seed = 7

Relative paths are read relative to the scenario file. Flags given on the command
line override the file. Values are checked here, so a typo names the key and the file.

Errors::

    ScenarioError       the file cannot be read, is not TOML, has an unknown key or a
                        value of the wrong type (tomllib.TOMLDecodeError and OSError are
                        translated to it)
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any


class ScenarioError(Exception):
    """A scenario file is unreadable or holds an unknown key or a bad value."""


#: Option (argparse dest) -> accepted TOML types; ``path`` marks values resolved
#: against the scenario's directory.
OPTIONS: Mapping[str, tuple[tuple[type, ...], bool]] = {
    "manifest": ((str,), True),
    "url": ((str, list), False),
    "ca": ((str,), True),
    "sni": ((str,), False),
    "devices": ((int,), False),
    "ramp": ((str, int, float), False),
    "duration": ((str, int, float), False),
    "protocol": ((str,), False),
    "msg_rate": ((str, int, float), False),
    "qos": ((int,), False),
    "payload_size": ((int,), False),
    "faults": ((str,), False),
    "seed": ((int,), False),
    "pki": ((str,), True),
    "ca_cert": ((str,), True),
    "ca_key": ((str,), True),
    "work_dir": ((str,), True),
    "admin": ((str,), False),
    "token": ((str,), False),
    "processes": ((int,), False),
    "shard": ((str,), False),
    "loop": ((str,), False),
    "tls_max": ((str,), False),
    "tls_keys": ((str,), False),
    "verify_cache": ((str, bool), False),
    "topic": ((str,), False),
    "mqtt_version": ((str, int), False),
    "timeout": ((int, float), False),
    "probe_message": ((bool,), False),
    "report": ((str,), True),
    "html": ((str,), True),
}


def load_scenario(path: Path) -> dict[str, Any]:
    """Read a scenario file and return its options keyed by argparse dest names."""
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ScenarioError(f"--scenario {path}: cannot read ({exc.strerror or exc})") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ScenarioError(f"--scenario {path}: not TOML ({exc})") from exc
    table: Any = doc.get("fleet", doc)
    if not isinstance(table, dict):
        raise ScenarioError(f"--scenario {path}: [fleet] must be a table")
    out: dict[str, Any] = {}
    for raw_key, raw_value in table.items():
        value: Any = raw_value
        if raw_key == "fleet" and table is doc:
            continue
        key = raw_key.replace("-", "_")
        if key not in OPTIONS:
            raise ScenarioError(
                f"--scenario {path}: unknown key {raw_key!r} (known: "
                + ", ".join(k.replace("_", "-") for k in OPTIONS)
                + ")"
            )
        types, is_path = OPTIONS[key]
        # bool is an int in Python; only probe_message takes one.
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            names = " or ".join(t.__name__ for t in types)
            raise ScenarioError(
                f"--scenario {path}: key {raw_key!r} must be {names}, got {value!r}"
            )
        if key == "url":
            urls: list[Any] = [raw_value] if isinstance(raw_value, str) else list(raw_value)
            if not all(isinstance(u, str) for u in urls):
                raise ScenarioError(f"--scenario {path}: key 'url' must list strings")
            value = urls
        if is_path:
            value = str(path.parent / value)
        out[key] = value
    return out
