"""Greedy and beam search over the model's key/value cache, batched.

Output length rule (fairseq's): at most max_len_a * source_length + max_len_b tokens before EOS;
a hypothesis that reaches it is ended with EOS. Beam scores are sums of log-probabilities divided
by length ** length_penalty, the length counting the EOS.
"""

from __future__ import annotations

import time
import warnings

import torch
from torch import Tensor

from a2d.config import SearchConfig
from a2d.data import pad
from a2d.model import BOS_ID, EOS_ID, PAD_ID, Transformer


def max_lengths(model: Transformer, src: Tensor, max_len_a: float, max_len_b: int) -> Tensor:
    """(B,) longest output (tokens before EOS) allowed for each source sentence."""
    src_lengths = (src != PAD_ID).sum(1)
    limit = (max_len_a * src_lengths.float() + max_len_b).long()
    return limit.clamp(min=1, max=model.cfg.max_positions - 1)


def _next_token_lprobs(lprobs: Tensor, step: int, must_end: Tensor, min_len: int) -> Tensor:
    """Never emit PAD or BOS, nor EOS before `min_len` tokens (at least 1: no empty output, as
    fairseq); rows in `must_end` may only emit EOS. lprobs (N, V), must_end (N,)."""
    lprobs[:, PAD_ID] = float("-inf")
    lprobs[:, BOS_ID] = float("-inf")
    eos = lprobs[:, EOS_ID].clone()
    if step < max(min_len, 1):
        eos = eos.masked_fill(~must_end, float("-inf"))
    lprobs[must_end] = float("-inf")
    lprobs[:, EOS_ID] = eos
    return lprobs


@torch.no_grad()
def greedy_search(model: Transformer, src: Tensor, max_len_a: float, max_len_b: int, min_len: int = 1) -> list[list[int]]:
    """src (B, S) -> one token list per sentence (without EOS)."""
    B, device = src.size(0), src.device
    limits = max_lengths(model, src, max_len_a, max_len_b)
    state = model.start_decoding(model.encode(src), max_steps=int(limits.max()) + 1)
    tokens = torch.full((B,), BOS_ID, dtype=torch.long, device=device)
    steps, finished = [], torch.zeros(B, dtype=torch.bool, device=device)
    for step in range(int(limits.max()) + 1):
        lprobs, state = model.decode_step(tokens, state)
        tokens = _next_token_lprobs(lprobs, step, step >= limits, min_len).argmax(-1)  # (B,)
        steps.append(tokens.masked_fill(finished, EOS_ID))
        finished |= tokens == EOS_ID
        if finished.all():
            break
    # Each row up to its first EOS (every row has one: a row at its limit may only emit EOS).
    out = torch.stack(steps, dim=1).tolist()  # (B, steps)
    return [row[:row.index(EOS_ID)] for row in out]


