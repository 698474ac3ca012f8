"""Preprocessing and cleaning of training data, and the errors bad input gets."""

import json

import pytest

from a2d.clean import clean, hold_out, prepare, preprocess_lines
from a2d.config import Cleaning, Preprocess
from a2d.files import InputError


def test_each_removal_reason_is_counted():
    src = ["a b c", "", "a b c", "w " * 30, "one", "x y", "seen in test"]
    tgt = ["d e f", "leer", "d e f", "v " * 30, "one two three four", "x y", "gesehen"]
    kept_src, kept_tgt, report = clean(src, tgt, Cleaning(max_words=20, max_ratio=3.0),
                                       {"test": (["seen in test"], ["gesehen"])})
    assert kept_src == ["a b c", "x y"] and kept_tgt == ["d e f", "x y"]
    assert report.to_dict() == {"input_pairs": 7, "kept_pairs": 2, "eval_overlap": {"test": {"sources": 1.0, "pairs": 1.0}},
                                "removed": {"empty": 1, "duplicate": 1, "too_long": 1, "length_ratio": 1,
                                            "in_eval_set": 1}}


def test_overlap_with_an_evaluation_set_warns_loudly(capsys):
    train = ([f"s{i}" for i in range(10)], [f"t{i}" for i in range(10)])
    dev = (["s1", "s2", "new"], ["t1", "another translation", "neu"])  # s2 is in train with another target
    _, _, report = clean(*train, Cleaning(decontaminate=False, overlap_warning=0.5), {"dev": dev})
    assert report.overlap == {"dev": {"sources": 0.6667, "pairs": 0.3333}} and report.kept == 10  # decontamination off
    assert ("WARNING: 2 of 3 source sentences of evaluation set 'dev' (66.7%; 1 whole pairs) are in the training data: "
            "scores on it measure memorisation") in capsys.readouterr().err
    _, _, report = clean(*train, Cleaning(overlap_warning=0.5), {"dev": dev})
    assert report.removed == {"in_eval_set": 2} and "with those sources are removed" in capsys.readouterr().err
    clean(*train, Cleaning(overlap_warning=0.9), {"dev": dev})
    assert capsys.readouterr().err == ""


def test_moses_tokenisation_and_lowercasing_like_the_iwslt14_recipe():
    lines = ["It's fine, isn't it?", "\"Quoted\" & done."]
    assert preprocess_lines(lines, "en", Preprocess(moses=True, lowercase=True), pretokenized=False) == \
        ["it &apos;s fine , isn &apos;t it ?", "&quot; quoted &quot; &amp; done ."]
    # already tokenised text (fairseq's prepare-iwslt14.sh output) is not tokenised twice
    assert preprocess_lines(["it &apos;s"], "en", Preprocess(moses=True), pretokenized=True) == ["it &apos;s"]


def spec(datasets=1, **cleaning):
    return {"languages": ["de", "en"], "datasets": list("ab")[:datasets], "pretokenized": [False] * datasets,
            "preprocess": {"moses": False, "lowercase": False}, "cleaning": {**Cleaning().__dict__, **cleaning}}


def write(path, text: bytes):
    path.write_bytes(text)
    return str(path)


def test_prepare_concatenates_datasets_and_reports(tmp_path):
    files = [write(tmp_path / n, t) for n, t in
             (("a.de", b"eins\nzwei\n"), ("a.en", b"one\ntwo\n"), ("b.de", b"drei\neins\n"), ("b.en", b"three\none\n"))]
    prepare(spec(datasets=2), files[0::2], files[1::2], str(tmp_path / "o.de"), str(tmp_path / "o.en"), str(tmp_path / "r.json"))
    assert (tmp_path / "o.de").read_text().splitlines() == ["eins", "zwei", "drei"]
    assert json.loads((tmp_path / "r.json").read_text())["removed"] == {"duplicate": 1}


