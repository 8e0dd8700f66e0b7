"""The typed config: YAML + key=value overrides. Run: pytest tests/test_config.py"""
from __future__ import annotations

import pytest
import yaml

from distill.config import Config, TeacherConfig, load_config, write_resolved
from distill.errors import UserError


def write(tmp_path, text: str):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_precedence_cli_over_file_over_defaults(tmp_path):
    defaults = Config()
    p = write(tmp_path, "train:\n  lr: 1.0e-4\n  batch_size: 4\n")
    from_file = load_config(p)
    assert from_file.train.lr == 1e-4 and from_file.train.batch_size == 4
    assert from_file.train.epochs == defaults.train.epochs  # untouched key keeps its default
    both = load_config(p, ["train.lr=3e-4"])
    assert both.train.lr == 3e-4  # CLI wins over the file
    assert both.train.batch_size == 4  # file still wins over the default


def test_teacher_list_and_index_overrides(tmp_path):
    p = write(tmp_path, """
teachers:
  - {name: flan, backend: files, model: flan-t5-xl, alpha: 0.5}
  - {name: llama, backend: files, model: llama-2-7b}
""")
    cfg = load_config(p, ["teachers.1.alpha=2"])
    assert [t.name for t in cfg.teachers] == ["flan", "llama"]
    assert isinstance(cfg.teachers[0], TeacherConfig)
    assert cfg.teachers[0].alpha == 0.5 and cfg.teachers[1].alpha == 2.0
    assert load_config(p, ["teachers=[]"]).teachers == []  # the answer-only baseline is one override away


def test_unknown_key_names_key_file_and_suggests(tmp_path):
    p = write(tmp_path, "train:\n  lrr: 0.1\n")
    with pytest.raises(UserError) as e:
        load_config(p)
    msg = str(e.value)
    assert str(p) in msg and "'train.lrr'" in msg and "train.lr" in msg


def test_wrong_type_names_key_and_file(tmp_path):
    p = write(tmp_path, "train:\n  batch_size: lots\n")
    with pytest.raises(UserError, match=r"c\.yaml: 'train.batch_size' must be an integer, got 'lots'"):
        load_config(p)


def test_bad_override_is_named(tmp_path):
    with pytest.raises(UserError, match=r"override 'train.nope=1'.*unknown key 'train.nope'"):
        load_config(None, ["train.nope=1"])
    with pytest.raises(UserError, match="key=value"):
        load_config(None, ["train.lr"])
    with pytest.raises(UserError, match="not a valid index"):
        load_config(None, ["teachers.0.alpha=1"])


def test_missing_required_and_literal(tmp_path):
    p = write(tmp_path, "teachers:\n  - {backend: files}\n")
    with pytest.raises(UserError, match=r"missing the required key 'teachers.0.name'"):
        load_config(p)
    p = write(tmp_path, "teachers:\n  - {name: t, backend: ollama, model: x}\n")
    with pytest.raises(UserError, match=r"'teachers.0.backend' must be one of"):
        load_config(p)


def test_cross_field_validation(tmp_path):
    p = write(tmp_path, "teachers:\n  - {name: t, backend: openai, model: m}\n")
    with pytest.raises(UserError, match="base_url"):
        load_config(p)


def test_bad_yaml_names_line(tmp_path):
    p = write(tmp_path, "train:\n  lr: [1, 2\n")
    with pytest.raises(UserError, match=r"c\.yaml line \d+: not valid YAML"):
        load_config(p)


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(None, ["train.lr=2e-5", "data.max_train=10"])
    out = write_resolved(cfg, tmp_path / "out")
    again = load_config(out)
    assert again == cfg
    assert yaml.safe_load(out.read_text())["train"]["lr"] == 2e-5


def test_shipped_configs_load():
    from pathlib import Path

    configs = sorted((Path(__file__).parent.parent / "configs").rglob("*.yaml"))
    assert configs, "configs/ should ship at least one recipe"
    for c in configs:
        load_config(c)


def test_mapping_fields_take_per_key_overrides(tmp_path):
    cfg = load_config(None, ["export.min_top1_agreement.q4_k_m=0.7"])
    assert cfg.export.min_top1_agreement["q4_k_m"] == 0.7 and cfg.export.min_top1_agreement["q8_0"] == 0.94
    p = write(tmp_path, "export:\n  max_mean_kl: {q8_0: lots}\n")
    with pytest.raises(UserError, match=r"'export.max_mean_kl.q8_0' must be a number"):
        load_config(p)


def test_string_mapping_override():
    cfg = load_config(None, ["tracking.tags.cell=lora-answer", "tracking.tags.budget=2000"])
    assert cfg.tracking.tags == {"cell": "lora-answer", "budget": "2000"}


def test_per_quant_threshold_keys_are_checked_like_any_other_key(tmp_path):
    """A typo inside export.min_top1_agreement / export.max_mean_kl used to be added silently."""
    with pytest.raises(UserError, match=r"unknown key 'export.max_mean_kl.q4km'. Did you mean 'export.max_mean_kl.q4_k_m'"):
        load_config(None, ["export.max_mean_kl.q4km=0.1"])
    with pytest.raises(UserError, match=r"unknown key 'export.min_top1_agreement.q3'. Known keys: f16"):
        load_config(None, ["export.min_top1_agreement.q3=0.85"])
    f = tmp_path / "c.yaml"
    f.write_text("export:\n  min_top1_agreement: {q4_k_mm: 0.9}\n")
    with pytest.raises(UserError, match=rf"{f}: unknown key 'export.min_top1_agreement.q4_k_mm'"):
        load_config(f)
    assert load_config(None, ["export.min_top1_agreement.q4_1=0.5"]).export.min_top1_agreement["q4_1"] == 0.5
    assert load_config(None, ["tracking.tags.anything=1"]).tracking.tags["anything"] == "1"  # open mappings stay open


def test_the_known_quant_keys_are_the_quants_export_offers():
    from distill.config import QUANT_KEYS
    from export.gguf import QUANTS
    from export.onnx import WEIGHT_BITS

    assert set(QUANT_KEYS) == set(QUANTS) | set(WEIGHT_BITS)
