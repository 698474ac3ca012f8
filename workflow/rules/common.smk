import json
import os
import re

from a2d.config import section
from a2d.datasets import mirror_dir, registry
from a2d.plan import (baselines, config_source, held_out, results_name, split_datasets, split_spec, system_spec, systems,
                      test_sets, validate_config)

# Structure against workflow/schemas/config.schema.yaml, then values (every system's shape); errors
# name the config file(s) and the key.
validate_config(config, config_source(workflow.configfiles, workflow.config_settings.config))

RESULTS = f"results/{results_name(config)}"
LOGS = f"logs/{results_name(config)}"
SYSTEMS = systems(config)
TEST_SETS = test_sets(config)
HELD_OUT = [name for name, _ in held_out(config)]  # evaluation splits carved out of the training data
FROM_DATASETS = [name for name in ["valid", *TEST_SETS] if name not in HELD_OUT]  # the others
REAL_DATA = "data" in config  # else the embedded synthetic pair
if REAL_DATA:
    LANGS = [config["data"]["source"], config["data"]["target"]]
    REGISTRY = registry(config)
    # Not a param: moving the mirror (or downloading instead) yields the same checked text.
    MIRROR = mirror_dir(config) or ""
    DATASETS = sorted({d for split in ["train", "valid", *TEST_SETS] for d in split_datasets(config, split)})
# One SentencePiece model for both languages, or one per language (the De->Dsb recipe).
JOINT_SPM = section(config, "sentencepiece").joint
SRC_SPM = f"{RESULTS}/spm/{'joint' if JOINT_SPM else 'src'}.model"
TGT_SPM = f"{RESULTS}/spm/{'joint' if JOINT_SPM else 'tgt'}.model"
# Settings reach a command one way: its config section as JSON (a2d.settings.Section.to_json).
DECODING = section(config, "decoding").to_json()
EXPORT = section(config, "export").to_json()
EVALUATION = section(config, "evaluation").to_json()
CLEANING = section(config, "cleaning").to_json()
SUBWORDS = section(config, "sentencepiece").to_json()
# Sequence-level KD: the teacher translates the training sources in this many parallel jobs.
SEQ_KD_SHARDS = [f"train_shard{i}" for i in range(section(config, "seq_kd").shards)]
BASELINES = baselines(config)  # system -> method, which picks its mark in the table
A2D_SYSTEMS = [name for name in SYSTEMS if system_spec(config, name).method.name == "a2d"]
# Hugging Face exports (export.huggingface); the rule also builds one on request.
HF_EXPORTS = [f"{RESULTS}/deploy/{name}.hf" for name in SYSTEMS] if section(config, "export").huggingface else []

wildcard_constraints:
    system="|".join(SYSTEMS),
    a2d_system="|".join(A2D_SYSTEMS) or "(?!)",
    test_set="|".join(TEST_SETS),
    source="|".join(TEST_SETS + SEQ_KD_SHARDS),
    split="|".join(["train", "valid", "train_seq_kd", *TEST_SETS]),
    eval_split="|".join(FROM_DATASETS) or "(?!)",
    spm_name="joint|src|tgt",


def spec_json(wildcards):
    """The system's resolved spec: a param, so editing one system re-runs that system only."""
    return system_spec(config, wildcards.system).to_json()


def training_data(wildcards):
    """The references, or the teacher's translations for students with `targets: teacher`."""
    split = "train_seq_kd" if system_spec(config, wildcards.system).targets == "teacher" else "train"
    return f"{RESULTS}/data/{split}.safetensors"


def teacher_inputs(wildcards):
    """Distillation methods read the trained teacher; the teacher and no-KD students do not."""
    if system_spec(config, wildcards.system).method.needs_teacher:
        return {"teacher": f"{RESULTS}/models/teacher/model.safetensors"}
    return {}


def teacher_flag(wildcards, input):
    return ["--teacher", input.teacher] if "teacher" in input.keys() else []


def raw_files(split, lang):
    """The fetched text of one side of a split's datasets, in config order."""
    return [f"{RESULTS}/raw/{name}.{lang}" for name in split_datasets(config, split)]


def eval_sources(wildcards):
    return raw_files(wildcards.eval_split, LANGS[0])


def eval_targets(wildcards):
    return raw_files(wildcards.eval_split, LANGS[1])


def eval_split_spec(wildcards):
    return split_spec(config, wildcards.eval_split)


def train_split_spec(wildcards):
    """A callable rather than a string: braces in the spec are not wildcards."""
    return split_spec(config, "train")


def registry_side(wildcards):
    """The registry entry of one side of a dataset, as `fetch` takes it."""
    return json.dumps(REGISTRY[wildcards.dataset][wildcards.lang], sort_keys=True)


def own_file(wildcards):
    """A user's own file (`path:`) is an input, so editing it re-fetches; registry downloads are not."""
    side = REGISTRY[wildcards.dataset][wildcards.lang]
    return [side["path"]] if "path" in side else []


def spm_inputs(wildcards):
    sides = {"joint": ["src", "tgt"], "src": ["src"], "tgt": ["tgt"]}[wildcards.spm_name]
    return [f"{RESULTS}/corpus/train.{side}" for side in sides]


def provenance_json(wildcards):
    """The resolved experiment for provenance: the config, every system's full spec, and the
    registry entries of the datasets used."""
    resolved = {"config": config, "systems": {name: json.loads(system_spec(config, name).to_json()) for name in SYSTEMS}}
    if REAL_DATA:
        resolved["datasets"] = {name: REGISTRY[name] for name in DATASETS}
    return json.dumps(resolved, sort_keys=True)


def output_dir(wildcards, output):
    """The directory of a rule's first output (a command that writes several files there)."""
    return os.path.dirname(output[0])


def cleaning_report_flag(wildcards, input):
    return ["--cleaning-report", input.cleaning[0]] if input.cleaning else []
