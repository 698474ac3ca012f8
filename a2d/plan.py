"""The experiment plan that Snakemake runs: the config loaded and checked as a whole, the systems
(each student once per seed), the splits and what decides each, the baselines of the significance
tests. The settings themselves are typed in `a2d.config`."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import yaml

from a2d.config import PER_SYSTEM, SECTIONS, MethodConfig, SystemSpec, TrainingConfig, schema, section
from a2d.datasets import registry
from a2d.files import InputError
from a2d.settings import ConfigError

RESERVED_SPLITS = ("train", "valid", "train_seq_kd")
SEED_SUFFIX = "_seed"  # with several `seeds`, student <name> is trained as <name>_seed<N> for each


def load_config(path: str | Path) -> dict:
    with open(path, encoding="utf-8") as f:
        config = yaml.safe_load(f)
    validate_config(config, str(path))
    return config


def config_source(configfiles: list, overrides: dict) -> str:
    """How errors name an experiment given to Snakemake: its config file(s), and any --config keys."""
    where = ", ".join(map(str, configfiles)) or "config"
    return f"{where} with --config {' '.join(sorted(overrides))}" if overrides else where


def validate_config(config: dict, where: str = "config") -> None:
    """Schema check, then build every section and system spec so that bad values fail now. Errors
    name `where` (the config file) and the key path."""
    try:
        check_config(config)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None


def check_config(config: dict) -> None:
    try:
        jsonschema.validate(config, schema())
    except jsonschema.ValidationError as err:
        location = ".".join(str(p) for p in err.absolute_path) or "(top level)"
        raise ConfigError(f"at {location}: {err.message}") from None
    for name, (_, path) in SECTIONS.items():
        if name not in PER_SYSTEM and path[0] in config:
            section(config, name)
    check_systems(config)
    if "data" in config:
        check_data(config)


def check_systems(config: dict) -> None:
    """Every system builds, fits the teacher, and the teacher is trained without distillation."""
    vocab = config["sentencepiece"]["vocab_size"]
    teacher = system_spec(config, "teacher")
    teacher_shape = teacher.model_config(vocab, where="teacher.model")
    for name in systems(config):
        spec = system_spec(config, name)
        shape = spec.model_config(vocab, where=f"{spec_key(name)}.model")
        try:
            spec.method.check_fits(shape, teacher_shape)
        except ValueError as err:
            raise ConfigError(f"{spec_key(name)}.method: {spec.method.name}: {err}") from None
    if teacher.method.needs_teacher or teacher.targets != "reference":
        raise ConfigError("teacher: the teacher is trained on the references without distillation")
    shards = section(config, "seq_kd").shards
    if "corpus" in config and shards > config["corpus"]["synthetic"]["train"]:
        raise ConfigError(f"seq_kd.shards: {shards} exceeds the {config['corpus']['synthetic']['train']} "
                          "training pairs it would split")


def check_data(config: dict) -> None:
    """Every named dataset is in the registry and holds both languages of the experiment."""
    data, entries = config["data"], registry(config)
    try:
        jsonschema.validate(entries, {"$defs": schema()["$defs"], "type": "object", "additionalProperties": {"$ref": "#/$defs/dataset"}})
    except jsonschema.ValidationError as err:
        location = ".".join(str(p) for p in err.absolute_path)
        raise ConfigError(f"dataset registry (config/datasets.yaml, datasets:): at {location}: {err.message}") from None
    langs = (data["source"], data["target"])
    for split in ["train", "valid", *data["test"]]:
        for name in split_datasets(config, split):
            if name not in entries:
                raise ConfigError(f"data.{split}: unknown dataset {name!r}; the registry "
                                  f"(config/datasets.yaml and datasets:) has {', '.join(sorted(entries))}")
            missing = [lang for lang in langs if lang not in entries[name]]
            if missing:
                raise ConfigError(f"data.{split}: dataset {name!r} has no {'/'.join(missing)} side")
    for name in data["test"]:
        if name in RESERVED_SPLITS or name.startswith("train_shard"):
            raise ConfigError(f"data.test: {name!r} is a reserved split name")


def test_sets(config: dict) -> list[str]:
    """The table's columns: the synthetic pair's test split, or the experiment's named test sets."""
    return list(config["data"]["test"]) if "data" in config else ["test"]


def split_datasets(config: dict, split: str) -> list[str]:
    """The registry datasets a split is made of (none for a split held out of the training data)."""
    data = config["data"]
    value = data["test"][split] if split in data["test"] else data[split]
    return [] if isinstance(value, dict) else value


