rule synthesize_corpus:
    output:
        expand(f"{RESULTS}/corpus/{{split}}.{{side}}", split=["train", "valid", "test"], side=["src", "tgt"]),
    params:
        seed=config["corpus"]["synthetic"]["seed"],
        train=config["corpus"]["synthetic"]["train"],
        valid=config["corpus"]["synthetic"]["valid"],
        test=config["corpus"]["synthetic"]["test"],
        out_dir=f"{RESULTS}/corpus",
    log:
        f"{LOGS}/synthesize_corpus.log",
    benchmark:
        f"{RESULTS}/benchmarks/synthesize_corpus.tsv"
    shell:
        "python -m a2d synthesize --seed {params.seed:q} --train {params.train:q} --valid {params.valid:q}"
        " --test {params.test:q} --out-dir {params.out_dir:q} 2> {log:q}"


rule train_sentencepiece:
    input:
        src=f"{RESULTS}/corpus/train.src",
        tgt=f"{RESULTS}/corpus/train.tgt",
    output:
        model=f"{RESULTS}/spm/spm.model",
    params:
        vocab_size=config["sentencepiece"]["vocab_size"],
        model_type=config["sentencepiece"]["model_type"],
        seed=config["sentencepiece"]["seed"],
    log:
        f"{LOGS}/train_sentencepiece.log",
    benchmark:
        f"{RESULTS}/benchmarks/train_sentencepiece.tsv"
    threads: 2
    shell:
        "python -m a2d train-spm --input {input.src:q} {input.tgt:q} --model {output.model:q}"
        " --vocab-size {params.vocab_size:q} --model-type {params.model_type:q} --seed {params.seed:q}"
        " --threads {threads} 2> {log:q}"


rule encode:
    input:
        spm=f"{RESULTS}/spm/spm.model",
        src=f"{RESULTS}/corpus/{{split}}.src",
        tgt=f"{RESULTS}/corpus/{{split}}.tgt",
    output:
        f"{RESULTS}/data/{{split}}.safetensors",
    log:
        f"{LOGS}/encode/{{split}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/encode/{{split}}.tsv"
    shell:
        "python -m a2d encode --spm {input.spm:q} --src {input.src:q} --tgt {input.tgt:q} --output {output:q} 2> {log:q}"


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
