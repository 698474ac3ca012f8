from a2d.config import search_config, seq_kd_config, system_spec, systems, validate_config

# Structure against workflow/schemas/config.schema.yaml, then values (every system's shape).
validate_config(config, "config")

RESULTS = f"results/{config['experiment']}"
LOGS = f"logs/{config['experiment']}"
SYSTEMS = systems(config)
TEST_SETS = ["test"]
DECODING = search_config(config)
# Sequence-level KD: the teacher translates the training sources in this many parallel jobs.
SEQ_KD_SHARDS = [f"train_shard{i}" for i in range(seq_kd_config(config).shards)]
A2D_SYSTEMS = [name for name in SYSTEMS if system_spec(config, name).method.name == "a2d"]

wildcard_constraints:
    system="|".join(SYSTEMS),
    a2d_system="|".join(A2D_SYSTEMS) or "(?!)",
    test_set="|".join(TEST_SETS),
    source="|".join(TEST_SETS + SEQ_KD_SHARDS),
    split="train|valid|test|train_seq_kd",


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
