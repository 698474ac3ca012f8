"""Training recipe: teacher training and distillation on a DeepSpeed engine.

`Trainer` is the recipe, in named steps: set up (distributed world, data, models), resume (the
engine, from the latest checkpoint), train an epoch (update by update), end the epoch (validation
BLEU, the best weights, a checkpoint), finish (export the best weights and the summary). This is
the only module that drives DeepSpeed; model, losses, data and search are plain PyTorch.

The checkpoint directory is not a Snakemake output (Snakemake would delete it before a re-run): a
restarted job finds its checkpoints there and continues. Each run keeps them in a subdirectory named
by a digest of its spec and inputs, so a changed config never resumes a different run.
"""

from __future__ import annotations

import hashlib
import math
import os
import random
import shutil
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from a2d.board import TrainingBoard
from a2d.checkpoint import load_model, load_strictly, save_model
from a2d.config import SearchConfig, SystemSpec
from a2d.data import ParallelData, load_sentencepiece
from a2d.distill import DistillationModule, FrozenTeacher
from a2d.evaluate import corpus_bleu
from a2d.files import atomic_path, read_lines
from a2d.launch import Stopped, StopRequest, World, check_world
from a2d.model import Transformer, count_parameters
from a2d.run import Progress, RunDirectory
from a2d.search import translate
from a2d.summary import EpochRecord, TrainingSummary


