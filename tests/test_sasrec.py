"""The ID-based SASRec reference: it learns a planted sequential rule and beats popularity."""

import numpy as np
import torch

from common.data import Domain, SyntheticConfig, make_synthetic_domains
from common.evaluation import EvalConfig, evaluate_popularity
from common.model.sasrec import SASRec, SASRecConfig
from common.training.id_baseline import evaluate_sasrec, train_sasrec

SMALL = dict(hidden=32, heads=1, max_len=10, dropout=0.1, batch_size=64, lr=3e-3, patience=3)


def successor_domain(items: int = 40, users: int = 300, length: int = 7, seed: int = 0) -> Domain:
    """Every user walks i → i+1 (mod ``items``) from a random start: the next item is fully
    determined by the last one, which popularity and item text cannot know."""
    rng = np.random.default_rng(seed)
    train, val, test = [], [], []
    for _ in range(users):
        start = int(rng.integers(items))
        seq = [(start + t) % items for t in range(length)]
        train.append(seq[:-2])
        val.append(seq[-2])
        test.append(seq[-1])
    return Domain("successor", [f"item {i}" for i in range(items)],
                  [f"u{u}" for u in range(users)], train, val, test)


def test_sasrec_learns_the_planted_successor_rule():
    domain = successor_domain()
    model, result = train_sasrec(domain, SASRecConfig(epochs=30, **SMALL))
    test = evaluate_sasrec(model, domain, EvalConfig(split="test", ks=(1, 10))).metrics
    assert test["recall@1"] > 0.95, test
    assert result.best_val_ndcg10 > 0.95
    assert evaluate_popularity(domain, EvalConfig(ks=(1,))).metrics["recall@1"] < 0.1


def test_sasrec_beats_popularity_on_the_synthetic_default():
    domain = make_synthetic_domains(SyntheticConfig(domains=("beauty",)))[0]
    model, _ = train_sasrec(domain, SASRecConfig(epochs=15, **SMALL))
    ours = evaluate_sasrec(model, domain, EvalConfig(ks=(10,))).metrics["recall@10"]
    pop = evaluate_popularity(domain, EvalConfig(ks=(10,))).metrics["recall@10"]
    assert ours > 1.5 * pop, (ours, pop)


def test_sasrec_scores_depend_only_on_the_real_items():
    """Padding comes after the real items, so causal attention never reads it."""
    torch.manual_seed(0)
    model = SASRec(SASRecConfig(**SMALL), num_items=20).eval()
    short = torch.tensor([[3, 4, 5]])
    padded = torch.tensor([[3, 4, 5, 0, 0, 9]])
    with torch.no_grad():
        a = model.score_sequences(short, torch.tensor([3]))
        b = model.score_sequences(padded, torch.tensor([3]))
    assert torch.allclose(a, b, atol=1e-6)
