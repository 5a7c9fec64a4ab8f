import pytest
import torch
import torch.nn.functional as F

from common.distill import PseudoUserConfig, build_pseudo_users, kmeans_nearest, select_items, teacher_scores
from common.distill.learn import sample_rows
from common.model import ModelConfig, build_base_model


def _feats(n=40, d=16):
    torch.manual_seed(0)
    return F.normalize(torch.randn(n, d), dim=-1)


def test_one_item_pseudo_users_cover_catalogue():
    feats = _feats()
    assert build_pseudo_users(feats, PseudoUserConfig()) == [[i] for i in range(40)]
    sub = select_items(feats, PseudoUserConfig(sample="random", num=10, seed=1))
    assert len(sub) == 10 == len(set(sub)) and sub == select_items(
        feats, PseudoUserConfig(sample="random", num=10, seed=1))


def test_centroid_sampling_picks_cluster_representatives():
    centers = F.normalize(torch.eye(4, 16), dim=-1)
    pts = torch.cat([centers[i] + 0.05 * torch.randn(10, 16) for i in range(4)])
    chosen = kmeans_nearest(pts, 4, seed=0)
    assert len(set(chosen)) == 4
    assert sorted(i // 10 for i in chosen) == [0, 1, 2, 3]


def test_walks_follow_teacher_without_repeats():
    feats = _feats()
    model = build_base_model(ModelConfig(text_dim=16, hidden=8), 0)
    scorer = lambda seqs: teacher_scores(model, feats, seqs).scores  # noqa: E731
    walks = build_pseudo_users(feats, PseudoUserConfig(kind="walk", walk_length=3, sample="random",
                                                       num=5), scorer)
    assert all(len(w) == 3 and len(set(w)) == 3 for w in walks)
    # θ₀ scores by text similarity to the last item: the second item is the nearest neighbour
    for w in walks:
        sims = feats[w[0]] @ feats.T
        sims[w[0]] = -2
        assert w[1] == int(sims.argmax())


def test_teacher_topk_matches_full_rows():
    feats = _feats()
    model = build_base_model(ModelConfig(text_dim=16, hidden=8), 0)
    full = teacher_scores(model, feats, [[1], [2, 3]])
    top = teacher_scores(model, feats, [[1], [2, 3]], topk=5)
    assert torch.allclose(top.scores, full.scores.topk(5, dim=1).values)
    assert torch.equal(top.top1(), full.top1())


def test_domain_sampling_equal_and_proportional():
    offsets = torch.tensor([0, 10, 1010])  # a 10-user and a 1000-user domain
    gen = torch.Generator().manual_seed(0)
    equal = sample_rows(offsets, 4000, "equal", gen)
    small = (equal < 10).float().mean().item()
    assert 0.45 < small < 0.55 and equal.min() >= 0 and equal.max() < 1010
    assert set((equal[equal < 10]).tolist()) == set(range(10))  # every small-domain user drawn
    prop = sample_rows(offsets, 4000, "proportional", gen)
    assert (prop < 10).float().mean().item() < 0.03
    with pytest.raises(ValueError, match="unknown domain sampling"):
        sample_rows(offsets, 4, "uniform", gen)
