"""The Snakemake DAG end to end on tests/configs/tiny.yaml (about a minute on 2 cores)."""

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from conftest import ROOT, SNAKEMAKE, readme_block, snakemake
from safetensors.torch import load_file

from a2d.checkpoint import tag_order


def planned_jobs(output: str) -> dict[str, int]:
    """Rule -> count from the job-stats table of a dry run."""
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", output, re.MULTILINE)
            if m.group(1) != "total"}


@pytest.mark.e2e
def test_pipeline_end_to_end(tmp_path):
    config = tmp_path / "tiny.yaml"
    shutil.copy(ROOT / "tests" / "configs" / "tiny.yaml", config)
    snakemake(tmp_path, config)

    results = tmp_path / "results" / "tiny"
    table = pd.read_csv(results / "tables" / "results.csv")
    assert list(table["system"]) == ["teacher", "student_nokd", "student_a2d", "student_word_kd",
                                     "student_a2d_corrected_layerwise", "student_pkd", "student_minilm",
                                     "student_seq_kd"]
    assert list(table["method"]) == ["none", "none", "a2d faithful-described", "word_kd", "a2d corrected layerwise", "pkd",
                                     "minilm", "seq_kd"]
    # Seq-KD: the teacher's shard translations, merged in order, line for line with the sources.
    seq_src = (results / "corpus" / "train_seq_kd.src").read_text().splitlines()
    seq_tgt = (results / "corpus" / "train_seq_kd.tgt").read_text().splitlines()
    assert seq_src == (results / "corpus" / "train.src").read_text().splitlines() and len(seq_tgt) == 300
    shards = [(results / "translations" / f"teacher.train_shard{i}.txt").read_text().splitlines() for i in (0, 1)]
    assert shards[0] + shards[1] == seq_tgt
    assert table["bleu"].between(0, 100).all() and table["chrf"].between(0, 100).all()
    assert table["bleu_signature"].str.contains("tok:13a").all()
    assert table.loc[0, "parameters"] > table.loc[1, "parameters"] == table.loc[2, "parameters"]
    markdown = (results / "tables" / "results.md").read_text()
    assert "| student_a2d " in markdown and "- † better than student_nokd" in markdown
    assert "- ‡ better than student_word_kd" in markdown
    assert "[aam](../figures/student_a2d.aam.png)" in markdown and "[curves](../figures/teacher.curves.png)" in markdown
    for system in ("student_a2d", "student_a2d_corrected_layerwise"):
        assert (results / "figures" / f"{system}.aam.png").read_bytes()[:4] == b"\x89PNG"
    assert not (results / "figures" / "student_nokd.aam.png").exists()
    header = [cell.strip() for cell in markdown.splitlines()[0].split("|")]
    assert {"MB", "CT2 MB", "sent/s"} <= set(header)
    training = pd.read_csv(results / "tables" / "training.csv", dtype={"valid_bleu_per_epoch": str}).set_index("run")
    for system, row in training.iterrows():  # the training table is each run's own summary and benchmark
        history = json.loads((results / "models" / system / "train.json").read_text())["history"]
        assert row["valid_bleu_per_epoch"] == ", ".join(f"{h['valid_bleu']:.2f}" for h in history)
        benchmark = pd.read_csv(results / "benchmarks" / "train" / f"{system}.tsv", sep="\t").iloc[-1]
        assert row["wall_seconds"] == benchmark["s"] and row["peak_rss_gb"] > 0.1
    assert list(training.index) == list(table["system"])
    assert "| student_a2d " in (results / "tables" / "training.md").read_text()
    assert (table["sentences"] == 20).all() and (table["decoding_seconds"] > 0).all()
    assert (table["export_mb"] < table["model_mb"]).all()  # int8 against fp32
    for system in table["system"]:
        hyps = (results / "translations" / f"{system}.test.txt").read_text().splitlines()
        assert len(hyps) == 20
        assert (results / "deploy" / f"{system}.ct2" / "model.bin").stat().st_size > 0
        assert (tmp_path / "logs" / "tiny" / "train" / f"{system}.log").stat().st_size > 0
        assert (results / "benchmarks" / "train" / f"{system}.tsv").exists()
        events = list((results / "checkpoints" / system).glob("*/tensorboard/events.out.tfevents.*"))
        assert events and all(event.stat().st_size > 0 for event in events)  # what `tensorboard --logdir` reads

    # A finished run has nothing left to do.
    assert "Nothing to be done" in snakemake(tmp_path, config, "--dry-run")

    # The Hugging Face export, asked for by name (export.huggingface is off here), loads and translates.
    snakemake(tmp_path, config, "results/tiny/deploy/student_nokd.hf")
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    exported = results / "deploy" / "student_nokd.hf"
    tokenizer, model = AutoTokenizer.from_pretrained(exported), AutoModelForSeq2SeqLM.from_pretrained(exported)
    assert model.generation_config.num_beams == yaml.safe_load(config.read_text())["decoding"]["beam_size"]
    batch = tokenizer((results / "corpus" / "test.src").read_text().splitlines()[:2], return_tensors="pt", padding=True)
    assert len(tokenizer.batch_decode(model.generate(**batch, max_new_tokens=8), skip_special_tokens=True)) == 2

    # Changing one student's setting re-runs that student, its evaluation, figures and the table only.
    edited = yaml.safe_load(config.read_text())
    edited["students"]["student_a2d"]["method"]["alpha"] = 0.3
    config.write_text(yaml.safe_dump(edited))
    jobs = planned_jobs(snakemake(tmp_path, config, "--dry-run"))
    assert jobs == {"train": 1, "translate": 1, "evaluate": 1, "significance": 1, "plot_training": 1,
                    "plot_alignment": 1, "export": 1, "tables": 1, "all": 1}, jobs
    plan = snakemake(tmp_path, config, "--dry-run")
    assert "system=student_a2d" in plan and "system=student_nokd" not in plan


