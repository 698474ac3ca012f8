"""COMET as an optional metric, scored by Unbabel's own `comet` package from a local checkpoint
(`evaluation.comet`): cluster nodes have no internet, so nothing is downloaded at run time. (torch and
comet are imported by the functions that need them: the config check imports this module.)"""

from __future__ import annotations

import os
from pathlib import Path

from a2d.files import InputError

SETTING = "evaluation.comet"
# Buffers that the checkpoint may hold and the model rebuilds from its config (transformers made
# position_ids non-persistent after COMET's releases were saved): their absence is no loss.
REBUILT_BUFFERS = ("position_ids",)


def checkpoint_problem(path: str) -> str | None:
    """Why `path` is not a COMET checkpoint in Unbabel's layout (<model>/checkpoints/model.ckpt with
    <model>/hparams.yaml), or None."""
    checkpoint = Path(path).resolve()
    if not checkpoint.is_file():
        return f"{path} is not a file"
    hparams = checkpoint.parents[1] / "hparams.yaml"
    if not hparams.is_file():
        return f"{hparams} is missing (the layout of a COMET release: <model>/checkpoints/model.ckpt, <model>/hparams.yaml)"
    return None


def load(path: str):
    """The COMET model of a local checkpoint. The weights are read first with weights_only (a file that
    pickles anything but tensors and plain data is refused before COMET opens it), and every weight of
    the model must come from the checkpoint and every weight of the checkpoint must be used. The
    encoder's config and tokenizer (the checkpoint's `pretrained_model`, e.g. xlm-roberta-large) come
    from a local directory or the Hugging Face cache, never the network."""
    problem = checkpoint_problem(path)
    if problem:
        raise InputError(f"{SETTING}: {problem}")
    import torch

    saved = torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("state_dict")
    if saved is None:
        raise InputError(f"{SETTING}: {path} holds no state_dict (not a COMET checkpoint)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from comet import load_from_checkpoint

    model = load_from_checkpoint(path, strict=False, local_files_only=True)
    expected = set(model.state_dict())
    missing = sorted(expected - set(saved))
    unused = sorted(k for k in set(saved) - expected if not k.endswith(REBUILT_BUFFERS))
    if missing or unused:
        raise InputError(f"{SETTING}: {path} does not match its model ({model.__class__.__name__}): "
                         f"missing {missing[:5]}, unused {unused[:5]}")
    return model


def hand_back_pooler_slot(model) -> None:
    """unbabel-comet 2.2.7 unpacks (last hidden state, pooler output, hidden states) from its encoder
    called with return_dict=False, as transformers 4 returned them; transformers 5 leaves the absent
    pooler out of that tuple. The encoder's forward is wrapped to return the three again (an instance
    attribute: the weights and their names stay as they are)."""
    network = model.encoder.model
    if getattr(network.forward, "hands_back_pooler_slot", False):
        return
    forward = network.forward

    def three_outputs(*args, return_dict=None, **kwargs):
        if return_dict is not False:
            return forward(*args, return_dict=return_dict, **kwargs)
        out = forward(*args, return_dict=True, **kwargs)
        return out.last_hidden_state, out.get("pooler_output"), out.hidden_states

    three_outputs.hands_back_pooler_slot = True
    network.forward = three_outputs


def segment_scores(model, sources: list[str], hypotheses: list[str], references: list[str],
                   batch_size: int) -> list[float]:
    """COMET's score of each translation (on a GPU when there is one)."""
    import torch

    hand_back_pooler_slot(model)
    samples = [{"src": s, "mt": h, "ref": r} for s, h, r in zip(sources, hypotheses, references, strict=True)]
    gpu = torch.cuda.is_available()
    prediction = model.predict(samples, batch_size=batch_size, gpus=int(gpu), accelerator="cuda" if gpu else "cpu",
                               progress_bar=False, num_workers=0)
    return [float(score) for score in prediction.scores]


def signature(path: str) -> str:
    from importlib.metadata import version

    model_dir = Path(path).resolve().parents[1]
    return f"model:{model_dir.name}|scale:x100|version:{version('unbabel-comet')}"


def score(path: str, sources: list[str], hypotheses: list[str], references: list[str], batch_size: int,
          bootstrap_samples: int) -> dict:
    """The system score (the mean segment score, x100 like the other metrics), its signature, and the
    mean and half-width of its 95% bootstrap interval (sacrebleu's resampling and seed)."""
    import numpy as np
    from sacrebleu.significance import estimate_ci

    scores = 100 * np.array(segment_scores(load(path), sources, hypotheses, references, batch_size))
    rng = np.random.default_rng(12345)  # sacrebleu's default seed
    resampled = scores[rng.integers(0, len(scores), size=(bootstrap_samples, len(scores)))].mean(axis=1)
    mean, ci = estimate_ci(resampled)
    return {"comet": round(float(scores.mean()), 2), "comet_signature": signature(path),
            "comet_bootstrap_mean": round(float(mean), 2), "comet_ci95": round(float(ci), 2)}
