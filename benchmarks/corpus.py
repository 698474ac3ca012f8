"""The benchmark corpus: the 15k-pair IWSLT'14 De-En sample from the offline mirror, one joint
SentencePiece BPE model, encoded for a2d and binarised for fairseq with the same vocabulary."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from a2d.config import SubwordConfig
from a2d.data import encode_corpus, encode_lines, load_sentencepiece, train_sentencepiece
from a2d.files import read_lines, write_lines
from benchmarks import fairseq


@dataclass
class Corpus:
    spm: Path
    train: Path  # a2d's encoded corpora
    valid: Path
    valid_ref: Path
    test_src: Path  # text
    test_ids: list[list[int]]  # encoded test sources (each ending in EOS)
    test_pieces: list[list[str]]  # the same as subword pieces (without EOS)
    fairseq_data: Path | None  # binarised, for fairseq-train and fairseq-generate


def prepare(data_root: Path, work: Path, vocab_size: int, valid_sentences: int, test_sentences: int,
            fairseq_bin: Path | None) -> Corpus:
    mini, test = data_root / "iwslt14_de_en" / "mini_split", data_root / "iwslt14_de_en" / "fairseq_tok"
    for path in (mini / "train.de", mini / "train.en", test / "test.de"):
        if not path.exists():
            raise FileNotFoundError(f"{path}: the benchmark reads IWSLT'14 De-En from the offline mirror (--data)")
    work.mkdir(parents=True, exist_ok=True)
    text = work / "text"
    text.mkdir(exist_ok=True)
    # The validation set only runs at the end of each a2d run: a small one keeps that short.
    splits = {"train": (mini / "train.de", mini / "train.en", None),
              "valid": (mini / "valid.de", mini / "valid.en", valid_sentences),
              "test": (test / "test.de", test / "test.en", test_sentences)}
    for split, (src, tgt, limit) in splits.items():
        for path, lang in ((src, "de"), (tgt, "en")):
            out = text / f"{split}.{lang}"
            if not out.exists():
                write_lines(out, read_lines(path)[:limit])
    spm = work / "spm.model"
    if not spm.exists():
        train_sentencepiece([str(text / "train.de"), str(text / "train.en")], str(spm),
                            SubwordConfig(vocab_size=vocab_size, model_type="bpe", seed=1), threads=2)
    for split in ("train", "valid"):
        if not (work / f"{split}.safetensors").exists():
            encode_corpus(str(spm), str(spm), str(text / f"{split}.de"), str(text / f"{split}.en"),
                          str(work / f"{split}.safetensors"))
    sp = load_sentencepiece(spm)
    test_lines = read_lines(text / "test.de")
    test_pieces = sp.encode(test_lines, out_type=str)
    test_ids = encode_lines(sp, test_lines)
    fairseq_data = None
    if fairseq_bin is not None:
        pieces_dir = work / "fairseq_text"
        pieces_dir.mkdir(exist_ok=True)
        for split in splits:
            for lang in ("de", "en"):
                out = pieces_dir / f"{split}.{lang}"
                if not out.exists():
                    encoded = sp.encode(read_lines(text / f"{split}.{lang}"), out_type=str)
                    write_lines(out, [" ".join(pieces) for pieces in encoded])
        dictionary = work / "fairseq_dict.txt"
        fairseq.write_dictionary([sp.id_to_piece(i) for i in range(4, sp.get_piece_size())], dictionary)
        fairseq_data = work / "fairseq_bin"
        fairseq.preprocess(fairseq_bin, pieces_dir, dictionary, fairseq_data, "de", "en", work / "fairseq_preprocess.log")
    return Corpus(spm, work / "train.safetensors", work / "valid.safetensors", text / "valid.en", text / "test.de",
                  test_ids, test_pieces, fairseq_data)
