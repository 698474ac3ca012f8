"""Loss functions: small pure functions on tensors, fp32 inside, each citing its equation.

Token-level terms return sums over non-pad target positions; the caller decides the normaliser,
because the released A2D loss and the plain baselines normalise differently (method doc, section 3).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from a2d.model import DeferredLogits


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


# Rows (tokens, or sentences of maps) taken at once where a loss is computed in pieces: as many as
# keep one piece under this many elements (1 MB in fp32): pieces of one size, reused, rather than
# larger ones that fragment the heap (peak RSS); a loss needs a few such pieces.
CHUNK_ELEMENTS = 2 ** 18
# The word-level loss's pieces are larger (8 MB in fp32; ~260 tokens at a vocabulary of 8,000): a
# deferred teacher's logits are a matrix product per piece, which at 32 rows ran at a third of the
# speed of 256 (measured, 2 cores).
WORD_PIECE_ELEMENTS = 2 ** 21


class _KnownGradient(torch.autograd.Function):
    """scale * `value`, whose gradients with respect to `inputs` were computed with it; the backward
    pass only scales them by the gradient of whatever uses the value."""

    @staticmethod
    def forward(ctx, value: Tensor, gradients: list[Tensor], scale: float, *inputs: Tensor) -> Tensor:
        ctx.gradients, ctx.scale, ctx.dtypes = gradients, scale, [t.dtype for t in inputs]
        return value * scale

    @staticmethod
    def backward(ctx, grad: Tensor):
        factor = grad * ctx.scale
        return (None, None, None, *(g.mul(factor).to(dtype) for g, dtype in zip(ctx.gradients, ctx.dtypes)))


def known_gradient(value: Tensor, gradients: list[Tensor], inputs: list[Tensor], scale: float = 1.0) -> Tensor:
    """scale * value in the autograd graph of `inputs`, with d value / d input = `gradients`.

    Losses whose intermediates are far larger than their inputs (vocabulary-sized, or one channel
    per teacher head) compute their gradients piece by piece in the forward pass, so that only
    tensors of the inputs' size wait for the backward pass.
    """
    return _KnownGradient.apply(value, gradients, scale, *inputs)


@dataclass
class WordLoss:
    word: Tensor  # (1 - alpha) * ls + alpha * kd, differentiable
    nll: Tensor  # the rest: values, summed over the target tokens
    ls: Tensor
    kd: Tensor


def word_level_loss(student_logits: Tensor, teacher_logits: Tensor | DeferredLogits, target: Tensor, mask: Tensor,
                    *, alpha: float, epsilon: float, temperature: float = 1.0, kd: str = "kl",
                    kd_mask: Tensor | None = None) -> WordLoss:
    """Label-smoothed CE and word-level KD (Hinton et al. 2015; Kim & Rush 2016) of the same logits,
    in one pass over the vocabulary a few hundred tokens at a time.

    Logits (B, T, V), the teacher's possibly deferred; target, mask (B, T); kd_mask (B, T), default
    `mask`: the tokens KD applies to.
    kd "kl": tau^2 * KL(q_tau || p_tau) (exactly 0 for equal distributions); "cross_entropy":
    -sum_v q_v log p_v at tau (the released A2D loss's). Each value is that of label_smoothed_nll and
    of the plain formulas, to the bit; the gradient of `word` is computed with it, so the backward
    pass keeps one (B, T, V) tensor, not the log-probabilities, the teacher's distribution and the
    logits themselves (online KD's extra memory over training alone).
    """
    V = student_logits.size(-1)
    student = student_logits.reshape(-1, V)
    teacher_rows = (teacher_logits.rows if isinstance(teacher_logits, DeferredLogits)
                    else teacher_logits.reshape(-1, V).__getitem__)
    tokens, kd_tokens = mask.reshape(-1), (mask if kd_mask is None else kd_mask).reshape(-1)
    gold = target.reshape(-1)
    rows_nll, rows_ls, rows_kd = (student.new_empty(len(student), dtype=_at_least_fp32(student).dtype)
                                  for _ in range(3))
    grad = torch.empty_like(student)
    step = max(1, WORD_PIECE_ELEMENTS // V)
    with torch.no_grad():
        for start in range(0, len(student), step):
            rows = slice(start, start + step)
            rows_nll[rows], rows_ls[rows], rows_kd[rows], grad[rows] = _word_rows(
                student[rows], teacher_rows(rows), gold[rows], tokens[rows], kd_tokens[rows], alpha=alpha,
                epsilon=epsilon, temperature=temperature, kd=kd)
        ls, nll = rows_ls[tokens].sum(), rows_nll[tokens].sum()
        if kd == "kl":
            kd_sum = temperature ** 2 * rows_kd[kd_tokens].sum()
        else:
            kd_sum = (rows_kd * kd_tokens.to(rows_kd.dtype)).sum()
    word = known_gradient((1.0 - alpha) * ls + alpha * kd_sum, [grad.view_as(student_logits)], [student_logits])
    return WordLoss(word=word, nll=nll, ls=ls, kd=kd_sum)


def _word_rows(student: Tensor, teacher: Tensor, gold: Tensor, tokens: Tensor, kd_tokens: Tensor, *, alpha: float,
               epsilon: float, temperature: float, kd: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Rows (N, V) of word_level_loss: per row nll, ls and kd, and d[(1-alpha) ls + alpha kd] / d logits."""
    s, t = _at_least_fp32(student), _at_least_fp32(teacher)
    lprobs = torch.log_softmax(s, dim=-1)
    nll = -lprobs.gather(-1, gold[:, None]).squeeze(-1)
    eps_i = epsilon / (s.size(-1) - 1)
    ls = (1.0 - epsilon - eps_i) * nll + eps_i * -lprobs.sum(-1)
    s_tau = s / temperature if temperature != 1.0 else s
    if kd == "cross_entropy":
        q = torch.softmax(t / temperature, dim=-1)
        lse = torch.logsumexp(s_tau, dim=-1)
        kd_rows = lse - torch.bmm(q.unsqueeze(1), s_tau.unsqueeze(2)).view(-1)  # sum_v q_v = 1
        p_tau, kd_scale = torch.sub(s_tau, lse[:, None]).exp_(), 1.0 / temperature
    else:
        teacher_log = torch.log_softmax(t / temperature, dim=-1)
        student_log = torch.log_softmax(s_tau, dim=-1)
        q = teacher_log.exp()
        kd_rows = (q * (teacher_log - student_log)).sum(-1)
        p_tau, kd_scale = student_log.exp_(), temperature  # tau^2 * (p_tau - q) / tau
    # d ls / d logits = p - eps_i - (1 - eps - eps_i) * onehot(gold): the eps_i * V * p terms add to p.
    grad_ls = lprobs.exp_().sub_(eps_i)
    grad_ls.scatter_add_(-1, gold[:, None], torch.full_like(nll[:, None], -(1.0 - epsilon - eps_i)))
    grad_kd = p_tau.sub_(q).mul_(kd_tokens[:, None].to(s.dtype) * (alpha * kd_scale))
    grad = grad_ls.mul_(tokens[:, None].to(s.dtype) * (1.0 - alpha)).add_(grad_kd)
    return nll, ls, kd_rows, grad


def flattened_map_kl(mixed: Tensor, teacher_probs: Tensor) -> tuple[Tensor, Tensor]:
    """KL between flattened maps, the released code's (method doc, section 3), and its gradient with
    respect to `mixed`.

    mixed: AAM output (B, C, Q, K), unnormalised; teacher_probs: teacher maps (B, C, Q, K). Each
    (b, c) map is flattened to Q*K entries; the student gets log-softmax over the whole map, the
    teacher softmax over its *probabilities* (a second softmax, as the released code does).
    Returns the sum over b, c of KL(teacher || student), unmasked, and d KL / d mixed, which is
    softmax(student map) - softmax(teacher map).
    """
    B, C = mixed.shape[:2]
    student_log = torch.log_softmax(mixed.reshape(B * C, -1), dim=-1)
    teacher_log = torch.log_softmax(teacher_probs.reshape(B * C, -1), dim=-1)
    kl = F.kl_div(student_log, teacher_log, log_target=True, reduction="sum")
    return kl, student_log.exp_().sub_(teacher_log.exp_()).view_as(mixed)


def rowwise_attention_kl(mixed: Tensor, teacher_probs: Tensor, query_mask: Tensor) -> tuple[Tensor, Tensor]:
    """Row-wise KL for one attention type and a normalised AAM (method doc, section 4), and its gradient.

    mixed (B, C, Q, K): mixed student rows that are valid distributions over keys (the normalised
    AAM keeps them so); teacher_probs (B, C, Q, K). Masked keys (padding, future positions) hold zero
    probability on both sides, so they add nothing. query_mask (B, Q) drops padded query rows.
    Returns the sum over b, c and real rows of KL(teacher row || student row), and d KL / d mixed.
    """
    # + tiny rather than a clamp: a student entry that underflows to 0 still gets a gradient.
    student = mixed + 1e-12
    kl_rows = (teacher_probs * (torch.log(teacher_probs + 1e-12) - torch.log(student))).sum(-1)  # (B, C, Q)
    kl = kl_rows.masked_fill(~query_mask[:, None, :], 0.0).sum()
    return kl, teacher_probs.div(student).mul_(query_mask[:, None, :, None]).neg_()


def rowwise_softmax_kl(mixed: Tensor, teacher_probs: Tensor, query_mask: Tensor, key_mask: Tensor) -> tuple[Tensor, Tensor]:
    """Row-wise KL for a free (unnormalised) AAM, and its gradient: each real query row of `mixed`
    (B, C, Q, K) becomes a distribution by a softmax over its allowed keys (key_mask, broadcastable
    to it); otherwise as rowwise_attention_kl. The gradient is softmax(row) * sum(teacher row) -
    teacher row (teacher rows computed in lower precision sum to 1 only to that precision)."""
    log_student = torch.log_softmax(mixed.masked_fill(~key_mask, float("-inf")), dim=-1).masked_fill(~key_mask, 0.0)
    # Masked keys hold zero teacher probability: their terms are 0 (the 1e-12 keeps log finite).
    kl_rows = (teacher_probs * (torch.log(teacher_probs + 1e-12) - log_student)).sum(-1)  # (B, C, Q)
    rows = query_mask[:, None, :]
    kl = kl_rows.masked_fill(~rows, 0.0).sum()
    student = log_student.exp_().masked_fill_(~key_mask, 0.0)
    grad = student.mul_(teacher_probs.sum(-1, keepdim=True)).sub_(teacher_probs).mul_(rows[..., None])
    return kl, grad


def a2d_decay(beta: float, gamma: float, count: int) -> float:
    """beta * gamma^(count - 1): count is the 1-based epoch (the paper's) or update step."""
    return beta * gamma ** (count - 1)


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


def a2d_loss(student_logits: Tensor, teacher_logits: Tensor | DeferredLogits, target: Tensor, mask: Tensor,
             kls: dict[str, Tensor], *, weights: dict[str, float], alpha: float, epsilon: float,
             temperature: float, kd: str, per_padded_position: bool, decay: float) -> LossTerms:
    """The A2D loss (method doc, sections 3 and 4): total = L_word + L_att, sums the caller divides
    by the number of target tokens, as fairseq does.

    L_word = sum_{non-pad}[(1-alpha)*l_LS + alpha*l_KD], divided by B*T_max (`per_padded_position`,
             the released code's mean over padded positions); l_KD as in word_level_loss (`kd`).
    L_att  = decay * sum_k w_k * KL_k, `kls` holding KL_k of each enabled type (a2d.align.AlignmentLoss);
             the paper's weights are 1, 1/2, 1/2 for encoder self, decoder self, decoder cross.
    """
    w = word_level_loss(student_logits, teacher_logits, target, mask, alpha=alpha, epsilon=epsilon,
                        temperature=temperature, kd=kd)
    word = w.word / target.numel() if per_padded_position else w.word
    attention = decay * sum(weights[name] * kl for name, kl in kls.items())
    return LossTerms(total=word + attention, nll=w.nll, ls=w.ls, kd=w.kd, word=word, attention=attention,
                     attention_kl=kls)


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
