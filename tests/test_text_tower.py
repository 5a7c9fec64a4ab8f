"""The backbone whose text encoder layers are trained: exact θ₀, training, merging, learning."""

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from common.config import from_dict
from common.backbone import base_model, item_inputs, model_config_for
from common.data import SyntheticConfig, make_synthetic_domains
from common.distill import DistillConfig, DomainPseudoData, learn_merge_weights, teacher_scores
from common.evaluation import EvalConfig, evaluate_model
from common.merging import METHODS, MergeConfig, build_merge
from common.model import ModelConfig, model_from_state, pad_sequences
from common.model.recommender import TextSeqRec
from common.package import load_package
from common.pipeline import run_pipeline
from common.recommend import Catalogue, Recommender
from common.privacy import DPConfig
from common.settings import PipelineConfig
from common.text import center_features, make_encoder
from common.text.token_states import TokenStates
from common.training import TrainConfig, fine_tune, next_item_loss
from common.training.batching import make_batch, training_sequences
from common.training.dp_sgd import dp_fine_tune

TEXTS = [f"{c} {t} by brand{b}" for c in ("red", "blue", "green", "black", "white")
         for t in ("lipstick", "running shoe", "green tea", "notebook") for b in range(2)]


def test_token_states_select_pad_and_chunk():
    lengths = [3, 1, 4, 2]
    offsets = torch.tensor([0, 3, 4, 8, 10])
    states = torch.arange(10.0)[:, None].repeat(1, 2)
    tokens = TokenStates(states, offsets, torch.ones(2))
    sub = tokens[torch.tensor([2, 0])]
    assert sub.lengths.tolist() == [4, 3] and sub.states[:, 0].tolist() == [4, 5, 6, 7, 0, 1, 2]
    padded, mask = tokens.padded()
    assert padded.shape == (4, 4, 2) and mask.sum(1).tolist() == lengths
    assert padded[3, :2, 0].tolist() == [8, 9] and not padded[1, 1:].any()
    groups = tokens.chunks(max_tokens=6)
    assert sorted(torch.cat(groups).tolist()) == [0, 1, 2, 3]
    assert all(len(g) * int(tokens.lengths[g].max()) <= 6 or len(g) == 1 for g in groups)
    with pytest.raises(ValueError, match="offsets"):
        TokenStates(states, torch.tensor([0, 3, 3, 10]))


@pytest.mark.parametrize("layers", [1, 2])
def test_theta0_with_encoder_layers_ranks_exactly_by_text_similarity(layers):
    encoder = make_encoder("minilm", bf16=False)
    cfg = model_config_for(ModelConfig(hidden=16, max_len=8, text_layers=layers), encoder)
    model = base_model(cfg, encoder, seed=0).eval()
    tokens = item_inputs(TEXTS, "minilm", cfg, True, None)
    frozen = center_features(encoder.encode(TEXTS))
    seqs, lengths = pad_sequences([[3, 4, 5], [7], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]], 8)
    with torch.no_grad():
        vectors = model.text_vectors(tokens)
        items = model.encode_items(tokens)
        scores = model.score(model.encode_sequences(items, seqs, lengths), items)
    assert (vectors - frozen).abs().max() < 1e-5
    expected = frozen[[5, 7, 10]] @ frozen.T
    assert (scores - expected).abs().max() < 1e-5
    assert torch.equal(scores.argsort(1, descending=True)[:, :5],
                       expected.argsort(1, descending=True)[:, :5])
    assert model.layer_groups()["text_tower.layers.0.query.weight"] == "text_tower.layer0"


@pytest.fixture(scope="module")
def tiny_setup(tiny_encoder_dir):
    """Two synthetic domains and the whole (2-layer) tiny encoder as trainable layers."""
    encoder = make_encoder(str(tiny_encoder_dir))
    cfg = model_config_for(ModelConfig(hidden=16, layers=1, heads=2, max_len=8, item_hidden=16,
                                       text_layers=2), encoder)
    domains = make_synthetic_domains(SyntheticConfig(domains=("beauty", "sports"),
                                                     items_per_domain=50, users_per_domain=120))
    inputs = [item_inputs(d.item_texts, str(tiny_encoder_dir), cfg, True, None) for d in domains]
    return encoder, cfg, domains, inputs


