"""The fused item side of a fine-tuning step equals the autograd path it replaces."""

import pytest
import torch

from common.data import SyntheticConfig, make_synthetic_domains
from common.model import ModelConfig, build_base_model
from common.settings import TrainConfig
from common.text import HashingEncoder
from common.training import finetune
from common.training.batching import make_batch
from common.training.finetune import fine_tune, fused_next_item_loss, next_item_loss
from common.training.fused_items import Buffers
from common.training.softmax_loss import LogitsWorkspace, cosine_softmax_cross_entropy
from tests.test_softmax_loss import gated_model


@pytest.mark.parametrize("repeat_head", [False, True])
def test_fused_loss_and_gradients_equal_the_autograd_path(repeat_head):
    model = gated_model(repeat_head)
    feats = torch.randn(12, 16)
    batch = make_batch(0, [[1, 2, 3, 2, 7], [4, 5], [9, 9, 1]], 8)
    params = list(model.parameters())
    plain = next_item_loss(model, model.encode_items(feats), batch)
    want = torch.autograd.grad(plain, params, allow_unused=True)
    buffers = Buffers()
    for _ in range(2):  # the second call reuses the first one's buffers
        fused = fused_next_item_loss(model, feats, batch, LogitsWorkspace(), buffers)
        got = torch.autograd.grad(fused, params, allow_unused=True)
        assert torch.allclose(fused, plain, atol=1e-5)
        for (name, _), g, w in zip(model.named_parameters(), got, want):
            assert (g is None) == (w is None), name
            if g is not None:
                assert w.abs().max() > 0 or name == "history_weight", name
                assert torch.allclose(g, w, atol=1e-5, rtol=1e-4), name


def test_softmax_writes_the_items_gradient_into_the_given_buffer():
    gen = torch.Generator().manual_seed(0)
    users = torch.nn.functional.normalize(torch.randn(5, 8, generator=gen), dim=1)
    items = torch.nn.functional.normalize(torch.randn(9, 8, generator=gen), dim=1)
    beta, targets = torch.tensor([0.2]), torch.tensor([1, 4, 4, 0, 8])
    history = (torch.tensor([0, 2]), torch.tensor([3, 4]))
    leaf = items.clone().requires_grad_()
    (want,) = torch.autograd.grad(
        cosine_softmax_cross_entropy(users, leaf, beta, history, targets, 20.0), leaf)
    out = torch.full((9, 8), float("nan"))
    computed = leaf * 1.0  # the buffer serves computed items only; a leaf's .grad could keep it
    (got,) = torch.autograd.grad(cosine_softmax_cross_entropy(
        users, computed, beta, history, targets, 20.0, grad_items_out=out), leaf)
    assert torch.allclose(got, want, atol=1e-6) and torch.allclose(out, want, atol=1e-6)


def _domain_and_features():
    dom = make_synthetic_domains(SyntheticConfig(items_per_domain=40, users_per_domain=120))[0]
    return dom, [HashingEncoder(32).encode(dom.item_texts)]


def test_fine_tuning_with_frozen_vectors_trains_through_the_fused_path(monkeypatch):
    """The same seeded training through the fused step and through the autograd step ends at
    the same weights (up to rounding), and the fused step is the one fine_tune takes."""
    dom, feats = _domain_and_features()
    cfg = ModelConfig(text_dim=32, hidden=16, layers=1, max_len=8, item_hidden=8,
                      repeat_head=True)
    train = TrainConfig(epochs=2, batch_size=32, warmup_steps=2, patience=2, bf16=False)
    calls = []

    def counted(*args):
        calls.append(1)
        return fused_next_item_loss(*args)

    monkeypatch.setattr(finetune, "fused_next_item_loss", counted)
    fused = fine_tune(build_base_model(cfg, seed=0), [dom], feats, train)
    assert calls, "fine_tune did not take the fused step"

    def autograd_step(model, text, batch, workspace, buffers):
        return next_item_loss(model, model.encode_items(text), batch, workspace, text)

    monkeypatch.setattr(finetune, "fused_next_item_loss", autograd_step)
    plain = fine_tune(build_base_model(cfg, seed=0), [dom], feats, train)
    assert fused.best_epoch == plain.best_epoch
    for name, value in plain.state_dict.items():
        assert torch.allclose(fused.state_dict[name], value, atol=1e-4), name


@pytest.mark.parametrize("setting", [{"loss": "in_batch", "bf16": False}, {"bf16": True}])
def test_other_losses_and_bf16_keep_the_autograd_path(monkeypatch, setting):
    dom, feats = _domain_and_features()
    cfg = ModelConfig(text_dim=32, hidden=16, layers=1, max_len=8, item_hidden=8)

    def refuse(*args):
        raise AssertionError("the fused step serves fp32 full-softmax training only")

    monkeypatch.setattr(finetune, "fused_next_item_loss", refuse)
    monkeypatch.setattr(finetune, "bf16_enabled", lambda device, requested: requested)
    train = TrainConfig(epochs=1, batch_size=32, warmup_steps=2, patience=1, **setting)
    result = fine_tune(build_base_model(cfg, seed=0), [dom], feats, train)
    assert result.history[-1]["epoch"] == 1
