"""The attention alignment module (AAM) and its streamed loss: shapes, rows kept distributions, the
KLs and their gradients equal to the plain formulas, teacher maps not kept, channel bookkeeping."""

import gc
import weakref

import pytest
import torch
from conftest import (a2d_attention_term, attention_kls, attention_maps, layer_maps, reference_attention_kls,
                      row_masks, target_batch, tiny_model)

from a2d import losses
from a2d.align import AttentionAlignment
from a2d.model import AttentionMaps


def test_aam_maps_student_channels_to_teacher_channels():
    student, teacher = tiny_model(encoder_layers=1, decoder_layers=2, heads=2), tiny_model(encoder_layers=3, decoder_layers=3, heads=4, d_model=32)
    for normalised in (False, True):
        aam = AttentionAlignment(student.cfg, teacher.cfg, normalised=normalised)
        assert aam.mixers["encoder_self"].weights.shape == (12, 2)
        assert aam.mixers["decoder_self"].weights.shape == (12, 4)
        assert aam.mixers["decoder_cross"].weights.shape == (12, 4)
    # The normalised mix is convex, so it keeps every row a distribution.
    torch.testing.assert_close(aam.mixers["decoder_cross"].weights.sum(-1), torch.ones(12))


def models_and_maps(dtype=torch.float64):
    """A student (2 + 2 layers, 2 heads) and a wider, deeper teacher (3 + 3, 4 heads); their maps."""
    batch = target_batch()
    student = tiny_model(seed=1, heads=2).to(dtype)
    teacher = tiny_model(seed=2, heads=4, d_model=32, encoder_layers=3, decoder_layers=3).to(dtype)
    return batch, student, teacher, layer_maps(student, batch), layer_maps(teacher, batch)


@pytest.mark.parametrize("normalised,rows,reduction,layerwise,chunk", [
    (False, False, "sum", False, None), (True, True, "channel_mean", False, None),
    (False, False, "sum", True, None), (True, True, "channel_mean", True, None),
    (False, False, "sum", False, 1), (True, True, "channel_mean", False, 1),
    (False, True, "sum", False, None), (False, True, "channel_mean", False, 1),
    (True, False, "sum", False, None), (True, False, "channel_mean", True, None),
], ids=["faithful", "corrected", "faithful-layerwise", "corrected-layerwise", "faithful-one-sentence-at-a-time",
        "corrected-one-sentence-at-a-time", "free-aam-rows", "free-aam-rows-channel-mean-one-sentence",
        "normalised-aam-flattened", "normalised-aam-flattened-channel-mean-layerwise"])
def test_streamed_kls_equal_the_plain_formulas_in_value_and_gradient(normalised, rows, reduction, layerwise, chunk,
                                                                     monkeypatch):
    """Float64, every combination of the AAM, the distribution and the reduction: the KL of every
    type, and the gradients it gives the student's weights (through its maps) and the AAM, equal
    those of the whole-tensor formulas to 1e-12."""
    if chunk:
        monkeypatch.setattr(losses, "CHUNK_ELEMENTS", chunk)
    batch, student, teacher, s_maps, t_maps = models_and_maps()
    torch.manual_seed(0)
    aam = AttentionAlignment(student.cfg, teacher.cfg, normalised=normalised, layerwise=layerwise,
                             reduction=reduction).double()
    if normalised:
        with torch.no_grad():
            for mixer in aam.mixers.values():
                mixer.logits.normal_()
    masks = row_masks(batch) if rows else None
    streamed = attention_kls(aam, s_maps, t_maps, batch if rows else None)
    stack = lambda maps: {name: torch.cat([aam.head_mean(p) for p in layers], 1)  # noqa: E731
                          for name, layers in maps.items()}
    plain = reference_attention_kls(aam, stack(s_maps), stack(t_maps), masks)
    weights = torch.randn(3, dtype=torch.float64)  # any use of the three KLs downstream
    parameters = [*student.parameters(), *aam.parameters()]

    def gradients(kls):
        loss = sum(w * kl for w, kl in zip(weights, kls.values()))
        return torch.autograd.grad(loss, parameters, retain_graph=True, allow_unused=True)

    for name in plain:
        torch.testing.assert_close(streamed[name], plain[name], rtol=1e-12, atol=1e-12)
    for got, expected in zip(gradients(streamed), gradients(plain), strict=True):
        if expected is None:
            assert got is None
        else:
            torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    assert any(g is not None and g.abs().sum() > 0 for g in gradients(streamed)[:-len(list(aam.parameters()))])


def test_the_loss_keeps_none_of_the_teachers_maps():
    """Each layer the teacher hands over can be freed as soon as the loss has taken it."""
    batch, student, teacher, s_maps, t_maps = models_and_maps(torch.float32)
    aam = AttentionAlignment(student.cfg, teacher.cfg)
    loss = aam(s_maps)
    refs = []
    for name, layers in t_maps.items():
        for probs in layers:
            copy = probs.clone()
            refs.append(weakref.ref(copy))
            loss.add(name, copy)
            del copy
    del t_maps
    gc.collect()
    assert all(ref() is None for ref in refs)
    assert all(torch.isfinite(kl) for kl in loss.kls().values())


def test_a_teacher_that_gives_too_few_layers_is_an_error():
    batch, student, teacher, s_maps, t_maps = models_and_maps(torch.float32)
    loss = AttentionAlignment(student.cfg, teacher.cfg)(s_maps)
    for probs in t_maps.encoder_self[:2]:
        loss.add("encoder_self", probs)
    with pytest.raises(ValueError, match="encoder_self: the teacher gave 8 of its 12 attention channels"):
        loss.kls()


@pytest.mark.parametrize("normalised", [False, True], ids=["faithful", "corrected"])
def test_permuting_student_heads_with_the_aam_columns_leaves_the_loss_unchanged(normalised):
    batch = target_batch()
    student, teacher = attention_maps(tiny_model(seed=1), batch), layer_maps(tiny_model(seed=2), batch)
    torch.manual_seed(0)
    aam = AttentionAlignment(tiny_model().cfg, tiny_model().cfg, normalised=normalised)
    if normalised:
        with torch.no_grad():
            for mixer in aam.mixers.values():
                mixer.logits.normal_()
    as_layers = lambda stacked: AttentionMaps(**{k: list(v.split(2, dim=1)) for k, v in stacked.items()})  # noqa: E731
    before = a2d_attention_term(aam, as_layers(student), teacher, batch, rows=normalised)
    perm = torch.tensor([2, 0, 3, 1])  # the 2 layers x 2 heads of the student, shuffled
    permuted = as_layers({k: v[:, perm] for k, v in student.items()})
    assert a2d_attention_term(aam, permuted, teacher, batch, rows=normalised) != before  # the permutation matters...
    with torch.no_grad():
        for mixer in aam.mixers.values():
            weight = mixer.logits if normalised else mixer.conv.weight
            weight.copy_(weight[:, perm])
    # ...until the AAM's input columns are permuted the same way.
    torch.testing.assert_close(a2d_attention_term(aam, permuted, teacher, batch, rows=normalised), before)