@pytest.mark.parametrize("rows,loss", [("last", "full_softmax"), ("targets", "in_batch"),
                                       ("catalogue", "full_softmax")])
def test_encoder_layers_are_fine_tuned(tiny_setup, rows, loss):
    encoder, cfg, domains, inputs = tiny_setup
    model = base_model(cfg, encoder, seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train = TrainConfig(epochs=2, batch_size=32, warmup_steps=2, patience=2, text_lr=1e-3,
                        text_rows=rows, loss=loss, text_refresh_steps=2)
    result = fine_tune(model, [domains[0]], [inputs[0]], train)
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in result.history[1:])
    moved = [k for k in before if k.startswith("text_tower.") and not torch.equal(before[k], result.state_dict[k])]
    assert len(moved) == len([k for k in before if k.startswith("text_tower.")])


def test_encoder_layers_are_merged_learned_and_evaluated(tiny_setup):
    encoder, cfg, domains, inputs = tiny_setup
    base = base_model(cfg, encoder, seed=0).state_dict()
    train = TrainConfig(epochs=1, batch_size=32, warmup_steps=2, text_lr=1e-3)
    finetuned = []
    for d, x in zip(domains, inputs):
        model = model_from_state(cfg, base)
        finetuned.append(fine_tune(model, [d], [x], train).state_dict)
    for method in METHODS:
        merged = build_merge(MergeConfig(method), base, finetuned).merged(base)
        assert not torch.equal(merged["text_tower.layers.1.ffn_in.weight"],
                               base["text_tower.layers.1.ffn_in.weight"]), method
    pseudo = []
    for d, x, state in zip(domains, inputs, finetuned):
        seqs = [[i] for i in range(d.num_items)]
        pseudo.append(DomainPseudoData(d.name, x, seqs,
                                       teacher_scores(model_from_state(cfg, state), x, seqs)))
    learned = learn_merge_weights(TextSeqRec(cfg), base, build_merge(MergeConfig(), base, finetuned),
                                  pseudo, DistillConfig(granularity="layer", steps=5))
    assert {"text_tower.layer0", "text_tower.layer1"} <= set(learned.weights)
    metrics = evaluate_model(model_from_state(cfg, learned.state_dict), domains[0], inputs[0],
                             EvalConfig(ks=(10,))).metrics
    assert 0.0 <= metrics["recall@10"] <= 1.0


def test_dp_fine_tuning_keeps_the_encoder_layers_at_theta0(tiny_setup):
    encoder, cfg, domains, inputs = tiny_setup
    model = base_model(cfg, encoder, seed=0)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    train = TrainConfig(epochs=1, batch_size=32, dp=DPConfig(epsilon=8.0))
    result = dp_fine_tune(model, domains[0], inputs[0], train)
    assert result.privacy["dp_epsilon"] <= 8.0 + 1e-6
    text = [k for k in base if k.startswith("text_tower.")]
    assert text and all(torch.equal(base[k], result.state_dict[k]) for k in text)
    assert not torch.equal(base["seq_tower.gate"], result.state_dict["seq_tower.gate"])


def test_encoder_layers_need_a_transformer_encoder():
    with pytest.raises(ValueError, match="needs a transformer text encoder"):
        model_config_for(ModelConfig(text_layers=1), make_encoder("hashing-32"))
    with pytest.raises(ValueError, match="text_layers must lie in 1..6"):
        model_config_for(ModelConfig(text_layers=7), make_encoder("minilm"))
    model = TextSeqRec(ModelConfig(text_dim=8, hidden=8))
    with pytest.raises(ValueError, match="without text encoder layers"):
        model.encode_items(TokenStates(F.normalize(torch.randn(3, 8)), torch.tensor([0, 1, 3])))


