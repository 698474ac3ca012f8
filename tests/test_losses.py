import math

import pytest
import torch

from a2d import losses
from a2d.align import AttentionAlignment
from a2d.distill import DistillationModule, MethodConfig, teacher_forward
from conftest import random_batch, tiny_model


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


def test_soft_cross_entropy_by_hand():
    student = torch.tensor([[[0.0, math.log(3.0)]]])  # p = (1/4, 3/4)
    teacher = torch.tensor([[[math.log(2.0), 0.0]]])  # q = (2/3, 1/3)
    ce = losses.soft_cross_entropy(student, teacher, torch.tensor([[True]]))
    assert ce.item() == pytest.approx(-(2 / 3 * math.log(1 / 4) + 1 / 3 * math.log(3 / 4)), rel=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_kd_gradients_equal_those_of_the_plain_formula(temperature):
    """The fused cross-entropy node against log_softmax, product and sum, in float64."""
    torch.manual_seed(0)
    student = torch.randn(2, 3, 7, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(2, 3, 7, dtype=torch.float64)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    weights = torch.randn(2, 3, 7, dtype=torch.float64)  # a downstream use of the logits as well

    def plain():
        q = torch.softmax(teacher / temperature, -1)
        return -(q * torch.log_softmax(student / temperature, -1)).sum(-1)[mask].sum()

    def gradient(loss_fn):
        student.grad = None
        (loss_fn() + (student * weights).sum()).backward()
        return student.grad.clone()

    fused = lambda: losses.soft_cross_entropy(student, teacher, mask, temperature)  # noqa: E731
    torch.testing.assert_close(fused(), plain())
    torch.testing.assert_close(gradient(fused), gradient(plain))
    assert torch.autograd.gradcheck(lambda s: losses.soft_cross_entropy(s, teacher, mask, temperature), (student,))
    kl = losses.word_kd(student, teacher, mask, temperature)
    entropy = -(torch.softmax(teacher / temperature, -1) * torch.log_softmax(teacher / temperature, -1)).sum(-1)[mask].sum()
    torch.testing.assert_close(kl, temperature ** 2 * (plain() - entropy))


def test_flattened_kl_is_zero_for_equal_maps_and_positive_otherwise():
    maps = torch.softmax(torch.randn(2, 3, 4, 5), dim=-1)
    assert losses.flattened_map_kl(maps, maps).item() == pytest.approx(0.0, abs=1e-6)
    assert losses.flattened_map_kl(maps.flip(-1), maps).item() > 0


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
    terms = losses.a2d_faithful_loss(s_logits, t_logits, target, mask, as_maps(student), as_maps(teacher),
                                     weights={"encoder_self": 1.0, "decoder_self": 0.5, "decoder_cross": 0.5},
                                     alpha=alpha, epsilon=eps, decay=losses.a2d_decay(1.0, 0.9, 3))
    assert terms["word"].item() == pytest.approx(word, rel=1e-6)
    assert terms["attention"].item() == pytest.approx(att, rel=1e-6)
    assert terms["total"].item() == pytest.approx(word + att, rel=1e-6)


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


def test_gradients_reach_student_and_aam_not_teacher():
    from a2d.distill import Batch
    from a2d.model import PAD_ID

    student, teacher = tiny_model(seed=1, encoder_layers=1, decoder_layers=1), tiny_model(seed=2, heads=4)
    module = DistillationModule(student, MethodConfig(name="a2d"), teacher.cfg)
    src, prev = random_batch()
    target = torch.cat([prev[:, 1:], torch.full((3, 1), 3)], dim=1).masked_fill(prev == PAD_ID, PAD_ID)
    batch = Batch(src, prev, target, target != PAD_ID)
    teacher.train()  # even with dropout and grad-enabled parameters, the teacher must get no gradient
    loss, terms = module(batch, teacher_forward(teacher, batch, module.method), epoch=1, step=1)
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.alignment.parameters())
    assert student.encoder_layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0
    assert terms["attention"] > 0 and terms["kd"] > 0


def test_a2d_decay():
    assert losses.a2d_decay(1.0, 0.9, 1) == 1.0
    assert losses.a2d_decay(2.0, 0.5, 3) == pytest.approx(0.5)
