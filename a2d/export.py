"""Deployable model: a trained a2d Transformer as a CTranslate2 model, int8 by default.

Only the translation model is exported: the exported student file holds no attention alignment
module, projections or teacher (training keeps those in its checkpoints). The model is described
through CTranslate2's Python specification API, weight by weight, so the mapping below is the
whole contract: fused query/key/value projections, LayerNorm after each sublayer (post-norm) or
before it plus a final one (pre-norm), scaled embeddings, our sinusoidal table, the output
projection tied to the target embedding.
"""

from __future__ import annotations

from pathlib import Path

import torch

from a2d.config import QUANTIZATIONS, SearchConfig
from a2d.data import load_sentencepiece
from a2d.files import atomic_directory
from a2d.model import BOS_ID, EOS_ID, UNK_ID, MultiHeadAttention, Transformer


def _array(t: torch.Tensor):
    return t.detach().float().cpu().numpy()


def _linear(spec, *linears: torch.nn.Linear) -> None:
    """One CTranslate2 linear from one or more of ours, their outputs stacked (fused projections)."""
    spec.weight = _array(torch.cat([lin.weight for lin in linears]))
    spec.bias = _array(torch.cat([lin.bias for lin in linears]))


def _norm(spec, norm: torch.nn.LayerNorm) -> None:
    spec.gamma, spec.beta = _array(norm.weight), _array(norm.bias)


def _attention(spec, attn: MultiHeadAttention, norm: torch.nn.LayerNorm, cross: bool) -> None:
    if cross:  # queries from the decoder; keys and values from the encoder output
        _linear(spec.linear[0], attn.q_proj)
        _linear(spec.linear[1], attn.k_proj, attn.v_proj)
    else:
        _linear(spec.linear[0], attn.q_proj, attn.k_proj, attn.v_proj)
    _linear(spec.linear[-1], attn.out_proj)
    _norm(spec.layer_norm, norm)


def transformer_spec(model: Transformer, source_pieces: list[str], target_pieces: list[str]):
    from ctranslate2.specs import TransformerSpec

    cfg = model.cfg
    spec = TransformerSpec.from_config((cfg.encoder_layers, cfg.decoder_layers), cfg.heads, pre_norm=cfg.pre_norm)
    positions = _array(model.positions)
    spec.encoder.embeddings[0].weight = _array(model.source_embedding.weight)
    spec.encoder.position_encodings.encodings = positions
    for layer_spec, layer in zip(spec.encoder.layer, model.encoder_layers):
        _attention(layer_spec.self_attention, layer.self_attn, layer.self_attn_block.norm, cross=False)
        _linear(layer_spec.ffn.linear_0, layer.ffn.fc1)
        _linear(layer_spec.ffn.linear_1, layer.ffn.fc2)
        _norm(layer_spec.ffn.layer_norm, layer.ffn_block.norm)
    spec.decoder.embeddings.weight = _array(model.tgt_embed.weight)
    spec.decoder.position_encodings.encodings = positions
    spec.decoder.projection.weight = _array(model.tgt_embed.weight)
    for layer_spec, layer in zip(spec.decoder.layer, model.decoder_layers):
        _attention(layer_spec.self_attention, layer.self_attn, layer.self_attn_block.norm, cross=False)
        _attention(layer_spec.attention, layer.cross_attn, layer.cross_attn_block.norm, cross=True)
        _linear(layer_spec.ffn.linear_0, layer.ffn.fc1)
        _linear(layer_spec.ffn.linear_1, layer.ffn.fc2)
        _norm(layer_spec.ffn.layer_norm, layer.ffn_block.norm)
    if cfg.pre_norm:
        _norm(spec.encoder.layer_norm, model.encoder_norm)
        _norm(spec.decoder.layer_norm, model.decoder_norm)
    spec.config.unk_token, spec.config.eos_token = target_pieces[UNK_ID], target_pieces[EOS_ID]
    spec.config.bos_token = spec.config.decoder_start_token = target_pieces[BOS_ID]
    spec.config.add_source_eos = True  # our encoder reads every source followed by EOS
    spec.register_source_vocabulary(source_pieces)
    spec.register_target_vocabulary(target_pieces)
    return spec


def write_ctranslate2(model: Transformer, source_pieces: list[str], target_pieces: list[str], output_dir: str,
                      quantization: str = "int8") -> int:
    """Write the CTranslate2 model directory `output_dir` (replaced whole, never half-written);
    returns its size in bytes."""
    from ctranslate2.converters.converter import Converter

    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization {quantization!r}: use one of {', '.join(QUANTIZATIONS)}")
    spec = transformer_spec(model.eval(), source_pieces, target_pieces)

    class FromSpec(Converter):
        def _load(self):
            return spec

    with atomic_directory(output_dir) as tmp:
        FromSpec().convert(str(tmp), quantization=quantization, force=True)
    return sum(f.stat().st_size for f in Path(output_dir).iterdir())


def export_ctranslate2(model_path: str, src_spm: str, tgt_spm: str, output_dir: str, quantization: str = "int8") -> int:
    """`write_ctranslate2` for weights written by `train`, with the subword models' pieces as vocabularies."""
    from a2d.checkpoint import load_model

    pieces = lambda path: [sp.id_to_piece(i) for sp in [load_sentencepiece(path)] for i in range(sp.get_piece_size())]  # noqa: E731
    return write_ctranslate2(load_model(model_path), pieces(src_spm), pieces(tgt_spm), output_dir, quantization)


def load_translator(model_dir: str, threads: int, compute_type: str = "default"):
    import ctranslate2

    return ctranslate2.Translator(model_dir, device="cpu", compute_type=compute_type, intra_threads=threads)


NEVER_EMITTED = [["<pad>"], ["<s>"]]  # a2d's SentencePiece names of PAD and BOS, which a2d.search never emits


def ctranslate2_translate(translator, sources: list[list[str]], cfg: SearchConfig, done=None) -> list[list[str]]:
    """Subword pieces in (without EOS), pieces out, in input order, decoded in length-sorted batches;
    `done(n)`, if given, hears of each batch's n sentences.

    CTranslate2 caps output length per call, not per sentence: each batch gets the cap of its
    longest source under a2d's rule (max_len_a * length + max_len_b, the length counting EOS),
    which is every sentence's own cap when batch_size is 1.
    """
    order = sorted(range(len(sources)), key=lambda i: len(sources[i]))
    outputs: list[list[str]] = [[] for _ in sources]
    for start in range(0, len(order), cfg.batch_size):
        ids = order[start:start + cfg.batch_size]
        cap = int(cfg.max_len_a * (len(sources[ids[-1]]) + 1) + cfg.max_len_b)
        results = translator.translate_batch([sources[i] for i in ids], beam_size=cfg.beam_size,
                                             length_penalty=cfg.length_penalty, max_decoding_length=cap,
                                             min_decoding_length=min(cfg.min_len, cap),
                                             suppress_sequences=NEVER_EMITTED, return_scores=False)
        for i, result in zip(ids, results):
            outputs[i] = result.hypotheses[0]
        if done:
            done(len(ids))
    return outputs
