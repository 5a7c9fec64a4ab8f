import subprocess
import sys
from pathlib import Path

import pytest

from common.config import ConfigError, from_dict, load_yaml, with_overrides
from common.settings import PipelineConfig

ROOT = Path(__file__).resolve().parents[1]


def test_yaml_roundtrip(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("encoder: hashing-64\nmodel: {hidden: 16}\nmerges:\n  - {method: ties, density: 0.3}\n"
                    "learned:\n  - name: x\n    distill: {granularity: layer, loss: {kd_weight: 5}}\n")
    cfg = load_yaml(PipelineConfig, path)
    assert cfg.model.hidden == 16 and cfg.merges[0].density == 0.3
    assert cfg.learned[0].distill.granularity == "layer" and cfg.learned[0].distill.loss.kd_weight == 5.0


@pytest.mark.parametrize("text, message", [
    ("modle: {}\n", "unknown key(s) ['modle']"),
    ("model: {hidden: many}\n", "model.hidden: expected an integer"),
    ("learned:\n  - name: x\n    distill: {granularity: diagonal}\n", "not one of"),
    ("eval: {split: train}\n", "eval.split"),
    ("learned:\n  - name: x\n    distill: {residual_lr: -0.1}\n", "residual_lr must be a finite number >= 0"),
    # settings that guard something cannot be switched off by a typo (issue 34)
    ("federation: {update_norm_limit: .inf}\n", "update_norm_limit must be a finite number >= 2"),
    ("federation: {update_norm_limit: .nan}\n", "update_norm_limit"),
    ("federation: {update_norm_limit: 1}\n", "below 2 refuses honest silos"),
    ("federation: {teacher_check_rows: -5}\n", "teacher_check_rows must be a finite number >= 0"),
    ("federation: {teacher_tolerance: -1}\n", "teacher_tolerance"),
    ("federation: {teacher_tolerance: .inf}\n", "teacher_tolerance"),
    ("federation: {min_silos: 0}\n", "min_silos"),
    ("federation: {query_budget: -1}\n", "query_budget"),
    ("federation: {max_query_rows: 0}\n", "max_query_rows"),
    ("federation: {max_catalogue_items: -3}\n", "max_catalogue_items"),
    ("federation: {eval_timeout_s: 0}\n", "eval_timeout_s"),
    ("federation: {query_timeout_s: .inf}\n", "query_timeout_s"),
    ("train: {dp: {epsilon: 0}}\n", "epsilon must be a finite number > 0"),
    ("train: {dp: {epsilon: .inf}}\n", "epsilon"),
    ("train: {dp: {epsilon: 8, delta: 1.5}}\n", "delta"),
    ("train: {dp: {epsilon: 8, clip_norm: -1}}\n", "clip_norm"),
    ("train: {dp: {epsilon: 8, noise_multiplier: -0.5}}\n", "noise_multiplier"),
    ("train: {lr: .nan}\n", "train: lr must be a finite number > 0"),
    ("train: {epochs: 0}\n", "epochs"),
    ("train: {batch_size: -32}\n", "batch_size"),
    ("eval: {ks: [10, 0]}\n", "ks must be"),
    ("eval: {max_users: 0}\n", "max_users"),
    ("model: {temperature: 0}\n", "temperature"),
    ("model: {dropout: 1.5}\n", "dropout"),
    ("model: {serving: {whiten: 2}}\n", "serving.whiten"),
    ("new_domain: {whiten: [0.5, 3]}\n", "new_domain.whiten"),
    ("merges: [{method: ties, grid: {lam: [.inf]}}]\n", "grid lam"),
    ("merges: [{method: average, grid: {lam: [0.5]}}]\n", "not a tunable hyper-parameter"),
    ("model: [1, 2]\n", "model: expected a mapping"),
    ("train: {lr: 1e-3x}\n", "train.lr: expected a number"),
    ("a: [\n", "invalid YAML"),
])
def test_bad_config_names_file_and_key(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_yaml(PipelineConfig, path)
    assert str(path) in str(err.value) and message in str(err.value)


def test_bad_bytes_and_silo_policies_name_file_and_key(tmp_path):
    path = tmp_path / "garbage.yaml"
    path.write_bytes(b"model: {hidden: 64}\n\xff\xfe\x00junk")
    with pytest.raises(ConfigError, match="garbage.yaml: not UTF-8 text"):
        load_yaml(PipelineConfig, path)
    from common.federated.silo import policy_from
    for key, value in (("max_rows_per_message", 0), ("metric_epsilon", float("inf")),
                       ("validation_max_users", 0), ("min_users", 0), ("query_budget", -1)):
        with pytest.raises(ConfigError, match=f"node config: {key} must be a finite number"):
            policy_from({key: value}, "node config")


def test_exponent_floats_read_as_numbers(tmp_path):
    """PyYAML (YAML 1.1) reads ``1e-3`` and ``1e-12`` as strings; the loader reads YAML 1.2's
    floats."""
    path = tmp_path / "run.yaml"
    path.write_text("train: {lr: 3e-4}\nmodel: {text_eps: 1e-12}\n"
                    "federation: {silo_train: {beauty: {lr: 1e-4}}}\n")
    cfg = load_yaml(PipelineConfig, path)
    assert cfg.train.lr == 3e-4 and cfg.model.text_eps == 1e-12
    assert cfg.federation.silo_train["beauty"]["lr"] == 1e-4  # untyped mappings too
    with pytest.raises(ConfigError, match="model.hidden: expected an integer"):
        from_dict(PipelineConfig, {"model": {"hidden": "1e2"}})


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_yaml(PipelineConfig, tmp_path / "none.yaml")


def test_from_dict_defaults():
    assert from_dict(PipelineConfig, {}).encoder == PipelineConfig().encoder


def test_extends_merges_over_the_named_file(tmp_path):
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "ref.yaml").write_text(
        "encoder: hashing-64\nmodel: {hidden: 16, layers: 3}\nmerges:\n  - {method: ties}\n  - {method: dare}\n")
    (tmp_path / "mid.yaml").write_text("extends: base/ref.yaml\nmodel: {hidden: 32}\nseed: 4\n")
    (tmp_path / "top.yaml").write_text("extends: mid.yaml\nmerges:\n  - {method: pcb}\n")
    cfg = load_yaml(PipelineConfig, tmp_path / "top.yaml")
    assert (cfg.encoder, cfg.model.hidden, cfg.model.layers, cfg.seed) == ("hashing-64", 32, 3, 4)
    assert [m.method for m in cfg.merges] == ["pcb"]  # lists are replaced, not appended


def test_a_variant_appends_a_source_with_a_plus_key(tmp_path):
    (tmp_path / "base.yaml").write_text(
        "data:\n  sources:\n    - {name: Beauty, path: Beauty.tar.gz}\n    - {name: Sports, path: Sports.tar.gz}\n")
    (tmp_path / "four.yaml").write_text(
        "extends: base.yaml\ndata:\n  sources+:\n    - {name: Toys, path: /elsewhere/Toys}\n")
    cfg = load_yaml(PipelineConfig, tmp_path / "four.yaml")
    assert [(s.name, s.path) for s in cfg.data.sources] == [
        ("Beauty", "Beauty.tar.gz"), ("Sports", "Sports.tar.gz"), ("Toys", "/elsewhere/Toys")]


def test_plus_keys_append_in_every_merge():
    from common.config import deep_merge

    base = {"data": {"sources": [{"name": "A"}]}, "seed": 0}
    assert deep_merge(base, {"data": {"sources+": [{"name": "B"}]}})["data"]["sources"] == [
        {"name": "A"}, {"name": "B"}]
    with pytest.raises(ConfigError, match="'seed\\+' appends a list to an inherited list"):
        deep_merge(base, {"seed+": [1]})


@pytest.mark.parametrize("files, message", [
    ({"a.yaml": "data: {sources+: [{name: X}]}\n"}, "a.yaml: 'data.sources+' appends a list"),
    ({"a.yaml": "extends: b.yaml\ndata: {sources+: {name: X}}\n", "b.yaml": "seed: 1\n"},
     "a.yaml: 'data.sources+' appends a list"),
    ({"a.yaml": "extends: b.yaml\nmerges: []\nmerges+: [{method: ties}]\n", "b.yaml": "seed: 1\n"},
     "'merges+' appends a list"),
    ({"a.yaml": "extends: missing.yaml\n"}, "missing.yaml: config file not found"),
    ({"a.yaml": "extends: b.yaml\n", "b.yaml": "extends: a.yaml\n"}, "a.yaml -> b.yaml -> a.yaml"),
    ({"a.yaml": "extends: [b.yaml]\n"}, "'extends' must name a YAML file"),
    ({"a.yaml": "extends: b.yaml\n", "b.yaml": "- 1\n"}, "b.yaml: expected a mapping (extended by"),
])
def test_bad_extends_names_the_file(tmp_path, files, message):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(ConfigError) as err:
        load_yaml(PipelineConfig, tmp_path / "a.yaml")
    assert message in str(err.value)


def test_with_overrides_type_checks_and_keeps_the_rest():
    from common.training import TrainConfig

    base = TrainConfig(epochs=4, batch_size=256)
    assert with_overrides(base, {"batch_size": 32}, "x") == TrainConfig(epochs=4, batch_size=32)
    assert base.batch_size == 256
    with pytest.raises(ConfigError, match="silo A: train.batch_size: expected an integer"):
        with_overrides(base, {"batch_size": "big"}, "silo A: train")


def test_configs_load_without_torch():
    """Reading and checking a run's configuration imports neither torch, numpy nor Flower:
    a config error surfaces in a second, before any of them is loaded."""
    script = (
        "import sys, pathlib\n"
        "from common.config import load_yaml\n"
        "from common.settings import PipelineConfig\n"
        "paths = sorted(pathlib.Path('experiments/configs/pipelines').glob('*.yaml'))\n"
        "for p in paths: load_yaml(PipelineConfig, p)\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'numpy', 'flwr'})\n"
        "print(len(paths), heavy)\n")
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout.split()
    assert int(out[0]) >= 5 and out[1:] == ["[]"]
