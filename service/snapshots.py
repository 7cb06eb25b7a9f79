"""Snapshots: every series' state in one safetensors file, checked on reading (format in
service/store.py's docstring)."""


from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import time
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load as load_bytes
from safetensors.torch import load_file, save_file
from safetensors.torch import save as save_bytes

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


class ModelMismatch(StoreError):
    """A snapshot (or a series record) of another model or state layout: meaningless here."""


def _check(metadata: dict[str, str], tensors: dict[str, torch.Tensor], engine: Engine, what: str,
           fix: str) -> tuple[list[str], RimerState, list[dict | None]]:
    """The ids, states and metadata of a snapshot's content, or StoreError naming `what`."""
    if metadata.get("format") != SNAPSHOT_FORMAT or "sha256" not in metadata:
        raise StoreError(f"{what} is not a Rimer snapshot; {fix}")
    actual = _content_sha256(metadata, tensors)
    if actual != metadata["sha256"]:
        raise StoreError(f"{what} is corrupt: its content's sha256 {actual} does not match "
                         f"the recorded {metadata['sha256']}; {fix}")
    if metadata.get("format_version") not in SNAPSHOT_READABLE:
        raise StoreError(f"{what} has format version {metadata.get('format_version')}; "
                         f"this build reads versions {', '.join(SNAPSHOT_READABLE)}")
    if metadata.get("state_version") != str(STATE_VERSION):
        raise ModelMismatch(f"{what} holds states of STATE_VERSION "
                            f"{metadata.get('state_version')}, this build uses {STATE_VERSION}; "
                            "serve it with the build that wrote it, or move the data directory aside")
    if metadata.get("model_fingerprint") != model_fingerprint(engine):
        raise ModelMismatch(f"{what} was written by model {metadata.get('model')!r} "
                            f"(fingerprint {metadata.get('model_fingerprint', '')[:12]}), but the "
                            f"service loaded {engine.name!r} (fingerprint "
                            f"{model_fingerprint(engine)[:12]}): states of one model mean nothing to "
                            "another. Serve the model it was written with (--weights), or move the "
                            "data directory aside")
    try:
        ids = json.loads(metadata["ids"])
        metas = json.loads(metadata.get("meta", "null")) or [None] * len(ids)  # none in version 1
    except (KeyError, ValueError) as exc:
        raise StoreError(f"{what}: its ids or series metadata do not parse ({exc}); {fix}") from exc
    if (not isinstance(ids, list) or not all(isinstance(i, str) for i in ids)
            or not isinstance(metas, list) or len(metas) != len(ids)
            or not all(m is None or isinstance(m, dict) for m in metas)):
        raise StoreError(f"{what}: its series metadata does not match its ids; {fix}")
    try:
        state = RimerState(**tensors)
        reference = RimerState.zeros(engine.model.cfg, len(ids))
        for name, t in reference.tensors().items():
            if getattr(state, name).shape != t.shape or getattr(state, name).dtype != t.dtype:
                raise ValueError(f"field {name}")
    except (TypeError, ValueError) as exc:
        raise StoreError(f"{what}: states do not fit the model ({exc})") from exc
    return ids, state, metas


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
    ids, state, metas = _check(metadata, tensors, engine, f"snapshot {path}", fix)
    return ids, state, int(metadata["seq"]), int(metadata["wal_from"]), metas


# ---- one series' record: what GET /series/{id}/export answers and PUT .../import takes ----------
# The same format as a snapshot file (a snapshot of one series, seq 0), so it is checked by the
# same code: format, content sha256, state version and model fingerprint.

def series_record(engine: Engine, series_id: str, state: RimerState, meta: dict | None) -> bytes:
    """A checked, self-describing record of one series' state and metadata (safetensors bytes)."""
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.tensors().items()}
    metadata = {"format": SNAPSHOT_FORMAT, "format_version": SNAPSHOT_VERSION,
                "state_version": str(STATE_VERSION), "model": engine.name,
                "model_fingerprint": model_fingerprint(engine), "seq": "0", "wal_from": "0",
                "series": "1", "ids": json.dumps([series_id]),
                "meta": json.dumps([meta], separators=(",", ":"), allow_nan=False),
                "created": "-"}  # no time: a series' record is a function of its state
    metadata["sha256"] = _content_sha256(metadata, tensors)
    return save_bytes(tensors, metadata=metadata)


def series_record_sha256(engine: Engine, series_id: str, state: RimerState,
                         meta: dict | None) -> str:
    """The content sha256 its series record would carry: equal for equal states (bit for bit)
    and metadata of one series under one model."""
    return record_sha256(series_record(engine, series_id, state, meta))


def record_sha256(record: bytes) -> str:
    """The content sha256 a series record (or snapshot) carries in its metadata (unchecked)."""
    (size,) = struct.unpack_from("<Q", record)
    return json.loads(record[8:8 + size])["__metadata__"]["sha256"]


def read_series_record(data: bytes, engine: Engine) -> tuple[str, RimerState, dict | None, str]:
    """(id, state, metadata, content sha256) of a series record that checks; StoreError (or
    ModelMismatch) naming what is wrong otherwise."""
    fix = "export the series again"
    try:
        (size,) = struct.unpack_from("<Q", data)
        header = json.loads(data[8:8 + size])
        metadata = header.get("__metadata__") or {}
        tensors = load_bytes(bytes(data))
    except Exception as exc:  # safetensors raises several kinds for damaged bytes
        raise StoreError(f"the series record is corrupt or truncated ({exc}); {fix}") from exc
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise StoreError(f"the series record's metadata is malformed; {fix}")
    ids, state, metas = _check(metadata, tensors, engine, "the series record", fix)
    if len(ids) != 1:
        raise StoreError(f"the series record holds {len(ids)} series, not one; {fix}")
    return ids[0], state, metas[0], metadata["sha256"]
