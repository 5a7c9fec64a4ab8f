import pytest

from common.config import ConfigError, from_dict, load_yaml
from common.pipeline import PipelineConfig


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
    ("model: [1, 2]\n", "model: expected a mapping"),
    ("a: [\n", "invalid YAML"),
])
def test_bad_config_names_file_and_key(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_yaml(PipelineConfig, path)
    assert str(path) in str(err.value) and message in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_yaml(PipelineConfig, tmp_path / "none.yaml")


def test_from_dict_defaults():
    assert from_dict(PipelineConfig, {}).encoder == PipelineConfig().encoder
