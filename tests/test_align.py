"""The attention alignment module (AAM): shapes, rows kept distributions, channel bookkeeping."""

import pytest
import torch
from conftest import a2d_attention_term, attention_maps, random_batch, target_batch, tiny_model

from a2d.align import AttentionAlignment


def test_aam_maps_student_channels_to_teacher_channels():
    student, teacher = tiny_model(encoder_layers=1, decoder_layers=2, heads=2), tiny_model(encoder_layers=3, decoder_layers=3, heads=4, d_model=32)
    src, prev = random_batch()
    maps = dict(student(src, prev, return_attention=True).attention.items())
    for normalised in (False, True):
        aam = AttentionAlignment(student.cfg, teacher.cfg, normalised=normalised)
        aligned = aam(maps)
        assert aligned["encoder_self"].shape == (3, 12, 7, 7)
        assert aligned["decoder_self"].shape == (3, 12, 5, 5)
        assert aligned["decoder_cross"].shape == (3, 12, 5, 7)
        assert aam.mixers["encoder_self"].weights.shape == (12, 2)
    # The normalised mix keeps every row a distribution.
    torch.testing.assert_close(aligned["decoder_cross"].sum(-1), torch.ones(3, 12, 5))


@pytest.mark.parametrize("normalised", [False, True], ids=["faithful", "corrected"])
def test_permuting_student_heads_with_the_aam_columns_leaves_the_loss_unchanged(normalised):
    batch = target_batch()
    student, teacher = attention_maps(tiny_model(seed=1), batch), attention_maps(tiny_model(seed=2), batch)
    logits = torch.randn(3, 5, 50)
    torch.manual_seed(0)
    aam = AttentionAlignment(tiny_model().cfg, tiny_model().cfg, normalised=normalised)
    if normalised:
        with torch.no_grad():
            for mixer in aam.mixers.values():
                mixer.logits.normal_()
    before = a2d_attention_term(aam(student), teacher, batch, logits, normalised)
    perm = torch.tensor([2, 0, 3, 1])  # the 2 layers x 2 heads of the student, shuffled
    permuted = {k: v[:, perm] for k, v in student.items()}
    assert a2d_attention_term(aam(permuted), teacher, batch, logits, normalised) != before  # the permutation matters...
    with torch.no_grad():
        for mixer in aam.mixers.values():
            weight = mixer.logits if normalised else mixer.conv.weight
            weight.copy_(weight[:, perm])
    # ...until the AAM's input columns are permuted the same way.
    torch.testing.assert_close(a2d_attention_term(aam(permuted), teacher, batch, logits, normalised), before)
