import pytest
import torch
import torch.nn.functional as F

from common.evaluation import EvalConfig, evaluate_model, evaluate_scores
from common.data import SyntheticConfig, make_synthetic_domains
from common.model import ModelConfig, build_base_model, pad_sequences, state_hash
from common.text import HashingEncoder


def test_base_model_is_bit_identical_under_seed():
    a = build_base_model(ModelConfig(text_dim=32, hidden=16), seed=7).state_dict()
    b = build_base_model(ModelConfig(text_dim=32, hidden=16), seed=7).state_dict()
    c = build_base_model(ModelConfig(text_dim=32, hidden=16), seed=8).state_dict()
    assert state_hash(a) == state_hash(b) != state_hash(c)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("branch_init,repeat_head", [("rezero", False), ("zero_out", False),
                                                     ("rezero", True)])
def test_base_scores_exactly_text_similarity_to_last_item(branch_init, repeat_head):
    torch.manual_seed(0)
    feats = F.normalize(torch.randn(50, 32), dim=-1)
    cfg = ModelConfig(text_dim=32, hidden=16, max_len=8, branch_init=branch_init,
                      repeat_head=repeat_head)
    model = build_base_model(cfg, seed=1).eval()
    seqs, lengths = pad_sequences([[3, 4, 5], [7], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]], 8)
    with torch.no_grad():
        items = model.encode_items(feats)
        scores = model.score(model.encode_sequences(items, seqs, lengths), items)
    expected = feats[[5, 7, 10]] @ feats.T
    assert torch.allclose(scores, expected, atol=1e-6)


def test_zero_out_branches_start_at_zero_and_keep_the_rezero_draw():
    rezero = build_base_model(ModelConfig(text_dim=32, hidden=16, item_hidden=8), seed=3).state_dict()
    cfg = ModelConfig(text_dim=32, hidden=16, item_hidden=8, branch_init="zero_out")
    zero = build_base_model(cfg, seed=3).state_dict()
    changed = {"item_tower.out.weight", "item_tower.out.bias", "item_tower.gate",
               "seq_tower.out.weight", "seq_tower.out.bias", "seq_tower.skip.weight",
               "seq_tower.gate"}
    assert all(torch.equal(rezero[k], zero[k]) for k in rezero if k not in changed)
    assert all(not zero[k].any() for k in changed if "gate" not in k)
    assert zero["item_tower.gate"].tolist() == [1 / 8]
    assert zero["seq_tower.gate"].tolist() == [1 / 32, 1 / 16]
    with pytest.raises(ValueError, match="branch_init"):
        build_base_model(ModelConfig(branch_init="random"))  # type: ignore[arg-type]


def test_zero_out_silos_fine_tune_into_one_basin():
    """With zero output projections every branch grows along its domain's own gradient: the
    gates of all silos stay positive (with ReZero gates over random projections, silos
    fine-tuned on these domains came out with gates of opposite signs)."""
    from common.training.finetune import TrainConfig, fine_tune

    domains = make_synthetic_domains(SyntheticConfig(items_per_domain=60, users_per_domain=200))
    cfg = ModelConfig(text_dim=64, hidden=16, layers=1, max_len=8, item_hidden=16,
                      branch_init="zero_out")
    train = TrainConfig(epochs=4, batch_size=32, warmup_steps=5, patience=4)
    for dom in domains:
        model = build_base_model(cfg, seed=0)
        fine_tune(model, [dom], [HashingEncoder(64).encode(dom.item_texts)], train)
        for gate in (model.item_tower.gate, model.seq_tower.gate):
            assert (gate > 0).all(), (dom.name, gate)


def test_base_evaluation_equals_text_similarity_ranking():
    dom = make_synthetic_domains(SyntheticConfig(items_per_domain=80, users_per_domain=60))[0]
    feats = HashingEncoder(64).encode(dom.item_texts)
    model = build_base_model(ModelConfig(text_dim=64, hidden=16), seed=0)
    cfg = EvalConfig(split="test")
    got = evaluate_model(model, dom, feats, cfg).metrics
    ref = evaluate_scores(lambda h: feats[[s[-1] for s in h]] @ feats.T, dom, cfg).metrics
    assert got == ref


def test_history_masking_changes_protocol_and_scores():
    dom = make_synthetic_domains(SyntheticConfig(items_per_domain=80, users_per_domain=60))[0]
    feats = HashingEncoder(64).encode(dom.item_texts)
    model = build_base_model(ModelConfig(text_dim=64, hidden=16), seed=0)
    plain = evaluate_model(model, dom, feats, EvalConfig(mask_history=False))
    masked = evaluate_model(model, dom, feats, EvalConfig(mask_history=True))
    assert masked.protocol["mask_history"] is True and plain.protocol["mask_history"] is False
    # unmasked, the last history item itself ranks first; masking removes it
    assert masked.metrics["recall@10"] != plain.metrics["recall@10"]


