"""The built wheel, installed outside the source tree, runs the compiled connect path.

``python -m build`` makes the sdist and, from it, the wheel (``setup.py`` compiles
``edge._loader.MODULES`` with mypyc). ``twine check`` reads both. The wheel then goes
into a fresh venv in a temporary folder, with its dependencies at the versions of
``uv.lock``, and is asked, from a folder outside the checkout, whether it is compiled
(``edgesim --version``, ``python -m edge.compiled status``), runs ``edgesim edge
serve`` until it logs its connect path, and loads its pytest plugin to connect a
device through it.

Building compiles the connect path (about 90 s on two cores), so the whole module shares
one build.
"""

from __future__ import annotations

import os
import queue
import shutil
import signal
import subprocess
import sys
import sysconfig
import threading
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def _run(
    args: list[str | Path], *, cwd: Path, env: dict[str, str] | None = None, timeout: float = 600
) -> str:
    done = subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        pytest.fail(
            f"{' '.join(map(str, args))} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
        )
    return done.stdout + done.stderr


def _loader_modules() -> tuple[str, ...]:
    from edge._loader import MODULES

    return MODULES


def _compiler_present() -> bool:
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    return shutil.which(compiler) is not None


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sdist and the wheel, built from this checkout (once per module)."""
    if not _compiler_present() and os.environ.get("EDGESIM_REQUIRE_COMPILED") != "1":
        pytest.skip("no C compiler here: the wheel would hold the sources only")
    out = tmp_path_factory.mktemp("dist")
    # Built from a copy: setuptools writes build/, *.egg-info and a staging folder
    # into the project it builds, and the checkout must stay as it is.
    tree = tmp_path_factory.mktemp("tree") / "edgesim"
    shutil.copytree(
        ROOT,
        tree,
        ignore=shutil.ignore_patterns(
            ".git",
            ".venv*",
            ".uv",
            ".build",
            "build",
            "dist",
            "*.egg-info",
            "__pycache__",
            ".edgesim",
            ".mypy_cache",
            ".ruff_cache",
        ),
    )
    # No isolation: the locked venv already holds the build requirements (setuptools,
    # mypy), so the build needs no network. A compile failure fails the build.
    env = dict(os.environ, EDGESIM_REQUIRE_COMPILED="1")
    env.pop("EDGESIM_PURE_PYTHON", None)
    _run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", out, tree],
        cwd=tree,
        env=env,
        timeout=800,
    )
    return out


@pytest.fixture(scope="module")
def venv(dist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv outside the tree, installed as the Dockerfile's runtime stage does.

    The locked runtime dependencies with their hashes (``uv export``, then ``pip
    install --require-hashes``), then the wheel alone; pytest joins for the plugin
    check, at its locked version. Returns the venv's bin folder.
    """
    uv = BIN / "uv"
    if not uv.exists():
        pytest.fail(f"uv is missing from {BIN} (it is a dev dependency: run `make venv`)")
    where = tmp_path_factory.mktemp("venv")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "EDGESIM_"))}
    locked = where / "requirements.txt"
    _run(
        [
            uv,
            "export",
            "--frozen",
            "--no-dev",
            "--no-emit-project",
            "--format",
            "requirements-txt",
            "--output-file",
            locked,
            "-q",
        ],
        cwd=ROOT,
    )
    assert "--hash=sha256:" in locked.read_text()
    _run([uv, "venv", "-q", "--seed", "--python", sys.executable, where / "v"], cwd=where, env=env)
    python = where / "v" / "bin" / "python"
    pip = [python, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    _run([*pip, "--require-hashes", "-r", locked], cwd=where, env=env)
    (wheel,) = dist.glob("*.whl")
    _run([*pip, "--no-deps", wheel], cwd=where, env=env)
    dev = where / "dev-constraints.txt"
    _run(
        [
            uv,
            "export",
            "--frozen",
            "--extra",
            "dev",
            "--no-emit-project",
            "--no-hashes",
            "--output-file",
            dev,
            "-q",
        ],
        cwd=ROOT,
    )
    _run(
        [uv, "pip", "install", "-q", "--python", python, "-c", dev, "pytest", "pytest-timeout"],
        cwd=where,
        env=env,
    )
    return where / "v" / "bin"


def test_dockerfile_uses_the_locked_uv() -> None:
    lock = (ROOT / "uv.lock").read_text()
    locked = lock.split('\nname = "uv"\nversion = "', 1)[1].split('"', 1)[0]
    assert f'"uv=={locked}"' in (ROOT / "Dockerfile").read_text()


def _clean_env() -> dict[str, str]:
    # Nothing from this run may point the child at the checkout or force the sources.
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("VIRTUAL_ENV", "EDGESIM_", "PYTHON", "PYTEST"))
    }


