import math

import pytest
import torch
import torch.nn.functional as F
from conftest import random_batch, tiny_model

from a2d.config import ModelConfig
from a2d.model import PAD_ID, Transformer, count_parameters, dropout, sinusoidal_positions


def test_output_shapes():
    model = tiny_model(encoder_layers=3, decoder_layers=2, heads=4)
    src, prev = random_batch(S=7, T=5)
    out = model(src, prev, return_attention=True)
    assert out.logits.shape == (3, 5, 50)
    assert [m.shape for m in out.attention.encoder_self] == [(3, 4, 7, 7)] * 3
    assert [m.shape for m in out.attention.decoder_self] == [(3, 4, 5, 5)] * 2
    assert [m.shape for m in out.attention.decoder_cross] == [(3, 4, 5, 7)] * 2
    stacked = out.attention.stacked()
    assert stacked["encoder_self"].shape == (3, 3 * 4, 7, 7) and stacked["decoder_cross"].shape == (3, 2 * 4, 5, 7)
    assert model(src, prev).attention is None


def test_an_attention_sink_gets_every_layer_in_order_and_the_same_logits():
    model = tiny_model(encoder_layers=3, decoder_layers=2)
    src, prev = random_batch()
    collected = model(src, prev, return_attention=True)

    class Sink:
        def __init__(self):
            self.got = []

        def add(self, name, probs):
            self.got.append((name, probs))

    sink = Sink()
    streamed = model(src, prev, attention_sink=sink)
    assert [name for name, _ in sink.got] == ["encoder_self"] * 3 + ["decoder_self", "decoder_cross"] * 2
    assert streamed.attention is sink
    torch.testing.assert_close(streamed.logits, collected.logits, rtol=0, atol=0)
    for name, layers in collected.attention.items():
        for got, expected in zip([p for n, p in sink.got if n == name], layers, strict=True):
            torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_deferred_logits_are_the_logits_a_few_rows_at_a_time():
    model = tiny_model().eval()
    src, prev = random_batch(S=6, T=4)
    logits = model(src, prev).logits
    deferred = model(src, prev, defer_logits=True).logits
    assert deferred.vocab_size == 50
    flat = logits.reshape(-1, 50)
    for rows in (slice(None), slice(0, 5), slice(5, None)):
        torch.testing.assert_close(deferred.rows(rows), flat[rows], rtol=1e-6, atol=1e-6)


def test_attention_rows_are_distributions_and_respect_masks():
    model = tiny_model()
    src, prev = random_batch()
    maps = model(src, prev, return_attention=True).attention.stacked()
    for m in maps.values():
        torch.testing.assert_close(m.sum(-1), torch.ones(m.shape[:-1]))
    pad_keys = (src == PAD_ID)[:, None, None, :]
    assert (maps["encoder_self"].masked_select(pad_keys) == 0).all()
    assert (maps["decoder_cross"].masked_select(pad_keys) == 0).all()
    T = prev.size(1)
    future = torch.ones(T, T, dtype=torch.bool).triu(1)
    assert (maps["decoder_self"][..., future] == 0).all()


@pytest.mark.parametrize("pre_norm", [False, True])
def test_explicit_attention_matches_fused_kernel(pre_norm):
    model = tiny_model(pre_norm=pre_norm)
    src, prev = random_batch()
    explicit = model(src, prev, return_attention=True).logits
    fused = model(src, prev, return_attention=False).logits
    torch.testing.assert_close(explicit, fused, rtol=1e-5, atol=1e-5)
    # And one attention module against F.scaled_dot_product_attention itself.
    attn = model.encoder_layers[0].self_attn
    x = torch.randn(3, 7, 16)
    mask = (src != PAD_ID)[:, None, None, :]
    k, v = attn.project_kv(x)
    out, probs = attn(x, k, v, mask, return_attention=True)
    q = attn.split_heads(attn.q_proj(x))
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(probs @ v, ref, rtol=1e-5, atol=1e-6)


