"""The tiny end-to-end DAG on a real SLURM cluster, through workflow/profiles/slurm.

The test installs slurm-wlm and munge from Debian where they are missing, starts munged, slurmctld
and slurmd on this machine (tests/slurm_cluster.py), and runs the DAG with the repository's slurm
profile, changed only where this machine differs from a cluster: no GPUs (2 processes per training
job instead, torchrun with gloo inside the job), 1 GB per job, no accounting (squeue for job
status), and the local profile's thread counts, so that the results can equal a local run's (with
2 processes too) bit for bit. Midway, the teacher's training processes are killed (as a node failure
would): Snakemake submits the job again with a longer runtime, and training resumes.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import slurm_cluster
import yaml
from test_pipeline import ROOT, snakemake, training_pids

pytestmark = [pytest.mark.slurm, pytest.mark.e2e,
              pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("apt-get"),
                                 reason="starts SLURM daemons: needs root and apt-get")]


def slurm_profile(directory: Path) -> Path:
    profile = yaml.safe_load((ROOT / "workflow" / "profiles" / "slurm" / "config.yaml").read_text())
    local = yaml.safe_load((ROOT / "workflow" / "profiles" / "local" / "config.yaml").read_text())
    profile.update({"slurm-status-command": "squeue", "slurm-no-account": True,
                    "slurm-init-seconds-before-status-checks": 5, "set-threads": local["set-threads"]})
    profile["default-resources"]["mem_mb"] = "1000 * attempt"
    for resources in profile["set-resources"].values():
        resources["mem_mb"] = "1000 * attempt"
    profile["set-resources"]["train"].update(gpu=0, processes=2)  # torchrun and gloo inside the SLURM job
    directory.mkdir(parents=True)
    (directory / "config.yaml").write_text(yaml.safe_dump(profile))
    return directory


SLURM_STUDENTS = ("student_nokd", "student_a2d", "student_seq_kd")


def time_limit(job_id: str, env: dict) -> str:
    shown = subprocess.run(["scontrol", "show", "job", job_id], env=env, capture_output=True, text=True, check=True)
    return re.search(r"TimeLimit=(\S+)", shown.stdout).group(1)


def test_tiny_dag_on_a_real_slurm_cluster(tmp_path):
    config = yaml.safe_load((ROOT / "tests" / "configs" / "tiny.yaml").read_text())
    config["training"].update(max_epochs=3, save_every_steps=7)  # room to kill the teacher between checkpoints
    # Every kind of job, not every method (those are test_pipeline's): distillation, none, Seq-KD's shards.
    config["students"] = {name: config["students"][name] for name in SLURM_STUDENTS}
    for name in ("local", "slurm"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "tiny.yaml").write_text(yaml.safe_dump(config))
    snakemake(tmp_path / "local", tmp_path / "local" / "tiny.yaml", "--set-resources", "train:processes=2")

    cluster = slurm_cluster.start(tmp_path / "cluster")
    try:
        workdir = tmp_path / "slurm"
        command = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--profile",
                   str(slurm_profile(tmp_path / "profile")), "--jobs", "4", "--directory", str(workdir),
                   "--configfile", str(workdir / "tiny.yaml")]
        run = subprocess.Popen(command, cwd=ROOT, env=cluster["env"], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
        checkpoints = workdir / "results" / "tiny" / "checkpoints" / "teacher"
        deadline = time.time() + 600
        while time.time() < deadline and not list(checkpoints.glob("*/step7/a2d_manifest.json")):
            time.sleep(0.1)
        pids = training_pids(workdir, "teacher")
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        output, _ = run.communicate(timeout=1800)
        assert pids and run.returncode == 0, output[-5000:]
        # job -> (rule, wildcards), from the plugin's log path in Snakemake's "submitted" line
        submitted = {job: (rule, wildcards) for job, rule, wildcards in re.findall(
            r"has been submitted with SLURM jobid (\d+) \(log: \S*/slurm_logs/rule_(\w+)/(?:([^/\s]+)/)?\d+\.log\)",
            output)}
        teacher_jobs = sorted((job for job, what in submitted.items() if what == ("train", "teacher")), key=int)
        limits = [time_limit(job, cluster["env"]) for job in teacher_jobs]
    finally:
        slurm_cluster.stop(cluster)
    assert not any(daemon.poll() is None for daemon in cluster["daemons"])

    # Every job but `all` went through SLURM (the teacher's twice), and each training log names
    # the SLURM job it ran in.
    print("SLURM job ids:", {job: "/".join(what) for job, what in sorted(submitted.items(), key=lambda j: int(j[0]))})
    planned = int(re.search(r"^total\s+(\d+)", output, re.MULTILINE).group(1))
    assert "localrule all" in output and len(submitted) == planned  # all jobs less `all`, plus the teacher's retry
    results = workdir / "results" / "tiny"
    logs = list((workdir / "logs" / "tiny" / "train").glob("*.log"))
    assert len(logs) == 1 + len(SLURM_STUDENTS)
    for log in logs:
        ran_in = re.findall(r"SLURM job (\d+) on ", log.read_text())
        assert ran_in and submitted[ran_in[-1]] == ("train", log.stem), log

    # The killed teacher was submitted again with the runtime of attempt 2 (720 * attempt minutes), and resumed.
    assert len(teacher_jobs) == 2 and limits == ["12:00:00", "1-00:00:00"], (teacher_jobs, limits)
    teacher_log = (workdir / "logs" / "tiny" / "train" / "teacher.log").read_text()
    assert re.search(r"resumed from \S+/step\d+ \(epoch \d+, step \d+\)", teacher_log)

    # The same results as the local run.
    local_results = tmp_path / "local" / "results" / "tiny"
    pd.testing.assert_frame_equal(pd.read_csv(results / "tables" / "results.csv")[["system", "bleu", "chrf"]],
                                  pd.read_csv(local_results / "tables" / "results.csv")[["system", "bleu", "chrf"]])
    for translation in (local_results / "translations").glob("*.txt"):
        assert (results / "translations" / translation.name).read_text() == translation.read_text(), translation.name
