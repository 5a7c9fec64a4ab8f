import pytest
import torch
import torch.nn.functional as F

from common.distill import (DistillConfig, DomainPseudoData, PseudoUserConfig, build_pseudo_users,
                            kmeans_nearest, learn_merge_weights, select_items, teacher_scores)
from common.distill.learn import sample_rows
from common.distill.losses import kd_loss
from common.merging import MergeConfig, build_merge, task_vectors
from common.model import ModelConfig, build_base_model, model_from_state


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


def test_distilled_residual_leaves_the_span_of_the_task_vectors_and_fits_the_teachers():
    """With ``residual_lr`` every weight is trained: the result is no longer θ₀ + Σ w·τ for the
    learned w, and it matches the teachers on the pseudo-users better than the weights alone."""
    cfg = ModelConfig(text_dim=16, hidden=8, item_hidden=8)
    base_model = build_base_model(cfg, 0)
    base = {k: v.clone() for k, v in base_model.state_dict().items()}
    gen = torch.Generator().manual_seed(1)
    finetuned = [{k: v + 0.3 * torch.randn(v.shape, generator=gen) for k, v in base.items()}
                 for _ in range(2)]
    pseudo = []
    for k, state in enumerate(finetuned):
        feats = _feats(30 + 5 * k)
        seqs = [[i] for i in range(len(feats))]
        pseudo.append(DomainPseudoData(f"d{k}", feats, seqs,
                                       teacher_scores(model_from_state(cfg, state), feats, seqs)))
    init = build_merge(MergeConfig("task_arithmetic", lam=0.5), base, finetuned)
    vectors = task_vectors(base, finetuned)

    def learn(residual_lr):
        return learn_merge_weights(build_base_model(cfg, 0), base, init, pseudo,
                                   DistillConfig(granularity="tensor", steps=60, lr=0.01,
                                                 item_table="differentiable",
                                                 residual_lr=residual_lr))

    def distance(state):
        total = 0.0
        for d in pseudo:
            student = teacher_scores(model_from_state(cfg, state), d.features, d.sequences)
            total += float(kd_loss(student.scores, d.teacher, 0.05))
        return total

    plain, distilled = learn(0.0), learn(0.01)
    for result in (plain, distilled):
        weights = {n: torch.tensor(w) for n, w in result.weights.items()}
        in_span = {n: base[n] + sum(w * tau[n] for w, tau in zip(weights[n], vectors))
                   for n in base}
        gap = max(float((result.state_dict[n] - in_span[n]).abs().max()) for n in base)
        assert (gap < 1e-5) == (result is plain), gap
    assert distance(distilled.state_dict) < distance(plain.state_dict)
