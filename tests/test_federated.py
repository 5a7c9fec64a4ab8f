"""The transport-neutral federation: payload codec, silo refusals, update checks, faults,
evaluation-only silos, reruns and atomic outputs (in-process, seconds)."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from common.config import ConfigError
from common.data import SyntheticConfig, make_synthetic_domains
from common.federated import (EVALUATE, INFO, QUERY, TRAIN, VALIDATE, FederationError,
                              LocalFederation,
                              Payload, QueryRefused, RunSettings, Silo, SiloConfig, SiloPolicy,
                              check_update, run_coordinator)
from common.federated.protocol import (EvalRequest, TrainRequest, decode_answer, decode_eval_reply,
                                       decode_sequences, decode_train_reply, encode_eval_request,
                                       encode_query, encode_sequences, encode_train_request,
                                       layout_of)
from common.model import ModelConfig, build_base_model, state_hash
from common.pipeline import local_silos, run_pipeline
from common.training import TrainConfig, checkpoint_path
from tests.runs import tiny_config

MODEL = ModelConfig(text_dim=64, hidden=16, layers=1, heads=2, max_len=8, item_hidden=32)
RUN = RunSettings("hashing-64", True, MODEL)


@pytest.fixture(scope="module")
def domain():
    return make_synthetic_domains(SyntheticConfig(items_per_domain=50, users_per_domain=80))[0]


LAYOUT = layout_of(build_base_model(MODEL, 0).state_dict())


def _reply(payload: Payload):
    return decode_train_reply(payload, LAYOUT, 10_000)


def _train(silo: Silo, run_id: str = "r1") -> Payload:
    base = build_base_model(MODEL, 0).state_dict()
    req = encode_train_request(TrainRequest(base, RUN, TrainConfig(epochs=1)))
    return silo.handle(TRAIN, req, run_id)


def test_sequences_round_trip_and_malformed_queries_are_refused():
    seqs = [[3], [1, 2, 4], [0, 5]]
    arr = encode_sequences(seqs)
    assert arr.dtype == np.int64 and decode_sequences(arr, 6) == seqs
    bad = {
        "int32": arr.astype(np.int32),
        "1-D": arr[0],
        "out of range": np.array([[6]], dtype=np.int64),
        "negative": np.array([[-3]], dtype=np.int64),
        "hole": np.array([[1, -1, 2]], dtype=np.int64),
        "empty row": np.array([[-1, -1]], dtype=np.int64),
        "no users": np.zeros((0, 2), dtype=np.int64),
    }
    for what, a in bad.items():
        with pytest.raises(QueryRefused):
            decode_sequences(a, 6)
            pytest.fail(f"accepted a query with {what}")


def test_silo_trains_answers_within_budget_then_refuses(tmp_path, domain):
    silo = Silo(SiloConfig("beauty", str(tmp_path), policy=SiloPolicy(query_budget=5)),
                lambda: domain)
    assert silo.handle(INFO, Payload(), "r1").config == {"silo": "beauty", "role": "train"}
    with pytest.raises(QueryRefused, match="has not trained"):
        silo.handle(QUERY, encode_query([[1]], None), "r1")
    rep = _reply(_train(silo))
    assert rep.item_texts == domain.item_texts and rep.item_vectors is None
    assert rep.base_hash == state_hash(build_base_model(MODEL, 0).state_dict())
    n = domain.num_items
    full = decode_answer(silo.handle(QUERY, encode_query([[1], [2, 3]], None), "r1"), 2, n, None)
    assert full.scores.shape == (2, domain.num_items) and full.indices is None
    top = decode_answer(silo.handle(QUERY, encode_query([[4], [5], [6]], 7), "r1"), 3, n, 7)
    assert top.indices.shape == (3, 7) and (top.scores[:, :-1] >= top.scores[:, 1:]).all()
    with pytest.raises(QueryRefused, match="budget exceeded .5 of 5"):
        silo.handle(QUERY, encode_query([[1]], None), "r1")
    with pytest.raises(QueryRefused, match="catalogue"):
        silo.handle(QUERY, encode_query([[domain.num_items]], None), "r1")
    # a new run starts a new budget; a kept checkpoint is reused, not retrained
    again = _reply(_train(silo, "r2"))
    assert again.metrics["reused_checkpoint"] == 1.0
    assert all(torch.equal(again.state[k], rep.state[k]) for k in rep.state)


def test_silo_fine_tunes_with_its_own_settings_and_reports_them(tmp_path, domain):
    own = Silo(SiloConfig("beauty", str(tmp_path / "own"), train={"epochs": 2, "lr": 0.01}),
               lambda: domain)
    plain = Silo(SiloConfig("beauty", str(tmp_path / "plain")), lambda: domain)
    rep, ref = _reply(_train(own)), _reply(_train(plain))
    assert rep.metrics["train.epochs"] == 2.0 and rep.metrics["train.lr"] == 0.01
    assert not any(k.startswith("train.") for k in ref.metrics)
    assert (rep.metrics["epochs_run"], ref.metrics["epochs_run"]) == (2.0, 1.0)  # the run asked 1
    [ckpt] = (tmp_path / "own" / "checkpoints").glob("*.safetensors")  # keyed by what it ran
    ran = TrainConfig(epochs=2, lr=0.01)
    assert ckpt == checkpoint_path(tmp_path / "own" / "checkpoints",
                                   build_base_model(MODEL, 0).state_dict(), MODEL, ran, [domain])
    with pytest.raises(ConfigError, match="silo beauty: train.batch_size: expected an integer"):
        SiloConfig("beauty", str(tmp_path), train={"batch_size": "many"})
    with pytest.raises(ConfigError, match="silo beauty: train: unknown key.*'epoch'"):
        SiloConfig("beauty", str(tmp_path), train={"epoch": 3})


def test_silo_train_settings_must_name_a_domain_and_fit(tmp_path):
    with pytest.raises(ConfigError, match="federation.silo_train: no domain 'toys'"):
        tiny_config(tmp_path, federation={"silo_train": {"toys": {"epochs": 1}}})
    with pytest.raises(ConfigError, match="federation.silo_train.pantry.lr: expected a number"):
        tiny_config(tmp_path, federation={"silo_train": {"pantry": {"lr": "fast"}}})


def test_eval_only_silo_evaluates_but_never_trains_or_answers(tmp_path, domain):
    silo = Silo(SiloConfig("toys", str(tmp_path), eval_only=True), lambda: domain)
    with pytest.raises(QueryRefused, match="evaluation-only"):
        _train(silo)
    with pytest.raises(QueryRefused, match="evaluation-only"):
        silo.handle(QUERY, encode_query([[1]], None), "r1")
    base = build_base_model(MODEL, 0).state_dict()
    req = encode_eval_request(EvalRequest({"θ₀": base}, RUN))
    res, protocol = decode_eval_reply(silo.handle(EVALUATE, req, "r1"), ["θ₀"])
    assert set(res) == {"θ₀", "popularity"} and 0 <= res["θ₀"]["recall@10"] <= 1
    assert protocol["split"] == "test" and protocol["users"] == 80


def test_vectors_instead_of_text(tmp_path, domain):
    silo = Silo(SiloConfig("beauty", str(tmp_path)), lambda: domain)
    base = build_base_model(MODEL, 0).state_dict()
    req = encode_train_request(TrainRequest(base, RUN, TrainConfig(epochs=1),
                                            "vectors"))
    rep = _reply(silo.handle(TRAIN, req, "r1"))
    assert rep.item_texts is None and rep.item_vectors.shape == (domain.num_items, 64)


def test_update_checks_name_every_problem():
    base = build_base_model(MODEL, 0).state_dict()
    good = {k: v.clone() for k, v in base.items()}
    assert check_update(good, base, state_hash(base)) == []
    name = next(k for k, v in base.items() if v.ndim == 2)
    bad = {**good, name: good[name].clone()}
    bad[name][0, 0] = float("nan")
    assert "non-finite" in " ".join(check_update(bad, base, state_hash(base)))
    shaped = {**good, name: good[name][:1]}
    assert "instead of" in " ".join(check_update(shaped, base, state_hash(base)))
    missing = {k: v for k, v in good.items() if k != name}
    assert "missing tensors" in " ".join(check_update(missing, base, state_hash(base)))
    assert "not from this run's θ₀" in " ".join(check_update(good, base, "0" * 64))
    typed = {**good, name: good[name].double()}
    assert "float64" in " ".join(check_update(typed, base, state_hash(base)))


class _Broken(Silo):
    """A silo that raises during training (its data volume vanished)."""

    def train(self, request, run_id):
        raise OSError("data volume unavailable")


def _federation(tmp_path, cfg, broken: str | None = None):
    silos = local_silos(cfg, make_synthetic_domains(cfg.data.synthetic))
    if broken:
        silos = [_Broken(s.cfg, lambda s=s: s.domain) if s.cfg.name == broken else s
                 for s in silos]
    return LocalFederation(silos)


def test_failing_silo_is_reported_and_the_run_goes_on_with_the_rest(tmp_path):
    cfg = tiny_config(tmp_path, learned=[], federation={"min_silos": 2})
    report = run_coordinator(cfg.coordinator(), _federation(tmp_path, cfg, broken="sports"), log=lambda _: None)
    [failure] = report["failures"]
    assert (failure["silo"], failure["stage"]) == ("sports", "train")
    assert "train failed (incident" in failure["reason"]  # the detail stays in the silo's log
    assert "data volume" not in failure["reason"]
    assert "fine-tuned on sports" not in report["results"]
    assert set(report["results"]["average"]) == {"beauty", "sports", "pantry", "average"}
    assert report["silos"]["sports"]["trained"] is False and report["silos"]["sports"]["evaluated"]


def test_too_few_silos_left_fails_with_a_clear_message(tmp_path):
    cfg = tiny_config(tmp_path, learned=[])
    with pytest.raises(FederationError, match=r"sports \(train\): .*train failed \(incident"):
        run_coordinator(cfg.coordinator(), _federation(tmp_path, cfg, broken="sports"), log=lambda _: None)


def test_unseen_domain_is_evaluated_but_contributes_nothing(tmp_path):
    cfg = tiny_config(tmp_path, federation={"eval_only": ["pantry"]})
    report = run_coordinator(cfg.coordinator(), _federation(tmp_path, cfg), log=lambda _: None)
    res = report["results"]
    assert "fine-tuned on pantry" not in res and "pantry" not in res["in-domain fine-tuned"]
    assert res["mergerec task-wise"]["average unseen"] == res["mergerec task-wise"]["pantry"]
    assert report["ledger"]["pantry"]["messages"] == {"evaluate": 1}
    assert all(len(w) == 2 for w in report["learned_weights"]["mergerec task-wise"].values())


def test_ledger_counts_what_left_each_silo(tmp_path):
    cfg = tiny_config(tmp_path, federation={"catalogue": "vectors", "max_query_rows": 25})
    report = run_coordinator(cfg.coordinator(), _federation(tmp_path, cfg), log=lambda _: None)
    led = report["ledger"]["beauty"]
    # one-item pseudo-users: 60 items in rounds of 25 rows (3 messages); the walk variant asks
    # 3 more for full rows and 3 for its top-k answers; validation: the ties grid, the
    # contribution check and the new-domain path, one message each
    assert led["messages"] == {"train": 1, "query.distill": 9, "query.validate": 3, "evaluate": 1}
    assert led["queries"] == 3 * 60 and led["errors"] == 0
    assert led["bytes"] > 60 * 64 * 4  # weights and the frozen item vectors


def test_rerun_reuses_fine_tuning_and_writes_outputs_atomically(tmp_path):
    out = tmp_path / "out"
    cfg = tiny_config(tmp_path, output_dir=str(out))
    first = run_pipeline(cfg)
    again = run_pipeline(replace(cfg, learned=cfg.learned[:1]))
    assert all(again["training"][n]["reused_checkpoint"] == 1.0 for n in ("beauty", "sports"))
    assert first["training"]["beauty"]["reused_checkpoint"] == 0.0
    assert again["results"]["ties"] == first["results"]["ties"]
    assert not list(out.rglob("*.tmp")), "temporary files left behind"
    saved = json.loads((out / "report.json").read_text())
    assert saved["results"].keys() == again["results"].keys()
    config = json.loads((out / "models" / "mergerec_task-wise" / "config.json").read_text())
    assert config["base_hash"] == again["base_hash"] and config["kind"] == "learned"
    ledger = json.loads((out / "ledger.json").read_text())
    assert {m["kind"] for m in ledger["messages"]} == {TRAIN, QUERY, VALIDATE, EVALUATE}


def test_two_variants_of_one_method_coexist_and_unnamed_twins_are_refused(tmp_path):
    merges = [{"method": "ties", "lam": 1.0, "density": 0.2},
              {"method": "ties", "lam": 0.5, "density": 0.5, "name": "ties (dense)"}]
    cfg = tiny_config(tmp_path, learned=[], merges=merges)
    report = run_coordinator(cfg.coordinator(), _federation(tmp_path, cfg), log=lambda _: None)
    assert report["results"]["ties"] != report["results"]["ties (dense)"]
    with pytest.raises(ConfigError, match=r"distinct names; \['ties'\] appear more than once"):
        tiny_config(tmp_path, merges=[merges[0], {**merges[1], "name": None}])
    with pytest.raises(ConfigError, match="unknown merge method 'tie'"):
        tiny_config(tmp_path, merges=[{"method": "tie"}])
