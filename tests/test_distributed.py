"""Data parallelism on real processes: `python -m a2d train --processes 2` (torchrun, gloo, CPU)
against one process with the same global batch, for ZeRO-2 and ZeRO-3; checkpoints written by
two processes resume in one and the reverse; SIGTERM saves and stops.

Tolerance: two processes sum the same gradients in another order, so trajectories agree to float32
rounding, amplified a little by each update; 1e-4 relative on the loss per token (measured
differences are around 1e-6) still fails on any real difference (a batch trained twice, a wrong
gradient scale, a lost optimizer state), which moves the loss by 1e-2 or more.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from a2d.config import MethodConfig, SystemSpec, TrainingConfig

SHAPE = dict(encoder_layers=2, decoder_layers=2, d_model=32, heads=2, ffn=64, dropout=0.1, max_positions=64)
RTOL = 1e-4


def spec(zero_stage: int, max_steps: int, method="none", **training) -> SystemSpec:
    cfg = dict(max_tokens=300, max_epochs=50, max_steps=max_steps, lr=2e-3, warmup_steps=4, save_every_steps=3,
               patience=0, seed=3, zero_stage=zero_stage, batches_per_update=2, keep_checkpoints=5)
    return SystemSpec("sys", dict(SHAPE), MethodConfig(name=method), TrainingConfig(**{**cfg, **training}))


def train_command(corpus, system: SystemSpec, out: Path, processes: int, teacher: Path | None = None) -> list[str]:
    return [sys.executable, "-m", "a2d", "train", "--spec", system.to_json(), "--train", str(corpus["train"]),
            "--valid", str(corpus["valid"]), "--valid-ref", str(corpus["valid.tgt"]), "--src-spm", str(corpus["spm"]),
            "--tgt-spm", str(corpus["spm"]), "--checkpoint-dir", str(out / "checkpoints"),
            "--output", str(out / "model.safetensors"), "--summary", str(out / "train.json"),
            "--processes", str(processes), "--threads", str(processes), "--no-progress",
            *(["--teacher", str(teacher)] if teacher else [])]


def clean_env() -> dict:
    """This environment without what an in-process training in this pytest process left behind."""
    left = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "A2D_LAUNCH_STAGE",
            "TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    return {**{k: v for k, v in os.environ.items() if k not in left}, "DS_ACCELERATOR": "cpu"}


def run_train(corpus, system, out: Path, processes: int, teacher=None) -> str:
    done = subprocess.run(train_command(corpus, system, out, processes, teacher), capture_output=True, text=True,
                          env=clean_env(), timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stderr


def losses(out: Path) -> dict[int, float]:
    """step -> loss per token, from the run's steps.tsv"""
    (steps,) = out.glob("checkpoints/*/steps.tsv")
    rows = [line.split("\t") for line in steps.read_text().splitlines()[1:]]
    return {int(row[0]): float(row[1]) for row in rows}


def assert_same_trajectory(a: dict[int, float], b: dict[int, float]) -> None:
    assert a.keys() == b.keys()
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=RTOL), f"step {step}: {a[step]} vs {b[step]}"


def assert_close_weights(a: Path, b: Path) -> None:
    wa, wb = load_file(a), load_file(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], rtol=1e-3, atol=1e-5, msg=name)


@pytest.mark.parametrize("zero_stage", [2, 3])
def test_two_processes_follow_one_process_with_the_same_global_batch(tiny_corpus, tmp_path, zero_stage):
    system = spec(zero_stage, max_steps=8)
    log_two = run_train(tiny_corpus, system, tmp_path / "two", processes=2)
    run_train(tiny_corpus, system, tmp_path / "one", processes=1)
    assert "2 process(es) x 1" in log_two and "torch.distributed.run" in log_two
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert len(one) == 8
    assert_same_trajectory(one, two)
    assert one[8] < one[1]  # it learns
    assert_close_weights(tmp_path / "one" / "model.safetensors", tmp_path / "two" / "model.safetensors")
    print(f"ZeRO-{zero_stage} loss per token, 1 vs 2 processes: "
          + ", ".join(f"{step}: {one[step]:.5f}/{two[step]:.5f}" for step in one))


@pytest.mark.parametrize("zero_stage,first,then", [(2, 2, 1), (2, 1, 2), (3, 2, 1)])
def test_checkpoints_resume_in_another_world_size(tiny_corpus, tmp_path, zero_stage, first, then):
    """6 steps with `first` processes, then on to 9 with `then`: the same trajectory as 9 steps
    straight (the optimizer state carried over through DeepSpeed's universal checkpoint)."""
    run_train(tiny_corpus, spec(zero_stage, max_steps=9), tmp_path / "straight", processes=1)
    out = tmp_path / "switched"
    run_train(tiny_corpus, spec(zero_stage, max_steps=6), out, processes=first)
    log = run_train(tiny_corpus, spec(zero_stage, max_steps=9), out, processes=then)
    assert "resumed from" in log and "(epoch 1, step 6)" in log
    assert ("universal checkpoint" in log) == (first != then)
    straight, switched = losses(tmp_path / "straight"), losses(out)
    assert_same_trajectory(straight, switched)
    print(f"ZeRO-{zero_stage}, {first} then {then} process(es) from step 7, against 1 straight: "
          + ", ".join(f"{step}: {straight[step]:.5f}/{switched[step]:.5f}" for step in range(6, 10)))


