import dataclasses
import json
import math

import pytest
import torch
from safetensors.torch import load_file

from a2d.checkpoint import load_model
from a2d.config import MethodConfig, SystemSpec, TrainingConfig
from a2d.train import check_precision, cpu_has_native_bf16, train

SHAPE = dict(encoder_layers=2, decoder_layers=2, d_model=32, heads=2, ffn=64, dropout=0.1, max_positions=64)


def spec(name="teacher", method="none", **training) -> SystemSpec:
    cfg = dict(max_tokens=400, max_epochs=3, lr=2e-3, warmup_steps=5, save_every_steps=2, patience=0, seed=3)
    return SystemSpec(name, dict(SHAPE), MethodConfig(name=method), TrainingConfig(**{**cfg, **training}))


def run(corpus, tmp_path, system: SystemSpec, ckpt: str, out: str, teacher=None) -> dict:
    return train(system, train_path=str(corpus["train"]), valid_path=str(corpus["valid"]),
                 valid_ref=str(corpus["valid.tgt"]), src_spm=str(corpus["spm"]), tgt_spm=str(corpus["spm"]),
                 checkpoint_dir=str(tmp_path / ckpt), output=str(tmp_path / out),
                 summary=str(tmp_path / f"{out}.json"), teacher_path=teacher, progress_bar=False)


def board_scalars(directory) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of the TensorBoard event files in `directory`: tag -> [(step, value)]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(directory))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_the_run_can_be_watched_in_tensorboard(tiny_corpus, tmp_path):
    """Every loss term, the learning rate and tokens/s per update, validation BLEU per epoch; a
    resumed run continues its curves without repeating a step."""
    teacher = run(tiny_corpus, tmp_path, spec(max_steps=2), "t", "teacher.safetensors")
    student = dataclasses.replace(spec("student", "a2d", max_steps=3, max_epochs=2),
                                  model=dict(SHAPE, encoder_layers=1, decoder_layers=1))
    first = run(tiny_corpus, tmp_path, student, "s", "s.safetensors", teacher=str(tmp_path / "teacher.safetensors"))
    resumed = dataclasses.replace(student, training=dataclasses.replace(student.training, max_steps=5))
    summary = run(tiny_corpus, tmp_path, resumed, "s", "s.safetensors", teacher=str(tmp_path / "teacher.safetensors"))
    assert summary.run_dir == first.run_dir
    board = f"{summary.run_dir}/tensorboard"  # one directory per run, beside its checkpoints
    scalars = board_scalars(board)
    assert {"train/total", "train/ls", "train/kd", "train/word", "train/attention", "train/kl_encoder_self",
            "train/kl_decoder_self", "train/kl_decoder_cross", "train/lr", "train/target_tokens_per_s",
            "valid/bleu"} <= set(scalars)
    assert [step for step, _ in scalars["train/total"]] == [1, 2, 3, 4, 5]
    steps_tsv = (tmp_path / "s").glob("*/steps.tsv")
    logged_lr = [float(line.split("\t")[2]) for line in next(steps_tsv).read_text().splitlines()[1:]]
    assert [value for _, value in scalars["train/lr"]] == pytest.approx(logged_lr, rel=1e-5)
    assert [value for _, value in scalars["valid/bleu"]] == pytest.approx([h.valid_bleu for h in summary.history],
                                                                          abs=0.006)
    assert [step for step, _ in scalars["valid/bleu"]] == [h.step for h in summary.history]
    assert all(value > 0 for _, value in scalars["train/target_tokens_per_s"])
    assert teacher.steps == 2
    # the README's command, in its mode that reads the files and prints what it found instead of serving
    import subprocess
    import sys
    from pathlib import Path

    inspected = subprocess.run([Path(sys.executable).parent / "tensorboard", "--inspect", "--logdir", str(tmp_path / "s")],
                               capture_output=True, text=True)
    assert inspected.returncode == 0 and "train/total" in inspected.stdout and "valid/bleu" in inspected.stdout


def final_weights(checkpoint_dir, step):
    path = next(checkpoint_dir.glob(f"*/step{step}/mp_rank_00_model_states.pt"))
    return torch.load(path, weights_only=True)["module"]


