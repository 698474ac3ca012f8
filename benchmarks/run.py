"""Every benchmark in one run, printing each figure and each ratio against its target.

    python -m benchmarks --data ../shared/data        (or: make bench)

Shapes (the issue's): a 3+3-layer student (d_model 256, FFN 1024, 4 heads) and a 6+6-layer
teacher (512, 2048, 8 heads), post-norm, tied embeddings, dropout 0.3, on the 15k-pair IWSLT'14
sample with a joint SentencePiece BPE of 8,000, --max-tokens 4096, fp32, on `--threads` threads.
fairseq runs the same data, vocabulary, shapes, batch size and schedule from its own virtualenv.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from pathlib import Path

import torch

from a2d.config import SearchConfig
from benchmarks import corpus as corpus_lib
from benchmarks import fairseq, hardware, ours, pipeline
from benchmarks.measure import run_measured, thread_env, throughput

HERE = Path(__file__).resolve().parent
STUDENT = {"encoder_layers": 3, "decoder_layers": 3, "d_model": 256, "heads": 4, "ffn": 1024, "dropout": 0.3,
           "attention_dropout": 0.0, "activation_dropout": 0.0, "max_positions": 1024, "share_all_embeddings": True}
TEACHER = {**STUDENT, "encoder_layers": 6, "decoder_layers": 6, "d_model": 512, "heads": 8, "ffn": 2048}
# A short warm-up so that the models decode like lightly trained ones rather than at random.
RECIPE = {"max_tokens": 4096, "lr": 1e-3, "warmup_steps": 100, "weight_decay": 1e-4, "zero_stage": 0, "seed": 1}
A2D = {"name": "a2d"}  # faithful-described, alpha 0.5, beta 1, gamma 0.9
# Every decoder writes exactly this many tokens (then EOS) for every sentence: the same work whatever
# the models prefer (these briefly trained ones end at very different lengths), and one length rule
# all three apply alike (fairseq's a * length + b takes the batch's padded length where a2d takes
# each sentence's, and CTranslate2 has one cap per call).
MAX_OUTPUT = 64
# The targets (issue 14): ratios against fairseq on the same work, MFU, and A2D's costs.
TARGETS = {"student training": 1.3, "teacher training": 1.3, "student MFU": 0.65, "teacher MFU": 0.75,
           "A2D peak RSS": 1.3, "A2D step": 1.10, "beam 5": 1.6, "beam 1": 2.0, "CTranslate2 int8 beam 5": 3.0,
           "no-op re-run": 10.0}


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data"), help="the offline data mirror")
    p.add_argument("--work", default=str(HERE / "work"), help="scratch directory (the fairseq venv lives here too)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--updates", type=int, default=120, help="updates of each student run (one epoch is ~130)")
    p.add_argument("--teacher-updates", type=int, default=30)
    p.add_argument("--skip", type=int, default=5, help="first updates of each run left out of its timing")
    p.add_argument("--test-sentences", type=int, default=500, help="first lines of the IWSLT'14 test set decoded")
    p.add_argument("--overhead-batches", type=int, default=8)
    p.add_argument("--overhead-rounds", type=int, default=3)
    p.add_argument("--no-fairseq", action="store_true", help="a2d alone (no ratios against fairseq)")
    return p.parse_args(argv)


class Report:
    """Collects figures; prints each as it comes and a table of ratios at the end."""

    def __init__(self):
        self.figures, self.ratios = {}, []

    def figure(self, name: str, value, unit: str = ""):
        self.figures[name] = value
        shown = f"{value:,.3f}" if isinstance(value, float) else str(value)
        print(f"  {name}: {shown} {unit}", flush=True)

    def ratio(self, name: str, value: float, target: float, higher_is_better: bool = True):
        met = value >= target if higher_is_better else value <= target
        self.ratios.append({"name": name, "value": value, "target": target, "higher_is_better": higher_is_better,
                            "met": met})

    def table(self) -> str:
        lines = [f"{'ratio':<58} {'measured':>9} {'target':>9}  result"]
        for r in self.ratios:
            sign = ">=" if r["higher_is_better"] else "<="
            verdict = "met" if r["met"] else f"MISSED by {abs(r['value'] / r['target'] - 1) * 100:.0f}%"
            lines.append(f"{r['name']:<58} {r['value']:>9.3f} {sign + format(r['target'], 'g'):>9}  {verdict}")
        return "\n".join(lines)


def section(title: str):
    print(f"\n== {title}", flush=True)


def main(argv=None):
    args = parse_args(argv)
    work, report, started = Path(args.work), Report(), time.perf_counter()
    work.mkdir(parents=True, exist_ok=True)
    print(f"a2d benchmarks on {platform.processor() or platform.machine()}, {args.threads} threads; work dir {work}")

    section("hardware")
    peak = hardware.matmul_peak(args.threads)
    report.figure("fp32 matmul 2048x2048 (GFLOP/s)", peak)

    fairseq_bin = None if args.no_fairseq else fairseq.ensure_venv(work / "fairseq-venv")
    corpus = corpus_lib.prepare(Path(args.data), work / f"corpus-test{args.test_sentences}", 8000, valid_sentences=100,
                                test_sentences=args.test_sentences, fairseq_bin=fairseq_bin)

    section("training throughput (target tokens/s, peak RSS)")
    runs = {}
    for name, shape, updates in (("student_nokd", STUDENT, args.updates), ("teacher", TEACHER, args.teacher_updates)):
        runs[name] = ours.train(name, shape, {"name": "none"}, RECIPE, updates, args.skip, corpus, work,
                                args.threads)
        report.figure(f"a2d {name} tokens/s", runs[name]["tokens_per_s"])
        report.figure(f"a2d {name} peak RSS (GiB)", runs[name]["peak_rss_gib"])
        mfu = hardware.training_gflops(runs[name]["parameters"], runs[name]["tokens_per_s"]) / peak
        report.figure(f"a2d {name} MFU", mfu)
        who = "student" if name == "student_nokd" else "teacher"
        report.ratio(f"{who} training MFU (fp32)", mfu, TARGETS[f"{who} MFU"])
    # Mixed precision is not the same work as fp32 (no target): shown for what this CPU's bf16 units give,
    # where it has them (without, bf16 products are emulated: 0.8 against 91 GFLOP/s
    # for fp32 on an AVX2-only EPYC).
    bf16_peak = hardware.matmul_peak(args.threads, size=1024, dtype=torch.bfloat16)
    report.figure("bf16 matmul 1024x1024 (GFLOP/s)", bf16_peak)
    native_bf16 = bf16_peak > peak / 2
    if not native_bf16:
        print("  bf16 training skipped: this CPU has no native bf16 matrix products", flush=True)
    for name, shape, updates in (("student_nokd", STUDENT, args.updates // 2), ("teacher", TEACHER, args.teacher_updates)):
        if not native_bf16:
            break
        bf16 = ours.train(f"{name}_bf16", shape, {"name": "none"}, {**RECIPE, "precision": "bf16", "zero_stage": 1},
                          updates, args.skip, corpus, work, args.threads)
        report.figure(f"a2d {name} bf16 (ZeRO-1) tokens/s", bf16["tokens_per_s"])
        runs[f"{name}_bf16"] = bf16
    runs["student_a2d"] = ours.train("student_a2d", STUDENT, A2D, RECIPE, args.updates, args.skip, corpus, work,
                                     args.threads, teacher=Path(runs["teacher"]["model"]))
    report.figure("a2d student_a2d tokens/s", runs["student_a2d"]["tokens_per_s"])
    report.figure("a2d student_a2d peak RSS (GiB)", runs["student_a2d"]["peak_rss_gib"])
    report.ratio("A2D peak RSS / no-KD peak RSS", runs["student_a2d"]["peak_rss_gib"] / runs["student_nokd"]["peak_rss_gib"],
                 TARGETS["A2D peak RSS"], higher_is_better=False)

    fairseq_runs = {}
    if fairseq_bin is not None:
        for name, shape, updates in (("student_nokd", STUDENT, args.updates), ("teacher", TEACHER, args.teacher_updates)):
            save_dir = work / "fairseq" / name
            shutil.rmtree(save_dir, ignore_errors=True)  # fairseq would resume an earlier run's checkpoint
            done = run_measured(fairseq.train_command(fairseq_bin, corpus.fairseq_data, save_dir, shape, RECIPE, updates),
                                thread_env(args.threads), work / f"fairseq_{name}.log")
            fairseq_runs[name] = {**throughput(fairseq.update_rows(done), args.skip),
                                  "peak_rss_gib": done.peak_rss_gib, "checkpoint": str(save_dir / "checkpoint_last.pt")}
            report.figure(f"fairseq {name} tokens/s", fairseq_runs[name]["tokens_per_s"])
            report.figure(f"fairseq {name} peak RSS (GiB)", fairseq_runs[name]["peak_rss_gib"])
            report.figure(f"fairseq {name} MFU", hardware.training_gflops(
                runs[name]["parameters"], fairseq_runs[name]["tokens_per_s"]) / peak)
            who = "student" if name == "student_nokd" else "teacher"
            report.ratio(f"{name} training tokens/s: a2d / fairseq",
                         runs[name]["tokens_per_s"] / fairseq_runs[name]["tokens_per_s"], TARGETS[f"{who} training"])

    section("A2D overhead (seconds per batch, same batches, one process)")
    overhead = ours.a2d_overhead(corpus, runs["teacher"]["model"], STUDENT, RECIPE, args.threads,
                                 args.overhead_batches, args.overhead_rounds)
    for key in ("nokd_step_s", "teacher_forward_s", "teacher_forward_with_maps_s", "a2d_step_s"):
        report.figure(key, overhead[key], "s")
    report.ratio("A2D step / (no-KD step + teacher forward)", overhead["ratio"], TARGETS["A2D step"],
                 higher_is_better=False)

    section(f"decoding ({args.test_sentences} IWSLT'14 test sentences, batch 128, {MAX_OUTPUT} tokens each)")
    ct2_dir = work / "ours" / "student_nokd.ct2"
    size = ours.export(runs["student_nokd"]["model"], corpus, ct2_dir, "int8")
    report.figure("student fp32 weights (MB)", size["fp32_megabytes"])
    report.figure("student CTranslate2 int8 (MB)", size["megabytes"])
    decoding = {}
    for beam in (5, 1):
        cfg = SearchConfig(beam_size=beam, length_penalty=1.0, max_len_a=0, max_len_b=MAX_OUTPUT, batch_size=128,
                           min_len=MAX_OUTPUT)
        decoding[f"a2d beam{beam}"] = ours.decode(runs["student_nokd"]["model"], corpus, cfg, args.threads)
        decoding[f"ctranslate2 int8 beam{beam}"] = ours.decode_ctranslate2(ct2_dir, corpus, cfg, args.threads)
        if fairseq_bin is not None:
            decoding[f"fairseq beam{beam}"] = fairseq.generate(
                fairseq_bin, corpus.fairseq_data, Path(fairseq_runs["student_nokd"]["checkpoint"]), beam, 128,
                0, MAX_OUTPUT, MAX_OUTPUT, args.threads, work / f"fairseq_generate_beam{beam}.log")
        for who in ("a2d", "ctranslate2 int8", "fairseq"):
            speed = decoding.get(f"{who} beam{beam}")
            if speed:
                report.figure(f"{who} beam {beam}", f"{speed['sentences_per_s']:.2f} sentences/s, "
                              f"{speed['tokens_per_s']:.0f} tokens/s ({speed['generated_tokens']} tokens)")
        if fairseq_bin is not None:
            fs = decoding[f"fairseq beam{beam}"]["tokens_per_s"]
            report.ratio(f"beam {beam} generated tokens/s: a2d / fairseq", decoding[f"a2d beam{beam}"]["tokens_per_s"] / fs,
                         TARGETS[f"beam {beam}"])
            ct2 = decoding[f"ctranslate2 int8 beam{beam}"]["tokens_per_s"] / fs
            if f"CTranslate2 int8 beam {beam}" in TARGETS:
                report.ratio(f"beam {beam} generated tokens/s: CTranslate2 int8 / fairseq", ct2,
                             TARGETS[f"CTranslate2 int8 beam {beam}"])
            else:
                report.figure(f"beam {beam} CTranslate2 int8 / fairseq", ct2)

    section("pipeline overhead")
    noop = pipeline.noop_rerun(work / "pipeline")
    report.figure(f"no-op snakemake re-run of the finished {noop['experiment']} experiment (s)", noop["seconds"])
    report.ratio("no-op re-run seconds", noop["seconds"], TARGETS["no-op re-run"], higher_is_better=False)

    section(f"summary ({(time.perf_counter() - started) / 60:.1f} min)")
    print(report.table())
    results = {"args": vars(args), "python": sys.version, "figures": report.figures, "ratios": report.ratios,
               "training": runs, "fairseq_training": fairseq_runs, "overhead": overhead, "decoding": decoding}
    (work / "results.json").write_text(json.dumps(results, indent=1, default=str))
    print(f"\nall figures: {work / 'results.json'}")