def test_history_token_states_join_a_history_and_keep_its_last_tokens():
    offsets = torch.tensor([0, 3, 4, 8, 10])
    tokens = TokenStates(torch.arange(10.0)[:, None], offsets, torch.ones(1))
    seqs = torch.tensor([[2, 0, 1], [3, 3, 0], [1, 0, 0], [0, 2, 3]])
    joined = tokens.histories(seqs, torch.tensor([3, 2, 1, 3]), max_tokens=6)
    assert joined.lengths.tolist() == [6, 4, 1, 6]  # the last row's first item falls out whole
    assert joined.states[:, 0].tolist() == [6, 7, 0, 1, 2, 3, 8, 9, 8, 9, 3, 4, 5, 6, 7, 8, 9]
    assert torch.equal(joined.center, tokens.center)
    with pytest.raises(ValueError, match="history_tokens"):
        tokens.histories(seqs, torch.tensor([3, 2, 1]), max_tokens=0)


@pytest.fixture(scope="module")
def history_setup(tiny_setup):
    encoder, cfg, domains, inputs = tiny_setup
    return encoder, replace(cfg, user="history_text", history_tokens=64), domains, inputs


def test_history_text_theta0_scores_the_history_text_against_each_item(history_setup):
    encoder, cfg, domains, inputs = history_setup
    model = base_model(cfg, encoder, seed=0).eval()
    assert model.seq_tower is None and not any(k.startswith("seq_tower.") for k in model.state_dict())
    x = inputs[0]
    hist = [[3], [3, 4, 5], list(range(1, 9))]
    seqs, lengths = pad_sequences(hist, cfg.max_len)
    with torch.no_grad():
        items = model.encode_items(x)
        scores = model.score(model.encode_sequences(items, seqs, lengths, x), items)
        joined = [TokenStates(torch.cat([x[torch.tensor([i])].states for i in h])[-64:],
                              torch.tensor([0, min(64, sum(int(x.lengths[i]) for i in h))]),
                              x.center) for h in hist]
        expected = torch.cat([model.text_tower(j) for j in joined]) @ model.text_tower(x).T
    assert (scores - expected).abs().max() < 1e-5
    assert (scores[0] - items[3] @ items.T).abs().max() < 1e-5  # one item: text similarity
    with pytest.raises(ValueError, match="token states as inputs"):
        model.encode_sequences(items, seqs, lengths)
    with pytest.raises(ValueError, match="does not run with model.user = history_text"):
        dp_fine_tune(model, domains[0], x, TrainConfig(epochs=1, dp=DPConfig(epsilon=8.0)))
    with pytest.raises(ValueError, match="text_layers > 0"):
        ModelConfig(text_dim=8, hidden=8, user="history_text")
    with pytest.raises(ValueError, match="history_tokens must be >= 1"):
        ModelConfig(text_layers=1, user="history_text", history_tokens=0)
    # the history-text settings are no part of a sequence model's identity (checkpoint keys)
    assert ModelConfig(history_tokens=8).identity() == ModelConfig().identity()
    assert cfg.identity() != replace(cfg, history_tokens=8).identity()


@pytest.mark.parametrize("rows,loss", [("last", "full_softmax"), ("targets", "in_batch")])
def test_history_text_users_train_in_the_fine_tuning_loop(history_setup, rows, loss):
    encoder, cfg, domains, inputs = history_setup
    train = TrainConfig(epochs=1, batch_size=32, warmup_steps=2, text_lr=1e-3, text_rows=rows,
                        loss=loss, text_refresh_steps=2)
    result = fine_tune(base_model(cfg, encoder, seed=0), [domains[0]], [inputs[0]], train)
    assert len(result.history) == 2 and torch.isfinite(torch.tensor(result.history[1]["loss"]))


