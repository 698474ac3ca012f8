"""The Attention Alignment Module of A2D (method doc, section 2).

One 1x1 convolution with bias per attention type maps the student's stacked maps
(B, L_S*H_S, Q, K) to the teacher's channel count (B, L_T*H_T, Q, K): every teacher head is
matched by a learned mix of all student heads of all layers. The AAM is trained with the student
but is not part of it: it is dropped when the student is exported.
"""

from __future__ import annotations

from torch import nn

from a2d.model import AttentionMaps, ModelConfig


def attention_channels(cfg: ModelConfig) -> dict[str, int]:
    """Channels (layers x heads) of each stacked attention type of a model of shape `cfg`."""
    return {"encoder_self": cfg.encoder_layers * cfg.heads,
            "decoder_self": cfg.decoder_layers * cfg.heads,
            "decoder_cross": cfg.decoder_layers * cfg.heads}


class AttentionAlignment(nn.Module):
    def __init__(self, student: ModelConfig, teacher: ModelConfig):
        super().__init__()
        s, t = attention_channels(student), attention_channels(teacher)
        # Default Conv2d initialisation, as in the released code.
        self.encoder_self = nn.Conv2d(s["encoder_self"], t["encoder_self"], kernel_size=1)
        self.decoder_self = nn.Conv2d(s["decoder_self"], t["decoder_self"], kernel_size=1)
        self.decoder_cross = nn.Conv2d(s["decoder_cross"], t["decoder_cross"], kernel_size=1)

    def forward(self, student: AttentionMaps) -> AttentionMaps:
        """(B, L_S*H_S, Q, K) per type -> (B, L_T*H_T, Q, K) per type."""
        return AttentionMaps(self.encoder_self(student.encoder_self),
                             self.decoder_self(student.decoder_self),
                             self.decoder_cross(student.decoder_cross))
