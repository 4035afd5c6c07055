"""The compiled connect path: used exactly when its build matches the sources.

``edge._loader`` decides at ``import edge`` whether the mypyc build under
``.build/mypyc/`` serves the modules of :data:`edge.compiled.MODULES`. These
tests check that decision on fake build trees (stale, incomplete, for another
Python, missing) and, in fresh interpreters, what the real tree does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import edge.tls.connection
from edge import _loader, compiled

ROOT = Path(__file__).resolve().parent.parent


def _fake_tree(tmp_path: Path) -> Path:
    """A project root with copies of the compiled modules' sources and a complete build."""
    root = tmp_path / "root"
    for module in compiled.MODULES:
        src = _loader._source(ROOT, module)
        dst = _loader._source(root, module)
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(src.read_bytes())
    where = compiled.build_dir(root)
    suffix = _loader._ext_suffix()
    for module in compiled.MODULES:
        so = where.joinpath(*module.split(".")).with_name(module.rsplit(".", 1)[1] + suffix)
        so.parent.mkdir(parents=True, exist_ok=True)
        so.write_bytes(b"")
    (where / f"{_loader._GROUP}__mypyc{suffix}").write_bytes(b"")
    manifest = {
        "python": sys.version,
        "modules": list(compiled.MODULES),
        "sources": _loader._digests(root),
    }
    (where / _loader._MANIFEST).write_text(json.dumps(manifest))
    return root


def test_a_build_matching_the_sources_is_used(tmp_path: Path) -> None:
    reason, files = _loader._why_not(_fake_tree(tmp_path))
    assert reason is None
    assert set(files) == {*compiled.MODULES, f"{_loader._GROUP}__mypyc"}


def test_an_edited_source_disables_the_whole_build(tmp_path: Path) -> None:
    root = _fake_tree(tmp_path)
    source = _loader._source(root, "edge.tls.peer")
    source.write_text(source.read_text() + "\n# edited\n")
    reason, files = _loader._why_not(root)
    assert reason == "the compiled build is older than edge/tls/peer.py; run `make compile`"
    assert files == {}


def test_two_edited_sources_are_counted(tmp_path: Path) -> None:
    root = _fake_tree(tmp_path)
    for module in ("edge.mux", "edge.core.events"):
        _loader._source(root, module).write_text("# edited\n")
    reason, _ = _loader._why_not(root)
    assert reason is not None
    assert "older than edge/core/events.py and 1 more" in reason


def test_a_missing_extension_is_named(tmp_path: Path) -> None:
    root = _fake_tree(tmp_path)
    suffix = _loader._ext_suffix()
    gone = compiled.build_dir(root) / "edge" / "mqtt" / f"codec{suffix}"
    gone.unlink()
    reason, _ = _loader._why_not(root)
    assert reason == f"the compiled build is incomplete ({gone} is missing); run `make compile`"


def test_a_build_for_another_python_is_not_used(tmp_path: Path) -> None:
    root = _fake_tree(tmp_path)
    path = compiled.build_dir(root) / _loader._MANIFEST
    manifest = json.loads(path.read_text())
    manifest["python"] = "3.11.0 (another build)"
    path.write_text(json.dumps(manifest))
    reason, _ = _loader._why_not(root)
    assert reason is not None
    assert "another Python" in reason


def test_no_build_and_a_broken_manifest(tmp_path: Path) -> None:
    assert _loader._why_not(tmp_path)[0] == "no compiled build (run `make compile`)"
    where = compiled.build_dir(tmp_path)
    where.mkdir(parents=True)
    (where / _loader._MANIFEST).write_text("{not json")
    reason = _loader._why_not(tmp_path)[0]
    assert reason is not None
    assert reason.startswith("unreadable compiled build manifest")


def _python(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run this Python in a fresh process at the project root."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )


def _probe(env: dict[str, str]) -> list[str]:
    code = (
        "import edge.tls.connection as c, edge.compiled as m;"
        "print(m.is_compiled(c)); print(m.status())"
    )
    return _python(["-c", code], env).stdout.splitlines()


def test_pure_python_switch() -> None:
    env = dict(os.environ, **{compiled.PURE_ENV: "1"})
    assert _probe(env) == ["False", f"pure Python ({compiled.PURE_ENV} is set)"]


def test_this_process_runs_what_the_tree_says() -> None:
    # Whatever the checkout holds, this process and a fresh one agree with _why_not;
    # with EDGESIM_REQUIRE_COMPILED=1 (CI) the compiled build must be there and used.
    env = {k: v for k, v in os.environ.items() if k != compiled.PURE_ENV}
    reason, _ = _loader._why_not(ROOT)
    pure_here = os.environ.get(compiled.PURE_ENV, "") not in ("", "0")
    if os.environ.get("EDGESIM_REQUIRE_COMPILED") == "1":
        assert reason is None, reason
    fresh = _probe(env)
    if reason is None:
        assert fresh[0] == "True"
        assert fresh[1].startswith("compiled (mypyc, ")
        assert compiled.is_compiled(edge.tls.connection) is not pure_here
    else:
        assert fresh == ["False", f"pure Python: {reason}"]
        assert not compiled.is_compiled(edge.tls.connection)


def test_build_status_cli() -> None:
    env = {k: v for k, v in os.environ.items() if k != compiled.PURE_ENV}
    out = _python(["-m", "edge.compiled", "status"], env)
    reason, _ = _loader._why_not(ROOT)
    expected = (
        f"compiled (mypyc, {len(compiled.MODULES)} modules in {compiled.build_dir(ROOT)})"
        if reason is None
        else f"pure Python: {reason}"
    )
    assert out.stdout.strip() == expected
    assert out.stderr == ""


@pytest.mark.parametrize("module", compiled.MODULES)
def test_every_compiled_module_has_its_source(module: str) -> None:
    assert _loader._source(ROOT, module).is_file()
