"""Distillation methods: loss invariants and hand-computed values (issue: every method as a switch)."""

import math

import pytest
import torch

from a2d import losses
from a2d.align import AttentionAlignment
from a2d.data import Batch
from a2d.distill import DistillationModule, MethodConfig, teacher_forward
from a2d.model import PAD_ID
from conftest import random_batch, tiny_model


def make_batch():
    src, prev = random_batch()
    target = torch.cat([prev[:, 1:], torch.full((3, 1), 3)], dim=1).masked_fill(prev == PAD_ID, PAD_ID)
    return Batch(src, prev, target, target != PAD_ID)


def model_maps(model, batch):
    return dict(model(batch.src, batch.prev, return_attention=True).attention.items())


def test_word_kd_by_hand():
    student = torch.tensor([[[0.0, math.log(3.0)]]])  # p = (1/4, 3/4) at tau = 1
    teacher = torch.tensor([[[math.log(2.0), 0.0]]])  # q = (2/3, 1/3)
    tau = 2.0
    p = [math.exp(0.0 / tau), math.exp(math.log(3.0) / tau)]
    q = [math.exp(math.log(2.0) / tau), math.exp(0.0 / tau)]
    p, q = [x / sum(p) for x in p], [x / sum(q) for x in q]
    expected = tau ** 2 * sum(qi * math.log(qi / pi) for qi, pi in zip(q, p))
    got = losses.word_kd(student, teacher, torch.tensor([[True]]), tau)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    assert losses.word_kd(teacher, teacher, torch.tensor([[True]]), tau).item() == pytest.approx(0.0, abs=1e-7)


def test_selective_kd_keeps_the_hardest_tokens():
    # Student NLL of the gold token: position 0 easy, 1 hard, 2 medium, 3 padding.
    logits = torch.tensor([[[5.0, 0.0], [0.0, 5.0], [1.0, 0.0], [0.0, 9.0]]])
    target = torch.tensor([[0, 0, 0, 0]])
    mask = torch.tensor([[True, True, True, False]])
    assert losses.hardest_tokens(logits, target, mask, 1 / 3).tolist() == [[False, True, False, False]]
    assert losses.hardest_tokens(logits, target, mask, 2 / 3).tolist() == [[False, True, True, False]]
    assert losses.hardest_tokens(logits, target, mask, 1.0).tolist() == [[True, True, True, False]]


def test_every_kl_is_non_negative():
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        a = torch.softmax(torch.randn(2, 3, 4, 5, generator=g), -1)
        b = torch.softmax(torch.randn(2, 3, 4, 5, generator=g), -1)
        assert losses.flattened_map_kl(a, b) >= 0
        assert losses.rowwise_attention_kl(a, b, torch.ones(2, 4, dtype=torch.bool)) >= 0


def identity_aligned(maps):
    """A normalised AAM set to the identity, applied to `maps` (same channel counts)."""
    model = tiny_model()
    aam = AttentionAlignment(model.cfg, model.cfg, normalised=True)
    with torch.no_grad():
        for mixer in aam.mixers.values():
            mixer.logits.copy_(1e4 * torch.eye(mixer.logits.size(0)))
    return aam(maps)


def corrected(aligned, teacher_maps, batch, logits):
    query_masks = {"encoder_self": batch.src != PAD_ID, "decoder_self": batch.mask, "decoder_cross": batch.mask}
    return losses.a2d_corrected_loss(logits, logits, batch.target, batch.mask, aligned, teacher_maps, query_masks,
                                     weights={"encoder_self": 1.0, "decoder_self": 0.5, "decoder_cross": 0.5},
                                     alpha=0.5, epsilon=0.1, temperature=1.0, decay=1.0)


def test_corrected_attention_term_is_zero_for_equal_maps_and_identity_aam():
    batch = make_batch()
    maps = model_maps(tiny_model(seed=3), batch)
    logits = torch.randn(3, 5, 50)
    assert corrected(identity_aligned(maps), maps, batch, logits)["attention"].item() == pytest.approx(0.0, abs=1e-6)


