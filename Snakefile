# The A2D pipeline: corpus -> SentencePiece -> encoded data -> teacher -> students -> beam search
# -> sacrebleu -> results table. Wiring only; every step is a `python -m a2d` command.

configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"


rule all:
    input:
        f"{RESULTS}/tables/results.md",
        f"{RESULTS}/tables/results.csv",
