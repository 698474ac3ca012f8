"""Saving and loading: exported models as safetensors, training state as DeepSpeed checkpoints.

Everything loads strictly: safetensors for weights (shape config in the file's metadata), and
DeepSpeed's own checkpoints through `torch.load(weights_only=True)` with an explicit allow-list of
the few DeepSpeed classes its optimizer state holds, instead of DeepSpeed's unrestricted unpickling.
Training checkpoints are sealed by a manifest of checksums; a corrupt or incomplete one is passed
over for the one before it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from a2d.config import ModelConfig
from a2d.files import InputError, atomic_path, read_json, read_safetensors, write_json
from a2d.model import Transformer


def save_model(path: str | Path, model: Transformer) -> None:
    """Write the model's weights and shape, atomically."""
    state = {name: t.detach().contiguous().cpu() for name, t in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"model_config": json.dumps(model.cfg.to_dict())})


def load_model(path: str | Path) -> Transformer:
    """Rebuild a model from a file written by `save_model`; every key and shape must match, and any
    mismatch is an error naming the file."""
    state, metadata = read_safetensors(path)
    try:
        model = Transformer(ModelConfig(**json.loads(metadata["model_config"])))
    except KeyError:
        raise InputError(f"{path}: not an a2d model (no model_config in its metadata)") from None
    except (ValueError, TypeError) as err:  # bad JSON, unknown or bad shape fields
        raise InputError(f"{path}: its model_config does not describe an a2d model ({err})") from None
    if problems := mismatches(model.state_dict(), state):
        raise InputError(f"{path}: its tensors do not fit the model its metadata describes: {'; '.join(problems)}")
    model.load_state_dict(state, strict=True)
    return model


def mismatches(expected: dict, state: dict) -> list[str]:
    """What keeps `state` from loading strictly where `expected` (a state dict) is wanted."""
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    shapes = [f"{name} is {tuple(state[name].shape)}, the model needs {tuple(t.shape)}"
              for name, t in expected.items() if name in state and state[name].shape != t.shape]
    return ([f"missing {', '.join(missing)}"] if missing else []) + (
        [f"unexpected {', '.join(unexpected)}"] if unexpected else []) + shapes


def load_strictly() -> None:
    """Make every `torch.load` of this process (DeepSpeed's included, and its universal-checkpoint
    conversion) `weights_only=True`, allowing the few DeepSpeed classes its optimizer state holds."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    os.environ.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)  # torch refuses both set
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    torch.serialization.add_safe_globals([LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address])


# A checkpoint is a DeepSpeed tag directory `step<N>` plus our MANIFEST inside it (the sha256 of
# every file, the world size and ZeRO stage), written after all ranks have finished; `latest` is
# replaced atomically after that. A crash at any point leaves `latest` naming a complete checkpoint.
MANIFEST = "a2d_manifest.json"


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def commit_checkpoint(checkpoint_dir: str | Path, tag: str, world_size: int, zero_stage: int) -> None:
    """Seal a checkpoint all ranks have written (rank 0 only): manifest, fsync, then `latest`."""
    tag_dir = Path(checkpoint_dir) / tag
    files = sorted(p for p in tag_dir.rglob("*") if p.is_file() and p.name != MANIFEST)
    for path in files:  # on disk before `latest` can name them
        with open(path, "rb+") as f:
            os.fsync(f.fileno())
    manifest = {"world_size": world_size, "zero_stage": zero_stage,
                "files": {str(p.relative_to(tag_dir)): sha256_file(p) for p in files}}
    write_json(tag_dir / MANIFEST, manifest)
    with atomic_path(Path(checkpoint_dir) / "latest") as tmp:
        tmp.write_text(tag)


def check_checkpoint(tag_dir: Path) -> dict:
    """The manifest of a complete, intact checkpoint; ValueError saying what is wrong otherwise."""
    try:
        manifest = read_json(tag_dir / MANIFEST)
    except (OSError, ValueError) as err:
        raise ValueError(f"{tag_dir}: no readable {MANIFEST} ({err}): incomplete") from None
    for name, digest in manifest["files"].items():
        path = tag_dir / name
        if not path.is_file():
            raise ValueError(f"{path}: missing")
        if sha256_file(path) != digest:
            raise ValueError(f"{path}: sha256 differs from the manifest: corrupt")
    return manifest


TAG = re.compile(r"step(\d+)(?:-(\d+))?")  # step<N>, or step<N>-<k> for a later save at the same step


def tag_order(tag: str) -> tuple[int, int]:
    step, again = TAG.fullmatch(tag).groups()
    return int(step), int(again or 0)


def checkpoint_tags(checkpoint_dir: str | Path) -> list[str]:
    """Step checkpoints, newest first."""
    return sorted((p.name for p in Path(checkpoint_dir).iterdir() if p.is_dir() and TAG.fullmatch(p.name)),
                  key=tag_order, reverse=True)


def new_tag(checkpoint_dir: str | Path, step: int) -> str:
    """A tag no directory has, set aside ones included: a save never writes into a checkpoint that
    exists (the epoch-end save often falls on the step of the periodic one, with different progress)."""
    tag, again = f"step{step}", 0
    while (Path(checkpoint_dir) / tag).exists() or (Path(checkpoint_dir) / f"{tag}.skipped").exists():
        again += 1
        tag = f"step{step}-{again}"
    return tag


def newest_intact(checkpoint_dir: str | Path, warn) -> tuple[str, dict] | None:
    """The newest checkpoint whose files match its manifest, with the manifest. Newer ones are
    renamed `<tag>.skipped` (kept for a look, never resumed or counted again); `warn` hears of each."""
    for tag in checkpoint_tags(checkpoint_dir):
        try:
            return tag, check_checkpoint(Path(checkpoint_dir) / tag)
        except ValueError as err:
            warn(f"WARNING: skipping checkpoint {tag}: {err}; kept as {tag}.skipped")
            os.replace(Path(checkpoint_dir) / tag, Path(checkpoint_dir) / f"{tag}.skipped")
    return None


def prune_checkpoints(checkpoint_dir: str | Path, keep: int) -> None:
    """Keep the `keep` newest sealed checkpoints; delete the rest (older ones, and any a crash left
    unsealed) with their universal conversions. Called by rank 0 only, after a save is sealed."""
    sealed = [tag for tag in checkpoint_tags(checkpoint_dir) if (Path(checkpoint_dir) / tag / MANIFEST).is_file()]
    for tag in checkpoint_tags(checkpoint_dir):
        if tag not in sealed[:max(keep, 1)]:
            shutil.rmtree(Path(checkpoint_dir) / tag)
            shutil.rmtree(Path(checkpoint_dir) / "universal" / tag, ignore_errors=True)


def to_universal(checkpoint_dir: str | Path, tag: str) -> Path:
    """Convert a ZeRO checkpoint to DeepSpeed's universal format, which loads into another world
    size; returns the directory that holds it as tag `tag` (kept beside the original)."""
    from deepspeed.checkpoint import ds_to_universal

    root = Path(checkpoint_dir) / "universal"
    output = root / tag
    if not (output / MANIFEST).is_file():
        shutil.rmtree(output, ignore_errors=True)
        args = argparse.Namespace(input_folder=str(Path(checkpoint_dir) / tag), output_folder=str(output),
                                  num_extract_workers=1, num_merge_workers=1, keep_temp_folder=False,
                                  strict=True, inject_missing_state=False)
        ds_to_universal.main(args)
        write_json(output / MANIFEST, {"converted_from": tag})
    return root
