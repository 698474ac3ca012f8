"""Scoring with sacrebleu's Python API: BLEU, chrF, chrF++ and TER with their reproducibility
signatures and bootstrap confidence intervals, and sacrebleu's paired tests (bootstrap resampling or
approximate randomisation) between systems on the same test set; COMET (a2d.comet) when configured."""

from __future__ import annotations

from sacrebleu.metrics import BLEU, CHRF, TER
from sacrebleu.significance import PairedTest

from a2d.config import EvaluationConfig
from a2d.files import InputError, read_lines

SACREBLEU_METRICS = ("bleu", "chrf", "chrf++", "ter")
METRICS = (*SACREBLEU_METRICS, "comet")  # the keys of metrics JSON, CSV columns and table columns
LOWER_IS_BETTER = frozenset({"ter"})  # an edit rate
TEST_TYPES = {"paired_bootstrap": "bs", "approximate_randomisation": "ar"}  # sacrebleu's names


def metrics(cfg: EvaluationConfig) -> dict:
    """The sacrebleu metric of each of SACREBLEU_METRICS, in that order."""
    return {"bleu": BLEU(tokenize=cfg.tokenize, lowercase=cfg.lowercase), "chrf": CHRF(lowercase=cfg.lowercase),
            "chrf++": CHRF(word_order=2, lowercase=cfg.lowercase), "ter": TER()}


def corpus_bleu(hypotheses: list[str], references: list[str]) -> float:
    return BLEU().corpus_score(hypotheses, [references]).score


def read_hypotheses(hyp_path: str, references: list[str], ref_path: str) -> list[str]:
    hyps = read_lines(hyp_path)
    if len(hyps) != len(references):
        raise InputError(f"{hyp_path} has {len(hyps)} lines but the reference {ref_path} has {len(references)}")
    return hyps


def score_files(hyp_path: str, ref_path: str, cfg: EvaluationConfig = EvaluationConfig(),
                src_path: str | None = None) -> dict:
    """Every metric of a hypothesis file against one reference file, aligned by line: the score, its
    signature, sacrebleu's summary line, and the mean and half-width of its 95% bootstrap interval
    (`<metric>_ci95`: the score lies in mean ± ci95 in 95% of resamples). COMET, when configured,
    also reads the sources."""
    refs = read_lines(ref_path)
    hyps = read_hypotheses(hyp_path, refs, ref_path)
    result = {"sentences": len(hyps)}
    intervals = bootstrap_intervals(hyps, refs, cfg)
    for name, metric in metrics(cfg).items():
        score = metric.corpus_score(hyps, [refs])
        result[name] = round(score.score, 2)
        result[f"{name}_signature"] = str(metric.get_signature())
        result[f"{name}_detail"] = str(score)
        result[f"{name}_bootstrap_mean"], result[f"{name}_ci95"] = intervals[name]
    if cfg.comet:
        if src_path is None:
            raise ValueError("COMET needs the source sentences (src_path)")
        from a2d import comet

        sources = read_hypotheses(src_path, refs, ref_path)
        result.update(comet.score(cfg.comet, sources, hyps, refs, cfg.comet_batch_size, cfg.bootstrap_samples))
    return result


def bootstrap_intervals(hyps: list[str], refs: list[str], cfg: EvaluationConfig) -> dict[str, tuple[float, float]]:
    """Per metric the mean and half-width of the 95% interval over `bootstrap_samples` resamples of
    the sentences: sacrebleu's paired test computes them for its baseline, here the only system.
    (corpus_score's own n_bootstrap fails on some systems: its resampled BLEU mixes float and numpy
    float32, which Python's statistics.mean refuses.)"""
    test = PairedTest([("system", hyps)], metrics(cfg), [refs], test_type="bs", n_samples=cfg.bootstrap_samples)
    _, scores = test()
    columns = [column for column in scores if column != "System"]
    return {name: (round(float(scores[column][0].mean), 2), round(float(scores[column][0].ci), 2))
            for name, column in zip(SACREBLEU_METRICS, columns, strict=True)}


def paired_test(baseline: tuple[str, list[str]], systems: list[tuple[str, list[str]]], references: list[str],
                cfg: EvaluationConfig) -> dict[str, dict[str, float]]:
    """p-values of each system against the baseline, per metric (sacrebleu's paired test)."""
    test_type = TEST_TYPES[cfg.significance_test]
    samples = cfg.bootstrap_samples if test_type == "bs" else cfg.randomisation_trials
    test = PairedTest([baseline, *systems], metrics(cfg), [references], test_type=test_type, n_samples=samples)
    _, scores = test()
    columns = [column for column in scores if column != "System"]  # named by sacrebleu: BLEU, chrF2, chrF2++, TER
    return {name: {key: scores[column][i].p_value for key, column in zip(SACREBLEU_METRICS, columns, strict=True)}
            for i, name in enumerate(scores["System"]) if i > 0}


def significance(hyp_paths: dict[str, str], ref_path: str, pairs: list[tuple[str, str, list[str]]],
                 cfg: EvaluationConfig) -> list[dict]:
    """Paired tests of runs against baseline runs: `pairs` holds (baseline, its run, the runs compared
    with that run), see a2d.plan.seed_pairs; `hyp_paths` maps every run to its translations."""
    refs = read_lines(ref_path)
    hyps = {name: read_hypotheses(path, refs, ref_path) for name, path in hyp_paths.items()}
    rows = []
    for baseline, partner, runs in pairs:
        p_values = paired_test((partner, hyps[partner]), [(r, hyps[r]) for r in runs], refs, cfg)
        rows += [{"system": run, "baseline": baseline, "baseline_run": partner,
                  **{f"{metric}_p": p for metric, p in p_values[run].items()}} for run in runs]
    return rows
