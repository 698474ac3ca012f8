rule export:
    """A trained model as a CTranslate2 model for deployment (int8 by default). The model file holds the
    translation model only: no attention alignment module, projections or teacher."""
    input:
        model=f"{RESULTS}/models/{{system}}/model.safetensors",
        src_spm=SRC_SPM,
        tgt_spm=TGT_SPM,
    output:
        directory(f"{RESULTS}/deploy/{{system}}.ct2"),
    params:
        export=EXPORT,
    log:
        f"{LOGS}/export/{{system}}.log",
    shell:
        "python -m a2d export --model {input.model:q} --src-spm {input.src_spm:q} --tgt-spm {input.tgt_spm:q}"
        " --export {params.export:q} --output {output:q} 2> {log:q}"


rule export_hf:
    """A trained model as a Hugging Face transformers directory (model, tokenizer, generation config
    with the experiment's search), built when `export.huggingface` is set or asked for by name."""
    input:
        model=f"{RESULTS}/models/{{system}}/model.safetensors",
        src_spm=SRC_SPM,
        tgt_spm=TGT_SPM,
    output:
        directory(f"{RESULTS}/deploy/{{system}}.hf"),
    params:
        export=EXPORT,
        decoding=DECODING,
        languages=LANGS if REAL_DATA else ["src", "tgt"],
    log:
        f"{LOGS}/export_hf/{{system}}.log",
    shell:
        "python -m a2d export --format hf --model {input.model:q} --src-spm {input.src_spm:q}"
        " --tgt-spm {input.tgt_spm:q} --export {params.export:q} --decoding {params.decoding:q}"
        " --languages {params.languages:q}"
        " --output {output:q} 2> {log:q}"
