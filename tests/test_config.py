from pathlib import Path

import pytest
import yaml

from a2d.config import ConfigError, SystemSpec, load_config, system_spec, validate_config

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = sorted(ROOT.glob("config/**/*.yaml")) + sorted(ROOT.glob("tests/configs/*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_config_in_the_repository_loads(path):
    config = load_config(path)
    spec = system_spec(config, "teacher")
    assert SystemSpec.from_json(spec.to_json()) == spec


def default_config():
    return yaml.safe_load((ROOT / "config" / "config.yaml").read_text())


def test_unknown_key_is_an_error_naming_its_place():
    config = default_config()
    config["students"]["student_a2d"]["method"]["betta"] = 1.0
    with pytest.raises(ConfigError, match="students.student_a2d.method"):
        validate_config(config)


def test_impossible_shape_fails_at_config_time():
    config = default_config()
    config["students"]["student_nokd"]["model"]["heads"] = 3  # 64 is not divisible by 3
    with pytest.raises(ConfigError, match="student_nokd.model: d_model 64 is not divisible by heads 3"):
        validate_config(config)


def test_teacher_cannot_be_distilled():
    config = default_config()
    config["teacher"]["method"] = {"name": "a2d"}
    with pytest.raises(ConfigError, match="teacher"):
        validate_config(config)


def test_system_training_overrides_shared_defaults():
    config = default_config()
    config["students"]["student_nokd"]["training"] = {"lr": 0.01}
    assert system_spec(config, "student_nokd").training.lr == 0.01
    assert system_spec(config, "student_a2d").training.lr == config["training"]["lr"]


def test_spec_json_holds_only_non_defaults():
    """A new option with a default must not change existing specs (Snakemake params, run digests)."""
    import json

    spec = system_spec(default_config(), "student_a2d")
    stored = json.loads(spec.to_json())
    assert "relation_heads" not in stored["method"] and stored["method"]["name"] == "a2d"
    assert SystemSpec.from_json(spec.to_json()) == spec


def test_more_seq_kd_shards_than_training_pairs_fails_at_config_time():
    config = default_config()
    config["seq_kd"] = {"shards": config["corpus"]["synthetic"]["train"] + 1}
    with pytest.raises(ConfigError, match="seq_kd.shards"):
        validate_config(config)
