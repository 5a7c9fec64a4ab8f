"""Real Amazon domain from ../shared/data/amazon (skipped only when that folder is absent)."""

import pytest
import torch

from common.evaluation import EvalConfig, evaluate_model, evaluate_popularity
from common.data import Domain, load_mergerec_json
from common.model import ModelConfig, build_base_model
from common.text import item_features, make_encoder
from common.training import TrainConfig, fine_tune


@pytest.fixture(scope="module")
def pantry(amazon_dir, tmp_path_factory) -> Domain:
    return load_mergerec_json(amazon_dir / "Pantry.tar.gz",
                              cache_dir=tmp_path_factory.mktemp("data"))


def test_pantry_statistics(pantry):
    assert (pantry.num_items, pantry.num_users) == (4968, 14180)
    assert sum(v is not None for v in pantry.test) == 14178  # two users lack val/test
    assert pantry.item_texts[0].strip()


def test_minilm_encodes_real_titles_offline(pantry):
    enc = make_encoder("minilm")
    vecs = enc.encode(pantry.item_texts[:64])
    assert vecs.shape == (64, 384)
    assert torch.allclose(vecs.norm(dim=1), torch.ones(64), atol=1e-4)
    # near-duplicate titles are closer than unrelated ones
    sims = vecs @ vecs.T
    assert float(sims.fill_diagonal_(0).max()) > 0.5


def _subset(domain: Domain, users: int) -> Domain:
    return Domain(domain.name, domain.item_texts, domain.user_ids[:users], domain.train[:users],
                  domain.val[:users], domain.test[:users], domain.source, domain.item_keys)


def test_real_domain_train_and_evaluate(pantry, tmp_path):
    dom = _subset(pantry, 2000)
    feats = item_features(dom, make_encoder("hashing-128"), tmp_path)
    model = build_base_model(ModelConfig(text_dim=128, hidden=32, layers=1, max_len=20), 0)
    cfg = EvalConfig(ks=(10, 50))
    before = evaluate_model(model, dom, feats, cfg).metrics
    result = fine_tune(model, [dom], [feats], TrainConfig(epochs=2, batch_size=128))
    after = evaluate_model(model, dom, feats, cfg).metrics
    for m in (before, after, evaluate_popularity(dom, cfg).metrics):
        assert all(0.0 <= v <= 1.0 for v in m.values())
    losses = [h["loss"] for h in result.history[1:]]
    assert len(losses) >= 1 and all(l == l for l in losses)  # finite, logged per epoch
    assert after["recall@50"] > 0.0


def test_real_domain_subsample_from_the_run_config(amazon_dir, tmp_path):
    from common.data import validate_domain
    from common.experiment import load_source
    from common.settings import DomainSource

    src = DomainSource("Pantry", path=str(amazon_dir / "Pantry.tar.gz"), max_users=300)
    small = load_source(src, tmp_path)
    assert small.num_users == 300 and 300 < small.num_items < 4968
    validate_domain(small)
    assert small.num_items == load_source(src, tmp_path).num_items  # same sample every time
