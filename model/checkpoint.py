"""Loading and saving weights, in our format and in the original Rimer's.

Ours: a directory with `model.safetensors` (tensors only, no pickle), `config.json` (the
RimerConfig) and `manifest.json` (name, what it was trained on, metrics, sha256 of the tensors).

The original's: `torch.save(model.state_dict())` of BlackGoose Rimer's `Model`, whose keys appear
twice (`backbone.*` and the aliases `decoder.*`, `proj.*`, `enc_embedding.*`). It is read with
`torch.load(weights_only=True)`; its config is inferred from tensor shapes.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from model.config import RimerConfig
from model.rimer import Rimer


class CheckpointError(ValueError):
    """A checkpoint that is missing, malformed or does not match the architecture."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save(model: Rimer, directory: str | Path, manifest: dict) -> Path:
    """Write our format; the manifest gains the model's config and the tensors' sha256."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, directory / "model.safetensors")
    (directory / "config.json").write_text(json.dumps(model.cfg.to_dict(), indent=2) + "\n")
    manifest = dict(manifest)
    manifest["sha256"] = {"model.safetensors": sha256_of(directory / "model.safetensors")}
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return directory


def load(path: str | Path, device: str | torch.device = "cpu") -> tuple[Rimer, dict]:
    """Load either format: a directory of ours, or an original `.pth` file.

    Returns the model in eval mode and its manifest (for the original, one describing it).
    """
    path = Path(path)
    if path.is_dir():
        model, manifest = _load_ours(path)
    elif path.suffix == ".safetensors" and (path.parent / "manifest.json").is_file():
        raise CheckpointError(f"{path}: give the directory it is in, {path.parent}")
    elif path.is_file():
        model, manifest = _load_original(path)
    else:
        raise CheckpointError(f"no checkpoint at {path}")
    return model.to(device).eval(), manifest


def _load_ours(directory: Path) -> tuple[Rimer, dict]:
    try:
        cfg = RimerConfig.from_dict(json.loads((directory / "config.json").read_text()))
        manifest = json.loads((directory / "manifest.json").read_text())
    except (OSError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{directory}: bad config.json or manifest.json: {exc}") from exc
    tensor_file = directory / "model.safetensors"
    hashes = manifest.get("sha256") if isinstance(manifest, dict) else None
    expected = hashes.get("model.safetensors") if isinstance(hashes, dict) else None
    if not isinstance(expected, str):
        raise CheckpointError(f"{directory}/manifest.json has no sha256 for model.safetensors "
                              '(an object {"sha256": {"model.safetensors": "<hex>"}, ...})')
    try:
        actual = sha256_of(tensor_file)
    except OSError as exc:
        raise CheckpointError(f"{tensor_file}: cannot read it ({exc.strerror or exc})") from exc
    if actual != expected:
        raise CheckpointError(f"{tensor_file}: sha256 {actual} does not match the manifest's "
                              f"{expected}")
    try:
        tensors = load_file(tensor_file)
    except Exception as exc:  # noqa: BLE001 - safetensors' own errors: not a tensors file
        raise CheckpointError(f"{tensor_file}: not a readable safetensors file ({exc})") from exc
    model = Rimer(cfg)
    for name in ("horizon_spread", "horizon_carry"):  # (files saved before these existed)
        if cfg.quantiles and name not in tensors:
            tensors[name] = getattr(model, name).clone()
    _load_strict(model, tensors, str(tensor_file))
    return model, manifest


# Original key (after dropping the `backbone.` prefix) -> ours.
_ORIGINAL_RENAMES = [
    (r"^patch_embedding\.value_embedding\.weight$", "embed.weight"),
    (r"^decoder\.attn\.rwkv7\.", "blocks.0.attn."),
    (r"^decoder\.mlp\.value\.", "blocks.0.ffn."),
    (r"^decoder\.norm([12])\.", r"blocks.0.norm\1."),
    (r"^proj\.", "head."),
]
_ORIGINAL_PE = "patch_embedding.position_embedding.pe"
_ALIAS_PREFIXES = ("decoder.", "proj.", "enc_embedding.")


def _load_original(path: Path) -> tuple[Rimer, dict]:
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: an empty file, not a checkpoint")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling refusal is a bad checkpoint
        # (Only the first line of torch's reason: the rest suggests weights_only=False, which
        # would run whatever code the file holds.)
        boilerplate = ("weights_only", "Weights only", "Please file an issue", "documentation")
        lines = [line.strip() for line in str(exc).splitlines()
                 if line.strip() and not any(b in line for b in boilerplate)]
        reason = lines[0] if lines else type(exc).__name__
        raise CheckpointError(f"{path}: not a tensors-only torch checkpoint (objects other than "
                              f"tensors are never unpickled): {reason[:300]}") from exc
    if not isinstance(raw, dict) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise CheckpointError(f"{path}: expected a state_dict of tensors")
    backbone = {k[len("backbone."):]: v for k, v in raw.items() if k.startswith("backbone.")}
    if not backbone:
        raise CheckpointError(f"{path}: no 'backbone.*' keys; not an original Rimer checkpoint")
    for key in raw:
        if key.startswith("backbone."):
            continue
        if not key.startswith(_ALIAS_PREFIXES):
            raise CheckpointError(f"{path}: unexpected key {key!r}")
        twin = key.replace("enc_embedding.", "patch_embedding.", 1)
        if twin not in backbone:
            raise CheckpointError(f"{path}: missing backbone.{twin} (its alias {key!r} is there)")
        if (raw[key].shape != backbone[twin].shape
                or not torch.equal(raw[key], backbone[twin])):
            raise CheckpointError(f"{path}: alias {key!r} does not match backbone.{twin}")
    pe = backbone.pop(_ORIGINAL_PE, None)
    ours = {}
    for key, tensor in backbone.items():
        for pattern, repl in _ORIGINAL_RENAMES:
            if re.search(pattern, key):
                ours[re.sub(pattern, repl, key)] = tensor
                break
        else:
            raise CheckpointError(f"{path}: unexpected key backbone.{key}")
    cfg = _infer_original_config(ours, pe, path)
    model = Rimer(cfg)
    _load_strict(model, ours, str(path))
    if pe is not None:
        model.pe.copy_(pe[0])
    manifest = {
        "name": path.stem,
        "format": "original-rimer-state-dict",
        "source": str(path),
        "sha256": {path.name: sha256_of(path)},
        "trained_on": "unknown (original checkpoint)",
    }
    return model, manifest


def _infer_original_config(sd: dict, pe: torch.Tensor | None, path: Path) -> RimerConfig:
    def shape(key, rank: int):
        if key not in sd:
            raise CheckpointError(f"{path}: missing tensor for {key}")
        if sd[key].dim() != rank:
            raise CheckpointError(f"{path}: {key} has shape {tuple(sd[key].shape)}; expected "
                                  f"{rank} dimensions")
        return tuple(sd[key].shape)

    d_model, patch_len = shape("embed.weight", 2)
    n_heads, head_size = shape("blocks.0.attn.r_k", 2)
    if pe is not None and (pe.dim() != 3 or pe.shape[2] != d_model):
        raise CheckpointError(f"{path}: position table shape {tuple(pe.shape)} does not fit "
                              f"d_model {d_model}")
    try:
        return RimerConfig(
            patch_len=patch_len, d_model=d_model, n_layers=1, head_size=head_size,
            w_rank=shape("blocks.0.attn.w_lora.lora.0.weight", 2)[0],
            a_rank=shape("blocks.0.attn.a_lora.lora.0.weight", 2)[0],
            g_rank=shape("blocks.0.attn.g_lora.lora.0.weight", 2)[0],
            pos_emb="sinusoidal" if pe is not None else "none",
            max_positions=pe.shape[1] if pe is not None else 5000,
            norm="window",
        )
    except ValueError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc


def _load_strict(model: Rimer, tensors: dict, where: str) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{where}: tensors do not match the architecture; "
                              f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    for key, tensor in tensors.items():
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise CheckpointError(f"{where}: {key} has shape {tuple(tensor.shape)}, "
                                  f"expected {tuple(expected[key].shape)}")
    model.load_state_dict({k: v.float() for k, v in tensors.items()}, strict=True)
