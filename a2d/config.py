"""Typed configuration: the sections of an experiment, and one system's resolved spec.

Each section is an `a2d.settings.Section` declared beside the code that uses it (the model's shape in
a2d.model, the method in a2d.distill, decoding in a2d.search, ...); `SECTIONS` says where each sits
in the YAML. `schema()` is the experiment's schema: the structure in
`workflow/schemas/config.schema.yaml` with every section's own schema filled in, so a setting is
declared once, in its dataclass. The experiment plan (systems, seeds, splits) is `a2d.plan`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import yaml

from a2d.clean import Cleaning, Preprocess
from a2d.data import SubwordConfig
from a2d.distill import MethodConfig
from a2d.evaluate import EvaluationConfig
from a2d.export import ExportConfig
from a2d.model import ModelConfig
from a2d.search import SearchConfig
from a2d.settings import ConfigError, Section, default_of, setting
from a2d.synthetic import SyntheticCorpus

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "workflow" / "schemas" / "config.schema.yaml"


@dataclass(frozen=True)
class TrainingConfig(Section):
    """Optimisation and checkpointing (every system; a system's own block overrides the top-level one)."""

    seed: int = setting(1, "initial weights, data order and dropout")
    max_tokens: int = setting(4096, "padded tokens per batch and side", minimum=1)
    max_epochs: int = setting(100, "epochs at most", minimum=1)
    max_steps: int = setting(0, "0: no cap", minimum=0)
    patience: int = setting(10, "stop after this many epochs without a better validation BLEU; 0: never", minimum=0)
    lr: float = setting(5e-4, "peak learning rate (inverse square root schedule)", exclusiveMinimum=0)
    warmup_steps: int = setting(4000, "linear warm-up updates", minimum=0)
    warmup_init_lr: float = setting(1e-7, "learning rate at update 0", minimum=0)
    adam_betas: list[float] = setting([0.9, 0.98], "AdamW", minItems=2, maxItems=2,
                                      items={"minimum": 0, "exclusiveMaximum": 1})
    adam_eps: float = setting(1e-8, "AdamW", exclusiveMinimum=0)
    weight_decay: float = setting(1e-4, "decoupled (AdamW)", minimum=0)
    clip_norm: float = setting(0.0, "0: no clipping", minimum=0)
    zero_stage: int = setting(1, "DeepSpeed ZeRO: 0 none, 1 optimizer state, 2 + gradients, 3 + parameters sharded",
                              enum=[0, 1, 2, 3])
    precision: str = setting("fp32", "mixed precision (DeepSpeed's), where the hardware has it",
                             enum=["fp32", "bf16", "fp16"])
    batches_per_update: int = setting(0, "token batches per optimizer update over all processes; 0: one per process",
                                      minimum=0)
    save_every_steps: int = setting(1000, "periodic checkpoint, besides one per epoch and on a stop signal", minimum=1)
    keep_checkpoints: int = setting(2, "sealed checkpoints kept", minimum=1)
    valid_max_len_a: float = setting(1.2, "greedy decoding of the validation set", minimum=0)
    valid_max_len_b: int = setting(10, "see valid_max_len_a", minimum=1)

    def check(self):
        if self.precision != "fp32" and self.zero_stage == 0:
            raise ValueError(f"precision {self.precision} needs zero_stage 1 or more (DeepSpeed's stage 0 keeps "
                             "no fp32 master weights to validate and export)")


@dataclass(frozen=True)
class SeqKDConfig(Section):
    """Sequence-level KD data, built when a student has `targets: teacher`."""

    shards: int = setting(2, "parallel jobs in which the teacher translates the training sources", minimum=1)


# Where each section sits in an experiment's YAML. The first three are per system (teacher and
# every student; `training` also at the top level, as defaults).
SECTIONS: dict[str, tuple[type[Section], tuple[str, ...]]] = {
    "model": (ModelConfig, ("students", "*", "model")),
    "method": (MethodConfig, ("students", "*", "method")),
    "training": (TrainingConfig, ("training",)),
    "decoding": (SearchConfig, ("decoding",)),
    "export": (ExportConfig, ("export",)),
    "evaluation": (EvaluationConfig, ("evaluation",)),
    "seq_kd": (SeqKDConfig, ("seq_kd",)),
    "preprocess": (Preprocess, ("data", "preprocess")),
    "cleaning": (Cleaning, ("data", "cleaning")),
    "sentencepiece": (SubwordConfig, ("sentencepiece",)),
    "synthetic": (SyntheticCorpus, ("corpus", "synthetic")),
}
PER_SYSTEM = ("model", "method", "training")


def section(config: dict, name: str) -> Section:
    """An experiment-wide section (not per system), built from its place in the config."""
    if name in PER_SYSTEM:
        raise ValueError(f"{name} is set per system: use a2d.plan.system_spec")
    cls, path = SECTIONS[name]
    values = config
    for key in path:
        values = values.get(key, {})
    return cls.build(values, ".".join(path))


@cache
def schema() -> dict:
    with open(SCHEMA_PATH, encoding="utf-8") as f:
        structure = yaml.safe_load(f)
    structure["$defs"].update({name: cls.schema() for name, (cls, _) in SECTIONS.items()})
    return structure


TARGETS = ("reference", "teacher")  # what a system trains on: the references, or Seq-KD output


@dataclass(frozen=True)
class SystemSpec:
    """Everything that decides how one model (teacher or student) is trained."""

    name: str
    model: dict  # ModelConfig fields except the vocabulary sizes, which come from the subword models
    method: MethodConfig
    training: TrainingConfig
    targets: str = "reference"

    @property
    def label(self) -> str:
        """Method as shown in tables: Seq-KD is a choice of targets that combines with any method."""
        if self.targets == "reference":
            return self.method.label
        return "seq_kd" if self.method.name == "none" else f"seq_kd + {self.method.label}"

    def to_json(self) -> str:
        """Only what differs from the defaults: adding an option (with a default) to a2d then
        changes no existing spec, so it neither re-runs Snakemake jobs nor restarts resumable runs."""
        return json.dumps({"name": self.name, "model": self.model, "method": self.method.non_default(),
                           "training": self.training.non_default(), "targets": self.targets}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> SystemSpec:
        d = json.loads(text)
        if d["targets"] not in TARGETS:
            raise ConfigError(f"{d['name']}.targets: {d['targets']!r} is not one of {', '.join(TARGETS)}")
        return cls(d["name"], d["model"], MethodConfig.build(d["method"], f"{d['name']}.method"),
                   TrainingConfig.build(d["training"], f"{d['name']}.training"), d["targets"])

    def model_config(self, vocab_size: int, src_vocab_size: int | None = None, where: str = "") -> ModelConfig:
        return ModelConfig.build({**self.model, "vocab_size": vocab_size, "src_vocab_size": src_vocab_size},
                                 where or f"{self.name}.model")


def reference() -> str:
    """Every section's settings as markdown tables (docs/configuration.md holds this text)."""
    lines = []
    for name, (cls, path) in SECTIONS.items():
        where = "teacher / students.<name> / training" if name == "training" else (
            f"teacher / students.<name>.{name}" if name in PER_SYSTEM else ".".join(path))
        lines += [f"### `{name}`: {where}", "", cls.schema()["description"], "",
                  "| key | type | default | meaning |", "|---|---|---|---|"]
        for field_name, prop in cls.schema()["properties"].items():
            default = next(f for f in dataclasses.fields(cls) if f.name == field_name)
            lines.append(f"| `{field_name}` | {type_words(prop)} | {default_words(default_of(default))} | "
                         f"{prop.get('description', '')} |")
        lines.append("")
    return "\n".join(lines)


def type_words(prop: dict) -> str:
    if "enum" in prop:
        return " / ".join(f"`{v}`" for v in prop["enum"])
    kind = prop.get("type") or " or ".join(o["type"] for o in prop["anyOf"])
    bounds = [f"{words} {prop[key]}" for key, words in (("minimum", "≥"), ("exclusiveMinimum", ">"),
                                                        ("maximum", "≤"), ("exclusiveMaximum", "<")) if key in prop]
    return ", ".join([kind, *bounds])


def default_words(value) -> str:
    return "required" if value is dataclasses.MISSING else f"`{json.dumps(value)}`"
