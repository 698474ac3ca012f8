"""Training recipe: teacher training and distillation on a DeepSpeed engine.

Steps: set up (distributed world, data, models, engine), resume from the latest checkpoint, train
epoch by epoch with validation BLEU after each, keep the best weights, export them. This is the
only module that imports DeepSpeed; model, losses, data and search are plain PyTorch.

The checkpoint directory is not a Snakemake output (Snakemake would delete it before a re-run): a
restarted job finds its checkpoints there and continues. Each run keeps them in a subdirectory named
by a digest of its spec and inputs, so a changed config never resumes a different run.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from a2d.checkpoint import (commit_checkpoint, load_model, load_strictly, new_tag, newest_intact,
                            prune_checkpoints, save_model, to_universal)
from a2d.config import SystemSpec
from a2d.data import ParallelData, load_sentencepiece
from a2d.distill import DistillationModule, teacher_forward
from a2d.evaluate import corpus_bleu
from a2d.files import atomic_path, read_lines, write_json
from a2d.launch import StopRequest, Stopped, check_world, setup_distributed
from a2d.model import Transformer, count_parameters
from a2d.search import SearchConfig, translate


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


def check_precision(precision: str) -> None:
    from deepspeed.accelerator import get_accelerator

    accelerator = get_accelerator()
    supported = {"fp32": True, "bf16": accelerator.is_bf16_supported(), "fp16": accelerator.is_fp16_supported()}
    if not supported[precision]:
        usable = ", ".join(name for name, ok in supported.items() if ok)
        raise RuntimeError(f"precision {precision}: not supported by this machine's {accelerator.device_name()} "
                           f"accelerator; use {usable}")


def batch_seed(seed: int, epoch: int, index: int) -> int:
    """Dropout seed of one batch: the same whichever process trains it and whether or not the run was
    resumed, so no RNG state needs saving and the trajectory does not depend on the world size."""
    return int.from_bytes(hashlib.blake2b(f"{seed}/{epoch}/{index}".encode(), digest_size=7).digest(), "little")


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


# Settings that say when to stop or how to keep checkpoints but do not change the training
# trajectory: changing them continues a run rather than starting anew.
NON_TRAJECTORY_FIELDS = ("max_epochs", "max_steps", "patience", "save_every_steps", "keep_checkpoints")


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


def reduce_sum(values: list[float], device) -> list[float]:
    """Sums over all processes (every process must call it at the same point)."""
    import torch.distributed as dist

    if dist.get_world_size() == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def train(spec: SystemSpec, *, train_path: str, valid_path: str, valid_ref: str, src_spm: str, tgt_spm: str,
          checkpoint_dir: str, output: str, summary: str, teacher_path: str | None = None,
          threads: int = 1, processes: int = 1, nodes: int = 1, devices: int = 0,
          stop: StopRequest | None = None, progress_bar: bool = True) -> dict:
    """Train (or resume) one system; writes the best weights to `output` and a JSON `summary`.

    Run in each process of a world of `processes` x `nodes` (see a2d.launch); `devices` > 0 checks
    that many GPUs are visible per node. `stop`, where the caller has installed it, says when a stop
    signal came: training then saves and raises `Stopped`.
    """
    cfg = spec.training
    stop = stop or StopRequest()
    torch.set_num_threads(threads)
    check_world(processes, nodes, devices)  # before CUDA is asked for a device it may not have
    deepspeed = setup_distributed()
    import torch.distributed as dist

    check_precision(cfg.precision)
    load_strictly()
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    say = log if rank == 0 else (lambda message: None)
    if "SLURM_JOB_ID" in os.environ:
        say(f"{spec.name}: SLURM job {os.environ['SLURM_JOB_ID']} on {os.environ.get('SLURMD_NODENAME', '?')}")

    sp = load_sentencepiece(tgt_spm)  # decodes validation output
    src_vocab = None if src_spm == tgt_spm else load_sentencepiece(src_spm).get_piece_size()
    model_cfg = spec.model_config(vocab_size=sp.get_piece_size(), src_vocab_size=src_vocab)
    teacher = None
    if spec.method.needs_teacher:
        if teacher_path is None:
            raise ValueError(f"{spec.name}: method {spec.method.name!r} needs --teacher")
        teacher = load_model(teacher_path).eval().requires_grad_(False)
        try:
            spec.method.check_fits(model_cfg, teacher.cfg)
        except ValueError as err:
            raise ValueError(f"{teacher_path}: {err}") from None

    def build_module() -> DistillationModule:
        torch.manual_seed(cfg.seed)  # the same initial weights in every process
        return DistillationModule(Transformer(model_cfg), spec.method, teacher.cfg if teacher else None)

    module = build_module()
    parameters = count_parameters(module.student)  # before ZeRO-3 partitions them

    train_data = ParallelData(train_path, max_positions=model_cfg.max_positions)
    valid_data = ParallelData(valid_path, max_positions=model_cfg.max_positions)
    all_references = read_lines(valid_ref)
    references = [all_references[i] for i in valid_data.kept]
    batches = train_data.batches(cfg.max_tokens, cfg.seed)
    per_update = cfg.batches_per_update or world
    if per_update % world:
        raise ValueError(f"{spec.name}: batches_per_update {per_update} is not a multiple of the {world} processes")
    accumulation = per_update // world
    updates_per_epoch = len(batches) // per_update  # an epoch's last (len % per_update) shuffled batches are left out
    if updates_per_epoch == 0:
        raise ValueError(f"{train_path}: {len(batches)} batches of {cfg.max_tokens} tokens, fewer than one update "
                         f"({per_update} batches): lower max_tokens or batches_per_update")
    say(f"{spec.name}: {parameters:,} parameters, {len(train_data):,} training pairs, "
        f"{len(valid_data):,} validation pairs ({train_data.dropped} and {valid_data.dropped} longer than "
        f"{model_cfg.max_positions} tokens left out), {len(batches)} batches per epoch, {per_update} per update "
        f"({world} process(es) x {accumulation}), ZeRO-{cfg.zero_stage}, {cfg.precision}, method {spec.method.name}")

    inputs = [train_path, valid_path, src_spm, tgt_spm] + ([teacher_path] if teacher_path else [])
    run_dir = Path(checkpoint_dir) / run_digest(spec, inputs, per_update)
    best_path = run_dir / "best.safetensors"
    steps_path = run_dir / "steps.tsv"
    resume = None  # {"tag", "load_dir", "universal"} of the checkpoint to resume from, chosen by rank 0
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        found = newest_intact(run_dir, log)
        if found:
            tag, manifest = found
            resume = {"tag": tag, "load_dir": str(run_dir), "universal": False}
            if manifest["zero_stage"] > 0 and manifest["world_size"] != world:
                log(f"{spec.name}: {tag} was written by {manifest['world_size']} process(es), this run has {world}: "
                    "converting it to DeepSpeed's universal checkpoint")
                resume.update(load_dir=str(to_universal(run_dir, tag)), universal=True)
    shared = [resume]
    dist.broadcast_object_list(shared, src=0)
    resume = shared[0]

    optimizer = torch.optim.AdamW(module.parameters(), lr=cfg.lr, betas=tuple(cfg.adam_betas),
                                  eps=cfg.adam_eps, weight_decay=cfg.weight_decay)
    schedule = inverse_sqrt_schedule(cfg)
    ds_config = deepspeed_config(spec, world, accumulation, load_universal=bool(resume and resume["universal"]))
    engine, _, _, _ = deepspeed.initialize(model=module, optimizer=optimizer, config=ds_config,
                                           lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, schedule))
    if teacher is not None:
        teacher.to(engine.device)

    progress = Progress()
    if resume is not None:
        _, client = engine.load_checkpoint(resume["load_dir"], tag=resume["tag"])
        progress = Progress(**client["progress"])
        say(f"{spec.name}: resumed from {run_dir / resume['tag']} (epoch {progress.epoch}, step {progress.step})")
    else:
        say(f"{spec.name}: new run in {run_dir}")
    if rank == 0:  # steps past the checkpoint were lost with the process that trained them
        kept = [line for line in (steps_path.read_text().splitlines() if steps_path.exists() else [])[1:]
                if int(line.split("\t")[0]) <= progress.step]
        with atomic_path(steps_path) as tmp:
            tmp.write_text("".join(f"{line}\n" for line in ["step\tloss_per_token\tlr\ttarget_tokens\tseconds", *kept]))

    def save_checkpoint():
        shared = [new_tag(run_dir, progress.step) if rank == 0 else None]
        dist.broadcast_object_list(shared, src=0)
        tag = shared[0]
        engine.save_checkpoint(str(run_dir), tag=tag, save_latest=False, client_state={
            "progress": progress.__dict__, "universal_checkpoint_info": {"universal_checkpoint_version": 0.2}})
        dist.barrier()  # every rank's files are written
        if rank == 0:
            commit_checkpoint(run_dir, tag, world, cfg.zero_stage)
            prune_checkpoints(run_dir, cfg.keep_checkpoints)
        dist.barrier()

    def reached_max_steps() -> bool:
        return cfg.max_steps > 0 and progress.step >= cfg.max_steps

    def finished() -> bool:
        out_of_patience = cfg.patience > 0 and progress.bad_epochs >= cfg.patience
        return reached_max_steps() or out_of_patience or progress.epoch > cfg.max_epochs

    engine.train()
    while not finished():
        epoch_order = list(range(len(batches)))
        random.Random(cfg.seed * 100_003 + progress.epoch).shuffle(epoch_order)
        first_update = progress.batches_done // per_update
        bar = tqdm(total=updates_per_epoch, initial=first_update, desc=f"{spec.name} epoch {progress.epoch}",
                   disable=not progress_bar or rank != 0, mininterval=1.0 if sys.stderr.isatty() else 30.0,
                   dynamic_ncols=True)
        started, tokens, updates = time.perf_counter(), 0, 0
        term_sums: dict[str, float] = {}  # per-token loss terms, summed over this epoch's micro-batches
        stop_requested = False
        for update in range(first_update, updates_per_epoch):
            if reached_max_steps():
                break
            chunk = epoch_order[update * per_update:(update + 1) * per_update]
            update_loss, update_started, update_tokens = 0.0, time.perf_counter(), 0
            for index in chunk[rank * accumulation:(rank + 1) * accumulation]:
                torch.manual_seed(batch_seed(cfg.seed, progress.epoch, index))
                batch = train_data.collate(batches[index]).to(engine.device)
                loss, terms = engine(batch, teacher_forward(teacher, batch, spec.method), progress.epoch, progress.step + 1)
                # One collective per micro-batch: every rank sees a NaN or a stop signal at the same step.
                loss_sum, stops = reduce_sum([float(loss.detach()), float(stop.signum is not None)], engine.device)
                if not math.isfinite(loss_sum):
                    raise FloatingPointError(f"{spec.name}: loss is {loss_sum} at step {progress.step + 1}; "
                                             "stopping without saving (try a lower lr or clip_norm)")
                stop_requested = stop_requested or stops > 0
                engine.backward(loss)
                engine.step()
                update_loss += loss_sum / per_update
                update_tokens += batch.target_tokens
                for name, value in terms.items():
                    per_token = value if name == "nll_per_token" else value / batch.target_tokens
                    term_sums[name] = term_sums.get(name, 0.0) + per_token
            progress.step += 1
            progress.batches_done += per_update
            updates += 1
            tokens += update_tokens
            if rank == 0:  # this process's tokens and wall time: benchmarks/ reads them
                with open(steps_path, "a") as f:
                    f.write(f"{progress.step}\t{update_loss:.6f}\t{engine.get_lr()[0]:.6g}\t{update_tokens}\t"
                            f"{time.perf_counter() - update_started:.4f}\n")
            bar.update(1)
            bar.set_postfix(loss=f"{update_loss:.3f}", tok_s=f"{tokens / (time.perf_counter() - started):.0f}",
                            refresh=False)
            if stop_requested:  # finish the update, save, stop
                save_checkpoint()
                say(f"{spec.name}: {stop.name or 'another process got a stop signal'}: saved a checkpoint at step "
                    f"{progress.step} (epoch {progress.epoch}); run again to resume")
                raise Stopped(stop.signum or signal.SIGTERM)
            if progress.step % cfg.save_every_steps == 0:
                save_checkpoint()
        bar.close()
        elapsed = time.perf_counter() - started

        epoch_done = progress.batches_done >= updates_per_epoch * per_update
        full = consolidated(engine, build_module)
        # Rank 0 decodes; every rank takes its BLEU, so that all take the same decisions.
        shared = [validate(full.student, valid_data, references, sp, spec) if rank == 0 else None]
        dist.broadcast_object_list(shared, src=0)
        bleu = shared[0]
        micro_batches = updates * accumulation
        # partial: stopped by max_steps inside the epoch (or resumed inside it: then the
        # loss and speed figures cover only the batches since the resume).
        progress.history.append({"epoch": progress.epoch, "step": progress.step, "valid_bleu": round(bleu, 2),
                                 "partial": not epoch_done or updates < updates_per_epoch,
                                 "train_nll": round(term_sums.get("nll_per_token", 0.0) / max(micro_batches, 1), 4),
                                 "terms_per_token": {k: round(v / max(micro_batches, 1), 6) for k, v in term_sums.items()
                                                     if k != "nll_per_token"},
                                 "lr": engine.get_lr()[0],
                                 "target_tokens_per_s": round(reduce_sum([tokens], engine.device)[0] / max(elapsed, 1e-9), 1)})
        if bleu > progress.best_bleu:
            progress.best_bleu, progress.best_epoch, progress.bad_epochs = bleu, progress.epoch, 0
            progress.best_alignment = alignment_weights(full)
            if rank == 0:
                save_model(best_path, full.student)
        else:
            progress.bad_epochs += 1
        say(f"{spec.name}: epoch {progress.epoch} step {progress.step} train nll/token "
            f"{progress.history[-1]['train_nll']:.3f} valid BLEU {bleu:.2f} (best {progress.best_bleu:.2f}, "
            f"epoch {progress.best_epoch}) {progress.history[-1]['target_tokens_per_s']:.0f} target tok/s")
        if epoch_done:
            progress.epoch, progress.batches_done = progress.epoch + 1, 0
        save_checkpoint()

    result = {"system": spec.name, "method": spec.label, "parameters": parameters,
              "model": model_cfg.to_dict(), "steps": progress.step, "best_valid_bleu": round(progress.best_bleu, 2),
              "best_epoch": progress.best_epoch, "history": progress.history, "run_dir": str(run_dir),
              "alignment": progress.best_alignment}
    if rank == 0:
        with atomic_path(output) as tmp:
            shutil.copyfile(best_path, tmp)
        write_json(summary, result)
        log(f"{spec.name}: best valid BLEU {progress.best_bleu:.2f} at epoch {progress.best_epoch}; wrote {output}")
    dist.barrier()
    return result
