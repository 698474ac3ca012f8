"""Paper-layout tables: mean ± std over seeds, significance marks, LaTeX, provenance."""

import json

import pandas as pd
from conftest import training_summary

from a2d.files import read_json, write_json
from a2d.tables import training_frame, write_tables, write_training_table

SIG = {"bleu_signature": "nrefs:1|tok:13a", "chrf_signature": "nrefs:1|nc:6"}


def results(tmp_path, scores: dict[str, tuple[float, float]], p_values: dict[str, float]):
    """Metric and summary files for runs on one test set, and a significance file vs student_nokd."""
    metrics, summaries = [], []
    for run, (bleu, chrf) in scores.items():
        metrics.append(tmp_path / f"{run}.json")
        write_json(metrics[-1], {"system": run, "test_set": "test", "bleu": bleu, "chrf": chrf, **SIG})
        summaries.append(tmp_path / f"{run}.train.json")
        method = {"student_nokd": "none", "student_wkd": "word_kd"}.get(run.split("_seed")[0], "a2d")
        training_summary(run, method, 1000 if run == "teacher" else 100).write(summaries[-1])
    comparisons = [{"system": run, "baseline": baseline, "baseline_run": baseline + run[-6:], "bleu_p": p, "chrf_p": p}
                   for (run, baseline), p in p_values.items()]
    write_json(tmp_path / "sig.json", {"test_set": "test", "comparisons": comparisons})
    return [str(p) for p in metrics], [str(p) for p in summaries], [str(tmp_path / "sig.json")]


def test_mean_std_marks_latex_and_provenance(tmp_path):
    scores = {"teacher": (30.0, 55.0), "student_nokd_seed1": (20.0, 50.0), "student_nokd_seed2": (22.0, 52.0),
              "student_a2d_seed1": (24.0, 51.0), "student_a2d_seed2": (25.0, 50.0),
              "student_wkd_seed1": (23.0, 53.0), "student_wkd_seed2": (21.0, 53.0)}
    # a2d: significant in both seed pairs for BLEU; chrF has p < 0.05 but is lower in seed 2.
    # wkd: significant in seed 1 only.
    # a2d vs wkd: better and p < 0.05 in both seed pairs for BLEU.
    p_values = {("student_a2d_seed1", "student_nokd"): 0.01, ("student_a2d_seed2", "student_nokd"): 0.02,
                ("student_wkd_seed1", "student_nokd"): 0.01, ("student_wkd_seed2", "student_nokd"): 0.3,
                ("student_a2d_seed1", "student_wkd"): 0.04, ("student_a2d_seed2", "student_wkd"): 0.001}
    metrics, summaries, sig = results(tmp_path, scores, p_values)
    table = write_tables(metrics, summaries, str(tmp_path / "tables"), significance_paths=sig,
                         baselines={"student_nokd": "none", "student_wkd": "word_kd"}, config_json='{"config": {"experiment": "x"}}')
    assert list(table.index) == ["teacher", "student_nokd", "student_a2d", "student_wkd"]
    assert table.loc["student_a2d", "test bleu"] == "24.50 ± 0.71†‡"  # std of (24, 25), n-1
    assert table.loc["student_a2d", "test chrf"] == "50.50 ± 0.71"  # 50 < 52 in seed 2: no mark
    assert table.loc["student_wkd", "test bleu"] == "22.00 ± 1.41"
    assert table.loc["teacher", "test bleu"] == "30.00" and table.loc["teacher", "seeds"] == 1

    runs = pd.read_csv(tmp_path / "tables" / "results.csv")
    assert len(runs) == 7 and runs.set_index("run").loc["student_wkd_seed2", "bleu_p_vs_student_nokd"] == 0.3
    # marks follow the baseline's method, not its position
    only_wkd = write_tables(metrics, summaries, str(tmp_path / "t2"), significance_paths=sig, baselines={"student_wkd": "word_kd"})
    assert only_wkd.loc["student_a2d", "test bleu"] == "24.50 ± 0.71‡"
    markdown = (tmp_path / "tables" / "results.md").read_text()
    assert "| student_a2d  | a2d" in markdown and "- sacrebleu bleu: nrefs:1|tok:13a" in markdown
    latex = (tmp_path / "tables" / "results.tex").read_text()
    assert r"student\_a2d & a2d & 100 & 2 & 24.50 $\pm$ 0.71$^\dagger$$^\ddagger$ & 50.50 $\pm$ 0.71 \\" in latex
    provenance = json.loads((tmp_path / "tables" / "provenance.json").read_text())
    assert provenance["config"] == {"experiment": "x"} and len(provenance["git_commit"]) == 40  # of the a2d checkout
    assert provenance["packages"]["torch"] is not None and provenance["packages"]["sacrebleu"] is not None


