"""New domains (issue 33): the catalogue-level serving settings, the silos' validation answers
that choose among candidates, the choice itself, and the package's route for a catalogue none
of its silos trained on."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from common.config import ConfigError, from_dict
from common.data import SyntheticConfig, make_synthetic_domains
from common.evaluation import EvalConfig
from common.evaluation.evaluate import evaluate_scores
from common.federated import (EVALUATE, VALIDATE, LocalFederation, Payload, QueryRefused,
                              RunSettings, Silo, SiloConfig, SiloPolicy, run_coordinator)
from common.federated.pool import NEW_DOMAIN_LABEL
from common.federated.protocol import EvalRequest, decode_eval_reply, encode_eval_request
from common.federated.selection import candidate_label
from common.model import ModelConfig, build_base_model
from common.model.recommender import pad_sequences
from common.package import PackageError, load_package
from common.pipeline import local_silos, run_pipeline
from common.recommend import Catalogue, Recommender
from common.settings import MergeConfig, ServingConfig
from tests.runs import tiny_config

MODEL = ModelConfig(text_dim=64, hidden=16, layers=1, heads=2, max_len=8, item_hidden=32)
RUN = RunSettings("hashing-64", True, MODEL)


def _scores(serving: ServingConfig, items: torch.Tensor, history: list[int]) -> torch.Tensor:
    model = build_base_model(replace(MODEL, text_dim=items.shape[1], serving=serving)).eval()
    seqs, lengths = pad_sequences([history], 8)
    with torch.no_grad():
        return model.score_sequences(model.encode_items(items), seqs, lengths)[0]


def _rank(scores: torch.Tensor, item: int) -> int:
    return int((scores > scores[item]).sum())


def test_whitening_finds_the_neighbour_a_shared_direction_hides():
    """Items = a large component along one direction every item shares (at a random scale)
    plus a small own signal; item 1 shares item 0's own signal. Cosine ranks by the shared
    direction; the catalogue's whitening spreads it out and finds item 1."""
    gen = torch.Generator().manual_seed(0)
    own = torch.randn(200, 32, generator=gen)
    own[1] = own[0] + 0.1 * torch.randn(32, generator=gen)
    shared = torch.zeros(32)
    shared[0] = 1.0
    items = own + 30.0 * torch.randn(200, 1, generator=gen) * shared
    items = items - items.mean(0)
    plain = _scores(ServingConfig(), items, [0])
    whitened = _scores(ServingConfig(whiten=0.9), items, [0])
    assert _rank(plain, 1) > 10 and _rank(whitened, 1) == 1  # rank 0: the item itself


def test_history_decay_gives_earlier_items_their_say():
    gen = torch.Generator().manual_seed(1)
    items = torch.randn(100, 16, generator=gen)
    items[50] = items[3] + 0.05 * torch.randn(16, generator=gen)  # the earlier item's twin
    last_only = _scores(ServingConfig(), items, [3, 7])
    pooled = _scores(ServingConfig(history_decay=0.9), items, [3, 7])
    assert _rank(pooled, 50) < _rank(last_only, 50)
    assert _rank(pooled, 50) <= 3


def test_serving_settings_are_checked_and_outside_the_checkpoint_identity():
    assert replace(MODEL, serving=ServingConfig(0.5, 0.3)).identity() == MODEL.identity()
    for bad in ({"whiten": 1.5}, {"whiten": float("nan")}, {"history_decay": -0.1},
                {"history_decay": True}, {"whiten": "0.5"}):
        with pytest.raises((ValueError, ConfigError)):
            from_dict(ServingConfig, bad, "serving")


@pytest.fixture(scope="module")
def domain():
    return make_synthetic_domains(SyntheticConfig(items_per_domain=50, users_per_domain=80))[0]


def _request(models: dict, serving: dict | None = None) -> Payload:
    return encode_eval_request(EvalRequest(models, RUN, popularity=False, serving=serving or {}))


def test_validate_answers_on_the_validation_split_and_shares_one_packed_model(tmp_path, domain):
    silo = Silo(SiloConfig("beauty", str(tmp_path)), lambda: domain)
    base = build_base_model(MODEL).state_dict()
    req = _request({"plain": base, "whitened": base}, {"whitened": ServingConfig(0.5, 0.2)})
    assert len(req.arrays) == 1 and req.config["models"] == [0, 0]
    reply = silo.handle(VALIDATE, req, "r1")
    got, protocol = decode_eval_reply(reply, ["plain", "whitened"])
    assert protocol["split"] == "val" and set(got["plain"]) == {"recall@10", "ndcg@10", "mrr"}
    assert got["plain"] != got["whitened"]
    test = decode_eval_reply(silo.handle(EVALUATE, _request({"plain": base}), "r1"), ["plain"])
    assert test[1]["split"] == "test"  # the silo's own protocol for evaluation


