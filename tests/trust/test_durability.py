"""A writer killed mid-transaction, and concurrent writers on one store file."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from trustpki import NOW, build, pem, root

from edge.trust.sqlite import SqliteTrustStore

# The child opens the store with a fault hook that reports "written" once the
# upload's rows are in the (uncommitted) transaction, then blocks on stdin until
# it is killed: the parent knows exactly when to kill, without sleeping.
CHILD = textwrap.dedent(
    """
    import sys
    from datetime import UTC, datetime
    from pathlib import Path
    from edge.trust.sqlite import SqliteTrustStore

    def hook(point: str) -> None:
        if point == "upload:written":
            sys.stdout.write("written\\n")
            sys.stdout.flush()
            sys.stdin.read()

    store = SqliteTrustStore(
        sys.argv[1], clock=lambda: datetime(2026, 6, 1, 12, tzinfo=UTC), fault_hook=hook
    )
    store.upload("fleet", Path(sys.argv[2]).read_bytes())
    sys.stdout.write("committed\\n")
    """
)


@pytest.mark.timeout(60)
def test_kill_9_in_the_middle_of_an_upload_keeps_the_previous_state(
    store_path: Path, tmp_path: Path
) -> None:
    first, second = root("First"), root("Second")
    with SqliteTrustStore(store_path, clock=lambda: NOW) as store:
        store.upload("fleet", first.cert_pem)
        store.bind("fleet", "*")
        generation = store.generation()
    upload = tmp_path / "second.pem"
    upload.write_bytes(second.cert_pem)
    with subprocess.Popen(
        [sys.executable, "-c", CHILD, str(store_path), str(upload)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as child:
        assert child.stdout is not None
        assert child.stdout.readline() == "written\n"
        child.send_signal(signal.SIGKILL)
        assert child.wait() == -signal.SIGKILL
    with SqliteTrustStore(store_path, clock=lambda: NOW) as store:
        assert [v.version for v in store.versions("fleet")] == [1]
        assert store.generation() == generation
        snap = store.snapshot()
        assert snap.sets["fleet"].ca_certs == (first.cert,)
        assert snap.resolve(None) is snap.sets["fleet"]
        # The dead writer's lock is gone: the next upload goes through as version 2.
        assert store.upload("fleet", second.cert_pem).version == 2


def test_concurrent_uploads_from_threads_get_distinct_versions(store_path: Path) -> None:
    files = [
        pem(build(f"Thread Root {i}", key=ec.generate_private_key(ec.SECP256R1()))[0])
        for i in range(8)
    ]
    SqliteTrustStore(store_path).close()  # create the schema once, before the race
    results: list[int] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(files))

    def upload(data: bytes) -> None:
        try:
            with SqliteTrustStore(store_path, clock=lambda: NOW) as own:
                barrier.wait(timeout=30)
                results.append(own.upload("fleet", data).version)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=upload, args=(data,)) for data in files]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    assert sorted(results) == list(range(1, 9))
    with SqliteTrustStore(store_path, clock=lambda: NOW) as store:
        assert len(store.versions("fleet")) == 8
        active = store.get_set("fleet").active_version
        assert active in results


WRITER = textwrap.dedent(
    """
    import sys
    from datetime import UTC, datetime
    from pathlib import Path
    from edge.trust.sqlite import SqliteTrustStore

    store = SqliteTrustStore(sys.argv[1], clock=lambda: datetime(2026, 6, 1, 12, tzinfo=UTC))
    sys.stdout.write("ready\\n")
    sys.stdout.flush()
    sys.stdin.readline()  # start together
    for path in sys.argv[2:]:
        store.upload("shared", Path(path).read_bytes())
        store.bind("shared", "h" + Path(path).stem + ".example")
    store.close()
    """
)


@pytest.mark.timeout(90)
def test_concurrent_uploads_from_processes(store_path: Path, tmp_path: Path) -> None:
    SqliteTrustStore(store_path).close()
    procs = []
    for p in range(3):
        paths = []
        for i in range(4):
            path = tmp_path / f"{p}-{i}.pem"
            path.write_bytes(
                pem(build(f"P{p} R{i}", key=ec.generate_private_key(ec.SECP256R1()))[0])
            )
            paths.append(str(path))
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", WRITER, str(store_path), *paths],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
        )
    try:
        for proc in procs:
            assert proc.stdout is not None
            assert proc.stdout.readline() == "ready\n"
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        for proc in procs:
            assert proc.wait(timeout=60) == 0
    finally:
        for proc in procs:
            proc.kill()
            proc.communicate()
    with SqliteTrustStore(store_path, clock=lambda: NOW) as store:
        assert [v.version for v in store.versions("shared")] == list(range(1, 13))
        assert len(store.bindings()) == 12
        # 12 uploads with activation + 12 new bindings, each exactly one generation.
        assert store.generation() == 24