def log(message: str) -> None:
    print(f"[a2d.train {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def inverse_sqrt_schedule(cfg) -> callable:
    """lr factor per update: linear warm-up from warmup_init_lr, then decay with 1/sqrt(step) (fairseq)."""
    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (cfg.warmup_init_lr + (cfg.lr - cfg.warmup_init_lr) * step / cfg.warmup_steps) / cfg.lr
        return math.sqrt(max(cfg.warmup_steps, 1) / max(step, 1))
    return factor


def deepspeed_config(spec: SystemSpec, world_size: int, accumulation: int, load_universal: bool) -> dict:
    precision = spec.training.precision
    return {
        "train_micro_batch_size_per_gpu": 1,  # one token-based batch per micro-step and process
        "gradient_accumulation_steps": accumulation,
        "train_batch_size": world_size * accumulation,
        "gradient_clipping": spec.training.clip_norm,
        "zero_optimization": {"stage": spec.training.zero_stage},
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16"},
        "checkpoint": {"load_universal": load_universal},
        "steps_per_print": 10 ** 9,
        "wall_clock_breakdown": False,
    }


def check_precision(precision: str) -> str | None:
    """An error where the accelerator cannot train in `precision`; a warning (returned) where it can
    only slowly."""
    from deepspeed.accelerator import get_accelerator

    accelerator = get_accelerator()
    supported = {"fp32": True, "bf16": accelerator.is_bf16_supported(), "fp16": accelerator.is_fp16_supported()}
    if not supported[precision]:
        usable = ", ".join(name for name, ok in supported.items() if ok)
        raise RuntimeError(f"precision {precision}: not supported by this machine's {accelerator.device_name()} "
                           f"accelerator; use {usable}")
    if precision == "bf16" and accelerator.device_name() == "cpu" and cpu_has_native_bf16() is False:
        return ("warning: precision bf16 on a CPU without bf16 matrix instructions (no avx512_bf16 or amx_bf16 "
                "in /proc/cpuinfo): its matrix products are emulated, about 100 times slower than fp32 (0.8 "
                "against 91 GFLOP/s measured on an AVX2-only EPYC); fp32 is faster here")
    return None


def cpu_has_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool | None:
    """Whether this CPU multiplies bf16 matrices in hardware (AVX-512 BF16 or AMX); None where its
    flags cannot be read (not Linux)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return None
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), None)
    return None if flags is None else bool({"avx512_bf16", "amx_bf16"} & set(flags))


def batch_seed(seed: int, epoch: int, index: int) -> int:
    """Dropout seed of one batch: the same whichever process trains it and whether or not the run was
    resumed, so no RNG state needs saving and the trajectory does not depend on the world size."""
    return int.from_bytes(hashlib.blake2b(f"{seed}/{epoch}/{index}".encode(), digest_size=7).digest(), "little")


def alignment_weights(module: DistillationModule) -> dict:
    """The AAM's (teacher channels x student channels) mixing weights per attention type, with the
    heads per channel group, for figures; empty without an AAM."""
    if module.alignment is None:
        return {}
    per_layer = lambda heads: 1 if module.method.layerwise else heads  # noqa: E731
    return {"student_heads_per_layer": per_layer(module.student.cfg.heads),
            "teacher_heads_per_layer": per_layer(module.teacher_heads),
            "weights": {name: mixer.weights.detach().cpu().tolist() for name, mixer in module.alignment.mixers.items()}}


def consolidated(engine, build) -> DistillationModule:
    """The engine's module with full fp32 weights on every rank: the module itself where it has
    them, else a copy built by `build()` and filled from DeepSpeed's fp32 master weights (under
    ZeRO-3 gathered from all ranks: every rank must call this)."""
    if engine.zero_optimization_stage() < 3 and not (engine.bfloat16_enabled() or engine.fp16_enabled()):
        return engine.module
    from deepspeed.utils import safe_get_full_fp32_param

    copy = build().to(engine.device)
    with torch.no_grad():
        params = dict(copy.named_parameters())
        for name, param in engine.module.named_parameters():
            full = safe_get_full_fp32_param(param)
            if full is None:
                raise RuntimeError(f"{name}: DeepSpeed keeps no fp32 master weights for it")
            params[name].copy_(full)
    return copy.eval()


def validate(model: Transformer, data: ParallelData, references: list[str], sp, spec: SystemSpec) -> float:
    cfg = SearchConfig(beam_size=1, max_len_a=spec.training.valid_max_len_a, max_len_b=spec.training.valid_max_len_b)
    was_training = model.training
    hyps = translate(model, data.src, cfg)
    model.train(was_training)
    return corpus_bleu([sp.decode(h) for h in hyps], references)


@dataclass
class TrainingFiles:
    """What one training job reads and writes."""

    train: str  # encoded corpora
    valid: str
    valid_ref: str  # validation references, plain text
    src_spm: str
    tgt_spm: str
    checkpoint_dir: str
    output: str  # best weights
    summary: str
    teacher: str | None = None


@dataclass
class EpochStats:
    """What one pass over (part of) an epoch did, for its history entry."""

    started: float = field(default_factory=time.perf_counter)
    tokens: int = 0
    updates: int = 0
    term_sums: dict = field(default_factory=dict)  # per-token loss terms, summed over micro-batches


class Trainer:
    """Train (or resume) one system in each process of its data-parallel world."""

    def __init__(self, spec: SystemSpec, files: TrainingFiles, threads: int, processes: int, nodes: int,
                 devices: int, stop: StopRequest, progress_bar: bool):
        self.spec, self.cfg, self.files, self.stop, self.progress_bar = spec, spec.training, files, stop, progress_bar
        torch.set_num_threads(threads)
        check_world(processes, nodes, devices)  # before CUDA is asked for a device it may not have
        self.world = World()
        precision_warning = check_precision(self.cfg.precision)
        load_strictly()
        self.say = log if self.world.main else (lambda message: None)
        if precision_warning:
            self.say(f"{spec.name}: {precision_warning}")
        if "SLURM_JOB_ID" in os.environ:
            self.say(f"{spec.name}: SLURM job {os.environ['SLURM_JOB_ID']} on {os.environ.get('SLURMD_NODENAME', '?')}")
        self.set_up_models()
        self.set_up_data()
        inputs = [files.train, files.valid, files.src_spm, files.tgt_spm] + ([files.teacher] if files.teacher else [])
        self.run = RunDirectory(files.checkpoint_dir, spec, inputs, self.per_update)

    def set_up_models(self) -> None:
        """The subword models, the student's shape, the frozen teacher, the module to train."""
        spec, files = self.spec, self.files
        self.sp = load_sentencepiece(files.tgt_spm)  # decodes validation output
        src_vocab = None if files.src_spm == files.tgt_spm else load_sentencepiece(files.src_spm).get_piece_size()
        self.model_cfg = spec.model_config(vocab_size=self.sp.get_piece_size(), src_vocab_size=src_vocab)
        self.teacher = None
        if spec.method.needs_teacher:
            if files.teacher is None:
                raise ValueError(f"{spec.name}: method {spec.method.name!r} needs --teacher")
            self.teacher = FrozenTeacher(load_model(files.teacher), spec.method)
            try:
                spec.method.check_fits(self.model_cfg, self.teacher.cfg)
            except ValueError as err:
                raise ValueError(f"{files.teacher}: {err}") from None
        self.module = self.build_module()
        self.parameters = count_parameters(self.module.student)  # before ZeRO-3 partitions them

    def build_module(self) -> DistillationModule:
        torch.manual_seed(self.cfg.seed)  # the same initial weights in every process
        teacher_cfg = self.teacher.cfg if self.teacher else None
        return DistillationModule(Transformer(self.model_cfg), self.spec.method, teacher_cfg)

    def set_up_data(self) -> None:
        """The corpora, the token batches, and how many of them make one update on each process."""
        cfg, files, world, max_positions = self.cfg, self.files, self.world, self.model_cfg.max_positions
        self.train_data = ParallelData(files.train, max_positions=max_positions)
        self.valid_data = ParallelData(files.valid, max_positions=max_positions)
        all_references = read_lines(files.valid_ref)
        self.references = [all_references[i] for i in self.valid_data.kept]
        self.batches = self.train_data.batches(cfg.max_tokens, cfg.seed)
        self.per_update = cfg.batches_per_update or world.size
        if self.per_update % world.size:
            raise ValueError(f"{self.spec.name}: batches_per_update {self.per_update} is not a multiple of the "
                             f"{world.size} processes")
        self.accumulation = self.per_update // world.size
        # an epoch's last (len % per_update) shuffled batches are left out
        self.updates_per_epoch = len(self.batches) // self.per_update
        if self.updates_per_epoch == 0:
            raise ValueError(f"{files.train}: {len(self.batches)} batches of {cfg.max_tokens} tokens, fewer than one "
                             f"update ({self.per_update} batches): lower max_tokens or batches_per_update")
        self.say(f"{self.spec.name}: {self.parameters:,} parameters, {len(self.train_data):,} training pairs, "
                 f"{len(self.valid_data):,} validation pairs ({self.train_data.dropped} and {self.valid_data.dropped} "
                 f"longer than {max_positions} tokens left out), {len(self.batches)} batches per epoch, "
                 f"{self.per_update} per update ({world.size} process(es) x {self.accumulation}), "
                 f"ZeRO-{cfg.zero_stage}, {cfg.precision}, method {self.spec.method.name}")

    def resume(self) -> None:
        """The DeepSpeed engine, from the newest intact checkpoint of this run if there is one."""
        import deepspeed

        cfg, world = self.cfg, self.world
        resume = world.broadcast(self.run.checkpoint_to_resume(world.size, log) if world.main else None)
        # fused: one kernel for all parameters (2 CPU cores: 0.54 s a step for the 48M-parameter teacher,
        # against 1.8 s looping over the tensors)
        optimizer = torch.optim.AdamW(self.module.parameters(), lr=cfg.lr, betas=tuple(cfg.adam_betas),
                                      eps=cfg.adam_eps, weight_decay=cfg.weight_decay, fused=True)
        schedule = inverse_sqrt_schedule(cfg)
        ds_config = deepspeed_config(self.spec, world.size, self.accumulation,
                                     load_universal=bool(resume and resume["universal"]))
        self.engine, _, _, _ = deepspeed.initialize(
            model=self.module, optimizer=optimizer, config=ds_config,
            lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, schedule))
        if self.teacher is not None:
            self.teacher.model.to(self.engine.device)
        self.progress = Progress()
        if resume is not None:
            _, client = self.engine.load_checkpoint(resume["load_dir"], tag=resume["tag"])
            self.progress = Progress(**client["progress"])
            self.say(f"{self.spec.name}: resumed from {self.run.path / resume['tag']} (epoch {self.progress.epoch}, "
                     f"step {self.progress.step})")
        else:
            self.say(f"{self.spec.name}: new run in {self.run.path}")
        if world.main:
            self.run.restart_step_log(self.progress.step)
        self.board = TrainingBoard(self.run.board if world.main else None, self.progress.step, self.say)
        self.engine.train()

    def reached_max_steps(self) -> bool:
        return self.cfg.max_steps > 0 and self.progress.step >= self.cfg.max_steps

    def finished(self) -> bool:
        out_of_patience = self.cfg.patience > 0 and self.progress.bad_epochs >= self.cfg.patience
        return self.reached_max_steps() or out_of_patience or self.progress.epoch > self.cfg.max_epochs

    def save(self) -> None:
        self.run.save(self.engine, self.progress, self.world, self.cfg.zero_stage, self.cfg.keep_checkpoints)
        self.board.flush()  # what a resumed run keeps is what the checkpoint holds

    def train_epoch(self) -> EpochStats:
        """The epoch's remaining updates (up to max_steps); on a stop signal, save and raise `Stopped`."""
        progress = self.progress
        epoch_order = list(range(len(self.batches)))
        random.Random(self.cfg.seed * 100_003 + progress.epoch).shuffle(epoch_order)
        first_update = progress.batches_done // self.per_update
        bar = tqdm(total=self.updates_per_epoch, initial=first_update, desc=f"{self.spec.name} epoch {progress.epoch}",
                   disable=not self.progress_bar or not self.world.main,
                   mininterval=1.0 if sys.stderr.isatty() else 30.0, dynamic_ncols=True)
        stats = EpochStats()
        for update in range(first_update, self.updates_per_epoch):
            if self.reached_max_steps():
                break
            chunk = epoch_order[update * self.per_update:(update + 1) * self.per_update]
            stop_requested = self.update(chunk, stats)
            bar.update(1)
            bar.set_postfix(loss=f"{self.last_loss:.3f}",
                            tok_s=f"{stats.tokens / (time.perf_counter() - stats.started):.0f}", refresh=False)
            if stop_requested:  # finish the update, save, stop
                self.save()
                self.say(f"{self.spec.name}: {self.stop.name or 'another process got a stop signal'}: saved a "
                         f"checkpoint at step {progress.step} (epoch {progress.epoch}); run again to resume")
                raise Stopped(self.stop.signum or signal.SIGTERM)
            if progress.step % self.cfg.save_every_steps == 0:
                self.save()
        bar.close()
        return stats

    def update(self, chunk: list[int], stats: EpochStats) -> bool:
        """One optimizer update over the batches `chunk` (this process's share of them); says whether
        any process got a stop signal."""
        progress, engine, world = self.progress, self.engine, self.world
        update_loss, update_started, update_tokens, stop_requested = 0.0, time.perf_counter(), 0, False
        update_terms: dict[str, float] = {}  # this process's micro-batches: per target token, their mean
        rank, accumulation = world.rank, self.accumulation
        for index in chunk[rank * accumulation:(rank + 1) * accumulation]:
            torch.manual_seed(batch_seed(self.cfg.seed, progress.epoch, index))
            batch = self.train_data.collate(self.batches[index]).to(engine.device)
            loss, terms = engine(batch, self.teacher, progress.epoch, progress.step + 1)
            # One collective per micro-batch: every rank sees a NaN or a stop signal at the same step.
            loss_sum, stops = world.sum([float(loss.detach()), float(self.stop.signum is not None)])
            if not math.isfinite(loss_sum):
                raise FloatingPointError(f"{self.spec.name}: loss is {loss_sum} at step {progress.step + 1}; "
                                         "stopping without saving (try a lower lr or clip_norm)")
            stop_requested = stop_requested or stops > 0
            engine.backward(loss)
            engine.step()
            update_loss += loss_sum / self.per_update
            update_tokens += batch.target_tokens
            for name, value in terms.logged().items():
                per_token = value / batch.target_tokens
                stats.term_sums[name] = stats.term_sums.get(name, 0.0) + per_token
                update_terms[name] = update_terms.get(name, 0.0) + per_token / accumulation
        progress.step += 1
        progress.batches_done += self.per_update
        stats.updates += 1
        stats.tokens += update_tokens
        self.last_loss = update_loss
        if world.main:
            seconds = time.perf_counter() - update_started
            self.run.log_step(progress.step, update_loss, engine.get_lr()[0], update_tokens, seconds)
            self.board.update(progress.step, update_terms, engine.get_lr()[0], update_tokens / max(seconds, 1e-9))
        return stop_requested

    def end_epoch(self, stats: EpochStats) -> None:
        """Validation BLEU (rank 0 decodes, every rank takes its value, so all decide alike), the
        epoch's history, the best weights so far, a checkpoint."""
        progress, world = self.progress, self.world
        elapsed = time.perf_counter() - stats.started
        epoch_done = progress.batches_done >= self.updates_per_epoch * self.per_update
        full = consolidated(self.engine, self.build_module)
        bleu = world.broadcast(validate(full.student, self.valid_data, self.references, self.sp, self.spec)
                               if world.main else None)
        progress.history.append(self.history_entry(stats, bleu, epoch_done, elapsed))
        self.board.epoch(progress.step, progress.epoch, bleu)
        if bleu > progress.best_bleu:
            progress.best_bleu, progress.best_epoch, progress.bad_epochs = bleu, progress.epoch, 0
            progress.best_alignment = alignment_weights(full)
            if world.main:
                save_model(self.run.best, full.student)
        else:
            progress.bad_epochs += 1
        self.say(f"{self.spec.name}: epoch {progress.epoch} step {progress.step} train nll/token "
                 f"{progress.history[-1]['train_nll']:.3f} valid BLEU {bleu:.2f} (best {progress.best_bleu:.2f}, "
                 f"epoch {progress.best_epoch}) {progress.history[-1]['target_tokens_per_s']:.0f} target tok/s")
        if epoch_done:
            progress.epoch, progress.batches_done = progress.epoch + 1, 0
        self.save()

    def history_entry(self, stats: EpochStats, bleu: float, epoch_done: bool, elapsed: float) -> dict:
        micro_batches = max(stats.updates * self.accumulation, 1)
        terms = {k: round(v / micro_batches, 6) for k, v in stats.term_sums.items() if k != "nll"}
        tokens = self.world.sum([stats.tokens])[0]
        record = EpochRecord(epoch=self.progress.epoch, step=self.progress.step, valid_bleu=round(bleu, 2),
                             partial=not epoch_done or stats.updates < self.updates_per_epoch,
                             train_nll=round(stats.term_sums.get("nll", 0.0) / micro_batches, 4),
                             terms_per_token=terms, lr=self.engine.get_lr()[0],
                             target_tokens_per_s=round(tokens / max(elapsed, 1e-9), 1))
        return asdict(record)  # Progress keeps plain data: it is saved in every checkpoint

    def finish(self) -> TrainingSummary:
        """The best weights to `output` and the summary (rank 0); returns the summary."""
        progress = self.progress
        summary = TrainingSummary(
            system=self.spec.name, method=self.spec.label, parameters=self.parameters,
            model=self.model_cfg.to_dict(), steps=progress.step, best_valid_bleu=round(progress.best_bleu, 2),
            best_epoch=progress.best_epoch, history=[EpochRecord(**record) for record in progress.history],
            run_dir=str(self.run.path), alignment=progress.best_alignment)
        self.board.close()
        if self.world.main:
            with atomic_path(self.files.output) as tmp:
                shutil.copyfile(self.run.best, tmp)
            summary.write(self.files.summary)
            log(f"{self.spec.name}: best valid BLEU {progress.best_bleu:.2f} at epoch {progress.best_epoch}; "
                f"wrote {self.files.output}")
        self.world.barrier()
        return summary


def train(spec: SystemSpec, *, train_path: str, valid_path: str, valid_ref: str, src_spm: str, tgt_spm: str,
          checkpoint_dir: str, output: str, summary: str, teacher_path: str | None = None,
          threads: int = 1, processes: int = 1, nodes: int = 1, devices: int = 0,
          stop: StopRequest | None = None, progress_bar: bool = True) -> TrainingSummary:
    """Train (or resume) one system; writes the best weights to `output` and a JSON `summary`.

    Run in each process of a world of `processes` x `nodes` (see a2d.launch); `devices` > 0 checks
    that many GPUs are visible per node. `stop`, where the caller has installed it, says when a stop
    signal came: training then saves and raises `Stopped`. The run's TensorBoard event files go to
    its run directory (a2d.board).
    """
    files = TrainingFiles(train_path, valid_path, valid_ref, src_spm, tgt_spm, checkpoint_dir, output, summary,
                          teacher_path)
    trainer = Trainer(spec, files, threads, processes, nodes, devices, stop or StopRequest(), progress_bar)
    trainer.resume()
    while not trainer.finished():
        trainer.end_epoch(trainer.train_epoch())
    return trainer.finish()
