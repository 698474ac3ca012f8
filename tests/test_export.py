"""The CTranslate2 export decodes like the PyTorch model it came from."""

import pytest
import torch
from conftest import PIECES, VOCAB, sources, trained_copier

from a2d.config import ModelConfig, SearchConfig
from a2d.export import ctranslate2_translate, load_translator, write_ctranslate2
from a2d.model import EOS_ID, Transformer
from a2d.search import translate

GREEDY = SearchConfig(beam_size=1, max_len_a=1.2, max_len_b=3, batch_size=1)  # batch 1: the rule is per sentence


def ours_greedy(model: Transformer, srcs: list[list[int]]) -> list[list[str]]:
    hyps = translate(model, [torch.tensor(s + [EOS_ID]) for s in srcs], GREEDY)
    return [[PIECES[i] for i in h] for h in hyps]


def exported_greedy(model: Transformer, srcs: list[list[int]], directory, quantization: str) -> list[list[str]]:
    write_ctranslate2(model, PIECES, PIECES, str(directory), quantization)
    translator = load_translator(str(directory), threads=1)
    return ctranslate2_translate(translator, [[PIECES[i] for i in s] for s in srcs], GREEDY)


@pytest.mark.parametrize("pre_norm,shared", [(False, True), (True, False)])
def test_float32_export_decodes_exactly_like_pytorch(tmp_path, pre_norm, shared):
    """Every weight mapped right: an untrained model's arbitrary outputs, token for token."""
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=VOCAB, encoder_layers=2, decoder_layers=2, d_model=32, heads=4,
                                    ffn=64, max_positions=64, pre_norm=pre_norm, share_all_embeddings=shared)).eval()
    with torch.no_grad():  # sharper distributions than the initialisation's, so that argmax ties are unlikely
        for p in model.parameters():
            p.mul_(3)
    srcs = sources(30, seed=1)
    assert exported_greedy(model, srcs, tmp_path / "m.ct2", "float32") == ours_greedy(model, srcs)


@pytest.fixture(scope="module")
def copying_model() -> Transformer:
    return trained_copier(pre_norm=False)


def test_int8_export_translates_nearly_as_well_as_the_student(tmp_path, copying_model):
    """int8 rounding flips some argmaxes of this small model (how many depends on the CPU's int8
    kernels: none on an earlier machine, 11 of 100 sentences on this one), so the check is on the
    task: the export copies unseen sentences nearly as often as the fp32 student."""
    srcs = sources(100, seed=7)  # unseen
    copies = lambda outputs: sum(o == [PIECES[i] for i in s] for o, s in zip(outputs, srcs))  # noqa: E731
    ours = ours_greedy(copying_model, srcs)
    exported = exported_greedy(copying_model, srcs, tmp_path / "m.ct2", "int8")
    print(f"copied: fp32 student {copies(ours)}, int8 export {copies(exported)}; "
          f"{sum(a == b for a, b in zip(exported, ours))} outputs the same")
    assert copies(ours) >= 90  # it did learn the task
    assert copies(exported) >= copies(ours) - 10


def test_export_replaces_a_directory_whole_and_refuses_unknown_quantization(tmp_path):
    model = Transformer(ModelConfig(vocab_size=VOCAB, encoder_layers=1, decoder_layers=1, d_model=16, heads=2, ffn=32))
    out = tmp_path / "m.ct2"
    out.mkdir()
    (out / "stale.txt").write_text("from an older export")
    size = write_ctranslate2(model, PIECES, PIECES, str(out), "int8")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.bin", "shared_vocabulary.json"]
    assert size == sum(p.stat().st_size for p in out.iterdir())
    with pytest.raises(ValueError, match="quantization 'int4'"):
        write_ctranslate2(model, PIECES, PIECES, str(tmp_path / "other.ct2"), "int4")
    assert [p.name for p in tmp_path.iterdir()] == ["m.ct2"]  # nothing half-written left behind
