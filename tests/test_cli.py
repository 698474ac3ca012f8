"""`python -m a2d`: settings arrive as config sections in JSON, errors reach the user as one line."""

import json
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, tiny_model

from a2d.checkpoint import save_model
from a2d.cli import parser
from a2d.data import load_sentencepiece
from a2d.model import EOS_ID


def a2d(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "a2d", *argv], capture_output=True, text=True, cwd=ROOT)


@pytest.fixture(scope="module")
def eager_model(tiny_corpus, tmp_path_factory):
    """An untrained model that would end every output with EOS at once."""
    model = tiny_model(seed=2, vocab_size=load_sentencepiece(str(tiny_corpus["spm"])).get_piece_size(), pre_norm=True)
    with torch.no_grad():  # the decoder's output is then EOS's own (scaled) embedding at every step
        eos = model.tgt_embed.weight[EOS_ID]
        eos *= 100 / eos.norm()
        model.decoder_norm.weight.zero_()
        model.decoder_norm.bias.copy_(eos)
    path = tmp_path_factory.mktemp("model") / "model.safetensors"
    save_model(path, model)
    return path


def test_decoding_min_len_reaches_the_search(tiny_corpus, eager_model, tmp_path):
    generated = {}
    for min_len in (1, 6):
        decoding = json.dumps({"beam_size": 2, "max_len_a": 0, "max_len_b": 20, "min_len": min_len})
        result = a2d("translate", "--model", str(eager_model), "--src-spm", str(tiny_corpus["spm"]),
                     "--tgt-spm", str(tiny_corpus["spm"]), "--input", str(tiny_corpus["test.src"]),
                     "--output", str(tmp_path / f"{min_len}.txt"), "--speed", str(tmp_path / f"{min_len}.json"),
                     "--decoding", decoding)
        assert result.returncode == 0, result.stderr
        generated[min_len] = json.loads((tmp_path / f"{min_len}.json").read_text())["generated_tokens"]
    sentences = len(tiny_corpus["test.src"].read_text().splitlines())
    assert generated == {1: 2 * sentences, 6: 7 * sentences}  # min_len tokens, then EOS


def test_a_bad_section_names_the_option_and_the_key(tiny_corpus, eager_model, tmp_path):
    common = ["translate", "--model", str(eager_model), "--src-spm", str(tiny_corpus["spm"]), "--tgt-spm",
              str(tiny_corpus["spm"]), "--input", str(tiny_corpus["test.src"]), "--output", str(tmp_path / "out")]
    result = a2d(*common, "--decoding", '{"beam": 2}')
    assert result.returncode == 2 and "argument --decoding: SearchConfig: unknown key(s) beam; known:" in result.stderr
    result = a2d(*common, "--decoding", '{"beam_size": 0}')
    assert "argument --decoding: SearchConfig: beam_size: 0 is less than the minimum of 1" in result.stderr
    assert not (tmp_path / "out").exists()


def test_input_errors_reach_the_user_as_one_line(tmp_path):
    (tmp_path / "hyp").write_text("a b\n")
    (tmp_path / "ref").write_text("a b\nc d\n")
    result = a2d("evaluate", "--hyp", str(tmp_path / "hyp"), "--ref", str(tmp_path / "ref"), "--system", "s",
                 "--test-set", "t", "--output", str(tmp_path / "m.json"))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip() == f"error: {tmp_path / 'hyp'} has 1 lines but the reference {tmp_path / 'ref'} has 2"
    assert not (tmp_path / "m.json").exists()


def test_every_section_option_defaults_to_its_section():
    from a2d.config import EvaluationConfig, SearchConfig

    args = parser().parse_args(["evaluate", "--hyp", "h", "--ref", "r", "--system", "s", "--test-set", "t",
                                "--output", "o"])
    assert args.evaluation == EvaluationConfig()
    args = parser().parse_args(["translate", "--model", "m", "--src-spm", "s", "--tgt-spm", "s", "--input", "i",
                                "--output", "o", "--decoding", '{"min_len": 2}'])
    assert args.decoding == SearchConfig(min_len=2)
    with pytest.raises(SystemExit):  # sentencepiece has required fields: no default section
        parser().parse_args(["train-spm", "--input", "x", "--model", "m"])