@pytest.mark.parametrize("case,edit,message", [
    ("serving out of range", {"label0#serving": json.dumps({"whiten": 5.0})}, "whiten"),
    ("serving not JSON", {"label0#serving": "{oops"}, "label0#serving"),
    ("serving not text", {"label0#serving": 3}, "JSON object as text"),
    ("serving with an unknown key", {"label0#serving": json.dumps({"temperature": 9})},
     "unknown key"),
    ("model index out of range", {"models": [5]}, "'models'"),
    ("model index a bool", {"models": [True]}, "'models'"),
    ("model indices leaving a gap", {"models": [1]}, "'models'"),
])
def test_hostile_candidate_requests_are_refused(tmp_path, domain, case, edit, message):
    silo = Silo(SiloConfig("beauty", str(tmp_path)), lambda: domain)
    req = _request({"m": build_base_model(MODEL).state_dict()})
    req.config.update(edit)
    with pytest.raises(QueryRefused, match=message):
        silo.handle(VALIDATE, req, "r1")


def test_unseen_and_unwilling_silos_release_no_validation_metrics(tmp_path, domain):
    req = _request({"m": build_base_model(MODEL).state_dict()})
    for cfg in (SiloConfig("toys", str(tmp_path / "a"), eval_only=True),
                SiloConfig("beauty", str(tmp_path / "b"),
                           policy=SiloPolicy(answer_validation=False))):
        with pytest.raises(QueryRefused, match="no validation metrics"):
            Silo(cfg, lambda: domain).handle(VALIDATE, req, "r1")


def test_validation_answers_spend_the_silos_evaluation_budget(tmp_path, domain):
    from common.federated.budget import Budget

    silo = Silo(SiloConfig("beauty", str(tmp_path), policy=SiloPolicy(
        budget=Budget(models_evaluated=3))), lambda: domain)
    base = build_base_model(MODEL).state_dict()
    silo.handle(VALIDATE, _request({"a": base, "b": base}), "r1")
    with pytest.raises(QueryRefused, match="budget"):
        silo.handle(VALIDATE, _request({"c": base, "d": base}), "r2")


class _Scripted(LocalFederation):
    """Real silos, but validation answers scripted per silo: {silo: {candidate: (R, N)}}."""

    def __init__(self, silos, script):
        super().__init__(silos)
        self.script = script

    def send(self, kind, requests, timeout):
        if kind != VALIDATE:
            return super().send(kind, requests, timeout)
        out = {}
        for name, payload in requests.items():
            labels = payload.config["labels"]
            out[name] = Payload(config={"silo": name, "labels": labels, "protocol": "{}"},
                                metrics={f"{i}/{m}": v for i, label in enumerate(labels)
                                         for m, v in zip(("recall@10", "ndcg@10"),
                                                         self.script[name].get(label, (0.1, 0.1)))})
        return out


def test_the_choice_is_the_best_mean_ratio_that_is_at_least_theta0_everywhere(tmp_path):
    """A candidate that is best on average but below θ₀ on one silo is not kept; the best one
    at or above θ₀ on every silo is, and it is the model evaluated as the new-domain path."""
    cfg = tiny_config(tmp_path, learned=[], merges=[{"method": "average"}],
                      new_domain={"task_arithmetic": [0.0, 0.3], "whiten": [0.0, 0.5],
                                  "history_decay": [0.0]})
    silos = local_silos(cfg, make_synthetic_domains(cfg.data.synthetic))
    good, greedy = candidate_label(0.0, 0.5, 0.0), candidate_label(0.3, 0.5, 0.0)
    script = {s.cfg.name: {"θ₀": (0.1, 0.1), good: (0.11, 0.1), greedy: (0.2, 0.2)}
              for s in silos}
    script["pantry"][greedy] = (0.09, 0.2)  # best on average, below θ₀ on one silo
    report = run_coordinator(cfg.coordinator(), _Scripted(silos, script), log=lambda _: None)
    choice = report["chosen_on_validation"][NEW_DOMAIN_LABEL]
    assert choice["chosen"] == good and set(choice["silos"]) == {"beauty", "sports", "pantry"}
    assert choice["table"][greedy]["recall@10 / θ₀"] > choice["table"][good]["recall@10 / θ₀"]
    theta0 = report["results"]["zero-shot base θ₀"]
    assert report["results"][NEW_DOMAIN_LABEL] != theta0  # whitened θ₀ scores differently
    script = {s.cfg.name: {"θ₀": (0.1, 0.1)} for s in silos}  # nothing beats θ₀: θ₀ kept
    report = run_coordinator(cfg.coordinator(), _Scripted(silos, script), log=lambda _: None)
    assert report["chosen_on_validation"][NEW_DOMAIN_LABEL]["chosen"] == "θ₀"
    assert report["results"][NEW_DOMAIN_LABEL] == report["results"]["zero-shot base θ₀"]


