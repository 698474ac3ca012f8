"""The Snakemake DAG end to end on tests/configs/tiny.yaml (about a minute on 2 cores)."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
SNAKEMAKE = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"),
             "--profile", str(ROOT / "workflow" / "profiles" / "local"), "--cores", "2"]


def snakemake(workdir: Path, config: Path, *extra: str) -> str:
    result = subprocess.run([*SNAKEMAKE, "--directory", str(workdir), "--configfile", str(config), *extra],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result.stdout + result.stderr


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
    assert list(table["method"]) == ["none", "none", "a2d faithful", "word_kd", "a2d corrected layerwise", "pkd",
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
    assert "[aam](../figures/student_a2d.aam.png)" in markdown and "[curves](../figures/teacher.curves.png)" in markdown
    for system in ("student_a2d", "student_a2d_corrected_layerwise"):
        assert (results / "figures" / f"{system}.aam.png").read_bytes()[:4] == b"\x89PNG"
    assert not (results / "figures" / "student_nokd.aam.png").exists()
    for system in table["system"]:
        hyps = (results / "translations" / f"{system}.test.txt").read_text().splitlines()
        assert len(hyps) == 20
        assert (tmp_path / "logs" / "tiny" / "train" / f"{system}.log").stat().st_size > 0
        assert (results / "benchmarks" / "train" / f"{system}.tsv").exists()

    # A finished run has nothing left to do.
    assert "Nothing to be done" in snakemake(tmp_path, config, "--dry-run")

    # Changing one student's setting re-runs that student, its evaluation, figures and the table only.
    edited = yaml.safe_load(config.read_text())
    edited["students"]["student_a2d"]["method"]["alpha"] = 0.3
    config.write_text(yaml.safe_dump(edited))
    jobs = planned_jobs(snakemake(tmp_path, config, "--dry-run"))
    assert jobs == {"train": 1, "translate": 1, "evaluate": 1, "plot_training": 1, "plot_alignment": 1,
                    "tables": 1, "all": 1}, jobs
    plan = snakemake(tmp_path, config, "--dry-run")
    assert "models/student_a2d/model.safetensors" in plan and "models/student_nokd/model.safetensors" not in plan


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
