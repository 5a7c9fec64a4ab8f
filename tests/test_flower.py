"""The Flower apps: handlers in-process (fast); simulation and loopback deployment end to end
(slow, minutes), checked against the in-process reference pipeline, audited for data isolation,
and with a raising and a vanishing silo."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Context, Message, Metadata, RecordDict
from safetensors.numpy import load_file

from common.config import load_yaml
from common.data import make_synthetic_domains
from common.evaluation import EvalConfig
from common.evaluation.evaluate import evaluate_scores
from common.federated import MESSAGE_KINDS, QueryRefused
from common.federated.pool import NEW_DOMAIN_LABEL
from common.federated.protocol import TrainRequest, encode_query, encode_train_request
from common.model import ModelConfig, build_base_model
from common.package import load_package
from common.pipeline import simulated_silo_config
from common.recommend import Catalogue, Recommender
from common.settings import PipelineConfig
from common.training import TrainConfig
from common.federated import RunSettings
from silos.client_app import app as client_app
from silos.records import from_record, to_record
from tests.runs import TINY, tiny_config, write_tiny_yaml

ROOT = Path(__file__).resolve().parents[1]


def _message(content: RecordDict, kind: str) -> Message:
    meta = Metadata(run_id=7, message_id="m1", src_node_id=1, dst_node_id=2, reply_to_message_id="",
                    group_id="", created_at=0.0, ttl=60.0, message_type=kind)
    return Message(content=content, metadata=meta)


def test_clientapp_handlers(tmp_path):
    yaml_path = write_tiny_yaml(tmp_path)
    ctx = Context(run_id=7, node_id=2, node_config={"partition-id": 1, "num-partitions": 3},
                  state=RecordDict(), run_config={"experiment": str(yaml_path),
                                                  "work-dir": str(tmp_path / "silos")})
    info = from_record(client_app(_message(to_record(encode_query([[0]], None)), "query.info"),
                                  ctx).content)
    assert info.config == {"silo": "sports", "role": "train"}
    with pytest.raises(QueryRefused, match="has not trained"):
        client_app(_message(to_record(encode_query([[0]], None)), "query.distill"), ctx)
    model = ModelConfig(text_dim=64, hidden=16, layers=1, heads=2, max_len=8, item_hidden=32)
    req = encode_train_request(TrainRequest(build_base_model(model, 0).state_dict(),
                                            RunSettings("hashing-64", True, model),
                                            TrainConfig(epochs=1)))
    reply = client_app(_message(to_record(req), "train"), ctx)
    assert list(reply.content["arrays"].keys()) == ["weights"]  # one packed array per model
    bad = to_record(encode_query([[0]], None))
    bad["arrays"]["sequences"] = bad["arrays"]["sequences"].__class__(
        np.array([[0.5]], dtype=np.float32))
    with pytest.raises(QueryRefused, match="int64"):
        client_app(_message(bad, "query.distill"), ctx)
    with pytest.raises(QueryRefused, match="only 3 domains"):
        client_app(_message(RecordDict(), "query.info"),
                   Context(run_id=7, node_id=3, node_config={"partition-id": 5, "num-partitions": 6},
                           state=RecordDict(), run_config=ctx.run_config))


def test_a_deployed_silo_gets_the_experiments_settings_through_its_node_config(tmp_path):
    """What the launcher writes into a silo's node config reads back as the same policy and
    training settings that silo has in simulation (node config is all a deployed silo reads)."""
    from flwr.common.config import parse_config_args

    from coordinator.launch import SiloSpec
    from silos.client_app import node_policy, own_train_settings

    own = {"batch_size": 16, "epochs": 2, "lr": 0.001, "loss": "in_batch",
           "dp": {"epsilon": 8.0, "clip_norm": 0.5}}
    cfg = tiny_config(tmp_path, eval={"split": "val", "ks": [5, 10], "max_users": 50},
                      federation={"silo_train": {"pantry": own}, "query_budget": 300,
                                  "silo_policy": {"share_weights": True, "min_users": 30,
                                                  "budget": {"eval_calls": 9}}})
    settings = simulated_silo_config(cfg, "pantry", tmp_path / "w")
    node_config = parse_config_args([SiloSpec(".", settings).node_config()])
    assert own_train_settings(node_config) == own
    assert node_policy(node_config) == settings.policy
    assert settings.policy.share_weights and tuple(settings.policy.eval.ks) == (5, 10)
    settings.policy.encoder_dirs = ["/a", "/b"]
    with pytest.raises(SystemExit, match="names one encoder folder"):
        SiloSpec(".", settings).node_config()


def _launch(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "coordinator.launch", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def _assert_own_training(report: dict) -> None:
    """The silo with its own fine-tuning settings (TINY) used them; the others did not."""
    assert report["training"]["pantry"]["train.batch_size"] == 16.0
    assert report["training"]["pantry"]["epochs_run"] == 2.0
    assert not any(k.startswith("train.") for k in report["training"]["beauty"])


def _assert_matches_reference(report: dict, tmp_path: Path) -> None:
    """Metrics equal to the reference's: almost all exactly, none by more than one user's worth.

    The reference runs in a fresh interpreter with one torch thread, as every silo does
    (simulation: one CPU per virtual SuperNode; deployment: ``--threads-per-silo 1``). Separate
    processes still differ in the last bits now and then (seen on TIES: a process that had run
    other tests, and deployments at NDCG@50 1e-5), and a last-bit difference can flip a near-tied
    rank: one user's metric at most. A wrong merge, protocol or model moves many metrics."""
    out = tmp_path / "reference.json"
    script = ("import json, sys, torch\nfrom pathlib import Path\ntorch.set_num_threads(1)\n"
              "from common.pipeline import run_pipeline\nfrom tests.runs import tiny_config\n"
              "results = run_pipeline(tiny_config(Path(sys.argv[1])))['results']\n"
              "Path(sys.argv[2]).write_text(json.dumps(results))\n")
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "ref"), str(out)], cwd=ROOT,
                   check=True, capture_output=True, text=True)
    reference = json.loads(out.read_text())
    one_user = 1 / min(p["users"] for p in report["protocol"]["per_silo"].values())
    assert report["results"].keys() == reference.keys()
    differing, total = [], 0
    for method, row in reference.items():
        got = report["results"][method]
        assert got.keys() == row.keys(), method
        for domain, metrics in row.items():
            assert got[domain].keys() == metrics.keys()
            for k, v in metrics.items():
                total += 1
                if got[domain][k] != v:
                    differing.append((method, domain, k, got[domain][k], v))
    assert all(abs(g - v) <= one_user for *_, g, v in differing), differing
    assert len(differing) <= 0.05 * total, differing


