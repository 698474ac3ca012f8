"""Loss functions against hand-computed values and their invariants (method doc, sections 3-6)."""

import math

import pytest
import torch
from conftest import a2d_attention_term, layer_maps, target_batch, tiny_model

from a2d import losses
from a2d.align import AttentionAlignment
from a2d.config import pkd_layer_map
from a2d.model import PAD_ID, AttentionMaps, DeferredLogits


def test_label_smoothed_nll_by_hand():
    logits = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])  # B=1, T=2, V=3
    target = torch.tensor([[0, 1]])
    mask = torch.tensor([[True, False]])  # second position is padding
    ls, nll = losses.label_smoothed_nll(logits, target, mask, epsilon=0.1)
    z = math.log(math.exp(2) + 2)
    lp = [2 - z, -z, -z]
    eps_i = 0.1 / 2
    expected = (1 - 0.1 - eps_i) * -lp[0] + eps_i * -sum(lp)
    assert nll.item() == pytest.approx(-lp[0], rel=1e-6)
    assert ls.item() == pytest.approx(expected, rel=1e-6)


def test_word_level_cross_entropy_by_hand():
    student = torch.tensor([[[0.0, math.log(3.0)]]])  # p = (1/4, 3/4)
    teacher = torch.tensor([[[math.log(2.0), 0.0]]])  # q = (2/3, 1/3)
    w = losses.word_level_loss(student, teacher, torch.tensor([[1]]), torch.tensor([[True]]), alpha=1.0, epsilon=0.0,
                               kd="cross_entropy")
    expected = -(2 / 3 * math.log(1 / 4) + 1 / 3 * math.log(3 / 4))
    assert w.kd.item() == pytest.approx(expected, rel=1e-6) and w.word.item() == pytest.approx(expected, rel=1e-6)
    assert w.nll.item() == pytest.approx(-math.log(3 / 4), rel=1e-6)


def plain_word_loss(student, teacher, target, mask, kd_mask, alpha, epsilon, temperature, kd):
    """(1 - alpha) * label-smoothed CE + alpha * KD, written plainly, for autograd to differentiate."""
    lprobs = torch.log_softmax(student, -1)
    nll = -lprobs.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    eps_i = epsilon / (student.size(-1) - 1)
    ls = ((1 - epsilon - eps_i) * nll - eps_i * lprobs.sum(-1))[mask].sum()
    q = torch.softmax(teacher / temperature, -1)
    log_p = torch.log_softmax(student / temperature, -1)
    if kd == "cross_entropy":
        kd_value = -(q * log_p).sum(-1)[kd_mask].sum()
    else:
        kd_value = temperature ** 2 * (q * (torch.log_softmax(teacher / temperature, -1) - log_p)).sum(-1)[kd_mask].sum()
    return (1 - alpha) * ls + alpha * kd_value, nll[mask].sum(), ls, kd_value


@pytest.mark.parametrize("kd,temperature,chunk", [("kl", 1.0, None), ("kl", 2.0, 14), ("cross_entropy", 1.0, 7),
                                                  ("cross_entropy", 2.0, None)])
