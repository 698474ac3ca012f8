"""From fetched text to the corpus a model trains on: Moses tokenisation and lowercasing where the
recipe asks for them (IWSLT'14), then, for training data only, cleaning that says what it removed
and why. Evaluation sets are never filtered: every test line gets a translation."""

from __future__ import annotations

import random
import sys
from collections import Counter
from dataclasses import dataclass, field

from a2d.config import Cleaning, Preprocess
from a2d.files import InputError, read_parallel, write_json, write_lines


@dataclass
class CleaningReport:
    input_pairs: int = 0
    removed: Counter = field(default_factory=Counter)  # reason -> pairs
    # evaluation set -> fractions of its source sentences and of its pairs found in the raw training data
    overlap: dict = field(default_factory=dict)
    blank_references: dict = field(default_factory=dict)  # evaluation set -> blank reference lines (if any)
    held_out: dict = field(default_factory=dict)  # split carved out of the training data -> pairs

    @property
    def kept(self) -> int:
        return self.input_pairs - sum(self.removed.values())

    def to_dict(self) -> dict:
        optional = {key: value for key, value in (("blank_references", self.blank_references),
                                                  ("held_out", self.held_out)) if value}
        return {"input_pairs": self.input_pairs, "kept_pairs": self.kept, "removed": dict(self.removed),
                "eval_overlap": self.overlap, **optional}


def preprocess_lines(lines: list[str], lang: str, pre: Preprocess, pretokenized: bool) -> list[str]:
    if pre.moses and not pretokenized:
        from sacremoses import MosesTokenizer

        tokenizer = MosesTokenizer(lang=lang)
        lines = [tokenizer.tokenize(line, return_str=True) for line in lines]
    if pre.lowercase:
        lines = [line.lower() for line in lines]
    return lines


def read_datasets(sources: list[str], targets: list[str], spec: dict,
                  evaluation: bool = False) -> tuple[list[str], list[str]]:
    """Concatenate the split's datasets, each checked to align line by line (errors name the
    registry dataset beside its fetched copy) and, for an evaluation set, to have every reference;
    then preprocess."""
    pre, langs = Preprocess(**spec["preprocess"]), spec["languages"]
    src_all, tgt_all = [], []
    for name, src_path, tgt_path, done in zip(spec["datasets"], sources, targets, spec["pretokenized"], strict=True):
        try:
            src, tgt = read_parallel(src_path, tgt_path)
        except InputError as err:
            raise InputError(f"dataset {name}: {err}") from None
        src, tgt = src[:spec.get("max_lines")], tgt[:spec.get("max_lines")]  # a smoke run's slice
        if evaluation and not spec.get("allow_blank_references"):
            check_references(tgt, f"dataset {name} ({tgt_path})")
        src_all += preprocess_lines(src, langs[0], pre, done)
        tgt_all += preprocess_lines(tgt, langs[1], pre, done)
    return src_all, tgt_all


def check_references(references: list[str], where: str) -> None:
    """An evaluation set needs a reference on every line: a blank one makes any output wrong there."""
    if blank := [number for number, line in enumerate(references, start=1) if not line]:
        lines = ", ".join(map(str, blank[:10])) + (", ..." if len(blank) > 10 else "")
        raise InputError(f"{where}: {len(blank)} of {len(references)} references are blank (line {lines}); fix the "
                         "data, or set data.allow_blank_references: true to score it anyway (warned under the table)")


def removal_reason(src: str, tgt: str, cfg: Cleaning) -> str | None:
    n_src, n_tgt = len(src.split()), len(tgt.split())
    if n_src == 0 or n_tgt == 0:
        return "empty"
    if max(n_src, n_tgt) > cfg.max_words:
        return "too_long"
    if max(n_src, n_tgt) / min(n_src, n_tgt) > cfg.max_ratio:
        return "length_ratio"
    return None


