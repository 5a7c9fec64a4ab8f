"""The experiment runner end to end on tiny synthetic data (in-process): settings × seeds,
DP and membership inference, mean ± std tables, plots, resume and re-report."""

import dataclasses
import functools
import itertools
import json
import re
from pathlib import Path

import pytest
import yaml

from experiments.runner import run_experiment

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
from tests.runs import TINY, tiny_config, tiny_raw


def test_privacy_experiment_end_to_end(tmp_path):
    base = tiny_raw(tmp_path)
    base["data"]["holdout_fraction"] = 0.25
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base, allow_unicode=True))
    exp = {"name": "tiny-dp", "base": "base.yaml", "seeds": [0, 1], "attack": True,
           "settings": [{"label": "no DP"},
                        {"label": "eps=8", "set": {"train": {"dp": {"epsilon": 8.0}}},
                         "epsilon": 8.0}]}
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(exp))
    out = run_experiment(path, mode="in-process", output=tmp_path / "results", seeds=[1])
    first = sorted(out.glob("runs/*/seed*/run.json"))
    assert [r.parent.name for r in first] == ["seed1", "seed1"]
    first_stamp = [r.stat().st_mtime for r in first]
    out = run_experiment(path, mode="in-process", output=tmp_path / "results")  # resumes
    assert [r.stat().st_mtime for r in first] == first_stamp
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {"no DP", "eps=8"}
    assert len(summary["eps=8"]["headline_recall@10"]) == 2  # two seeds
    assert all(0 < e <= 8.0 for e in summary["eps=8"]["epsilon"]) and not summary["no DP"]["epsilon"]
    assert all(0 <= a <= 1 for a in summary["no DP"]["attack_auc"])
    assert len(summary["no DP"]["wall_minutes"]) == 2 and all(m > 0 for m in summary["no DP"]["wall_minutes"])
    report = (out / "report.md").read_text()
    assert "± " in report and "| eps=8 | 8 (spent " in report and "attack AUC" in report
    assert "wall time (min)" in report
    assert "| eps=8 | in-domain fine-tuned | " in report  # per domain, per setting
    for png in ("settings.png", "per_domain.png", "weights_heatmap.png"):
        assert (out / png).stat().st_size > 1000
    runs = sorted(out.glob("runs/*/seed*/run.json"))
    assert len(runs) == 4
    stamp = [r.stat().st_mtime for r in runs]
    run_experiment(path, mode="in-process", output=out, report_only=True)
    assert [r.stat().st_mtime for r in runs] == stamp  # re-reported, nothing re-run
    assert (out / "received").exists() is False
    assert all((r.parent / "received").is_dir() for r in runs)


def test_sharing_unseen_and_method_experiments_end_to_end(tmp_path):
    base = tiny_raw(tmp_path, learned=TINY["learned"][:1])
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base, allow_unicode=True))
    task = TINY["learned"][0]
    exp = {"name": "tiny-mixed", "base": "base.yaml", "seeds": [0],
           "settings": [
               {"label": "weights only", "set": {"learned": []}},
               {"label": "full answers"},
               {"label": "top-5", "set": {"learned": [{**task, "teacher_topk": 5}]}},
               {"label": "budget 30", "set": {
                   "learned": [{**task, "pseudo_users": {"sample": "centroid", "num": 30}}],
                   "federation": {"query_budget": 30}}},
               {"label": "unseen pantry", "set": {"federation": {"eval_only": ["pantry"]}}},
               {"label": "interpolated", "set": {"learned": [], "train": {"interpolation_grid": 2}}},
               {"label": "rec loss only", "set": {"learned": [
                   {**task, "name": "rec only", "distill": {**task["distill"], "loss": {
                       "rec_weight": 1.0, "kd_weight": 0.0}}}]}}]}
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(exp, allow_unicode=True))
    out = run_experiment(path, mode="in-process", output=tmp_path / "results")
    summary = json.loads((out / "summary.json").read_text())
    sent = {label: summary[label]["bytes"][0] for label in summary}
    queries = {label: summary[label]["queries"][0] for label in summary}
    assert queries["weights only"] == 0 < queries["budget 30"] <= 30 < queries["full answers"]
    assert sent["weights only"] < sent["budget 30"] < sent["full answers"]
    assert sent["top-5"] < sent["full answers"]
    # the silos of every run share one work dir: later settings reuse the fine-tuned models
    later = json.loads((out / "runs" / "full_answers" / "seed0" / "run.json").read_text())
    assert all(t["reused_checkpoint"] == 1.0 for t in later["training"].values())
    report = (out / "report.md").read_text()
    assert "averaged over the evaluation-only (unseen) domains" in report
    unseen = report.split("evaluation-only (unseen) domains")[1]
    assert "| mergerec task-wise | — / — | — / — | — / — | — / — | 0." in unseen
    assert "| rec only |" in report
    # the silos of the interpolated setting trained again and report the α each one kept
    tuned = report.split("## Fine-tuning per silo")[1]
    row = next(line for line in tuned.splitlines() if line.startswith("| interpolated |"))
    assert row.count("α ") == 3  # three silos, one seed
    assert all(a in ("0.5", "1") for a in re.findall(r"α ([0-9.]+)", row))
    # another experiment can work in this one's silo folder (silo_dir, relative to its file)
    other = {"name": "tiny-reuse", "base": "base.yaml", "seeds": [0], "silo_dir": "results/silos",
             "settings": [{"label": "again", "set": {"learned": []}}]}
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(other))
    again = run_experiment(tmp_path / "other.yaml", mode="in-process", output=tmp_path / "other")
    run = json.loads((again / "runs" / "again" / "seed0" / "run.json").read_text())
    assert all(t["reused_checkpoint"] == 1.0 for t in run["training"].values())
    assert not (again / "silos").exists()


