"""The Hugging Face `transformers` export: a trained a2d Transformer as a directory that
`AutoModelForSeq2SeqLM` and `AutoTokenizer` load with `from_pretrained` and that translates with
`generate()`, its generation config holding the experiment's search.

Which architecture: the one of `transformers` whose computation is a2d's, so that the weights map
one to one and nothing is approximated. Both keep their sinusoidal tables as weights that
`from_pretrained` loads (Marian's and M2M100's are recomputed by their own formula, which differs
from a2d's fairseq table), scale embeddings by sqrt(d_model), use ReLU and no LayerNorm on the
embeddings (BART and mBART have one):
- post-norm students: FSMT (fairseq's WMT19 models), with a source and a target vocabulary of their
  own sizes; its positions start at the padding index + 1, so a2d's table sits one row lower.
- pre-norm students: Pegasus (LayerNorm before each sublayer and after each stack). It has one
  vocabulary size: both tables are padded to the larger one, and the output rows beyond the target
  vocabulary get a bias of -1e9, so that they take no probability.
Untied in the export (decoder input and output embeddings are one a2d table): the values are
a2d's, and each transformers model keeps its own tensors. The tokenizer is transformers'
MarianTokenizer: a source and a target SentencePiece model with their vocabularies, EOS after
every source, as a2d's encoder reads it.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
from torch import Tensor

from a2d.config import SearchConfig
from a2d.data import load_sentencepiece
from a2d.files import atomic_directory
from a2d.model import BOS_ID, EOS_ID, PAD_ID, Transformer

EXCLUDED_LOGIT = -1e9  # the bias of output rows that are no target piece: exp() of it is 0 in fp32


def _config(model: Transformer, source: str, target: str):
    """The transformers config of a2d's shape: FSMT (post-norm) or Pegasus (pre-norm)."""
    from transformers import FSMTConfig, PegasusConfig

    cfg = model.cfg
    shape = dict(d_model=cfg.d_model, encoder_layers=cfg.encoder_layers, decoder_layers=cfg.decoder_layers,
                 encoder_attention_heads=cfg.heads, decoder_attention_heads=cfg.heads, encoder_ffn_dim=cfg.ffn,
                 decoder_ffn_dim=cfg.ffn, max_position_embeddings=cfg.max_positions, activation_function="relu",
                 scale_embedding=True, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
                 pad_token_id=PAD_ID, bos_token_id=BOS_ID, eos_token_id=EOS_ID, decoder_start_token_id=BOS_ID,
                 forced_eos_token_id=None, tie_word_embeddings=False, is_encoder_decoder=True)
    if cfg.pre_norm:
        return PegasusConfig(vocab_size=max(cfg.vocab_size, cfg.source_vocab_size), **shape)
    return FSMTConfig(langs=[source, target], src_vocab_size=cfg.source_vocab_size, tgt_vocab_size=cfg.vocab_size,
                      **shape)


def _rows(table: Tensor, rows: int) -> Tensor:
    """`table` padded with zero rows to `rows`."""
    return torch.cat([table, table.new_zeros(rows - len(table), table.size(1))]) if rows > len(table) else table


def _layer_weights(model: Transformer) -> dict[str, Tensor]:
    """Every layer's weights by transformers' names (BART's layout, shared by FSMT and Pegasus)."""
    out = {}

    def attention(prefix: str, attn) -> None:
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            for kind in ("weight", "bias"):
                out[f"{prefix}.{name}.{kind}"] = getattr(getattr(attn, name), kind)

    def norm(prefix: str, layer_norm) -> None:
        out[f"{prefix}.weight"], out[f"{prefix}.bias"] = layer_norm.weight, layer_norm.bias

    for stack, layers in (("encoder", model.encoder_layers), ("decoder", model.decoder_layers)):
        for i, layer in enumerate(layers):
            prefix = f"model.{stack}.layers.{i}"
            attention(f"{prefix}.self_attn", layer.self_attn)
            norm(f"{prefix}.self_attn_layer_norm", layer.self_attn_block.norm)
            if stack == "decoder":
                attention(f"{prefix}.encoder_attn", layer.cross_attn)
                norm(f"{prefix}.encoder_attn_layer_norm", layer.cross_attn_block.norm)
            for name in ("fc1", "fc2"):
                out[f"{prefix}.{name}.weight"] = getattr(layer.ffn, name).weight
                out[f"{prefix}.{name}.bias"] = getattr(layer.ffn, name).bias
            norm(f"{prefix}.final_layer_norm", layer.ffn_block.norm)
    return out


