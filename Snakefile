# The A2D pipeline: corpus -> SentencePiece -> encoded data -> teacher -> students -> beam search
# -> sacrebleu -> results table. Wiring only; every step is a `python -m a2d` command.

# An experiment given with --configfile replaces the default rather than being merged into it.
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/deploy.smk"


report: "workflow/report/workflow.rst"


rule all:
    input:
        f"{RESULTS}/tables/results.md",
        f"{RESULTS}/tables/results.csv",
        f"{RESULTS}/tables/results.tex",
        f"{RESULTS}/tables/provenance.json",
        HF_EXPORTS,