def start_training(corpus, out: Path, processes: int) -> subprocess.Popen:
    """A long 2-process ZeRO-2 training in the background, once it has done 5 steps."""
    system = spec(2, max_steps=400, save_every_steps=1000)
    process = subprocess.Popen(train_command(corpus, system, out, processes), stderr=subprocess.PIPE, text=True,
                               env=clean_env(), start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and not (list(out.glob("checkpoints/*/steps.tsv")) and len(losses(out)) >= 5):
        time.sleep(0.5)
    return process


def check_resumes_on_the_same_trajectory(corpus, tmp_path, out: Path, stderr: str, processes: int) -> None:
    saved = int(stderr.split("saved a checkpoint at step ")[1].split()[0])
    assert saved >= 5 and any((out / "checkpoints").glob(f"*/step{saved}/a2d_manifest.json"))
    log = run_train(corpus, spec(2, max_steps=saved + 3), out, processes)
    assert f"step {saved})" in log
    run_train(corpus, spec(2, max_steps=saved + 3), tmp_path / "straight", processes)
    assert_same_trajectory(losses(tmp_path / "straight"), losses(out))
    assert_close_weights(tmp_path / "straight" / "model.safetensors", out / "model.safetensors")


@pytest.mark.parametrize("processes,signum", [(1, signal.SIGUSR1), (2, signal.SIGUSR1), (2, signal.SIGTERM)])
def test_stop_signal_saves_a_checkpoint_and_the_rerun_resumes(tiny_corpus, tmp_path, processes, signum):
    """SIGUSR1 or SIGTERM (what SLURM sends before the walltime) to the job's process group, as
    Snakemake or Ctrl-C send it: every process finishes the update, they save, and stop with status
    128 + signal; the re-run resumes there and ends on the uninterrupted run's trajectory and weights."""
    out = tmp_path / "run"
    process = start_training(tiny_corpus, out, processes)
    os.killpg(process.pid, signum)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 128 + signum, stderr[-3000:]
    assert f"{signal.Signals(signum).name}: saved a checkpoint at step" in stderr, stderr[-3000:]
    check_resumes_on_the_same_trajectory(tiny_corpus, tmp_path, out, stderr, processes)


def worker_pid(out: Path, rank: int) -> int:
    for proc in Path("/proc").iterdir():
        try:
            environ = dict(item.split(b"=", 1) for item in (proc / "environ").read_bytes().split(b"\0") if b"=" in item)
            argv = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if environ.get(b"A2D_LAUNCH_STAGE") == b"worker" and environ.get(b"RANK") == str(rank).encode() \
                and str(out).encode() in argv:
            return int(proc.name)
    raise AssertionError(f"no worker of rank {rank} for {out}")


def test_a_signal_to_one_process_stops_them_all_at_the_same_step(tiny_corpus, tmp_path):
    """SIGUSR1 to rank 1 alone: rank 0 hears of it through the per-step all-reduce, both save the
    same step and stop."""
    out = tmp_path / "run"
    process = start_training(tiny_corpus, out, processes=2)
    os.kill(worker_pid(out, rank=1), signal.SIGUSR1)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode != 0 and "another process got a stop signal: saved a checkpoint at step" in stderr
    check_resumes_on_the_same_trajectory(tiny_corpus, tmp_path, out, stderr, processes=2)


def test_distillation_with_two_processes_and_zero3(tiny_corpus, tmp_path):
    """A2D under ZeRO-3: the AAM is in the student's engine (sharded with it), the teacher outside."""
    teacher_spec = spec(0, max_steps=3)
    run_train(tiny_corpus, teacher_spec, tmp_path / "teacher", processes=1)
    student = SystemSpec("student", dict(SHAPE, encoder_layers=1, decoder_layers=1), MethodConfig(name="a2d"),
                         spec(3, max_steps=4).training)
    run_train(tiny_corpus, student, tmp_path / "two", processes=2, teacher=tmp_path / "teacher" / "model.safetensors")
    run_train(tiny_corpus, student, tmp_path / "one", processes=1, teacher=tmp_path / "teacher" / "model.safetensors")
    assert_same_trajectory(losses(tmp_path / "one"), losses(tmp_path / "two"))
    summary = json.loads((tmp_path / "two" / "train.json").read_text())
    assert summary["alignment"]["weights"] and summary["parameters"] > 0
    assert not any("alignment" in name for name in load_file(tmp_path / "two" / "model.safetensors"))


def test_launch_commands(monkeypatch):
    from a2d import launch

    monkeypatch.delenv(launch.STAGE, raising=False)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    command, stage = launch.launch_command(["train", "--spec", "{}"], processes=2, nodes=1, threads=2)
    assert command[1:4] == ["-m", "torch.distributed.run", "--nproc-per-node=2"] and stage == "worker"
    assert "--signals-to-handle=SIGTERM,SIGUSR1,SIGINT,SIGHUP,SIGQUIT" in command
    assert "--shutdown-timeout=600" in command
    assert command[-6:] == ["--standalone", "-m", "a2d", "train", "--spec", "{}"]
    with pytest.raises(RuntimeError, match="SLURM allocation.*--rendezvous HOST:PORT"):
        launch.launch_command(["train"], processes=4, nodes=2, threads=32)
    command, stage = launch.launch_command(["train"], processes=4, nodes=2, threads=32, rendezvous="host0:29400")
    assert stage == "worker" and "--nnodes=2" in command and "--rdzv-endpoint=host0:29400" in command
    assert "--rdzv-id=a2d-host0-29400" in command and "srun" not in command

    monkeypatch.setenv("SLURM_JOB_ID", "77")
    command, stage = launch.launch_command(["train"], processes=4, nodes=2, threads=32)
    assert command[:5] == ["srun", "--nodes=2", "--ntasks-per-node=1", "--cpus-per-task=32", "--kill-on-bad-exit=1"]
    assert command[-3:] == ["-m", "a2d", "train"] and stage == "node"
    monkeypatch.setenv(launch.STAGE, "node")  # srun started us on a node: now torchrun, joined across nodes
    monkeypatch.setattr(launch, "head_node", lambda: "gpu001")
    command, stage = launch.launch_command(["train"], processes=4, nodes=2, threads=32)
    assert stage == "worker" and "--nnodes=2" in command and "--nproc-per-node=4" in command
    assert "--rdzv-endpoint=gpu001:29577" in command and "--rdzv-id=a2d-77" in command


def test_expected_devices_are_checked(monkeypatch):
    from a2d.launch import check_world, gpus_per_node

    assert gpus_per_node(0, "", 1) == 0 and gpus_per_node(2, "", 1) == 2
    assert gpus_per_node(0, "gpu:4", 2) == 4 and gpus_per_node(0, "tmpdisk:10,gpu:a100:8", 2) == 8
    with pytest.raises(ValueError, match="GPU count"):
        gpus_per_node(0, "gpu", 1)
    with pytest.raises(ValueError, match="per node"):
        gpus_per_node(8, "", 2)
    monkeypatch.setenv("WORLD_SIZE", "2")
    check_world(processes=2, nodes=1, devices=0)
    with pytest.raises(RuntimeError, match="expected 4 processes"):
        check_world(processes=2, nodes=2, devices=0)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="expected 2 GPU.* CUDA sees 0"):
            check_world(processes=2, nodes=1, devices=2)


