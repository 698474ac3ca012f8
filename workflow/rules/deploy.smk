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
