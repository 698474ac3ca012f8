"""Processes and signals: how one training job becomes a data-parallel world, and how it stops.

`python -m a2d train --processes P --nodes N` starts the world itself: with P = N = 1 it trains
in-process; otherwise it replaces itself by `torchrun --nproc-per-node P` (one node) or by
`srun --nodes N torchrun --nnodes N ...` (several nodes, inside a SLURM allocation), which start
`python -m a2d train` again in every process. DeepSpeed's own launcher is not used: it needs pdsh
and host files, where torchrun and srun are what clusters have.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys

import torch

LAUNCHED = "A2D_LAUNCHED"  # set for the processes our launcher starts, so that they do not launch again
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)  # SLURM sends SIGUSR1 (or SIGTERM) before the walltime


def launched() -> bool:
    return os.environ.get(LAUNCHED) == "1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def head_node() -> str:
    """First host of the SLURM allocation: the torchrun rendezvous runs there."""
    nodelist = os.environ.get("SLURM_JOB_NODELIST")
    if nodelist and shutil.which("scontrol"):
        hosts = subprocess.run(["scontrol", "show", "hostnames", nodelist], check=True, capture_output=True,
                               text=True).stdout.split()
        if hosts:
            return hosts[0]
    return socket.gethostname()


def launch_command(argv: list[str], processes: int, nodes: int) -> list[str]:
    """The command that runs `python -m a2d <argv>` in `processes` processes on each of `nodes` nodes."""
    torchrun = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={processes}"]
    if nodes == 1:
        return torchrun + ["--standalone", "-m", "a2d", *argv]
    if "SLURM_JOB_ID" not in os.environ:
        raise RuntimeError(f"--nodes {nodes}: several nodes need a SLURM allocation (srun starts one torchrun "
                           "per node); run it through workflow/profiles/slurm-multinode")
    rendezvous = [f"--nnodes={nodes}", "--rdzv-backend=c10d", f"--rdzv-endpoint={head_node()}:29500",
                  f"--rdzv-id=a2d-{os.environ['SLURM_JOB_ID']}"]
    return ["srun", f"--nodes={nodes}", "--ntasks-per-node=1", "--kill-on-bad-exit=1", *torchrun, *rendezvous,
            "-m", "a2d", *argv]


def exec_launcher(argv: list[str], processes: int, nodes: int) -> None:
    """Replace this process by the launcher (never returns)."""
    command = launch_command(argv, processes, nodes)
    print(f"[a2d.launch] {' '.join(command)}", file=sys.stderr, flush=True)
    os.environ[LAUNCHED] = "1"
    # torchrun does not handle SIGUSR1, whose default action would kill it under SLURM's warning
    # signal; an ignored signal stays ignored across exec, and the workers install their own handler.
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    os.execvp(command[0], command)


def check_world(processes: int, nodes: int, devices: int) -> None:
    """Fail at start-up, not hours later, when the world is not the one the rule asked for."""
    world = int(os.environ["WORLD_SIZE"])
    if world != processes * nodes:
        raise RuntimeError(f"expected {processes * nodes} processes ({nodes} node(s) x {processes}), "
                           f"the launcher started {world}")
    if devices > 0:
        visible = torch.cuda.device_count()
        if visible != devices:
            raise RuntimeError(f"expected {devices} GPU(s) per node (the rule's gpu resource), CUDA sees {visible} "
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
