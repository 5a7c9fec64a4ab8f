"""The fused item side of a fine-tuning step equals the autograd path it replaces."""

from dataclasses import replace

import pytest
import torch

from common.data import SyntheticConfig, make_synthetic_domains
from common.model import ModelConfig, build_base_model
from common.settings import DPConfig, PipelineConfig, TrainConfig
from common.settings.training import check_loss
from common.text import HashingEncoder
from common.training import finetune
from common.model.recommender import position_history_index
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

    def autograd_step(model, text, batch, workspace, buffers, negatives):
        assert negatives is None  # the full softmax
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


@pytest.mark.parametrize("repeat_head", [False, True])
def test_sampled_softmax_is_the_full_softmax_over_the_drawn_targets_and_history_items(repeat_head):
    """The sampled loss is the cross-entropy of the model's own logits restricted to the drawn
    items, the batch's targets and its history items (history bonus included), gradients too."""
    model = gated_model(repeat_head)
    feats = torch.randn(12, 16)
    batch = make_batch(0, [[1, 2, 3, 2, 7], [4, 5], [9, 9, 1]], 8)
    drawn = torch.tensor([11, 0, 11])
    params = list(model.parameters())
    sampled = fused_next_item_loss(model, feats, batch, LogitsWorkspace(), Buffers(), drawn)
    got = torch.autograd.grad(sampled, params, allow_unused=True)

    kept = torch.tensor([0, 1, 2, 3, 4, 5, 7, 9, 11])  # drawn ∪ inputs ∪ targets
    item_emb = model.encode_items(feats)
    states = model.sequence_states(item_emb, batch.seqs, batch.lengths,
                                   batch.mask.nonzero(as_tuple=True))
    logits = model.logits(states, item_emb,
                          position_history_index(batch.seqs, batch.mask, 12), 1 / 0.05)
    slot = torch.full((12,), -1).index_put_((kept,), torch.arange(len(kept)))
    dense = torch.nn.functional.cross_entropy(logits[:, kept], slot[batch.targets[batch.mask]])
    want = torch.autograd.grad(dense, params, allow_unused=True)
    assert torch.allclose(sampled, dense, atol=1e-5)
    full = fused_next_item_loss(model, feats, batch, LogitsWorkspace(), Buffers())
    assert full - sampled > 1e-4  # fewer competitors: a different loss, not the full one
    for (name, _), g, w in zip(model.named_parameters(), got, want):
        assert (g is None) == (w is None), name
        if g is not None:
            assert torch.allclose(g, w, atol=1e-5, rtol=1e-4), name


def test_fine_tuning_with_the_sampled_softmax(monkeypatch):
    """fine_tune draws fresh negatives per step (seeded: the same run twice gives the same
    weights), trains away from θ₀, and drawing at least the catalogue is the full softmax."""
    dom, feats = _domain_and_features()
    cfg = ModelConfig(text_dim=32, hidden=16, layers=1, max_len=8, item_hidden=8,
                      repeat_head=True)
    train = TrainConfig(epochs=2, batch_size=32, warmup_steps=2, patience=2, bf16=True,
                        loss="sampled_softmax", negatives=10)
    drawn = []

    def recorded(model, text, batch, workspace, buffers, negatives):
        drawn.append(negatives)
        return fused_next_item_loss(model, text, batch, workspace, buffers, negatives)

    monkeypatch.setattr(finetune, "fused_next_item_loss", recorded)
    first = fine_tune(build_base_model(cfg, seed=0), [dom], feats, train)
    assert drawn and all(n is not None and n.shape == (10,) for n in drawn)
    assert not torch.equal(drawn[0], drawn[1])
    losses = [h["loss"] for h in first.history[1:]]
    assert len(losses) == 2 and losses[1] < losses[0]  # it learns
    again = fine_tune(build_base_model(cfg, seed=0), [dom], feats, train)
    assert again.history[1:] == first.history[1:]  # (epoch 0 has no loss: NaN)
    for name, value in first.state_dict.items():
        assert torch.equal(again.state_dict[name], value), name

    whole = replace(train, negatives=len(dom.item_texts), bf16=False)
    drawn.clear()
    sampled_all = fine_tune(build_base_model(cfg, seed=0), [dom], feats, whole)
    assert drawn and all(n is None for n in drawn)
    full = fine_tune(build_base_model(cfg, seed=0), [dom], feats,
                     replace(whole, loss="full_softmax"))
    assert sampled_all.history[1:] == full.history[1:] != first.history[1:]
    for name, value in full.state_dict.items():
        assert torch.equal(sampled_all.state_dict[name], value), name


@pytest.mark.parametrize("model_change, train_change, problem", [
    ({}, {"negatives": 0}, "negatives must be at least 1"),
    ({"text_layers": 1}, {}, "frozen text vectors"),
    ({}, {"dp": DPConfig(epsilon=8.0)}, "DP-SGD trains with the full softmax"),
])
def test_sampled_softmax_settings_it_cannot_run_with_are_refused(model_change, train_change,
                                                                 problem):
    train = replace(TrainConfig(loss="sampled_softmax"), **train_change)
    with pytest.raises(ValueError, match=problem) as err:
        check_loss(train, replace(ModelConfig(), **model_change), "federation.silo_train.Sports")
    assert "federation.silo_train.Sports" in str(err.value)
    check_loss(replace(train, loss="full_softmax"), replace(ModelConfig(), **model_change), "x")
    with pytest.raises(ValueError, match=problem):  # the run's config is checked when loaded
        PipelineConfig(model=replace(ModelConfig(), **model_change), train=train)
