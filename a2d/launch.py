"""Processes and signals: how one training job becomes a data-parallel world, and how it stops.

`python -m a2d train --processes P --nodes N` starts the world itself: with P = N = 1 it trains
in-process; otherwise it supervises `torchrun --nproc-per-node P` (one node), or, inside a SLURM
allocation, `srun --nodes N` to start itself on every node, where each runs `torchrun --nnodes N`;
the workers run `python -m a2d train` again. Without SLURM, the same command started on every
node with `--rendezvous HOST:PORT` (the first node's address) runs `torchrun --nnodes N` there.
DeepSpeed's own launcher is not used: it needs pdsh and host files, where torchrun and srun are
what clusters have.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys

import torch

STAGE = "A2D_LAUNCH_STAGE"  # "node": srun started this process on its node; "worker": torchrun did
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)  # SLURM sends SIGUSR1 (or SIGTERM) before the walltime
FORWARDED_SIGNALS = (*STOP_SIGNALS, signal.SIGHUP, signal.SIGQUIT)  # torchrun passes these on to its workers
SHUTDOWN_TIMEOUT_S = 600  # torchrun's wait for workers to save after a stop signal, before SIGKILL (default 30 s)


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


def launch_command(argv: list[str], processes: int, nodes: int, threads: int,
                   rendezvous: str = "") -> tuple[list[str], str]:
    """The next launcher down towards `processes` workers on each of `nodes` nodes running
    `python -m a2d <argv>`, and the stage of the processes it starts: srun starts one a2d process
    per node (stage "node"), which starts torchrun, which starts the workers (stage "worker").
    With `rendezvous` (HOST:PORT) the caller has started this on every node itself: no srun."""
    if nodes > 1 and not rendezvous and os.environ.get(STAGE) != "node":
        if "SLURM_JOB_ID" not in os.environ:
            raise RuntimeError(f"--nodes {nodes}: several nodes need a SLURM allocation (srun starts the job on "
                               "each; run it through workflow/profiles/slurm-multinode), or the same command "
                               "started on every node with --rendezvous HOST:PORT of the first")
        # Snakemake's job step strips SLURM_CPUS_PER_TASK: say it again, or srun binds the step to one CPU.
        return ["srun", f"--nodes={nodes}", "--ntasks-per-node=1", f"--cpus-per-task={threads}",
                "--kill-on-bad-exit=1", sys.executable, "-m", "a2d", *argv], "node"
    torchrun = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={processes}",
                f"--signals-to-handle={','.join(s.name for s in FORWARDED_SIGNALS)}",
                f"--shutdown-timeout={SHUTDOWN_TIMEOUT_S}"]
    if nodes == 1:
        return [*torchrun, "--standalone", "-m", "a2d", *argv], "worker"
    endpoint, run_id = rendezvous_point(rendezvous)
    return [*torchrun, f"--nnodes={nodes}", "--rdzv-backend=c10d", f"--rdzv-endpoint={endpoint}",
            f"--rdzv-id={run_id}", "-m", "a2d", *argv], "worker"


def rendezvous_point(rendezvous: str) -> tuple[str, str]:
    """Where the nodes meet and the id of their run: the given HOST:PORT, or, inside SLURM, the
    first host of the allocation on a port of this job's own (two jobs may share a head node)."""
    if rendezvous:
        return rendezvous, f"a2d-{rendezvous.replace(':', '-')}"
    job = os.environ["SLURM_JOB_ID"]
    return f"{head_node()}:{29500 + int(job) % 20000}", f"a2d-{job}"


