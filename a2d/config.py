"""Experiment configuration: validated once when loaded, then resolved into one spec per system.

The YAML structure is checked against `workflow/schemas/config.schema.yaml` (unknown keys are
errors); values are then built into the dataclasses below, whose defaults are the method doc's
reference recipe, so a shape that cannot work fails here and not deep inside training.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import jsonschema
import yaml

from a2d.clean import Cleaning, Preprocess
from a2d.datasets import registry
from a2d.distill import MethodConfig
from a2d.evaluate import EvaluationConfig
from a2d.model import ModelConfig
from a2d.search import SearchConfig

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "workflow" / "schemas" / "config.schema.yaml"


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class TrainingConfig:
    seed: int = 1
    max_tokens: int = 4096  # padded tokens per batch and side
    max_epochs: int = 100
    max_steps: int = 0  # 0: no cap
    patience: int = 10  # stop after this many epochs without a better validation BLEU; 0: never
    lr: float = 5e-4
    warmup_steps: int = 4000
    warmup_init_lr: float = 1e-7
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    adam_eps: float = 1e-8
    weight_decay: float = 1e-4  # decoupled (AdamW)
    clip_norm: float = 0.0  # 0: no clipping
    zero_stage: int = 1  # DeepSpeed ZeRO: 0 none, 1 optimizer state, 2 + gradients, 3 + parameters sharded
    precision: str = "fp32"  # fp32, bf16 or fp16 (mixed precision, DeepSpeed's; fp16 and bf16 where the hardware has them)
    batches_per_update: int = 0  # token batches per optimizer update over all processes; 0: one per process
    save_every_steps: int = 1000
    keep_checkpoints: int = 2
    valid_max_len_a: float = 1.2  # greedy decoding of the validation set
    valid_max_len_b: int = 10

    def __post_init__(self):
        if self.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"zero_stage {self.zero_stage}: DeepSpeed's ZeRO stages are 0, 1, 2 and 3")
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"precision {self.precision!r}: use fp32, bf16 or fp16")
        if self.precision != "fp32" and self.zero_stage == 0:
            raise ValueError(f"precision {self.precision} needs zero_stage 1 or more (DeepSpeed's stage 0 keeps "
                             "no fp32 master weights to validate and export)")

    def to_dict(self) -> dict:
        return asdict(self)


def non_default(obj) -> dict:
    """The fields of dataclass `obj` whose values differ from their defaults."""
    changed = {}
    for f in dataclasses.fields(obj):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if getattr(obj, f.name) != default:
            changed[f.name] = getattr(obj, f.name)
    return changed


def build(cls, values: dict, where: str):
    """Construct dataclass `cls` from `values`; unknown keys and bad values name `where`."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    try:
        return cls(**values)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where}: {err}") from None


@dataclass(frozen=True)
class SeqKDConfig:
    shards: int = 2  # parallel jobs in which the teacher translates the training sources


TARGETS = ("reference", "teacher")  # what a system trains on: the references, or Seq-KD output