def test_masked_positions_do_not_change_the_corrected_loss():
    batch = make_batch()
    student, teacher = model_maps(tiny_model(seed=1), batch), model_maps(tiny_model(seed=2), batch)
    logits = torch.randn(3, 5, 50)
    aam = AttentionAlignment(tiny_model().cfg, tiny_model().cfg, normalised=True)
    base = corrected(aam(student), teacher, batch, logits)["attention"]
    # Scribble over the rows of padded queries, on both sides.
    rows = {"encoder_self": batch.src == PAD_ID, "decoder_self": ~batch.mask, "decoder_cross": ~batch.mask}
    scribbled_s = {k: v.masked_fill(rows[k][:, None, :, None], 0.37) for k, v in student.items()}
    scribbled_t = {k: v.masked_fill(rows[k][:, None, :, None], 0.11) for k, v in teacher.items()}
    assert rows["encoder_self"].any() and rows["decoder_self"].any()
    torch.testing.assert_close(corrected(aam(scribbled_s), scribbled_t, batch, logits)["attention"], base)


def attention_term(aligned, teacher_maps, batch, logits, normalised):
    if normalised:
        return corrected(aligned, teacher_maps, batch, logits)["attention"]
    return losses.a2d_faithful_loss(logits, logits, batch.target, batch.mask, aligned, teacher_maps,
                                    weights={"encoder_self": 1.0, "decoder_self": 0.5, "decoder_cross": 0.5},
                                    alpha=0.5, epsilon=0.1, decay=1.0)["attention"]


@pytest.mark.parametrize("normalised", [False, True], ids=["faithful", "corrected"])
def test_permuting_student_heads_with_the_aam_columns_leaves_the_loss_unchanged(normalised):
    batch = make_batch()
    student, teacher = model_maps(tiny_model(seed=1), batch), model_maps(tiny_model(seed=2), batch)
    logits = torch.randn(3, 5, 50)
    torch.manual_seed(0)
    aam = AttentionAlignment(tiny_model().cfg, tiny_model().cfg, normalised=normalised)
    if normalised:
        with torch.no_grad():
            for mixer in aam.mixers.values():
                mixer.logits.normal_()
    before = attention_term(aam(student), teacher, batch, logits, normalised)
    perm = torch.tensor([2, 0, 3, 1])  # the 2 layers x 2 heads of the student, shuffled
    permuted = {k: v[:, perm] for k, v in student.items()}
    assert attention_term(aam(permuted), teacher, batch, logits, normalised) != before  # the permutation matters...
    with torch.no_grad():
        for mixer in aam.mixers.values():
            weight = mixer.logits if normalised else mixer.conv.weight
            weight.copy_(weight[:, perm])
    # ...until the AAM's input columns are permuted the same way.
    torch.testing.assert_close(attention_term(aam(permuted), teacher, batch, logits, normalised), before)


def test_layerwise_a2d_equals_a2d_on_per_layer_means():
    batch = make_batch()
    student_model, teacher_model = tiny_model(seed=1, heads=2), tiny_model(seed=2, heads=4, d_model=32)
    method = MethodConfig(name="a2d", layerwise=True)
    module = DistillationModule(student_model, method, teacher_model.cfg)
    aligned, teacher_maps = module.aligned_maps(student_model(batch.src, batch.prev, return_attention=True),
                                                teacher_model(batch.src, batch.prev, return_attention=True))
    # The same, by hand: per-layer means, then the layer-level mixers.
    s, t = model_maps(student_model, batch), model_maps(teacher_model, batch)
    for name in aligned:
        means_s = s[name].view(3, 2, 2, *s[name].shape[2:]).mean(2)
        means_t = t[name].view(3, 2, 4, *t[name].shape[2:]).mean(2)
        torch.testing.assert_close(teacher_maps[name], means_t)
        torch.testing.assert_close(aligned[name], module.alignment.mixers[name](means_s))
        assert aligned[name].shape[1] == 2  # teacher layers


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
    batch = make_batch()
    teacher.train()
    loss, terms = module(batch, teacher_forward(teacher, batch, method), epoch=2, step=5)
    loss.backward()
    assert torch.isfinite(loss) and terms["kd"] > 0
    assert all(p.grad is None for p in teacher.parameters())
    assert student.decoder_layers[0].ffn.fc1.weight.grad.abs().sum() > 0
    if module.alignment is not None:
        assert set(module.alignment.mixers) == set(method.attention_types)
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.alignment.parameters())
    if method.needs_hidden:
        assert terms["feature"] > 0
    if method.name in ("pkd", "alp_kd"):
        assert module.projection.weight.grad.abs().sum() > 0


