import math

import pytest
import torch

from common.evaluation import metrics_from_ranks, ndcg_single, target_ranks


def test_target_ranks_by_hand():
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.3],
                           [0.4, 0.4, 0.4, 0.0],
                           [0.2, 0.1, 0.0, -1.0]])
    targets = torch.tensor([2, 1, 3])
    # row 0: only item 1 scores higher -> rank 1; row 1: tie with item 0 (lower index) -> 1;
    # row 2: three items above -> 3
    assert target_ranks(scores, targets).tolist() == [1, 1, 3]


def test_metrics_by_hand():
    ranks = torch.tensor([0, 1, 4, 12])
    m = metrics_from_ranks(ranks, (1, 5, 10))
    assert m["recall@1"] == 0.25
    assert m["recall@5"] == 0.75
    assert m["recall@10"] == 0.75
    expected_ndcg5 = (1.0 + 1 / math.log2(3) + 1 / math.log2(6)) / 4
    assert math.isclose(m["ndcg@5"], expected_ndcg5, rel_tol=1e-12)
    assert math.isclose(m["mrr"], (1 + 1 / 2 + 1 / 5 + 1 / 13) / 4, rel_tol=1e-12)
    assert ndcg_single(0, 10) == 1.0 and ndcg_single(10, 10) == 0.0


def test_target_ranks_match_a_stable_sort_with_many_ties():
    gen = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 4, (64, 30), generator=gen).float()  # ties everywhere
    targets = torch.randint(0, 30, (64,), generator=gen)
    order = torch.sort(-scores, dim=1, stable=True).indices  # lower index first among ties
    expected = (order == targets[:, None]).float().argmax(1)
    assert target_ranks(scores, targets).tolist() == expected.tolist()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_target_ranks_paths_agree_with_a_stable_sort(dtype):
    """The fp32 sign-count path (in place or on a copy) and the comparison path (other
    dtypes) rank alike, ties and -inf (masked history, also a masked target) included."""
    gen = torch.Generator().manual_seed(1)
    scores = torch.randint(0, 40, (200, 57), generator=gen).to(dtype) / 7
    scores[torch.rand(200, 57, generator=gen) < 0.1] = float("-inf")
    targets = torch.randint(0, 57, (200,), generator=gen)
    scores[:5, :] = float("-inf")  # a row where the target ties with every item
    order = torch.sort(-scores, dim=1, stable=True).indices
    expected = (order == targets[:, None]).float().argmax(1).tolist()
    kept = scores.clone()
    assert target_ranks(scores, targets).tolist() == expected
    assert torch.equal(scores, kept)  # not in place unless asked
    assert target_ranks(scores, targets, inplace=True).tolist() == expected