ALLOWED = {  # message kind -> (array names, config keys); nothing else may leave a silo
    "query.info": (set(), {"silo", "role"}),
    "train": ({"weights"}, {"weights#layout", "silo", "base-hash", "item-texts", "share-weights"}),
    "query.distill": ({"scores", "indices"}, {"silo", "num-items"}),
    "evaluate": (set(), {"silo", "labels", "protocol"}),
    "query.validate": (set(), {"silo", "labels", "protocol"}),
}


def test_audit_knows_every_message_kind():
    assert set(ALLOWED) == set(MESSAGE_KINDS)


def _audit(folder: Path, tmp_path: Path) -> None:
    """Every archived reply: allowed kind and fields only, no user id, no user sequence."""
    domains = {d.name: d for d in make_synthetic_domains(tiny_config(tmp_path).data.synthetic)}
    assert {p.name for p in folder.iterdir()} == set(domains)
    for silo_dir in folder.iterdir():
        dom = domains[silo_dir.name]
        user_seqs = [list(s) + [v, t] for s, v, t in zip(dom.train, dom.val, dom.test)]
        kinds = []
        for meta_file in sorted(silo_dir.glob("*.json")):
            meta = json.loads(meta_file.read_text())
            kinds.append(meta["kind"])
            arrays_ok, config_ok = ALLOWED[meta["kind"]]
            assert set(meta.get("arrays", [])) <= arrays_ok and set(meta.get("config", {})) <= config_ok
            text = json.dumps(meta)
            assert not any(uid in text for uid in dom.user_ids), meta_file
            tensor_file = meta_file.with_suffix(".safetensors")
            if tensor_file.is_file():
                for name, arr in load_file(str(tensor_file)).items():
                    if arr.dtype.kind == "i":  # no interaction sequence inside any int array
                        rows = [r.tolist() for r in arr.reshape(-1, arr.shape[-1])]
                        for seq in user_seqs:
                            k = len(seq)
                            assert not any(r[i:i + k] == seq for r in rows
                                           for i in range(len(r) - k + 1)), (meta_file, name)
        assert kinds[0] == "query.info" and "train" in kinds and kinds[-1] == "evaluate"