def test_maps_are_stacked_layer_major():
    """Channel l*H + h holds layer l's head h, layer 0 at the bottom."""
    model = tiny_model(encoder_layers=3, heads=2)
    src, prev = random_batch()
    stacked = model(src, prev, return_attention=True).attention.stacked()["encoder_self"]
    mask = (src != PAD_ID)[:, None, None, :]
    x = model.embed(model.source_embedding, src)
    for i, layer in enumerate(model.encoder_layers):
        x, probs = layer(x, mask, return_attention=True)
        torch.testing.assert_close(stacked[:, 2 * i:2 * i + 2], probs)


@pytest.mark.parametrize("pre_norm", [False, True])
def test_incremental_decoding_matches_teacher_forcing(pre_norm):
    model = tiny_model(pre_norm=pre_norm)
    src, prev = random_batch(B=2)
    prev[:] = prev[0]  # no target padding: every position is a real step
    full = torch.log_softmax(model(src, prev).logits, dim=-1)
    for room in (16, 2):  # the caches hold every position, or grow twice
        state = model.start_decoding(model.encode(src), max_steps=room)
        for t in range(prev.size(1)):
            step, state = model.decode_step(prev[:, t], state)
            torch.testing.assert_close(step, full[:, t], rtol=1e-4, atol=1e-5)


def test_reordered_caches_decode_as_the_reordered_sentences_would():
    """Rows picked (and dropped) mid-decoding: the next step equals teacher forcing of those rows."""
    model = tiny_model()
    src, prev = random_batch(B=3)
    prev[:] = prev[0]
    full = torch.log_softmax(model(src, prev).logits, dim=-1)
    state = model.start_decoding(model.encode(src), max_steps=3)
    for t in range(2):
        model.decode_step(prev[:, t], state)
    rows = torch.tensor([2, 0])  # sentence 1 leaves, 0 and 2 swap
    state.select(rows)
    for t in range(2, prev.size(1)):
        step, state = model.decode_step(prev[rows, t], state)
        torch.testing.assert_close(step, full[rows, t], rtol=1e-4, atol=1e-5)


def test_sinusoidal_positions():
    table = sinusoidal_positions(10, 8)
    assert table.shape == (10, 8)
    torch.testing.assert_close(table[0], torch.tensor([0.0] * 4 + [1.0] * 4))


def test_cpu_dropout_keeps_each_value_with_probability_one_minus_p_and_scales_it():
    torch.manual_seed(0)
    x = torch.randn(400, 500, requires_grad=True)
    y = dropout(x, 0.3, training=True)
    kept = y != 0
    assert kept.float().mean().item() == pytest.approx(0.7, abs=0.005)
    torch.testing.assert_close(y[kept], x[kept] / 0.7)
    y.backward(torch.ones_like(y))
    torch.testing.assert_close(x.grad, kept.float() / 0.7)  # the gradient flows through the kept values only
    assert dropout(x, 0.3, training=False) is x and dropout(x, 0.0, training=True) is x
    assert (dropout(x, 1.0, training=True) == 0).all()


def test_shared_embeddings_are_one_table_and_need_a_joint_vocabulary():
    shape = dict(vocab_size=50, encoder_layers=1, decoder_layers=1, d_model=16, heads=2, ffn=32)
    shared, separate = Transformer(ModelConfig(**shape, share_all_embeddings=True)), Transformer(ModelConfig(**shape))
    assert count_parameters(separate) - count_parameters(shared) == 50 * 16
    assert shared.source_embedding is shared.tgt_embed and "src_embed.weight" not in shared.state_dict()
    with pytest.raises(ValueError, match="joint subword model"):
        ModelConfig(**shape, src_vocab_size=60, share_all_embeddings=True)


def test_activation_dropout_defaults_to_dropout():
    shape = dict(vocab_size=50, encoder_layers=1, decoder_layers=1, d_model=16, heads=2, ffn=32, dropout=0.2)
    assert Transformer(ModelConfig(**shape)).encoder_layers[0].ffn.dropout == 0.2
    assert Transformer(ModelConfig(**shape, activation_dropout=0.0)).decoder_layers[0].ffn.dropout == 0.0


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
        torch.testing.assert_close(torch.softmax(scores, -1), out.attention.encoder_self[-1], rtol=1e-4, atol=1e-6)
