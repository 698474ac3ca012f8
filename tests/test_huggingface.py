"""The Hugging Face transformers export: the same computation as a2d's model (post-norm as FSMT,
pre-norm as Pegasus; shared or separate vocabularies), greedy and beam outputs of generate() equal
a2d's own search, the tokenizer encodes as a2d does, and the README's snippet runs as written."""

import pytest
import torch
from conftest import readme_block, sharp, sources, tiny_model, trained_copier
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

from a2d.config import SearchConfig
from a2d.data import encode_lines, load_sentencepiece
from a2d.huggingface import hf_model, write_hf
from a2d.model import EOS_ID, PAD_ID
from a2d.search import max_lengths, translate


SHAPES = {"post-norm, separate vocabularies": dict(pre_norm=False, vocab_size=50, src_vocab_size=43),
          "post-norm, one table": dict(pre_norm=False, vocab_size=50, share_all_embeddings=True),
          "pre-norm, separate vocabularies": dict(pre_norm=True, vocab_size=50, src_vocab_size=61),
          "pre-norm, separate tables": dict(pre_norm=True, vocab_size=50)}


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_the_export_computes_what_the_model_computes(shape):
    """Teacher-forced log-probabilities over the target vocabulary, to float rounding; no
    probability on the rows a shared Pegasus vocabulary adds."""
    model = sharp(tiny_model(seed=4, max_positions=64, **shape))
    exported = hf_model(model, SearchConfig())
    assert type(exported).__name__ == ("PegasusForConditionalGeneration" if shape["pre_norm"]
                                       else "FSMTForConditionalGeneration")
    g = torch.Generator().manual_seed(0)
    src = torch.randint(4, model.cfg.source_vocab_size, (3, 9), generator=g)
    src[1, 6:], src[2, 4:] = PAD_ID, PAD_ID
    prev = torch.randint(4, model.cfg.vocab_size, (3, 7), generator=g)
    with torch.no_grad():
        ours = torch.log_softmax(model(src, prev).logits, -1)
        # FSMT's forward without a cache object needs use_cache=False (generate() passes its cache)
        theirs = torch.log_softmax(exported(input_ids=src, attention_mask=src != PAD_ID, decoder_input_ids=prev,
                                            use_cache=False).logits, -1)
    V = model.cfg.vocab_size
    torch.testing.assert_close(theirs[..., :V], ours, rtol=0, atol=1e-4)
    assert torch.exp(theirs[..., V:]).sum() == 0


def generated(exported, src: torch.Tensor, cfg: SearchConfig, model) -> list[list[int]]:
    """generate() sentence by sentence, each capped by a2d's length rule; tokens without BOS/EOS."""
    outputs = []
    for row in src:
        row = row[row != PAD_ID][None]
        limit = int(max_lengths(model, row, cfg.max_len_a, cfg.max_len_b)[0])
        out = exported.generate(input_ids=row, attention_mask=torch.ones_like(row), max_new_tokens=limit)[0].tolist()
        outputs.append([t for t in out[1:] if t not in (EOS_ID, PAD_ID)])
    return outputs


@pytest.mark.parametrize("pre_norm", [False, True], ids=["post-norm", "pre-norm"])
def test_generate_finds_a2ds_translations_greedy_and_beam(pre_norm):
    """A trained student: generate() with the exported search gives a2d's own outputs, token for
    token, greedy and with beam 5, on unseen sentences."""
    model = trained_copier(pre_norm)
    srcs = [torch.tensor(s + [EOS_ID]) for s in sources(24, seed=11)]
    padded = torch.nn.utils.rnn.pad_sequence(srcs, batch_first=True, padding_value=PAD_ID)
    for beam in (1, 5):
        cfg = SearchConfig(beam_size=beam, length_penalty=1.0, max_len_a=1.2, max_len_b=10, batch_size=8)
        ours = translate(model, srcs, cfg)
        theirs = generated(hf_model(model, cfg), padded, cfg, model)
        assert theirs == ours, f"beam {beam}: {sum(a != b for a, b in zip(theirs, ours))} of {len(ours)} differ"
    assert sum(o == s.tolist()[:-1] for o, s in zip(ours, srcs)) >= 18  # it did learn to copy


@pytest.fixture(scope="module")
def separate_subwords(tiny_corpus, tmp_path_factory):
    """Source and target SentencePiece models of their own (the De->Dsb layout)."""
    from a2d.config import SubwordConfig
    from a2d.data import train_sentencepiece

    root = tmp_path_factory.mktemp("spm")
    for side, size in (("src", 120), ("tgt", 140)):
        train_sentencepiece([str(tiny_corpus[f"train.{side}"])], str(root / f"{side}.model"),
                            SubwordConfig(vocab_size=size, model_type="unigram", seed=1))
    return str(root / "src.model"), str(root / "tgt.model")


def test_the_saved_directory_loads_with_auto_classes_and_tokenizes_as_a2d(tiny_corpus, separate_subwords, tmp_path):
    src_spm, tgt_spm = separate_subwords
    source, target = load_sentencepiece(src_spm), load_sentencepiece(tgt_spm)
    model = sharp(tiny_model(seed=5, vocab_size=target.get_piece_size(), src_vocab_size=source.get_piece_size(),
                             pre_norm=True, max_positions=128))
    cfg = SearchConfig(beam_size=4, length_penalty=0.8, min_len=2)
    write_hf(model, src_spm, tgt_spm, str(tmp_path / "m.hf"), cfg)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "m.hf")
    loaded = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "m.hf")
    sentences = tiny_corpus["test.src"].read_text().splitlines()[:10]
    assert [tokenizer(s)["input_ids"] for s in sentences] == encode_lines(source, sentences)
    ids = torch.tensor([[4, 9, 11, EOS_ID]])
    prev = torch.tensor([[2, 5, 7]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids, decoder_input_ids=prev).logits,
                                   hf_model(model, cfg)(input_ids=ids, decoder_input_ids=prev).logits, rtol=0, atol=0)
    generation = loaded.generation_config
    assert (generation.num_beams, generation.length_penalty, generation.min_new_tokens) == (4, 0.8, 2)
    assert generation.early_stopping is True and generation.decoder_start_token_id == 2
    out = loaded.generate(input_ids=ids, num_beams=1, max_new_tokens=6)[0].tolist()
    assert out[1:] and all(t < target.get_piece_size() and t not in (PAD_ID, 2) for t in out[1:])
    UNK = 1
    assert tokenizer.decode(out, skip_special_tokens=True) == target.decode([t for t in out if t not in (2, EOS_ID, UNK)])


def test_the_readme_snippet_runs_as_written(tiny_corpus, tmp_path, monkeypatch, capsys):
    """`make run`'s layout, with a tiny trained-looking model in the corrected student's place."""
    spm = str(tiny_corpus["spm"])
    sp = load_sentencepiece(spm)
    model = sharp(tiny_model(seed=6, vocab_size=sp.get_piece_size(), pre_norm=True, max_positions=128))
    write_hf(model, spm, spm, str(tmp_path / "results/synthetic/deploy/student_a2d_corrected.hf"),
             SearchConfig(beam_size=5, max_len_b=10))
    monkeypatch.chdir(tmp_path)
    exec(compile(readme_block("AutoModelForSeq2SeqLM", "python"), "README.md", "exec"), {})
    printed = capsys.readouterr().out.strip()
    assert printed.startswith("['") and printed.endswith("']")
