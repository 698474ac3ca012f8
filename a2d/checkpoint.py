"""Saving and loading: exported models as safetensors, training state as DeepSpeed checkpoints.

Everything loads strictly: safetensors for weights (shape config in the file's metadata), and
DeepSpeed's own checkpoints through `torch.load(weights_only=True)` with an explicit allow-list of
the few DeepSpeed classes its optimizer state holds, instead of DeepSpeed's unrestricted unpickling.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from a2d.files import atomic_path
from a2d.model import ModelConfig, Transformer


def save_model(path: str | Path, model: Transformer) -> None:
    """Write the model's weights and shape, atomically."""
    state = {name: t.detach().contiguous().cpu() for name, t in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"model_config": json.dumps(model.cfg.to_dict())})


def load_model(path: str | Path) -> Transformer:
    """Rebuild a model from a file written by `save_model`; every key must match."""
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
        if "model_config" not in metadata:
            raise ValueError(f"{path}: not an a2d model (no model_config in its metadata)")
        state = {name: f.get_tensor(name) for name in f.keys()}
    model = Transformer(ModelConfig(**json.loads(metadata["model_config"])))
    model.load_state_dict(state, strict=True)
    return model


def strict_checkpoint_engine(ds_config):
    """A DeepSpeed checkpoint engine whose loads are `weights_only=True`."""
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    allowed = [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]

    class StrictTorchCheckpointEngine(TorchCheckpointEngine):
        def load(self, path: str, map_location=None):
            with torch.serialization.safe_globals(allowed):
                return torch.load(path, map_location=map_location, weights_only=True)

    return StrictTorchCheckpointEngine(ds_config)


def latest_tag(checkpoint_dir: str | Path) -> str | None:
    """Tag named in DeepSpeed's `latest` file, written only after a checkpoint is complete."""
    latest = Path(checkpoint_dir) / "latest"
    return latest.read_text().strip() if latest.is_file() else None


def prune_checkpoints(checkpoint_dir: str | Path, keep: int) -> None:
    """Delete all but the `keep` newest step checkpoints (never the one `latest` names)."""
    current = latest_tag(checkpoint_dir)
    tags = sorted((p for p in Path(checkpoint_dir).glob("step*") if p.is_dir()), key=lambda p: int(p.name[4:]))
    for old in tags[:-keep] if keep > 0 else []:
        if old.name != current:
            shutil.rmtree(old)
