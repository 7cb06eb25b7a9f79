"""Checkpoints load in both formats and anything malformed is refused with a clear error."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from model import checkpoint
from model.checkpoint import CheckpointError
from tests.conftest import DEFAULT_WEIGHTS, ORIGINAL_PTH
from tests.helpers import tiny_model, walk


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


@pytest.mark.parametrize("key,value", [("norm", "magic"), ("lag_scale", "median"), ("lag_best", -1)])
def test_bad_config_is_refused(tmp_path, key, value):
    shutil.copytree(DEFAULT_WEIGHTS, tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg[key] = value
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=f"config.{key}"):
        checkpoint.load(tmp_path / "m")


def _broken_copy(tmp_path, name: str, edit) -> str:
    """A copy of the shipped default weights, `edit`ed (given the copy's directory)."""
    shutil.copytree(DEFAULT_WEIGHTS, tmp_path / name)
    edit(tmp_path / name)
    return tmp_path / name


def _edit_json(file: str, change):
    def edit(d):
        data = json.loads((d / file).read_text())
        (d / file).write_text(json.dumps(change(data)))
    return edit


def _truncate_and_rehash(d):
    """Half the tensors file, with the manifest's hash updated: only the format can tell."""
    blob = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(blob[:len(blob) // 2])
    manifest = json.loads((d / "manifest.json").read_text())
    manifest["sha256"]["model.safetensors"] = checkpoint.sha256_of(d / "model.safetensors")
    (d / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("edit, says", [
    (_edit_json("config.json", lambda c: {**c, "norm_eps": "x"}), "norm_eps"),
    (_edit_json("config.json", lambda c: {**c, "norm_eps": -1.0}), "norm_eps"),
    (_edit_json("config.json", lambda c: {k: v for k, v in c.items() if k != "norm"}),
     "missing config keys: \\['norm'\\]"),
    (_edit_json("config.json", lambda c: [c]), "JSON object"),
    (_edit_json("manifest.json", lambda m: [m]), "no sha256"),
    (_edit_json("manifest.json", lambda m: {**m, "sha256": "abc"}), "no sha256"),
    (lambda d: (d / "model.safetensors").unlink(), "cannot read it"),
    (_truncate_and_rehash, "not a readable safetensors file"),
], ids=["eps-type", "eps-negative", "missing-key", "config-list", "manifest-list",
        "sha-string", "no-tensors", "truncated"])
def test_broken_weights_directories_are_refused_with_a_reason(tmp_path, edit, says):
    """Every way a weights directory can be broken is a CheckpointError saying what (the server
    prints it in one line), never another exception, and never a model with defaults filled in
    (a missing `norm` loaded the window normalisation and served other forecasts)."""
    with pytest.raises(CheckpointError, match=says):
        checkpoint.load(_broken_copy(tmp_path, "m", edit))


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


@pytest.mark.parametrize("key, tensor", [
    ("decoder.attn.rwkv7.r_k", torch.zeros(8, 64, 1)),
    ("patch_embedding.value_embedding.weight", torch.zeros(512)),
])
def test_original_with_wrong_rank_is_refused(tmp_path, original_sd, key, tensor):
    sd = dict(original_sd)
    sd["backbone." + key] = tensor
    sd.pop(key.replace("patch_embedding.", "enc_embedding.", 1), None)  # (its alias, if any)
    with pytest.raises(CheckpointError, match="dimensions"):
        checkpoint.load(_write(tmp_path, sd))


def test_original_missing_a_tensor_its_alias_has_is_refused_as_missing(tmp_path, original_sd):
    sd = dict(original_sd)
    del sd["backbone.decoder.norm1.weight"]
    with pytest.raises(CheckpointError, match="missing backbone.decoder.norm1.weight"):
        checkpoint.load(_write(tmp_path, sd))


def test_original_with_mismatched_alias_is_refused(tmp_path, original_sd):
    sd = dict(original_sd)
    sd["proj.bias"] = sd["proj.bias"] + 1
    with pytest.raises(CheckpointError, match="alias 'proj.bias'"):
        checkpoint.load(_write(tmp_path, sd))


class Payload:
    """Anything but tensors must not be unpickled."""


class Exploit:
    """A pickle that would create a file when unpickled."""

    def __init__(self, target: str):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"backbone.x": Payload()}, path)
    with pytest.raises(CheckpointError, match="tensors-only"):
        checkpoint.load(path)
    torch.save({"backbone.x": Exploit(str(tmp_path / "PWNED"))}, path)
    with pytest.raises(CheckpointError, match="tensors-only") as info:
        checkpoint.load(path)
    assert not (tmp_path / "PWNED").exists()
    assert "weights_only" not in str(info.value)  # (torch's hint to turn the check off: not ours)
    assert "\n" not in str(info.value)
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match="an empty file"):
        checkpoint.load(tmp_path / "empty.pth")


def test_our_tensors_file_alone_points_to_its_directory():
    with pytest.raises(CheckpointError, match="give the directory"):
        checkpoint.load(DEFAULT_WEIGHTS / "model.safetensors")


def test_missing_path_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        checkpoint.load(tmp_path / "nothing")
