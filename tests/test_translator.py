"""a2d.Translator: a trained model (a2d safetensors or its CTranslate2 export) translating sentences
and files with the configured search; the README's snippet as written."""

import os

import pytest
import torch
from conftest import readme_block, sharp, tiny_model

import a2d.translator
from a2d import Translator
from a2d.checkpoint import save_model
from a2d.data import load_sentencepiece
from a2d.export import write_ctranslate2
from a2d.files import InputError, read_lines
from a2d.settings import ConfigError


def sharp_model(vocab_size: int):
    return sharp(tiny_model(seed=3, vocab_size=vocab_size, max_positions=128, pre_norm=True))


@pytest.fixture(scope="module")
def trained(tiny_corpus, tmp_path_factory):
    """A model file and its float32 CTranslate2 export, with the corpus' joint SentencePiece model."""
    spm = str(tiny_corpus["spm"])
    sp = load_sentencepiece(spm)
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    model = sharp_model(len(pieces))
    root = tmp_path_factory.mktemp("translator")
    save_model(root / "model.safetensors", model)
    write_ctranslate2(model, pieces, pieces, str(root / "model.ct2"), "float32")
    return root / "model.safetensors", root / "model.ct2", spm


def test_both_kinds_of_model_translate_alike(trained, tiny_corpus):
    model, exported, spm = trained
    sentences = read_lines(tiny_corpus["test.src"])
    # batch 1: CTranslate2 caps the output length per batch, a2d per sentence (test_export)
    ours = Translator(model, spm, beam_size=1, max_len_b=5, batch_size=1)
    fast = Translator(exported, spm, spm, beam_size=1, max_len_b=5, batch_size=1)
    outputs = ours.translate(sentences)
    assert len(outputs) == len(sentences) and any(outputs)
    assert fast.translate(sentences) == outputs
    assert (ours.device, fast.device) == ("cuda" if torch.cuda.is_available() else "cpu", "cpu")


def test_a_file_is_translated_line_by_line_with_its_speed(trained, tiny_corpus, tmp_path):
    model, _, spm = trained
    translator = Translator(model, spm, beam_size=2, max_len_b=4, batch_size=7)
    speed = translator.translate_file(tiny_corpus["test.src"], tmp_path / "out.txt")
    sources = read_lines(tiny_corpus["test.src"])
    assert read_lines(tmp_path / "out.txt") == translator.translate(sources)
    assert speed["sentences"] == len(sources) and speed["beam_size"] == 2 and speed["batch_size"] == 7
    assert speed["backend"] == "a2d" and speed["sentences_per_s"] > 0


def test_a_progress_bar_on_long_inputs_only(trained, capsys, monkeypatch):
    model, exported, spm = trained
    monkeypatch.setattr(a2d.translator, "PROGRESS_FROM", 20)
    for path in (model, exported):
        translator = Translator(path, spm, beam_size=1, max_len_b=2, batch_size=8)
        translator.translate(["a b"] * 19)
        assert "translating" not in capsys.readouterr().err
        translator.translate(["a b"] * 20)
        assert "translating: 100%" in capsys.readouterr().err
        translator.translate(["a b"] * 20, progress=False)
        assert capsys.readouterr().err == ""


def test_bad_arguments_name_what_is_wrong(trained, tmp_path):
    model, _, spm = trained
    with pytest.raises(ConfigError, match="Translator search: unknown key.*beam;"):
        Translator(model, spm, beam=4)
    with pytest.raises(ConfigError, match="beam_size: 0 is less than the minimum of 1"):
        Translator(model, spm, beam_size=0)
    with pytest.raises(InputError, match=f"{tmp_path / 'missing.safetensors'}: no model file"):
        Translator(tmp_path / "missing.safetensors", spm)


def test_the_readme_snippet_runs_as_written(tiny_corpus, tmp_path, monkeypatch, capsys):
    """`make run`'s layout, with a tiny model in the corrected student's place."""
    results = tmp_path / "results" / "synthetic"
    for directory in ("models/student_a2d_corrected", "spm", "corpus", "deploy"):
        (results / directory).mkdir(parents=True)
    spm = results / "spm" / "joint.model"
    spm.write_bytes(tiny_corpus["spm"].read_bytes())
    (results / "corpus" / "test.src").write_text(tiny_corpus["test.src"].read_text())
    sp = load_sentencepiece(str(spm))
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    model = sharp_model(len(pieces))
    save_model(results / "models" / "student_a2d_corrected" / "model.safetensors", model)
    write_ctranslate2(model, pieces, pieces, str(results / "deploy" / "student_a2d_corrected.ct2"), "int8")
    monkeypatch.chdir(tmp_path)
    exec(compile(readme_block("## Translating with a trained student", "python"), "README.md", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 2 and all(line.startswith("['") for line in printed)
    assert len(read_lines(tmp_path / "test.hyp")) == len(read_lines(results / "corpus" / "test.src"))
    assert os.path.getsize(tmp_path / "test.hyp") > 0