def _steps(model: TextSeqRec, domain, x: TokenStates, steps: int = 3) -> dict:
    """A few plain optimiser steps of the full-softmax loss (no early stopping: the tiny random
    encoder's θ₀ is hard to beat on validation in one epoch)."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    rows = training_sequences(domain.train, model.cfg.max_len)
    for i in range(steps):
        batch = make_batch(0, rows[i * 16:(i + 1) * 16], model.cfg.max_len)
        loss = next_item_loss(model, model.encode_items(x), batch, inputs=x)
        opt.zero_grad()
        loss.backward()
        assert model.text_tower.layers[0].query.weight.grad.abs().sum() > 0
        opt.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_history_text_users_are_merged_learned_and_evaluated(history_setup):
    encoder, cfg, domains, inputs = history_setup
    base = base_model(cfg, encoder, seed=0).state_dict()
    finetuned = [_steps(model_from_state(cfg, base).train(), d, x) for d, x in zip(domains, inputs)]
    for method in METHODS:
        merged = build_merge(MergeConfig(method), base, finetuned).merged(base)
        assert not torch.equal(merged["text_tower.layers.1.ffn_in.weight"],
                               base["text_tower.layers.1.ffn_in.weight"]), method
    pseudo = [DomainPseudoData(d.name, x, [[i, (i + 1) % d.num_items] for i in range(d.num_items)],
                               teacher_scores(model_from_state(cfg, s), x,
                                              [[i, (i + 1) % d.num_items] for i in range(d.num_items)]))
              for d, x, s in zip(domains, inputs, finetuned)]
    learned = learn_merge_weights(TextSeqRec(cfg), base, build_merge(MergeConfig("ties"), base, finetuned),
                                  pseudo, DistillConfig(granularity="layer", steps=5))
    assert {"text_tower.layer0", "text_tower.layer1"} <= set(learned.weights)
    assert not any(g.startswith("seq_tower") for g in learned.weights)
    metrics = evaluate_model(model_from_state(cfg, learned.state_dict), domains[0], inputs[0],
                             EvalConfig(ks=(10,))).metrics
    assert 0.0 <= metrics["recall@10"] <= 1.0


@pytest.mark.parametrize("user", ["sequence", "history_text"])
def test_trained_encoder_layers_run_through_the_federation(tiny_encoder_dir, tmp_path, user):
    """The whole tiny encoder fine-tuned in every silo, merged and learned by the coordinator
    from the silos' answers, evaluated in each silo (an unseen one too), in-process."""
    cfg = from_dict(PipelineConfig, {
        "data": {"synthetic": {"domains": ["beauty", "sports", "pantry"], "items_per_domain": 40,
                               "users_per_domain": 80}, "cache_dir": str(tmp_path / "cache")},
        "encoder": str(tiny_encoder_dir),
        "model": {"hidden": 16, "layers": 1, "heads": 2, "max_len": 8, "item_hidden": 16,
                  "text_layers": 2, "user": user, "history_tokens": 64},
        "train": {"epochs": 1, "batch_size": 32, "text_lr": 1e-3, "warmup_steps": 2},
        "merges": [{"method": "ties"}],
        "learned": [{"name": "mergerec layer-wise", "distill": {"granularity": "layer", "steps": 5}}],
        "federation": {"eval_only": ["pantry"]},
        "output_dir": str(tmp_path / "run")})
    report = run_pipeline(cfg)
    results = report["results"]
    for label in ("zero-shot base θ₀", "in-domain fine-tuned", "ties", "mergerec layer-wise"):
        assert set(results[label]) >= {"beauty", "sports"}, label
    assert 0.0 <= results["mergerec layer-wise"]["pantry"]["recall@10"] <= 1.0
    groups = set(report["learned_weights"]["mergerec layer-wise"])
    assert {"text_tower.layer0", "text_tower.layer1"} <= groups
    assert any(g.startswith("seq_tower") for g in groups) == (user == "sequence")
    domain = make_synthetic_domains(cfg.data.synthetic)[0]
    model, info = load_package(tmp_path / "run" / "models" / "mergerec_layer-wise")
    rec = Recommender(model, info, Catalogue(domain.name, domain.item_keys, domain.item_texts),
                      tmp_path / "cache")
    histories = domain.eval_examples("test")[0][:8]
    inputs = item_inputs(domain.item_texts, str(tiny_encoder_dir), info.model, True, None)
    expected = teacher_scores(model, inputs, histories).scores
    assert (rec.scores(histories) - expected).abs().max() < 1e-5
