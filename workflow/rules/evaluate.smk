rule translate:
    """A system translates a corpus file: a test set, or a shard of training sources (Seq-KD)."""
    input:
        model=f"{RESULTS}/models/{{system}}/model.safetensors",
        src_spm=SRC_SPM,
        tgt_spm=TGT_SPM,
        src=f"{RESULTS}/corpus/{{source}}.src",
    output:
        text=f"{RESULTS}/translations/{{system}}.{{source}}.txt",
        speed=f"{RESULTS}/translations/{{system}}.{{source}}.speed.json",
    params:
        decoding=DECODING,
    log:
        f"{LOGS}/translate/{{system}}.{{source}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/translate/{{system}}.{{source}}.tsv"
    shell:
        "python -m a2d translate --model {input.model:q} --src-spm {input.src_spm:q} --tgt-spm {input.tgt_spm:q} --input {input.src:q}"
        " --output {output.text:q} --speed {output.speed:q} --decoding {params.decoding:q} --threads {threads} 2> {log:q}"


rule evaluate:
    input:
        hyp=f"{RESULTS}/translations/{{system}}.{{test_set}}.txt",
        ref=f"{RESULTS}/corpus/{{test_set}}.tgt",
        src=f"{RESULTS}/corpus/{{test_set}}.src",
    output:
        f"{RESULTS}/metrics/{{system}}.{{test_set}}.json",
    params:
        evaluation=EVALUATION,
    log:
        f"{LOGS}/evaluate/{{system}}.{{test_set}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/evaluate/{{system}}.{{test_set}}.tsv"
    shell:
        "python -m a2d evaluate --hyp {input.hyp:q} --ref {input.ref:q} --src {input.src:q} --system {wildcards.system:q}"
        " --test-set {wildcards.test_set:q} --evaluation {params.evaluation:q} --output {output:q} 2> {log:q}"


rule significance:
    """Paired test (bootstrap or approximate randomisation) of every student against the no-KD and Word-KD
    students on one test set."""
    input:
        hyps=expand(f"{RESULTS}/translations/{{system}}.{{{{test_set}}}}.txt", system=SYSTEMS),
        ref=f"{RESULTS}/corpus/{{test_set}}.tgt",
    output:
        f"{RESULTS}/significance/{{test_set}}.json",
    params:
        systems=SYSTEMS,
        baselines=json.dumps(BASELINES),
        evaluation=EVALUATION,
    log:
        f"{LOGS}/significance/{{test_set}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/significance/{{test_set}}.tsv"
    shell:
        "python -m a2d significance --ref {input.ref:q} --test-set {wildcards.test_set:q} --systems {params.systems:q}"
        " --hyps {input.hyps:q} --baselines {params.baselines:q} --evaluation {params.evaluation:q} --output {output:q}"
        " 2> {log:q}"


rule plot_training:
    input:
        f"{RESULTS}/models/{{system}}/train.json",
    output:
        report(f"{RESULTS}/figures/{{system}}.curves.png", caption="../report/curves.rst", category="Training curves",
               labels={"system": "{system}"}),
    log:
        f"{LOGS}/plot_training/{{system}}.log",
    shell:
        "python -m a2d plot-training --summary {input:q} --output {output:q} 2> {log:q}"


rule plot_alignment:
    input:
        f"{RESULTS}/models/{{a2d_system}}/train.json",
    output:
        report(f"{RESULTS}/figures/{{a2d_system}}.aam.png", caption="../report/aam.rst", category="Attention alignment",
               labels={"system": "{a2d_system}"}),
    log:
        f"{LOGS}/plot_alignment/{{a2d_system}}.log",
    shell:
        "python -m a2d plot-alignment --summary {input:q} --output {output:q} 2> {log:q}"


rule tables:
    input:
        metrics=expand(f"{RESULTS}/metrics/{{system}}.{{test_set}}.json", system=SYSTEMS, test_set=TEST_SETS),
        summaries=expand(f"{RESULTS}/models/{{system}}/train.json", system=SYSTEMS),
        significance=expand(f"{RESULTS}/significance/{{test_set}}.json", test_set=TEST_SETS) if BASELINES else [],
        cleaning=[f"{RESULTS}/corpus/train.cleaning.json"] if REAL_DATA else [],
        figures=expand(f"{RESULTS}/figures/{{system}}.curves.png", system=SYSTEMS)
        + expand(f"{RESULTS}/figures/{{system}}.aam.png", system=A2D_SYSTEMS),
        speeds=expand(f"{RESULTS}/translations/{{system}}.{{test_set}}.speed.json", system=SYSTEMS, test_set=TEST_SETS),
        models=expand(f"{RESULTS}/models/{{system}}/model.safetensors", system=SYSTEMS),
        exports=expand(f"{RESULTS}/deploy/{{system}}.ct2", system=SYSTEMS),
        benchmarks=expand(f"{RESULTS}/benchmarks/train/{{system}}.tsv", system=SYSTEMS),
    output:
        markdown=f"{RESULTS}/tables/results.md",
        csv=report(f"{RESULTS}/tables/results.csv", caption="../report/results.rst", category="Results"),
        latex=f"{RESULTS}/tables/results.tex",
        provenance=f"{RESULTS}/tables/provenance.json",
        training=f"{RESULTS}/tables/training.md",
        training_csv=f"{RESULTS}/tables/training.csv",
    params:
        out_dir=output_dir,
        baselines=json.dumps(BASELINES),
        evaluation=EVALUATION,
        config=provenance_json,
        cleaning_report=cleaning_report_flag,
        cleaning=CLEANING,
    log:
        f"{LOGS}/tables.log",
    benchmark:
        f"{RESULTS}/benchmarks/tables.tsv"
    shell:
        "python -m a2d tables --metrics {input.metrics:q} --summaries {input.summaries:q}"
        " --significance {input.significance:q} --baselines {params.baselines:q} --evaluation {params.evaluation:q}"
        " --config {params.config:q} --figures {input.figures:q}"
        " --speeds {input.speeds:q} --models {input.models:q} --exports {input.exports:q} --benchmarks {input.benchmarks:q}"
        " {params.cleaning_report:q} --cleaning {params.cleaning:q}"
        " --out-dir {params.out_dir:q} 2> {log:q}"
