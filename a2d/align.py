"""The Attention Alignment Module of A2D and its loss (method doc, section 2).

One channel mixer per attention type maps the student's stacked maps (B, C_S, Q, K) to the
teacher's channel count (B, C_T, Q, K): every teacher head is matched by a learned mix of all
student heads of all layers (C = L*H), or, for Layerwise A2D, every teacher layer by a mix of the
student's layers (C = L, maps averaged over heads). The AAM trains with the student but is not part
of it: it is dropped when the student is exported.

The loss never holds the mixed maps, nor all of the teacher's: `AlignmentLoss` takes the teacher's
maps one layer at a time as the frozen teacher computes them, mixes the student's maps into that
layer's channels a few sentences at a time, and computes the KL together with its gradients with
respect to the student's maps and the mixer. What waits for the backward pass is of the student's
size; the teacher's maps and the AAM output (one channel per teacher head) are freed as they go.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from a2d import losses
from a2d.config import ATTENTION_TYPES, ModelConfig
from a2d.model import AttentionMaps


@dataclass
class RowMasks:
    """Where an attention type's row-wise distributions live: `queries` (B, Q), the real query rows;
    `keys`, broadcastable to (B, 1, Q, K), the keys each row may attend to."""

    queries: Tensor
    keys: Tensor


def attention_channels(cfg: ModelConfig, layerwise: bool = False) -> dict[str, int]:
    """Channels of each stacked attention type of a model of shape `cfg`: layers x heads, or layers."""
    per_layer = 1 if layerwise else cfg.heads
    return {"encoder_self": cfg.encoder_layers * per_layer,
            "decoder_self": cfg.decoder_layers * per_layer,
            "decoder_cross": cfg.decoder_layers * per_layer}


class FreeMix(nn.Module):
    """The released code's mixer: a 1x1 convolution with bias, PyTorch's default initialisation
    (weights (C_T, C_S, 1, 1), as Conv2d stores them and checkpoints hold them)."""

    def __init__(self, student_channels: int, teacher_channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(teacher_channels, student_channels, 1, 1))
        self.bias = nn.Parameter(torch.empty(teacher_channels))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # what nn.Conv2d does
        nn.init.uniform_(self.bias, -student_channels ** -0.5, student_channels ** -0.5)

    def forward(self) -> tuple[Tensor, Tensor]:
        return self.weight[:, :, 0, 0], self.bias


class ChannelMixer(nn.Module):
    """Â[b,c] = sum_m W[c,m] * A[b,m] (+ bias[c]).

    free: a 1x1 convolution with bias (`FreeMix`), as the released code has it (mixed maps are not
    distributions). normalised: W = softmax over m of learned logits, no bias, so a mix of
    distributions stays a distribution (the corrected recipe's); it starts as the uniform mix.
    """

    def __init__(self, student_channels: int, teacher_channels: int, normalised: bool):
        super().__init__()
        self.normalised = normalised
        if normalised:
            self.logits = nn.Parameter(torch.zeros(teacher_channels, student_channels))
        else:
            self.conv = FreeMix(student_channels, teacher_channels)

    @property
    def weights(self) -> Tensor:
        """(C_T, C_S) mixing weights, for inspection and figures."""
        return self()[0]

    def forward(self) -> tuple[Tensor, Tensor | None]:
        """The mixing matrix W (C_T, C_S) and the bias (C_T,) or None. Called as a module, so that
        ZeRO-3 gathers the parameters."""
        if self.normalised:
            return torch.softmax(self.logits, dim=-1), None
        return self.conv()


class AttentionAlignment(nn.Module):
    """One mixer per enabled attention type (no weight sharing). `reduction` "sum" adds each type's
    KL over the teacher's channels, "channel_mean" averages it over them."""

    def __init__(self, student: ModelConfig, teacher: ModelConfig, types: tuple[str, ...] = ATTENTION_TYPES,
                 normalised: bool = False, layerwise: bool = False, reduction: str = "sum"):
        super().__init__()
        s, t = attention_channels(student, layerwise), attention_channels(teacher, layerwise)
        self.teacher_channels = t
        self.layerwise, self.reduction = layerwise, reduction
        self.mixers = nn.ModuleDict({name: ChannelMixer(s[name], t[name], normalised) for name in types})

    def forward(self, student: AttentionMaps, masks: dict[str, RowMasks] | None = None) -> AlignmentLoss:
        """The loss of this batch, ready to take the teacher's maps (an AttentionSink). `masks` per
        type: KL between row-wise distributions (method doc, section 4); None: between softmaxes over
        whole flattened maps (section 3)."""
        layers = {name: [self.head_mean(p) for p in maps] for name, maps in student.items() if name in self.mixers}
        return AlignmentLoss({name: mixer() for name, mixer in self.mixers.items()}, layers, self.teacher_channels,
                             masks, self.head_mean, channel_mean=self.reduction == "channel_mean")

    def head_mean(self, probs: Tensor) -> Tensor:
        """A layer's maps (B, H, Q, K) as its channels: its heads, or (layerwise) their mean."""
        return probs.mean(1, keepdim=True) if self.layerwise else probs


class AlignmentLoss:
    """A2D's attention KL of one batch per type, taking the teacher's maps layer by layer (`add`).

    `mixing`: per type the AAM's (W (C_T, C_S), bias or None); `student`: per type the student's
    maps, one (B, C, Q, K) per layer; `masks`: per type the RowMasks of row-wise KLs, or None;
    `as_channels`: a teacher layer's maps as its channels (the heads, or their mean). `kls()` returns
    the KLs, whose backward pass hands the gradients computed here to the student's maps and the mixers.
    """

    def __init__(self, mixing: dict[str, tuple[Tensor, Tensor | None]], student: dict[str, list[Tensor]],
                 teacher_channels: dict[str, int], masks: dict[str, RowMasks] | None, as_channels,
                 channel_mean: bool = False):
        self.mixing, self.student, self.masks, self.channel_mean = mixing, student, masks, channel_mean
        self.teacher_channels, self.as_channels = teacher_channels, as_channels
        like = next(iter(student.values()))[0]
        self.dtype = torch.float64 if like.dtype == torch.float64 else torch.float32
        self.filled = {name: 0 for name in student}  # teacher channels seen so far
        self.value = {name: like.new_zeros((), dtype=self.dtype) for name in student}
        self.grad_maps = {name: like.new_zeros((like.size(0), sum(p.size(1) for p in maps), *maps[0].shape[2:]),
                                               dtype=self.dtype) for name, maps in student.items()}
        self.grad_mixing = {name: tuple(torch.zeros_like(t, dtype=self.dtype) if t is not None else None
                                        for t in mix) for name, mix in mixing.items()}

    @torch.no_grad()
    def add(self, name: str, probs: Tensor) -> None:
        """The teacher's next layer of type `name` (B, H, Q, K): its KL and gradients, added."""
        if name not in self.student:
            return
        teacher = self.as_channels(probs).to(self.dtype)
        first = self.filled[name]
        channels = slice(first, first + teacher.size(1))
        self.filled[name] = channels.stop
        weight, bias = (None if t is None else t.detach().to(self.dtype)[channels] for t in self.mixing[name])
        grad_weight, grad_bias = (None if g is None else g[channels] for g in self.grad_mixing[name])
        B, _, Q, K = teacher.shape
        step = max(1, losses.CHUNK_ELEMENTS // (teacher.size(1) * Q * K))  # sentences at once
        for start in range(0, B, step):
            rows = slice(start, start + step)
            student = torch.cat([p[rows].detach() for p in self.student[name]], dim=1).to(self.dtype)
            student = student.view(student.size(0), student.size(1), Q * K)  # (b, C_S, QK)
            mixed = weight @ student  # (b, C, QK)
            if bias is not None:
                mixed += bias[:, None]
            kl, grad_mixed = self.kl(name, mixed.view(-1, teacher.size(1), Q, K), teacher[rows], rows)
            grad_mixed = grad_mixed.view_as(mixed)
            self.value[name] += kl
            self.grad_maps[name][rows].view_as(student).add_(weight.t() @ grad_mixed)
            grad_weight += torch.einsum("bcn,bmn->cm", grad_mixed, student)
            if grad_bias is not None:
                grad_bias += grad_mixed.sum((0, 2))

    def kl(self, name: str, mixed: Tensor, teacher: Tensor, rows: slice) -> tuple[Tensor, Tensor]:
        if self.masks is None:
            return losses.flattened_map_kl(mixed, teacher)
        queries, keys = self.masks[name].queries[rows], self.masks[name].keys
        if self.mixing[name][1] is None:  # a normalised mix: its rows are already distributions
            return losses.rowwise_attention_kl(mixed, teacher, queries)
        return losses.rowwise_softmax_kl(mixed, teacher, queries, keys[rows] if keys.size(0) > 1 else keys)

    def kls(self) -> dict[str, Tensor]:
        """Per type the KL summed over the batch (with channel_mean, averaged over the teacher's
        channels), in the autograd graph of the student's maps and the mixers."""
        out = {}
        for name, maps in self.student.items():
            if self.filled[name] != self.teacher_channels[name]:
                raise ValueError(f"{name}: the teacher gave {self.filled[name]} of its "
                                 f"{self.teacher_channels[name]} attention channels")
            scale = 1.0 / self.teacher_channels[name] if self.channel_mean else 1.0
            per_layer = self.grad_maps[name].split([p.size(1) for p in maps], dim=1)
            inputs = [*maps, *(t for t in self.mixing[name] if t is not None)]
            grads = [*per_layer, *(g for g in self.grad_mixing[name] if g is not None)]
            out[name] = losses.known_gradient(self.value[name], grads, inputs, scale)
        return out