def test_an_evaluation_set_inside_the_training_data_is_flagged_under_the_table(tmp_path):
    metrics, summaries, _ = results(tmp_path, {"teacher": (30.0, 55.0)}, {})
    write_json(tmp_path / "cleaning.json", {"removed": {"in_eval_set": 585},
                                            "eval_overlap": {"valid": {"sources": 0.9651, "pairs": 0.9651},
                                                             "test": {"sources": 0.0, "pairs": 0.0}}})
    write_tables(metrics, summaries, str(tmp_path / "tables"), cleaning_path=str(tmp_path / "cleaning.json"))
    notes = (tmp_path / "tables" / "results.md").read_text()
    assert "- WARNING: 96.5% of the source sentences of valid were in the raw training data (585" in notes
    assert "of test were" not in notes and "blank" not in notes
    write_json(tmp_path / "cleaning.json", {"removed": {}, "eval_overlap": {}, "blank_references": {"test": 3}})
    write_tables(metrics, summaries, str(tmp_path / "tables"), cleaning_path=str(tmp_path / "cleaning.json"))
    notes = (tmp_path / "tables" / "results.md").read_text()
    assert "- WARNING: 3 references of test are blank (data.allow_blank_references)" in notes


def test_size_and_speed_columns_come_from_the_model_files_and_decoding_reports(tmp_path):
    scores = {"teacher": (30.0, 55.0), "student_a2d_seed1": (24.0, 51.0), "student_a2d_seed2": (25.0, 50.0)}
    metrics, summaries, _ = results(tmp_path, scores, {})
    speeds, models, exports = [], [], []
    for run, (sentences, seconds, megabytes) in {"teacher": (100, 4.0, 3.0), "student_a2d_seed1": (100, 1.0, 1.0),
                                                 "student_a2d_seed2": (100, 3.0, 1.0)}.items():
        speeds.append(tmp_path / f"{run}.test.speed.json")
        write_json(speeds[-1], {"sentences": sentences, "seconds": seconds, "threads": 2, "device": "cpu"})
        models.append(tmp_path / run / "model.safetensors")
        models[-1].parent.mkdir()
        models[-1].write_bytes(b"x" * int(megabytes * 1e6))
        exports.append(tmp_path / f"{run}.ct2")
        exports[-1].mkdir()
        (exports[-1] / "model.bin").write_bytes(b"x" * int(megabytes * 0.25e6))
        (exports[-1] / "config.json").write_bytes(b"x" * 1000)
    table = write_tables(metrics, summaries, str(tmp_path / "tables"), speed_paths=[str(p) for p in speeds],
                         model_paths=[str(p) for p in models], export_paths=[str(p) for p in exports])
    assert table.loc["teacher", ["MB", "CT2 MB", "sent/s"]].tolist() == ["3", "0.751", "25.0"]
    assert table.loc["student_a2d", "sent/s"] == "50.0"  # 200 sentences in 4 s over both seeds
    assert "sent/s: sentences per second of the pipeline's own beam search" in (tmp_path / "tables" / "results.md").read_text()
    without = write_tables(metrics, summaries, str(tmp_path / "t2"))  # tables from before these columns existed
    assert "sent/s" not in without.columns and "MB" not in without.columns


