"""Loss functions: small pure functions on tensors, fp32 inside, each citing its equation.

Token-level terms return sums over non-pad target positions; the caller decides the normaliser,
because the faithful A2D loss and the plain baselines normalise differently (method doc, section 3).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass
class LossTerms:
    """One batch's loss: `total`, the term back-propagated, and every term it is built from, each a
    sum over the batch's target tokens (the trainer logs them per token)."""

    total: Tensor
    nll: Tensor  # cross-entropy without smoothing: the curves' train_nll
    ls: Tensor  # label-smoothed cross-entropy
    kd: Tensor | None = None  # word-level KD
    feature: Tensor | None = None  # pkd, alp_kd, minilm
    word: Tensor | None = None  # a2d: the word-level part of total
    attention: Tensor | None = None  # a2d: the attention part, weighted and decayed
    attention_kl: dict[str, Tensor] = field(default_factory=dict)  # a2d: per attention type, unweighted

    def logged(self) -> dict[str, float]:
        """The terms present, by the names the training curves use (kl_<type> per attention type)."""
        named = {"total": self.total, "nll": self.nll, "ls": self.ls, "kd": self.kd, "feature": self.feature,
                 "word": self.word, "attention": self.attention,
                 **{f"kl_{name}": kl for name, kl in self.attention_kl.items()}}
        return {name: float(value.detach()) for name, value in named.items() if value is not None}



def label_smoothed_nll(logits: Tensor, target: Tensor, mask: Tensor, epsilon: float) -> tuple[Tensor, Tensor]:
    """Label-smoothed cross-entropy as fairseq computes it (Szegedy et al. 2016).

    logits (B, T, V), target (B, T), mask (B, T) bool (True at real tokens).
    Per token: (1 - eps - eps/(V-1)) * nll + eps/(V-1) * sum_v(-log p_v).
    Returns (smoothed loss summed over masked tokens, nll summed over masked tokens).
    """
    lprobs = torch.log_softmax(logits.float(), dim=-1)
    nll = -lprobs.gather(-1, target.unsqueeze(-1)).squeeze(-1)  # (B, T)
    smooth = -lprobs.sum(-1)  # (B, T)
    eps_i = epsilon / (lprobs.size(-1) - 1)
    loss = (1.0 - epsilon - eps_i) * nll + eps_i * smooth
    return loss[mask].sum(), nll[mask].sum()


def _at_least_fp32(t: Tensor) -> Tensor:
    return t if t.dtype == torch.float64 else t.float()


class _SoftCrossEntropy(torch.autograd.Function):
    """-sum_v q_v log softmax(s)_v per row, s (N, V) student logits, q (N, V) fixed probabilities.

    One node whose backward writes softmax(s) - q into a single (N, V) tensor. Built from
    log_softmax, a product and a sum, the same loss kept two more (N, V) tensors alive and made
    several more in its backward: the vocabulary-sized tensors are what makes online KD need more
    memory than training alone (benchmarks/).
    """

    @staticmethod
    def forward(ctx, s: Tensor, q: Tensor) -> Tensor:
        lse = torch.logsumexp(s, dim=-1)  # (N,)
        ctx.save_for_backward(s, q, lse)
        return lse - torch.bmm(q.unsqueeze(1), s.unsqueeze(2)).view(-1)  # sum_v q_v = 1

    @staticmethod
    def backward(ctx, grad: Tensor):
        s, q, lse = ctx.saved_tensors
        return torch.sub(s, lse[:, None]).exp_().sub_(q).mul_(grad[:, None]), None


def _value_with_gradient_of(value: Tensor, differentiable: Tensor) -> Tensor:
    """`value` (computed without a graph), carrying the gradient of `differentiable`, which differs
    from it by a constant: a KL and the cross-entropy it is built on."""
    return value + differentiable - differentiable.detach()


def _cross_entropy_to(student_logits: Tensor, teacher_probs: Tensor, mask: Tensor, temperature: float) -> Tensor:
    """-sum_v q_v log p_v summed over `mask` (B, T): student logits (B, T, V) at temperature tau,
    q given as (B*T, V) probabilities."""
    student = _at_least_fp32(student_logits).reshape(teacher_probs.shape)
    if temperature != 1.0:
        student = student / temperature
    per_token = _SoftCrossEntropy.apply(student, teacher_probs)
    return (per_token * mask.reshape(-1).to(per_token.dtype)).sum()


