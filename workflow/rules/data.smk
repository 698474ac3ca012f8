if not REAL_DATA:

    rule synthesize_corpus:
        output:
            expand(f"{RESULTS}/corpus/{{split}}.{{side}}", split=["train", "valid", "test"], side=["src", "tgt"]),
        params:
            synthetic=section(config, "synthetic").to_json(),
            out_dir=output_dir,
        log:
            f"{LOGS}/synthesize_corpus.log",
        benchmark:
            f"{RESULTS}/benchmarks/synthesize_corpus.tsv"
        shell:
            "python -m a2d synthesize --synthetic {params.synthetic:q} --out-dir {params.out_dir:q} 2> {log:q}"


if REAL_DATA:

    rule fetch:
        """One side of a registry dataset: from the mirror if set, else its official source; sha256-checked."""
        input:
            own_file,
        output:
            f"{RESULTS}/raw/{{dataset}}.{{lang}}",
        params:
            side=registry_side,
        wildcard_constraints:
            dataset="|".join(map(re.escape, DATASETS)),
            lang="|".join(map(re.escape, LANGS)),
        log:
            f"{LOGS}/fetch/{{dataset}}.{{lang}}.log",
        benchmark:
            f"{RESULTS}/benchmarks/fetch/{{dataset}}.{{lang}}.tsv"
        shell:
            "python -m a2d fetch --name {wildcards.dataset:q} --lang {wildcards.lang:q} --side {params.side:q}"
            " --mirror={MIRROR:q} --output {output:q} 2> {log:q}"

    rule prepare_eval:
        """A validation or test set: concatenated, preprocessed like the training data, never filtered."""
        input:
            src=eval_sources,
            tgt=eval_targets,
        output:
            src=f"{RESULTS}/corpus/{{eval_split}}.src",
            tgt=f"{RESULTS}/corpus/{{eval_split}}.tgt",
        params:
            spec=eval_split_spec,
        log:
            f"{LOGS}/prepare/{{eval_split}}.log",
        benchmark:
            f"{RESULTS}/benchmarks/prepare/{{eval_split}}.tsv"
        shell:
            "python -m a2d prepare --spec {params.spec:q} --src {input.src:q} --tgt {input.tgt:q}"
            " --output-src {output.src:q} --output-tgt {output.tgt:q} 2> {log:q}"

    rule prepare_train:
        """The training corpus: preprocessed, cleaned against the evaluation sets (report beside it), and
        the `held_out` evaluation splits drawn from it."""
        input:
            src=raw_files("train", LANGS[0]),
            tgt=raw_files("train", LANGS[1]),
            eval_src=expand(f"{RESULTS}/corpus/{{split}}.src", split=FROM_DATASETS),
            eval_tgt=expand(f"{RESULTS}/corpus/{{split}}.tgt", split=FROM_DATASETS),
        output:
            src=f"{RESULTS}/corpus/train.src",
            tgt=f"{RESULTS}/corpus/train.tgt",
            report=f"{RESULTS}/corpus/train.cleaning.json",
            held_out_src=expand(f"{RESULTS}/corpus/{{split}}.src", split=HELD_OUT),
            held_out_tgt=expand(f"{RESULTS}/corpus/{{split}}.tgt", split=HELD_OUT),
        params:
            spec=train_split_spec,
            eval_names=FROM_DATASETS,
        log:
            f"{LOGS}/prepare/train.log",
        benchmark:
            f"{RESULTS}/benchmarks/prepare/train.tsv"
        shell:
            "python -m a2d prepare --spec {params.spec:q} --src {input.src:q} --tgt {input.tgt:q}"
            " --eval-src {input.eval_src:q} --eval-tgt {input.eval_tgt:q} --eval-names {params.eval_names:q}"
            " --output-src {output.src:q} --output-tgt {output.tgt:q} --report {output.report:q}"
            " --held-out-src {output.held_out_src:q} --held-out-tgt {output.held_out_tgt:q} 2> {log:q}"


rule train_sentencepiece:
    """The joint model on both sides of the training corpus, or one side's own model."""
    input:
        spm_inputs,
    output:
        model=f"{RESULTS}/spm/{{spm_name}}.model",
    params:
        sentencepiece=SUBWORDS,
    log:
        f"{LOGS}/train_sentencepiece/{{spm_name}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train_sentencepiece/{{spm_name}}.tsv"
    threads: 2
    shell:
        "python -m a2d train-spm --input {input:q} --model {output.model:q}"
        " --sentencepiece {params.sentencepiece:q} --threads {threads} 2> {log:q}"


rule encode:
    input:
        src_spm=SRC_SPM,
        tgt_spm=TGT_SPM,
        src=f"{RESULTS}/corpus/{{split}}.src",
        tgt=f"{RESULTS}/corpus/{{split}}.tgt",
    output:
        f"{RESULTS}/data/{{split}}.safetensors",
    log:
        f"{LOGS}/encode/{{split}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/encode/{{split}}.tsv"
    shell:
        "python -m a2d encode --src-spm {input.src_spm:q} --tgt-spm {input.tgt_spm:q} --src {input.src:q} --tgt {input.tgt:q} --output {output:q} 2> {log:q}"


rule shard_train_sources:
    """Sequence-level KD, step 1: split the training sources for parallel teacher translation."""
    input:
        f"{RESULTS}/corpus/train.src",
    output:
        expand(f"{RESULTS}/corpus/{{shard}}.src", shard=SEQ_KD_SHARDS),
    log:
        f"{LOGS}/shard_train_sources.log",
    benchmark:
        f"{RESULTS}/benchmarks/shard_train_sources.tsv"
    shell:
        "python -m a2d shard --input {input:q} --outputs {output:q} 2> {log:q}"


rule merge_seq_kd:
    """Sequence-level KD, step 3: the teacher's shard translations (rule translate), merged in order
    into the corpus the Seq-KD students train on."""
    input:
        source=f"{RESULTS}/corpus/train.src",
        shard_sources=expand(f"{RESULTS}/corpus/{{shard}}.src", shard=SEQ_KD_SHARDS),
        shard_outputs=expand(f"{RESULTS}/translations/teacher.{{shard}}.txt", shard=SEQ_KD_SHARDS),
    output:
        src=f"{RESULTS}/corpus/train_seq_kd.src",
        tgt=f"{RESULTS}/corpus/train_seq_kd.tgt",
    log:
        f"{LOGS}/merge_seq_kd.log",
    benchmark:
        f"{RESULTS}/benchmarks/merge_seq_kd.tsv"
    shell:
        "python -m a2d merge-shards --source {input.source:q} --shard-sources {input.shard_sources:q}"
        " --shard-outputs {input.shard_outputs:q} --src-output {output.src:q} --tgt-output {output.tgt:q} 2> {log:q}"