def hf_state_dict(model: Transformer, config) -> dict[str, Tensor]:
    """The weights of the transformers model of `config`, from a2d's."""
    cfg, positions = model.cfg, model.positions.float()
    out = _layer_weights(model)
    source, target = model.source_embedding.weight, model.tgt_embed.weight
    if cfg.pre_norm:  # Pegasus
        rows = config.vocab_size
        out.update({"model.shared.weight": _rows(target, rows), "model.encoder.embed_tokens.weight": _rows(source, rows),
                    "model.decoder.embed_tokens.weight": _rows(target, rows), "lm_head.weight": _rows(target, rows),
                    "model.encoder.embed_positions.weight": positions, "model.decoder.embed_positions.weight": positions})
        bias = torch.zeros(1, rows)
        bias[:, cfg.vocab_size:] = EXCLUDED_LOGIT
        out["final_logits_bias"] = bias
        norm = {"model.encoder.layer_norm": model.encoder_norm, "model.decoder.layer_norm": model.decoder_norm}
        for prefix, layer_norm in norm.items():
            out[f"{prefix}.weight"], out[f"{prefix}.bias"] = layer_norm.weight, layer_norm.bias
    else:  # FSMT: position p of a sequence is row padding index + 1 + p
        shifted = torch.cat([positions.new_zeros(PAD_ID + 1, cfg.d_model), positions])
        out.update({"model.encoder.embed_tokens.weight": source, "model.decoder.embed_tokens.weight": target,
                    "model.decoder.output_projection.weight": target,
                    "model.encoder.embed_positions.weight": shifted, "model.decoder.embed_positions.weight": shifted})
    return {name: tensor.detach().float().cpu().clone() for name, tensor in out.items()}


def generation_config(decoding: SearchConfig, max_positions: int):
    """The experiment's search as far as generate() has it: beam size, length penalty, stopping
    when `beam_size` hypotheses have ended (fairseq's), PAD and BOS never emitted, at least min_len
    tokens. a2d's per-sentence length limit (max_len_a * source length + max_len_b) is not a
    generate() setting: the export caps at the model's positions; pass max_new_tokens to cap more."""
    from transformers import GenerationConfig

    beam = {"length_penalty": decoding.length_penalty, "early_stopping": True} if decoding.beam_size > 1 else {}
    return GenerationConfig(num_beams=decoding.beam_size, **beam, do_sample=False, max_length=max_positions,
                            min_new_tokens=max(decoding.min_len, 1), suppress_tokens=[PAD_ID, BOS_ID],
                            decoder_start_token_id=BOS_ID, bos_token_id=BOS_ID, eos_token_id=EOS_ID,
                            pad_token_id=PAD_ID)


def _tokenizer(directory: Path, src_spm: str, tgt_spm: str):
    """MarianTokenizer over the two SentencePiece models (or the joint one) and their vocabularies."""
    from transformers import MarianTokenizer

    def vocabulary(spm: str, name: str) -> str:
        sp = load_sentencepiece(spm)
        path = directory / name
        path.write_text(json.dumps({sp.id_to_piece(i): i for i in range(sp.get_piece_size())}, ensure_ascii=False),
                        encoding="utf-8")
        return str(path)

    separate = Path(src_spm).resolve() != Path(tgt_spm).resolve()
    return MarianTokenizer(src_spm, tgt_spm, vocabulary(src_spm, "source_vocab.json"),
                           target_vocab_file=vocabulary(tgt_spm, "target_vocab.json") if separate else None,
                           separate_vocabs=separate, model_max_length=10 ** 6)


def hf_model(model: Transformer, decoding: SearchConfig, languages: tuple[str, str] = ("src", "tgt")):
    """The transformers model computing what `model` computes, with the search as its generation config."""
    from transformers import AutoModelForSeq2SeqLM

    config = _config(model.eval(), *languages)
    exported = AutoModelForSeq2SeqLM.from_config(config)
    exported.load_state_dict(hf_state_dict(model, config), strict=True)
    exported.generation_config = generation_config(decoding, model.cfg.max_positions)
    return exported.eval()


def write_hf(model: Transformer, src_spm: str, tgt_spm: str, output_dir: str, decoding: SearchConfig,
             languages: tuple[str, str] = ("src", "tgt")) -> None:
    """Write the transformers directory `output_dir`, model and tokenizer (replaced whole, never
    half-written)."""
    exported = hf_model(model, decoding, languages)
    with atomic_directory(output_dir) as tmp, tempfile.TemporaryDirectory() as scratch:
        exported.save_pretrained(tmp)
        _tokenizer(Path(scratch), src_spm, tgt_spm).save_pretrained(tmp)


def export_hf(model_path: str, src_spm: str, tgt_spm: str, output_dir: str, decoding: SearchConfig,
              languages: tuple[str, str] = ("src", "tgt")) -> None:
    """`write_hf` for weights written by `train`."""
    from a2d.checkpoint import load_model

    try:
        import transformers  # noqa: F401
    except ImportError:
        raise ImportError("the Hugging Face export needs transformers (pinned in requirements.txt; "
                          "`make venv` installs it)") from None
    write_hf(load_model(model_path), src_spm, tgt_spm, output_dir, decoding, languages)
