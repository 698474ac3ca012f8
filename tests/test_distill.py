"""What the engine trains (DistillationModule): every method's terms, gradients reaching the student
and the training-only parts but never the teacher, the method's own checks."""

import pytest
import torch
from conftest import attention_kls, layer_maps, target_batch, tiny_model

from a2d.config import A2D_PRESETS, MethodConfig
from a2d.distill import DistillationModule, FrozenTeacher, attention_row_masks


def test_a2d_terms_are_the_aams_kls_of_the_two_models_maps():
    """The module runs the teacher after the student and streams its maps into the AAM's loss."""
    batch = target_batch()
    student, teacher = tiny_model(seed=1, heads=2), tiny_model(seed=2, heads=4, d_model=32)
    for method in (MethodConfig(name="a2d", layerwise=True), MethodConfig(name="a2d", a2d_mode="corrected")):
        module = DistillationModule(student, method, teacher.cfg).eval()
        _, terms = module(batch, FrozenTeacher(teacher, method), epoch=1, step=1)
        expected = attention_kls(module.alignment, layer_maps(student, batch), layer_maps(teacher.eval(), batch),
                                 batch if method.a2d.attention_distribution == "rows" else None)
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
    MethodConfig(name="a2d", a2d_mode="faithful-released"),
    MethodConfig(name="a2d", attention_distribution="rows", aam="free", attention_reduction="channel_mean"),
    MethodConfig(name="pkd", pkd_mapping="skip"),
    MethodConfig(name="alp_kd"),
    MethodConfig(name="minilm", relation_heads=4),
], ids=["word_kd", "selective_kd", "a2d_faithful", "a2d_corrected", "a2d_layerwise", "a2d_encoder_only",
        "a2d_faithful_released", "a2d_free_aam_rows", "pkd", "alp_kd", "minilm"])
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


def test_any_temperature_goes_with_either_kd_loss():
    for mode in A2D_PRESETS:
        assert MethodConfig(name="a2d", a2d_mode=mode, temperature=2.0).temperature == 2.0


def a2d_step(method: MethodConfig, seed: int = 0):
    """One A2D forward and backward pass of a fixed student, teacher and batch in float64: the loss,
    its terms and every gradient of the engine's parameters (student and AAM)."""
    batch = target_batch()
    student = tiny_model(seed=1, heads=2).double().eval()
    teacher = tiny_model(seed=2, heads=4, d_model=32, encoder_layers=3, decoder_layers=3).double().eval()
    torch.manual_seed(seed)  # the AAM's initial weights
    module = DistillationModule(student, method, teacher.cfg).double()
    loss, terms = module(batch, FrozenTeacher(teacher, method), epoch=3, step=7)
    loss.backward()
    return loss, terms, {name: p.grad for name, p in module.named_parameters() if p.grad is not None}


def test_each_factor_set_by_hand_gives_its_recipe_to_the_last_digit():
    """A recipe is nothing but its factors: faithful-described with every factor set to the corrected
    recipe's values is the corrected recipe, and with the decoder types off the released one, to the bit."""
    for mode in ("corrected", "faithful-released"):
        by_hand = {k: v for k, v in A2D_PRESETS[mode].items() if v != A2D_PRESETS["faithful-described"][k]}
        loss, terms, grads = a2d_step(MethodConfig(name="a2d", a2d_mode=mode))
        loss_by_hand, terms_by_hand, grads_by_hand = a2d_step(MethodConfig(name="a2d", **by_hand))
        assert torch.equal(loss, loss_by_hand) and terms.logged() == terms_by_hand.logged()
        assert grads.keys() == grads_by_hand.keys() and all(torch.equal(grads[k], grads_by_hand[k]) for k in grads)