def test_bf16_mixed_precision_follows_fp32(tiny_corpus, tmp_path):
    """DeepSpeed bf16 (fp32 master weights) on the trajectory of fp32 within bf16's resolution, and
    the exported model is fp32."""
    run_train(tiny_corpus, spec(2, max_steps=4), tmp_path / "fp32", processes=1)
    run_train(tiny_corpus, spec(2, max_steps=4, precision="bf16"), tmp_path / "bf16", processes=1)
    fp32, bf16 = losses(tmp_path / "fp32"), losses(tmp_path / "bf16")
    for step in fp32:
        assert bf16[step] == pytest.approx(fp32[step], rel=2e-2)
    assert bf16 != fp32  # it did run in bf16
    assert all(t.dtype == torch.float32 for t in load_file(tmp_path / "bf16" / "model.safetensors").values())


def test_two_nodes_meet_on_loopback_and_follow_one_process(tiny_corpus, tmp_path):
    """Multi-node for real: two launcher processes, each a "node" (`--nodes 2 --rendezvous`) running
    torchrun --nnodes 2 with a c10d rendezvous on 127.0.0.1, as two hosts would; their shared output
    directory stands for a cluster's shared file system. The trajectory equals one process's."""
    from a2d.launch import free_port

    system = spec(2, max_steps=6)
    out = tmp_path / "nodes"
    command = [*train_command(tiny_corpus, system, out, processes=1), "--nodes", "2",
               "--rendezvous", f"127.0.0.1:{free_port()}"]
    nodes = [subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=clean_env()) for _ in range(2)]
    logs = [node.communicate(timeout=600)[1] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    assert all("--nnodes=2 --rdzv-backend=c10d --rdzv-endpoint=127.0.0.1:" in log for log in logs)
    assert "(2 process(es) x 1)" in logs[0] + logs[1]
    run_train(tiny_corpus, system, tmp_path / "one", processes=1)
    assert_same_trajectory(losses(tmp_path / "one"), losses(out))
    assert_close_weights(tmp_path / "one" / "model.safetensors", out / "model.safetensors")


def test_deepspeeds_ops_are_cached_in_this_python_environment(monkeypatch):
    """Not in ~/.cache, which every environment shares (two checkouts rebuilt each other's op)."""
    from a2d import launch

    monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    launch.cache_ops_in_this_environment()
    assert os.environ["TORCH_EXTENSIONS_DIR"] == os.path.join(sys.prefix, "torch_extensions")
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", "/elsewhere")
    launch.cache_ops_in_this_environment()
    assert os.environ["TORCH_EXTENSIONS_DIR"] == "/elsewhere"
