"""What the DeepSpeed engine trains: the student plus any training-only parameters (the AAM).

The teacher is not in here: the training loop runs it frozen, outside the engine, and passes its
output in. `forward` returns the loss to back-propagate and every term for logging.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from a2d import losses
from a2d.align import AttentionAlignment
from a2d.data import Batch
from a2d.model import ModelConfig, Seq2SeqOutput, Transformer

METHODS = ("none", "a2d")


@dataclass(frozen=True)
class MethodConfig:
    """How a model is trained: `none` is label-smoothed CE alone (teacher, no-KD student)."""

    name: str = "none"
    label_smoothing: float = 0.1
    alpha: float = 0.5  # weight of word-level KD (a2d)
    beta: float = 1.0  # scale of the attention term (a2d)
    gamma: float = 0.9  # per-epoch decay of the attention term (a2d)

    def __post_init__(self):
        if self.name not in METHODS:
            raise ValueError(f"unknown method {self.name!r}; choose one of {', '.join(METHODS)}")

    @property
    def needs_teacher(self) -> bool:
        return self.name != "none"

    @property
    def needs_attention(self) -> bool:
        return self.name == "a2d"

    def to_dict(self) -> dict:
        return asdict(self)


class DistillationModule(nn.Module):
    def __init__(self, student: Transformer, method: MethodConfig, teacher_cfg: ModelConfig | None = None):
        super().__init__()
        self.student = student
        self.method = method
        if method.needs_teacher and teacher_cfg is None:
            raise ValueError(f"method {method.name!r} needs a teacher")
        self.alignment = AttentionAlignment(student.cfg, teacher_cfg) if method.name == "a2d" else None

    def forward(self, batch: Batch, teacher: Seq2SeqOutput | None, epoch: int) -> tuple[Tensor, dict[str, float]]:
        out = self.student(batch.src, batch.prev, return_attention=self.method.needs_attention)
        ntokens = batch.mask.sum()
        if self.method.name == "none":
            ls, nll = losses.label_smoothed_nll(out.logits, batch.target, batch.mask, self.method.label_smoothing)
            terms = {"total": ls, "ls": ls, "nll": nll}
        else:
            terms = losses.a2d_faithful_loss(
                out.logits, teacher.logits, batch.target, batch.mask, self.alignment(out.attention),
                teacher.attention, alpha=self.method.alpha, epsilon=self.method.label_smoothing,
                decay=losses.a2d_decay(self.method.beta, self.method.gamma, epoch))
        # Gradient divided by the number of target tokens, as fairseq does.
        loss = terms["total"] / ntokens
        logged = {name: float(value.detach()) for name, value in terms.items()}
        logged["nll_per_token"] = logged.pop("nll") / max(int(ntokens), 1)
        return loss, logged


@torch.no_grad()
def teacher_forward(teacher: Transformer, batch: Batch, method: MethodConfig) -> Seq2SeqOutput | None:
    """The frozen teacher on the same batch, teacher-forced with the gold prefix (eval mode)."""
    if not method.needs_teacher:
        return None
    return teacher(batch.src, batch.prev, return_attention=method.needs_attention)
