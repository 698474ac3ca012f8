"""The GPU check: `make gpu-check` on a machine with a CUDA GPU (python -m benchmarks.gpu).

1. the tiny DAG (tests/configs/tiny.yaml) through the pipeline's own rules on CUDA in bf16
   (DeepSpeed ZeRO-1), the results table included;
2. training tokens/s and MFU, against a bf16 matmul measured in the same run, for the benchmark's
   student (3+3, d256) and teacher (6+6, d512) shapes, without KD and (student) with A2D;
3. decoding generated tokens/s: a2d's beam search (beam 5, greedy) and the CTranslate2 export;
4. one JSON (--out) with every figure, each printed as it is measured.

The models are randomly initialised and the batches random tokens of the benchmark's size
(--max-tokens target tokens of --length tokens per sentence): speed does not depend on what the
weights have learnt, and the decoders write exactly --output-tokens tokens per sentence, as in
`make bench`. A step that fails is recorded with its error and the check goes on; the exit status
says whether any failed. `--device cpu --quick` runs every step at tiny sizes (the test suite does).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

from a2d.config import MethodConfig, ModelConfig, SearchConfig
from a2d.data import Batch
from a2d.distill import DistillationModule, FrozenTeacher
from a2d.model import BOS_ID, EOS_ID, PAD_ID, Transformer, count_parameters
from a2d.search import timed_translate
from benchmarks import hardware
from benchmarks.run import STUDENT, TEACHER

ROOT = Path(__file__).resolve().parent.parent
QUICK = {"encoder_layers": 1, "decoder_layers": 1, "d_model": 32, "heads": 2, "ffn": 64}


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="gpu-check.json")
    p.add_argument("--device", default="cuda")
    p.add_argument("--quick", action="store_true", help="tiny shapes and few steps (the CPU test)")
    p.add_argument("--pipeline", choices=["run", "dry-run", "skip"], default="run")
    p.add_argument("--steps", type=int, default=30, help="timed training steps per shape (after 5 warm-up)")
    p.add_argument("--max-tokens", type=int, default=4096)
    p.add_argument("--length", type=int, default=32)
    p.add_argument("--vocab", type=int, default=8000)
    p.add_argument("--sentences", type=int, default=512, help="sentences decoded")
    p.add_argument("--output-tokens", type=int, default=64)
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.max_tokens, args.length, args.vocab, args.sentences, args.output_tokens = 2, 64, 8, 64, 8, 5
    return args


class Check:
    """Runs the steps, keeps every figure (or the step's error) and writes them at the end."""

    def __init__(self, out: Path):
        self.out, self.figures, self.failed = out, {}, []

    def step(self, name: str, work, *args):
        print(f"\n== {name}", flush=True)
        started = time.perf_counter()
        try:
            figures = work(*args)
        except Exception as err:  # the check goes on: one broken part must not hide the others' figures
            traceback.print_exc()
            figures = {"error": f"{type(err).__name__}: {err}"}
            self.failed.append(name)
        figures["step_seconds"] = round(time.perf_counter() - started, 1)
        for key, value in figures.items():
            print(f"  {key}: {value}", flush=True)
        self.figures[name] = figures
        self.out.write_text(json.dumps(self.figures, indent=1, default=str))


def pipeline(mode: str, device: str) -> dict:
    """The tiny DAG through Snakemake in a scratch directory, with bf16 training where CUDA runs it."""
    work = Path(tempfile.mkdtemp(prefix="a2d-gpu-check-"))
    configs = [ROOT / "tests" / "configs" / "tiny.yaml"] + ([ROOT / "benchmarks" / "gpu.yaml"] if device == "cuda" else [])
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--directory", str(work),
               "--cores", str(os.cpu_count()), "--scheduler", "greedy", "--printshellcmds",
               *(["--dry-run"] if mode == "dry-run" else []), "--configfile", *map(str, configs)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"snakemake failed ({done.returncode}):\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    figures = {"workdir": str(work), "command": " ".join(command)}
    table = work / "results" / "tiny" / "tables" / "results.md"
    if table.exists():
        figures["table"] = table.read_text()
    return figures


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def random_batch(args, device: str, seed: int) -> Batch:
    g = torch.Generator().manual_seed(seed)
    sentences = max(1, args.max_tokens // args.length)
    src = torch.randint(4, args.vocab, (sentences, args.length), generator=g)
    target = torch.randint(4, args.vocab, (sentences, args.length), generator=g)
    src[:, -1] = target[:, -1] = EOS_ID
    prev = torch.cat([torch.full((sentences, 1), BOS_ID), target[:, :-1]], dim=1)
    return Batch(src=src, prev=prev, target=target, mask=target != PAD_ID).to(device)


def significant(figure: float) -> float:
    """3 significant digits, not decimals: a tiny model on a loaded CPU has an MFU below 0.0005."""
    return float(f"{figure:.3g}")


def training(args, shape: dict, method: dict, peak_gflops: float) -> dict:
    """Target tokens/s of plain bf16 (CUDA) or fp32 (CPU) steps: the module, AdamW, no engine."""
    device, dtype = args.device, torch.bfloat16 if args.device == "cuda" else torch.float32
    torch.manual_seed(0)
    method_cfg = MethodConfig(**method)
    teacher_cfg = ModelConfig(vocab_size=args.vocab, **(QUICK if args.quick else TEACHER))
    teacher = FrozenTeacher(Transformer(teacher_cfg).to(device, dtype), method_cfg)
    student = Transformer(ModelConfig(vocab_size=args.vocab, **shape))
    module = DistillationModule(student, method_cfg, teacher_cfg if method_cfg.needs_teacher else None)
    module = module.to(device, dtype).train()
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-4, fused=True)
    batches = [random_batch(args, device, seed) for seed in range(4)]
    seconds = tokens = 0
    for step in range(5 + args.steps):
        batch = batches[step % len(batches)]
        synchronize(device)
        started = time.perf_counter()
        loss, _ = module(batch, teacher if method_cfg.needs_teacher else None, 1, 1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        synchronize(device)
        if step >= 5:
            seconds, tokens = seconds + time.perf_counter() - started, tokens + batch.target_tokens
    tokens_per_s, parameters = tokens / seconds, count_parameters(student)
    return {"parameters": parameters, "target_tokens_per_s": round(tokens_per_s),
            "mfu": significant(hardware.training_gflops(parameters, tokens_per_s) / peak_gflops),
            "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2 ** 30, 2) if device == "cuda" else None}


def decoding(args, beam: int) -> dict:
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=args.vocab, **(QUICK if args.quick else STUDENT))).to(args.device).eval()
    g = torch.Generator().manual_seed(1)
    sources = [torch.cat([torch.randint(4, args.vocab, (args.length - 1,), generator=g), torch.tensor([EOS_ID])])
               for _ in range(args.sentences)]
    cfg = SearchConfig(beam_size=beam, max_len_a=0, max_len_b=args.output_tokens, min_len=args.output_tokens,
                       batch_size=128)
    _, speed = timed_translate(model, sources, cfg)
    return speed


def ctranslate2_decoding(args, beam: int) -> dict:
    """The same model exported to CTranslate2 (int8 weights, bf16/fp32 compute), on the same device."""
    import ctranslate2

    from a2d.export import ctranslate2_translate, write_ctranslate2
    from a2d.search import speed

    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=args.vocab, **(QUICK if args.quick else STUDENT)))
    pieces = ["<pad>", "<unk>", "<s>", "</s>"] + [f"p{i}" for i in range(4, args.vocab)]
    out = Path(tempfile.mkdtemp(prefix="a2d-gpu-check-ct2-")) / "model"
    write_ctranslate2(model, pieces, pieces, str(out), "int8")
    compute = "int8_bfloat16" if args.device == "cuda" else "int8"
    translator = ctranslate2.Translator(str(out), device=args.device, compute_type=compute)
    g = torch.Generator().manual_seed(1)
    sources = [[pieces[i] for i in torch.randint(4, args.vocab, (args.length - 1,), generator=g).tolist()]
               for _ in range(args.sentences)]
    cfg = SearchConfig(beam_size=beam, max_len_a=0, max_len_b=args.output_tokens, min_len=args.output_tokens,
                       batch_size=128)
    started = time.perf_counter()
    hyps = ctranslate2_translate(translator, sources, cfg)
    return {**speed(hyps, time.perf_counter() - started), "compute_type": compute,
            "ctranslate2": ctranslate2.__version__}


