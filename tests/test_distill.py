"""What the engine trains (DistillationModule): every method's terms, gradients reaching the student
and the training-only parts but never the teacher, the method's own checks."""

import pytest
import torch
from conftest import attention_kls, layer_maps, target_batch, tiny_model

from a2d.config import MethodConfig
from a2d.distill import DistillationModule, FrozenTeacher


def test_a2d_terms_are_the_aams_kls_of_the_two_models_maps():
    """The module runs the teacher after the student and streams its maps into the AAM's loss."""
    batch = target_batch()
    student, teacher = tiny_model(seed=1, heads=2), tiny_model(seed=2, heads=4, d_model=32)
    for method in (MethodConfig(name="a2d", layerwise=True), MethodConfig(name="a2d", a2d_mode="corrected")):
        module = DistillationModule(student, method, teacher.cfg).eval()
        _, terms = module(batch, FrozenTeacher(teacher, method), epoch=1, step=1)
        expected = attention_kls(module.alignment, layer_maps(student, batch), layer_maps(teacher.eval(), batch),
                                 batch if method.a2d_mode == "corrected" else None)
        assert terms.attention_kl.keys() == expected.keys()
        for name, kl in expected.items():
            torch.testing.assert_close(terms.attention_kl[name], kl)


@pytest.mark.parametrize("method", [
    MethodConfig(name="word_kd", temperature=2.0),
    MethodConfig(name="selective_kd", selective_fraction=0.5),
    MethodConfig(name="a2d"),
    MethodConfig(name="a2d", a2d_mode="corrected", decay_every="step", gamma=0.99),
    MethodConfig(name="a2d", layerwise=True),
    MethodConfig(name="a2d", decoder_self=0.0, decoder_cross=0.0),  # encoder-only
    MethodConfig(name="pkd", pkd_mapping="skip"),
    MethodConfig(name="alp_kd"),
    MethodConfig(name="minilm", relation_heads=4),
], ids=["word_kd", "selective_kd", "a2d_faithful", "a2d_corrected", "a2d_layerwise", "a2d_encoder_only", "pkd",
        "alp_kd", "minilm"])
def test_gradients_reach_student_and_training_only_parts_not_teacher(method):
    student = tiny_model(seed=1, encoder_layers=1, decoder_layers=1)
    teacher = tiny_model(seed=2, heads=4, d_model=32, ffn=64)  # wider: feature methods need a projection
    module = DistillationModule(student, method, teacher.cfg)
    batch = target_batch()
    teacher.train()
    loss, terms = module(batch, FrozenTeacher(teacher, method), epoch=2, step=5)
    loss.backward()
    assert torch.isfinite(loss) and terms.kd > 0
    assert all(p.grad is None for p in teacher.parameters())
    assert student.decoder_layers[0].ffn.fc1.weight.grad.abs().sum() > 0
    if module.alignment is not None:
        assert set(module.alignment.mixers) == set(method.attention_types)
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.alignment.parameters())
    if method.needs_hidden:
        assert terms.feature > 0
    if method.name in ("pkd", "alp_kd"):
        assert module.projection.weight.grad.abs().sum() > 0


def test_invalid_method_settings_are_refused():
    with pytest.raises(ValueError, match="at least one attention type"):
        MethodConfig(name="a2d", encoder_self=0, decoder_self=0, decoder_cross=0)
    with pytest.raises(ValueError, match="a2d_mode"):
        MethodConfig(name="a2d", a2d_mode="fixed")
    with pytest.raises(ValueError, match="selective_fraction"):
        MethodConfig(name="selective_kd", selective_fraction=0)


def test_pkd_student_deeper_than_teacher_fails_at_config_time():
    from pathlib import Path

    import yaml

    from a2d.plan import validate_config
    from a2d.settings import ConfigError

    config = yaml.safe_load((Path(__file__).parent / "configs" / "tiny.yaml").read_text())
    config["students"]["deep"] = {"model": {"encoder_layers": 3, "decoder_layers": 1, "d_model": 16, "heads": 2},
                                  "method": {"name": "pkd"}}
    with pytest.raises(ConfigError, match="students.deep.method: pkd: PKD maps each of 3 student layers .* only 2"):
        validate_config(config)


def test_decay_follows_the_configured_unit():
    batch = target_batch()
    student, teacher = tiny_model(seed=1, encoder_layers=1, decoder_layers=1), tiny_model(seed=2)
    for unit, changes_with in (("epoch", "epoch"), ("step", "step")):
        torch.manual_seed(0)
        module = DistillationModule(student, MethodConfig(name="a2d", gamma=0.5, decay_every=unit), teacher.cfg)
        out = FrozenTeacher(teacher, module.method)
        base = module(batch, out, epoch=1, step=1)[1].attention.item()
        later_epoch = module(batch, out, epoch=3, step=1)[1].attention.item()
        later_step = module(batch, out, epoch=1, step=3)[1].attention.item()
        moved, kept = (later_epoch, later_step) if changes_with == "epoch" else (later_step, later_epoch)
        assert moved == pytest.approx(base * 0.25, rel=1e-5) and kept == pytest.approx(base, rel=1e-6)


def test_faithful_a2d_refuses_a_temperature():
    with pytest.raises(ValueError, match="faithful A2D has no temperature"):
        MethodConfig(name="a2d", temperature=2.0)
    MethodConfig(name="a2d", a2d_mode="corrected", temperature=2.0)