def test_finished_runs_are_rerun_when_their_inputs_change(tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    from common.model import state_hash

    base = tiny_raw(tmp_path, learned=[])
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base, allow_unicode=True))
    other = {"name": "reuser", "base": "base.yaml", "seeds": [0], "silo_dir": "bench/silos",
             "settings": [{"label": "a"}]}
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(other))
    out = run_experiment(path, mode="in-process", output=tmp_path / "results")
    done = out / "runs" / "a" / "seed0" / "run.json"
    first = json.loads(done.read_text())
    assert set(first["inputs"]["received_sha256"]) == {"beauty", "pantry", "sports"}
    stamp = done.stat().st_mtime_ns
    run_experiment(path, mode="in-process", output=out)  # nothing changed: resumed as it is
    assert done.stat().st_mtime_ns == stamp

    # another run retrains a silo's checkpoint in the shared silo folder (same file name)
    [ckpt] = (tmp_path / "bench" / "silos" / "pantry" / "checkpoints").glob("*.safetensors")
    state = load_file(str(ckpt))
    state["history_weight"] = state["history_weight"] + 1.0
    save_file(state, str(ckpt))
    run_experiment(path, mode="in-process", output=out, report_only=True)
    assert "is stale" in capsys.readouterr().err and done.stat().st_mtime_ns == stamp
    run_experiment(path, mode="in-process", output=out)
    again = json.loads(done.read_text())
    assert again["inputs"]["received_sha256"]["pantry"] == state_hash(state)
    assert again["inputs"]["received_sha256"]["beauty"] == first["inputs"]["received_sha256"]["beauty"]
    stale = out / "runs" / "a" / "stale-seed0" / "run.json"
    assert json.loads(stale.read_text())["inputs"] == first["inputs"]  # the old run is kept
    assert "no longer among the silos' checkpoints" in capsys.readouterr().out

    # an edited configuration makes the run stale too
    assert "Metrics: test split" in (out / "report.md").read_text()
    other["common"] = {"merges": [{"method": "average"}], "eval": {"split": "val"}}
    path.write_text(yaml.safe_dump(other))
    stamp = done.stat().st_mtime_ns
    run_experiment(path, mode="in-process", output=out)
    assert done.stat().st_mtime_ns != stamp and "configuration changed" in capsys.readouterr().out
    report = (out / "report.md").read_text()
    assert "Metrics: val split" in report and 'Protocol: {"split": "val"' in report
    # a setting measured on another split: the report names both and each one's protocol
    other["settings"].append({"label": "b", "set": {"eval": {"split": "test"}}})
    path.write_text(yaml.safe_dump(other))
    report = (run_experiment(path, mode="in-process", output=out) / "report.md").read_text()
    assert "Metrics: test and val split" in report
    assert 'Protocol (a): {"split": "val"' in report and 'Protocol (b): {"split": "test"' in report
    assert json.loads((stale.parent.parent / "stale-seed0-2" / "run.json").read_text()) == again
    assert json.loads(stale.read_text())["inputs"] == first["inputs"]  # nothing overwritten
    assert list(json.loads(done.read_text())["results"]) != list(again["results"])


def test_shipped_experiments_are_valid():
    """Every experiment YAML loads, its name is its file's, its settings resolve; experiments
    and pipelines live in their own folders."""
    from pathlib import Path

    from common.config import deep_merge, from_dict, load_yaml
    from common.settings import PipelineConfig
    from experiments.runner import load_experiment

    configs = Path(__file__).resolve().parents[1] / "experiments" / "configs"
    for path in sorted((configs / "experiments").glob("*.yaml")):
        exp, base = load_experiment(path)
        assert exp.name == path.stem  # results/<name>/ matches the file
        for setting in exp.settings:
            cfg = from_dict(PipelineConfig, deep_merge(deep_merge(base, exp.common), setting.set))
            if exp.base is not None:  # the real domains, in the benchmark's order
                names = [s.name for s in cfg.data.sources]
                five = ["Beauty", "Pantry", "Sports", "Scientific", "Office"]
                assert names and names == [n for n in five if n in names], (path, names)
            if exp.data_dir:  # wherever the sources are named, they point at the shared data
                assert all(Path(s.path).is_absolute() and Path(s.path).parent.name in
                           ("amazon", "lcrec") and Path(s.path).is_relative_to(SHARED_DATA)
                           for s in cfg.data.sources), (path, cfg.data.sources)
    for path in sorted((configs / "pipelines").glob("*.yaml")):
        load_yaml(PipelineConfig, path)
    exp, _ = load_experiment(configs / "experiments" / "learned-variants.yaml")
    assert Path(exp.silo_dir) == configs.parents[1] / "results" / "benchmark" / "amazon3" / "seed0" / "silos"
    exp, base = load_experiment(configs / "experiments" / "branch-init.yaml")  # synthetic default
    inits = [from_dict(PipelineConfig, deep_merge(deep_merge(base, exp.common), s.set)).model.branch_init
             for s in exp.settings]
    assert inits == ["rezero", "zero_out"]


