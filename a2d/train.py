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
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from a2d.checkpoint import latest_tag, load_model, prune_checkpoints, save_model, strict_checkpoint_engine
from a2d.config import SystemSpec
from a2d.data import ParallelData, load_sentencepiece
from a2d.distill import DistillationModule, teacher_forward
from a2d.evaluate import corpus_bleu
from a2d.files import atomic_path, read_lines, write_json
from a2d.model import Transformer, count_parameters
from a2d.search import SearchConfig, translate


def log(message: str) -> None:
    print(f"[a2d.train {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def setup_distributed():
    """Join the process group: torchrun's when launched by it, else a world of one.

    CUDA with NCCL where there is a GPU, DeepSpeed's CPU accelerator with gloo where there is not.
    """
    on_gpu = torch.cuda.is_available()
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if on_gpu else "cpu")
    if "RANK" not in os.environ:
        with socket.socket() as s:  # a free port, so that two trainings can run side by side
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    import deepspeed

    deepspeed.init_distributed(dist_backend="nccl" if on_gpu else "gloo", verbose=False)
    if on_gpu:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    return deepspeed


def inverse_sqrt_schedule(cfg) -> callable:
    """lr factor per update: linear warm-up from warmup_init_lr, then decay with 1/sqrt(step) (fairseq)."""
    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (cfg.warmup_init_lr + (cfg.lr - cfg.warmup_init_lr) * step / cfg.warmup_steps) / cfg.lr
        return math.sqrt(max(cfg.warmup_steps, 1) / max(step, 1))
    return factor


def deepspeed_config(spec: SystemSpec, world_size: int) -> dict:
    return {
        "train_micro_batch_size_per_gpu": 1,  # one token-based batch per step and process
        "gradient_accumulation_steps": 1,
        "train_batch_size": world_size,
        "gradient_clipping": spec.training.clip_norm,
        "zero_optimization": {"stage": spec.training.zero_stage},
        "steps_per_print": 10 ** 9,
        "wall_clock_breakdown": False,
    }


@dataclass
class Progress:
    """Where a run stands; saved in every checkpoint as DeepSpeed client state."""

    epoch: int = 1  # 1-based, the epoch being trained
    batches_done: int = 0  # batches of `epoch` already trained
    step: int = 0
    best_bleu: float = -1.0
    best_epoch: int = 0
    bad_epochs: int = 0
    history: list = field(default_factory=list)  # one dict per epoch
    best_alignment: dict = field(default_factory=dict)  # AAM mixing weights at the best epoch


# Settings that say when to stop or how to keep checkpoints but do not change the training
# trajectory: changing them continues a run rather than starting anew.
NON_TRAJECTORY_FIELDS = ("max_epochs", "max_steps", "patience", "save_every_steps", "keep_checkpoints")


def run_digest(spec: SystemSpec, inputs: list[str]) -> str:
    """Names a run by everything that shapes its trajectory: spec (less stopping criteria) and inputs."""
    identity = json.loads(spec.to_json())
    for name in NON_TRAJECTORY_FIELDS:
        identity["training"].pop(name, None)
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


def validate(model: Transformer, data: ParallelData, references: list[str], sp, spec: SystemSpec) -> float:
    cfg = SearchConfig(beam_size=1, max_len_a=spec.training.valid_max_len_a, max_len_b=spec.training.valid_max_len_b)
    was_training = model.training
    hyps = translate(model, data.src, cfg)
    model.train(was_training)
    return corpus_bleu([sp.decode(h) for h in hyps], references)


