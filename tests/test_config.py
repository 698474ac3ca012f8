"""Configuration declared once: every field of every section is settable from YAML and reaches the
command that uses it unchanged, through the rules' own command lines."""

import dataclasses
import json
import shlex
from pathlib import Path

import jsonschema
import pytest
import yaml
from conftest import ROOT, snakemake

from a2d.cli import parser
from a2d.config import PER_SYSTEM, SECTIONS, SearchConfig, SystemSpec, schema
from a2d.plan import validate_config
from a2d.settings import ConfigError, default_of

TINY = ROOT / "tests" / "configs" / "tiny.yaml"
TINY_REAL = ROOT / "tests" / "configs" / "tiny_real.yaml"
# Where a generic new value cannot work with the shape around it (d_model must divide by heads).
SPECIAL = {("model", "heads"): 4, ("model", "d_model"): 32,
           # A2D factors: a value other than the default recipe's (its own value is the recipe's, unset)
           ("method", "attention_distribution"): "rows", ("method", "attention_reduction"): "channel_mean",
           ("method", "aam"): "normalised", ("method", "word_normaliser"): "target_tokens", ("method", "kd_loss"): "kl"}


def other_value(prop: dict, current):
    """A valid value different from `current`, from the field's own schema."""
    if "enum" in prop:
        return next(v for v in prop["enum"] if v != current)
    kind = prop.get("type") or next(o["type"] for o in prop["anyOf"] if o["type"] != "null")
    if kind == "boolean":
        return not current
    if kind == "integer":
        value = (current or 0) + 1
        return value if value <= prop.get("maximum", value) else current - 1
    if kind == "number":  # smaller, else larger, within the bounds
        valid = jsonschema.Draft202012Validator(prop).is_valid
        return next(v for v in (current / 2, current * 1.5) if valid(v)) if current else 0.25
    if kind == "array":
        return [item / 2 for item in current]
    raise AssertionError(f"no value rule for {prop}")


def changed_fields(name: str, current: dict):
    """(field, new value) for every YAML field of section `name`."""
    cls, _ = SECTIONS[name]
    defaults = {f.name: default_of(f) for f in dataclasses.fields(cls)}
    for field_name, prop in cls.schema()["properties"].items():
        base = current.get(field_name, defaults[field_name])
        value = SPECIAL[name, field_name] if (name, field_name) in SPECIAL else other_value(prop, base)
        jsonschema.validate(value, prop)
        yield field_name, value


def commands(workdir: Path, config: dict) -> list:
    """Every `python -m a2d` command of the planned DAG, parsed by the CLI itself."""
    workdir.mkdir()
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    output = snakemake(workdir, path, "--dry-run", "--printshellcmds", "--forceall")
    parsed = []
    for line in output.splitlines():
        if line.strip().startswith("Shell command: python -m a2d "):
            argv = shlex.split(line.split("python -m a2d ", 1)[1])
            parsed.append(parser().parse_args(argv[:argv.index("2>")]))
    assert parsed, output[-2000:]
    return parsed


def test_every_system_field_reaches_the_training_command(tmp_path):
    """One student per field of model, method and training, each with that one field changed."""
    config = yaml.safe_load(TINY.read_text())
    base = config["students"]["student_nokd"]
    config["students"], expected = {}, {}
    for name in PER_SYSTEM:
        current = {**config["training"], **base.get(name, {})} if name == "training" else base.get(name, {})
        for field_name, value in changed_fields(name, current):
            student = f"s_{name}_{field_name}"
            config["students"][student] = {**base, name: {**base.get(name, {}), field_name: value}}
            expected[student] = (name, field_name, value)
    trained = {}
    for args in commands(tmp_path / "w", config):
        if args.command == "train":
            spec = SystemSpec.from_json(args.spec)
            trained[spec.name] = spec
    for student, (name, field_name, value) in expected.items():
        spec = trained[student]
        section = spec.model_config(150) if name == "model" else getattr(spec, name)
        assert getattr(section, field_name) == value, (student, getattr(section, field_name))
    assert len(expected) == sum(len(SECTIONS[name][0].schema()["properties"]) for name in PER_SYSTEM)


def global_sections_changed(config: dict, names: list[str]) -> dict:
    """Every field of each named section changed at once; returns {section: {field: value}}."""
    expected = {}
    for name in names:
        _, path = SECTIONS[name]
        holder = config
        for key in path[:-1]:
            holder = holder.setdefault(key, {})
        current = holder.setdefault(path[-1], {})
        expected[name] = dict(changed_fields(name, current))
        current.update(expected[name])
    return expected