def test_shipped_benchmark_variants_extend_the_reference():
    from pathlib import Path

    import yaml

    from common.config import load_yaml
    from common.settings import PipelineConfig

    configs = Path(__file__).resolve().parents[1] / "experiments" / "configs" / "pipelines"
    ref = load_yaml(PipelineConfig, configs / "amazon3.yaml")
    for name in ("amazon3-bs32", "amazon3-zero-out", "amazon3-silo-settings", "benchmark3"):
        path = configs / f"{name}.yaml"
        assert yaml.safe_load(path.read_text())["extends"] == "amazon3.yaml"  # names only changes
        cfg = load_yaml(PipelineConfig, path)
        assert cfg.data == ref.data and cfg.eval == ref.eval
    five = load_yaml(PipelineConfig, configs / "benchmark.yaml")  # amazon5.yaml's five domains,
    assert yaml.safe_load((configs / "benchmark.yaml").read_text())["extends"] == "amazon5.yaml"
    assert five.data.sources[:3] == ref.data.sources and five.eval == ref.eval  # three + one line each
    assert [(s.name, s.format) for s in five.data.sources[3:]] == [("Scientific", "lcrec"),
                                                                   ("Office", "lcrec")]


def test_benchmark_report_shows_each_silos_own_training():
    from experiments.benchmark import training_table

    report = {"config": {"train": {"batch_size": 256, "epochs": 4, "lr": 0.003},
                         "federation": {"silo_train": {"Beauty": {
                             "batch_size": 32, "epochs": 3, "loss": "sampled_softmax"}}}},
              "training": {
                  "Beauty": {"best_epoch": 3.0, "best_val_ndcg@10": 0.03391, "epochs_run": 3.0,
                             "seconds": 340.2, "reused_checkpoint": 0.0, "train.batch_size": 32.0,
                             "train.epochs": 3.0, "alpha": 0.75},
                  "Pantry": {"best_epoch": 4.0, "best_val_ndcg@10": 0.0685, "epochs_run": 4.0,
                             "seconds": 95.0, "reused_checkpoint": 1.0},
                  "Sports": {"best_epoch": 1.0, "best_val_ndcg@10": 0.02, "epochs_run": 2.0,
                             "reused_checkpoint": 1.0}}}
    lines = training_table(report).splitlines()
    assert lines[0] == "run's settings: 256 users per step, 4 epochs, lr 0.003, loss full_softmax"
    assert lines[-3:] == ["| Beauty | batch_size 32, epochs 3, loss sampled_softmax | 3 | 3 | 0.75 "
                          "| 0.0339 | 340 |",
                          "| Pantry | the run's | 4 | 4 | 1 | 0.0685 | 95 (reused) |",
                          "| Sports | the run's | 2 | 1 | 1 | 0.0200 | ? (reused) |"]


@pytest.mark.slow
def test_experiment_through_the_flower_simulation(tmp_path):
    base = tiny_raw(tmp_path, learned=TINY["learned"][:1])
    base["data"]["holdout_fraction"] = 0.25
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base, allow_unicode=True))
    exp = {"name": "tiny-sim", "base": "base.yaml", "seeds": [0], "attack": True,
           "settings": [{"label": "text"},
                        {"label": "vectors", "set": {"federation": {"catalogue": "vectors"}}}]}
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(exp))
    out = run_experiment(path, mode="simulation", output=tmp_path / "results")
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {"text", "vectors"}
    # the same model either way; only what left the silos differs
    assert summary["text"]["headline_recall@10"] == summary["vectors"]["headline_recall@10"]
    assert summary["text"]["bytes"] != summary["vectors"]["bytes"]
    assert (out / "runs" / "text" / "seed0" / "simulation.log").is_file()


