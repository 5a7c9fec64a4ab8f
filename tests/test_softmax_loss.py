import pytest
import torch
import torch.nn.functional as F

from common.model import ModelConfig, build_base_model
from common.model.recommender import history_index
from common.training.batching import make_batch
from common.training.finetune import next_item_loss
from common.training.softmax_loss import (LogitsWorkspace, cosine_softmax_cross_entropy,
                                          unit_normalize)


def _case(seed: int, positions: int = 9, items: int = 23, dim: int = 8):
    gen = torch.Generator().manual_seed(seed)
    users = F.normalize(torch.randn(positions, dim, generator=gen), dim=-1)
    item_vecs = F.normalize(torch.randn(items, dim, generator=gen), dim=-1)
    targets = torch.randint(0, items, (positions,), generator=gen)
    rows = torch.randint(0, positions, (30,), generator=gen)
    cols = torch.randint(0, items, (30,), generator=gen)
    cols[:4] = targets[rows[:4]]  # some targets repeat a history item
    return users, item_vecs, targets, history_index(rows, cols, items)


def _dense_loss(users, item_vecs, beta, history, targets, scale):
    logits = scale * users @ item_vecs.T
    logits = logits.index_put(history, (beta * scale).expand(len(history[0])), accumulate=True)
    return F.cross_entropy(logits, targets)


def test_fused_cross_entropy_matches_dense_loss_and_gradients():
    users, item_vecs, targets, history = _case(0)
    args64 = [t.double().requires_grad_() for t in (users, item_vecs, torch.tensor([0.4]))]
    ref = _dense_loss(*args64, history, targets, 20.0)
    ref_grads = torch.autograd.grad(ref, args64)
    args = [t.detach().float().requires_grad_() for t in args64]
    fused = cosine_softmax_cross_entropy(args[0], args[1], args[2], history, targets, 20.0)
    grads = torch.autograd.grad(fused, args)
    assert abs(fused.item() - ref.item()) < 1e-5
    for got, want in zip(grads, ref_grads):
        assert torch.allclose(got.double(), want, atol=1e-5), (got, want)


def test_fused_cross_entropy_survives_large_history_weight_and_empty_history():
    users, item_vecs, targets, history = _case(1)
    beta = torch.tensor([40.0], requires_grad=True)  # logits up to 820: exp overflows unshifted
    loss = cosine_softmax_cross_entropy(users, item_vecs, beta, history, targets, 20.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(beta.grad).all()
    assert torch.allclose(loss, _dense_loss(users, item_vecs, beta, history, targets, 20.0))
    empty = (torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long))
    plain = cosine_softmax_cross_entropy(users, item_vecs, beta, empty, targets, 20.0)
    assert torch.allclose(plain, F.cross_entropy(20.0 * users @ item_vecs.T, targets))


def test_workspace_is_recycled_but_never_shared_by_live_losses():
    a, b = _case(2), _case(3)
    beta = torch.tensor([0.2], requires_grad=True)
    workspace = LogitsWorkspace()

    def grads(loss_fn, **kw):
        users = [t.clone().requires_grad_() for t in (a[0], b[0])]
        both = (loss_fn(users[0], a[1], beta, a[3], a[2], 20.0, **kw)
                + loss_fn(users[1], b[1], beta, b[3], b[2], 20.0, **kw))
        return torch.autograd.grad(both, [*users, beta])

    dense = grads(_dense_loss)
    for _ in range(2):  # two losses alive at once, then again with the recycled buffer
        for got, want in zip(grads(cosine_softmax_cross_entropy, workspace=workspace), dense):
            assert torch.allclose(got, want, atol=1e-5)
    buffer = workspace.take(1, 1, torch.device("cpu"))
    assert buffer._base.numel() == len(a[0]) * len(a[1])  # kept the larger of the two


def test_second_backward_pass_is_refused_clearly():
    users, item_vecs, targets, history = _case(4)
    users.requires_grad_()
    loss = cosine_softmax_cross_entropy(users, item_vecs, torch.zeros(1), history, targets, 20.0)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="one backward pass per forward"):
        loss.backward()


def test_unit_normalize_matches_f_normalize():
    x = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(unit_normalize, (x,))
    assert torch.allclose(unit_normalize(x), F.normalize(x, dim=-1))
    zero = torch.zeros(2, 5)
    assert torch.equal(unit_normalize(zero), F.normalize(zero, dim=-1))


def gated_model(repeat_head: bool) -> torch.nn.Module:
    """θ₀ moved off its zero gates (every branch and the repeat head carry gradient), in eval
    mode (no dropout: two losses over it see the same states)."""
    torch.manual_seed(0)
    model = build_base_model(ModelConfig(text_dim=16, hidden=8, max_len=8,
                                         repeat_head=repeat_head), seed=1)
    with torch.no_grad():
        model.history_weight.fill_(-0.3)
        model.item_tower.gate.fill_(0.5)
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


@pytest.mark.parametrize("repeat_head", [False, True])
def test_next_item_loss_equals_dense_full_softmax(repeat_head):
    """The training loss, fused, is the cross-entropy over the model's own logits (one β, or
    one per item from the repeat head)."""
    from common.model.recommender import position_history_index

    model = gated_model(repeat_head)
    feats = torch.randn(12, 16)
    batch = make_batch(0, [[1, 2, 3, 2, 7], [4, 5], [9, 9, 1]], 8)
    fused = next_item_loss(model, model.encode_items(feats), batch)
    fused_grads = torch.autograd.grad(fused, list(model.parameters()), allow_unused=True)
    item_emb = model.encode_items(feats)
    states = model.sequence_states(item_emb, batch.seqs, batch.lengths,
                                   batch.mask.nonzero(as_tuple=True))
    logits = model.logits(states, item_emb,
                          position_history_index(batch.seqs, batch.mask, 12), 1 / 0.05)
    dense = F.cross_entropy(logits, batch.targets[batch.mask])
    dense_grads = torch.autograd.grad(dense, list(model.parameters()), allow_unused=True)
    assert torch.allclose(fused, dense, atol=1e-5)
    for got, want in zip(fused_grads, dense_grads):
        assert (got is None) == (want is None)
        if got is not None:
            assert torch.allclose(got, want, atol=1e-5, rtol=1e-4)