def test_resume_continues_the_same_run(tiny_corpus, tmp_path):
    """7 steps in one go equal 3 steps, a stop, and a resumed run to 7 (mid-epoch, with dropout)."""
    straight = run(tiny_corpus, tmp_path, spec(max_steps=7), "a", "a.safetensors")
    first = run(tiny_corpus, tmp_path, spec(max_steps=3), "b", "b.safetensors")
    resumed = run(tiny_corpus, tmp_path, spec(max_steps=7), "b", "b.safetensors")
    assert first.steps == 3 and resumed.steps == straight.steps == 7
    assert resumed.run_dir == first.run_dir  # a longer budget continues the same run
    a, b = final_weights(tmp_path / "a", 7), final_weights(tmp_path / "b", 7)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)
    assert straight.history[-1].valid_bleu == resumed.history[-1].valid_bleu


def test_changed_spec_starts_a_new_run(tiny_corpus, tmp_path):
    first = run(tiny_corpus, tmp_path, spec(max_steps=2), "c", "c.safetensors")
    other = run(tiny_corpus, tmp_path, spec(max_steps=2, lr=1e-3), "c", "c.safetensors")
    assert other.run_dir != first.run_dir and other.steps == 2


def test_distillation_exports_student_without_aam(tiny_corpus, tmp_path):
    teacher = run(tiny_corpus, tmp_path, spec(max_steps=2), "t", "teacher.safetensors")
    student_spec = dataclasses.replace(spec("student", "a2d", max_steps=2), model=dict(SHAPE, encoder_layers=1, decoder_layers=1))
    student = run(tiny_corpus, tmp_path, student_spec, "s", "student.safetensors",
                  teacher=str(tmp_path / "teacher.safetensors"))
    weights = load_file(tmp_path / "student.safetensors")
    assert not any("alignment" in k for k in weights)
    model = load_model(tmp_path / "student.safetensors")
    assert model.cfg.encoder_layers == 1 and student.parameters < teacher.parameters
    summary = json.loads((tmp_path / "student.safetensors.json").read_text())
    assert summary["method"] == "a2d faithful-described" and summary["steps"] == 2


@pytest.mark.parametrize("stage", [0, 2])
def test_other_zero_stages_train_and_resume(tiny_corpus, tmp_path, stage):
    first = run(tiny_corpus, tmp_path, spec(max_steps=2, zero_stage=stage), "z", "z.safetensors")
    resumed = run(tiny_corpus, tmp_path, spec(max_steps=3, zero_stage=stage), "z", "z.safetensors")
    assert first.steps == 2 and resumed.steps == 3 and resumed.run_dir == first.run_dir


def test_corrupt_latest_checkpoint_falls_back_to_the_previous_one(tiny_corpus, tmp_path, capfd):
    """A flipped byte in the newest checkpoint: the resume warns, sets it aside, takes the one
    before, and still ends on the uninterrupted run's weights."""
    from a2d.checkpoint import checkpoint_tags

    run(tiny_corpus, tmp_path, spec(max_steps=6, keep_checkpoints=3), "straight", "s.safetensors")
    run(tiny_corpus, tmp_path, spec(max_steps=5, keep_checkpoints=3), "c", "c.safetensors")
    (run_dir,) = (tmp_path / "c").iterdir()
    newest, previous = checkpoint_tags(run_dir)[:2]  # step5 (end of run), step4 (periodic)
    states = run_dir / newest / "mp_rank_00_model_states.pt"
    data = bytearray(states.read_bytes())
    data[len(data) // 2] ^= 0xFF
    states.write_bytes(bytes(data))
    capfd.readouterr()
    resumed = run(tiny_corpus, tmp_path, spec(max_steps=6, keep_checkpoints=3), "c", "c.safetensors")
    err = capfd.readouterr().err
    assert f"WARNING: skipping checkpoint {newest}" in err and "corrupt" in err
    assert f"resumed from {run_dir / previous} (epoch 1, step 4)" in err and resumed.steps == 6
    assert (run_dir / f"{newest}.skipped").is_dir()
    a, b = final_weights(tmp_path / "straight", 6), final_weights(tmp_path / "c", 6)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)


def test_incomplete_checkpoint_is_passed_over(tiny_corpus, tmp_path, capfd):
    """A checkpoint without its manifest (the process died while writing it) is never resumed."""
    run(tiny_corpus, tmp_path, spec(max_steps=3), "i", "i.safetensors")
    (manifest,) = (tmp_path / "i").glob("*/step3/a2d_manifest.json")
    manifest.unlink()
    capfd.readouterr()
    run(tiny_corpus, tmp_path, spec(max_steps=5), "i", "i.safetensors")
    err = capfd.readouterr().err
    assert "skipping checkpoint step3" in err and "incomplete" in err and "(epoch 1, step 2)" in err