def test_oracle_merge_on_a_finished_run(tmp_path, monkeypatch, capsys):
    from common.pipeline import run_pipeline
    from experiments import oracle_merge
    from experiments.oracle_merge import run_oracle, summary
    from experiments.publish import publish
    from tests.runs import tiny_config

    bench = tmp_path / "bench" / "seed0"
    run_pipeline(tiny_config(tmp_path, output_dir=str(bench), learned=TINY["learned"][:1]))
    report = run_oracle(bench, ["task", "tensor"], steps=5, batch_size=8, max_users=30)
    res = report["results"]
    for g, groups in (("task", 1), ("tensor", None)):
        row = res[f"oracle {g}-wise (real validation users)"]
        assert set(row) == {"beauty", "sports", "pantry", "average"}
        assert 0 <= row["average"]["recall@10"] <= 1
        weights = report["learned_weights"][f"oracle {g}-wise (real validation users)"]
        assert all(len(w) == 3 for w in weights.values()) and (groups is None or len(weights) == groups)
    assert len(report["learned_weights"]["oracle tensor-wise (real validation users)"]) > 5
    learned = TINY["learned"][0]["name"]
    assert report["learned"] == [learned] and report["training_free"]
    assert learned in res and "in-domain fine-tuned" in res  # the run's rows kept
    assert set(report["validation_average"]) == set(report["learned_weights"])
    text = summary(report)
    assert "% of in-domain); on validation, where it was fitted, 0." in text
    assert f"- {learned}: " in text  # the pseudo-user merge beside the oracle

    # the command: one folder per seed, reused with the same settings, published with a plot
    monkeypatch.setattr(oracle_merge, "publish", functools.partial(publish, root=tmp_path / "reports"))
    argv = ["--benchmark", str(bench.parent), "--output", str(tmp_path / "oracle"), "--seeds", "0",
            "--granularity", "task", "--steps", "3", "--batch-size", "8", "--users", "20"]
    oracle_merge.main(argv)
    assert "reused" not in capsys.readouterr().out
    oracle_merge.main([*argv, "--publish", "oracle"])
    assert "finished with these settings, reused" in capsys.readouterr().out
    published = tmp_path / "reports" / "oracle"
    assert {p.name for p in published.iterdir()} == {"report.md", "summary.json", "oracle_merge.png"}
    assert "## Seed 0" in (published / "report.md").read_text()
    assert json.loads((published / "summary.json").read_text())["seeds"]["0"]["stamp"]["commit"]
    oracle_merge.main([*argv[:-1], "30"])  # other settings: learned again
    assert "reused" not in capsys.readouterr().out
    saved = (bench / "report.json").read_text()
    (bench / "report.json").write_text(saved + " ")  # the benchmark ran again: so does the oracle
    oracle_merge.main([*argv[:-1], "30"])
    assert "reused" not in capsys.readouterr().out
    (bench / "report.json").write_text(saved)

    with pytest.raises(SystemExit, match="report.json: not found"):
        run_oracle(tmp_path / "nothing", ["task"], 5, 8, 30)
    (bench / "report.json").write_text(json.dumps({**json.loads(saved), "base_hash": "0" * 64}))
    with pytest.raises(SystemExit, match="θ₀ of this code differs"):
        run_oracle(bench, ["task"], 5, 8, 30)
    (bench / "report.json").write_text(saved)
    (bench / "received" / "pantry.safetensors").unlink()
    with pytest.raises(SystemExit, match="no weights for silo pantry"):
        run_oracle(bench, ["task"], 5, 8, 30)


def test_benchmark_targets_count_the_time_of_reused_trainings():
    from common.federated import BASE_LABEL, IN_DOMAIN_LABEL
    from common.pipeline import ID_BASELINE
    from experiments.benchmark import check_targets

    row = lambda r, n: {"Beauty": {"recall@10": r, "ndcg@10": n}, "average": {"recall@10": r}}  # noqa: E731
    report = {"results": {IN_DOMAIN_LABEL: row(0.08, 0.04), BASE_LABEL: row(0.05, 0.03),
                          ID_BASELINE: row(0.07, 0.05), "average": row(0.06, 0.03),
                          "m": row(0.068, 0.035)},
              "config": {"merges": [{"method": "average"}],
                         "learned": [{"name": "m", "distill": {"loss": {"rec_weight": 1.0,
                                                                        "kd_weight": 1.0}}}]},
              "total_seconds": 1800.0,
              "training": {"Beauty": {"seconds": 1500.0, "reused_checkpoint": 1.0}}}
    checks = {name: (ok, measured) for name, ok, measured in check_targets(report)}
    assert checks["Beauty: fine-tuned text model >= 1.0 x SASRec, recall@10"][0]
    assert not checks["Beauty: fine-tuned text model >= 1.0 x SASRec, ndcg@10"][0]
    assert checks["whole benchmark <= 60 min on this machine"] == (
        True, "55.0 min, 25.0 min of it the reused trainings' own time")
    report["training"]["Beauty"]["seconds"] = 2000.0
    assert not dict((n, ok) for n, ok, _ in check_targets(report))[
        "whole benchmark <= 60 min on this machine"]
    del report["training"]["Beauty"]["seconds"]
    _, met, measured = check_targets(report)[-1]
    assert not met and "whose time their checkpoints do not record: not measured" in measured


