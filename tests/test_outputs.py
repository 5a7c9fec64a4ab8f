"""Result files: staged until the run completes, the old results untouched until then, write
errors naming the path."""

import json

import pytest
import torch

from common.io import OutputError, RunOutputs, atomic_save_safetensors, atomic_write_text
from common.pipeline import run_pipeline
from tests.runs import tiny_config


def test_an_interrupted_run_leaves_the_previous_results_whole(tmp_path):
    out = tmp_path / "out"
    atomic_write_text(out / "report.json", json.dumps({"run": "old"}))
    atomic_write_text(out / "ledger.json", "old ledger")
    (out / "silos").mkdir()  # silo work folders are not results: never touched
    staged = RunOutputs(out)
    atomic_save_safetensors({"w": torch.ones(2)}, staged.path("merged/m.safetensors"))
    atomic_write_text(staged.path("ledger.json"), "new ledger")
    # the run dies here: nothing of it is in place, the old folder is complete and unchanged
    assert json.loads((out / "report.json").read_text()) == {"run": "old"}
    assert not (out / "merged").exists() and (out / "ledger.json").read_text() == "old ledger"
    with pytest.raises(OutputError, match="no report.json"):
        staged.commit()
    atomic_write_text(staged.path("report.json"), json.dumps({"run": "new"}))
    staged.commit()
    assert json.loads((out / "report.json").read_text()) == {"run": "new"}
    assert (out / "merged" / "m.safetensors").is_file() and (out / "silos").is_dir()
    assert not list(out.glob(".partial-*"))


def test_a_write_error_names_the_path(tmp_path):
    blocker = tmp_path / "merged"
    blocker.write_text("a file where a folder must go")
    with pytest.raises(OutputError, match=r"merged/m.safetensors: cannot write"):
        atomic_save_safetensors({"w": torch.ones(2)}, blocker / "m.safetensors")
    with pytest.raises(OutputError, match=r"report.json: cannot write"):
        atomic_write_text(blocker / "report.json", "{}")


def test_a_run_keeps_its_results_as_it_goes(tmp_path, monkeypatch):
    """A run that fails after learning leaves the merged models and received weights in its
    partial folder, and the previous report in place."""
    import common.federated.coordinator as coordinator

    out = tmp_path / "out"
    atomic_write_text(out / "report.json", json.dumps({"run": "old"}))

    def boom(*args, **kwargs):
        raise RuntimeError("evaluation crashed")

    monkeypatch.setattr(coordinator, "evaluate_in_silos", boom)
    with pytest.raises(RuntimeError, match="evaluation crashed"):
        run_pipeline(tiny_config(tmp_path, output_dir=str(out)))
    [partial] = out.glob(".partial-*")
    assert (partial / "models" / "mergerec_task-wise" / "model.safetensors").is_file()
    assert (partial / "received" / "beauty.safetensors").is_file()
    assert json.loads((out / "report.json").read_text()) == {"run": "old"}