def test_word_level_loss_equals_the_plain_formula_in_value_and_gradient(kd, temperature, chunk, monkeypatch):
    """In float64, in one piece and (chunk: elements per piece) in pieces of 1-2 tokens; KD on a subset."""
    if chunk:
        monkeypatch.setattr(losses, "WORD_PIECE_ELEMENTS", chunk)
    torch.manual_seed(0)
    student = torch.randn(2, 3, 7, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(2, 3, 7, dtype=torch.float64)
    target = torch.randint(0, 7, (2, 3))
    mask = torch.tensor([[True, True, False], [True, False, False]])
    kd_mask = torch.tensor([[False, True, False], [True, False, False]])
    downstream = torch.randn(2, 3, 7, dtype=torch.float64)  # another use of the logits as well

    def gradient(loss):
        student.grad = None
        (loss + (student * downstream).sum()).backward()
        return student.grad.clone()

    settings = dict(alpha=0.3, epsilon=0.1, temperature=temperature, kd=kd)
    fused = losses.word_level_loss(student, teacher, target, mask, kd_mask=kd_mask, **settings)
    word, nll, ls, kd_value = plain_word_loss(student, teacher, target, mask, kd_mask, **settings)
    for got, expected in ((fused.word, word), (fused.nll, nll), (fused.ls, ls), (fused.kd, kd_value)):
        torch.testing.assert_close(got, expected.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gradient(fused.word), gradient(word), rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(
        lambda s: losses.word_level_loss(s, teacher, target, mask, kd_mask=kd_mask, **settings).word, (student,))


@pytest.mark.parametrize("chunk", [None, 14])
def test_deferred_teacher_logits_give_the_loss_of_the_whole_tensor(chunk, monkeypatch):
    """A frozen teacher's logits computed a few rows at a time, in float64, in one piece and in pieces."""
    if chunk:
        monkeypatch.setattr(losses, "WORD_PIECE_ELEMENTS", chunk)
    torch.manual_seed(2)
    student = torch.randn(2, 3, 7, dtype=torch.float64, requires_grad=True)
    decoder_output, weight = torch.randn(2, 3, 5, dtype=torch.float64), torch.randn(7, 5, dtype=torch.float64)
    target, mask = torch.randint(0, 7, (2, 3)), torch.tensor([[True, True, False], [True, True, True]])
    settings = dict(alpha=0.4, epsilon=0.1, temperature=2.0)
    deferred = losses.word_level_loss(student, DeferredLogits(decoder_output, weight), target, mask, **settings)
    whole = losses.word_level_loss(student, decoder_output @ weight.t(), target, mask, **settings)
    for name in ("word", "nll", "ls", "kd"):
        torch.testing.assert_close(getattr(deferred, name), getattr(whole, name), rtol=1e-12, atol=1e-12)
    grads = [torch.autograd.grad(w.word, student)[0] for w in (deferred, whole)]
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-12, atol=1e-12)


def test_word_level_loss_values_are_those_of_the_separate_formulas_to_the_bit():
    """fp32 training: the logged values do not move (label_smoothed_nll computes in fp32)."""
    torch.manual_seed(1)
    student, teacher = torch.randn(4, 9, 50), torch.randn(4, 9, 50)
    target, mask = torch.randint(0, 50, (4, 9)), torch.rand(4, 9) > 0.3
    ls, nll = losses.label_smoothed_nll(student, target, mask, 0.1)
    w = losses.word_level_loss(student, teacher, target, mask, alpha=0.5, epsilon=0.1)
    assert torch.equal(w.ls, ls) and torch.equal(w.nll, nll)


def test_flattened_kl_is_zero_for_equal_maps_and_positive_otherwise():
    maps = torch.softmax(torch.randn(2, 3, 4, 5), dim=-1)
    assert losses.flattened_map_kl(maps, maps)[0].item() == pytest.approx(0.0, abs=1e-6)
    assert losses.flattened_map_kl(maps.flip(-1), maps)[0].item() > 0


def test_faithful_a2d_loss_by_hand():
    """B=1, T=1, V=2, one head, 1x2 maps: every term written out with math.exp and math.log."""
    s_logits = torch.tensor([[[0.0, 1.0]]])
    t_logits = torch.tensor([[[1.0, 0.0]]])
    target, mask = torch.tensor([[1]]), torch.tensor([[True]])
    student = {"encoder_self": [0.2, 0.8], "decoder_self": [1.0, 0.0], "decoder_cross": [0.5, 0.5]}
    teacher = {"encoder_self": [0.6, 0.4], "decoder_self": [0.3, 0.7], "decoder_cross": [0.9, 0.1]}
    as_maps = lambda d: {k: torch.tensor(v).view(1, 1, 1, 2) for k, v in d.items()}  # noqa: E731
    alpha, eps, decay = 0.5, 0.1, 0.9 ** 2  # epoch 3, gamma 0.9, beta 1

    def log_softmax(xs):
        z = math.log(sum(math.exp(x) for x in xs))
        return [x - z for x in xs]

    lp, lq = log_softmax([0.0, 1.0]), log_softmax([1.0, 0.0])
    ls = (1 - eps - eps) * -lp[1] + eps * -(lp[0] + lp[1])  # eps/(V-1) = eps for V=2
    kd = -sum(math.exp(q) * p for q, p in zip(lq, lp))
    word = (1 - alpha) * ls + alpha * kd  # B*T_max = 1

    def kl(s, t):
        ls_, lt = log_softmax(s), log_softmax(t)  # second softmax over the teacher's probabilities
        return sum(math.exp(a) * (a - b) for a, b in zip(lt, ls_))

    att = decay * (kl(student["encoder_self"], teacher["encoder_self"])
                   + 0.5 * kl(student["decoder_self"], teacher["decoder_self"])
                   + 0.5 * kl(student["decoder_cross"], teacher["decoder_cross"]))
    kls = {name: losses.flattened_map_kl(s, t)[0] for (name, s), t in zip(as_maps(student).items(),
                                                                          as_maps(teacher).values())}
    terms = losses.a2d_loss(s_logits, t_logits, target, mask, kls,
                            weights={"encoder_self": 1.0, "decoder_self": 0.5, "decoder_cross": 0.5},
                            alpha=alpha, epsilon=eps, temperature=1.0, kd="cross_entropy", per_padded_position=True,
                            decay=losses.a2d_decay(1.0, 0.9, 3))
    assert terms.word.item() == pytest.approx(word, rel=1e-6)
    assert terms.attention.item() == pytest.approx(att, rel=1e-6)
    assert terms.total.item() == pytest.approx(word + att, rel=1e-6)


def test_a2d_decay():
    assert losses.a2d_decay(1.0, 0.9, 1) == 1.0
    assert losses.a2d_decay(2.0, 0.5, 3) == pytest.approx(0.5)


def identity_aam():
    """A normalised AAM set to the identity (same channel counts as tiny_model)."""
    model = tiny_model()
    aam = AttentionAlignment(model.cfg, model.cfg, normalised=True)
    with torch.no_grad():
        for mixer in aam.mixers.values():
            mixer.logits.copy_(1e4 * torch.eye(mixer.logits.size(0)))
    return aam


def test_word_kd_by_hand():
    student = torch.tensor([[[0.0, math.log(3.0)]]])  # p = (1/4, 3/4) at tau = 1
    teacher = torch.tensor([[[math.log(2.0), 0.0]]])  # q = (2/3, 1/3)
    tau = 2.0
    p = [math.exp(0.0 / tau), math.exp(math.log(3.0) / tau)]
    q = [math.exp(math.log(2.0) / tau), math.exp(0.0 / tau)]
    p, q = [x / sum(p) for x in p], [x / sum(q) for x in q]
    expected = tau ** 2 * sum(qi * math.log(qi / pi) for qi, pi in zip(q, p))
    kd = lambda s, t: losses.word_level_loss(s, t, torch.tensor([[0]]), torch.tensor([[True]]), alpha=1.0,  # noqa: E731
                                             epsilon=0.1, temperature=tau).kd
    assert kd(student, teacher).item() == pytest.approx(expected, rel=1e-6)
    assert kd(teacher, teacher).item() == pytest.approx(0.0, abs=1e-7)


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
        assert losses.flattened_map_kl(a, b)[0] >= 0
        assert losses.rowwise_attention_kl(a, b, torch.ones(2, 4, dtype=torch.bool))[0] >= 0
        free = torch.randn(2, 3, 4, 5, generator=g)
        assert losses.rowwise_softmax_kl(free, b, torch.ones(2, 4, dtype=torch.bool), torch.ones(1, 1, 1, 5).bool())[0] >= 0


def test_corrected_attention_term_is_zero_for_equal_maps_and_identity_aam():
    batch = target_batch()
    maps = layer_maps(tiny_model(seed=3), batch)
    assert a2d_attention_term(identity_aam(), maps, maps, batch, rows=True).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("normalised", [True, False], ids=["normalised-aam", "free-aam"])
def test_masked_positions_do_not_change_the_rowwise_loss(normalised):
    batch = target_batch()
    student, teacher = layer_maps(tiny_model(seed=1), batch), layer_maps(tiny_model(seed=2), batch)
    aam = AttentionAlignment(tiny_model().cfg, tiny_model().cfg, normalised=normalised)
    base = a2d_attention_term(aam, student, teacher, batch, rows=True)
    # Scribble over the rows of padded queries, on both sides.
    rows = {"encoder_self": batch.src == PAD_ID, "decoder_self": ~batch.mask, "decoder_cross": ~batch.mask}

    def scribbled(maps, value):
        return AttentionMaps(**{k: [m.masked_fill(rows[k][:, None, :, None], value) for m in layers]
                                for k, layers in maps.items()})

    assert rows["encoder_self"].any() and rows["decoder_self"].any()
    torch.testing.assert_close(a2d_attention_term(aam, scribbled(student, 0.37), scribbled(teacher, 0.11), batch,
                                                  rows=True), base)


def test_pkd_layer_maps():
    assert pkd_layer_map(3, 6, "skip") == [1, 3, 5]
    assert pkd_layer_map(3, 6, "last") == [3, 4, 5]
    assert pkd_layer_map(1, 6, "skip") == [5]
    with pytest.raises(ValueError, match="only 2"):
        pkd_layer_map(3, 2, "skip")


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


def test_corrected_a2d_loss_by_hand():
    """One type, one head, one real query row over 2 keys plus a padded row; C = 1, V = 2."""
    student = torch.tensor([[[[0.25, 0.75], [0.5, 0.5]]]])  # (B=1, C=1, Q=2, K=2)
    teacher = torch.tensor([[[[0.5, 0.5], [0.9, 0.1]]]])
    query_mask = torch.tensor([[True, False]])  # the second row is padding
    logits = torch.tensor([[[0.0, 1.0], [0.0, 0.0]]])
    target, mask = torch.tensor([[1, 0]]), torch.tensor([[True, False]])
    kls = {"decoder_cross": losses.rowwise_attention_kl(student, teacher, query_mask)[0]}
    terms = losses.a2d_loss(logits, logits, target, mask, kls, weights={"decoder_cross": 0.5}, alpha=0.5,
                            epsilon=0.0, temperature=1.0, kd="kl", per_padded_position=False, decay=0.9)
    kl_row = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert terms.attention.item() == pytest.approx(0.9 * 0.5 * kl_row, rel=1e-5)
    nll = -math.log(math.exp(1) / (1 + math.exp(1)))
    assert terms.word.item() == pytest.approx(0.5 * nll, rel=1e-5)  # KD term is 0: student = teacher



@pytest.mark.parametrize("normalised", [True, False], ids=["normalised-aam", "free-aam"])
def test_the_students_masked_keys_do_not_change_the_rowwise_loss(normalised):
    """Scribbling over the student's maps at keys a row may not attend to (padding; the future in
    decoder self-attention) changes nothing: wrong key masks would let them in."""
    batch = target_batch()
    student, teacher = layer_maps(tiny_model(seed=1), batch), layer_maps(tiny_model(seed=2), batch)
    torch.manual_seed(0)
    aam = AttentionAlignment(tiny_model().cfg, tiny_model().cfg, normalised=normalised)
    base = a2d_attention_term(aam, student, teacher, batch, rows=True)
    T = batch.prev.size(1)
    hidden = {"encoder_self": (batch.src == PAD_ID)[:, None, None, :],
              "decoder_cross": (batch.src == PAD_ID)[:, None, None, :],
              "decoder_self": torch.ones(T, T, dtype=torch.bool).triu(1)[None, None]}
    scribbled = AttentionMaps(**{k: [m.masked_fill(hidden[k], 0.45) for m in layers] for k, layers in student.items()})
    torch.testing.assert_close(a2d_attention_term(aam, scribbled, teacher, batch, rows=True), base)
    flattened = a2d_attention_term(aam, scribbled, teacher, batch, rows=False)
    assert flattened != a2d_attention_term(aam, student, teacher, batch, rows=False)  # the flattened KL sees them