@pytest.mark.slow
def test_simulation_matches_reference_and_leaks_nothing(tmp_path):
    yaml_path = write_tiny_yaml(tmp_path)
    out, audit = tmp_path / "out", tmp_path / "audit"
    run = _launch("simulate", "--experiment", str(yaml_path), "--output", str(out),
                  "--flwr-home", str(tmp_path / "home"), "-c", f"audit-dir={audit}",
                  "-c", f"work-dir={tmp_path / 'silos'}")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["failures"] == []
    _assert_own_training(report)
    _assert_matches_reference(report, tmp_path)
    _audit(audit, tmp_path)
    assert (out / "models" / "mergerec_task-wise" / "model.safetensors").is_file()
    assert "recommendations: mergerec-model recommend --model" in run.stdout  # the next step
    assert (out / "catalogues" / "beauty.csv").is_file()
    ledger = json.loads((out / "ledger.json").read_text())
    assert set(ledger["summary"]) == {"beauty", "sports", "pantry"}
    assert all(s["messages"]["query.info"] == 1 for s in ledger["summary"].values())


@pytest.mark.slow
def test_a_failed_run_exits_non_zero_with_the_reason(tmp_path):
    yaml_path = write_tiny_yaml(tmp_path)
    run = _launch("simulate", "--experiment", str(yaml_path), "--output", str(tmp_path / "out"),
                  "--flwr-home", str(tmp_path / "home"), "-c", "min-silos=9",
                  "-c", f"work-dir={tmp_path / 'silos'}")
    assert run.returncode == 1
    assert "run did not complete: status 'finished:failed'" in run.stderr
    assert "at least 9 needed" in run.stdout + run.stderr  # the reason, from the run's log


@pytest.mark.slow
def test_simulation_with_a_raising_silo_and_an_unseen_domain(tmp_path):
    data = {"synthetic": {**TINY["data"]["synthetic"],
                          "domains": ["beauty", "sports", "pantry", "toys"]}}
    yaml_path = write_tiny_yaml(tmp_path, learned=TINY["learned"][:1], data=data)
    out = tmp_path / "out"
    run = _launch("simulate", "--experiment", str(yaml_path), "--output", str(out),
                  "--flwr-home", str(tmp_path / "home"), "-c", "fault=sports:train",
                  "-c", "min-silos=2", "-c", "eval-only=toys", "-c", f"work-dir={tmp_path / 'silos'}")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    [failure] = report["failures"]
    assert failure["silo"] == "sports" and failure["stage"] == "train"
    assert "injected fault in silo sports during train" in failure["reason"]
    assert "fine-tuned on sports" not in report["results"] and "ties" in report["results"]
    # the silos' own fine-tuned models do not leave the coordinator (share_weights off)
    assert report["silos"]["toys"] == {"role": "eval", "trained": False, "evaluated": True,
                                       "withheld": ["fine-tuned on beauty", "fine-tuned on pantry"]}
    merged = report["results"]["mergerec task-wise"]
    assert merged["average unseen"] == merged["toys"]
    assert set(report["ledger"]["toys"]["messages"]) == {"query.info", "evaluate"}
    assert all(len(w) == 2 for w in report["learned_weights"]["mergerec task-wise"].values())
    _assert_package_serves_the_unseen_domain_as_evaluated(report, yaml_path, out)