@pytest.mark.parametrize("de, en, message", [
    (b"eins\nzwei\n", b"one\n", r"^dataset a: .*a\.de has 2 lines but .*a\.en has 1"),
    (b"eins\nzw\xffei\n", b"one\ntwo\n", r"a\.de:2: invalid UTF-8"),
    (b"", b"", r"a\.de: file is empty"),
    (b"eins\nzw\x00ei\n", b"one\ntwo\n", r"a\.de:2: control character U\+0000 at column 3"),
    (b"eins\n", b"o\x1bne\n", r"a\.en:1: control character U\+001B at column 2"),
])
def test_bad_input_names_file_and_line_and_leaves_no_output(tmp_path, de, en, message):
    src, tgt = write(tmp_path / "a.de", de), write(tmp_path / "a.en", en)
    with pytest.raises(InputError, match=message):
        prepare(spec(), [src], [tgt], str(tmp_path / "o.de"), str(tmp_path / "o.en"), str(tmp_path / "r.json"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.de", "a.en"]


def test_tabs_are_text(tmp_path):
    src, tgt = write(tmp_path / "a.de", b"eins\tzwei\n"), write(tmp_path / "a.en", b"one\ttwo\n")
    prepare(spec(), [src], [tgt], str(tmp_path / "o.de"), str(tmp_path / "o.en"), str(tmp_path / "r.json"))
    assert (tmp_path / "o.de").read_text() == "eins\tzwei\n"


def test_cleaning_that_removes_everything_is_an_error(tmp_path):
    src, tgt = write(tmp_path / "a.de", b"x\n"), write(tmp_path / "a.en", b"one two three four\n")
    with pytest.raises(InputError, match=r"^dataset\(s\) a \(.*a\.de, .*a\.en\): cleaning removed all 1 training "
                                         r"pairs: {'length_ratio': 1}; see data.cleaning"):
        prepare(spec(), [src], [tgt], str(tmp_path / "o.de"), str(tmp_path / "o.en"), str(tmp_path / "r.json"))
    assert not (tmp_path / "o.de").exists() and not (tmp_path / "r.json").exists()


def test_an_evaluation_set_with_blank_references_is_an_error(tmp_path):
    src, tgt = write(tmp_path / "a.de", b"eins\nzwei\ndrei\n"), write(tmp_path / "a.en", b"one\n \nthree\n")
    eval_spec = {key: value for key, value in spec().items() if key != "cleaning"}
    with pytest.raises(InputError, match=r"^dataset a \(.*a\.en\): 1 of 3 references are blank \(line 2\); "
                                         r"fix the data, or set data.allow_blank_references: true"):
        prepare(eval_spec, [src], [tgt], str(tmp_path / "o.de"), str(tmp_path / "o.en"))
    assert not (tmp_path / "o.de").exists()
    prepare({**eval_spec, "allow_blank_references": True}, [src], [tgt], str(tmp_path / "o.de"), str(tmp_path / "o.en"))
    assert (tmp_path / "o.en").read_text() == "one\n\nthree\n"


def test_blank_references_allowed_are_reported(capsys):
    _, _, report = clean(["s"], ["t"], Cleaning(), {"test": (["a", "b"], ["", "x"])})
    assert report.to_dict()["blank_references"] == {"test": 1}
    assert "WARNING: 1 of 2 references of evaluation set 'test' are blank" in capsys.readouterr().err


def test_held_out_splits_are_seeded_disjoint_and_leave_training(tmp_path):
    src = [f"s{i}" for i in range(40)] + ["dup", "dup"]
    tgt = [f"t{i}" for i in range(40)] + ["d1", "d2"]
    train_src, train_tgt, splits = hold_out(src, tgt, [("valid", 5), ("test", 7)], seed=3, where="x")
    again = hold_out(src, tgt, [("valid", 5), ("test", 7)], seed=3, where="x")
    assert (train_src, splits) == (again[0], again[2])  # deterministic
    assert hold_out(src, tgt, [("valid", 5), ("test", 7)], seed=4, where="x")[2] != splits
    assert [len(splits[n][0]) for n in ("valid", "test")] == [5, 7] and len(train_src) == 42 - 12
    held = set(splits["valid"][0]) | set(splits["test"][0])
    assert len(held) == 12 and not held & set(train_src) and "dup" not in held  # disjoint; a repeated source stays
    assert all(tgt[src.index(s)] == t for s, t in zip(*splits["test"]))  # pairs stay pairs
    assert splits["valid"][0] == sorted(splits["valid"][0], key=src.index)  # corpus order
    with pytest.raises(InputError, match="x: held_out asks for 41 pairs, but only 40 of the 42"):
        hold_out(src, tgt, [("valid", 41)], seed=3, where="x")


def test_prepare_writes_held_out_splits_and_reports_them(tmp_path):
    de = "".join(f"satz {i}\n" for i in range(30)).encode()
    en = "".join(f"sentence {i}\n" for i in range(30)).encode()
    src, tgt = write(tmp_path / "a.de", de), write(tmp_path / "a.en", en)
    paths = [(str(tmp_path / "v.de"), str(tmp_path / "v.en"))]
    prepare({**spec(), "held_out": [["valid", 4]], "held_out_seed": 1}, [src], [tgt], str(tmp_path / "o.de"),
            str(tmp_path / "o.en"), str(tmp_path / "r.json"), held_out_paths=paths)
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["removed"] == {"held_out": 4} and report["held_out"] == {"valid": 4} and report["kept_pairs"] == 26
    assert len((tmp_path / "v.de").read_text().splitlines()) == 4 and report["eval_overlap"] == {}
