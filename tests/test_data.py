import tarfile

import pytest

from common.data import (DataError, SyntheticConfig, load_mergerec_json, load_recbole,
                         make_synthetic_domains)

from .conftest import write_domain


def test_load_folder(tiny_domain_dir):
    d = load_mergerec_json(tiny_domain_dir)
    assert d.num_items == 4 and d.num_users == 3
    assert d.item_texts[0] == "item A b c"
    hist, tgt = d.eval_examples("test")
    assert hist[1] == [2, 3, 0, 1] and tgt[1] == 2
    hist, tgt = d.eval_examples("val")
    assert hist[0] == [0, 1] and tgt[0] == 2
    assert d.item_popularity() == [2, 2, 2, 1]


def test_load_archive(tiny_domain_dir, tmp_path):
    archive = tmp_path / "Tiny.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tiny_domain_dir, arcname="Tiny")
    d = load_mergerec_json(archive, cache_dir=tmp_path / "cache")
    assert d.num_items == 4 and d.name == "Tiny"


@pytest.mark.parametrize("overrides, file, message", [
    ({"val.json": None}, "val.json", "required file is missing"),
    ({"train.json": "{not json"}, "train.json", "not valid JSON"),
    ({"train.json": {"0": [0, 9], "1": [2], "2": [1]}}, "train.json", "outside"),
    ({"test.json": {"0": [7], "1": [2], "2": [0]}}, "test.json", "outside"),
    ({"val.json": {"0": [2], "5": [1]}}, "val.json", "missing from train.json"),
    ({"meta_data.json": {k: {"title": "t"} for k in "ABC"}}, "meta_data.json", "has no metadata"),
    ({"meta_data.json": {**{k: {"title": "t"} for k in "ABC"}, "D": {"title": "", "brand": ""}}},
     "meta_data.json", "no text metadata"),
    ({"smap.json": {"A": 0, "B": 5}}, "smap.json", "contiguous"),
    ({"smap.json": {}, "meta_data.json": {}}, "meta_data.json", "no items"),
    ({"train.json": {}, "val.json": {}, "test.json": {}}, "train.json", "no users"),
])
def test_bad_input_names_file_and_problem(tmp_path, overrides, file, message):
    folder = write_domain(tmp_path / "Bad", **overrides)
    with pytest.raises(DataError) as err:
        load_mergerec_json(folder)
    assert file in str(err.value) and message in str(err.value)


def test_missing_folder(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_mergerec_json(tmp_path / "nope")


def _recbole(folder, inter_rows, item_rows):
    folder.mkdir()
    (folder / "shop.inter").write_text(
        "user_id:token\titem_id:token\ttimestamp:float\n" + "\n".join(inter_rows) + "\n")
    (folder / "shop.item").write_text("item_id:token\ttitle:token_seq\tbrand:token\n"
                                      + "\n".join(item_rows) + "\n")
    return folder


def test_recbole_chronological_leave_one_out(tmp_path):
    folder = _recbole(tmp_path / "shop",
                      ["u1\tx\t3", "u1\ty\t1", "u1\tz\t2", "u1\tw\t4", "u2\tx\t1", "u2\ty\t2"],
                      ["x\tred shoe\tacme", "y\tblue hat\tacme", "z\tgreen cap\tnova", "w\tsock\tnova"])
    d = load_recbole(folder, min_len=3)
    assert d.user_ids == ["u1"]  # u2 has only 2 interactions
    keys = d.item_keys
    # u1 by time: y(1) z(2) x(3) w(4) -> train [y, z], val x, test w
    assert [keys[i] for i in d.train[0]] == ["y", "z"]
    assert keys[d.val[0]] == "x" and keys[d.test[0]] == "w"
    assert d.item_texts[keys.index("x")] == "red shoe acme"


def test_recbole_errors(tmp_path):
    folder = _recbole(tmp_path / "shop", ["u1\tx\t1", "u1\tq\t2", "u1\tx\t3"], ["x\tred\tacme"])
    with pytest.raises(DataError, match="shop.item.*no metadata"):
        load_recbole(folder)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "bad.inter").write_text("user_id:token\titem_id:token\n")
    (bad / "bad.item").write_text("item_id:token\ttitle:token_seq\n")
    with pytest.raises(DataError, match="timestamp"):
        load_recbole(bad)


def test_synthetic_is_deterministic_and_valid():
    cfg = SyntheticConfig(items_per_domain=60, users_per_domain=50, seed=4)
    a, b = make_synthetic_domains(cfg), make_synthetic_domains(cfg)
    assert [d.name for d in a] == ["beauty", "sports", "pantry"]
    assert a[0].train == b[0].train and a[1].item_texts == b[1].item_texts
    c = make_synthetic_domains(SyntheticConfig(items_per_domain=60, users_per_domain=50, seed=5))
    assert c[0].train != a[0].train
    with pytest.raises(ValueError, match="unknown synthetic domain"):
        make_synthetic_domains(SyntheticConfig(domains=("cars",)))


def test_subsample_keeps_users_and_only_their_items():
    from common.data import subsample_users, validate_domain

    full = make_synthetic_domains(SyntheticConfig(domains=("beauty",), users_per_domain=80))[0]
    small = subsample_users(full, 20, seed=3)
    assert small.num_users == 20 and small.num_items < full.num_items
    assert small == subsample_users(full, 20, seed=3)  # depends on the seed only
    validate_domain(small)
    for u, uid in enumerate(small.user_ids):  # same interactions, as item texts
        orig = full.user_ids.index(uid)
        assert [small.item_texts[i] for i in small.train[u]] == \
            [full.item_texts[i] for i in full.train[orig]]
        assert small.item_texts[small.test[u]] == full.item_texts[full.test[orig]]
    assert subsample_users(full, 500) is full
    with pytest.raises(DataError, match="max_users"):
        subsample_users(full, 0)