def die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the launcher dies, so no training outlives it."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def run_launcher(argv: list[str], processes: int, nodes: int, threads: int, rendezvous: str = "") -> int:
    """Run the next launcher down, pass it the first stop signal, and return its exit status
    (128 + the signal after a stop, as a process killed by it would report).

    torchrun and srun run in a session of their own, so that a signal to this job's process group
    (Ctrl-C, Snakemake) reaches them once, through here; torchrun passes SIGTERM, SIGINT and
    SIGUSR1 on to its workers and gives them SHUTDOWN_TIMEOUT_S to save. Inside a SLURM job,
    SLURM signals every process of the job itself: this one then only outlives the signal (its
    death would SIGTERM the child) and passes nothing on, so that nobody gets it twice."""
    command, stage = launch_command(argv, processes, nodes, threads, rendezvous)
    print(f"[a2d.launch] {shlex.join(command)}", file=sys.stderr, flush=True)
    child: list[subprocess.Popen] = []
    forwarded: list[int] = []

    def forward(signum, frame):
        if not forwarded and child:
            forwarded.append(signum)
            if "SLURM_JOB_ID" not in os.environ:
                child[0].send_signal(signum)

    for signum in STOP_SIGNALS:
        signal.signal(signum, forward)
    child.append(subprocess.Popen(command, env={**os.environ, STAGE: stage}, start_new_session=True,
                                  preexec_fn=die_with_parent))
    status = child[0].wait()
    if forwarded:
        return 128 + forwarded[0]
    return 128 - status if status < 0 else status


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
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world != processes * nodes:
        raise RuntimeError(f"expected {processes * nodes} processes ({nodes} node(s) x {processes}), "
                           f"the launcher started {world}")
    if devices > 0:
        visible = torch.cuda.device_count()
        if visible != devices:
            raise RuntimeError(f"expected {devices} GPU(s) per node (the rule's gpu or gres resource), "
                               f"CUDA sees {visible} "
                               f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')})")
        if processes != devices:
            raise RuntimeError(f"{processes} processes per node for {devices} GPU(s): use one process per GPU")


def cache_ops_in_this_environment() -> None:
    """DeepSpeed builds some ops on first use (on CPU: its shared-memory communication op, about a
    minute and two 1.5 GB compilers): keep them in this Python environment (sys.prefix) rather than
    ~/.cache/torch_extensions, which every environment shares and where two checkouts rebuilt each
    other's op at every switch. TORCH_EXTENSIONS_DIR, where set, wins."""
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.join(sys.prefix, "torch_extensions"))


def build_cpu_ops() -> None:
    """The CPU op built now (`make venv`), so that no training job builds it."""
    cache_ops_in_this_environment()
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from deepspeed.accelerator import get_accelerator

    get_accelerator().create_op_builder("ShareMemCommBuilder").load(verbose=False)


class World:
    """The data-parallel world of one training job, joined once: which process this is, and the
    collectives, which every process must call at the same point.

    CUDA with NCCL where there is a GPU, DeepSpeed's CPU accelerator with gloo where there is not;
    a process started without a launcher is a world of one."""

    def __init__(self):
        on_gpu = torch.cuda.is_available()
        os.environ.setdefault("DS_ACCELERATOR", "cuda" if on_gpu else "cpu")
        if "RANK" not in os.environ:  # a free port, so that two trainings can run side by side
            os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                              MASTER_PORT=str(free_port()))
        cache_ops_in_this_environment()
        import deepspeed

        deepspeed.init_distributed(dist_backend="nccl" if on_gpu else "gloo", verbose=False)
        if on_gpu:
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        self.rank, self.size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        self.device = torch.device("cuda", int(os.environ["LOCAL_RANK"])) if on_gpu else torch.device("cpu")

    @property
    def main(self) -> bool:
        """Rank 0: the process that writes files and logs."""
        return self.rank == 0

    def sum(self, values: list[float]) -> list[float]:
        """`values` summed over all processes (in float64)."""
        import torch.distributed as dist

        if self.size == 1:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def broadcast(self, value):
        """Rank 0's `value`, on every process."""
        import torch.distributed as dist

        shared = [value]
        dist.broadcast_object_list(shared, src=0)
        return shared[0]

    def barrier(self) -> None:
        import torch.distributed as dist

        dist.barrier()


class StopRequest:
    """While active, remembers a stop signal instead of dying of it, so that training can save and
    then exit. A second SIGINT acts as usual (Ctrl-C twice stops at once); SIGTERM and SIGUSR1 may
    arrive twice by design (from SLURM and from torchrun) and never do."""

    def __init__(self):
        self.signum: int | None = None
        self.previous: dict = {}

    def __enter__(self) -> "StopRequest":
        self.previous = {signum: signal.signal(signum, self._handle) for signum in STOP_SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            signal.signal(signum, self.previous[signum])
            signal.raise_signal(signum)
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""


class Stopped(SystemExit):
    """Training saved a checkpoint and stopped on a signal; the exit status says which (128 + signal)."""

    def __init__(self, signum: int):
        super().__init__(128 + signum)
