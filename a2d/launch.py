"""Processes and signals: how one training job becomes a data-parallel world, and how it stops.

`python -m a2d train --processes P --nodes N` starts the world itself: with P = N = 1 it trains
in-process; otherwise it runs `torchrun --nproc-per-node P` (one node), or, inside a SLURM
allocation, `srun --nodes N` to start itself on every node, where each runs `torchrun --nnodes N`;
the workers run `python -m a2d train` again. DeepSpeed's own launcher is not used: it needs pdsh
and host files, where torchrun and srun are what clusters have.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import torch

STAGE = "A2D_LAUNCH_STAGE"  # "node": srun started this process on its node; "worker": torchrun did
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)  # SLURM sends SIGUSR1 (or SIGTERM) before the walltime


def launched() -> bool:
    return os.environ.get(STAGE) == "worker"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def head_node() -> str:
    """First host of the SLURM allocation: the torchrun rendezvous runs there. (Snakemake's job
    step strips SLURM_JOB_NODELIST from the environment: ask squeue for it then.)"""
    nodelist = os.environ.get("SLURM_JOB_NODELIST") or subprocess.run(
        ["squeue", "--noheader", "--jobs", os.environ["SLURM_JOB_ID"], "--format", "%N"], check=True,
        capture_output=True, text=True).stdout.strip()
    hosts = subprocess.run(["scontrol", "show", "hostnames", nodelist], check=True, capture_output=True,
                           text=True).stdout.split()
    if not hosts:
        raise RuntimeError(f"SLURM job {os.environ['SLURM_JOB_ID']}: no hosts in node list {nodelist!r}")
    return hosts[0]


def launch_command(argv: list[str], processes: int, nodes: int) -> tuple[list[str], str]:
    """The next launcher down towards `processes` workers on each of `nodes` nodes running
    `python -m a2d <argv>`, and the stage of the processes it starts: srun starts one a2d process
    per node (stage "node"), which starts torchrun, which starts the workers (stage "worker")."""
    if nodes > 1 and os.environ.get(STAGE) != "node":
        if "SLURM_JOB_ID" not in os.environ:
            raise RuntimeError(f"--nodes {nodes}: several nodes need a SLURM allocation (srun starts the job on "
                               "each); run it through workflow/profiles/slurm-multinode")
        return ["srun", f"--nodes={nodes}", "--ntasks-per-node=1", "--kill-on-bad-exit=1",
                sys.executable, "-m", "a2d", *argv], "node"
    torchrun = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={processes}"]
    if nodes == 1:
        return [*torchrun, "--standalone", "-m", "a2d", *argv], "worker"
    rendezvous = [f"--nnodes={nodes}", "--rdzv-backend=c10d", f"--rdzv-endpoint={head_node()}:29500",
                  f"--rdzv-id=a2d-{os.environ['SLURM_JOB_ID']}"]
    return [*torchrun, *rendezvous, "-m", "a2d", *argv], "worker"


def run_launcher(argv: list[str], processes: int, nodes: int) -> int:
    """Run the next launcher down and pass it any stop signal, as SIGTERM; returns its exit status.

    torchrun forwards SIGTERM to its workers but dies of SIGUSR1 (SLURM's usual warning signal,
    which SLURM sends to every process of the job): it starts with SIGUSR1 ignored, in a session
    of its own, and hears of a stop from this process only, once."""
    command, stage = launch_command(argv, processes, nodes)
    print(f"[a2d.launch] {' '.join(command)}", file=sys.stderr, flush=True)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # inherited by the child; its workers install their own handler
    child = subprocess.Popen(command, env={**os.environ, STAGE: stage}, start_new_session=True)
    forwarded = []

    def forward(signum, frame):
        if not forwarded:
            forwarded.append(signum)
            child.send_signal(signal.SIGTERM)

    for signum in STOP_SIGNALS:
        signal.signal(signum, forward)
    return child.wait()


def gpus_per_node(gpu: int, gres: str, nodes: int) -> int:
    """GPUs per node that SLURM was asked for: the rule's `gpu` resource (--gpus, for the whole job)
    or the count in its `gres` (--gres=gpu[:type]:N, per node)."""
    for part in filter(None, (p.strip() for p in gres.split(","))):
        fields = part.split(":")
        if fields[0] == "gpu":
            if len(fields) == 1 or not fields[-1].isdigit():
                raise ValueError(f"gres {gres!r}: give the GPU count, e.g. gpu:4 or gpu:a100:4")
            return int(fields[-1])
    if gpu and nodes > 1:
        raise ValueError(f"gpu={gpu} with {nodes} nodes: --gpus counts the whole job; ask for GPUs per node "
                         "with the gres resource (gres: gpu:4)")
    return gpu


def check_world(processes: int, nodes: int, devices: int) -> None:
    """Fail at start-up, not hours later, when the world is not the one the rule asked for."""
    world = int(os.environ["WORLD_SIZE"])
    if world != processes * nodes:
        raise RuntimeError(f"expected {processes * nodes} processes ({nodes} node(s) x {processes}), "
                           f"the launcher started {world}")
    if devices > 0:
        visible = torch.cuda.device_count()
        if visible != devices:
            raise RuntimeError(f"expected {devices} GPU(s) per node (the rule's gpu or gres resource), CUDA sees {visible} "
                               f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')})")
        if processes != devices:
            raise RuntimeError(f"{processes} processes per node for {devices} GPU(s): use one process per GPU")


def setup_distributed():
    """Join the process group: the launcher's when launched, else a world of one.

    CUDA with NCCL where there is a GPU, DeepSpeed's CPU accelerator with gloo where there is not.
    """
    on_gpu = torch.cuda.is_available()
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if on_gpu else "cpu")
    if "RANK" not in os.environ:  # a free port, so that two trainings can run side by side
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    import deepspeed

    deepspeed.init_distributed(dist_backend="nccl" if on_gpu else "gloo", verbose=False)
    if on_gpu:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    return deepspeed


class StopRequest:
    """Remembers a stop signal instead of dying on it, so that training can save and then exit."""

    def __init__(self):
        self.signum: int | None = None
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._handle)

    def _handle(self, signum, frame):
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""


class Stopped(SystemExit):
    """Training saved a checkpoint and stopped on a signal; the exit status says which (128 + signal)."""

    def __init__(self, signum: int):
        super().__init__(128 + signum)
