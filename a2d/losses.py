"""Loss functions: small pure functions on tensors, fp32 inside, each citing its equation.

Token-level terms return sums over non-pad target positions; the caller decides the normaliser,
because the faithful A2D loss and the plain baselines normalise differently (method doc, section 3).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from a2d.model import AttentionMaps

# Weights of the attention types in L_att (method doc, section 3).
A2D_TYPE_WEIGHTS = {"encoder_self": 1.0, "decoder_self": 0.5, "decoder_cross": 0.5}


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


def soft_cross_entropy(student_logits: Tensor, teacher_logits: Tensor, mask: Tensor, temperature: float = 1.0) -> Tensor:
    """Word-level KD (Hinton et al. 2015; Kim & Rush 2016): -sum_v q_v log p_v per token, summed.

    q is the teacher's distribution at temperature tau (detached), p the student's.
    (B, T, V) logits, mask (B, T). The tau^2 factor, where wanted, is the caller's.
    """
    teacher_probs = torch.softmax(teacher_logits.detach().float() / temperature, dim=-1)
    student_lprobs = torch.log_softmax(student_logits.float() / temperature, dim=-1)
    return -(teacher_probs * student_lprobs).sum(-1)[mask].sum()


def flattened_map_kl(student_mixed: Tensor, teacher_probs: Tensor) -> Tensor:
    """KL of A2D's faithful mode for one attention type (method doc, section 3).

    student_mixed: AAM output (B, C, Q, K), unnormalised; teacher_probs: teacher maps (B, C, Q, K).
    Each (b, c) map is flattened to Q*K entries; the student gets log-softmax over the whole map,
    the teacher gets softmax over its *probabilities* (a second softmax, as the released code does).
    Returns sum over b, c of KL(teacher || student), unmasked.
    """
    B, C = student_mixed.shape[:2]
    student_log = torch.log_softmax(student_mixed.float().reshape(B, C, -1), dim=-1)
    teacher_log = torch.log_softmax(teacher_probs.detach().float().reshape(B, C, -1), dim=-1)
    return F.kl_div(student_log, teacher_log, log_target=True, reduction="sum")


def a2d_faithful_attention_loss(aligned: AttentionMaps, teacher: AttentionMaps) -> dict[str, Tensor]:
    """Per-type KL terms of faithful A2D; L_att = beta*gamma^(epoch-1) * sum_k w_k * KL_k."""
    teacher_maps = dict(teacher.items())
    return {name: flattened_map_kl(mixed, teacher_maps[name]) for name, mixed in aligned.items()}


def a2d_decay(beta: float, gamma: float, epoch: int) -> float:
    """beta * gamma^(epoch - 1), epochs counted from 1."""
    return beta * gamma ** (epoch - 1)


def a2d_faithful_loss(student_logits: Tensor, teacher_logits: Tensor, target: Tensor, mask: Tensor,
                      aligned: AttentionMaps, teacher_maps: AttentionMaps, *, alpha: float,
                      epsilon: float, decay: float) -> dict[str, Tensor]:
    """The A2D loss as the released code computes it (method doc, section 3).

    L_word = sum_{non-pad}[(1-alpha)*l_LS + alpha*l_KD] / (B*T_max)   (a mean over padded positions)
    L_att  = decay * (KL_enc + 1/2 KL_dself + 1/2 KL_dcross)           (sums over batch and heads)
    Returns every term and "total" = L_word + L_att; the caller divides the gradient by the
    number of target tokens, as fairseq does.
    """
    ls, nll = label_smoothed_nll(student_logits, target, mask, epsilon)
    kd = soft_cross_entropy(student_logits, teacher_logits, mask)
    word = ((1.0 - alpha) * ls + alpha * kd) / target.numel()
    kls = a2d_faithful_attention_loss(aligned, teacher_maps)
    attention = decay * sum(A2D_TYPE_WEIGHTS[name] * kl for name, kl in kls.items())
    terms = {"total": word + attention, "word": word, "attention": attention, "nll": nll, "ls": ls, "kd": kd}
    terms.update({f"kl_{name}": kl for name, kl in kls.items()})
    return terms
