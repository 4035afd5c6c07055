"""The example Kubernetes Indexed Job for a sharded fleet (never run against a cluster).

Two checks that need no cluster: every object validates against the upstream
Kubernetes 1.30 JSON schemas in strict mode (``kubernetes-validate`` bundles them, so
this works offline; unknown fields fail), and each container's shell command, run
with a stand-in ``edgesim`` that prints its arguments, gives ``--shard K/N`` with
K = JOB_COMPLETION_INDEX + 1 and arguments that ``edgesim``'s own parser accepts.
"""

from __future__ import annotations

import copy
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from edge.cli import build_parser

kubernetes_validate = pytest.importorskip("kubernetes_validate")

pytestmark = pytest.mark.timeout(60)

MANIFEST = Path(__file__).parents[2] / "examples" / "kubernetes" / "fleet-indexed-job.yaml"
K8S = "1.30"


def _docs() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]


def _container(doc: dict[str, Any]) -> dict[str, Any]:
    containers = doc["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return dict(containers[0])


def test_every_object_validates_against_the_kubernetes_schema() -> None:
    docs = _docs()
    assert [d["metadata"]["name"] for d in docs] == ["edgesim-fleet", "edgesim-fleet-watch"]
    for doc in docs:
        kubernetes_validate.validate(doc, K8S, strict=True)
    # The check can fail: a misspelt field or a wrong type is caught.
    bad = copy.deepcopy(docs[0])
    bad["spec"]["template"]["spec"]["containers"][0]["comand"] = ["edgesim"]
    with pytest.raises(kubernetes_validate.ValidationError, match="'comand' was unexpected"):
        kubernetes_validate.validate(bad, K8S, strict=True)
    bad = copy.deepcopy(docs[0])
    bad["spec"]["completions"] = "4"
    with pytest.raises(kubernetes_validate.ValidationError, match="is not of type 'integer'"):
        kubernetes_validate.validate(bad, K8S, strict=True)


def _argv(container: dict[str, Any], tmp_path: Path, index: int | None) -> list[str]:
    # A stand-in edgesim on PATH prints its arguments, one per line.
    fake = tmp_path / "bin" / "edgesim"
    fake.parent.mkdir(exist_ok=True)
    fake.write_text('#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done\n')
    fake.chmod(0o755)
    env = {"PATH": f"{fake.parent}:{os.environ['PATH']}"}
    env.update({e["name"]: e["value"] for e in container.get("env", [])})
    if index is not None:
        env["JOB_COMPLETION_INDEX"] = str(index)  # what Kubernetes sets in an Indexed Job
    command = [*container["command"], *container["args"]]
    out = subprocess.run(command, env=env, capture_output=True, text=True, timeout=10, check=True)
    return out.stdout.splitlines()


def test_job_completion_index_maps_to_the_shard_and_edgesim_accepts_the_arguments(
    tmp_path: Path,
) -> None:
    job, watcher = _docs()
    assert job["spec"]["completionMode"] == "Indexed"
    n = job["spec"]["completions"]
    assert job["spec"]["parallelism"] == n
    shard = _container(job)
    runs = set()
    for index in range(n):
        argv = _argv(shard, tmp_path, index)
        args = build_parser().parse_args(argv)
        assert args.shard == f"{index + 1}/{n}"
        runs.add((args.cluster, args.run))
    watch = build_parser().parse_args(_argv(_container(watcher), tmp_path, None))
    assert watch.verb == "watch"
    # Every shard and the watcher meet on the same NATS server under the same run id.
    assert runs == {(watch.cluster, watch.run)}