def _assert_package_serves_the_unseen_domain_as_evaluated(report: dict, yaml_path: Path,
                                                          out: Path) -> None:
    """The learned merge's package knows the catalogues it was trained on; for the unseen one
    it serves the new-domain path, and its recommendations reproduce the metrics the unseen
    silo released for that path."""
    cfg = load_yaml(PipelineConfig, yaml_path)
    toys = next(d for d in make_synthetic_domains(cfg.data.synthetic) if d.name == "toys")
    folder = out / "models" / "mergerec_task-wise"
    assert set(json.loads((folder / "config.json").read_text())["trained_on"]) == \
        {"beauty", "pantry"}
    rec = Recommender(*load_package(folder, toys.item_texts),
                      Catalogue("toys", [str(i) for i in range(toys.num_items)], toys.item_texts))
    assert rec.route == "new domain"
    got = evaluate_scores(rec.scores, toys, EvalConfig()).metrics
    released = report["results"][NEW_DOMAIN_LABEL]["toys"]
    assert got["recall@10"] == pytest.approx(released["recall@10"], abs=1e-6)
    assert got["ndcg@10"] == pytest.approx(released["ndcg@10"], abs=1e-6)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    """One clean loopback deployment with three silos (SuperLink + 3 SuperNodes)."""
    tmp = tmp_path_factory.mktemp("deploy")
    yaml_path = write_tiny_yaml(tmp)
    out, work = tmp / "out", tmp / "work"
    run = _launch("deploy", "--experiment", str(yaml_path), "--output", str(out),
                  "--work", str(work), "--threads-per-silo", "1")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return tmp, yaml_path, work, json.loads((out / "report.json").read_text())


@pytest.mark.slow
def test_deployment_three_silos_matches_reference_and_stops_everything(deployment):
    tmp, _, work, report = deployment
    assert report["failures"] == [] and len(report["silos"]) == 3
    link_log = (work / "logs" / "superlink.log").read_text()  # TLS, each silo's key registered
    assert "running on https://" in link_log and link_log.count("Created node_id=") == 3
    _assert_own_training(report)  # from the node config's train-* keys
    _assert_matches_reference(report, tmp)
    leftovers = [p for p in Path("/proc").iterdir() if p.name.isdigit()
                 and str(work) in _cmdline(p)]
    assert not leftovers, "processes left running"


def _cmdline(proc: Path) -> str:
    try:
        return (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


@pytest.mark.slow
def test_deployment_rerun_reuses_training_and_survives_a_vanishing_silo(deployment):
    tmp, _, work, first = deployment
    (tmp / "rerun").mkdir()
    # same training config (so the kept checkpoints apply), short waits for the dead silo
    yaml_path = write_tiny_yaml(tmp / "rerun", federation={"query_timeout_s": 30.0,
                                                           "eval_timeout_s": 120.0})
    out = tmp / "rerun" / "out"
    run = _launch("deploy", "--experiment", str(yaml_path), "--output", str(out),
                  "--work", str(work), "--kill-silo-after-train", "pantry", "-c", "min-silos=2")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert {f["silo"] for f in report["failures"]} == {"pantry"}, report["failures"]
    assert report["silos"]["pantry"]["evaluated"] is False
    assert set(report["results"]["mergerec task-wise"]) == {"beauty", "sports", "average"}
    for silo in ("beauty", "sports"):  # kept checkpoints reused, same fine-tuned model
        assert report["training"][silo]["reused_checkpoint"] == 1.0
        assert report["results"][f"fine-tuned on {silo}"][silo] == \
            first["results"][f"fine-tuned on {silo}"][silo]


def test_launcher_names_bad_run_config_keys_and_values(tmp_path, capsys):
    from coordinator.launch import main as launch, parse_override

    assert parse_override("experiment='a b.yaml'") == ("experiment", "a b.yaml")
    assert parse_override("experiment=plain") == ("experiment", "plain")  # one quoting rule
    assert parse_override("dp-epsilon=8") == ("dp-epsilon", 8.0)
    with pytest.raises(SystemExit, match="unknown run-config key 'sed'.*known keys: .*seed"):
        launch(["simulate", "-c", "sed=3", "--output", str(tmp_path)])
    with pytest.raises(SystemExit, match="seed expects a int"):
        launch(["simulate", "-c", "seed=abc", "--output", str(tmp_path)])
    with pytest.raises(SystemExit, match="nope.yaml: config file not found"):
        launch(["simulate", "--experiment", str(tmp_path / "nope.yaml")])
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {epoch: 3}\n")
    with pytest.raises(SystemExit, match=r"train: unknown key\(s\) \['epoch'\]"):
        launch(["simulate", "--experiment", str(bad)])