def machine(args) -> dict:
    figures = {"torch": torch.__version__, "device": args.device}
    if args.device == "cuda":
        figures.update(gpu=torch.cuda.get_device_name(), cuda=torch.version.cuda)
    peak = hardware.matmul_peak(torch.get_num_threads(), size=256 if args.quick else 8192,
                                dtype=torch.bfloat16 if args.device == "cuda" else torch.float32, device=args.device)
    figures["matmul_gflops"] = significant(peak)
    return figures


def main(argv=None):
    args = parse_args(argv)
    check = Check(Path(args.out))
    check.step("machine", machine, args)
    peak = check.figures["machine"].get("matmul_gflops") or float("nan")
    if args.pipeline != "skip":
        check.step("pipeline (tiny DAG)", pipeline, args.pipeline, args.device)
    student = QUICK if args.quick else STUDENT
    check.step("training: student, no KD", training, args, student, {"name": "none"}, peak)
    check.step("training: student, A2D", training, args, student, {"name": "a2d"}, peak)
    check.step("training: teacher", training, args, QUICK if args.quick else TEACHER, {"name": "none"}, peak)
    for beam in (5, 1):
        check.step(f"decoding: a2d beam {beam}", decoding, args, beam)
        check.step(f"decoding: CTranslate2 beam {beam}", ctranslate2_decoding, args, beam)
    print(f"\nall figures: {args.out}" + (f"; FAILED: {', '.join(check.failed)}" if check.failed else ""))
    sys.exit(1 if check.failed else 0)


if __name__ == "__main__":
    main()
