"""Scoring with sacrebleu's Python API: BLEU and chrF, each with its reproducibility signature."""

from __future__ import annotations

from sacrebleu.metrics import BLEU, CHRF

from a2d.files import InputError, read_lines


def corpus_bleu(hypotheses: list[str], references: list[str]) -> float:
    return BLEU().corpus_score(hypotheses, [references]).score


def score_files(hyp_path: str, ref_path: str) -> dict:
    """BLEU and chrF of a hypothesis file against one reference file, aligned by line."""
    hyps, refs = read_lines(hyp_path), read_lines(ref_path)
    if len(hyps) != len(refs):
        raise InputError(f"{hyp_path} has {len(hyps)} lines but the reference {ref_path} has {len(refs)}")
    bleu, chrf = BLEU(), CHRF()
    bleu_score, chrf_score = bleu.corpus_score(hyps, [refs]), chrf.corpus_score(hyps, [refs])
    return {
        "bleu": round(bleu_score.score, 2),
        "chrf": round(chrf_score.score, 2),
        "bleu_signature": str(bleu.get_signature()),
        "chrf_signature": str(chrf.get_signature()),
        "bleu_detail": str(bleu_score),
        "sentences": len(hyps),
    }
