"""Scoring with sacrebleu's Python API: BLEU and chrF with their reproducibility signatures, and
sacrebleu's paired bootstrap resampling test between systems on the same test set."""

from __future__ import annotations

from dataclasses import dataclass

from sacrebleu.metrics import BLEU, CHRF
from sacrebleu.significance import PairedTest

from a2d.files import InputError, read_lines


@dataclass(frozen=True)
class EvaluationConfig:
    tokenize: str = "13a"  # sacrebleu's default; "none" scores already-tokenised text (the IWSLT'14 recipe)
    lowercase: bool = False
    bootstrap_samples: int = 1000
    significance_level: float = 0.05


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


def significance(names: list[str], hyp_paths: list[str], ref_path: str, baselines: list[str],
                 cfg: EvaluationConfig) -> list[dict]:
    """Every student against every baseline student, pairing runs of the same seed
    (`x_seed2` against `student_nokd_seed2`); the teacher and a baseline's own runs are not tested."""
    from a2d.config import base_name

    refs = read_lines(ref_path)
    hyps = {name: read_hypotheses(path, refs, ref_path) for name, path in zip(names, hyp_paths, strict=True)}
    rows = []
    for baseline in baselines:
        partners: dict[str, list[str]] = {}  # baseline run -> the runs compared with it
        for name in names:
            base = base_name(name)
            if name == "teacher" or base == baseline:
                continue
            partner = baseline + name[len(base):]  # same seed suffix
            if partner not in hyps:
                raise InputError(f"significance: no run {partner!r} of baseline {baseline!r} to pair with {name!r}")
            partners.setdefault(partner, []).append(name)
        for partner, runs in partners.items():
            p_values = paired_bootstrap((partner, hyps[partner]), [(r, hyps[r]) for r in runs], refs, cfg)
            rows += [{"system": run, "baseline": baseline, "baseline_run": partner,
                      **{f"{metric}_p": p for metric, p in p_values[run].items()}} for run in runs]
    return rows
