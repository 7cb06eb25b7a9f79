"""Snapshots: every series' state in one safetensors file, checked on reading (format in
service/store.py's docstring)."""


from __future__ import annotations

import hashlib
import json
import os
import re
import time
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from model.state import STATE_VERSION, RimerState
from service.engine import Engine
from service.wal import StoreError, _fsync_dir

SNAPSHOT_FORMAT, SNAPSHOT_VERSION = "rimer-snapshot", "2"  # 2: series metadata
SNAPSHOT_READABLE = ("1", "2")
SNAPSHOT_NAME = re.compile(r"^snapshot-(\d{16})\.safetensors$")


def snapshot_path(directory: Path, segment: int) -> Path:
    return directory / f"snapshot-{segment:016d}.safetensors"


def model_fingerprint(engine: Engine) -> str:
    ident = {"config": engine.model.cfg.to_dict(), "weights": engine.manifest.get("sha256")}
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()


def _content_sha256(metadata: dict[str, str], tensors: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256(json.dumps({k: v for k, v in metadata.items() if k != "sha256"},
                                       sort_keys=True).encode())
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        digest.update(name.encode() + str(t.dtype).encode() + str(tuple(t.shape)).encode())
        digest.update(t.numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def write_snapshot(path: Path, ids: list[str], state: RimerState, engine: Engine, seq: int,
                   wal_from: int, meta: dict[str, dict] | None = None) -> None:
    """`meta`: the series' metadata (service/timeline.py) by id, taken at the states' cut."""
    tensors = {k: v.contiguous() for k, v in state.tensors().items()}
    metas = [(meta or {}).get(i) for i in ids]
    metadata = {"format": SNAPSHOT_FORMAT, "format_version": SNAPSHOT_VERSION,
                "state_version": str(STATE_VERSION), "model": engine.name,
                "model_fingerprint": model_fingerprint(engine), "seq": str(seq),
                "wal_from": str(wal_from), "series": str(len(ids)), "ids": json.dumps(ids),
                "meta": json.dumps(metas, separators=(",", ":"), allow_nan=False),
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    metadata["sha256"] = _content_sha256(metadata, tensors)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, tmp, metadata=metadata)
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def read_snapshot(path: Path, engine: Engine
                  ) -> tuple[list[str], RimerState, int, int, list[dict | None]]:
    """(ids, states, last seq covered, first segment to replay, each series' metadata) of a
    snapshot that checks."""
    fix = ("refusing to start. Restore the data directory from a backup, or move the snapshot "
           "aside to start without the series it holds")
    try:
        with safe_open(str(path), "pt") as f:
            metadata = f.metadata() or {}
        tensors = load_file(path)
    except Exception as exc:  # safetensors raises several kinds for a damaged file
        raise StoreError(f"snapshot {path} is corrupt or truncated ({exc}); {fix}") from exc
    if metadata.get("format") != SNAPSHOT_FORMAT or "sha256" not in metadata:
        raise StoreError(f"snapshot {path} is not a Rimer snapshot; {fix}")
    actual = _content_sha256(metadata, tensors)
    if actual != metadata["sha256"]:
        raise StoreError(f"snapshot {path} is corrupt: its content's sha256 {actual} does not match "
                         f"the recorded {metadata['sha256']}; {fix}")
    if metadata.get("format_version") not in SNAPSHOT_READABLE:
        raise StoreError(f"snapshot {path} has format version {metadata.get('format_version')}; "
                         f"this build reads versions {', '.join(SNAPSHOT_READABLE)}")
    if metadata.get("state_version") != str(STATE_VERSION):
        raise StoreError(f"snapshot {path} holds states of STATE_VERSION "
                         f"{metadata.get('state_version')}, this build uses {STATE_VERSION}; "
                         "serve it with the build that wrote it, or move the data directory aside")
    if metadata.get("model_fingerprint") != model_fingerprint(engine):
        raise StoreError(f"snapshot {path} was written by model {metadata.get('model')!r} "
                         f"(fingerprint {metadata.get('model_fingerprint', '')[:12]}), but the "
                         f"service loaded {engine.name!r} (fingerprint "
                         f"{model_fingerprint(engine)[:12]}): states of one model mean nothing to "
                         "another. Serve the model it was written with (--weights), or move the "
                         "data directory aside")
    ids = json.loads(metadata["ids"])
    metas = json.loads(metadata.get("meta", "null")) or [None] * len(ids)  # none in version 1
    if len(metas) != len(ids) or not all(m is None or isinstance(m, dict) for m in metas):
        raise StoreError(f"snapshot {path}: its series metadata does not match its ids; {fix}")
    try:
        state = RimerState(**tensors)
        reference = RimerState.zeros(engine.model.cfg, len(ids))
        for name, t in reference.tensors().items():
            if getattr(state, name).shape != t.shape or getattr(state, name).dtype != t.dtype:
                raise ValueError(f"field {name}")
    except (TypeError, ValueError) as exc:
        raise StoreError(f"snapshot {path}: states do not fit the model ({exc})") from exc
    return ids, state, int(metadata["seq"]), int(metadata["wal_from"]), metas
