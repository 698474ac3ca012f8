"""a2d measured through its own entry points: `python -m a2d train` (DeepSpeed engine, steps.tsv
timings), the A2D step against its parts, and batched decoding in PyTorch and CTranslate2."""

from __future__ import annotations

import json
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch

from a2d.checkpoint import load_model
from a2d.config import MethodConfig, ModelConfig, SearchConfig
from a2d.data import ParallelData
from a2d.distill import DistillationModule, FrozenTeacher
from a2d.export import ctranslate2_translate, export_ctranslate2, load_translator
from a2d.files import read_json
from a2d.model import AttentionMaps, Transformer
from a2d.search import speed, timed_translate
from benchmarks.corpus import Corpus
from benchmarks.measure import run_measured, thread_env, throughput


def train(name: str, shape: dict, method: dict, recipe: dict, updates: int, skip: int, corpus: Corpus, work: Path,
          threads: int, teacher: Path | None = None) -> dict:
    """A fresh run of `updates` updates; throughput from steps.tsv, peak RSS of the training process."""
    out = work / "ours" / name
    shutil.rmtree(out, ignore_errors=True)  # never resume an earlier benchmark run
    out.mkdir(parents=True)
    training = {**recipe, "max_steps": updates, "max_epochs": 1000, "patience": 0, "save_every_steps": 10 ** 9}
    spec = {"name": name, "model": shape, "method": method, "training": training, "targets": "reference"}
    command = [sys.executable, "-m", "a2d", "train", "--spec", json.dumps(spec), "--train", str(corpus.train),
               "--valid", str(corpus.valid), "--valid-ref", str(corpus.valid_ref), "--src-spm", str(corpus.spm),
               "--tgt-spm", str(corpus.spm), "--checkpoint-dir", str(out / "checkpoints"),
               "--output", str(out / "model.safetensors"), "--summary", str(out / "train.json"),
               "--threads", str(threads), "--no-progress", *(["--teacher", str(teacher)] if teacher else [])]
    done = run_measured(command, thread_env(threads), out / "log.txt")
    (steps,) = (out / "checkpoints").glob("*/steps.tsv")
    rows = [line.split("\t") for line in steps.read_text().splitlines()[1:]]
    return {**throughput([(int(r[3]), float(r[4])) for r in rows], skip), "peak_rss_gib": done.peak_rss_gib,
            "parameters": read_json(out / "train.json")["parameters"], "model": str(out / "model.safetensors")}


def a2d_overhead(corpus: Corpus, teacher_path: str, shape: dict, recipe: dict, threads: int, batches: int,
                 rounds: int) -> dict:
    """Seconds per batch of an A2D step, a no-KD step and a teacher forward pass, interleaved on the
    same batches in this one process (plain AdamW: the engine is the same for both students)."""
    torch.set_num_threads(threads)
    data = ParallelData(str(corpus.train))
    every = data.batches(recipe["max_tokens"], seed=1)
    picked = [every[i * len(every) // batches] for i in range(batches)]
    teacher = FrozenTeacher(load_model(teacher_path), MethodConfig("a2d"))
    cfg = ModelConfig(vocab_size=teacher.cfg.vocab_size, **shape)
    students = {"nokd": DistillationModule(Transformer(cfg), MethodConfig("none")).train(),
                "a2d": DistillationModule(Transformer(cfg), teacher.method, teacher.cfg).train()}
    optimizers = {name: torch.optim.AdamW(module.parameters(), lr=1e-4, fused=True) for name, module in students.items()}

    def step(name, batch):
        loss, _ = students[name](batch, teacher, 1, 1)
        optimizers[name].zero_grad(set_to_none=True)
        loss.backward()
        optimizers[name].step()

    work = {"nokd_step": lambda b: step("nokd", b),
            "teacher_forward": lambda b: teacher(b),
            "teacher_forward_with_maps": lambda b: teacher(b, attention_sink=AttentionMaps()),
            "a2d_step": lambda b: step("a2d", b)}
    seconds = {name: [] for name in work}
    for round_ in range(rounds + 1):  # round 0 warms up
        for indices in picked:
            batch = data.collate(indices)
            for name, run in work.items():
                started = time.perf_counter()
                run(batch)
                if round_:
                    seconds[name].append(time.perf_counter() - started)
    total = {name: sum(values) for name, values in seconds.items()}
    return {**{f"{name}_s": total[name] / len(seconds[name]) for name in work},
            "ratio": total["a2d_step"] / (total["nokd_step"] + total["teacher_forward"]),
            "median_batch_ratio": statistics.median(a / (n + t) for a, n, t in zip(
                seconds["a2d_step"], seconds["nokd_step"], seconds["teacher_forward"])),
            "batches": len(seconds["a2d_step"])}


def decode(model_path: str, corpus: Corpus, cfg: SearchConfig, threads: int) -> dict:
    torch.set_num_threads(threads)
    model = load_model(model_path)
    return timed_translate(model, [torch.tensor(ids) for ids in corpus.test_ids], cfg)[1]


def export(model_path: str, corpus: Corpus, out_dir: Path, quantization: str) -> dict:
    size = export_ctranslate2(model_path, str(corpus.spm), str(corpus.spm), str(out_dir), quantization)
    return {"megabytes": size / 1e6, "fp32_megabytes": Path(model_path).stat().st_size / 1e6}


def decode_ctranslate2(model_dir: Path, corpus: Corpus, cfg: SearchConfig, threads: int) -> dict:
    translator = load_translator(str(model_dir), threads)
    started = time.perf_counter()
    hyps = ctranslate2_translate(translator, corpus.test_pieces, cfg)
    return speed(hyps, time.perf_counter() - started)
