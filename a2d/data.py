"""Subword model, encoded corpora and token-based batching."""

from __future__ import annotations

import os
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path

import sentencepiece as spm
import torch
from safetensors.torch import save_file
from torch import Tensor

from a2d.config import SubwordConfig
from a2d.files import InputError, atomic_path, read_lines, read_parallel, read_safetensors
from a2d.model import BOS_ID, EOS_ID, PAD_ID, UNK_ID


@dataclass
class Batch:
    src: Tensor  # (B, S) source tokens + EOS, right-padded
    prev: Tensor  # (B, T) BOS + target tokens
    target: Tensor  # (B, T) target tokens + EOS
    mask: Tensor  # (B, T) bool, True at real target tokens

    @property
    def target_tokens(self) -> int:
        return int(self.mask.sum())

    def to(self, device) -> "Batch":
        return Batch(self.src.to(device), self.prev.to(device), self.target.to(device), self.mask.to(device))


def train_sentencepiece(inputs: list[str], model_path: str, cfg: SubwordConfig, threads: int = 1) -> None:
    """One SentencePiece model over all `inputs` (both sides: a joint model); writes `model_path` (and its .vocab) atomically."""
    model_path = Path(model_path)
    lines = [line for path in inputs for line in read_lines(path)]
    with tempfile.TemporaryDirectory(dir=model_path.parent) as tmp:
        text = Path(tmp) / "input.txt"
        text.write_text("\n".join(lines) + "\n", encoding="utf-8")
        spm.set_random_generator_seed(cfg.seed)
        spm.SentencePieceTrainer.train(
            input=str(text), model_prefix=str(Path(tmp) / "spm"), vocab_size=cfg.vocab_size,
        model_type=cfg.model_type, character_coverage=1.0, num_threads=threads,
            pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID,
            # A small corpus may not support the requested size: take what it gives.
            hard_vocab_limit=False, minloglevel=2)
        os.replace(Path(tmp) / "spm.vocab", model_path.with_suffix(".vocab"))
        os.replace(Path(tmp) / "spm.model", model_path)


def load_sentencepiece(path: str) -> spm.SentencePieceProcessor:
    return spm.SentencePieceProcessor(model_file=str(path))


def encode_lines(sp: spm.SentencePieceProcessor, lines: list[str]) -> list[list[int]]:
    """Subword ids of each line, followed by EOS."""
    return [ids + [EOS_ID] for ids in sp.encode(lines)]


def _flatten(seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.int64)
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
    return torch.tensor([t for s in seqs for t in s], dtype=torch.int32), offsets


def encode_corpus(src_spm: str, tgt_spm: str, src_path: str, tgt_path: str, out_path: str) -> int:
    """Encode a parallel corpus into one safetensors file of flat ids and offsets per side."""
    src, tgt = read_parallel(src_path, tgt_path)
    src_tokens, src_offsets = _flatten(encode_lines(load_sentencepiece(src_spm), src))
    tgt_tokens, tgt_offsets = _flatten(encode_lines(load_sentencepiece(tgt_spm), tgt))
    with atomic_path(out_path) as tmp:
        save_file({"src_tokens": src_tokens, "src_offsets": src_offsets,
                   "tgt_tokens": tgt_tokens, "tgt_offsets": tgt_offsets}, str(tmp))
    return len(src)


class ParallelData:
    """An encoded corpus in memory: pairs of 1-D int64 tensors (each ending in EOS)."""

    def __init__(self, path: str, max_positions: int | None = None):
        t, _ = read_safetensors(path)
        split = lambda tokens, offsets: list(torch.split(tokens.long(), offsets.diff().tolist()))  # noqa: E731
        self.src = split(t["src_tokens"], t["src_offsets"])
        self.tgt = split(t["tgt_tokens"], t["tgt_offsets"])
        self.kept = list(range(len(self.src)))  # line numbers (0-based) of the pairs held
        if max_positions is not None:
            self.kept = [i for i in self.kept if max(len(self.src[i]), len(self.tgt[i])) <= max_positions]
            self.src, self.tgt = [self.src[i] for i in self.kept], [self.tgt[i] for i in self.kept]
        self.dropped = len(t["src_offsets"]) - 1 - len(self.kept)
        if not self.src:
            raise InputError(f"{path}: no sentence pairs")

    def __len__(self) -> int:
        return len(self.src)

    def batches(self, max_tokens: int, seed: int) -> list[list[int]]:
        """Index lists of batches holding at most `max_tokens` padded tokens per side.

        Pairs are sorted by length (ties broken by a seeded shuffle) to keep padding low;
        the order of batches is the training loop's to shuffle each epoch.
        """
        order = list(range(len(self)))
        random.Random(seed).shuffle(order)
        order.sort(key=lambda i: (len(self.tgt[i]), len(self.src[i])))
        batches, current, longest = [], [], 0
        for i in order:
            n = max(len(self.src[i]), len(self.tgt[i]))
            if n > max_tokens:
                raise InputError(f"a sentence pair of {n} tokens does not fit in max_tokens={max_tokens}")
            if current and max(longest, n) * (len(current) + 1) > max_tokens:
                batches.append(current)
                current, longest = [], 0
            current.append(i)
            longest = max(longest, n)
        if current:
            batches.append(current)
        return batches

    def collate(self, indices: list[int]) -> Batch:
        src = pad([self.src[i] for i in indices])
        target = pad([self.tgt[i] for i in indices])
        bos = torch.full((len(indices), 1), BOS_ID, dtype=torch.long)
        prev = torch.cat([bos, target[:, :-1]], dim=1)
        prev = prev.masked_fill(prev == EOS_ID, PAD_ID)  # EOS is never an input, only a target
        return Batch(src=src, prev=prev, target=target, mask=target != PAD_ID)


def pad(seqs: list[torch.Tensor]) -> torch.Tensor:
    return torch.nn.utils.rnn.pad_sequence(seqs, batch_first=True, padding_value=PAD_ID)