def test_invalid_method_settings_are_refused():
    with pytest.raises(ValueError, match="at least one attention type"):
        MethodConfig(name="a2d", encoder_self=0, decoder_self=0, decoder_cross=0)
    with pytest.raises(ValueError, match="a2d_mode"):
        MethodConfig(name="a2d", a2d_mode="fixed")
    with pytest.raises(ValueError, match="selective_fraction"):
        MethodConfig(name="selective_kd", selective_fraction=0)


def test_pkd_layer_maps():
    assert losses.pkd_layer_map(3, 6, "skip") == [1, 3, 5]
    assert losses.pkd_layer_map(3, 6, "last") == [3, 4, 5]
    assert losses.pkd_layer_map(1, 6, "skip") == [5]
    with pytest.raises(ValueError, match="only 2"):
        losses.pkd_layer_map(3, 2, "skip")


def test_pkd_loss_by_hand():
    # One position, 2-d states: student (3, 4) -> (0.6, 0.8); teacher layer 1 (1, 0).
    student = [torch.tensor([[[3.0, 4.0]]])]
    teacher = [torch.tensor([[[0.0, 5.0]]]), torch.tensor([[[2.0, 0.0]]])]
    mask = torch.tensor([[True]])
    assert losses.pkd_loss(student, teacher, [1], mask).item() == pytest.approx((0.6 - 1) ** 2 + 0.8 ** 2)
    assert losses.pkd_loss(student, teacher, [0], mask).item() == pytest.approx(0.6 ** 2 + (0.8 - 1) ** 2)
    assert losses.pkd_loss([teacher[1] * 7], teacher, [1], mask).item() == pytest.approx(0.0, abs=1e-7)


def test_alp_kd_loss_by_hand():
    # After the parameter-free LayerNorm: s = (1, 0) -> (1, -1); t1 = (2, 0) -> (1, -1); t2 = (0, 2) -> (-1, 1)
    # (up to LayerNorm's eps). Weights softmax(s.t / sqrt(2)) = softmax(sqrt(2), -sqrt(2)).
    s = torch.tensor([[[1.0, 0.0]]])
    t1, t2 = torch.tensor([[[2.0, 0.0]]]), torch.tensor([[[0.0, 2.0]]])
    w1 = math.exp(math.sqrt(2)) / (math.exp(math.sqrt(2)) + math.exp(-math.sqrt(2)))
    target = 2 * w1 - 1  # the target is target * (1, -1)
    expected = ((1 - target) ** 2 + (-1 + target) ** 2) / 2  # mean over D = 2
    got = losses.alp_kd_loss([s], [t1, t2], torch.tensor([[True]]))
    assert got.item() == pytest.approx(expected, rel=1e-3)
    # Scale-free: multiplying the states changes nothing.
    assert losses.alp_kd_loss([s * 40], [t1 * 9, t2 * 9], torch.tensor([[True]])).item() == pytest.approx(got.item(), rel=1e-3)


def test_pkd_student_deeper_than_teacher_fails_at_config_time():
    from pathlib import Path

    import yaml

    from a2d.config import ConfigError, validate_config

    config = yaml.safe_load((Path(__file__).parent / "configs" / "tiny.yaml").read_text())
    config["students"]["deep"] = {"model": {"encoder_layers": 3, "decoder_layers": 1, "d_model": 16, "heads": 2},
                                  "method": {"name": "pkd"}}
    with pytest.raises(ConfigError, match="students.deep.method: pkd: PKD maps each of 3 student layers .* only 2"):
        validate_config(config)


