"""Translation from Python: a trained model (a2d's safetensors, or its CTranslate2 export) with its
SentencePiece models and the configured search, batched, with a progress bar on long inputs.

    from a2d import Translator
    translator = Translator("model.safetensors", "joint.model", beam_size=5)
    translator.translate(["the dog sees a cat"])
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from a2d.config import SearchConfig
from a2d.files import InputError, read_lines, write_lines

PROGRESS_FROM = 1000  # sentences: a progress bar (on stderr) from this many on, unless asked otherwise


class Translator:
    """`model`: a `model.safetensors` written by training, or a CTranslate2 directory written by
    `export`; `source_spm`/`target_spm`: its SentencePiece models (one file when joint). The search
    is a SearchConfig (`decoding`), or its fields as keywords (`beam_size=1`: greedy). a2d models
    decode on CUDA when there is a GPU (`device` to choose); both kinds use `threads` CPU threads."""

    def __init__(self, model: str | Path, source_spm: str | Path, target_spm: str | Path | None = None, *,
                 decoding: SearchConfig | None = None, threads: int = 1, device: str | None = None, **search):
        from a2d.data import load_sentencepiece

        self.decoding = SearchConfig.build({**(decoding or SearchConfig()).to_dict(), **search}, "Translator search")
        self.source_sp = load_sentencepiece(str(source_spm))
        self.target_sp = self.source_sp if target_spm is None else load_sentencepiece(str(target_spm))
        self.ctranslate2 = Path(model).is_dir()
        if self.ctranslate2:
            from a2d.export import load_translator

            self.model = load_translator(str(model), threads)
        else:
            self.model = self._load_a2d(model, threads, device)
        self.device = "cpu" if self.ctranslate2 else str(next(self.model.parameters()).device)
        self.threads = threads

    @staticmethod
    def _load_a2d(path: str | Path, threads: int, device: str | None):
        import torch

        from a2d.checkpoint import load_model

        if not Path(path).is_file():
            raise InputError(f"{path}: no model file (a2d's model.safetensors) or CTranslate2 directory")
        torch.set_num_threads(threads)
        return load_model(path).to(device or ("cuda" if torch.cuda.is_available() else "cpu"))

    def translate(self, sentences: list[str], progress: bool | None = None) -> list[str]:
        """One translation per sentence, in order. `progress`: a bar on stderr; None: from
        PROGRESS_FROM sentences on."""
        return self.translate_timed(sentences, progress)[0]

    def translate_timed(self, sentences: list[str], progress: bool | None = None) -> tuple[list[str], dict]:
        """`translate`, and the speed of the decoding alone, subword encoding and decoding left out, as
        the pipeline has always measured it (a2d.search.speed: sentences and generated tokens per
        second, with the threads, device and search)."""
        from tqdm import tqdm

        from a2d.search import speed

        show = len(sentences) >= PROGRESS_FROM if progress is None else progress
        sources = self._encode(list(sentences))
        with tqdm(total=len(sentences), unit="sent", disable=not show, file=sys.stderr, desc="translating") as bar:
            started = time.perf_counter()
            pieces = self._decode(sources, bar.update)
            seconds = time.perf_counter() - started
        outputs = [self.target_sp.decode(p) for p in pieces]
        return outputs, {**speed(pieces, max(seconds, 1e-9)), "threads": self.threads, "device": self.device,
                         "backend": "ctranslate2" if self.ctranslate2 else "a2d",
                         "beam_size": self.decoding.beam_size, "batch_size": self.decoding.batch_size}

    def _encode(self, sentences: list[str]) -> list:
        """Source pieces (CTranslate2) or id tensors ending in EOS (a2d)."""
        if self.ctranslate2:
            return self.source_sp.encode(sentences, out_type=str)
        import torch

        from a2d.data import encode_lines

        return [torch.tensor(ids) for ids in encode_lines(self.source_sp, sentences)]

    def _decode(self, sources: list, done) -> list:
        """Target ids (a2d) or pieces (CTranslate2) of each encoded source."""
        if self.ctranslate2:
            from a2d.export import ctranslate2_translate

            return ctranslate2_translate(self.model, sources, self.decoding, done)
        from a2d.search import translate

        return translate(self.model, sources, self.decoding, done)

    def translate_file(self, source: str | Path, output: str | Path, progress: bool | None = None) -> dict:
        """Translate a text file line by line into `output` (written whole, or not at all); returns the
        decoding speed (see translate_timed)."""
        outputs, measured = self.translate_timed(read_lines(str(source)), progress)
        write_lines(str(output), outputs)
        return measured