def soft_cross_entropy(student_logits: Tensor, teacher_logits: Tensor, mask: Tensor, temperature: float = 1.0) -> Tensor:
    """Word-level KD (Hinton et al. 2015; Kim & Rush 2016): -sum_v q_v log p_v per token, summed.

    q is the teacher's distribution at temperature tau (detached), p the student's.
    (B, T, V) logits, mask (B, T). The tau^2 factor, where wanted, is the caller's.
    """
    with torch.no_grad():
        V = teacher_logits.size(-1)
        teacher_probs = torch.softmax(_at_least_fp32(teacher_logits).reshape(-1, V) / temperature, dim=-1)
    return _cross_entropy_to(student_logits, teacher_probs, mask, temperature)


def flattened_map_kl(student_mixed: Tensor, teacher_probs: Tensor) -> Tensor:
    """KL of A2D's faithful mode for one attention type (method doc, section 3).

    student_mixed: AAM output (B, C, Q, K), unnormalised; teacher_probs: teacher maps (B, C, Q, K).
    Each (b, c) map is flattened to Q*K entries; the student gets log-softmax over the whole map,
    the teacher gets softmax over its *probabilities* (a second softmax, as the released code does).
    Returns sum over b, c of KL(teacher || student), unmasked.
    """
    B, C = student_mixed.shape[:2]
    student = _at_least_fp32(student_mixed).reshape(B * C, -1)
    with torch.no_grad():  # the value, exactly (0 for equal maps); B*C*Q*K temporaries freed at once
        teacher_log = torch.log_softmax(_at_least_fp32(teacher_probs).reshape(B * C, -1), dim=-1)
        kl = F.kl_div(torch.log_softmax(student, dim=-1), teacher_log, log_target=True, reduction="sum")
        teacher = teacher_log.exp_()
    # The gradient, that of the cross-entropy (the KL minus the teacher's entropy, a constant), from
    # one autograd node: these maps grow with max_tokens x length x teacher heads, and the plain
    # formula kept several of them for the backward pass (benchmarks/: A2D's peak memory).
    return _value_with_gradient_of(kl, _SoftCrossEntropy.apply(student, teacher).sum())


def a2d_decay(beta: float, gamma: float, count: int) -> float:
    """beta * gamma^(count - 1): count is the 1-based epoch (the paper's) or update step."""
    return beta * gamma ** (count - 1)


def word_kd(student_logits: Tensor, teacher_logits: Tensor, mask: Tensor, temperature: float) -> Tensor:
    """Word-level KD (Hinton et al. 2015; Kim & Rush 2016): tau^2 * KL(q_tau || p_tau) per target
    token, summed over `mask` (B, T). Logits (B, T, V); the teacher is detached.

    The value is the KL itself (exactly 0 for equal distributions); the gradient is that of the
    cross-entropy, which differs from the KL by the teacher's entropy, a constant.
    """
    V = teacher_logits.size(-1)
    with torch.no_grad():
        teacher_log = torch.log_softmax(_at_least_fp32(teacher_logits).reshape(-1, V) / temperature, dim=-1)
        student_log = torch.log_softmax(_at_least_fp32(student_logits).reshape(-1, V) / temperature, dim=-1)
        teacher = teacher_log.exp()
        kl = (teacher * (teacher_log - student_log)).sum(-1)[mask.reshape(-1)].sum()
    return temperature ** 2 * _value_with_gradient_of(kl, _cross_entropy_to(student_logits, teacher, mask, temperature))


def hardest_tokens(student_logits: Tensor, target: Tensor, mask: Tensor, fraction: float) -> Tensor:
    """Selective KD (Wang et al. 2021): the `fraction` of real target tokens with the highest student
    NLL, as a (B, T) bool mask (at least one token when any is real)."""
    with torch.no_grad():
        nll = -torch.log_softmax(student_logits.float(), dim=-1).gather(-1, target.unsqueeze(-1)).squeeze(-1)
        count = int(mask.sum())
        keep = max(1, round(fraction * count)) if count else 0
        ranked = nll.masked_fill(~mask, float("-inf")).flatten()
        chosen = torch.zeros_like(ranked, dtype=torch.bool)
        chosen[ranked.topk(keep).indices] = True
    return chosen.view_as(mask) & mask