def test_ter_marks_a_lower_rate_and_the_csv_holds_every_interval(tmp_path):
    scored = {"teacher": (30.0, 20.0), "student_nokd": (20.0, 60.0), "student_a2d": (24.0, 50.0),
              "student_worse": (24.5, 70.0)}
    metrics, summaries = [], []
    for run, (bleu, ter) in scored.items():
        metrics.append(str(tmp_path / f"{run}.json"))
        write_json(metrics[-1], {"system": run, "test_set": "test", **{m: v for m in ("bleu", "chrf", "chrf++") for v in [bleu]},
                                 "ter": ter, **{f"{m}_signature": f"sig-{m}" for m in ("bleu", "chrf", "chrf++", "ter")},
                                 **{f"{m}_ci95": 1.5 for m in ("bleu", "chrf", "chrf++", "ter")},
                                 **{f"{m}_bootstrap_mean": 1.0 for m in ("bleu", "chrf", "chrf++", "ter")}})
        summaries.append(str(tmp_path / f"{run}.train.json"))
        training_summary(run, "none" if run == "student_nokd" else "a2d").write(summaries[-1])
    comparisons = [{"system": run, "baseline": "student_nokd", "baseline_run": "student_nokd",
                    **{f"{m}_p": 0.001 for m in ("bleu", "chrf", "chrf++", "ter")}} for run in ("student_a2d", "student_worse")]
    write_json(tmp_path / "sig.json", {"test_set": "test", "comparisons": comparisons})
    table = write_tables(metrics, summaries, str(tmp_path / "tables"), significance_paths=[str(tmp_path / "sig.json")],
                         baselines={"student_nokd": "none"})
    assert table.loc["student_a2d", "test ter"] == "50.00†"  # 50 < 60: better
    assert table.loc["student_worse", "test ter"] == "70.00"  # p < 0.05 but a higher edit rate
    assert table.loc["student_worse", "test bleu"] == "24.50†"
    runs = pd.read_csv(tmp_path / "tables" / "results.csv").set_index("run")
    assert runs.loc["student_a2d", ["bleu_ci95", "ter_ci95", "chrf++_ci95"]].tolist() == [1.5, 1.5, 1.5]
    # one run scored before TER and chrF++ existed: those metrics leave the table, the rest stays
    old = {k: v for k, v in read_json(metrics[-1]).items() if not k.startswith(("ter", "chrf++"))}
    write_json(metrics[-1], old)
    mixed = write_tables(metrics, summaries, str(tmp_path / "mixed"), significance_paths=[str(tmp_path / "sig.json")],
                         baselines={"student_nokd": "none"})
    assert "test ter" not in mixed.columns and "test chrf++" not in mixed.columns
    assert mixed.loc["student_worse", "test bleu"] == "24.50†"
    notes = (tmp_path / "tables" / "results.md").read_text()
    assert "- sacrebleu ter: sig-ter" in notes and "TER: lower" in notes and "noise-prone" not in notes


def test_a_table_of_unusable_scores_says_its_ranking_is_noise_prone(tmp_path):
    scores = {"teacher": (12.0, 30.0), "student_nokd_seed1": (0.21, 9.0), "student_a2d_seed1": (0.26, 9.5)}
    metrics, summaries, sig = results(tmp_path, scores, {("student_a2d_seed1", "student_nokd"): 0.01})
    write_tables(metrics, summaries, str(tmp_path / "tables"), significance_paths=sig, baselines={"student_nokd": "none"})
    notes = (tmp_path / "tables" / "results.md").read_text()
    assert ("- WARNING: on test every student scores below 5 BLEU (evaluation.usable_bleu): the ranking of the "
            "students and its marks is noise-prone") in notes
    assert "approximate randomisation" not in notes and "paired bootstrap, 1000 samples" in notes
    from a2d.config import EvaluationConfig
    write_tables(metrics, summaries, str(tmp_path / "t2"), significance_paths=sig, baselines={"student_nokd": "none"},
                 evaluation=EvaluationConfig(usable_bleu=0.2, significance_test="approximate_randomisation"))
    notes = (tmp_path / "t2" / "results.md").read_text()
    assert "noise-prone" not in notes and "paired approximate randomisation, 10000 trials" in notes


def test_the_training_table_holds_each_runs_validation_curve_speed_and_benchmark(tmp_path):
    summaries = []
    for run, epochs in (("teacher", 2), ("student_nokd_seed1", 3)):
        summaries.append(str(tmp_path / f"{run}.train.json"))
        training_summary(run, "none", 100, epochs=epochs).write(summaries[-1])
    (tmp_path / "teacher.tsv").write_text("s\th:m:s\tmax_rss\tmax_vms\n"
                                          "1.0\t0:00:01\t10.0\t20.0\n"  # an earlier line: not the job's last
                                          "125.9\t0:02:05\t1536.0\t2048.0\n")
    frame = training_frame(summaries, [str(tmp_path / "teacher.tsv")])
    write_training_table(frame, tmp_path)
    rows = pd.read_csv(tmp_path / "training.csv").set_index("run")
    assert rows.loc["teacher", "valid_bleu_per_epoch"] == "10.00, 20.00"  # conftest: 10 BLEU per epoch
    assert rows.loc["student_nokd_seed1", "valid_bleu_per_epoch"] == "10.00, 20.00, 30.00"
    assert rows.loc["student_nokd_seed1", "system"] == "student_nokd" and rows.loc["teacher", "best_epoch"] == 2
    assert rows.loc["teacher", "wall_seconds"] == 125.9 and rows.loc["teacher", "peak_rss_gb"] == 1.5
    assert pd.isna(rows.loc["student_nokd_seed1", "wall_seconds"])  # no benchmark: left empty, not zero
    assert rows.loc["student_nokd_seed1", "last_train_nll"] == 1.0  # conftest: 3 / epoch
    markdown = (tmp_path / "training.md").read_text()
    assert "| teacher " in markdown and "2 min 5 s" in markdown and "100 to 100" in markdown
