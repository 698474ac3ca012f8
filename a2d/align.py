"""The Attention Alignment Module of A2D (method doc, section 2).

One channel mixer per attention type maps the student's stacked maps (B, C_S, Q, K) to the
teacher's channel count (B, C_T, Q, K): every teacher head is matched by a learned mix of all
student heads of all layers (C = L*H), or, for Layerwise A2D, every teacher layer by a mix of the
student's layers (C = L, maps averaged over heads). The AAM trains with the student but is not part
of it: it is dropped when the student is exported.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from a2d.config import ATTENTION_TYPES, ModelConfig


def attention_channels(cfg: ModelConfig, layerwise: bool = False) -> dict[str, int]:
    """Channels of each stacked attention type of a model of shape `cfg`: layers x heads, or layers."""
    per_layer = 1 if layerwise else cfg.heads
    return {"encoder_self": cfg.encoder_layers * per_layer,
            "decoder_self": cfg.decoder_layers * per_layer,
            "decoder_cross": cfg.decoder_layers * per_layer}


class ChannelMixer(nn.Module):
    """Â[b,c] = sum_m W[c,m] * A[b,m] (+ bias[c]).

    faithful: a 1x1 convolution with bias and PyTorch's default initialisation, as the released
    code has it (mixed maps are not distributions). normalised: W = softmax over m of learned
    logits, no bias, so a mix of distributions stays a distribution (corrected mode); it starts as
    the uniform mix.
    """

    def __init__(self, student_channels: int, teacher_channels: int, normalised: bool):
        super().__init__()
        self.normalised = normalised
        if normalised:
            self.logits = nn.Parameter(torch.zeros(teacher_channels, student_channels))
        else:
            self.conv = nn.Conv2d(student_channels, teacher_channels, kernel_size=1)

    @property
    def weights(self) -> Tensor:
        """(C_T, C_S) mixing weights, for inspection and figures."""
        return torch.softmax(self.logits, dim=-1) if self.normalised else self.conv.weight[:, :, 0, 0]

    def forward(self, maps: Tensor) -> Tensor:
        """(B, C_S, Q, K) -> (B, C_T, Q, K)."""
        if self.normalised:
            return torch.einsum("tm,bmqk->btqk", torch.softmax(self.logits, dim=-1), maps)
        return self.conv(maps)


class AttentionAlignment(nn.Module):
    """One mixer per enabled attention type (no weight sharing)."""

    def __init__(self, student: ModelConfig, teacher: ModelConfig, types: tuple[str, ...] = ATTENTION_TYPES,
                 normalised: bool = False, layerwise: bool = False):
        super().__init__()
        s, t = attention_channels(student, layerwise), attention_channels(teacher, layerwise)
        self.mixers = nn.ModuleDict({name: ChannelMixer(s[name], t[name], normalised) for name in types})

    def forward(self, student: dict[str, Tensor]) -> dict[str, Tensor]:
        """Student maps by type (B, C_S, Q, K) -> mixed maps by type (B, C_T, Q, K)."""
        return {name: mixer(student[name]) for name, mixer in self.mixers.items()}