def rowwise_attention_kl(student_mixed: Tensor, teacher_probs: Tensor, query_mask: Tensor) -> Tensor:
    """Corrected A2D KL for one attention type (method doc, section 4).

    student_mixed (B, C, Q, K): mixed student rows that are valid distributions over keys (the
    normalised AAM keeps them so); teacher_probs (B, C, Q, K). Masked keys (padding, future
    positions) hold zero probability on both sides, so they add nothing. query_mask (B, Q) drops
    padded query rows. Returns sum over b, c and real rows of KL(teacher row || student row).
    """
    teacher = teacher_probs.detach().float()
    # + tiny rather than a clamp: a student entry that underflows to 0 still gets a gradient.
    student_log = torch.log(student_mixed.float() + 1e-12)
    teacher_log = torch.log(teacher + 1e-12)
    kl_rows = (teacher * (teacher_log - student_log)).sum(-1)  # (B, C, Q)
    return kl_rows.masked_fill(~query_mask[:, None, :], 0.0).sum()


def layer_means(maps: Tensor, heads: int) -> Tensor:
    """Layerwise A2D: average each layer's heads, (B, L*H, Q, K) -> (B, L, Q, K)."""
    B, C, Q, K = maps.shape
    return maps.view(B, C // heads, heads, Q, K).mean(2)


def a2d_faithful_loss(student_logits: Tensor, teacher_logits: Tensor, target: Tensor, mask: Tensor,
                      aligned: dict[str, Tensor], teacher_maps: dict[str, Tensor], *, weights: dict[str, float],
                      alpha: float, epsilon: float, decay: float) -> LossTerms:
    """The A2D loss as the released code computes it (method doc, section 3).

    L_word = sum_{non-pad}[(1-alpha)*l_LS + alpha*l_KD] / (B*T_max)   (a mean over padded positions)
    L_att  = decay * sum_k w_k * KL_k, KL_k = flattened_map_kl       (sums over batch and heads;
             the paper's weights are 1, 1/2, 1/2 for encoder self, decoder self, decoder cross)
    `aligned` holds the AAM output of each enabled type. Returns every term, total =
    L_word + L_att; the caller divides the gradient by the number of target tokens, as fairseq does.
    """
    ls, nll = label_smoothed_nll(student_logits, target, mask, epsilon)
    kd = soft_cross_entropy(student_logits, teacher_logits, mask)
    word = ((1.0 - alpha) * ls + alpha * kd) / target.numel()
    kls = {name: flattened_map_kl(mixed, teacher_maps[name]) for name, mixed in aligned.items()}
    attention = decay * sum(weights[name] * kl for name, kl in kls.items())
    return LossTerms(total=word + attention, nll=nll, ls=ls, kd=kd, word=word, attention=attention, attention_kl=kls)


def a2d_corrected_loss(student_logits: Tensor, teacher_logits: Tensor, target: Tensor, mask: Tensor,
                       aligned: dict[str, Tensor], teacher_maps: dict[str, Tensor], query_masks: dict[str, Tensor],
                       *, weights: dict[str, float], alpha: float, epsilon: float, temperature: float,
                       decay: float) -> LossTerms:
    """A2D with row-wise distributions (method doc, section 4); every term a sum over target tokens.

    word = sum_{non-pad}[(1-alpha)*l_LS + alpha*tau^2*KL(q_tau || p_tau)]
    att  = decay * sum_k w_k * rowwise_attention_kl_k / C_k   (per row, averaged over teacher channels)
    The caller divides total by the number of target tokens, so no term depends on batch size.
    `aligned` must come from the normalised AAM (its rows are distributions).
    """
    ls, nll = label_smoothed_nll(student_logits, target, mask, epsilon)
    kd = word_kd(student_logits, teacher_logits, mask, temperature)
    word = (1.0 - alpha) * ls + alpha * kd
    kls = {name: rowwise_attention_kl(mixed, teacher_maps[name], query_masks[name]) / mixed.size(1)
           for name, mixed in aligned.items()}
    attention = decay * sum(weights[name] * kl for name, kl in kls.items())
    return LossTerms(total=word + attention, nll=nll, ls=ls, kd=kd, word=word, attention=attention, attention_kl=kls)


def pkd_loss(student: list[Tensor], teacher: list[Tensor], layer_map: list[int], mask: Tensor) -> Tensor:
    """Patient KD: sum over student layers i and real positions of
    || s_i/|s_i| - t_m(i)/|t_m(i)| ||^2. States (B, N, D), the student's already projected to the
    teacher's width; mask (B, N)."""
    total = student[0].new_zeros((), dtype=torch.float32)
    for s, t_index in zip(student, layer_map):
        s_unit = torch.nn.functional.normalize(s.float(), dim=-1)
        t_unit = torch.nn.functional.normalize(teacher[t_index].detach().float(), dim=-1)
        total = total + ((s_unit - t_unit) ** 2).sum(-1)[mask].sum()
    return total


def alp_kd_loss(student: list[Tensor], teacher: list[Tensor], mask: Tensor) -> Tensor:
    """ALP-KD (Passban et al. 2021): each student layer matches, per position, an attention-weighted
    sum of all teacher layers, weights softmax_j(s_i . t_j / sqrt(D)); MSE (mean over D) summed over
    real positions and student layers. States (B, N, D), the student's projected to the teacher's
    width. Both sides pass a parameter-free LayerNorm first: post-LN states (the paper's) already
    are normalised, and pre-LN residual streams grow with depth (raw, the term was ~600x the CE).
    The 1/sqrt(D) scaling, against the paper's raw dot product, keeps the softmax from saturating."""
    unit = lambda x: torch.nn.functional.layer_norm(x.float(), x.shape[-1:])  # noqa: E731
    stacked = torch.stack([unit(t.detach()) for t in teacher], dim=2)  # (B, N, L_T, D)
    total = student[0].new_zeros((), dtype=torch.float32)
    for s in student:
        s = unit(s)
        weights = torch.softmax((stacked @ s.unsqueeze(-1)).squeeze(-1) / s.size(-1) ** 0.5, dim=-1)  # (B, N, L_T)
        target = (weights.unsqueeze(-1) * stacked).sum(2)  # (B, N, D)
        total = total + ((s - target) ** 2).mean(-1)[mask].sum()
    return total


def relation_log_probs(x: Tensor, relation_heads: int, allowed: Tensor) -> Tensor:
    """MiniLMv2 relation: split (B, N, D) into relation heads of width d = D / R and take
    log softmax(x_r x_r^T / sqrt(d)) over allowed keys; allowed broadcastable to (B, R, N, N)."""
    B, N, D = x.shape
    heads = x.float().view(B, N, relation_heads, D // relation_heads).transpose(1, 2)  # (B, R, N, d)
    scores = heads @ heads.transpose(-2, -1) / (D // relation_heads) ** 0.5  # (B, R, N, N)
    return torch.log_softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)


def minilm_relation_loss(student_qkv: tuple[Tensor, ...], teacher_qkv: tuple[Tensor, ...], relation_heads: int,
                         allowed: Tensor, query_mask: Tensor) -> Tensor:
    """MiniLMv2 (Wang et al. 2021): KL(teacher || student) between query-query, key-key and
    value-value relations of the last self-attention layer, per row, summed over real query rows
    and averaged over relation heads. Widths may differ: relations are N x N either way."""
    total = student_qkv[0].new_zeros((), dtype=torch.float32)
    for s, t in zip(student_qkv, teacher_qkv):
        s_log = relation_log_probs(s, relation_heads, allowed)
        t_log = relation_log_probs(t.detach(), relation_heads, allowed)
        # Masked keys are -inf on both sides: select them out (NaN elsewhere must stay visible).
        kl = torch.where(allowed, t_log.exp() * (t_log - s_log), 0.0).sum(-1)  # (B, R, N)
        total = total + kl.masked_fill(~query_mask[:, None, :], 0.0).sum() / relation_heads
    return total