def test_benchmark_targets_name_the_papers_learned_merge_beside_a_residual_one():
    from common.federated import BASE_LABEL, IN_DOMAIN_LABEL
    from experiments.benchmark import check_targets

    row = lambda r: {"Beauty": {"recall@10": r, "ndcg@10": r}, "average": {"recall@10": r}}  # noqa: E731
    loss = {"rec_weight": 1.0, "kd_weight": 1.0}
    report = {"results": {IN_DOMAIN_LABEL: row(0.08), BASE_LABEL: row(0.05), "average": row(0.06),
                          "w": row(0.065), "r": row(0.078)},
              "config": {"merges": [{"method": "average"}],
                         "learned": [{"name": "w", "distill": {"loss": loss}},
                                     {"name": "r", "distill": {"loss": loss, "residual_lr": 0.003}}]},
              "total_seconds": 60.0, "training": {}}
    checks = {name: ok for name, ok, _ in check_targets(report)}
    assert checks["best learned merge (r) >= 0.95 x in-domain, avg recall@10"]
    assert not checks["best merging-weights-only learned merge (the paper's) (w) >= 0.95 x "
                      "in-domain, avg recall@10"]
    report["config"]["learned"].pop()  # no residual variant: no reference rows
    assert not any("weights-only" in name for name, _, _ in check_targets(report))


def test_benchmark_reuses_a_finished_seed_with_the_same_configuration(tmp_path, capsys):
    from experiments.benchmark import run_seed

    cfg = tiny_config(tmp_path, learned=[], merges=[{"method": "average"}])
    first = run_seed(cfg, tmp_path / "seed0")
    again = run_seed(tiny_config(tmp_path, learned=[], merges=[{"method": "average"}]),
                     tmp_path / "seed0")
    assert "finished run with this configuration, reused" in capsys.readouterr().out
    assert again == json.loads((tmp_path / "seed0" / "report.json").read_text())
    assert again["results"] == first["results"]


def test_a_recorded_configuration_matches_across_settings_added_since(tmp_path):
    from experiments.benchmark import same_config
    from common.config import to_dict

    cfg = tiny_config(tmp_path)
    recorded = json.loads(json.dumps(to_dict(cfg), default=str))
    del recorded["model"]["user"], recorded["model"]["history_tokens"]  # written before they existed
    assert same_config(recorded, cfg)
    recorded["model"]["hidden"] += 1
    assert not same_config(recorded, cfg)
    assert not same_config({"model": {"no such setting": 1}}, cfg)


def test_readme_headline_matches_its_committed_report():
    from experiments.headline import headline, readme_block
    from experiments.publish import REPORTS

    root = Path(__file__).resolve().parents[1]
    if not (REPORTS / "benchmark" / "summary.json").is_file():
        pytest.fail("experiments/reports/benchmark/ is missing: publish the benchmark first")
    assert readme_block(root / "README.md") == headline()
    assert (root / "README.md").stat().st_size <= 10_000


def test_runner_wall_time_is_unknown_when_one_run_is():
    from experiments.runner import minutes_cell

    assert minutes_cell([30.0, 40.0], 2) == "35.0"
    assert minutes_cell([30.0], 2) == "?"  # one seed's reused training time unknown


def test_step_benchmark_draws_what_the_benchmark_silos_draw():
    from common.config import load_yaml, with_overrides
    from common.settings import PipelineConfig
    from experiments.step_benchmark import ROOT, sampled_negatives

    cfg = load_yaml(PipelineConfig, ROOT / "experiments/configs/pipelines/benchmark.yaml")
    own = with_overrides(cfg.train, cfg.federation.silo_train["Sports"], "Sports")
    assert own.loss == "sampled_softmax" and sampled_negatives(cfg) == own.negatives
    cfg.federation.silo_train["Beauty"] = {**cfg.federation.silo_train["Beauty"], "negatives": 7}
    with pytest.raises(SystemExit, match="expected one sampled-softmax 'negatives'"):
        sampled_negatives(cfg)


def test_history_rules_score_as_specified():
    import torch.nn.functional as F

    import torch

    from common.model import TextSeqRec
    from common.model.recommender import pad_sequences
    from common.settings import ModelConfig
    from experiments.transfer_analysis import rule_scores

    torch.manual_seed(0)
    base = TextSeqRec(ModelConfig(text_dim=8, hidden=8, heads=2, layers=1, max_len=4, item_hidden=8)).eval()
    emb = torch.randn(6, 8)
    hist = [[1, 2, 3], [4]]
    cos = F.normalize(emb, dim=-1) @ F.normalize(emb, dim=-1).T
    with torch.no_grad():
        theta0 = base.score_sequences(emb, *pad_sequences(hist, 4))
        plain = rule_scores(base, emb, 0.0, 0.0, 0.0)(hist)
        assert torch.equal(plain, theta0)  # decay 0 without bonuses is θ₀, bit for bit
        bonus = rule_scores(base, emb, 0.0, -1.0, 0.1)(hist)
        expected = cos[[3, 4]].clone()
        expected[0, [1, 2]] += 0.1
        expected[0, 3] -= 1.0
        expected[1, 4] -= 1.0
        assert torch.allclose(bonus, expected, atol=1e-6)
        decayed = rule_scores(base, emb, 0.5, 0.0, 0.0)(hist)
        user = emb[3] + 0.5 * emb[2] + 0.25 * emb[1]
        assert torch.allclose(decayed[0], F.normalize(user, dim=0) @ F.normalize(emb, dim=-1).T, atol=1e-6)
        assert torch.allclose(decayed[1], cos[4], atol=1e-6)
    # evaluation calls it outside no_grad: it must keep no autograd graph (10,000 users
    # per domain otherwise exhaust the memory)
    assert not rule_scores(base, emb, 0.4, -1.0, 0.1)(hist).requires_grad


