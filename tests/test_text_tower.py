"""The backbone whose text encoder layers are trained: exact θ₀, training, merging, learning."""

import pytest
import torch
import torch.nn.functional as F

from common.backbone import base_model, item_inputs, model_config_for
from common.data import SyntheticConfig, make_synthetic_domains
from common.distill import DistillConfig, DomainPseudoData, learn_merge_weights, teacher_scores
from common.evaluation import EvalConfig, evaluate_model
from common.merging import METHODS, MergeConfig, build_merge
from common.model import ModelConfig, model_from_state, pad_sequences
from common.model.recommender import TextSeqRec
from common.privacy import DPConfig
from common.text import center_features, make_encoder
from common.text.token_states import TokenStates
from common.training import TrainConfig, fine_tune
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
