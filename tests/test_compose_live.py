"""``docker compose up`` for real: images built offline from the project's own files, three
synthetic silos with TLS and SuperNode authentication, the run checked against the in-process
reference, the mounts inspected, and nothing left behind; then a silo killed mid-run.

Needs a Docker engine, Compose v2 and debootstrap (``.ci/run`` installs them and starts
``dockerd``); skipped without them, unless ``MERGEREC_REQUIRE_DOCKER=1`` (CI) makes that a
failure.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from common.config import load_yaml
from common.settings import PipelineConfig
from common.federated import MESSAGE_KINDS
from common.pipeline import run_pipeline

ROOT = Path(__file__).resolve().parents[1]
SMOKE = "experiments/configs/pipelines/compose-smoke.yaml"
SILOS = ("beauty", "sports", "pantry")
TOLERANCE = 0.02  # threads per silo differ from the in-process run (docs/deployment.md)


def _docker_ready() -> str | None:
    if not shutil.which("docker"):
        return "no docker client"
    if subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        return "no Docker engine running"
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode != 0:
        return "no Compose v2"
    if not shutil.which("debootstrap"):
        return "no debootstrap (offline base image)"
    return None


missing = _docker_ready()
if missing and os.environ.get("MERGEREC_REQUIRE_DOCKER") == "1":
    raise RuntimeError(f"MERGEREC_REQUIRE_DOCKER=1 but {missing}")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(missing is not None, reason=str(missing))]


def _compose(project: str, env: dict[str, str], *args: str, timeout: float = 1800
             ) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", "compose", "-p", project, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _left_behind(project: str) -> list[str]:
    label = f"label=com.docker.compose.project={project}"
    out = []
    for kind in (["ps", "-a"], ["network", "ls"], ["volume", "ls"]):
        lines = subprocess.run(["docker", *kind, "--filter", label, "-q"], capture_output=True,
                               text=True).stdout.split()
        out += [f"{kind[0]}:{x}" for x in lines]
    return out


@pytest.fixture(scope="module")
def image():
    """The project image, built offline (debootstrap base + wheelhouse; both cached)."""
    started = time.monotonic()
    prep = subprocess.run(["bash", "deploy/prepare-offline.sh"], cwd=ROOT, capture_output=True,
                          text=True, timeout=1800)
    assert prep.returncode == 0, prep.stdout[-2000:] + prep.stderr[-2000:]
    env = {**os.environ, "BASE_IMAGE": "mergerec-base:bookworm", "PIP_SOURCE": "wheelhouse"}
    build = _compose("mergerec-build", env, "build", "pki")
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    print(f"\noffline image build: {time.monotonic() - started:.0f} s")
    return env


def _up(image_env: dict[str, str], project: str, results: Path, run_config: str = "",
        detach: bool = False) -> subprocess.CompletedProcess:
    env = {**image_env, "EXPERIMENT": SMOKE, "RESULTS_DIR": str(results), "RUN_CONFIG": run_config}
    args = ["up", "-d"] if detach else ["up", "--abort-on-container-failure"]
    return _compose(project, env, *args)


def test_compose_up_runs_the_job_like_the_reference(image, tmp_path):
    project, results = "mergerec-live", tmp_path / "results"
    started = time.monotonic()
    try:
        run = _up(image, project, results)
        print(f"docker compose up: {time.monotonic() - started:.0f} s")
        assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
        assert "run completed" in run.stdout
        report = json.loads((results / "report.json").read_text())
        assert report["failures"] == []
        ledger = json.loads((results / "ledger.json").read_text())
        assert {m["kind"] for m in ledger["messages"]} <= set(MESSAGE_KINDS)
        assert set(ledger["summary"]) == set(SILOS)
        cfg = load_yaml(PipelineConfig, ROOT / SMOKE)
        cfg.data.cache_dir = str(tmp_path / "cache")
        reference = run_pipeline(cfg)["results"]
        for method, row in reference.items():
            for domain, metrics in row.items():
                got = report["results"][method][domain]["recall@10"]
                assert abs(got - metrics["recall@10"]) <= TOLERANCE, (method, domain, got, metrics)
        mounts = _data_mounts(project)
        for silo in SILOS:
            assert mounts[f"{project}_data-{silo}"] == {
                f"superexec-clientapp-{silo}": False, f"data-{silo}": True}, mounts
    finally:
        down = _compose(project, image, "down", "-v")
        assert down.returncode == 0, down.stderr
    assert _left_behind(project) == []


def _data_mounts(project: str) -> dict[str, dict[str, bool]]:
    """Volume name → {service: writable} over every container of the project."""
    ids = subprocess.run(["docker", "ps", "-a", "-q", "--filter",
                          f"label=com.docker.compose.project={project}"],
                         capture_output=True, text=True).stdout.split()
    info = json.loads(subprocess.run(["docker", "inspect", *ids], capture_output=True,
                                     text=True).stdout)
    out: dict[str, dict[str, bool]] = {}
    for c in info:
        service = c["Config"]["Labels"]["com.docker.compose.service"]
        for m in c["Mounts"]:
            if m.get("Type") == "volume" and "_data-" in m.get("Name", ""):
                out.setdefault(m["Name"], {})[service] = bool(m["RW"])
    return out


def test_a_silo_killed_mid_run_is_reported_and_the_run_completes(image, tmp_path):
    project, results = "mergerec-kill", tmp_path / "results"
    try:
        run = _up(image, project, results, run_config="min-silos=2", detach=True)
        assert run.returncode == 0, run.stderr[-3000:]
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            logs = _compose(project, image, "logs", "submit").stdout
            if "train: sports replied" in logs:
                break
            time.sleep(5)
        else:
            pytest.fail("sports never finished training:\n" + logs[-3000:])
        for service in ("supernode-sports", "superexec-clientapp-sports"):  # gone for good
            container = f"{project}-{service}-1"
            subprocess.run(["docker", "update", "--restart", "no", container], capture_output=True)
            subprocess.run(["docker", "kill", container], capture_output=True)
        code = subprocess.run(["docker", "wait", f"{project}-submit-1"], capture_output=True,
                              text=True, timeout=1800).stdout.strip()
        assert code == "0", _compose(project, image, "logs", "submit").stdout[-4000:]
        report = json.loads((results / "report.json").read_text())
        assert {f["silo"] for f in report["failures"]} == {"sports"}
        assert "mergerec task-wise" in report["results"]
    finally:
        _compose(project, image, "down", "-v")
    assert _left_behind(project) == []