def test_every_experiment_wide_field_reaches_its_commands(tmp_path, monkeypatch):
    comet = tmp_path / "comet" / "checkpoints" / "model.ckpt"  # the config checks only that the files are there
    comet.parent.mkdir(parents=True)
    comet.touch()
    (tmp_path / "comet" / "hparams.yaml").touch()
    monkeypatch.setitem(SPECIAL, ("evaluation", "comet"), str(comet))
    config = yaml.safe_load(TINY.read_text())
    expected = global_sections_changed(config, ["decoding", "export", "evaluation", "sentencepiece", "synthetic"])
    received = {name: [] for name in expected}
    uses = {"translate": "decoding", "export": "export", "evaluate": "evaluation", "significance": "evaluation",
            "tables": "evaluation", "train-spm": "sentencepiece", "synthesize": "synthetic"}
    shards = 0
    for args in commands(tmp_path / "w", config):
        if args.command in uses:
            received[uses[args.command]].append(getattr(args, uses[args.command]))
        shards += args.command == "shard" and len(args.outputs)
    for name, fields in expected.items():
        assert received[name], f"no command received {name}"
        for section in received[name]:
            assert {f: getattr(section, f) for f in fields} == fields, name
    assert shards == config["seq_kd"]["shards"]  # seq_kd is the plan's: the number of shard jobs


def test_every_data_field_reaches_the_prepare_and_tables_commands(tmp_path):
    config = yaml.safe_load(TINY_REAL.read_text())
    expected = global_sections_changed(config, ["preprocess", "cleaning"])
    prepared, tabled = [], []
    for args in commands(tmp_path / "w", config):
        if args.command == "prepare":
            prepared.append(json.loads(args.spec))
        if args.command == "tables":
            tabled.append(args.cleaning)
    assert prepared and all(spec["preprocess"] == {**spec["preprocess"], **expected["preprocess"]} for spec in prepared)
    train = next(spec for spec in prepared if "cleaning" in spec)
    assert {f: train["cleaning"][f] for f in expected["cleaning"]} == expected["cleaning"]
    assert [dataclasses.asdict(c) for c in tabled] == [train["cleaning"]]


def test_the_schema_is_made_from_the_section_declarations():
    defs = schema()["$defs"]
    for name, (cls, _) in SECTIONS.items():
        yaml_fields = [f.name for f in dataclasses.fields(cls) if not f.metadata.get("derived")]
        assert list(defs[name]["properties"]) == yaml_fields
    assert defs["decoding"]["properties"]["min_len"] == {"type": "integer", "minimum": 1, "description": (
        "tokens before EOS at least (fairseq's --min-len); the length limit wins over it")}
    assert "vocab_size" not in defs["model"]["properties"]  # set from the subword model


@pytest.mark.parametrize("edit, message", [
    (lambda c: c["decoding"].update(min_len=0), r"at decoding.min_len: 0 is less than the minimum of 1"),
    (lambda c: c["decoding"].update(beam=4), r"at decoding: Additional properties are not allowed \('beam'"),
    (lambda c: c.update(export={"quantization": "int4"}), r"at export.quantization: 'int4' is not one of"),
    (lambda c: c["training"].update(adam_betas=[0.9, 1.0]), r"at training.adam_betas.1: 1.0 is greater than"),
])
def test_bad_values_are_named_by_their_key(edit, message):
    config = yaml.safe_load(TINY.read_text())
    edit(config)
    with pytest.raises(ConfigError, match=message):
        validate_config(config)


def test_a_section_is_checked_however_it_is_built():
    with pytest.raises(ValueError, match="beam_size: 0 is less than the minimum of 1"):
        SearchConfig(beam_size=0)
    with pytest.raises(ConfigError, match=r"--decoding: unknown key\(s\) beam; known: batch_size"):
        SearchConfig.from_json('{"beam": 2}', "--decoding")
    assert SearchConfig.from_json(SearchConfig(min_len=3).to_json(), "x") == SearchConfig(min_len=3)
    assert SearchConfig(min_len=3).to_json() == '{"min_len": 3}'  # only what differs from the defaults


def test_the_configuration_reference_is_current():
    from a2d.config import reference

    text = (ROOT / "docs" / "configuration.md").read_text()
    generated = text.split("<!-- generated: a2d.config.reference() -->\n")[1].split("<!-- end generated -->")[0]
    assert generated == reference(), "docs/configuration.md is out of date: regenerate it from a2d.config.reference()"