# What a2d computed at commit e7dd844, before the recipes were factored, for a2d_step's float64 batch
# (its `a2d_mode: faithful` and `corrected`): the loss and the squared norm of three gradients.
EARLIER = {
    "faithful-described": ("0x1.b8814984bdcadp-2", {
        "student.encoder_layers.0.self_attn.q_proj.weight": "0x1.5199094aba8bcp-12",
        "student.decoder_layers.1.cross_attn.k_proj.weight": "0x1.88ed0068cd5bcp-14",
        "student.decoder_layers.0.self_attn.q_proj.weight": "0x1.6d7a4461b0555p-13",
        "alignment.mixers.encoder_self.conv.weight": "0x1.add55a83e32c7p-13"}),
    "corrected": ("0x1.af285bd7f9cd3p+1", {
        "student.encoder_layers.0.self_attn.q_proj.weight": "0x1.cb656598582c6p-4",
        "student.decoder_layers.1.cross_attn.k_proj.weight": "0x1.94941011a6d26p-6",
        "student.decoder_layers.0.self_attn.q_proj.weight": "0x1.245a142bf3ff2p-6",
        "alignment.mixers.encoder_self.logits": "0x1.22c589688d148p-11"}),
}


@pytest.mark.parametrize("preset", EARLIER)
def test_each_preset_computes_what_the_earlier_mode_computed(preset):
    """Equal to the bit on the machine that pinned them (float64 kernels of other CPUs may round the
    last digits otherwise, hence 1e-12): a changed formula moves them far more."""
    loss, _, grads = a2d_step(MethodConfig(name="a2d", a2d_mode=preset))
    expected_loss, expected_norms = EARLIER[preset]
    assert loss.item() == pytest.approx(float.fromhex(expected_loss), rel=1e-12)
    for name, norm in expected_norms.items():
        assert grads[name].pow(2).sum().item() == pytest.approx(float.fromhex(norm), rel=1e-12), name


def test_faithful_released_takes_no_gradient_from_the_decoder_maps():
    """As released, only encoder self-attention is aligned: the decoder's attention weights get the
    word term's gradient alone (that of beta 0), the encoder's more than that."""
    released = MethodConfig(name="a2d", a2d_mode="faithful-released")
    assert released.attention_types == ("encoder_self",) and released.weights == {"encoder_self": 1.0}
    _, terms, grads = a2d_step(released)
    _, _, word_only = a2d_step(MethodConfig(name="a2d", a2d_mode="faithful-released", beta=0.0))
    assert set(terms.attention_kl) == {"encoder_self"} and terms.attention > 0
    decoder = [k for k in grads if k.startswith("student.decoder_layers") and ("self_attn" in k or "cross_attn" in k)
               and ("q_proj" in k or "k_proj" in k)]
    assert len(decoder) == 16  # 2 layers x 2 attentions x (q, k) x (weight, bias)
    assert all(torch.equal(grads[k], word_only[k]) for k in decoder)
    encoder_query = "student.encoder_layers.0.self_attn.q_proj.weight"
    assert not torch.allclose(grads[encoder_query], word_only[encoder_query])


def test_labels_name_the_recipe_and_what_differs_from_it():
    assert MethodConfig(name="a2d").label == "a2d faithful-described"
    assert MethodConfig(name="a2d", a2d_mode="corrected", layerwise=True).label == "a2d corrected layerwise"
    assert (MethodConfig(name="a2d", aam="normalised", decoder_self=0.0).label
            == "a2d faithful-described decoder_self=0 aam=normalised")
    assert MethodConfig(name="a2d", a2d_mode="faithful-released", aam="free").label == "a2d faithful-released"


def test_row_masks_by_hand():
    """Queries: real source tokens (encoder) and real target positions (decoder); keys: real source
    tokens (encoder self, cross), the causal prefix (decoder self)."""
    from a2d.data import Batch

    P = 0  # PAD_ID
    src, prev = torch.tensor([[5, 6, 7], [5, 6, P]]), torch.tensor([[2, 8, 9], [2, 8, P]])
    target = torch.tensor([[8, 9, 3], [8, 3, P]])
    masks = attention_row_masks(Batch(src, prev, target, target != P))
    real_source = [[True, True, True], [True, True, False]]
    assert masks["encoder_self"].queries.tolist() == real_source
    assert masks["encoder_self"].keys.expand(2, 1, 3, 3)[1, 0].tolist() == [[True, True, False]] * 3
    assert masks["decoder_cross"].keys.expand(2, 1, 3, 3)[1, 0].tolist() == [[True, True, False]] * 3
    assert masks["decoder_self"].queries.tolist() == [[True, True, True], [True, True, False]]
    assert masks["decoder_self"].keys.expand(2, 1, 3, 3)[0, 0].tolist() == [[True, False, False], [True, True, False],
                                                                            [True, True, True]]