def test_transfer_analysis_on_a_finished_run(tmp_path, monkeypatch, capsys):
    from common.evaluation import EvalConfig
    from common.pipeline import run_pipeline
    from experiments import transfer_analysis
    from experiments import publish as publishing
    from experiments.publish import publish
    from experiments.transfer_analysis import (COMPONENTS, analyse, best_universal_rule,
                                               component_transfer, markdown)
    from experiments.finished_run import load_finished_run
    from tests.runs import tiny_config

    bench = tmp_path / "bench" / "seed0"
    run_pipeline(tiny_config(tmp_path, output_dir=str(bench), learned=TINY["learned"][:1]))
    report = analyse(bench, users=40)
    domains = {"beauty", "sports", "pantry"}
    assert set(report["theta0"]) == domains and set(report["users"].values()) == {40}
    assert len(report["rules"]) == 16
    assert all(set(per) == domains for per in report["rules"].values())
    assert report["rules"]["decay 0, last +0, other +0"] == report["theta0"]
    assert all(0 <= r["last"] <= r["history"] <= 1 for r in report["repeats"].values())
    transfer = report["transfer"]
    assert set(transfer) == domains
    assert all(set(per) == domains - {src} for src, per in transfer.items())
    assert set(transfer["beauty"]["sports"]) == {"whole model", *(f"{c} only" for c in COMPONENTS)}
    rule, worst, where = best_universal_rule(report)
    assert where in domains and worst == min(
        report["rules"][rule][d]["recall@10"] / report["theta0"][d]["recall@10"] for d in domains)
    text = markdown(report)
    assert f"Best single rule for every domain: **{rule}**" in text
    assert "| beauty → sports | " in text

    # a silo whose weights are θ₀'s transfers exactly as θ₀, whole and in parts
    run = load_finished_run(bench)
    run.finetuned = [dict(run.base) for _ in run.finetuned]
    same = component_transfer(run, EvalConfig(split="val", ks=(10,), max_users=40))
    assert all(m == report["theta0"][d] for per in same.values() for d, res in per.items()
               for m in res.values())

    monkeypatch.setattr(publishing, "publish", functools.partial(publish, root=tmp_path / "reports"))
    transfer_analysis.main(["--benchmark", str(bench), "--users", "30", "--output",
                            str(tmp_path / "ta"), "--publish", "ta"])
    assert "published to" in capsys.readouterr().out
    published = tmp_path / "reports" / "ta"
    assert {p.name for p in published.iterdir()} == {"report.md", "summary.json", "rules.png"}
    assert json.loads((published / "summary.json").read_text())["stamp"]["commit"]
    with pytest.raises(SystemExit, match="report.json: not found"):
        analyse(tmp_path / "nothing", users=10)


def test_sasrec_check_on_a_finished_run(tmp_path, monkeypatch, capsys):
    from common.pipeline import run_pipeline
    from experiments import sasrec_check
    from experiments.finished_run import load_finished_run
    from experiments import publish as publishing
    from experiments.publish import publish
    from experiments.sasrec_check import TEXT_MODEL, SASRecCheckConfig, check, chosen_sasrec, markdown
    from tests.runs import tiny_config

    bench = tmp_path / "bench" / "seed0"
    sas = {"hidden": 16, "epochs": 2, "batch_size": 32, "patience": 1}
    run_pipeline(tiny_config(tmp_path, output_dir=str(bench), learned=[], id_baseline=sas))
    cfg = SASRecCheckConfig(benchmark=str(bench), domains=["beauty"],
                            variants={"as run": {}, "wider": {"hidden": 32}},
                            published={"beauty": {"recall@10": 0.5}}, published_source="a paper",
                            checkpoints=str(tmp_path / "ckpt"))
    run = load_finished_run(bench)
    report = check(cfg, run)
    rows = report["domains"]["beauty"]
    assert list(rows) == ["zero-shot base θ₀", TEXT_MODEL, "SASRec: as run", "SASRec: wider"]
    assert rows["SASRec: wider"]["training"]["settings"]["hidden"] == 32
    assert rows["SASRec: as run"]["training"]["settings"]["hidden"] == 16
    # the benchmark's own SASRec row is reproduced by the unchanged variant (same seed, data)
    bench_sas = run.report["results"]["SASRec (item ids, each silo alone)"]["beauty"]
    assert rows["SASRec: as run"]["test"]["history kept"]["recall@10"] == pytest.approx(bench_sas["recall@10"])
    # the text model row is the benchmark's in-domain model
    in_domain = run.report["results"]["in-domain fine-tuned"]["beauty"]
    assert rows[TEXT_MODEL]["test"]["history kept"]["ndcg@10"] == pytest.approx(in_domain["ndcg@10"])
    assert all(set(r[split]) == {"history kept", "history masked"} for r in rows.values()
               for split in ("val", "test"))
    text = markdown(report, cfg)
    assert f"Chosen on validation: **{chosen_sasrec(rows)}**" in text
    assert "Published SASRec (a paper): recall@10 0.500" in text
    # a reused checkpoint gives the same answer; unknown domains and runs without SASRec refused
    assert check(cfg, run)["domains"]["beauty"]["SASRec: wider"] == rows["SASRec: wider"]
    with pytest.raises(SystemExit, match="no seen domain"):
        check(SASRecCheckConfig(benchmark=str(bench), domains=["toys"]), run)
    run.cfg.id_baseline = None
    with pytest.raises(SystemExit, match="without id_baseline"):
        check(cfg, run)

    config = tmp_path / "check.yaml"
    config.write_text(f"benchmark: {bench}\ndomains: [beauty]\nvariants: {{as run: {{}}}}\n"
                      f"checkpoints: {tmp_path / 'ckpt'}\n")
    monkeypatch.setattr(publishing, "publish", functools.partial(publish, root=tmp_path / "reports"))
    sasrec_check.main(["--config", str(config), "--output", str(tmp_path / "out"), "--publish", "sc"])
    assert "published to" in capsys.readouterr().out
    assert {p.name for p in (tmp_path / "reports" / "sc").iterdir()} == {"report.md", "summary.json", "sasrec.png"}


