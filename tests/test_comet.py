"""COMET from a local checkpoint: a COMET model that the test builds (an XLM-R-shaped encoder of two
layers, Unbabel's RegressionMetric on top) is saved in the layout of Unbabel's releases, then loaded
and scored by a2d's own code, the path a user's evaluation.comet takes."""

import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import sentencepiece as spm
import torch
import yaml
from conftest import readme_block, training_summary

from a2d import comet
from a2d.config import EvaluationConfig
from a2d.evaluate import score_files
from a2d.files import InputError, read_json, write_lines
from a2d.settings import ConfigError
from a2d.tables import write_tables

SOURCES = ["der Hund lief im Park", "die Katze sass auf der Matte", "ein Vogel sang im Baum", "wir essen Brot"]
REFERENCES = ["the dog ran in the park", "the cat sat on the mat", "a bird sang in the tree", "we eat bread"]
HYPOTHESES = {"good": REFERENCES, "bad": ["park the dog", "mat", "a bird bird bird", "bread we we"]}


def tiny_release(root: Path) -> tuple[Path, object]:
    """<root>/tiny-comet/checkpoints/model.ckpt and hparams.yaml, and the model they were saved from."""
    encoder = root / "encoder"  # the files of an XLM-R release that COMET reads: its config and SentencePiece model
    encoder.mkdir(parents=True)
    write_lines(root / "text.txt", SOURCES + REFERENCES + HYPOTHESES["bad"])
    spm.SentencePieceTrainer.train(input=str(root / "text.txt"), model_prefix=str(root / "sp"), vocab_size=40,
                                   model_type="unigram", hard_vocab_limit=False, minloglevel=2)
    shutil.copy(root / "sp.model", encoder / "sentencepiece.bpe.model")
    from comet.models import RegressionMetric
    from transformers import XLMRobertaConfig

    XLMRobertaConfig(vocab_size=48, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                     max_position_embeddings=64).save_pretrained(encoder)
    torch.manual_seed(0)
    model = RegressionMetric(pretrained_model=str(encoder), load_pretrained_weights=False, local_files_only=True,
                             hidden_sizes=[8], layer="mix", pool="avg")
    release = root / "tiny-comet"
    (release / "checkpoints").mkdir(parents=True)
    (release / "hparams.yaml").write_text(yaml.safe_dump(dict(model.hparams)))
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams),
                "pytorch-lightning_version": "2.6.6"}, release / "checkpoints" / "model.ckpt")
    return release / "checkpoints" / "model.ckpt", model


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return tiny_release(tmp_path_factory.mktemp("comet"))


def test_a_saved_checkpoint_scores_what_the_model_it_was_saved_from_scores(release, tmp_path):
    checkpoint, model = release
    expected = comet.segment_scores(model, SOURCES, HYPOTHESES["good"], REFERENCES, batch_size=2)
    loaded = comet.load(str(checkpoint))
    assert comet.segment_scores(loaded, SOURCES, HYPOTHESES["good"], REFERENCES, batch_size=3) == pytest.approx(expected, abs=1e-6)
    assert len(set(expected)) == len(expected)  # a score per sentence, not a constant
    for name, path in {"src": "test.src", "ref": "test.ref", "hyp": "test.hyp"}.items():
        write_lines(tmp_path / path, {"src": SOURCES, "ref": REFERENCES, "hyp": HYPOTHESES["good"]}[name])
    scores = score_files(str(tmp_path / "test.hyp"), str(tmp_path / "test.ref"),
                         EvaluationConfig(comet=str(checkpoint), comet_batch_size=2, bootstrap_samples=200),
                         str(tmp_path / "test.src"))
    assert scores["comet"] == round(100 * sum(expected) / len(expected), 2)
    assert scores["comet_signature"] == "model:tiny-comet|scale:x100|version:2.2.7"
    assert min(expected) * 100 <= scores["comet_bootstrap_mean"] <= max(expected) * 100 and scores["comet_ci95"] > 0
    assert "bleu" in scores and "ter_ci95" in scores  # beside sacrebleu's metrics


