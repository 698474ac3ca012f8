"""From fetched text to the corpus a model trains on: Moses tokenisation and lowercasing where the
recipe asks for them (IWSLT'14), then, for training data only, cleaning that says what it removed
and why. Evaluation sets are never filtered: every test line gets a translation."""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass, field

from a2d.files import InputError, read_parallel, write_json, write_lines


@dataclass(frozen=True)
class Preprocess:
    moses: bool = False  # Moses-tokenise (sacremoses, with its default escaping, like tokenizer.perl)
    lowercase: bool = False


@dataclass(frozen=True)
class Cleaning:
    max_words: int = 250  # per side, whitespace words after preprocessing
    max_ratio: float = 3.0  # longer side / shorter side, in words
    dedup: bool = True  # drop exact duplicate pairs
    decontaminate: bool = True  # drop training pairs whose source is in an evaluation set
    overlap_warning: float = 0.05  # warn when more of an evaluation set than this is inside the training data


@dataclass
class CleaningReport:
    input_pairs: int = 0
    removed: Counter = field(default_factory=Counter)  # reason -> pairs
    # evaluation set -> fractions of its source sentences and of its pairs found in the raw training data
    overlap: dict = field(default_factory=dict)
    blank_references: dict = field(default_factory=dict)  # evaluation set -> blank reference lines (if any)

    @property
    def kept(self) -> int:
        return self.input_pairs - sum(self.removed.values())

    def to_dict(self) -> dict:
        blank = {"blank_references": self.blank_references} if self.blank_references else {}
        return {"input_pairs": self.input_pairs, "kept_pairs": self.kept, "removed": dict(self.removed),
                "eval_overlap": self.overlap, **blank}


def preprocess_lines(lines: list[str], lang: str, pre: Preprocess, pretokenized: bool) -> list[str]:
    if pre.moses and not pretokenized:
        from sacremoses import MosesTokenizer

        tokenizer = MosesTokenizer(lang=lang)
        lines = [tokenizer.tokenize(line, return_str=True) for line in lines]
    if pre.lowercase:
        lines = [line.lower() for line in lines]
    return lines


def read_datasets(sources: list[str], targets: list[str], spec: dict) -> tuple[list[str], list[str]]:
    """Concatenate the split's datasets, each checked to align line by line (errors name the
    registry dataset beside its fetched copy), then preprocess."""
    pre, langs = Preprocess(**spec["preprocess"]), spec["languages"]
    src_all, tgt_all = [], []
    for name, src_path, tgt_path, done in zip(spec["datasets"], sources, targets, spec["pretokenized"], strict=True):
        try:
            src, tgt = read_parallel(src_path, tgt_path)
        except InputError as err:
            raise InputError(f"dataset {name}: {err}") from None
        src_all += preprocess_lines(src, langs[0], pre, done)
        tgt_all += preprocess_lines(tgt, langs[1], pre, done)
    return src_all, tgt_all


def check_references(references: list[str], spec: dict, targets: list[str]) -> None:
    """An evaluation set needs a reference on every line: a blank one scores any output as wrong."""
    blank = [number for number, line in enumerate(references, start=1) if not line]
    if not blank or spec.get("allow_blank_references"):
        return
    lines = ", ".join(map(str, blank[:10])) + (", ..." if len(blank) > 10 else "")
    raise InputError(f"dataset(s) {', '.join(spec['datasets'])} ({', '.join(targets)}): {len(blank)} of "
                     f"{len(references)} references are blank (line {lines} of the concatenated set); fix the "
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
            print(f"WARNING: {blank} of {len(eval_tgt)} references of evaluation set {name!r} are blank", file=sys.stderr)
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


def prepare(spec: dict, sources: list[str], targets: list[str], out_src: str, out_tgt: str,
            report_path: str | None = None, eval_sources: list[str] = (), eval_targets: list[str] = (),
            eval_names: list[str] = ()) -> None:
    """One split of an experiment's corpus. `spec` is the split's resolved data config (a rule param)."""
    src, tgt = read_datasets(sources, targets, spec)
    if report_path is None:
        check_references(tgt, spec, targets)
    else:
        evals = {name: read_parallel(s, t) for name, s, t in zip(eval_names, eval_sources, eval_targets, strict=True)}
        src, tgt, report = clean(src, tgt, Cleaning(**spec["cleaning"]), evals)
        if not src:
            raise InputError(f"dataset(s) {', '.join(spec['datasets'])} ({', '.join(sources)}; {', '.join(targets)}): "
                             f"cleaning removed all {report.input_pairs} training pairs: {dict(report.removed)}; "
                             "see data.cleaning")
        print(f"cleaning kept {report.kept} of {report.input_pairs} pairs; removed {dict(report.removed)}", file=sys.stderr)
    write_lines(out_src, src)
    write_lines(out_tgt, tgt)
    if report_path is not None:
        write_json(report_path, report.to_dict())
