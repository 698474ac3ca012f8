"""One training run's directory, `checkpoints/<system>/<digest>/`: its name, where it stands
(`Progress`), its step log `steps.tsv`, its best weights, and its sealed checkpoints (which one to
resume from, saving a new one)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from a2d.checkpoint import commit_checkpoint, new_tag, newest_intact, prune_checkpoints, to_universal
from a2d.config import SystemSpec
from a2d.files import atomic_path

# Settings that say when to stop or how to keep checkpoints but do not change the training
# trajectory: changing them continues a run rather than starting anew.
NON_TRAJECTORY_FIELDS = ("max_epochs", "max_steps", "patience", "save_every_steps", "keep_checkpoints")
STEPS_HEADER = "step\tloss_per_token\tlr\ttarget_tokens\tseconds"


@dataclass
class Progress:
    """Where a run stands; saved in every checkpoint as DeepSpeed client state."""

    epoch: int = 1  # 1-based, the epoch being trained
    batches_done: int = 0  # batches of `epoch` already trained, by all processes together
    step: int = 0
    best_bleu: float = -1.0
    best_epoch: int = 0
    bad_epochs: int = 0
    history: list = field(default_factory=list)  # one dict per epoch
    best_alignment: dict = field(default_factory=dict)  # AAM mixing weights at the best epoch


def run_digest(spec: SystemSpec, inputs: list[str], batches_per_update: int) -> str:
    """Names a run by everything that shapes its trajectory: spec (less stopping criteria), the
    batches per update it resolves to (with the default 0, the number of processes), and inputs."""
    identity = json.loads(spec.to_json())
    for name in NON_TRAJECTORY_FIELDS:
        identity["training"].pop(name, None)
    identity["training"]["batches_per_update"] = batches_per_update
    h = hashlib.sha256(json.dumps(identity, sort_keys=True).encode())
    for path in inputs:
        with open(path, "rb") as f:
            h.update(hashlib.file_digest(f, "sha256").digest())
    return h.hexdigest()[:12]


class RunDirectory:
    """The run's files. Rank 0 writes them; `save` is collective (every process calls it)."""

    def __init__(self, checkpoint_dir: str, spec: SystemSpec, inputs: list[str], batches_per_update: int):
        self.path = Path(checkpoint_dir) / run_digest(spec, inputs, batches_per_update)
        self.best = self.path / "best.safetensors"
        self.steps = self.path / "steps.tsv"
        self.board = self.path / "tensorboard"  # a2d.board's event files, one directory per run
        self.name = spec.name

    def checkpoint_to_resume(self, world_size: int, log) -> dict | None:
        """The newest intact checkpoint as {"tag", "load_dir", "universal"}, converted to DeepSpeed's
        universal checkpoint when another number of processes wrote it (rank 0 only)."""
        self.path.mkdir(parents=True, exist_ok=True)
        found = newest_intact(self.path, log)
        if not found:
            return None
        tag, manifest = found
        resume = {"tag": tag, "load_dir": str(self.path), "universal": False}
        if manifest["zero_stage"] > 0 and manifest["world_size"] != world_size:
            log(f"{self.name}: {tag} was written by {manifest['world_size']} process(es), this run has {world_size}: "
                "converting it to DeepSpeed's universal checkpoint")
            resume.update(load_dir=str(to_universal(self.path, tag)), universal=True)
        return resume

    def restart_step_log(self, step: int) -> None:
        """Keep the logged steps up to `step`: those past the checkpoint were lost with their process."""
        logged = self.steps.read_text().splitlines()[1:] if self.steps.exists() else []
        kept = [line for line in logged if int(line.split("\t")[0]) <= step]
        with atomic_path(self.steps) as tmp:
            tmp.write_text("".join(f"{line}\n" for line in [STEPS_HEADER, *kept]))

    def log_step(self, step: int, loss: float, lr: float, target_tokens: int, seconds: float) -> None:
        """One update: its loss per token over all processes, and this process's tokens and wall
        time (benchmarks/ reads them)."""
        with open(self.steps, "a") as f:
            f.write(f"{step}\t{loss:.6f}\t{lr:.6g}\t{target_tokens}\t{seconds:.4f}\n")

    def save(self, engine, progress: Progress, world, zero_stage: int, keep: int) -> None:
        """A new sealed checkpoint of the engine and `progress`; older ones beyond `keep` pruned."""
        tag = world.broadcast(new_tag(self.path, progress.step) if world.main else None)
        engine.save_checkpoint(str(self.path), tag=tag, save_latest=False, client_state={
            "progress": progress.__dict__, "universal_checkpoint_info": {"universal_checkpoint_version": 0.2}})
        world.barrier()  # every rank's files are written
        if world.main:
            commit_checkpoint(self.path, tag, world.size, zero_stage)
            prune_checkpoints(self.path, keep)
        world.barrier()