def test_merge_grids_keep_the_best_validation_candidate(tmp_path):
    cfg = tiny_config(tmp_path, learned=[], new_domain=None,
                      merges=[{"method": "task_arithmetic", "name": "ta",
                               "grid": {"lam": [0.1, 0.6]}}])
    silos = local_silos(cfg, make_synthetic_domains(cfg.data.synthetic))
    script = {s.cfg.name: {"ta (lam 0.1)": (0.1, 0.1), "ta (lam 0.6)": (0.3, 0.1)} for s in silos}
    report = run_coordinator(cfg.coordinator(), _Scripted(silos, script), log=lambda _: None)
    assert report["chosen_on_validation"]["ta"]["chosen"] == "ta (lam 0.6)"
    lam06 = run_coordinator(replace(cfg, merges=[MergeConfig("task_arithmetic", lam=0.6,
                                                             name="ta")]).coordinator(),
                            LocalFederation(silos), log=lambda _: None)
    assert report["results"]["ta"] == lam06["results"]["ta"]
    with pytest.raises(ValueError, match="not a tunable hyper-parameter"):
        MergeConfig("average", grid={"lam": [1.0]})


def test_a_package_routes_a_new_catalogue_to_its_new_domain_path(tmp_path):
    """A run with an evaluation-only domain: the merged packages know the catalogues their silos
    trained on; for the unseen one they serve the new-domain path, whose recommendations
    reproduce the metrics the unseen silo released for it."""
    data = {"synthetic": {"items_per_domain": 60, "users_per_domain": 120, "seed": 3,
                          "domains": ["beauty", "sports", "pantry", "toys"]}}
    cfg = tiny_config(tmp_path, data=data, learned=[], output_dir=str(tmp_path / "out"),
                      federation={"eval_only": ["toys"]},
                      new_domain={"task_arithmetic": [0.0], "whiten": [0.0, 0.5],
                                  "history_decay": [0.0, 0.3]})
    report = run_pipeline(cfg)
    toys = next(d for d in make_synthetic_domains(cfg.data.synthetic) if d.name == "toys")
    beauty = next(d for d in make_synthetic_domains(cfg.data.synthetic) if d.name == "beauty")
    folder = tmp_path / "out" / "models" / "average"
    info = json.loads((folder / "config.json").read_text())
    assert set(info["trained_on"]) == {"beauty", "sports", "pantry"}
    catalogue = Catalogue("toys", toys.item_keys or [str(i) for i in range(toys.num_items)],
                          toys.item_texts)
    rec = Recommender(*load_package(folder, toys.item_texts), catalogue)
    assert rec.route == "new domain"
    assert Recommender(*load_package(folder, beauty.item_texts), Catalogue(
        "beauty", [str(i) for i in range(beauty.num_items)], beauty.item_texts)).route == \
        "trained on beauty"
    got = evaluate_scores(rec.scores, toys, EvalConfig()).metrics
    released = report["results"][NEW_DOMAIN_LABEL]["toys"]
    assert got["recall@10"] == pytest.approx(released["recall@10"], abs=1e-6)
    assert got["ndcg@10"] == pytest.approx(released["ndcg@10"], abs=1e-6)
    assert report["silos"]["toys"]["evaluated"] and "toys" not in \
        report["chosen_on_validation"][NEW_DOMAIN_LABEL]["silos"]
    (folder / "new-domain.safetensors").write_bytes(b"tampered")
    with pytest.raises(PackageError, match="SHA-256"):
        load_package(folder, toys.item_texts)
    load_package(folder, beauty.item_texts)  # its own catalogues never read that file