@dataclass(frozen=True)
class SystemSpec:
    """Everything that decides how one model (teacher or student) is trained."""

    name: str
    model: dict  # ModelConfig fields except the vocabulary sizes, which come from the subword models
    method: MethodConfig
    training: TrainingConfig
    targets: str = "reference"

    def __post_init__(self):
        if self.targets not in TARGETS:
            raise ConfigError(f"{spec_key(self.name)}.targets: {self.targets!r} is not one of {', '.join(TARGETS)}")

    @property
    def label(self) -> str:
        """Method as shown in tables: Seq-KD is a choice of targets that combines with any method."""
        if self.targets == "reference":
            return self.method.label
        return "seq_kd" if self.method.name == "none" else f"seq_kd + {self.method.label}"

    def to_json(self) -> str:
        """Only what differs from the defaults: adding an option (with a default) to a2d then
        changes no existing spec, so it neither re-runs Snakemake jobs nor restarts resumable runs."""
        return json.dumps({"name": self.name, "model": self.model, "method": non_default(self.method),
                           "training": non_default(self.training), "targets": self.targets}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "SystemSpec":
        d = json.loads(text)
        return cls(d["name"], d["model"], build(MethodConfig, d["method"], f"{d['name']}.method"),
                   build(TrainingConfig, d["training"], f"{d['name']}.training"), d["targets"])

    def model_config(self, vocab_size: int, src_vocab_size: int | None = None) -> ModelConfig:
        return build(ModelConfig, {**self.model, "vocab_size": vocab_size, "src_vocab_size": src_vocab_size},
                     f"{spec_key(self.name)}.model")


def schema() -> dict:
    with open(SCHEMA_PATH, encoding="utf-8") as f:
        return yaml.safe_load(f)


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
    """Schema check, then build every system spec so that bad values fail now. Errors name `where`
    (the config file) and the key path."""
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
    vocab = config["sentencepiece"]["vocab_size"]
    teacher = system_spec(config, "teacher")
    teacher_shape = teacher.model_config(vocab)
    for name in systems(config):
        spec = system_spec(config, name)
        shape = spec.model_config(vocab)
        try:
            spec.method.check_fits(shape, teacher_shape)
        except ValueError as err:
            raise ConfigError(f"{spec_key(name)}.method: {spec.method.name}: {err}") from None
    if teacher.method.needs_teacher or teacher.targets != "reference":
        raise ConfigError("teacher: the teacher is trained on the references without distillation")
    shards = seq_kd_config(config).shards
    if "corpus" in config and shards > config["corpus"]["synthetic"]["train"]:
        raise ConfigError(f"seq_kd.shards: {shards} exceeds the {config['corpus']['synthetic']['train']} "
                          "training pairs it would split")
    search_config(config)
    evaluation_config(config)
    if "data" in config:
        check_data(config)


RESERVED_SPLITS = ("train", "valid", "train_seq_kd")


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
    preprocess_config(config)
    cleaning_config(config)


def preprocess_config(config: dict) -> Preprocess:
    return build(Preprocess, config.get("data", {}).get("preprocess", {}), "data.preprocess")


def cleaning_config(config: dict) -> Cleaning:
    return build(Cleaning, config.get("data", {}).get("cleaning", {}), "data.cleaning")


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
            "preprocess": asdict(preprocess_config(config))}
    if split == "train":
        spec["cleaning"] = asdict(cleaning_config(config))
        if held_out(config):  # only when used: the spec of existing experiments stays as it was
            spec["held_out"] = held_out(config)
            spec["held_out_seed"] = data.get("held_out_seed", 1)
    elif data.get("allow_blank_references"):  # only when set: the spec of existing experiments stays as it was
        spec["allow_blank_references"] = True
    if "smoke" in config:
        spec["max_lines"] = config["smoke"]["lines" if split == "train" else "eval_lines"]
    return json.dumps(spec, sort_keys=True)


SEED_SUFFIX = "_seed"  # with several `seeds`, student <name> is trained as <name>_seed<N> for each


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
        method=build(MethodConfig, entry.get("method", {}), f"{spec_key(name)}.method"),
        training=build(TrainingConfig, training, f"{spec_key(name)}.training"),
        targets=entry.get("targets", "reference"),
    )


def evaluation_config(config: dict) -> EvaluationConfig:
    return build(EvaluationConfig, config.get("evaluation", {}), "evaluation")


def baselines(config: dict) -> list[str]:
    """The students every other student is tested against: the first no-KD and the first Word-KD
    student trained on the references, when the experiment has them."""
    on_references = {name: spec.method.label for name in config["students"]
                     if (spec := system_spec(config, name)).targets == "reference"}
    return [next(name for name, label in on_references.items() if label == wanted)
            for wanted in ("none", "word_kd") if wanted in on_references.values()]


def seq_kd_config(config: dict) -> SeqKDConfig:
    return build(SeqKDConfig, config.get("seq_kd", {}), "seq_kd")


def search_config(config: dict) -> SearchConfig:
    return build(SearchConfig, config.get("decoding", {}), "decoding")