def test_a_save_never_overwrites_a_checkpoint(tiny_corpus, tmp_path):
    """max_steps a multiple of save_every_steps: the periodic save and the end-of-run save fall on
    the same step, with different progress; the second gets a tag of its own."""
    from a2d.checkpoint import checkpoint_tags

    run(tiny_corpus, tmp_path, spec(max_steps=4, keep_checkpoints=5), "r", "r.safetensors")
    (run_dir,) = (tmp_path / "r").iterdir()
    assert checkpoint_tags(run_dir) == ["step4-1", "step4", "step2"]
    assert (run_dir / "latest").read_text() == "step4-1"
    run(tiny_corpus, tmp_path, spec(max_steps=6, keep_checkpoints=1), "r", "r.safetensors")  # resumes, saves, prunes
    assert checkpoint_tags(run_dir) == ["step6-1"]


def test_nan_loss_stops_without_saving(tiny_corpus, tmp_path, monkeypatch):
    from a2d.distill import DistillationModule

    forward = DistillationModule.forward

    def poisoned(self, batch, teacher, epoch, step):
        loss, terms = forward(self, batch, teacher, epoch, step)
        return (loss * float("nan"), terms) if step == 3 else (loss, terms)

    monkeypatch.setattr(DistillationModule, "forward", poisoned)
    with pytest.raises(FloatingPointError, match="loss is nan at step 3"):
        run(tiny_corpus, tmp_path, spec(max_steps=6, save_every_steps=1), "n", "n.safetensors")
    saved = sorted(p.name for p in (tmp_path / "n").glob("*/step*") if p.is_dir())
    assert saved == ["step1", "step2"] and not (tmp_path / "n.safetensors").exists()


@pytest.fixture(scope="module")
def zero3_teacher(tiny_corpus, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("zero3_teacher")
    run(tiny_corpus, tmp, spec(max_steps=2, zero_stage=3), "t", "teacher.safetensors")
    return str(tmp / "teacher.safetensors")


@pytest.mark.parametrize("method", [dict(name="word_kd"), dict(name="selective_kd"), dict(name="a2d"),
                                    dict(name="a2d", a2d_mode="corrected", layerwise=True), dict(name="pkd"),
                                    dict(name="alp_kd"), dict(name="minilm", relation_heads=2)],
                         ids=lambda m: "-".join(str(v) for v in m.values()))
def test_every_method_trains_under_zero3(tiny_corpus, tmp_path, zero3_teacher, method):
    """ZeRO-3 shards the student with its AAM or projection; the teacher stays a plain model."""
    student = SystemSpec("student", dict(SHAPE, encoder_layers=1, decoder_layers=1), MethodConfig(**method),
                         TrainingConfig(max_tokens=400, max_steps=3, lr=2e-3, warmup_steps=5, patience=0, seed=3,
                                        zero_stage=3))
    result = run(tiny_corpus, tmp_path, student, "s", "s.safetensors", teacher=zero3_teacher)
    assert result.steps == 3 and result.parameters > 0
    assert load_model(tmp_path / "s.safetensors").cfg.encoder_layers == 1
    assert all(math.isfinite(h.train_nll) for h in result.history)


def test_native_bf16_is_read_from_the_cpu_flags(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\n\nprocessor\t: 1\nflags\t\t: fpu avx2\n")
    assert cpu_has_native_bf16(str(cpuinfo)) is False
    cpuinfo.write_text("processor\t: 0\nflags\t\t: avx2 avx512f avx512_bf16 amx_tile\n")
    assert cpu_has_native_bf16(str(cpuinfo)) is True
    cpuinfo.write_text("processor\t: 0\nflags\t\t: avx2 amx_bf16\n")
    assert cpu_has_native_bf16(str(cpuinfo)) is True
    assert cpu_has_native_bf16(str(tmp_path / "absent")) is None


@pytest.mark.parametrize("native,warned", [(False, True), (True, False), (None, False)])
def test_bf16_on_a_cpu_without_bf16_instructions_is_trained_with_a_warning(native, warned, monkeypatch):
    monkeypatch.setattr("a2d.train.cpu_has_native_bf16", lambda: native)
    warning = check_precision("bf16")
    assert (warning is not None) == warned and (not warned or "emulated" in warning)
    assert check_precision("fp32") is None
