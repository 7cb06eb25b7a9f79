"""Checkpoints load in both formats and anything malformed is refused with a clear error."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from model import checkpoint
from model.checkpoint import CheckpointError
from tests.conftest import DEFAULT_WEIGHTS, ORIGINAL_PTH
from tests.test_model import tiny_model, walk


def test_our_format_round_trips(tmp_path):
    model = tiny_model()
    checkpoint.save(model, tmp_path / "m", {"name": "tiny"})
    loaded, manifest = checkpoint.load(tmp_path / "m")
    assert manifest["name"] == "tiny" and len(manifest["sha256"]["model.safetensors"]) == 64
    assert loaded.cfg == model.cfg
    x = walk(8 * 6, 0)[None]
    with torch.no_grad():
        assert torch.equal(loaded.whole(x), model.whole(x))


def test_tampered_tensors_are_refused(tmp_path):
    shutil.copytree(DEFAULT_WEIGHTS, tmp_path / "m")
    blob = bytearray((tmp_path / "m" / "model.safetensors").read_bytes())
    blob[-1] ^= 0xFF
    (tmp_path / "m" / "model.safetensors").write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="sha256"):
        checkpoint.load(tmp_path / "m")


def test_bad_config_is_refused(tmp_path):
    shutil.copytree(DEFAULT_WEIGHTS, tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["norm"] = "magic"
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="config.norm"):
        checkpoint.load(tmp_path / "m")


def test_shipped_default_is_ours_causal_without_positions():
    model, manifest = checkpoint.load(DEFAULT_WEIGHTS)
    assert model.cfg.norm == "causal" and model.cfg.pos_emb == "none" and model.cfg.streamable
    assert manifest["trained_on"]["datasets"] and manifest["training"]["seed"] is not None


def test_original_config_is_inferred_from_shapes(original_model):
    cfg = original_model.cfg
    assert (cfg.patch_len, cfg.d_model, cfg.n_layers, cfg.head_size) == (32, 512, 1, 64)
    assert (cfg.pos_emb, cfg.norm, cfg.max_positions) == ("sinusoidal", "window", 5000)


@pytest.fixture(scope="module")
def original_sd():
    return torch.load(ORIGINAL_PTH, map_location="cpu", weights_only=True)


def _write(tmp_path, sd):
    path = tmp_path / "bad.pth"
    torch.save(sd, path)
    return path


def test_original_with_missing_tensor_is_refused(tmp_path, original_sd):
    sd = {k: v for k, v in original_sd.items() if "k_a" not in k}
    with pytest.raises(CheckpointError, match="k_a"):
        checkpoint.load(_write(tmp_path, sd))


def test_original_with_wrong_shape_is_refused(tmp_path, original_sd):
    sd = dict(original_sd)
    for prefix in ("backbone.", ""):
        sd[prefix + "decoder.mlp.value.bias"] = torch.zeros(7)
    with pytest.raises(CheckpointError, match="shape"):
        checkpoint.load(_write(tmp_path, sd))


def test_original_with_mismatched_alias_is_refused(tmp_path, original_sd):
    sd = dict(original_sd)
    sd["proj.bias"] = sd["proj.bias"] + 1
    with pytest.raises(CheckpointError, match="alias 'proj.bias'"):
        checkpoint.load(_write(tmp_path, sd))


class Payload:
    """Anything but tensors must not be unpickled."""


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"backbone.x": Payload()}, path)
    with pytest.raises(CheckpointError, match="tensors-only"):
        checkpoint.load(path)


def test_missing_path_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        checkpoint.load(tmp_path / "nothing")
