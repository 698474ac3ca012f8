"""Model files (strict loading, readable errors) and the checkpoint directory's bookkeeping: sealed
checkpoints with manifests, the newest intact one found, never an overwrite, pruning."""

import re

import pytest
import torch
from conftest import tiny_model
from safetensors.torch import load_file, save_file

from a2d.checkpoint import (
    checkpoint_tags,
    commit_checkpoint,
    load_model,
    new_tag,
    newest_intact,
    prune_checkpoints,
    save_model,
)
from a2d.files import InputError


def test_model_loading_is_strict(tmp_path):
    model = tiny_model()
    path = tmp_path / "m.safetensors"
    save_model(path, model)
    torch.testing.assert_close(load_model(path).state_dict(), model.state_dict())
    state = load_file(path)
    state["unexpected.weight"] = torch.zeros(1)
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        metadata = f.metadata()
    save_file(state, str(tmp_path / "extra.safetensors"), metadata=metadata)
    with pytest.raises(InputError, match=r"extra.safetensors: its tensors do not fit .*: unexpected unexpected.weight"):
        load_model(tmp_path / "extra.safetensors")
    name = next(iter(state))
    wrong = {k: v for k, v in load_file(path).items() if k != name}
    save_file(wrong, str(tmp_path / "missing.safetensors"), metadata=metadata)
    with pytest.raises(InputError, match=rf"missing.safetensors: .*: missing {re.escape(name)}$"):
        load_model(tmp_path / "missing.safetensors")
    wrong[name] = torch.zeros(2, 3)
    save_file(wrong, str(tmp_path / "shape.safetensors"), metadata=metadata)
    with pytest.raises(InputError, match=rf"shape.safetensors: .*: {re.escape(name)} is \(2, 3\), the model needs"):
        load_model(tmp_path / "shape.safetensors")
    save_file({k: v for k, v in load_file(path).items()}, str(tmp_path / "nometa.safetensors"))
    with pytest.raises(InputError, match="nometa.safetensors: not an a2d model"):
        load_model(tmp_path / "nometa.safetensors")
    (tmp_path / "cut.safetensors").write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(InputError, match=r"cut.safetensors: not a readable safetensors file \(.*\); a truncated copy"):
        load_model(tmp_path / "cut.safetensors")
    save_file(load_file(path), str(tmp_path / "badmeta.safetensors"), metadata={"model_config": '{"layers": 3}'})
    with pytest.raises(InputError, match=r"badmeta.safetensors: its model_config does not describe an a2d model"):
        load_model(tmp_path / "badmeta.safetensors")


def fake_checkpoint(root, tag: str, content: bytes = b"weights", seal: bool = True):
    """A checkpoint as DeepSpeed leaves it (one file per rank here), sealed by rank 0."""
    (root / tag).mkdir(parents=True)
    (root / tag / "mp_rank_00_model_states.pt").write_bytes(content)
    if seal:
        commit_checkpoint(root, tag, world_size=1, zero_stage=1)


def test_the_newest_intact_checkpoint_is_resumed_and_the_broken_ones_set_aside(tmp_path):
    fake_checkpoint(tmp_path, "step10")
    fake_checkpoint(tmp_path, "step20")
    fake_checkpoint(tmp_path, "step30", seal=False)  # killed before rank 0 sealed it
    assert (tmp_path / "latest").read_text() == "step20"
    (tmp_path / "step20" / "mp_rank_00_model_states.pt").write_bytes(b"bit rot")
    warnings = []
    tag, manifest = newest_intact(tmp_path, warnings.append)
    assert tag == "step10" and manifest["world_size"] == 1 and list(manifest["files"]) == ["mp_rank_00_model_states.pt"]
    assert [w.split(":")[1].strip() for w in warnings] == ["skipping checkpoint step30", "skipping checkpoint step20"]
    assert "incomplete" in warnings[0] and "corrupt" in warnings[1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step10", "step20.skipped", "step30.skipped"]
    assert new_tag(tmp_path, 20) == "step20-1" and new_tag(tmp_path, 40) == "step40"  # set-aside names stay taken


def test_pruning_keeps_the_newest_sealed_checkpoints(tmp_path):
    for tag in ("step5", "step10", "step10-1", "step15"):
        fake_checkpoint(tmp_path, tag)
    fake_checkpoint(tmp_path, "step20", seal=False)
    assert checkpoint_tags(tmp_path) == ["step20", "step15", "step10-1", "step10", "step5"]
    prune_checkpoints(tmp_path, keep=2)
    assert checkpoint_tags(tmp_path) == ["step15", "step10-1"]  # the unsealed one goes too
