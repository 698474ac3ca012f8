"""fairseq 0.12, the reference toolkit: its own virtualenv (never a dependency of a2d), data, training, decoding."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from benchmarks.measure import Finished, run_measured, thread_env

# Order matters as for a2d's own venv: torch first (the local CPU wheel), then fairseq's build
# requirements, then fairseq without build isolation so that it compiles against this torch.
PINS = [["pip==25.3"], ["torch==2.13.0"], ["numpy==1.26.4", "cython==3.0.12", "setuptools==84.2.1", "wheel==0.48.0"],
        ["--no-build-isolation", "fairseq-fixed==0.12.3.1"]]
CONSTRAINTS = Path(__file__).with_name("fairseq-constraints.txt")  # fairseq's own dependencies, frozen


def ensure_venv(venv: Path) -> Path:
    """The fairseq virtualenv's bin directory, created on first use (about 3 minutes)."""
    stamp = venv / ".installed"
    if stamp.exists() and stamp.read_text() == json.dumps(PINS) + CONSTRAINTS.read_text():
        return venv / "bin"
    print(f"setting up fairseq in {venv} (once)", file=sys.stderr, flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    for group in PINS:
        subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", *group, "-c", str(CONSTRAINTS)],
                       check=True)
    stamp.write_text(json.dumps(PINS) + CONSTRAINTS.read_text())
    return venv / "bin"


def write_dictionary(pieces: list[str], path: Path) -> None:
    """fairseq's dictionary from ours: fairseq puts its four specials first, then these, so the
    vocabulary size is the same."""
    path.write_text("".join(f"{piece} 1\n" for piece in pieces))


def preprocess(bin_dir: Path, text_dir: Path, dictionary: Path, dest: Path, src: str, tgt: str, log_path: Path) -> None:
    """Binarise text_dir/{train,valid,test}.{src,tgt} (subword pieces) with our vocabulary."""
    if (dest / "preprocess.log").exists():
        return
    run_measured([str(bin_dir / "fairseq-preprocess"), "--source-lang", src, "--target-lang", tgt,
                  "--srcdict", str(dictionary), "--joined-dictionary", "--destdir", str(dest), "--workers", "2",
                  *(arg for split in ("train", "valid", "test") for arg in (f"--{split}pref", str(text_dir / split)))],
                 thread_env(2), log_path)


def train_command(bin_dir: Path, data: Path, save_dir: Path, shape: dict, recipe: dict, updates: int) -> list[str]:
    """fairseq-train with a2d's shapes and recipe (post-norm, tied embeddings, label smoothing 0.1)."""
    args = [str(bin_dir / "fairseq-train"), str(data), "--arch", "transformer", "--share-all-embeddings",
            "--cpu", "--seed", "1", "--num-workers", "0", "--log-format", "json", "--log-interval", "1",
            "--disable-validation", "--save-dir", str(save_dir), "--no-epoch-checkpoints",
            "--max-update", str(updates), "--max-tokens", str(recipe["max_tokens"]),
            "--required-batch-size-multiple", "1", "--max-source-positions", "1024", "--max-target-positions", "1024",
            "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1",
            "--optimizer", "adam", "--adam-betas", "(0.9, 0.98)", "--adam-eps", "1e-8",
            "--weight-decay", str(recipe["weight_decay"]), "--lr", str(recipe["lr"]),
            "--lr-scheduler", "inverse_sqrt", "--warmup-updates", str(recipe["warmup_steps"]),
            "--warmup-init-lr", "1e-7", "--dropout", str(shape["dropout"]), "--attention-dropout", "0",
            "--activation-dropout", str(shape["activation_dropout"])]
    for side in ("encoder", "decoder"):
        args += [f"--{side}-layers", str(shape[f"{side}_layers"]), f"--{side}-embed-dim", str(shape["d_model"]),
                 f"--{side}-ffn-embed-dim", str(shape["ffn"]), f"--{side}-attention-heads", str(shape["heads"])]
    return args


def update_rows(finished: Finished) -> list[tuple[int, float]]:
    """(target tokens, seconds) per update from `--log-format json --log-interval 1` lines; an
    update's seconds run from the previous update's line to its own. Updates that start an epoch
    are left out (they carry the epoch's set-up)."""
    rows, previous = [], None
    for at, line in finished.lines:
        if "train_inner" not in line or "{" not in line:
            continue
        record = json.loads(line[line.index("{"):])
        if previous is not None and record["epoch"] == previous[1]:
            rows.append((float(record["wpb"]), at - previous[0]))
        previous = (at, record["epoch"])
    return rows


def generate(bin_dir: Path, data: Path, checkpoint: Path, beam: int, batch_size: int, max_len_a: float,
             max_len_b: int, min_len: int, threads: int, log_path: Path) -> dict:
    """fairseq-generate's own speed line (model loading left out), on the binarised test split."""
    # fairseq 0.12 pickles its checkpoints; torch >= 2.6 refuses them under weights_only=True.
    env = thread_env(threads, TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD="1")
    done = run_measured([str(bin_dir / "fairseq-generate"), str(data), "--path", str(checkpoint), "--cpu",
                         "--gen-subset", "test", "--beam", str(beam), "--batch-size", str(batch_size),
                         "--max-len-a", str(max_len_a), "--max-len-b", str(max_len_b), "--min-len", str(min_len),
                         "--lenpen", "1",
                         "--required-batch-size-multiple", "1", "--quiet"], env, log_path)
    text = "\n".join(line for _, line in done.lines)
    match = re.search(r"Translated ([\d,]+) sentences \(([\d,]+) tokens\) in ([\d.]+)s \(([\d.]+) sentences/s, "
                      r"([\d.]+) tokens/s\)", text)
    if match is None:
        raise RuntimeError(f"no speed line in fairseq-generate's output ({log_path})")
    sentences, tokens = (int(match.group(i).replace(",", "")) for i in (1, 2))
    return {"sentences": sentences, "generated_tokens": tokens, "seconds": float(match.group(3)),
            "sentences_per_s": float(match.group(4)), "tokens_per_s": float(match.group(5))}