def test_lodo_oracle_on_a_finished_leave_one_out_run(tmp_path, monkeypatch, capsys):
    from common.evaluation import evaluate_model
    from common.merging import MergeConfig, build_merge
    from common.model import model_from_state
    from common.pipeline import run_pipeline
    from experiments import lodo_oracle
    from experiments import publish as publishing
    from experiments.finished_run import load_finished_run
    from experiments.lodo_oracle import (BASE_LABEL, GRID, GRID_LABEL, best_merge, combined,
                                         evaluator, grid_weights, oracle_label, oracles)
    from experiments.publish import publish
    from safetensors.torch import save_file
    from tests.runs import tiny_config

    run = tmp_path / "lodo" / "seed0"
    learned = TINY["learned"][0]["name"]
    run_pipeline(tiny_config(tmp_path, output_dir=str(run), learned=TINY["learned"][:1],
                             federation={"eval_only": ["pantry"]}))
    report = oracles(run, ["task", "tensor"], steps=5, batch_size=8, max_users=30)
    assert report["left_out"] == "pantry" and sorted(report["seen"]) == ["beauty", "sports"]
    assert set(report["rows"]) == {BASE_LABEL, "task arithmetic", GRID_LABEL,
                                   oracle_label("task"), oracle_label("tensor")}
    assert all(set(r) == {"test", "val"} for r in report["rows"].values())
    saved = json.loads((run / "report.json").read_text())
    # θ₀, task arithmetic and the run's learned merge: what the run itself measured on pantry
    assert report["rows"][BASE_LABEL]["test"] == saved["results"][BASE_LABEL]["pantry"]
    assert report["run_learned"] == {learned: saved["results"][learned]["pantry"]}
    assert report["users"] == saved["protocol"]["per_silo"]["pantry"]["users"]
    assert len(report["learned_weights"][oracle_label("task")]["all"]) == 2  # one per seen silo
    text = combined({"r": {**report, "stamp": {"commit": "abc"}}},
                    {"max_users": 30, "steps": 5, "batch_size": 8})
    label, best = best_merge(report)
    assert label != BASE_LABEL and f"- pantry: {label}, {best:.3f}× θ₀" in text
    assert "| task arithmetic | " in text and "(the run's, pseudo-users)" in text

    # the grid's weights: the best point of the grid on the whole validation split
    finished = load_finished_run(run)
    pantry, merge = finished.unseen[0], build_merge(MergeConfig(), finished.base, finished.finetuned)
    val = dataclasses.replace(finished.cfg.eval, split="val")

    def r10(w):
        model = model_from_state(finished.model_cfg, merge.merged(finished.base, list(w)))
        return evaluate_model(model, pantry, finished.features["pantry"], val).metrics["recall@10"]

    chosen = grid_weights(merge, finished.base, evaluator(finished, pantry))
    assert report["learned_weights"][GRID_LABEL] == chosen
    assert r10(chosen) == max(r10(w) for w in itertools.product(GRID, repeat=2))
    assert report["rows"][GRID_LABEL]["val"]["recall@10"] == r10(chosen)
    # each state is evaluated once per split (known by its weights, not by the object)
    calls = []
    monkeypatch.setattr(lodo_oracle, "evaluate_model",
                        lambda *a: calls.append(a) or evaluate_model(*a))
    metrics = evaluator(finished, pantry)
    first = metrics(finished.base, "val")
    assert metrics({k: v.clone() for k, v in finished.base.items()}, "val") == first
    assert len(calls) == 1
    assert metrics(finished.base, "test") == report["rows"][BASE_LABEL]["test"] and len(calls) == 2

    # the command: one folder per run, reused with the same settings, published with a plot
    monkeypatch.setattr(publishing, "publish", functools.partial(publish, root=tmp_path / "reports"))
    argv = ["--runs", str(run), "--granularity", "task", "--steps", "3", "--batch-size", "8",
            "--users", "20", "--output", str(tmp_path / "oracle")]
    lodo_oracle.main(argv)
    assert "reused" not in capsys.readouterr().out
    lodo_oracle.main([*argv, "--publish", "lodo"])
    assert "finished with these settings, reused" in capsys.readouterr().out
    monkeypatch.setattr(lodo_oracle, "GRID", (0.0, 1.0))  # another grid: chosen again
    lodo_oracle.main(argv)
    assert "reused" not in capsys.readouterr().out
    published = tmp_path / "reports" / "lodo"
    assert {p.name for p in published.iterdir()} == {"report.md", "summary.json", "lodo_oracle.png"}
    assert "### Left out: pantry" in (published / "report.md").read_text()

    # silos that sent θ₀ back: every merge of them is θ₀, the oracles' included
    for name in ("beauty", "sports"):
        save_file({k: v.clone() for k, v in finished.base.items()},
                  str(run / "received" / f"{name}.safetensors"))
    same = oracles(run, ["tensor"], steps=5, batch_size=8, max_users=30)
    for label in ("task arithmetic", GRID_LABEL, oracle_label("tensor")):
        assert same["rows"][label] == same["rows"][BASE_LABEL]
    assert same["learned_weights"][GRID_LABEL] == [0.0, 0.0]  # ties: the first point kept

    # refused, naming the run: no evaluation-only domain; a run evaluated on validation
    full = tmp_path / "full" / "seed0"
    run_pipeline(tiny_config(tmp_path, output_dir=str(full), learned=[]))
    with pytest.raises(SystemExit, match="full/seed0/report.json: .*exactly one evaluation-only"):
        oracles(full, ["task"], 3, 8, 20)
    on_val = tmp_path / "val" / "seed0"
    run_pipeline(tiny_config(tmp_path, output_dir=str(on_val), learned=[], eval={"split": "val"},
                             federation={"eval_only": ["pantry"]}))
    with pytest.raises(SystemExit, match="evaluated on the val split"):
        oracles(on_val, ["task"], 3, 8, 20)


