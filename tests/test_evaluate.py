"""Scoring (sacrebleu's BLEU, chrF, chrF++ and TER with signatures and intervals) and the paired tests
between runs."""

import dataclasses
import json
import random

import pytest

from a2d.config import EvaluationConfig
from a2d.evaluate import score_files, significance
from a2d.files import InputError
from a2d.plan import seed_pairs


def write(path, lines):
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    return str(path)


def test_scores_carry_their_signatures_and_follow_the_settings(tmp_path):
    ref = write(tmp_path / "ref", ["The cat sat on the mat .", "A dog ran ."])
    exact = score_files(write(tmp_path / "same", ["The cat sat on the mat .", "A dog ran ."]), ref)
    assert exact["bleu"] == 100.0 and exact["chrf"] == 100.0 and exact["sentences"] == 2
    assert "tok:13a" in exact["bleu_signature"] and "case:mixed" in exact["bleu_signature"]
    shouted = write(tmp_path / "upper", ["THE CAT SAT ON THE MAT .", "A DOG RAN ."])
    assert score_files(shouted, ref)["bleu"] < 10
    folded = score_files(shouted, ref, EvaluationConfig(lowercase=True))
    assert folded["bleu"] == 100.0 and "case:lc" in folded["bleu_signature"]
    assert "tok:none" in score_files(shouted, ref, EvaluationConfig(tokenize="none"))["bleu_signature"]
    assert exact["chrf++"] == 100.0 and exact["ter"] == 0.0
    assert "nw:2" in exact["chrf++_signature"] and "nw:0" in exact["chrf_signature"]
    assert exact["ter_signature"].startswith("nrefs:1|case:lc|tok:tercom")
    assert all("bs:" not in exact[f"{m}_signature"] for m in ("bleu", "chrf", "chrf++", "ter"))


def noisy_corpus(tmp_path, keep_rates, sentences=60, seed=0):
    """A reference file and one hypothesis file per keep rate (each word kept or replaced)."""
    rng = random.Random(seed)
    words = "the a cat dog sat ran on mat house big small red".split()
    refs = [" ".join(rng.choice(words) for _ in range(8)) for _ in range(sentences)]
    hyps = [write(tmp_path / f"hyp{i}", [" ".join(w if rng.random() < keep else rng.choice(words) for w in r.split())
                                         for r in refs]) for i, keep in enumerate(keep_rates)]
    return write(tmp_path / "ref", refs), hyps


def test_every_score_has_a_95_percent_bootstrap_interval(tmp_path):
    ref, (good, bad) = noisy_corpus(tmp_path, (0.9, 0.4))
    few, many = (score_files(good, ref, EvaluationConfig(bootstrap_samples=n)) for n in (50, 1000))
    json.dumps(many)  # what `evaluate` writes
    for metric in ("bleu", "chrf", "chrf++", "ter"):
        assert 0 < many[f"{metric}_ci95"] < 25
        assert abs(many[f"{metric}_bootstrap_mean"] - many[metric]) < many[f"{metric}_ci95"]
        assert few[metric] == many[metric]  # the score itself does not resample
    worse = score_files(bad, ref)
    assert worse["bleu"] < many["bleu"] and worse["ter"] > many["ter"]
    # a system whose resamples score 0 BLEU in places (the real-data pipeline test holds the case
    # where sacrebleu's own corpus_score(n_bootstrap) failed)
    ref_lines = open(ref).read().splitlines()
    nearly_nothing = write(tmp_path / "nothing", ["zebra"] * (len(ref_lines) - 1) + [ref_lines[-1]])
    assert score_files(nearly_nothing, ref)["bleu_ci95"] >= 0


def test_a_hypothesis_file_of_another_length_names_both_files(tmp_path):
    ref = write(tmp_path / "ref", ["a b", "c d"])
    with pytest.raises(InputError, match=r"hyp has 1 lines but the reference .*ref has 2"):
        score_files(write(tmp_path / "hyp", ["a b"]), ref)


def test_significance_pairs_runs_of_the_same_seed(tmp_path):
    rng = random.Random(0)
    words = "the a cat dog sat ran on mat house big small red".split()
    refs = [" ".join(rng.choice(words) for _ in range(8)) for _ in range(60)]
    noisy = lambda keep: [" ".join(w if rng.random() < keep else rng.choice(words) for w in r.split()) for r in refs]  # noqa: E731
    ref = write(tmp_path / "ref", refs)
    names = ["teacher", "student_nokd_seed1", "student_nokd_seed2", "student_a2d_seed1", "student_a2d_seed2"]
    hyps = {name: write(tmp_path / name, noisy(keep)) for name, keep in zip(names, (0.9, 0.3, 0.3, 0.9, 0.3))}
    pairs = seed_pairs(names, ["student_nokd"])
    assert pairs == [("student_nokd", "student_nokd_seed1", ["student_a2d_seed1"]),
                     ("student_nokd", "student_nokd_seed2", ["student_a2d_seed2"])]
    rows = significance(hyps, ref, pairs, EvaluationConfig(bootstrap_samples=200))
    assert [(r["system"], r["baseline_run"]) for r in rows] == [("student_a2d_seed1", "student_nokd_seed1"),
                                                                ("student_a2d_seed2", "student_nokd_seed2")]
    assert rows[0]["bleu_p"] < 0.05 < rows[1]["bleu_p"]  # much better vs. equally noisy
    assert rows[0]["ter_p"] < 0.05 < rows[1]["ter_p"] and rows[0]["chrf++_p"] < 0.05
    same_count = EvaluationConfig(bootstrap_samples=500, randomisation_trials=500)
    bootstrap = significance(hyps, ref, pairs, same_count)
    randomised = significance(hyps, ref, pairs, dataclasses.replace(same_count,
                                                                    significance_test="approximate_randomisation"))
    assert randomised[0]["bleu_p"] < 0.05 < randomised[1]["bleu_p"]
    assert randomised[1]["bleu_p"] != bootstrap[1]["bleu_p"]  # the same number of samples, another test
    with pytest.raises(InputError, match="no run 'student_wkd_seed1' of baseline 'student_wkd'"):
        seed_pairs(names, ["student_wkd"])