def held_out(config: dict) -> list[tuple[str, int]]:
    """Evaluation splits carved out of the training data (`{held_out: N}`): (split, pairs), valid first."""
    if "data" not in config:
        return []
    data, cap = config["data"], config.get("smoke", {}).get("eval_lines")
    splits = [("valid", data["valid"]), *data["test"].items()]
    return [(name, min(value["held_out"], cap or value["held_out"]))
            for name, value in splits if isinstance(value, dict)]


def results_name(config: dict) -> str:
    """The directory under results/ (and logs/): a smoke run never mixes with the real experiment."""
    return config["experiment"] + ("-smoke" if "smoke" in config else "")


def split_spec(config: dict, split: str) -> str:
    """What decides one split's corpus (a rule param): languages, datasets, preprocessing, cleaning."""
    data, entries = config["data"], registry(config)
    names = split_datasets(config, split)
    spec = {"languages": [data["source"], data["target"]], "datasets": names,
            "pretokenized": [bool(entries[n].get("pretokenized", False)) for n in names],
            "preprocess": section(config, "preprocess").to_dict()}
    if split == "train":
        spec["cleaning"] = section(config, "cleaning").to_dict()
        if held_out(config):  # only when used: the spec of existing experiments stays as it was
            spec["held_out"] = held_out(config)
            spec["held_out_seed"] = data.get("held_out_seed", 1)
    elif data.get("allow_blank_references"):  # only when set: the spec of existing experiments stays as it was
        spec["allow_blank_references"] = True
    if "smoke" in config:
        spec["max_lines"] = config["smoke"]["lines" if split == "train" else "eval_lines"]
    return json.dumps(spec, sort_keys=True)


def systems(config: dict) -> list[str]:
    """The teacher first, then the students in config order (each once per seed when `seeds` lists several)."""
    seeds = config.get("seeds", [])[:1 if "smoke" in config else None]
    if len(seeds) > 1:
        return ["teacher", *(f"{name}{SEED_SUFFIX}{seed}" for name in config["students"] for seed in seeds)]
    return ["teacher", *config["students"]]


def base_name(name: str) -> str:
    """The configured system a (possibly per-seed) system name belongs to."""
    base, sep, seed = name.rpartition(SEED_SUFFIX)
    return base if sep and seed.isdigit() else name


def spec_key(name: str) -> str:
    """Where a system's settings sit in the config: `teacher` or `students.<name>`."""
    return "teacher" if name == "teacher" else f"students.{base_name(name)}"


def system_spec(config: dict, name: str) -> SystemSpec:
    base = base_name(name)
    entry = config["teacher"] if name == "teacher" else config["students"][base]
    training = {**config.get("training", {}), **entry.get("training", {})}
    if "smoke" in config:  # an epoch may be a single batch of the slice: epochs up to the step cap
        training.update(max_steps=config["smoke"]["max_steps"], max_epochs=config["smoke"]["max_steps"])
    seeds = config.get("seeds", [])
    if name != "teacher" and seeds:  # the teacher is trained once, with training.seed
        suffix = name[len(base):].removeprefix(SEED_SUFFIX)
        training["seed"] = int(suffix) if suffix else seeds[0]
    return SystemSpec(
        name=name,
        model=dict(entry.get("model", {})),
        method=MethodConfig.build(entry.get("method", {}), f"{spec_key(name)}.method"),
        training=TrainingConfig.build(training, f"{spec_key(name)}.training"),
        targets=entry.get("targets", "reference"),
    )


BASELINE_METHODS = ("none", "word_kd")  # what every other student is tested against, in this order


def baselines(config: dict) -> dict[str, str]:
    """The students every other student is tested against, with their method: the first no-KD and
    the first Word-KD student trained on the references, when the experiment has them."""
    on_references = {name: spec.method.name for name in config["students"]
                     if (spec := system_spec(config, name)).targets == "reference"}
    return {next(name for name, method in on_references.items() if method == wanted): wanted
            for wanted in BASELINE_METHODS if wanted in on_references.values()}


def seed_pairs(runs: list[str], baselines) -> list[tuple[str, str, list[str]]]:
    """(baseline, baseline run, runs compared with it): every student run against the baseline's run
    of the same seed (`x_seed2` against `student_nokd_seed2`); the teacher and a baseline's own runs
    are not compared."""
    pairs = []
    for baseline in baselines:
        partners: dict[str, list[str]] = {}
        for run in runs:
            base = base_name(run)
            if run == "teacher" or base == baseline:
                continue
            partner = baseline + run[len(base):]  # same seed suffix
            if partner not in runs:
                raise InputError(f"significance: no run {partner!r} of baseline {baseline!r} to pair with {run!r}")
            partners.setdefault(partner, []).append(run)
        pairs += [(baseline, partner, compared) for partner, compared in partners.items()]
    return pairs