def test_the_readme_settings_put_comet_in_the_table_beside_bleu_with_its_signature(release, tmp_path):
    checkpoint, _ = release
    write_lines(tmp_path / "test.src", SOURCES)
    write_lines(tmp_path / "test.ref", REFERENCES)
    readme = yaml.safe_load(readme_block("## COMET", "yaml"))["evaluation"]  # the README's block, with this checkpoint
    evaluation = EvaluationConfig.build({**readme, "comet": str(checkpoint), "bootstrap_samples": 50}, "evaluation")
    metrics, summaries, comet_of = [], [], {}
    for run, hypotheses in {"student_nokd": HYPOTHESES["bad"], "student_a2d": HYPOTHESES["good"]}.items():
        write_lines(tmp_path / f"{run}.hyp", hypotheses)
        metrics.append(str(tmp_path / f"{run}.json"))
        subprocess.run([sys.executable, "-m", "a2d", "evaluate", "--hyp", tmp_path / f"{run}.hyp", "--ref",
                        tmp_path / "test.ref", "--src", tmp_path / "test.src", "--system", run, "--test-set", "test",
                        "--evaluation", evaluation.to_json(), "--output", metrics[-1]], check=True)  # the rule's command
        comet_of[run] = read_json(metrics[-1])["comet"]
        summaries.append(str(tmp_path / f"{run}.train.json"))
        training_summary(run, "none" if run == "student_nokd" else "a2d").write(summaries[-1])
    table = write_tables(metrics, summaries, str(tmp_path / "tables"), evaluation=evaluation)
    assert [table.loc[run, "test comet"] for run in comet_of] == [f"{score:.2f}" for score in comet_of.values()]
    assert "test bleu" in table.columns
    notes = (tmp_path / "tables" / "results.md").read_text()
    assert "- unbabel-comet comet: model:tiny-comet|scale:x100|version:2.2.7" in notes


def test_a_missing_checkpoint_is_an_error_naming_the_setting(release, tmp_path):
    with pytest.raises(ConfigError, match=r"evaluation: comet: /nowhere/model.ckpt is not a file"):
        EvaluationConfig.build({"comet": "/nowhere/model.ckpt"}, "evaluation")
    lone = tmp_path / "lone" / "checkpoints" / "model.ckpt"  # a checkpoint without its hparams.yaml
    lone.parent.mkdir(parents=True)
    shutil.copy(release[0], lone)
    with pytest.raises(ConfigError, match=r"evaluation: comet: .*lone/hparams.yaml is missing"):
        EvaluationConfig.build({"comet": str(lone)}, "evaluation")
    with pytest.raises(InputError, match=r"evaluation.comet: /nowhere/model.ckpt is not a file"):
        comet.load("/nowhere/model.ckpt")  # the same check where the metric is computed


class Payload:  # any object a weights-only load must refuse to rebuild
    pass


def copy_release(checkpoint: Path, to: Path) -> Path:
    shutil.copytree(checkpoint.parents[1], to)
    return to / "checkpoints" / "model.ckpt"


def test_a_checkpoint_that_pickles_objects_is_refused_before_comet_opens_it(release, tmp_path):
    checkpoint = copy_release(release[0], tmp_path / "release")
    saved = torch.load(checkpoint, weights_only=True)
    torch.save({**saved, "extra": Payload()}, checkpoint)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        comet.load(str(checkpoint))


def test_a_checkpoint_that_lacks_a_weight_or_holds_an_extra_one_is_refused(release, tmp_path):
    checkpoint = copy_release(release[0], tmp_path / "release")
    saved = torch.load(checkpoint, weights_only=True)
    weights = dict(saved["state_dict"])
    dropped = next(name for name in weights if name.startswith("estimator."))
    torch.save({**saved, "state_dict": {k: v for k, v in weights.items() if k != dropped}}, checkpoint)
    with pytest.raises(InputError, match=rf"missing \['{dropped}'\]"):
        comet.load(str(checkpoint))
    torch.save({**saved, "state_dict": {**weights, "estimator.extra": torch.zeros(1)}}, checkpoint)
    with pytest.raises(InputError, match=r"unused \['estimator.extra'\]"):
        comet.load(str(checkpoint))
    # a position_ids buffer (saved by older transformers; rebuilt from the config) is no mismatch
    torch.save({**saved, "state_dict": {**weights, "encoder.model.embeddings.position_ids": torch.arange(64)[None]}},
               checkpoint)
    comet.load(str(checkpoint))
