"""Training objectives, and what the DeepSpeed engine trains: the student plus any training-only
parameters (the AAM).

The teacher is not in here: the training loop runs it frozen, outside the engine, and passes its
output in. `forward` returns the loss to back-propagate and every term (`LossTerms`) for logging.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from a2d import losses
from a2d.align import ATTENTION_TYPES, AttentionAlignment
from a2d.data import Batch
from a2d.losses import LossTerms
from a2d.model import PAD_ID, ModelConfig, Seq2SeqOutput, Transformer
from a2d.settings import Section, setting

METHODS = ("none", "word_kd", "selective_kd", "a2d", "pkd", "alp_kd", "minilm")
FEATURE_METHODS = ("pkd", "alp_kd", "minilm")


@dataclass(frozen=True)
class MethodConfig(Section):
    """How a model is trained (method doc, sections 3, 4 and 6).

    none: label-smoothed CE (teacher, no-KD student). word_kd: (1-alpha)*LS + alpha*tau^2*KL.
    selective_kd: word_kd on the hardest `selective_fraction` of tokens by student NLL.
    pkd, alp_kd, minilm: word_kd plus `feature_weight` x a feature loss over encoder and decoder:
    hidden states (PKD with `pkd_mapping` skip or last; ALP-KD over all teacher layers) or the last
    self-attention layer's query, key and value relations (MiniLMv2, `relation_heads`).
    a2d: attention alignment plus word-level KD, in the released code's `faithful` mode or the
    `corrected` one; `layerwise` aligns head-averaged layers (the paper's ablation); a type weight
    of 0 switches that attention type off (encoder-only or decoder-only A2D).
    """

    name: str = setting("none", "the objective (docs/methods.md)", enum=list(METHODS))
    label_smoothing: float = setting(0.1, "of the cross-entropy (fairseq's)", minimum=0, maximum=1)
    alpha: float = setting(0.5, "weight of word-level KD", minimum=0, maximum=1)
    temperature: float = setting(1.0, "word-level KD (word_kd, selective_kd, corrected a2d)", exclusiveMinimum=0)
    selective_fraction: float = setting(0.5, "selective_kd: the hardest fraction of target tokens by student NLL", exclusiveMinimum=0, maximum=1)
    a2d_mode: str = setting("faithful", "faithful: the released code's loss; corrected: row-wise, per target token", enum=["faithful", "corrected"])
    layerwise: bool = setting(False, "a2d: align head-averaged layers rather than heads (the paper's ablation)")
    encoder_self: float = setting(1.0, "A2D weight of this attention type (0: off)", minimum=0)
    decoder_self: float = setting(0.5, "A2D weight of this attention type (0: off)", minimum=0)
    decoder_cross: float = setting(0.5, "A2D weight of this attention type (0: off)", minimum=0)
    beta: float = setting(1.0, "a2d: weight of the attention term at the start", minimum=0)
    gamma: float = setting(0.9, "a2d: its decay per epoch (or step)", minimum=0, maximum=1)
    decay_every: str = setting("epoch", "beta * gamma^(count - 1), counting epochs or update steps",
                               enum=["epoch", "step"])
    feature_weight: float = setting(1.0, "pkd, alp_kd, minilm", minimum=0)
    pkd_mapping: str = setting("skip", "pkd: skip, evenly spaced teacher layers up to the top; last, the top ones", enum=["skip", "last"])
    relation_heads: int = setting(4, "minilm", minimum=1)

    def check(self):
        if self.name == "a2d" and not self.attention_types:
            raise ValueError("a2d needs at least one attention type with a positive weight")
        if self.name == "a2d" and self.a2d_mode == "faithful" and self.temperature != 1.0:
            raise ValueError("faithful A2D has no temperature (the released code uses none); "
                             "use a2d_mode: corrected for word-level KD at a temperature")

    def check_fits(self, student: ModelConfig, teacher: ModelConfig) -> None:
        """Refuse, before training, a method that cannot work with these shapes."""
        for side, s, t in (("target", student.vocab_size, teacher.vocab_size),
                           ("source", student.source_vocab_size, teacher.source_vocab_size)):
            if s != t:
                raise ValueError(f"student {side} vocabulary {s} != teacher {side} vocabulary {t}")
        if self.name == "pkd":
            losses.pkd_layer_map(student.encoder_layers, teacher.encoder_layers, self.pkd_mapping)
            losses.pkd_layer_map(student.decoder_layers, teacher.decoder_layers, self.pkd_mapping)
        if self.name == "minilm":
            for who, cfg in (("student", student), ("teacher", teacher)):
                if cfg.d_model % self.relation_heads:
                    raise ValueError(f"{who} d_model {cfg.d_model} is not divisible by relation_heads {self.relation_heads}")

    @property
    def attention_types(self) -> tuple[str, ...]:
        return tuple(name for name in ATTENTION_TYPES if getattr(self, name) > 0)

    @property
    def weights(self) -> dict[str, float]:
        return {name: getattr(self, name) for name in self.attention_types}

    @property
    def label(self) -> str:
        """Short description for tables, e.g. "a2d corrected layerwise" or "a2d faithful encoder_self"."""
        if self.name != "a2d":
            return self.name
        parts = ["a2d", self.a2d_mode] + (["layerwise"] if self.layerwise else [])
        if len(self.attention_types) < len(ATTENTION_TYPES):
            parts += list(self.attention_types)
        return " ".join(parts)

    @property
    def needs_teacher(self) -> bool:
        return self.name != "none"

    @property
    def needs_attention(self) -> bool:
        return self.name == "a2d"

    @property
    def needs_hidden(self) -> bool:
        return self.name in FEATURE_METHODS

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
            self.alignment = AttentionAlignment(student.cfg, teacher_cfg, method.attention_types,
                                                normalised=method.a2d_mode == "corrected", layerwise=method.layerwise)
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
                layer_map = losses.pkd_layer_map(len(s_states), len(t_states) - 1, self.method.pkd_mapping)
                total = total + losses.pkd_loss(s_states, t_states[1:], layer_map, mask)
            else:
                total = total + losses.alp_kd_loss(s_states, t_states[1:], mask)
        return total

    def aligned_maps(self, student: Seq2SeqOutput, teacher: Seq2SeqOutput) -> tuple[dict, dict]:
        """AAM output and teacher maps of each enabled type, head-averaged per layer if layerwise."""
        types = self.method.attention_types
        s = {name: m for name, m in student.attention.items() if name in types}
        t = {name: m for name, m in teacher.attention.items() if name in types}
        if self.method.layerwise:
            s = {name: losses.layer_means(m, self.student.cfg.heads) for name, m in s.items()}
            t = {name: losses.layer_means(m, self.teacher_heads) for name, m in t.items()}
        return self.alignment(s), t

    def forward(self, batch: Batch, teacher: Seq2SeqOutput | None, epoch: int, step: int) -> tuple[Tensor, LossTerms]:
        m = self.method
        out = self.student(batch.src, batch.prev, return_attention=m.needs_attention, return_hidden=m.needs_hidden)
        terms = self.a2d_terms(out, teacher, batch, epoch, step) if m.name == "a2d" else self.terms(out, teacher, batch)
        # Gradient divided by the number of target tokens, as fairseq does.
        return terms.total / batch.mask.sum(), terms

    def terms(self, out: Seq2SeqOutput, teacher: Seq2SeqOutput | None, batch: Batch) -> LossTerms:
        """Label-smoothed CE, plus word-level KD and a feature loss where the method has them."""
        m = self.method
        ls, nll = losses.label_smoothed_nll(out.logits, batch.target, batch.mask, m.label_smoothing)
        terms = losses.LossTerms(total=ls, nll=nll, ls=ls)
        if m.needs_teacher:  # word-level KD, on every token or (selective_kd) the hardest ones
            kd_mask = batch.mask if m.name != "selective_kd" else losses.hardest_tokens(
                out.logits, batch.target, batch.mask, m.selective_fraction)
            terms.kd = losses.word_kd(out.logits, teacher.logits, kd_mask, m.temperature)
            terms.total = (1.0 - m.alpha) * ls + m.alpha * terms.kd
        if m.needs_hidden:
            terms.feature = self.feature_loss(out, teacher, batch)
            terms.total = terms.total + m.feature_weight * terms.feature
        return terms

    def a2d_terms(self, out: Seq2SeqOutput, teacher: Seq2SeqOutput, batch: Batch, epoch: int, step: int) -> LossTerms:
        m = self.method
        aligned, teacher_maps = self.aligned_maps(out, teacher)
        decay = losses.a2d_decay(m.beta, m.gamma, epoch if m.decay_every == "epoch" else step)
        if m.a2d_mode == "faithful":
            return losses.a2d_faithful_loss(
                out.logits, teacher.logits, batch.target, batch.mask, aligned, teacher_maps,
                weights=m.weights, alpha=m.alpha, epsilon=m.label_smoothing, decay=decay)
        source_rows = batch.src != PAD_ID
        query_masks = {"encoder_self": source_rows, "decoder_self": batch.mask, "decoder_cross": batch.mask}
        return losses.a2d_corrected_loss(
            out.logits, teacher.logits, batch.target, batch.mask, aligned, teacher_maps, query_masks,
            weights=m.weights, alpha=m.alpha, epsilon=m.label_smoothing, temperature=m.temperature, decay=decay)


@torch.no_grad()
def teacher_forward(teacher: Transformer, batch: Batch, method: MethodConfig) -> Seq2SeqOutput | None:
    """The frozen teacher on the same batch, teacher-forced with the gold prefix (eval mode)."""
    if not method.needs_teacher:
        return None
    out = teacher(batch.src, batch.prev, return_attention=method.needs_attention, return_hidden=method.needs_hidden)
    if method.name == "minilm":
        out.self_attention_vectors = {"encoder": teacher.self_attention_vectors("encoder", out.hidden.encoder[-2]),
                                      "decoder": teacher.self_attention_vectors("decoder", out.hidden.decoder[-2])}
    return out
