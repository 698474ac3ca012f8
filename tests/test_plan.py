import json
from pathlib import Path

import pytest
import yaml

from a2d.config import SystemSpec
from a2d.plan import (
    base_name,
    baselines,
    held_out,
    load_config,
    results_name,
    split_datasets,
    split_spec,
    system_spec,
    systems,
    validate_config,
)
from a2d.settings import ConfigError

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = sorted(p for p in ROOT.glob("config/**/*.yaml") if p.name not in ("datasets.yaml", "smoke.yaml")) + sorted(ROOT.glob("tests/configs/*.yaml"))


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


def test_mixed_precision_without_zero_fails_at_config_time():
    config = default_config()
    config["training"].update(precision="bf16", zero_stage=0)
    with pytest.raises(ConfigError, match="precision bf16 needs zero_stage 1 or more"):
        validate_config(config)
    config["training"]["zero_stage"] = 3
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


def real_config():
    return yaml.safe_load((ROOT / "config" / "experiments" / "wmt22_de_dsb_cpu.yaml").read_text())


@pytest.mark.parametrize("edit, message", [
    (lambda c: c["data"]["train"].append("wmt22_de_dsb/nope"), r"data.train: unknown dataset 'wmt22_de_dsb/nope'"),
    (lambda c: c["data"].update(target="en"), r"data.train: dataset 'wmt22_de_dsb/train' has no en side"),
    (lambda c: c["data"]["test"].update(valid=["wmt22_de_dsb/valid2022"]), r"data.test: 'valid' is a reserved"),
    (lambda c: c["data"]["cleaning"].update(max_ratio=0.5), r"at data.cleaning.max_ratio"),
    (lambda c: c.update(datasets={"mine": {"xx": {"sha256": "abc"}}}), r"at datasets.mine.xx.sha256: .abc. does not match"),
    (lambda c: c.update(corpus={"synthetic": {"seed": 1, "train": 1, "valid": 1, "test": 1}}), r"is valid under each"),
])
def test_data_section_errors_name_their_place(edit, message):
    config = real_config()
    edit(config)
    with pytest.raises(ConfigError, match=message):
        validate_config(config)


def test_a_users_own_files_need_no_code(tmp_path):
    config = real_config()
    config["datasets"] = {"mine/train": {"de": {"path": "/data/train.de"}, "dsb": {"path": "/data/train.dsb"}}}
    config["data"]["train"] = ["mine/train"]
    validate_config(config)


def test_seeds_train_every_student_once_per_seed_and_the_teacher_once():

    config = real_config()
    config["students"] = {name: config["students"][name] for name in ("student_nokd", "student_word_kd", "student_a2d_corrected")}
    config["seeds"] = [3, 7]
    assert systems(config) == ["teacher", "student_nokd_seed3", "student_nokd_seed7", "student_word_kd_seed3",
                               "student_word_kd_seed7", "student_a2d_corrected_seed3", "student_a2d_corrected_seed7"]
    assert system_spec(config, "student_a2d_corrected_seed7").training.seed == 7
    assert system_spec(config, "teacher").training.seed == config["training"]["seed"]
    assert base_name("student_a2d_corrected_seed7") == "student_a2d_corrected" and base_name("teacher") == "teacher"
    assert baselines(config) == {"student_nokd": "none", "student_word_kd": "word_kd"}
    config["seeds"] = [5]  # one seed: names unchanged, that seed used
    assert systems(config)[1] == "student_nokd" and system_spec(config, "student_nokd").training.seed == 5


def tiny_real_config() -> dict:
    return yaml.safe_load((ROOT / "tests" / "configs" / "tiny_real.yaml").read_text())


def test_held_out_splits_and_their_spec():
    config = tiny_real_config()
    europarl = ["wmt14/europarl_v7_smoke_test"]
    config["data"].update(valid={"held_out": 50}, test={"mine": {"held_out": 30}, "europarl_test": europarl})
    validate_config(config)
    assert held_out(config) == [("valid", 50), ("mine", 30)]
    assert split_datasets(config, "valid") == [] and split_datasets(config, "europarl_test") == europarl
    spec = json.loads(split_spec(config, "train"))
    assert spec["held_out"] == [["valid", 50], ["mine", 30]] and spec["held_out_seed"] == 1
    assert "held_out" not in json.loads(split_spec(tiny_real_config(), "train"))  # existing experiments keep their spec
    config["data"]["valid"] = {"held_out": 0}
    with pytest.raises(ConfigError, match="at data.valid"):
        validate_config(config)


def test_a_smoke_run_caps_steps_data_and_seeds_and_has_its_own_results():
    config = {**tiny_real_config(), **yaml.safe_load((ROOT / "config" / "smoke.yaml").read_text())}
    validate_config(config)
    smoke = config["smoke"]
    assert results_name(config) == "tiny_real-smoke" and results_name(tiny_real_config()) == "tiny_real"
    assert systems(config) == ["teacher", "student_nokd", "student_word_kd", "student_a2d"]  # first seed only
    training = system_spec(config, "student_a2d").training
    assert (training.max_steps, training.max_epochs, training.seed) == (smoke["max_steps"], smoke["max_steps"], 1)
    assert json.loads(split_spec(config, "train"))["max_lines"] == smoke["lines"]
    assert json.loads(split_spec(config, "europarl_test"))["max_lines"] == smoke["eval_lines"]
    config["data"]["valid"] = {"held_out": 1000}
    assert held_out(config) == [("valid", smoke["eval_lines"])]