def test_configfile_replaces_the_default_config(tmp_path):
    """`--configfile` names the whole experiment: the default's students must not leak in."""
    (tmp_path / "config").mkdir()
    shutil.copy(ROOT / "config" / "config.yaml", tmp_path / "config" / "config.yaml")
    mine = yaml.safe_load((ROOT / "tests" / "configs" / "tiny.yaml").read_text())
    mine["students"] = {"only": mine["students"]["student_nokd"]}
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump(mine))
    plan = snakemake(tmp_path, tmp_path / "mine.yaml", "--dry-run")
    assert "models/only/model.safetensors" in plan and "student_nokd" not in plan
    assert planned_jobs(plan)["train"] == 2


def test_config_errors_name_the_config_file_and_key(tmp_path):
    config = yaml.safe_load((ROOT / "tests" / "configs" / "tiny.yaml").read_text())
    config["students"]["student_nokd"]["model"]["heads"] = 3
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(config))
    result = subprocess.run([*SNAKEMAKE, "--dry-run", "--directory", str(tmp_path), "--configfile",
                             str(tmp_path / "bad.yaml")], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode != 0
    message = "students.student_nokd.model: d_model 16 is not divisible by heads 3"
    assert f"{tmp_path / 'bad.yaml'}: {message}" in result.stdout


MIRROR = ROOT.parent / "shared" / "data"


@pytest.mark.e2e
@pytest.mark.skipif(not MIRROR.is_dir(), reason="needs the offline data mirror ../shared/data")
def test_pipeline_on_real_data_from_the_mirror(tmp_path, monkeypatch):
    """Fetch (sha256-checked) from the mirror, Moses + lowercase, clean against the test sets, separate
    subword models, two seeds per student; the paper-layout tables, significance tests, provenance and
    the Snakemake report."""
    monkeypatch.setenv("A2D_MIRROR", str(MIRROR))
    config = tmp_path / "tiny_real.yaml"
    shutil.copy(ROOT / "tests" / "configs" / "tiny_real.yaml", config)
    snakemake(tmp_path, config)

    results = tmp_path / "results" / "tiny_real"
    report = json.loads((results / "corpus" / "train.cleaning.json").read_text())
    # europarl_valid is both the validation set and a test set: all of it is outside train already
    assert report["input_pairs"] == 1000 and report["kept_pairs"] == 1000 - sum(report["removed"].values())
    assert set(report["eval_overlap"]) == {"valid", "europarl_test", "europarl_valid"}
    assert report["removed"]["length_ratio"] > 0
    train_src = (results / "corpus" / "train.src").read_text().splitlines()
    assert all(line == line.lower() for line in train_src) and any(" ," in line for line in train_src)  # Moses
    assert (results / "spm" / "src.model").exists() and (results / "spm" / "tgt.model").exists()

    runs = pd.read_csv(results / "tables" / "results.csv")
    students = ["student_nokd_seed1", "student_nokd_seed2", "student_word_kd_seed1", "student_word_kd_seed2",
                "student_a2d_seed1", "student_a2d_seed2"]
    assert sorted(runs["run"].unique()) == sorted(["teacher", *students])
    assert set(runs["test_set"]) == {"europarl_test", "europarl_valid"}
    assert runs["bleu_signature"].str.contains("tok:none").all()
    a2d = runs[(runs["run"] == "student_a2d_seed2") & (runs["test_set"] == "europarl_test")].iloc[0]
    assert a2d["bleu_vs_student_nokd"] == "student_nokd_seed2" and 0 < a2d["bleu_p_vs_student_nokd"] <= 1
    assert a2d["bleu_vs_student_word_kd"] == "student_word_kd_seed2"
    # the two seeds really are different runs
    seeds = runs[(runs["system"] == "student_a2d") & (runs["test_set"] == "europarl_test")]
    weights = [(results / "models" / run / "model.safetensors").read_bytes() for run in seeds["run"]]
    assert len(weights) == 2 and weights[0] != weights[1]

    markdown = (results / "tables" / "results.md").read_text()
    row = next(line for line in markdown.splitlines() if line.startswith("| student_a2d "))
    mean, std = seeds["bleu"].mean(), seeds["bleu"].std(ddof=1)
    assert f"{mean:.2f} ± {std:.2f}" in row and re.search(r"\|\s+2\s+\|", row)  # two seeds
    assert "sacrebleu bleu: nrefs:1|case:mixed|eff:no|tok:none" in markdown
    assert "student_a2d_seed1.curves.png" in row and "student_a2d_seed2.curves.png" in row
    latex = (results / "tables" / "results.tex").read_text()
    assert latex.startswith(r"\begin{tabular}") and r"student\_a2d" in latex and r"$\pm$" in latex
    provenance = json.loads((results / "tables" / "provenance.json").read_text())
    assert provenance["config"]["experiment"] == "tiny_real" and provenance["packages"]["sacrebleu"] is not None
    assert provenance["systems"]["student_a2d_seed2"]["training"]["seed"] == 2
    assert provenance["datasets"]["wmt14/europarl_v7_smoke"]["de"]["sha256"] and len(provenance["git_commit"]) == 40

    snakemake(tmp_path, config, "--report", str(tmp_path / "report.html"))
    html = (tmp_path / "report.html").read_text(errors="replace")
    assert "results.csv" in html and "student_a2d_seed1.curves.png" in html

    # Moving the mirror does not re-fetch (nor re-train) anything.
    monkeypatch.setenv("A2D_MIRROR", str(tmp_path / "elsewhere"))
    assert "Nothing to be done" in snakemake(tmp_path, config, "--dry-run")


@pytest.mark.parametrize("config", sorted((ROOT / "config" / "experiments").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_experiment_plans(tmp_path, config):
    """Paper-scale and CPU experiments alike build a complete DAG (`snakemake -n`)."""
    plan = planned_jobs(snakemake(tmp_path, config, "--dry-run"))
    assert plan["train"] >= 4 and plan["tables"] == 1
    if yaml.safe_load(config.read_text()).get("data"):
        assert plan["fetch"] >= 6 and plan["prepare_train"] == 1


def training_pids(workdir: Path, system: str) -> list[int]:
    """Processes running `a2d train` for `system` in `workdir` (found by their command line)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        mine = any(arg.endswith(f"/checkpoints/{system}".encode()) for arg in argv)
        if b"a2d" in argv and b"train" in argv and mine and (proc / "cwd").resolve() == workdir:
            pids.append(int(proc.name))
    return pids


@pytest.mark.e2e
def test_killed_training_resumes_when_snakemake_runs_again(tmp_path):
    """SIGKILL the teacher's training mid-run (no chance to save): Snakemake fails; run again, it
    resumes from the last checkpoint (the log says which step) and the exported weights equal an
    uninterrupted run's, bit for bit."""
    config = yaml.safe_load((ROOT / "tests" / "configs" / "tiny.yaml").read_text())
    config["training"].update(max_epochs=4, save_every_steps=7)
    target = "results/tiny/models/teacher/model.safetensors"
    for name in ("straight", "killed"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "tiny.yaml").write_text(yaml.safe_dump(config))
    snakemake(tmp_path / "straight", tmp_path / "straight" / "tiny.yaml", target)

    workdir = tmp_path / "killed"
    run = subprocess.Popen([*SNAKEMAKE, target, "--directory", str(workdir), "--configfile", str(workdir / "tiny.yaml")],
                           cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    checkpoints = workdir / "results" / "tiny" / "checkpoints" / "teacher"
    deadline = time.time() + 300
    while time.time() < deadline and not list(checkpoints.glob("*/step14/a2d_manifest.json")):
        time.sleep(0.1)
    pids = training_pids(workdir, "teacher")
    assert pids, "the training process was not found"
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    output, _ = run.communicate(timeout=300)
    assert run.returncode != 0 and not (workdir / target).exists(), output[-3000:]
    saved = max(tag_order(p.parent.name) for p in checkpoints.glob("*/step*/a2d_manifest.json"))[0]

    snakemake(workdir, workdir / "tiny.yaml", target)
    log = (workdir / "logs" / "tiny" / "train" / "teacher.log").read_text()
    assert f"step {saved})" in log and "resumed from" in log, log[-2000:]
    straight, resumed = load_file(tmp_path / "straight" / target), load_file(workdir / target)
    assert straight.keys() == resumed.keys()
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name


@pytest.mark.e2e
@pytest.mark.skipif(not MIRROR.is_dir(), reason="needs the offline data mirror ../shared/data")
def test_the_readme_own_corpus_example_runs_as_written(tmp_path, monkeypatch):
    """The README's own-corpus block, verbatim, replacing the data of a tiny experiment config: a
    user's files (here Multi30k's training text, standing in for theirs), validation and test sets
    held out of them, and a registry test set (from the mirror); capped by a second config file."""
    monkeypatch.setenv("A2D_MIRROR", str(MIRROR))
    block = yaml.safe_load(readme_block("**Your own corpus**", "yaml"))
    config = yaml.safe_load((ROOT / "tests" / "configs" / "tiny_real.yaml").read_text())
    config.update(block, experiment="mine")
    (tmp_path / "my.yaml").write_text(yaml.safe_dump(config))
    (tmp_path / "corpus").mkdir()
    for lang in ("de", "en"):
        shutil.copy(MIRROR / "multi30k" / f"train.{lang}", tmp_path / "corpus" / f"mine.{lang}")
    command = readme_block("own corpus", "bash").split()
    assert command == ["snakemake", "--profile", "workflow/profiles/local", "--configfile", "my.yaml"]  # as run here
    (tmp_path / "cap.yaml").write_text(yaml.safe_dump({"training": {"max_steps": 10}, "seeds": [1]}))
    snakemake(tmp_path, [tmp_path / command[4], tmp_path / "cap.yaml"])

    results = tmp_path / "results" / "mine"
    report = json.loads((results / "corpus" / "train.cleaning.json").read_text())
    assert report["held_out"] == {"valid": 1000, "mine_test": 1000} and report["removed"]["held_out"] == 2000
    assert set(report["eval_overlap"]) == {"flickr2016"}
    train = set((results / "corpus" / "train.src").read_text().splitlines())
    for split in ("valid", "mine_test"):
        held = (results / "corpus" / f"{split}.src").read_text().splitlines()
        assert len(held) == 1000 and not train & set(held)
    assert not (set((results / "corpus" / "valid.src").read_text().splitlines())
                & set((results / "corpus" / "mine_test.src").read_text().splitlines()))
    runs = pd.read_csv(results / "tables" / "results.csv")
    assert set(runs["test_set"]) == {"mine_test", "flickr2016"} and len(runs["run"].unique()) == 4
    notes = (results / "tables" / "results.md").read_text()
    assert "in the raw training data" not in notes  # held out of the training data: no overlap
    # two update steps: every student is near 0 BLEU, and the table says what that means for its ranking
    assert "WARNING: on mine_test every student scores below 5 BLEU (evaluation.usable_bleu)" in notes


# What the mirror lacks, swapped in by a third config file (merged key by key, as users can too).
SMOKE_SUBSTITUTES = {
    "wmt22_de_dsb": {},
    "iwslt14_de_en": {"data": {"train": ["iwslt14_de_en/train_sample15k"]}},  # the full 160k set is not mirrored
    "wmt14_en_de": {"data": {"train": ["wmt14/europarl_v7_smoke"],  # nor the 4.5M WMT14 pairs,
                             "valid": ["wmt14/europarl_v7_smoke_valid"]}},  # nor newstest2013 (sacrebleu)
}


@pytest.mark.e2e
@pytest.mark.skipif(not MIRROR.is_dir(), reason="needs the offline data mirror ../shared/data")
@pytest.mark.parametrize("experiment", list(SMOKE_SUBSTITUTES))
def test_paper_scale_experiment_smoke_run(tmp_path, monkeypatch, experiment):
    """A paper-scale config through its whole DAG with the paper's model shapes, on the CPU, capped by
    config/smoke.yaml (the first lines of each dataset, a few updates, one seed)."""
    monkeypatch.setenv("A2D_MIRROR", str(MIRROR))
    paper = ROOT / "config" / "experiments" / f"{experiment}.yaml"
    substitute = tmp_path / "substitute.yaml"
    substitute.write_text(yaml.safe_dump(SMOKE_SUBSTITUTES[experiment]))
    started = time.monotonic()
    jobs = planned_jobs(snakemake(tmp_path, [paper, ROOT / "config" / "smoke.yaml", substitute]))
    print(f"{experiment} smoke run: {sum(jobs.values())} jobs in {time.monotonic() - started:.0f} s: {jobs}")

    results = tmp_path / "results" / f"{experiment}-smoke"
    assert not (tmp_path / "results" / experiment).exists()  # never mixed into the real experiment's results
    config = yaml.safe_load(paper.read_text())
    runs = pd.read_csv(results / "tables" / "results.csv")
    assert list(runs["run"].unique()) == ["teacher", *config["students"]]  # the first seed only
    assert set(runs["test_set"]) == set(config["data"]["test"])
    smoke = yaml.safe_load((ROOT / "config" / "smoke.yaml").read_text())["smoke"]
    for system, entry in [("teacher", config["teacher"]), *config["students"].items()]:
        summary = json.loads((results / "models" / system / "train.json").read_text())
        shape = {key: summary["model"][key] for key in entry["model"]}
        assert shape == entry["model"], system  # the paper's shapes
        assert summary["steps"] == smoke["max_steps"]
    for test_set in config["data"]["test"]:
        assert len((results / "corpus" / f"{test_set}.src").read_text().splitlines()) == smoke["eval_lines"]
