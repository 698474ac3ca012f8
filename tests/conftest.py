import os
from pathlib import Path

import pytest
import torch

from a2d.data import encode_corpus, train_sentencepiece
from a2d.files import write_lines
from a2d.model import ModelConfig, Transformer
from a2d.synthetic import generate_splits

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("DS_ACCELERATOR", "cpu" if not torch.cuda.is_available() else "cuda")


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> dict[str, Path]:
    """A 400-pair synthetic corpus with its SentencePiece model and encoded splits."""
    root = tmp_path_factory.mktemp("corpus")
    paths = {}
    for split, pairs in generate_splits(7, {"train": 400, "valid": 30, "test": 30}).items():
        for side, lines in (("src", [s for s, _ in pairs]), ("tgt", [t for _, t in pairs])):
            paths[f"{split}.{side}"] = root / f"{split}.{side}"
            write_lines(paths[f"{split}.{side}"], lines)
    paths["spm"] = root / "spm.model"
    train_sentencepiece([str(paths["train.src"]), str(paths["train.tgt"])], str(paths["spm"]), 200, "unigram", 1)
    for split in ("train", "valid"):
        paths[split] = root / f"{split}.safetensors"
        encode_corpus(str(paths["spm"]), str(paths["spm"]), str(paths[f"{split}.src"]), str(paths[f"{split}.tgt"]), str(paths[split]))
    return paths


def tiny_model(seed=0, **shape) -> Transformer:
    torch.manual_seed(seed)
    cfg = dict(vocab_size=50, encoder_layers=2, decoder_layers=2, d_model=16, heads=2, ffn=32, dropout=0.0,
               max_positions=64)
    return Transformer(ModelConfig(**{**cfg, **shape})).eval()


def random_batch(vocab=50, B=3, S=7, T=5, seed=1):
    """Source and decoder-input tokens with right padding of varied lengths."""
    from a2d.model import BOS_ID, PAD_ID

    g = torch.Generator().manual_seed(seed)
    src = torch.randint(4, vocab, (B, S), generator=g)
    prev = torch.randint(4, vocab, (B, T), generator=g)
    prev[:, 0] = BOS_ID
    for b in range(1, B):  # row b loses its last b positions to padding
        src[b, S - b:] = PAD_ID
        prev[b, T - b:] = PAD_ID
    return src, prev
