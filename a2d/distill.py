"""Training objectives, and what the DeepSpeed engine trains: the student plus any training-only
parameters (the AAM).

The teacher is not in here: it stays frozen, outside the engine (`FrozenTeacher`), and the training
loop passes it in with each batch; the module runs it after the student, so that A2D takes the
teacher's attention maps layer by layer as they are computed. `forward` returns the loss to
back-propagate and every term (`LossTerms`) for logging.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from a2d import losses
from a2d.align import AttentionAlignment, RowMasks
from a2d.config import MethodConfig, ModelConfig, pkd_layer_map
from a2d.data import Batch
from a2d.losses import LossTerms
from a2d.model import PAD_ID, AttentionSink, Seq2SeqOutput, Transformer


class DistillationModule(nn.Module):
    def __init__(self, student: Transformer, method: MethodConfig, teacher_cfg: ModelConfig | None = None):
        super().__init__()
        self.student = student
        self.method = method
        if method.needs_teacher and teacher_cfg is None:
            raise ValueError(f"method {method.name!r} needs a teacher")
        if teacher_cfg is not None:
            method.check_fits(student.cfg, teacher_cfg)
        self.teacher_heads = teacher_cfg.heads if teacher_cfg else None
        self.alignment = None
        if method.name == "a2d":
            factors = method.a2d
            self.alignment = AttentionAlignment(student.cfg, teacher_cfg, method.attention_types,
                                                normalised=factors.aam == "normalised", layerwise=method.layerwise,
                                                reduction=factors.attention_reduction)
        self.projection = None  # student width -> teacher width for hidden-state losses, training-only
        if method.name in ("pkd", "alp_kd") and student.cfg.d_model != teacher_cfg.d_model:
            self.projection = nn.Linear(student.cfg.d_model, teacher_cfg.d_model, bias=False)

    def feature_loss(self, student: Seq2SeqOutput, teacher: Seq2SeqOutput, batch: Batch) -> Tensor:
        """PKD, ALP-KD or MiniLMv2 over the encoder (source positions) and decoder (target positions)."""
        T = batch.prev.size(1)
        causal = torch.ones(T, T, dtype=torch.bool, device=batch.prev.device).tril()
        stacks = (("encoder", student.hidden.encoder, teacher.hidden.encoder, batch.src != PAD_ID,
                   (batch.src != PAD_ID)[:, None, None, :]),
                  ("decoder", student.hidden.decoder, teacher.hidden.decoder, batch.mask, causal))
        total = 0.0
        for stack, s_states, t_states, mask, allowed in stacks:
            if self.method.name == "minilm":
                s_qkv = self.student.self_attention_vectors(stack, s_states[-2])
                t_qkv = teacher.self_attention_vectors[stack]
                total = total + losses.minilm_relation_loss(s_qkv, t_qkv, self.method.relation_heads, allowed, mask)
                continue
            project = self.projection or (lambda x: x)
            s_states = [project(s) for s in s_states[1:]]  # layer outputs, without the embeddings
            if self.method.name == "pkd":
                layer_map = pkd_layer_map(len(s_states), len(t_states) - 1, self.method.pkd_mapping)
                total = total + losses.pkd_loss(s_states, t_states[1:], layer_map, mask)
            else:
                total = total + losses.alp_kd_loss(s_states, t_states[1:], mask)
        return total

    def forward(self, batch: Batch, teacher: FrozenTeacher | None, epoch: int, step: int) -> tuple[Tensor, LossTerms]:
        m = self.method
        out = self.student(batch.src, batch.prev, return_attention=m.needs_attention, return_hidden=m.needs_hidden)
        if m.name == "a2d":
            terms = self.a2d_terms(out, teacher, batch, epoch, step)
        else:
            terms = self.terms(out, teacher(batch) if m.needs_teacher else None, batch)
        # Gradient divided by the number of target tokens, as fairseq does.
        return terms.total / batch.mask.sum(), terms

    def terms(self, out: Seq2SeqOutput, teacher: Seq2SeqOutput | None, batch: Batch) -> LossTerms:
        """Label-smoothed CE, plus word-level KD and a feature loss where the method has them."""
        m = self.method
        if not m.needs_teacher:
            ls, nll = losses.label_smoothed_nll(out.logits, batch.target, batch.mask, m.label_smoothing)
            return losses.LossTerms(total=ls, nll=nll, ls=ls)
        # word-level KD, on every token or (selective_kd) the hardest ones
        kd_mask = batch.mask if m.name != "selective_kd" else losses.hardest_tokens(
            out.logits, batch.target, batch.mask, m.selective_fraction)
        w = losses.word_level_loss(out.logits, teacher.logits, batch.target, batch.mask, alpha=m.alpha,
                                   epsilon=m.label_smoothing, temperature=m.temperature, kd_mask=kd_mask)
        terms = losses.LossTerms(total=w.word, nll=w.nll, ls=w.ls, kd=w.kd)
        if m.needs_hidden:
            terms.feature = self.feature_loss(out, teacher, batch)
            terms.total = terms.total + m.feature_weight * terms.feature
        return terms

    def a2d_terms(self, out: Seq2SeqOutput, teacher: FrozenTeacher, batch: Batch, epoch: int, step: int) -> LossTerms:
        """The student's maps into the AAM, the teacher's streamed into the loss as it runs."""
        m, factors = self.method, self.method.a2d
        rows = factors.attention_distribution == "rows"
        alignment = self.alignment(out.attention, attention_row_masks(batch) if rows else None)
        teacher_out = teacher(batch, attention_sink=alignment)
        decay = losses.a2d_decay(m.beta, m.gamma, epoch if m.decay_every == "epoch" else step)
        return losses.a2d_loss(
            out.logits, teacher_out.logits, batch.target, batch.mask, alignment.kls(), weights=m.weights,
            alpha=m.alpha, epsilon=m.label_smoothing, temperature=m.temperature, kd=factors.kd_loss,
            per_padded_position=factors.word_normaliser == "padded_positions", decay=decay)


def attention_row_masks(batch: Batch) -> dict[str, RowMasks]:
    """Per attention type, the real query rows and the keys each may attend to: real source tokens,
    or (decoder self-attention) the causal prefix; padded target rows are not queries."""
    source = batch.src != PAD_ID
    T = batch.prev.size(1)
    causal = torch.ones(T, T, dtype=torch.bool, device=batch.prev.device).tril()
    source_keys = source[:, None, None, :]
    return {"encoder_self": RowMasks(source, source_keys), "decoder_self": RowMasks(batch.mask, causal[None, None]),
            "decoder_cross": RowMasks(batch.mask, source_keys)}


class FrozenTeacher:
    """The teacher in eval mode without gradients, kept out of the engine: called by the module on
    the same batch, teacher-forced with the gold prefix. `attention_sink` takes its attention maps
    layer by layer (A2D); without it, none are computed. Its logits are deferred: the word-level
    loss computes them a few hundred positions at a time."""

    def __init__(self, model: Transformer, method: MethodConfig):
        self.model = model.eval().requires_grad_(False)
        self.method = method

    @property
    def cfg(self) -> ModelConfig:
        return self.model.cfg

    @torch.no_grad()
    def __call__(self, batch: Batch, attention_sink: AttentionSink | None = None) -> Seq2SeqOutput:
        model, method = self.model, self.method
        out = model(batch.src, batch.prev, return_hidden=method.needs_hidden, attention_sink=attention_sink,
                    defer_logits=True)
        if method.name == "minilm":
            out.self_attention_vectors = {"encoder": model.self_attention_vectors("encoder", out.hidden.encoder[-2]),
                                          "decoder": model.self_attention_vectors("decoder", out.hidden.decoder[-2])}
        return out
