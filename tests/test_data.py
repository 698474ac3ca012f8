import os
import stat

import pytest

from a2d.data import ParallelData, encode_corpus, load_sentencepiece
from a2d.files import InputError, read_lines, read_parallel, write_lines
from a2d.model import BOS_ID, EOS_ID, PAD_ID
from a2d.synthetic import Generator, generate_splits


def test_synthetic_pair_is_deterministic_and_splits_are_disjoint():
    a = generate_splits(3, {"train": 200, "valid": 20, "test": 20})
    assert a == generate_splits(3, {"train": 200, "valid": 20, "test": 20})
    assert a != generate_splits(4, {"train": 200, "valid": 20, "test": 20})
    sources = [s for pairs in a.values() for s, _ in pairs]
    assert len(sources) == len(set(sources)) == 240


def test_synthetic_verb_agrees_with_distant_subject():
    """The target's last verb carries the suffix of the subject's hidden gender and number."""
    gen = Generator(11)
    lex = gen.lex
    checked = 0
    for _ in range(300):
        src, tgt = gen.sentence()
        words = src.split()
        nouns = {n[0]: n for n in lex.nouns}
        position = next(i for i, w in enumerate(words) if w in nouns)  # the subject's head noun
        noun = nouns[words[position]]
        number = "pl" if words[position + 1:position + 2] == ["s"] else "sg"
        verb_word = tgt.split()[-1] if not any(tgt.endswith(" " + a) for _, a in lex.adverbs) else tgt.split()[-2]
        assert verb_word.endswith(lex.verb_suffix[(noun[2], number)])
        checked += 1
    assert checked == 300


def test_read_lines_errors_name_file_and_line(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine\nalso fine\n\xff\xfe broken\n")
    with pytest.raises(InputError, match=r"bad.txt:3: invalid UTF-8"):
        read_lines(bad)
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(InputError, match="empty.txt: file is empty"):
        read_lines(empty)
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    write_lines(a, ["x", "y"])
    write_lines(b, ["x"])
    with pytest.raises(InputError, match="a.txt has 2 lines but .*b.txt has 1"):
        read_parallel(a, b)
    nul = tmp_path / "nul.txt"
    nul.write_bytes(b"fine\r\nst\x00op\n")
    with pytest.raises(InputError, match=r"nul.txt:2: control character U\+0000 at column 3"):
        read_lines(nul)


def test_outputs_get_the_permissions_of_the_umask(tmp_path):
    for umask, mode in ((0o022, 0o644), (0o077, 0o600), (0o002, 0o664)):
        old = os.umask(umask)
        try:
            write_lines(tmp_path / f"{umask:o}.txt", ["x"])
        finally:
            os.umask(old)
        assert stat.S_IMODE((tmp_path / f"{umask:o}.txt").stat().st_mode) == mode


def test_encode_and_batches(tiny_corpus, tmp_path):
    data = ParallelData(tiny_corpus["train"])
    assert len(data) == 400
    sp = load_sentencepiece(tiny_corpus["spm"])
    first = read_lines(tiny_corpus["train.src"])[0]
    assert sp.decode(data.src[0][:-1].tolist()) == first and data.src[0][-1] == EOS_ID
    batches = data.batches(max_tokens=200, seed=1)
    assert sorted(i for b in batches for i in b) == list(range(400))
    for b in batches:
        longest = max(max(len(data.src[i]), len(data.tgt[i])) for i in b)
        assert longest * len(b) <= 200
    batch = data.collate(batches[0])
    assert (batch.prev[:, 0] == BOS_ID).all()
    words = batch.mask[:, :-1] & (batch.target[:, :-1] != EOS_ID)  # the decoder input is the target, shifted
    assert (batch.prev[:, 1:][words] == batch.target[:, :-1][words]).all()
    assert ((batch.target == PAD_ID) == ~batch.mask).all()


def test_length_filter_keeps_line_numbers(tiny_corpus):
    full = ParallelData(tiny_corpus["valid"])
    limit = sorted(max(len(s), len(t)) for s, t in zip(full.src, full.tgt))[len(full) // 2]
    short = ParallelData(tiny_corpus["valid"], max_positions=limit)
    assert 0 < len(short) < len(full) and short.dropped == len(full) - len(short)
    for row, line in enumerate(short.kept):
        assert short.src[row].equal(full.src[line])


def test_encode_refuses_misaligned_corpus_and_leaves_no_output(tiny_corpus, tmp_path):
    short = tmp_path / "short.tgt"
    write_lines(short, read_lines(tiny_corpus["train.tgt"])[:-1])
    out = tmp_path / "out.safetensors"
    with pytest.raises(InputError, match="400 lines"):
        encode_corpus(str(tiny_corpus["spm"]), str(tiny_corpus["spm"]), str(tiny_corpus["train.src"]), str(short), str(out))
    assert not out.exists() and not list(tmp_path.glob(".out*"))
