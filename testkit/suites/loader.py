"""Load suites from TOML: the files shipped in the package and users' own.

File format (one ``[suite]`` table, then ``[[case]]`` tables in run order)::

    [suite]
    name = "tls"
    description = "..."

    [[case]]
    id = "expired"
    title = "Expired server certificate"
    expect = "refuse"            # see testkit.suites.model.EXPECTS
    must = true                  # default true; false: reported, never fails the run
    server = { cert = "expired", tls_versions = ["1.2", "1.3"] }
    behaviour = "serve"          # see testkit.suites.model.BEHAVIOURS
    protocol = "any"             # any | mqtt | https: cases for another protocol are skipped
    timeout_s = 20
    why = "..."
    params = { retry_after_s = 3 }
    backoff = { attempts = 6, min_delay_s = 1.0, exponential = true, jitter = true }

Every error is a :class:`SuiteError` naming the file, the case and the field.
"""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

from testkit.suites.model import (
    BEHAVIOURS,
    CERT_PROFILES,
    EXPECTS,
    PROTOCOLS,
    BackoffRule,
    Case,
    ServerProfile,
    Suite,
    SuiteError,
)

__all__ = ["SuiteError", "builtin_suites", "load_suite", "parse_suite"]

_CASE_KEYS = {
    "id",
    "title",
    "expect",
    "must",
    "server",
    "behaviour",
    "protocol",
    "timeout_s",
    "why",
    "params",
    "backoff",
}
_SERVER_KEYS = {"cert", "tls_versions", "cipher", "alpn", "split_records"}
_BACKOFF_KEYS = {"attempts", "min_delay_s", "exponential", "min_growth", "jitter"}


def builtin_suites() -> dict[str, str]:
    """Name -> description of every suite shipped in the package, in name order."""
    out: dict[str, str] = {}
    for entry in sorted(resources.files("testkit.suites.data").iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".toml"):
            suite = parse_suite(entry.read_text(encoding="utf-8"), f"<builtin {entry.name}>")
            out[suite.name] = suite.description
    return out


def load_suite(name_or_path: str) -> Suite:
    """Load a built-in suite by name, or a suite file by path."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise SuiteError(f"{path}: cannot read the suite file: {exc.strerror}") from exc
        return parse_suite(text, str(path))
    entry = resources.files("testkit.suites.data") / f"{name_or_path}.toml"
    if not entry.is_file():
        names = ", ".join(builtin_suites()) or "none"
        raise SuiteError(
            f"no built-in suite named {name_or_path!r} (built-in: {names}) and no such file"
        )
    return parse_suite(entry.read_text(encoding="utf-8"), f"<builtin {name_or_path}>")


def parse_suite(text: str, source: str = "<string>") -> Suite:
    """Parse and validate a suite document."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SuiteError(f"{source}: not valid TOML: {exc}") from exc
    head = doc.get("suite")
    if not isinstance(head, dict) or not isinstance(head.get("name"), str):
        raise SuiteError(f"{source}: needs a [suite] table with a string 'name'")
    raw_cases = doc.get("case")
    if not isinstance(raw_cases, list) or not raw_cases:
        raise SuiteError(f"{source}: needs at least one [[case]] table")
    extra = set(doc) - {"suite", "case"}
    if extra:
        raise SuiteError(f"{source}: unknown top-level key(s): {', '.join(sorted(extra))}")
    cases: list[Case] = []
    seen: set[str] = set()
    for i, raw in enumerate(raw_cases, 1):
        case = _case(raw, f"{source}: case #{i}")
        if case.id in seen:
            raise SuiteError(f"{source}: case #{i}: duplicate id {case.id!r}")
        seen.add(case.id)
        cases.append(case)
    return Suite(
        name=head["name"],
        description=str(head.get("description", "")),
        cases=tuple(cases),
        source=source,
    )


def _want(value: Any, kind: type | tuple[type, ...], where: str, what: str) -> Any:
    # bool is an int in Python; a number field must not take true/false silently.
    if (
        isinstance(value, bool)
        and kind is not bool
        and bool not in (kind if isinstance(kind, tuple) else (kind,))
    ):
        raise SuiteError(f"{where}: '{what}' must be a number, got {value!r}")
    if not isinstance(value, kind):
        raise SuiteError(f"{where}: '{what}' has the wrong type ({type(value).__name__})")
    return value