def test_history_terms():
    from common.model.recommender import (history_multi_hot, position_history_index,
                                          prefix_histories)

    seqs = torch.tensor([[3, 1, 0], [2, 0, 0]])
    lengths = torch.tensor([3, 1])
    hot = history_multi_hot(seqs, lengths, 5)
    assert hot.tolist() == [[1, 1, 0, 1, 0], [0, 0, 1, 0, 0]]
    mask = torch.arange(3)[None] < lengths[:, None]
    def dense(index: tuple[torch.Tensor, torch.Tensor], rows: int) -> list[list[float]]:
        out = torch.zeros(rows, 5)
        out.index_put_(index, torch.ones(len(index[0])), accumulate=True)  # a repeat would add 2
        return out.tolist()

    # real positions: (0,0) {3}, (0,1) {3,1}, (0,2) {3,1,0}, (1,0) {2}
    assert dense(position_history_index(seqs, mask, 5), 4) == [
        [0, 0, 0, 1, 0], [0, 1, 0, 1, 0], [1, 1, 0, 1, 0], [0, 0, 1, 0, 0]]
    repeat = torch.tensor([[3, 1, 3], [2, 0, 0]])
    expected = [[0, 0, 0, 1, 0], [0, 1, 0, 1, 0], [0, 1, 0, 1, 0], [0, 0, 1, 0, 0]]
    assert dense(position_history_index(repeat, mask, 5), 4) == expected
    prefix = prefix_histories(repeat, lengths, 5)
    assert prefix[mask].tolist() == expected
    assert prefix[~mask].abs().sum() == 0


def test_history_weight_shifts_scores_of_history_items():
    torch.manual_seed(0)
    feats = F.normalize(torch.randn(20, 16), dim=-1)
    model = build_base_model(ModelConfig(text_dim=16, hidden=8, max_len=8), seed=1).eval()
    seqs, lengths = pad_sequences([[3, 4]], 8)
    with torch.no_grad():
        items = model.encode_items(feats)
        before = model.score_sequences(items, seqs, lengths)
        model.history_weight.fill_(-0.5)
        after = model.score_sequences(items, seqs, lengths)
    delta = after - before
    assert torch.allclose(delta[0, [3, 4]], torch.tensor([-0.5, -0.5]))
    assert torch.count_nonzero(delta) == 2


def test_compute_device_follows_the_environment(monkeypatch):
    from common.runtime import compute_device

    monkeypatch.setenv("MERGEREC_DEVICE", "cpu")
    assert compute_device() == torch.device("cpu")
    monkeypatch.setenv("MERGEREC_DEVICE", "gpu0")
    with pytest.raises(ValueError, match="not a torch device"):
        compute_device()
    if not torch.cuda.is_available():
        monkeypatch.setenv("MERGEREC_DEVICE", "cuda")
        with pytest.raises(ValueError, match="no CUDA GPU"):
            compute_device()
        monkeypatch.setenv("MERGEREC_DEVICE", "auto")
        assert compute_device() == torch.device("cpu")


def test_logits_with_sparse_history_match_dense_scores_and_gradients():
    from common.model.recommender import history_multi_hot, sequence_history_index

    torch.manual_seed(0)
    feats = torch.randn(12, 16)
    model = build_base_model(ModelConfig(text_dim=16, hidden=8, max_len=8), seed=1)
    with torch.no_grad():
        model.history_weight.fill_(0.3)
    seqs = torch.tensor([[3, 1, 3], [2, 0, 0]])  # a repeated item counts once
    lengths = torch.tensor([3, 1])
    users = torch.randn(2, 16)
    sparse = model.logits(users, model.encode_items(feats),
                          sequence_history_index(seqs, lengths, 12), 1 / 0.05)
    (g_sparse,) = torch.autograd.grad(sparse.logsumexp(1).sum(), model.history_weight)
    dense = model.score(users, model.encode_items(feats), history_multi_hot(seqs, lengths, 12)) / 0.05
    (g_dense,) = torch.autograd.grad(dense.logsumexp(1).sum(), model.history_weight)
    assert torch.allclose(sparse, dense, atol=1e-5)
    assert torch.allclose(g_sparse, g_dense, rtol=1e-5)


def test_training_loss_runs_under_bf16_autocast():
    """CPUs with native bf16 train under autocast: the sparse history term must still apply."""
    from common.training.batching import make_batch
    from common.training.finetune import next_item_loss

    torch.manual_seed(0)
    model = build_base_model(ModelConfig(text_dim=16, hidden=8, max_len=8), seed=1)
    feats = torch.randn(12, 16)
    batch = make_batch(0, [[1, 2, 3, 2], [4, 5]], 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = next_item_loss(model, model.encode_items(feats), batch)
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert model.history_weight.grad is not None and model.history_weight.grad.abs() > 0