def train(spec: SystemSpec, *, train_path: str, valid_path: str, valid_ref: str, src_spm: str, tgt_spm: str,
          checkpoint_dir: str, output: str, summary: str, teacher_path: str | None = None,
          threads: int = 1, progress_bar: bool = True) -> dict:
    """Train (or resume) one system; writes the best weights to `output` and a JSON `summary`."""
    cfg = spec.training
    torch.set_num_threads(threads)
    deepspeed = setup_distributed()
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])

    sp = load_sentencepiece(tgt_spm)  # decodes validation output
    src_vocab = None if src_spm == tgt_spm else load_sentencepiece(src_spm).get_piece_size()
    model_cfg = spec.model_config(vocab_size=sp.get_piece_size(), src_vocab_size=src_vocab)
    torch.manual_seed(cfg.seed)
    student = Transformer(model_cfg)
    teacher = None
    if spec.method.needs_teacher:
        if teacher_path is None:
            raise ValueError(f"{spec.name}: method {spec.method.name!r} needs --teacher")
        teacher = load_model(teacher_path).eval().requires_grad_(False)
        try:
            spec.method.check_fits(model_cfg, teacher.cfg)
        except ValueError as err:
            raise ValueError(f"{teacher_path}: {err}") from None
    module = DistillationModule(student, spec.method, teacher.cfg if teacher else None)

    train_data = ParallelData(train_path, max_positions=model_cfg.max_positions)
    valid_data = ParallelData(valid_path, max_positions=model_cfg.max_positions)
    all_references = read_lines(valid_ref)
    references = [all_references[i] for i in valid_data.kept]
    batches = train_data.batches(cfg.max_tokens, cfg.seed)
    if rank == 0:
        log(f"{spec.name}: {count_parameters(student):,} parameters, {len(train_data):,} training pairs, "
            f"{len(valid_data):,} validation pairs ({train_data.dropped} and {valid_data.dropped} longer than "
            f"{model_cfg.max_positions} tokens left out), {len(batches)} batches per epoch, method {spec.method.name}")

    optimizer = torch.optim.AdamW(module.parameters(), lr=cfg.lr, betas=tuple(cfg.adam_betas),
                                  eps=cfg.adam_eps, weight_decay=cfg.weight_decay)
    schedule = inverse_sqrt_schedule(cfg)
    engine, _, _, _ = deepspeed.initialize(
        model=module, optimizer=optimizer, config=deepspeed_config(spec, world),
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, schedule))
    engine.checkpoint_engine = strict_checkpoint_engine(engine._config)
    if teacher is not None:
        teacher.to(engine.device)

    inputs = [train_path, valid_path, src_spm, tgt_spm] + ([teacher_path] if teacher_path else [])
    run_dir = Path(checkpoint_dir) / run_digest(spec, inputs)
    best_path = run_dir / "best.safetensors"
    progress = Progress()
    tag = latest_tag(run_dir)
    if tag is not None:
        _, client = engine.load_checkpoint(str(run_dir), tag=tag)
        progress = Progress(**client["progress"])
        torch.set_rng_state(client["rng"])
        if torch.cuda.is_available() and "cuda_rng" in client:
            torch.cuda.set_rng_state(client["cuda_rng"])
        log(f"{spec.name}: resumed from {run_dir / tag} (epoch {progress.epoch}, step {progress.step})")
    else:
        log(f"{spec.name}: new run in {run_dir}")

    def save_checkpoint():
        rng = {"rng": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda_rng"] = torch.cuda.get_rng_state()
        engine.save_checkpoint(str(run_dir), tag=f"step{progress.step}", client_state={"progress": progress.__dict__, **rng})
        if rank == 0:
            prune_checkpoints(run_dir, cfg.keep_checkpoints)

    def reached_max_steps() -> bool:
        return cfg.max_steps > 0 and progress.step >= cfg.max_steps

    def finished() -> bool:
        out_of_patience = cfg.patience > 0 and progress.bad_epochs >= cfg.patience
        return reached_max_steps() or out_of_patience or progress.epoch > cfg.max_epochs

    engine.train()
    while not finished():
        epoch_order = list(range(len(batches)))
        random.Random(cfg.seed * 100_003 + progress.epoch).shuffle(epoch_order)
        mine = epoch_order[rank::world]
        bar = tqdm(total=len(mine), initial=progress.batches_done, desc=f"{spec.name} epoch {progress.epoch}",
                   disable=not progress_bar or rank != 0, mininterval=1.0 if sys.stderr.isatty() else 30.0,
                   dynamic_ncols=True)
        started, tokens, loss_steps = time.perf_counter(), 0, 0
        term_sums: dict[str, float] = {}  # per-token loss terms, summed over this epoch's steps
        for index in mine[progress.batches_done:]:
            if reached_max_steps():
                break
            batch = train_data.collate(batches[index]).to(engine.device)
            loss, terms = engine(batch, teacher_forward(teacher, batch, spec.method), progress.epoch, progress.step + 1)
            if not math.isfinite(terms["total"]):
                raise FloatingPointError(f"{spec.name}: loss is {terms['total']} at step {progress.step + 1}; "
                                         "stopping without saving (try a lower lr or clip_norm)")
            engine.backward(loss)
            engine.step()
            progress.step += 1
            progress.batches_done += 1
            tokens += batch.target_tokens
            loss_steps += 1
            for name, value in terms.items():
                per_token = value if name == "nll_per_token" else value / batch.target_tokens
                term_sums[name] = term_sums.get(name, 0.0) + per_token
            bar.update(1)
            bar.set_postfix(loss=f"{terms['total'] / batch.target_tokens:.3f}",
                            tok_s=f"{tokens / (time.perf_counter() - started):.0f}", refresh=False)
            if progress.step % cfg.save_every_steps == 0:
                save_checkpoint()
        bar.close()
        elapsed = time.perf_counter() - started

        epoch_done = progress.batches_done >= len(mine)
        bleu = validate(engine.module.student, valid_data, references, sp, spec)
        # partial: stopped by max_steps inside the epoch (or resumed inside it: then the
        # loss and speed figures cover only the batches since the resume).
        progress.history.append({"epoch": progress.epoch, "step": progress.step, "valid_bleu": round(bleu, 2),
                                 "partial": not epoch_done or loss_steps < len(mine),
                                 "train_nll": round(term_sums.get("nll_per_token", 0.0) / max(loss_steps, 1), 4),
                                 "terms_per_token": {k: round(v / max(loss_steps, 1), 6) for k, v in term_sums.items()
                                                     if k != "nll_per_token"},
                                 "lr": engine.get_lr()[0], "target_tokens_per_s": round(tokens / max(elapsed, 1e-9), 1)})
        if bleu > progress.best_bleu:
            progress.best_bleu, progress.best_epoch, progress.bad_epochs = bleu, progress.epoch, 0
            progress.best_alignment = alignment_weights(engine.module)
            if rank == 0:
                save_model(best_path, engine.module.student)
        else:
            progress.bad_epochs += 1
        if rank == 0:
            log(f"{spec.name}: epoch {progress.epoch} step {progress.step} train nll/token "
                f"{progress.history[-1]['train_nll']:.3f} valid BLEU {bleu:.2f} (best {progress.best_bleu:.2f}, "
                f"epoch {progress.best_epoch}) {progress.history[-1]['target_tokens_per_s']:.0f} target tok/s")
        if epoch_done:
            progress.epoch, progress.batches_done = progress.epoch + 1, 0
        save_checkpoint()

    result = {"system": spec.name, "method": spec.label, "parameters": count_parameters(student),
              "model": model_cfg.to_dict(), "steps": progress.step, "best_valid_bleu": round(progress.best_bleu, 2),
              "best_epoch": progress.best_epoch, "history": progress.history, "run_dir": str(run_dir),
              "alignment": progress.best_alignment}
    if rank == 0:
        with atomic_path(output) as tmp:
            shutil.copyfile(best_path, tmp)
        write_json(summary, result)
        log(f"{spec.name}: best valid BLEU {progress.best_bleu:.2f} at epoch {progress.best_epoch}; wrote {output}")
    return result