def _lodo_run(root: Path, left_out: str, seed: int, path_r10: float,
              without: tuple[str, ...] = ()) -> None:
    """A finished leave-one-out run's report.json, as the runner writes it (the fields read);
    ``without``: methods this setting did not run."""
    seen = [d for d in ("A", "B", "C") if d != left_out]
    cell = lambda r: {"recall@10": r, "ndcg@10": r / 2}  # noqa: E731
    results = {"zero-shot base θ₀": {left_out: cell(0.10)}, "average": {left_out: cell(0.09)},
               "new-domain path": {left_out: cell(path_r10)},
               **{f"fine-tuned on {s}": {left_out: cell(0.05 + 0.01 * i)}
                  for i, s in enumerate(seen)}}
    results = {k: v for k, v in results.items() if k not in without}
    report = {"config": {"federation": {"eval_only": [left_out]}, "merges": [{"method": "average"}],
                         "learned": []},
              "results": results, "training": {s: {} for s in seen},
              "protocol": {"per_silo": {left_out: {"users": 1000}}},
              "chosen_on_validation": {"new-domain path": {
                  "chosen": "λ 0, whiten 0.5, history decay 0.2", "silos": seen,
                  "table": {"λ 0, whiten 0.5, history decay 0.2": {"recall@10 / θ₀": 1.06}}}},
              "stages": {"choose the new-domain path on validation": {"seconds": 3.0,
                                                                      "peak_rss_mb": 100.0}},
              "total_seconds": 60.0}
    folder = root / f"unseen_{left_out}" / f"seed{seed}"
    folder.mkdir(parents=True)
    (folder / "report.json").write_text(json.dumps(report))


def test_lodo_report_checks_every_left_out_domain_and_the_average(tmp_path):
    from experiments.lodo_report import TRANSFERRED, check_targets, load_runs, report_markdown

    for domain, r10 in (("A", 0.11), ("B", 0.104), ("C", 0.099)):
        _lodo_run(tmp_path, domain, 0, r10, without=("average",) if domain == "C" else ())
    runs = load_runs(tmp_path)
    checks = {name: ok for name, ok, _ in check_targets(runs, 0)}
    assert checks["A: new-domain path >= 1.00 x θ₀, recall@10"]
    assert not checks["C: new-domain path >= 1.00 x θ₀, recall@10"]  # 0.099 < 0.10
    assert checks["A: new-domain path >= best single silo transferred (C), recall@10"]
    average = next(ok for name, ok in checks.items() if name.startswith("average"))
    assert not average  # (0.11 + 0.104 + 0.099) / 3 = 0.1043 < 1.05 x 0.10
    text = report_markdown(runs)
    assert f"{TRANSFERRED} (C)" in text and "| C | 0 | λ 0, whiten 0.5, history decay 0.2 |" in text
    assert "| average | 0.900 | 0.900 | — | 0.900 (the 2 run) |" in text  # C did not run it
