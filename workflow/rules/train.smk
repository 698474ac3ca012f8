rule train:
    """Teacher or student: one rule, the system's spec decides. The checkpoint directory is a
    param, not an output, so that Snakemake never deletes it and a re-run resumes from it.
    Resources (set by the profile): `processes` per node (torchrun starts them when above 1; one
    per GPU), `nodes` (srun starts torchrun on each), `gpu` or `gres` (the GPUs asked of SLURM, which
    training checks CUDA sees)."""
    input:
        unpack(teacher_inputs),
        train=training_data,
        valid=f"{RESULTS}/data/valid.safetensors",
        valid_ref=f"{RESULTS}/corpus/valid.tgt",
        src_spm=SRC_SPM,
        tgt_spm=TGT_SPM,
    output:
        model=f"{RESULTS}/models/{{system}}/model.safetensors",
        summary=f"{RESULTS}/models/{{system}}/train.json",
    params:
        spec=spec_json,
        teacher=teacher_flag,
        checkpoint_dir=f"{RESULTS}/checkpoints/{{system}}",
    log:
        f"{LOGS}/train/{{system}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train/{{system}}.tsv"
    threads: 2
    resources:
        processes=1,
        nodes=1,
        gpu=0,
        gres="",
    shell:
        "python -m a2d train --spec {params.spec:q} --train {input.train:q} --valid {input.valid:q}"
        " --valid-ref {input.valid_ref:q} --src-spm {input.src_spm:q} --tgt-spm {input.tgt_spm:q} {params.teacher:q}"
        " --checkpoint-dir {params.checkpoint_dir:q} --output {output.model:q} --summary {output.summary:q}"
        " --threads {threads} --processes {resources.processes:q} --nodes {resources.nodes:q}"
        " --gpu {resources.gpu:q} --gres={resources.gres:q}"
        " 2> {log:q}"
