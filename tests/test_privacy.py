"""User-level DP: the accountant against the closed-form Gaussian mechanism, noise calibration,
DP-SGD fine-tuning, and a silo that refuses queries from a non-DP model when DP is asked."""

import math

import pytest
import torch

from common.data import SyntheticConfig, make_synthetic_domains
from common.federated import QUERY, TRAIN, QueryRefused, RunSettings, Silo, SiloConfig
from common.federated.protocol import TrainRequest, decode_answer, encode_query, encode_train_request
from common.model import ModelConfig, build_base_model
from common.privacy import (DPConfig, attack_metrics, calibrate_noise, dp_epsilon, hold_out_users,
                            membership_scores)
from common.text import HashingEncoder, center_features, item_features
from common.training import TrainConfig, fine_tune_cached

MODEL = ModelConfig(text_dim=64, hidden=16, layers=1, heads=2, max_len=8, item_hidden=32)


def _phi(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2))


def analytic_gaussian_epsilon(sigma: float, delta: float) -> float:
    """Exact ε of one Gaussian mechanism with sensitivity 1 (Balle & Wang 2018)."""
    def delta_of(eps: float) -> float:
        return _phi(0.5 / sigma - eps * sigma) - math.exp(eps) * _phi(-0.5 / sigma - eps * sigma)
    low, high = 0.0, 50.0
    for _ in range(200):
        mid = (low + high) / 2
        low, high = (mid, high) if delta_of(mid) > delta else (low, mid)
    return high


@pytest.mark.parametrize("sigma", [0.8, 1.0, 2.0])
def test_accountant_matches_the_closed_form_gaussian_mechanism(sigma):
    assert dp_epsilon(sigma, 1.0, 1, 1e-5) == pytest.approx(analytic_gaussian_epsilon(sigma, 1e-5),
                                                            abs=0.02)


def test_noise_calibration_reaches_the_target_and_no_less_noise_would():
    q, steps, delta = 0.05, 400, 1e-4
    for target in (1.0, 4.0, 8.0):
        sigma = calibrate_noise(target, q, steps, delta)
        assert dp_epsilon(sigma, q, steps, delta) <= target
        assert dp_epsilon(sigma - 0.03, q, steps, delta) > target
    assert calibrate_noise(1.0, q, steps, delta) > calibrate_noise(8.0, q, steps, delta)
    assert dp_epsilon(0.0, q, steps, delta) == float("inf")


@pytest.fixture(scope="module")
def domain_and_features():
    dom = make_synthetic_domains(SyntheticConfig(items_per_domain=40, users_per_domain=60))[0]
    return dom, center_features(item_features(dom, HashingEncoder(64), None))


def test_dp_fine_tuning_spends_at_most_its_budget_and_is_kept_with_its_epsilon(
        tmp_path, domain_and_features):
    dom, feats = domain_and_features
    base = build_base_model(MODEL, 0).state_dict()
    cfg = TrainConfig(epochs=2, batch_size=16, dp=DPConfig(epsilon=4.0))
    state, stats = fine_tune_cached(base, MODEL, [dom], [feats], cfg, tmp_path)
    assert 0 < stats["dp_epsilon"] <= 4.0 and stats["dp_delta"] == pytest.approx(1 / 60)
    assert stats["dp_steps"] == 2 * round(60 / 16) and stats["dp_noise_multiplier"] > 0.3
    assert any(not torch.equal(state[k], base[k]) for k in base)
    assert all(torch.isfinite(v).all() for v in state.values())
    # by default the item tower stays at θ₀: only the sequence tower and β are trained
    assert all(torch.equal(state[k], base[k]) for k in base if k.startswith("item_tower."))
    assert any(not torch.equal(state[k], base[k]) for k in base if k.startswith("seq_tower."))
    again_state, again = fine_tune_cached(base, MODEL, [dom], [feats], cfg, tmp_path)
    assert again["reused_checkpoint"] == 1.0 and again["dp_epsilon"] == stats["dp_epsilon"]
    with pytest.raises(ValueError, match="per silo"):
        fine_tune_cached(base, MODEL, [dom, dom], [feats, feats], cfg)


def _train(silo: Silo, dp: DPConfig | None, run_id: str) -> None:
    req = TrainRequest(build_base_model(MODEL, 0).state_dict(), RunSettings("hashing-64", True, MODEL),
                       TrainConfig(epochs=1, batch_size=16, dp=dp))
    silo.handle(TRAIN, encode_train_request(req), run_id)