def clean(src: list[str], tgt: list[str], cfg: Cleaning,
          eval_sets: dict[str, tuple[list[str], list[str]]]) -> tuple[list[str], list[str], CleaningReport]:
    """Filter training pairs; measure how much of each evaluation set the training data contains."""
    report = CleaningReport(input_pairs=len(src))
    train_sources, train_pairs = set(src), set(zip(src, tgt))
    for name, (eval_src, eval_tgt) in eval_sets.items():
        sources = sum(s in train_sources for s in eval_src)
        if blank := sum(not t for t in eval_tgt):
            report.blank_references[name] = blank
            print(f"WARNING: {blank} of {len(eval_tgt)} references of evaluation set {name!r} are blank",
                  file=sys.stderr)
        pairs = sum(pair in train_pairs for pair in zip(eval_src, eval_tgt))
        report.overlap[name] = {"sources": round(sources / len(eval_src), 4), "pairs": round(pairs / len(eval_src), 4)}
        if report.overlap[name]["sources"] > cfg.overlap_warning:
            action = ("training pairs with those sources are removed (cleaning.decontaminate)" if cfg.decontaminate
                      else "scores on it measure memorisation, not translation")
            print(f"WARNING: {sources} of {len(eval_src)} source sentences of evaluation set {name!r} "
                  f"({100 * sources / len(eval_src):.1f}%; {pairs} whole pairs) are in the training data: {action}",
                  file=sys.stderr)
    eval_sources = {s for eval_src, _ in eval_sets.values() for s in eval_src} if cfg.decontaminate else set()
    kept_src, kept_tgt, seen = [], [], set()
    for s, t in zip(src, tgt):
        reason = removal_reason(s, t, cfg)
        if reason is None and s in eval_sources:
            reason = "in_eval_set"
        if reason is None and cfg.dedup:
            reason = "duplicate" if (s, t) in seen else None
            seen.add((s, t))
        if reason:
            report.removed[reason] += 1
        else:
            kept_src.append(s)
            kept_tgt.append(t)
    return kept_src, kept_tgt, report


def hold_out(src: list[str], tgt: list[str], sizes: list[tuple[str, int]], seed: int,
             where: str) -> tuple[list[str], list[str], dict[str, tuple[list[str], list[str]]]]:
    """Carve evaluation splits out of (cleaned) training pairs: a seeded draw among the pairs whose
    source occurs once, so no held-out source stays in training; each split keeps corpus order."""
    if not sizes:
        return src, tgt, {}
    counts = Counter(src)
    candidates = [i for i, s in enumerate(src) if counts[s] == 1]
    wanted = sum(size for _, size in sizes)
    if wanted > len(candidates):
        raise InputError(f"{where}: held_out asks for {wanted} pairs, but only {len(candidates)} of the "
                         f"{len(src)} cleaned training pairs have a source that occurs once")
    drawn = random.Random(seed).sample(candidates, wanted)
    splits, start = {}, 0
    for name, size in sizes:
        chosen = sorted(drawn[start:start + size])
        splits[name] = ([src[i] for i in chosen], [tgt[i] for i in chosen])
        start += size
    taken = set(drawn)
    kept = [i for i in range(len(src)) if i not in taken]
    return [src[i] for i in kept], [tgt[i] for i in kept], splits


def datasets_named(spec: dict, paths: list[str]) -> str:
    return f"dataset(s) {', '.join(spec['datasets'])} ({', '.join(paths)})"


def prepare(spec: dict, sources: list[str], targets: list[str], out_src: str, out_tgt: str,
            report_path: str | None = None, eval_sources: list[str] = (), eval_targets: list[str] = (),
            eval_names: list[str] = (), held_out_paths: list[tuple[str, str]] = ()) -> None:
    """One split of an experiment's corpus. `spec` is the split's resolved data config (a rule param).
    For the training data: cleaned, then the `held_out` splits drawn from it (written to
    `held_out_paths`, (source, target) per split in the spec's order), then the report."""
    src, tgt = read_datasets(sources, targets, spec, evaluation=report_path is None)
    if report_path is None:
        write_lines(out_src, src)
        write_lines(out_tgt, tgt)
        return
    evals = {name: read_parallel(s, t) for name, s, t in zip(eval_names, eval_sources, eval_targets, strict=True)}
    src, tgt, report = clean(src, tgt, Cleaning(**spec["cleaning"]), evals)
    sizes = [tuple(pair) for pair in spec.get("held_out", [])]
    src, tgt, splits = hold_out(src, tgt, sizes, spec.get("held_out_seed", 1), datasets_named(spec, sources))
    if sizes:
        report.removed["held_out"] = sum(size for _, size in sizes)
        report.held_out = dict(sizes)
    if not src:
        raise InputError(f"{datasets_named(spec, sources + targets)}: cleaning removed all {report.input_pairs} "
                         f"training pairs: {dict(report.removed)}; see data.cleaning")
    print(f"cleaning kept {report.kept} of {report.input_pairs} pairs; removed {dict(report.removed)}", file=sys.stderr)
    for (name, _), (path_src, path_tgt) in zip(sizes, held_out_paths, strict=True):
        write_lines(path_src, splits[name][0])
        write_lines(path_tgt, splits[name][1])
    write_lines(out_src, src)
    write_lines(out_tgt, tgt)
    write_json(report_path, report.to_dict())
