"""WiSE-FT weight interpolation after fine-tuning (``TrainConfig.interpolation_grid``)."""

import pytest
import torch

from common.data import SyntheticConfig, make_synthetic_domains
from common.model import ModelConfig, build_base_model
from common.settings import DPConfig, PipelineConfig, TrainConfig
from common.text import HashingEncoder
from common.training import fine_tune_cached
from common.training.finetune import TrainResult, interpolate_toward_base


def _linear(value: float) -> torch.nn.Module:
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(value)
    return model


def test_interpolation_keeps_the_best_validated_point_between_base_and_trained():
    model = _linear(1.0)
    base = {"weight": torch.zeros(1, 1)}
    trained = {"weight": torch.ones(1, 1)}

    def validate() -> float:  # best at w = 0.5: halfway back to the base
        return -(model.weight.item() - 0.5) ** 2

    result = TrainResult(trained, best_epoch=3, best_val_ndcg10=-0.25, seconds=2.0)
    kept = interpolate_toward_base(model, base, result, 4, validate)
    assert kept.alpha == 0.5 and kept.best_val_ndcg10 == 0.0 and kept.best_epoch == 3
    assert model.weight.item() == 0.5 and kept.state_dict["weight"].item() == 0.5
    assert kept.seconds >= 2.0

    # the trained weights are kept when no interpolation validates better; grid 0 / 1: off
    model = _linear(1.0)
    peak_at_trained = TrainResult(trained, 3, 0.0)
    assert interpolate_toward_base(model, base, peak_at_trained, 4,
                                   lambda: -(model.weight.item() - 1.0) ** 2).alpha == 1.0
    assert model.weight.item() == 1.0
    for grid in (0, 1):
        assert interpolate_toward_base(model, base, result, grid, validate) == result


def test_silo_fine_tuning_records_the_interpolation_it_kept(tmp_path):
    dom = make_synthetic_domains(SyntheticConfig(items_per_domain=40, users_per_domain=120))[0]
    cfg = ModelConfig(text_dim=32, hidden=16, layers=1, max_len=8, item_hidden=8)
    base = build_base_model(cfg, seed=0).state_dict()
    feats = [HashingEncoder(32).encode(dom.item_texts)]
    plain = TrainConfig(epochs=2, batch_size=32, warmup_steps=2, patience=2)
    trained, plain_stats = fine_tune_cached(base, cfg, [dom], feats, plain, tmp_path / "plain")
    train = TrainConfig(**{**plain.__dict__, "interpolation_grid": 4})
    state, stats = fine_tune_cached(base, cfg, [dom], feats, train, tmp_path)
    alpha = stats["alpha"]
    assert plain_stats["alpha"] == 1.0 and alpha in (0.25, 0.5, 0.75, 1.0)
    assert stats["best_val_ndcg@10"] >= plain_stats["best_val_ndcg@10"]
    for k, v in trained.items():  # the same (reproducible) training, then the kept point
        expected = base[k] + alpha * (v - base[k]) if v.is_floating_point() else v
        assert torch.allclose(state[k], expected, atol=1e-6), k
    _, again = fine_tune_cached(base, cfg, [dom], feats, train, tmp_path)
    assert again["alpha"] == alpha and again["reused_checkpoint"] == 1.0


def test_interpolation_settings_are_checked_before_training(tmp_path):
    with pytest.raises(ValueError, match=r"train\.interpolation_grid must be between 0 \(off\) and 20, got -1"):
        PipelineConfig(train=TrainConfig(interpolation_grid=-1))
    with pytest.raises(ValueError, match="interpolation_grid: not available with DP-SGD"):
        PipelineConfig(train=TrainConfig(interpolation_grid=4, dp=DPConfig(epsilon=8.0)))
    # a silo's own settings (node config) meet the same check where training starts
    dom = make_synthetic_domains(SyntheticConfig(items_per_domain=20, users_per_domain=40))[0]
    cfg = ModelConfig(text_dim=16, hidden=8, layers=1, max_len=4, item_hidden=4)
    with pytest.raises(ValueError, match="interpolation_grid must be between 0"):
        fine_tune_cached(build_base_model(cfg).state_dict(), cfg, [dom],
                         [HashingEncoder(16).encode(dom.item_texts)],
                         TrainConfig(interpolation_grid=-2), tmp_path)
    assert not list(tmp_path.iterdir())
