"""Snapshots: every series' state in one safetensors file, checked on reading (format in
service/store.py's docstring)."""


from __future__ import annotations

import ctypes
import hashlib
import json
import os
import re
import struct
import time
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load as load_bytes
from safetensors.torch import load_file
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


_DTYPES = {torch.float32: "F32", torch.float64: "F64", torch.float16: "F16",
           torch.bfloat16: "BF16", torch.int64: "I64", torch.int32: "I32", torch.int16: "I16",
           torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL"}
_HASH_BLOCK = 8 << 20  # bytes read back at a time to hash what was written


def write_snapshot(path: Path, ids: list[str], states: RimerState | Iterable[RimerState],
                   engine: Engine, seq: int, wal_from: int,
                   meta: dict[str, dict] | None = None) -> None:
    """Every series' state in one safetensors file, streamed: `states` is a batch, or host
    batches whose rows, in order, are `ids` (`Engine.export_states`' chunks), each written to its
    rows of every field as it comes, so the host holds one chunk at a time, never a copy of all.
    The file is what `safetensors.torch.save_file` would write (fields in name order): the
    header's offsets are known from the ids' count, and its sha256 (over the metadata and every
    field, `_content_sha256`) is computed by reading the written bytes back a block at a time and
    filled in over a placeholder of the same length. `meta`: the series' metadata (service/
    timeline.py) by id, taken at the states' cut. Written to a .tmp, fsynced, renamed over."""
    n = len(ids)
    reference = RimerState.zeros(engine.model.cfg, 1).tensors()
    names = sorted(reference)
    shapes = {k: (n, *reference[k].shape[1:]) for k in names}
    row_bytes = {k: reference[k].numel() * reference[k].element_size() for k in names}
    metas = [(meta or {}).get(i) for i in ids]
    metadata = {"format": SNAPSHOT_FORMAT, "format_version": SNAPSHOT_VERSION,
                "state_version": str(STATE_VERSION), "model": engine.name,
                "model_fingerprint": model_fingerprint(engine), "seq": str(seq),
                "wal_from": str(wal_from), "series": str(n), "ids": json.dumps(ids),
                "meta": json.dumps(metas, separators=(",", ":"), allow_nan=False),
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    offsets, at = {}, 0
    for k in names:
        offsets[k] = at
        at += row_bytes[k] * n

    def header(sha256: str) -> bytes:
        entries = {"__metadata__": {**metadata, "sha256": sha256}}
        for k in names:
            entries[k] = {"dtype": _DTYPES[reference[k].dtype], "shape": list(shapes[k]),
                          "data_offsets": [offsets[k], offsets[k] + row_bytes[k] * n]}
        raw = json.dumps(entries, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # (padded as safetensors pads: data 8-byte aligned)
        return struct.pack("<Q", len(raw)) + raw

    start = len(header("0" * 64))
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)  # (private, as the log)
    try:
        os.ftruncate(fd, start + at)
        row = 0
        for chunk in [states] if isinstance(states, RimerState) else states:
            rows = chunk.batch
            if row + rows > n:
                raise ValueError(f"write_snapshot: more states than the {n} ids")
            for k, t in chunk.tensors().items():
                if k not in offsets or tuple(t.shape[1:]) != shapes[k][1:] or t.dtype != reference[k].dtype:
                    raise ValueError(f"write_snapshot: field {k} does not fit the model")
                data = t.detach().to("cpu").contiguous().numpy().tobytes() if t.numel() else b""
                _pwrite_all(fd, data, start + offsets[k] + row * row_bytes[k])
            row += rows
            del chunk
        if row != n:
            raise ValueError(f"write_snapshot: {row} states for {n} ids")
        digest = hashlib.sha256(json.dumps(metadata, sort_keys=True).encode())
        for k in names:  # as _content_sha256: name, dtype, shape, then the field's bytes
            digest.update(k.encode() + str(reference[k].dtype).encode() + str(shapes[k]).encode())
            pos, end = start + offsets[k], start + offsets[k] + row_bytes[k] * n
            while pos < end:
                block = os.pread(fd, min(_HASH_BLOCK, end - pos), pos)
                if not block:
                    raise OSError(f"{tmp}: short read while hashing")
                digest.update(block)
                pos += len(block)
        final = header(digest.hexdigest())
        assert len(final) == start
        _pwrite_all(fd, final, 0)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    release_free_memory()


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def release_free_memory() -> None:
    """Hand memory freed on the heap back to the OS (glibc's `malloc_trim`; elsewhere nothing):
    after a snapshot's chunks, glibc otherwise keeps the freed pages (RSS stays up)."""
    global _malloc_trim
    if _malloc_trim is None:
        try:
            _malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


_malloc_trim = None


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
