"""Config: presets, exact parameter counts on the meta device, strict keys, overrides, inheritance."""
from __future__ import annotations

import pytest

from lmforge.cli import main
from lmforge.config import load_config
from lmforge.errors import ConfigError
from lmforge.model.params import count_parameters, meta_model


def test_gqa_1b_has_exactly_the_seed_parameter_count():
    cfg = load_config("gqa-1b")
    model = meta_model(cfg.model)
    assert next(model.parameters()).is_meta  # counted without allocating 4 GB
    assert count_parameters(model) == 1_050_002_688


def test_llama_190m_count_with_untied_gpt2_vocab():
    assert count_parameters(meta_model(load_config("llama-190m").model)) == 190_460_160


def test_info_command_prints_exact_count(capsys):
    assert main(["info", "gqa-1b"]) == 0
    out = capsys.readouterr().out
    assert "1,050,002,688" in out and "14 / 2" in out


def test_unknown_key_names_it_and_suggests_the_closest(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('extends = "tiny"\n[train]\nlearning_rate = 1e-3\n')
    with pytest.raises(ConfigError, match=r"bad.toml.*unknown config key 'train.learning_rate'"):
        load_config(str(path))
    with pytest.raises(ConfigError, match=r"did you mean 'train.lr'"):
        load_config("tiny", ["train.lrr=3e-4"])
    with pytest.raises(ConfigError, match=r"did you mean 'model'"):
        load_config("tiny", ["modle.d_model=3"])


def test_type_and_choice_errors():
    with pytest.raises(ConfigError, match=r"'train.batch_size': expected int"):
        load_config("tiny", ['train.batch_size="eight"'])
    with pytest.raises(ConfigError, match=r"'model.mlp' = 'swiglo'.*did you mean 'swiglu'"):
        load_config("tiny", ['model.mlp="swiglo"'])
    with pytest.raises(ConfigError, match=r"n_heads=4 must be a multiple of model.n_kv_heads=3"):
        load_config("tiny", ["model.n_kv_heads=3"])
    with pytest.raises(ConfigError, match=r"no config file or preset named 'tiyn'; did you mean 'tiny'"):
        load_config("tiyn")


def test_overrides_and_extends(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('extends = "tiny"\nname = "mine"\n[model]\nd_model = 96\n')
    cfg = load_config(str(path), ["train.lr=1e-3", "model.tie_embeddings=false", 'data.sources=["a.txt"]'])
    assert cfg.name == "mine" and cfg.model.d_model == 96 and cfg.model.n_layers == 2  # inherited
    assert cfg.train.lr == 1e-3 and cfg.model.tie_embeddings is False and cfg.data.sources == ["a.txt"]


def test_resolved_config_round_trips_through_toml(tmp_path):
    cfg = load_config("gqa-1b", ["train.max_steps=7"])
    path = tmp_path / "config.toml"
    path.write_text(cfg.to_toml())
    assert load_config(str(path)).to_dict() == cfg.to_dict()


def test_invalid_toml_reports_the_file(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("[model\nd_model = 3\n")
    with pytest.raises(ConfigError, match=r"broken.toml: invalid TOML"):
        load_config(str(path))
