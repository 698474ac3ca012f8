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
        beam_size=DECODING.beam_size,
        length_penalty=DECODING.length_penalty,
        max_len_a=DECODING.max_len_a,
        max_len_b=DECODING.max_len_b,
        batch_size=DECODING.batch_size,
    log:
        f"{LOGS}/translate/{{system}}.{{source}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/translate/{{system}}.{{source}}.tsv"
    shell:
        "python -m a2d translate --model {input.model:q} --src-spm {input.src_spm:q} --tgt-spm {input.tgt_spm:q} --input {input.src:q}"
        " --output {output.text:q} --speed {output.speed:q} --beam-size {params.beam_size:q} --length-penalty {params.length_penalty:q}"
        " --max-len-a {params.max_len_a:q} --max-len-b {params.max_len_b:q} --batch-size {params.batch_size:q}"
        " --threads {threads} 2> {log:q}"


rule evaluate:
    input:
        hyp=f"{RESULTS}/translations/{{system}}.{{test_set}}.txt",
        ref=f"{RESULTS}/corpus/{{test_set}}.tgt",
    output:
        f"{RESULTS}/metrics/{{system}}.{{test_set}}.json",
    params:
        scoring=SCORING_FLAGS,
    log:
        f"{LOGS}/evaluate/{{system}}.{{test_set}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/evaluate/{{system}}.{{test_set}}.tsv"
    shell:
        "python -m a2d evaluate --hyp {input.hyp:q} --ref {input.ref:q} --system {wildcards.system:q}"
        " --test-set {wildcards.test_set:q} {params.scoring:q} --output {output:q} 2> {log:q}"


rule significance:
    """Paired bootstrap of every student against the no-KD and Word-KD students on one test set."""
    input:
        hyps=expand(f"{RESULTS}/translations/{{system}}.{{{{test_set}}}}.txt", system=SYSTEMS),
        ref=f"{RESULTS}/corpus/{{test_set}}.tgt",
    output:
        f"{RESULTS}/significance/{{test_set}}.json",
    params:
        systems=SYSTEMS,
        baselines=BASELINES,
        scoring=SCORING_FLAGS + BOOTSTRAP_FLAGS,
    log:
        f"{LOGS}/significance/{{test_set}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/significance/{{test_set}}.tsv"
    shell:
        "python -m a2d significance --ref {input.ref:q} --test-set {wildcards.test_set:q} --systems {params.systems:q}"
        " --hyps {input.hyps:q} --baselines {params.baselines:q} {params.scoring:q} --output {output:q} 2> {log:q}"


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
    output:
        markdown=f"{RESULTS}/tables/results.md",
        csv=report(f"{RESULTS}/tables/results.csv", caption="../report/results.rst", category="Results"),
        latex=f"{RESULTS}/tables/results.tex",
        provenance=f"{RESULTS}/tables/provenance.json",
    params:
        out_dir=f"{RESULTS}/tables",
        baselines=BASELINES,
        level=EVALUATION.significance_level,
        samples=EVALUATION.bootstrap_samples,
        config=lambda wildcards: json.dumps(provenance_config(), sort_keys=True),
        cleaning=lambda wildcards, input: ["--cleaning-report", input.cleaning[0]] if input.cleaning else [],
        overlap_warning=OVERLAP_WARNING,
    log:
        f"{LOGS}/tables.log",
    benchmark:
        f"{RESULTS}/benchmarks/tables.tsv"
    shell:
        "python -m a2d tables --metrics {input.metrics:q} --summaries {input.summaries:q}"
        " --significance {input.significance:q} --baselines {params.baselines:q} --level {params.level:q}"
        " --samples {params.samples:q} --config {params.config:q} --figures {input.figures:q}"
        " --speeds {input.speeds:q} --models {input.models:q} --exports {input.exports:q}"
        " {params.cleaning:q} --overlap-warning {params.overlap_warning:q}"
        " --out-dir {params.out_dir:q} 2> {log:q}"
