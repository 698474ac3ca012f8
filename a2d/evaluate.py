"""Scoring with sacrebleu's Python API: BLEU and chrF with their reproducibility signatures, and
sacrebleu's paired bootstrap resampling test between systems on the same test set."""

from __future__ import annotations

from sacrebleu.metrics import BLEU, CHRF
from sacrebleu.significance import PairedTest

from a2d.config import EvaluationConfig
from a2d.files import InputError, read_lines


def metrics(cfg: EvaluationConfig) -> dict:
    return {"bleu": BLEU(tokenize=cfg.tokenize, lowercase=cfg.lowercase), "chrf": CHRF(lowercase=cfg.lowercase)}


def corpus_bleu(hypotheses: list[str], references: list[str]) -> float:
    return BLEU().corpus_score(hypotheses, [references]).score


def read_hypotheses(hyp_path: str, references: list[str], ref_path: str) -> list[str]:
    hyps = read_lines(hyp_path)
    if len(hyps) != len(references):
        raise InputError(f"{hyp_path} has {len(hyps)} lines but the reference {ref_path} has {len(references)}")
    return hyps


def score_files(hyp_path: str, ref_path: str, cfg: EvaluationConfig = EvaluationConfig()) -> dict:
    """BLEU and chrF of a hypothesis file against one reference file, aligned by line."""
    refs = read_lines(ref_path)
    hyps = read_hypotheses(hyp_path, refs, ref_path)
    result = {"sentences": len(hyps)}
    for name, metric in metrics(cfg).items():
        score = metric.corpus_score(hyps, [refs])
        result[name] = round(score.score, 2)
        result[f"{name}_signature"] = str(metric.get_signature())
        result[f"{name}_detail"] = str(score)
    return result


def paired_bootstrap(baseline: tuple[str, list[str]], systems: list[tuple[str, list[str]]], references: list[str],
                     cfg: EvaluationConfig) -> dict[str, dict[str, float]]:
    """p-values of each system against the baseline, per metric (sacrebleu's paired bootstrap)."""
    test = PairedTest([baseline, *systems], metrics(cfg), [references], test_type="bs", n_samples=cfg.bootstrap_samples)
    _, scores = test()
    columns = [column for column in scores if column != "System"]  # named by metric: BLEU, chrF2
    return {name: {key: scores[column][i].p_value for key, column in zip(("bleu", "chrf"), columns, strict=True)}
            for i, name in enumerate(scores["System"]) if i > 0}


def significance(hyp_paths: dict[str, str], ref_path: str, pairs: list[tuple[str, str, list[str]]],
                 cfg: EvaluationConfig) -> list[dict]:
    """Paired tests of runs against baseline runs: `pairs` holds (baseline, its run, the runs compared
    with that run), see a2d.plan.seed_pairs; `hyp_paths` maps every run to its translations."""
    refs = read_lines(ref_path)
    hyps = {name: read_hypotheses(path, refs, ref_path) for name, path in hyp_paths.items()}
    rows = []
    for baseline, partner, runs in pairs:
        p_values = paired_bootstrap((partner, hyps[partner]), [(r, hyps[r]) for r in runs], refs, cfg)
        rows += [{"system": run, "baseline": baseline, "baseline_run": partner,
                  **{f"{metric}_p": p for metric, p in p_values[run].items()}} for run in runs]
    return rows