def _choice(value: Any, choices: Any, where: str, what: str) -> str:
    if value not in choices:
        raise SuiteError(
            f"{where}: '{what}' is {value!r}; choose one of: {', '.join(sorted(choices))}"
        )
    return str(value)


def _case(raw: Any, where: str) -> Case:
    if not isinstance(raw, dict):
        raise SuiteError(f"{where}: must be a table")
    unknown = set(raw) - _CASE_KEYS
    if unknown:
        raise SuiteError(f"{where}: unknown key(s): {', '.join(sorted(unknown))}")
    for key in ("id", "title", "expect"):
        if key not in raw:
            raise SuiteError(f"{where}: missing '{key}'")
    case_id = _want(raw["id"], str, where, "id")
    where = f"{where} ({case_id})"
    expect = _choice(raw["expect"], EXPECTS, where, "expect")
    behaviour = _choice(raw.get("behaviour", "serve"), BEHAVIOURS, where, "behaviour")
    protocol = _choice(raw.get("protocol", BEHAVIOURS[behaviour]), PROTOCOLS, where, "protocol")
    if BEHAVIOURS[behaviour] != "any" and protocol != BEHAVIOURS[behaviour]:
        raise SuiteError(
            f"{where}: behaviour {behaviour!r} is {BEHAVIOURS[behaviour]} only, "
            f"but protocol is {protocol!r}"
        )
    server_raw = _want(raw.get("server", {}), dict, where, "server")
    unknown = set(server_raw) - _SERVER_KEYS
    if unknown:
        raise SuiteError(f"{where}: unknown server key(s): {', '.join(sorted(unknown))}")
    versions = tuple(
        _want(server_raw.get("tls_versions", ["1.2", "1.3"]), list, where, "tls_versions")
    )
    for v in versions:
        _choice(v, ("1.2", "1.3"), where, "tls_versions")
    if not versions:
        raise SuiteError(f"{where}: 'tls_versions' is empty")
    split = server_raw.get("split_records")
    if split is not None and not 16 <= _want(split, int, where, "split_records") <= 16384:
        raise SuiteError(f"{where}: 'split_records' must be 16 to 16384 bytes, got {split}")
    cipher = server_raw.get("cipher")
    if cipher is not None:
        _want(cipher, str, where, "cipher")
    server = ServerProfile(
        cert=_choice(server_raw.get("cert", "good"), CERT_PROFILES, where, "server.cert"),
        tls_versions=versions,
        cipher=cipher,
        alpn=tuple(str(a) for a in _want(server_raw.get("alpn", []), list, where, "alpn")),
        split_records=split,
    )
    backoff: BackoffRule | None = None
    if "backoff" in raw:
        b = _want(raw["backoff"], dict, where, "backoff")
        unknown = set(b) - _BACKOFF_KEYS
        if unknown:
            raise SuiteError(f"{where}: unknown backoff key(s): {', '.join(sorted(unknown))}")
        attempts = int(_want(b.get("attempts", 6), int, where, "backoff.attempts"))
        if attempts < 3:
            raise SuiteError(f"{where}: 'backoff.attempts' must be >= 3, got {attempts}")
        backoff = BackoffRule(
            attempts=attempts,
            min_delay_s=float(_want(b.get("min_delay_s", 1.0), (int, float), where, "min_delay_s")),
            exponential=bool(_want(b.get("exponential", True), bool, where, "exponential")),
            min_growth=float(_want(b.get("min_growth", 1.5), (int, float), where, "min_growth")),
            jitter=bool(_want(b.get("jitter", True), bool, where, "jitter")),
        )
    elif expect == "backoff":
        backoff = BackoffRule()
    timeout = float(_want(raw.get("timeout_s", 20.0), (int, float), where, "timeout_s"))
    if timeout <= 0:
        raise SuiteError(f"{where}: 'timeout_s' must be > 0")
    return Case(
        id=case_id,
        title=_want(raw["title"], str, where, "title"),
        expect=expect,
        must=bool(_want(raw.get("must", True), bool, where, "must")),
        server=server,
        behaviour=behaviour,
        protocol=protocol,
        timeout_s=timeout,
        why=str(raw.get("why", "")),
        params=dict(_want(raw.get("params", {}), dict, where, "params")),
        backoff=backoff,
    )
