import json
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "amazon"


def write_domain(folder: Path, **overrides) -> Path:
    """A tiny valid MergeRec-JSON domain; ``overrides`` replace whole files."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "smap.json": {"A": 0, "B": 1, "C": 2, "D": 3},
        "meta_data.json": {k: {"title": f"item {k}", "brand": "b", "category": "c"} for k in "ABCD"},
        "train.json": {"0": [0, 1], "1": [2, 3, 0], "2": [1, 2]},
        "val.json": {"0": [2], "1": [1], "2": [3]},
        "test.json": {"0": [3], "1": [2], "2": [0]},
        "umap.json": {"u0": 0, "u1": 1, "u2": 2},
    }
    files.update(overrides)
    for name, content in files.items():
        if content is None:
            continue
        (folder / name).write_text(json.dumps(content) if not isinstance(content, str) else content)
    return folder


def print_tally(title: str, tried: list[tuple[str, bool]]) -> None:
    """Print what a module tried and how each went (docs/threat-model.md quotes the counts);
    fail unless every case was handled cleanly."""
    handled = sum(ok for _, ok in tried)
    print(f"\n{title}: {len(tried)} tried, {handled} handled cleanly")
    for case, ok in tried:
        print(f"  {'ok ' if ok else 'BAD'} {case}")
    assert handled == len(tried)


@pytest.fixture
def tiny_domain_dir(tmp_path: Path) -> Path:
    return write_domain(tmp_path / "Tiny")


@pytest.fixture(scope="session")
def amazon_dir() -> Path:
    if not (SHARED / "Pantry.tar.gz").is_file():
        pytest.skip(f"real data not found at {SHARED} (the shared/ folder beside the checkout)")
    return SHARED


@pytest.fixture(scope="session")
def tiny_encoder_dir(tmp_path_factory) -> Path:
    """A randomly initialised 2-layer BERT (width 32) with MiniLM's tokenizer, built locally
    (no download): the full-encoder code path at test size."""
    import shutil

    import torch
    from transformers import BertConfig, BertModel

    from common.text import minilm_path

    folder = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=64, max_position_embeddings=128)
    BertModel(config).save_pretrained(folder)
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(minilm_path() / name, folder / name)
    return folder
