"""Typed configuration: every section of an experiment, and one system's resolved spec.

Each section is an `a2d.settings.Section`: a field declares its type, default, bounds and meaning
once, and validation, the schema and the hand-over to commands follow from it. `SECTIONS` says where
each sits in the YAML; `schema()` is the experiment's schema, the structure in
`workflow/schemas/config.schema.yaml` with every section's schema filled in. This module imports no
torch: Snakemake loads it, and every command parses its options with it. The code that uses a
section imports it from here; the experiment plan (systems, seeds, splits) is `a2d.plan`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import yaml

from a2d.settings import ConfigError, Section, default_of, setting

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "workflow" / "schemas" / "config.schema.yaml"


@dataclass(frozen=True)
class ModelConfig(Section):
    """Transformer shape; saved next to its weights so a checkpoint rebuilds the model alone."""

    vocab_size: int = setting(doc="target vocabulary (and source, unless src_vocab_size)", derived=True, minimum=4)
    encoder_layers: int = setting(6, "encoder layers", minimum=1)
    decoder_layers: int = setting(6, "decoder layers", minimum=1)
    d_model: int = setting(512, "model width", minimum=2)
    heads: int = setting(4, "attention heads per layer", minimum=1)
    ffn: int = setting(1024, "inner width of the feed-forward block", minimum=1)
    dropout: float = setting(0.3, "on embeddings and sublayer outputs", minimum=0, maximum=1)
    attention_dropout: float = setting(0.0, "on attention probabilities", minimum=0, maximum=1)
    activation_dropout: float | None = setting(None, "inside the feed-forward block; unset: dropout", minimum=0,
                                               maximum=1)
    max_positions: int = setting(1024, "longest sequence in tokens: longer training pairs are left out, longer sources cut at decoding", minimum=2)
    pre_norm: bool = setting(False, "LayerNorm before each sublayer (and after the stack) instead of after it")
    src_vocab_size: int | None = setting(None, "a separate source subword model (De->Dsb recipe); unset: shared",
                                         derived=True, minimum=4)
    share_all_embeddings: bool = setting(False, "one table for source, target and output (fairseq's flag); "
                                         "needs joint subwords")

    @property
    def source_vocab_size(self) -> int:
        return self.src_vocab_size or self.vocab_size

    def check(self):
        if self.d_model % self.heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by heads {self.heads}")
        if self.share_all_embeddings and self.source_vocab_size != self.vocab_size:
            raise ValueError("share_all_embeddings needs one joint subword model for source and target")


ATTENTION_TYPES = ("encoder_self", "decoder_self", "decoder_cross")
METHODS = ("none", "word_kd", "selective_kd", "a2d", "pkd", "alp_kd", "minilm")
FEATURE_METHODS = ("pkd", "alp_kd", "minilm")


def pkd_layer_map(student_layers: int, teacher_layers: int, strategy: str) -> list[int]:
    """PKD (Sun et al. 2019): the teacher layer (0-based) each student layer learns from.
    skip: evenly spaced, ending at the top layer; last: the top `student_layers` layers. Unlike the
    paper, which leaves the teacher's top layer to the logits, both mappings include it."""
    if student_layers > teacher_layers:
        raise ValueError(f"PKD maps each of {student_layers} student layers to a distinct teacher layer, "
                         f"but the teacher has only {teacher_layers}")
    if strategy == "skip":
        return [(i + 1) * teacher_layers // student_layers - 1 for i in range(student_layers)]
    return list(range(teacher_layers - student_layers, teacher_layers))


@dataclass(frozen=True)
class A2DFactors:
    """The separable factors of an A2D loss (docs/methods.md#a2d-recipes-and-their-factors)."""

    encoder_self: float
    decoder_self: float
    decoder_cross: float
    attention_distribution: str  # flattened | rows
    attention_reduction: str  # sum | channel_mean
    aam: str  # free | normalised
    word_normaliser: str  # padded_positions | target_tokens
    kd_loss: str  # cross_entropy | kl


# The known recipes (method doc, sections 3 and 4). As released, the criterion's decoder terms sit
# behind a switch the released student script leaves off: only encoder self-attention is aligned.
_RELEASED_LOSS = {"attention_distribution": "flattened", "attention_reduction": "sum", "aam": "free",
                  "word_normaliser": "padded_positions", "kd_loss": "cross_entropy"}
_ALL_TYPES = {"encoder_self": 1.0, "decoder_self": 0.5, "decoder_cross": 0.5}
A2D_PRESETS: dict[str, dict] = {
    "faithful-described": {**_ALL_TYPES, **_RELEASED_LOSS},
    "faithful-released": {"encoder_self": 1.0, "decoder_self": 0.0, "decoder_cross": 0.0, **_RELEASED_LOSS},
    "corrected": {**_ALL_TYPES, "attention_distribution": "rows", "attention_reduction": "channel_mean",
                  "aam": "normalised", "word_normaliser": "target_tokens", "kd_loss": "kl"},
}


@dataclass(frozen=True)
class MethodConfig(Section):
    """How a model is trained (method doc, sections 3, 4 and 6).

    none: label-smoothed CE (teacher, no-KD student). word_kd: (1-alpha)*LS + alpha*tau^2*KL.
    selective_kd: word_kd on the hardest `selective_fraction` of tokens by student NLL.
    pkd, alp_kd, minilm: word_kd plus `feature_weight` x a feature loss over encoder and decoder:
    hidden states (PKD with `pkd_mapping` skip or last; ALP-KD over all teacher layers) or the last
    self-attention layer's query, key and value relations (MiniLMv2, `relation_heads`).
    a2d: attention alignment plus word-level KD. `a2d_mode` names a recipe (A2D_PRESETS): the
    authors' released script (`faithful-released`), the paper's description (`faithful-described`)
    or the row-wise `corrected` loss; each factor in which they differ is a setting of its own, unset
    to take the recipe's value (`a2d` resolves them). `layerwise` aligns head-averaged layers (the
    paper's ablation); a type weight of 0 switches that attention type off.
    """

    name: str = setting("none", "the objective (docs/methods.md)", enum=list(METHODS))
    label_smoothing: float = setting(0.1, "of the cross-entropy (fairseq's)", minimum=0, maximum=1)
    alpha: float = setting(0.5, "weight of word-level KD", minimum=0, maximum=1)
    temperature: float = setting(1.0, "word-level KD (word_kd, selective_kd, a2d)", exclusiveMinimum=0)
    selective_fraction: float = setting(0.5, "selective_kd: the hardest fraction of target tokens by student NLL", exclusiveMinimum=0, maximum=1)
    a2d_mode: str = setting("faithful-described", "a2d: the recipe whose factors the unset settings below take "
                            "(docs/methods.md#a2d-recipes-and-their-factors); `faithful`, its earlier name, is "
                            "faithful-described", enum=[*A2D_PRESETS, "faithful"])
    layerwise: bool = setting(False, "a2d: align head-averaged layers rather than heads (the paper's ablation)")
    encoder_self: float | None = setting(None, "A2D weight of this attention type (0: off); unset: the recipe's", minimum=0)
    decoder_self: float | None = setting(None, "A2D weight of this attention type (0: off); unset: the recipe's", minimum=0)
    decoder_cross: float | None = setting(None, "A2D weight of this attention type (0: off); unset: the recipe's", minimum=0)
    attention_distribution: str | None = setting(
        None, "a2d: one softmax over each flattened Q x K map, unmasked (released code), or one distribution per "
        "real query row over its allowed keys; unset: the recipe's", enum=["flattened", "rows", None])
    attention_reduction: str | None = setting(
        None, "a2d: each type's KL summed over the teacher's channels, or averaged over them; unset: the recipe's",
        enum=["sum", "channel_mean", None])
    aam: str | None = setting(None, "a2d: the AAM's mixing, a free 1x1 convolution with bias (released code) or "
                              "softmax-normalised weights without bias; unset: the recipe's", enum=["free", "normalised", None])
    word_normaliser: str | None = setting(
        None, "a2d: the word term divided by the batch's padded positions B*T_max (released code) before the "
        "per-token division, or only by its target tokens; unset: the recipe's",
        enum=["padded_positions", "target_tokens", None])
    kd_loss: str | None = setting(None, "a2d: word-level KD as the cross-entropy against the teacher's distribution "
                                  "(released code) or as tau^2 * KL; unset: the recipe's",
                                  enum=["cross_entropy", "kl", None])
    beta: float = setting(1.0, "a2d: weight of the attention term at the start", minimum=0)
    gamma: float = setting(0.9, "a2d: its decay per epoch (or step)", minimum=0, maximum=1)
    decay_every: str = setting("epoch", "beta * gamma^(count - 1), counting epochs or update steps",
                               enum=["epoch", "step"])
    feature_weight: float = setting(1.0, "pkd, alp_kd, minilm", minimum=0)
    pkd_mapping: str = setting("skip", "pkd: skip, evenly spaced teacher layers up to the top; last, the top ones", enum=["skip", "last"])
    relation_heads: int = setting(4, "minilm", minimum=1)

    def __post_init__(self):
        # Canonical form, so that specs (and run digests) do not change with how a recipe is spelt:
        # `faithful` is faithful-described's earlier name, and a factor set to its recipe's value is
        # the recipe's.
        if self.a2d_mode == "faithful":
            object.__setattr__(self, "a2d_mode", "faithful-described")
        preset = A2D_PRESETS.get(self.a2d_mode, {})
        for name, value in preset.items():
            if getattr(self, name) == value:
                object.__setattr__(self, name, None)
        super().__post_init__()

    def check(self):
        if self.name == "a2d" and not self.attention_types:
            raise ValueError("a2d needs at least one attention type with a positive weight")

    def check_fits(self, student: ModelConfig, teacher: ModelConfig) -> None:
        """Refuse, before training, a method that cannot work with these shapes."""
        for side, s, t in (("target", student.vocab_size, teacher.vocab_size),
                           ("source", student.source_vocab_size, teacher.source_vocab_size)):
            if s != t:
                raise ValueError(f"student {side} vocabulary {s} != teacher {side} vocabulary {t}")
        if self.name == "pkd":
            pkd_layer_map(student.encoder_layers, teacher.encoder_layers, self.pkd_mapping)
            pkd_layer_map(student.decoder_layers, teacher.decoder_layers, self.pkd_mapping)
        if self.name == "minilm":
            for who, cfg in (("student", student), ("teacher", teacher)):
                if cfg.d_model % self.relation_heads:
                    raise ValueError(f"{who} d_model {cfg.d_model} is not divisible by relation_heads {self.relation_heads}")

    @property
    def a2d(self) -> A2DFactors:
        """The A2D factors: each set one, else the recipe's."""
        preset = A2D_PRESETS[self.a2d_mode]
        return A2DFactors(**{name: preset[name] if getattr(self, name) is None else getattr(self, name)
                             for name in preset})

    @property
    def attention_types(self) -> tuple[str, ...]:
        return tuple(self.weights)

    @property
    def weights(self) -> dict[str, float]:
        """The weight of each enabled attention type."""
        factors = self.a2d
        return {name: getattr(factors, name) for name in ATTENTION_TYPES if getattr(factors, name) > 0}

    @property
    def label(self) -> str:
        """Short description for tables: the recipe, then what differs from it, e.g. "a2d corrected
        layerwise" or "a2d faithful-described aam=normalised decoder_self=0"."""
        if self.name != "a2d":
            return self.name
        preset, factors = A2D_PRESETS[self.a2d_mode], self.a2d
        changed = [f"{name}={value:g}" if isinstance(value, float) else f"{name}={value}"
                   for name, value in dataclasses.asdict(factors).items() if value != preset[name]]
        return " ".join(["a2d", self.a2d_mode] + (["layerwise"] if self.layerwise else []) + changed)

    @property
    def needs_teacher(self) -> bool:
        return self.name != "none"

    @property
    def needs_attention(self) -> bool:
        return self.name == "a2d"

    @property
    def needs_hidden(self) -> bool:
        return self.name in FEATURE_METHODS


@dataclass(frozen=True)
class SearchConfig(Section):
    """Beam search for test sets and Seq-KD data (fairseq's length rule and penalty)."""

    beam_size: int = setting(5, "1: greedy", minimum=1)
    length_penalty: float = setting(1.0, "scores divided by length ** length_penalty")
    max_len_a: float = setting(1.2, "at most max_len_a * source length + max_len_b tokens", minimum=0)
    max_len_b: int = setting(10, "see max_len_a", minimum=1)
    batch_size: int = setting(64, "sentences per batch", minimum=1)
    min_len: int = setting(1, "tokens before EOS at least (fairseq's --min-len); the length limit wins over it",
                           minimum=1)


QUANTIZATIONS = ["int8", "int8_float32", "int16", "float32"]


@dataclass(frozen=True)
class ExportConfig(Section):
    """The deployable models written for every system: CTranslate2, and on request Hugging Face transformers."""

    quantization: str = setting("int8", "CTranslate2 weight type", enum=QUANTIZATIONS)
    huggingface: bool = setting(False, "also a Hugging Face transformers directory per system "
                                "(deploy/<system>.hf; `make venv` installs transformers)")


TOKENIZERS = ["13a", "none", "intl", "char", "zh", "ja-mecab", "ko-mecab", "flores101", "flores200"]


@dataclass(frozen=True)
class EvaluationConfig(Section):
    """Scoring with sacrebleu, and the significance tests between systems."""

    tokenize: str = setting("13a", "sacrebleu's BLEU tokenizer; none scores already-tokenised text (IWSLT'14)",
                            enum=TOKENIZERS)
    lowercase: bool = setting(False, "case-insensitive BLEU, chrF and chrF++ (TER is sacrebleu's, case-insensitive)")
    bootstrap_samples: int = setting(1000, "bootstrap resamples: each score's 95% confidence interval, and the "
                                     "paired bootstrap test", minimum=2)
    significance_test: str = setting("paired_bootstrap", "between a student and a baseline: sacrebleu's paired "
                                     "bootstrap resampling or paired approximate randomisation",
                                     enum=["paired_bootstrap", "approximate_randomisation"])
    randomisation_trials: int = setting(10000, "trials of the approximate randomisation test", minimum=1)
    significance_level: float = setting(0.05, "p-value under which the table marks a student better than a baseline",
                                        exclusiveMinimum=0, exclusiveMaximum=1)
    usable_bleu: float = setting(5.0, "when every student of a test set scores below this BLEU, the table says that "
                                 "their ranking is noise-prone", minimum=0)
    comet: str = setting("", "a local COMET checkpoint, <model>/checkpoints/model.ckpt beside <model>/hparams.yaml "
                         "(e.g. Unbabel/wmt22-comet-da): adds COMET to the metrics; empty: no COMET")
    comet_batch_size: int = setting(16, "sentences per COMET batch", minimum=1)

    def check(self):
        from a2d.comet import checkpoint_problem

        problem = self.comet and checkpoint_problem(self.comet)
        if problem:
            raise ValueError(f"comet: {problem}")


@dataclass(frozen=True)
class Preprocess(Section):
    """Moses tokenisation and lowercasing, as the IWSLT'14 recipe; every split alike."""

    moses: bool = setting(False, "Moses-tokenise (sacremoses, with its default escaping, like tokenizer.perl)")
    lowercase: bool = setting(False, "lowercase every split")


@dataclass(frozen=True)
class Cleaning(Section):
    """Filters applied to the training data only."""

    max_words: int = setting(250, "per side, whitespace words after preprocessing", minimum=1)
    max_ratio: float = setting(3.0, "longer side / shorter side, in words", minimum=1)
    dedup: bool = setting(True, "drop exact duplicate pairs")
    decontaminate: bool = setting(True, "drop training pairs whose source is in an evaluation set")
    overlap_warning: float = setting(0.05, "warn when more of an evaluation set than this is in the training data",
                                     minimum=0, maximum=1)


@dataclass(frozen=True)
class SubwordConfig(Section):
    """SentencePiece models: one joint model for both languages, or one per language."""

    vocab_size: int = setting(doc="per model when not joint", minimum=8)
    model_type: str = setting(doc="SentencePiece algorithm", enum=["unigram", "bpe", "char", "word"])
    seed: int = setting(doc="SentencePiece training")
    joint: bool = setting(True, "one model for both languages, or one per language (the De->Dsb recipe)")


@dataclass(frozen=True)
class SyntheticCorpus(Section):
    """The embedded synthetic language pair, sizes in sentence pairs."""

    seed: int = setting(doc="lexicons and sentences")
    train: int = setting(doc="sentence pairs", minimum=1)
    valid: int = setting(doc="sentence pairs", minimum=1)
    test: int = setting(doc="sentence pairs", minimum=1)


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
        words = " / ".join(f"`{v}`" for v in prop["enum"] if v is not None)
        return words + (", or unset" if None in prop["enum"] else "")
    kind = prop.get("type") or " or ".join(o["type"] for o in prop["anyOf"])
    bounds = [f"{words} {prop[key]}" for key, words in (("minimum", "≥"), ("exclusiveMinimum", ">"),
                                                        ("maximum", "≤"), ("exclusiveMaximum", "<")) if key in prop]
    return ", ".join([kind, *bounds])


def default_words(value) -> str:
    return "required" if value is dataclasses.MISSING else f"`{json.dumps(value)}`"
