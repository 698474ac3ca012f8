"""The benchmark harness's own arithmetic and parsing (the benchmarks themselves are not tests)."""

import json
import subprocess
import sys
from importlib import metadata

import pytest
from conftest import ROOT

from benchmarks import fairseq
from benchmarks.measure import Finished, throughput
from benchmarks.run import Report


def test_throughput_leaves_out_the_first_updates_and_weights_by_time():
    rows = [(1000, 10.0), (3000, 1.0), (1000, 1.0)]
    result = throughput(rows, skip=1)
    assert result["tokens_per_s"] == 2000.0 and result["updates_timed"] == 2
    assert result["seconds_per_update"] == 1.0 and result["median_update_tokens_per_s"] == 2000.0
    with pytest.raises(ValueError, match="none left"):
        throughput(rows, skip=3)


def test_fairseq_updates_are_timed_between_log_lines_and_epoch_starts_left_out():
    def line(update, epoch, wpb):
        record = {"epoch": epoch, "num_updates": str(update), "wpb": str(wpb), "wps": "1"}
        return f"2026-01-01 00:00:00 | INFO | train_inner | {json.dumps(record)}"

    finished = Finished([(5.0, "loading data"), (10.0, line(1, 1, 2000)), (12.0, line(2, 1, 3000)),
                         (13.5, line(3, 1, 2500)), (20.0, "end of epoch 1"), (25.0, line(4, 2, 2000)),
                         (26.0, line(5, 2, 1000))], peak_rss_gib=1.0, seconds=30.0)
    assert fairseq.update_rows(finished) == [(3000.0, 2.0), (2500.0, 1.5), (1000.0, 1.0)]


def test_fairseq_dictionary_follows_our_vocabulary_after_its_four_specials(tmp_path):
    fairseq.write_dictionary(["▁the", "s"], tmp_path / "dict.txt")
    assert (tmp_path / "dict.txt").read_text() == "▁the 1\ns 1\n"


def test_report_says_by_how_much_a_target_is_missed():
    report = Report()
    report.ratio("faster", 1.2, 1.5)
    report.ratio("smaller", 1.8, 1.5, higher_is_better=False)
    report.ratio("fast enough", 3.0, 10.0, higher_is_better=False)
    table = report.table().splitlines()
    assert table[1].endswith("MISSED by 20%") and table[2].endswith("MISSED by 20%") and table[3].endswith("met")
    assert [r["met"] for r in report.ratios] == [False, False, True]


def test_the_gpu_check_runs_every_step_on_cpu_at_tiny_sizes(tmp_path):
    """`make gpu-check`'s own code on CPU (the pipeline step as a dry run: the DAG itself is
    tests/test_pipeline.py's): every step gives its figures and none fails."""
    out = tmp_path / "gpu-check.json"
    done = subprocess.run([sys.executable, "-m", "benchmarks.gpu", "--device", "cpu", "--quick", "--pipeline",
                           "dry-run", "--out", str(out)], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert list(figures) == ["machine", "pipeline (tiny DAG)", "training: student, no KD", "training: student, A2D",
                             "training: teacher", "decoding: a2d beam 5", "decoding: CTranslate2 beam 5",
                             "decoding: a2d beam 1", "decoding: CTranslate2 beam 1"]
    assert not any("error" in step for step in figures.values())
    assert figures["machine"]["matmul_gflops"] > 0
    assert all(0 < figures[f"training: {who}"]["mfu"] for who in ("student, no KD", "student, A2D", "teacher"))
    assert "--dry-run" in figures["pipeline (tiny DAG)"]["command"]
    assert figures["decoding: CTranslate2 beam 1"]["generated_tokens"] == figures["decoding: a2d beam 1"]["generated_tokens"]


def test_a_failing_gpu_check_step_is_recorded_and_the_others_still_run(tmp_path):
    from benchmarks.gpu import Check

    check = Check(tmp_path / "out.json")
    check.step("broken", lambda: 1 / 0)
    check.step("fine", lambda: {"figure": 3})
    saved = json.loads((tmp_path / "out.json").read_text())
    assert saved["broken"]["error"] == "ZeroDivisionError: division by zero" and saved["fine"]["figure"] == 3
    assert check.failed == ["broken"]


def test_the_wheels_for_the_gpu_machine_are_what_it_lacks():
    from benchmarks.wheels import ROOTS, closure, device_packages

    have = device_packages()
    assert {"torch", "sacrebleu", "sentencepiece", "pyyaml"} <= have
    needed = closure(ROOTS, have)
    assert {"snakemake", "deepspeed", "ctranslate2", "pydantic", "connection-pool"} <= set(needed)
    assert not set(needed) & (have | {"torch", "pulp"}) and not any(name.startswith("nvidia-") for name in needed)
    assert needed["snakemake"] == metadata.version("snakemake")