def test_silo_answers_dp_queries_only_from_a_dp_model(tmp_path, domain_and_features):
    dom, _ = domain_and_features
    silo = Silo(SiloConfig("beauty", str(tmp_path)), lambda: dom)
    _train(silo, None, "plain")
    with pytest.raises(QueryRefused, match="not trained with DP"):
        silo.handle(QUERY, encode_query([[1]], None, require_dp=True), "plain")
    _train(silo, DPConfig(epsilon=8.0), "private")
    answer = decode_answer(silo.handle(QUERY, encode_query([[1]], 5, require_dp=True), "private"),
                           1, dom.num_items, 5)
    assert answer.indices.shape == (1, 5)


def test_attack_is_at_chance_on_a_model_trained_on_nothing(domain_and_features):
    dom, feats = domain_and_features
    members, held_out = hold_out_users(dom, 0.3, seed=0)
    assert members.num_users + held_out.num_users == dom.num_users
    assert not set(members.user_ids) & set(held_out.user_ids)
    base = build_base_model(MODEL, 0).state_dict()
    scores = [membership_scores(base, base, MODEL, d, feats) for d in (members, held_out)]
    assert attack_metrics(*scores) == {"auc": 0.5, "advantage": 0.0,
                                       "members": float(members.num_users),
                                       "non_members": float(held_out.num_users)}


def test_attack_detects_an_overfit_non_private_model(tmp_path, domain_and_features):
    dom, feats = domain_and_features
    members, held_out = hold_out_users(dom, 0.5, seed=1)
    base = build_base_model(MODEL, 0).state_dict()
    cfg = TrainConfig(epochs=60, batch_size=8, lr=0.01, patience=60)
    state, _ = fine_tune_cached(base, MODEL, [members], [feats], cfg)
    result = attack_metrics(membership_scores(state, base, MODEL, members, feats),
                            membership_scores(state, base, MODEL, held_out, feats))
    assert result["auc"] > 0.6 and result["advantage"] > 0.2  # measured 0.64 (seeded)


def test_whole_run_with_dp_silos(tmp_path):
    from common.federated import LocalFederation, run_coordinator
    from common.pipeline import local_silos
    from common.experiment import config_from_run
    from tests.runs import write_tiny_yaml

    cfg = config_from_run({"experiment": str(write_tiny_yaml(tmp_path)), "dp-epsilon": 8.0},
                          tmp_path)
    silos = local_silos(cfg, make_synthetic_domains(cfg.data.synthetic))
    report = run_coordinator(cfg.coordinator(), LocalFederation(silos), log=lambda _: None)
    assert report["failures"] == []
    for name in ("beauty", "sports", "pantry"):
        assert 0 < report["training"][name]["dp_epsilon"] <= 8.0
    assert report["ledger"]["beauty"]["queries"] > 0  # DP models answer the distillation queries
    assert "mergerec task-wise" in report["results"]


def test_per_user_gradients_match_one_backward_per_user_and_are_clipped():
    from common.training.batching import make_batch
    from common.training.dp_sgd import clipped_gradient_sum
    from common.training.finetune import user_losses

    cfg = ModelConfig(text_dim=16, hidden=16, layers=2, heads=2, max_len=6, item_hidden=8,
                      dropout=0.0)
    model = build_base_model(cfg, 0).train()
    torch.manual_seed(0)
    with torch.no_grad():  # move off θ₀ so that every gate and branch has a gradient
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    feats = torch.randn(30, 16)
    rows = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10, 11], [3, 3, 5, 3], [7, 8]]
    expected = {k: torch.zeros_like(v) for k, v in model.named_parameters()}
    norms = []
    for row in rows:
        model.zero_grad()
        user_losses(model, model.encode_items(feats), make_batch(0, [row], 6))[0].backward()
        norms.append(math.sqrt(sum(float(p.grad.pow(2).sum()) for p in model.parameters())))
        for k, p in model.named_parameters():
            expected[k] += p.grad
    batch = make_batch(0, rows, 6)
    total, clipped = clipped_gradient_sum(model, feats, batch, clip_norm=1e9)
    assert clipped == 0 and set(total) == set(expected)
    for k in expected:
        assert torch.allclose(total[k], expected[k], atol=1e-5), k
    clip = min(norms) / 2  # every user is clipped to norm `clip`
    total, clipped = clipped_gradient_sum(model, feats, batch, clip_norm=clip)
    assert clipped == len(rows)
    assert math.sqrt(sum(float(v.pow(2).sum()) for v in total.values())) <= len(rows) * clip * 1.0001