@torch.no_grad()
def beam_search(model: Transformer, src: Tensor, beam_size: int, length_penalty: float,
                max_len_a: float, max_len_b: int, min_len: int = 1) -> list[list[int]]:
    """src (B, S) -> the best hypothesis per sentence (without EOS).

    A sentence is finished when `beam_size` hypotheses have ended with EOS; finished sentences
    leave the batch, so the cost follows the sentences still being searched.
    """
    B, k, device = src.size(0), beam_size, src.device
    limits = max_lengths(model, src, max_len_a, max_len_b)
    state = model.start_decoding(model.encode(src), max_steps=int(limits.max()) + 1)
    state = state.select(torch.arange(B, device=device).repeat_interleave(k))
    active = torch.arange(B, device=device)  # (A,) original index of each sentence still searched
    scores = torch.full((B, k), float("-inf"), device=device)
    scores[:, 0] = 0.0  # at the first step all beams are identical: expand only one
    history = torch.empty(B * k, 0, dtype=torch.long, device=device)  # (A*k, t)
    tokens = torch.full((B * k,), BOS_ID, dtype=torch.long, device=device)
    finalized: list[list[tuple[float, list[int]]]] = [[] for _ in range(B)]

    for step in range(int(limits.max()) + 1):
        A = active.numel()
        lprobs, state = model.decode_step(tokens, state)  # (A*k, V)
        V = lprobs.size(-1)
        lprobs = _next_token_lprobs(lprobs, step, (step >= limits[active]).repeat_interleave(k), min_len)
        candidates = (scores.view(A * k, 1) + lprobs).view(A, k * V)
        top_scores, top = candidates.topk(2 * k, dim=1)  # (A, 2k): at most k of them are EOS
        top_beams, top_tokens = top // V, top % V

        # Hypotheses ending here: EOS among the first k candidates, as fairseq does.
        norm = (step + 1) ** length_penalty
        ended = (top_tokens[:, :k] == EOS_ID) & torch.isfinite(top_scores[:, :k])
        for a, j in ended.nonzero().tolist():
            done = finalized[int(active[a])]
            if len(done) < k:
                row = a * k + int(top_beams[a, j])
                done.append((float(top_scores[a, j]) / norm, history[row].tolist()))

        # The next beams: the best k candidates that did not end.
        alive = top_tokens != EOS_ID
        rank = alive.cumsum(1)
        chosen = (alive & (rank <= k)).nonzero()[:, 1].view(A, k)  # (A, k) positions in the 2k
        next_beams = top_beams.gather(1, chosen)
        scores = top_scores.gather(1, chosen)
        tokens = top_tokens.gather(1, chosen).view(-1)
        rows = (torch.arange(A, device=device)[:, None] * k + next_beams).view(-1)  # (A*k,)

        keep = torch.tensor([len(finalized[i]) < k for i in active.tolist()], dtype=torch.bool, device=device)
        if not keep.any():
            break
        dropping = not keep.all()
        if dropping:  # drop finished sentences from the batch
            rows = rows.view(A, k)[keep].view(-1)
            scores, tokens = scores[keep], tokens.view(A, k)[keep].view(-1)
            active = active[keep]
        history = torch.cat([history[rows], tokens[:, None]], dim=1)
        state = state.select(rows, same_sources=not dropping)

    return [max(hyps, key=lambda h: h[0])[1] if hyps else [] for hyps in finalized]


@torch.no_grad()
def translate(model: Transformer, sources: list[Tensor], cfg: SearchConfig, done=None) -> list[list[int]]:
    """Decode encoded sources (each ending in EOS) in length-sorted batches, on the model's device;
    keeps input order. A source longer than the model's positions is cut to fit (with a warning):
    every input line gets an output line. `done(n)`, if given, hears of each batch's n sentences."""
    model.eval()
    device = next(model.parameters()).device
    limit = model.cfg.max_positions
    too_long = sum(len(s) > limit for s in sources)
    if too_long:
        warnings.warn(f"{too_long} of {len(sources)} sources exceed max_positions={limit} tokens; "
                      f"translating their first {limit - 1} tokens")
        eos = torch.tensor([EOS_ID])
        sources = [torch.cat([s[:limit - 1], eos]) if len(s) > limit else s for s in sources]
    order = sorted(range(len(sources)), key=lambda i: len(sources[i]))
    outputs: list[list[int]] = [[] for _ in sources]
    for start in range(0, len(order), cfg.batch_size):
        ids = order[start:start + cfg.batch_size]
        src = pad([sources[i] for i in ids]).to(device)
        if cfg.beam_size == 1:
            hyps = greedy_search(model, src, cfg.max_len_a, cfg.max_len_b, cfg.min_len)
        else:
            hyps = beam_search(model, src, cfg.beam_size, cfg.length_penalty, cfg.max_len_a, cfg.max_len_b, cfg.min_len)
        for i, hyp in zip(ids, hyps):
            outputs[i] = hyp
        if done:
            done(len(ids))
    return outputs


def speed(hyps: list[list], seconds: float) -> dict:
    """Sentences and generated tokens (EOS included, as fairseq counts them) per second."""
    tokens = sum(len(h) + 1 for h in hyps)
    return {"sentences": len(hyps), "generated_tokens": tokens, "seconds": round(seconds, 4),
            "sentences_per_s": round(len(hyps) / seconds, 3), "tokens_per_s": round(tokens / seconds, 1)}


def timed_translate(model: Transformer, sources: list[Tensor], cfg: SearchConfig) -> tuple[list[list[int]], dict]:
    """`translate`, and its `speed` over the decoding alone (model loading and subword (de)coding left out)."""
    started = time.perf_counter()
    hyps = translate(model, sources, cfg)
    return hyps, {**speed(hyps, time.perf_counter() - started), "threads": torch.get_num_threads(),
                  "device": str(next(model.parameters()).device), "beam_size": cfg.beam_size,
                  "batch_size": cfg.batch_size}