def test_sdist_and_wheel_pass_twine_check(dist: Path) -> None:
    (sdist,) = dist.glob("*.tar.gz")
    (wheel,) = dist.glob("*.whl")
    # A platform wheel for this Python: it carries compiled modules.
    assert f"-cp{sys.version_info[0]}{sys.version_info[1]}-" in wheel.name, wheel.name
    out = _run([sys.executable, "-m", "twine", "check", "--strict", sdist, wheel], cwd=dist)
    assert out.count("PASSED") == 2, out


def test_wheel_ships_the_device_test_suites(dist: Path, venv: Path) -> None:
    (wheel,) = dist.glob("*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    assert {f"testkit/suites/data/{n}.toml" for n in ("tls", "mqtt", "https")} <= names
    out = _run([venv / "edgesim", "suite", "list"], cwd=dist)
    assert "tls" in out, out
    assert "mqtt" in out, out


def test_wheel_ships_the_web_console(dist: Path) -> None:
    (wheel,) = dist.glob("*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    files = ("index.html", "console.js", "console.css")
    assert {f"edge/http/console/{n}" for n in files} <= names


def test_installed_wheel_reports_compiled(venv: Path, tmp_path: Path) -> None:
    out = _run([venv / "edgesim", "--version"], cwd=tmp_path, env=_clean_env())
    assert out.startswith("edgesim 0."), out
    count = len(_loader_modules())
    assert f"connect path: compiled (mypyc, {count} modules installed in" in out, out
    assert str(ROOT) not in out, out
    status = _run(
        [venv / "python", "-m", "edge.compiled", "status"], cwd=tmp_path, env=_clean_env()
    )
    assert status.startswith("compiled (mypyc"), status
    # The same install runs its sources when told to.
    env = dict(_clean_env(), EDGESIM_PURE_PYTHON="1")
    probe = (
        "import edge.tls.connection as c, edge.compiled as m; print(m.is_compiled(c), c.__file__)"
    )
    pure = _run([venv / "python", "-c", probe], cwd=tmp_path, env=env)
    assert pure.startswith("False "), pure
    assert pure.strip().endswith("connection.py"), pure
    compiled = _run([venv / "python", "-c", probe], cwd=tmp_path, env=_clean_env())
    assert compiled.startswith("True "), compiled
    assert compiled.strip().endswith(".so"), compiled


def test_installed_edge_serve_runs_compiled(venv: Path, tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [
            venv / "edgesim",
            "edge",
            "serve",
            "--mqtt",
            "127.0.0.1:0",
            "--https",
            "127.0.0.1:0",
            "--admin",
            "off",
            "--store",
            tmp_path / "store.db",
            "--state-dir",
            tmp_path / "state",
        ],
        cwd=tmp_path,
        env=_clean_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    # A reader thread, not select(): the text stream reads ahead of the line asked for.
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stderr is not None
    reader = threading.Thread(target=lambda: [lines.put(x) for x in proc.stderr or ()])
    reader.start()
    seen: list[str] = []
    try:
        while not any("connect path" in line for line in seen):
            try:
                seen.append(lines.get(timeout=60))
            except queue.Empty:
                pytest.fail(f"edge serve said no connect path within 60 s: {seen}")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        reader.join(timeout=10)
        proc.stderr.close()
    said = next(line for line in seen if "connect path" in line)
    assert "connect path compiled (mypyc" in said, said
    assert proc.returncode == 0, seen


def test_installed_pytest_plugin_connects_a_device(venv: Path, tmp_path: Path) -> None:
    (tmp_path / "test_through_plugin.py").write_text(
        "def test_round_trip(device):\n"
        "    dev = device('dev-1', protocol='mqtt')\n"
        "    topic = 'devices/dev-1/telemetry'\n"
        "    assert dev.subscribe(topic, qos=1).ok\n"
        "    assert dev.publish(topic, '21.5', qos=1).ok\n"
        "    assert dev.receive(timeout=10).payload == b'21.5'\n"
        "\n"
        "def test_plugin_is_the_installed_one(pytestconfig):\n"
        "    import edge.compiled, testkit.pytest_plugin as p\n"
        "    assert pytestconfig.pluginmanager.hasplugin('edgesim')\n"
        f"    assert not p.__file__.startswith({str(ROOT)!r})\n"
        "    assert edge.compiled.status().startswith('compiled')\n"
    )
    out = _run(
        [
            venv / "python",
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--timeout",
            "120",
            tmp_path,
        ],
        cwd=tmp_path,
        env=_clean_env(),
        timeout=300,
    )
    assert "2 passed" in out, out