def test_minilm_relations_by_hand_and_invariants():
    # One relation head, two positions, 1-d vectors: relation row i = softmax(x_i * x_j).
    x = torch.tensor([[[1.0], [2.0]]])
    allowed = torch.ones(1, 1, 2, 2, dtype=torch.bool)
    got = losses.relation_log_probs(x, 1, allowed).exp()
    row0 = [math.exp(1.0), math.exp(2.0)]
    assert got[0, 0, 0].tolist() == pytest.approx([v / sum(row0) for v in row0], rel=1e-6)
    causal = torch.ones(2, 2, dtype=torch.bool).tril()
    assert losses.relation_log_probs(x, 1, causal).exp()[0, 0, 0].tolist() == pytest.approx([1.0, 0.0])
    # KL is zero for identical vectors, positive otherwise, even when widths differ.
    g = torch.Generator().manual_seed(0)
    qkv = tuple(torch.randn(2, 5, 8, generator=g) for _ in range(3))
    wide = tuple(torch.randn(2, 5, 16, generator=g) for _ in range(3))
    rows = torch.ones(2, 5, dtype=torch.bool)
    everything = torch.ones(1, 1, 5, 5, dtype=torch.bool)
    assert losses.minilm_relation_loss(qkv, qkv, 4, everything, rows).item() == pytest.approx(0.0, abs=1e-5)
    assert losses.minilm_relation_loss(qkv, wide, 4, everything, rows).item() > 0
    assert losses.minilm_relation_loss(qkv, wide, 4, causal.new_ones(5, 5).tril(), rows).item() > 0


def test_self_attention_vectors_match_the_layer():
    """The re-projected last-layer queries give back that layer's attention map."""
    for pre_norm in (False, True):
        model = tiny_model(pre_norm=pre_norm)
        src, prev = random_batch()
        out = model(src, prev, return_attention=True, return_hidden=True)
        q, k, _ = model.self_attention_vectors("encoder", out.hidden.encoder[-2])
        B, S, D = q.shape
        split = lambda t: t.view(B, S, 2, D // 2).transpose(1, 2)  # noqa: E731
        scores = split(q) @ split(k).transpose(-2, -1) / math.sqrt(D // 2)
        scores = scores.masked_fill(~(src != PAD_ID)[:, None, None, :], float("-inf"))
        torch.testing.assert_close(torch.softmax(scores, -1), out.attention.encoder_self[:, -2:], rtol=1e-4, atol=1e-6)


def test_corrected_a2d_loss_by_hand():
    """One type, one head, one real query row over 2 keys plus a padded row; C = 1, V = 2."""
    student = {"decoder_cross": torch.tensor([[[[0.25, 0.75], [0.5, 0.5]]]])}  # (B=1, C=1, Q=2, K=2)
    teacher = {"decoder_cross": torch.tensor([[[[0.5, 0.5], [0.9, 0.1]]]])}
    query_mask = {"decoder_cross": torch.tensor([[True, False]])}  # the second row is padding
    logits = torch.tensor([[[0.0, 1.0], [0.0, 0.0]]])
    target, mask = torch.tensor([[1, 0]]), torch.tensor([[True, False]])
    terms = losses.a2d_corrected_loss(logits, logits, target, mask, student, teacher, query_mask,
                                      weights={"decoder_cross": 0.5}, alpha=0.5, epsilon=0.0, temperature=1.0,
                                      decay=0.9)
    kl_row = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert terms["attention"].item() == pytest.approx(0.9 * 0.5 * kl_row, rel=1e-5)
    nll = -math.log(math.exp(1) / (1 + math.exp(1)))
    assert terms["word"].item() == pytest.approx(0.5 * nll, rel=1e-5)  # KD term is 0: student = teacher


def test_decay_follows_the_configured_unit():
    batch = make_batch()
    student, teacher = tiny_model(seed=1, encoder_layers=1, decoder_layers=1), tiny_model(seed=2)
    for unit, changes_with in (("epoch", "epoch"), ("step", "step")):
        torch.manual_seed(0)
        module = DistillationModule(student, MethodConfig(name="a2d", gamma=0.5, decay_every=unit), teacher.cfg)
        out = teacher_forward(teacher, batch, module.method)
        base = module(batch, out, epoch=1, step=1)[1]["attention"]
        later_epoch = module(batch, out, epoch=3, step=1)[1]["attention"]
        later_step = module(batch, out, epoch=1, step=3)[1]["attention"]
        moved, kept = (later_epoch, later_step) if changes_with == "epoch" else (later_step, later_epoch)
        assert moved == pytest.approx(base * 0.25, rel=1e-5) and kept == pytest.approx(base, rel=1e-6)


def test_faithful_a2d_refuses_a_temperature():
    with pytest.raises(ValueError, match="faithful A2D has no temperature"):
        MethodConfig(name="a2d", temperature=2.0)
    MethodConfig(name="a2d", a2d_mode="corrected", temperature=2.0)
