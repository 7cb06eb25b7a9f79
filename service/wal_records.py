"""The write-ahead log's records: their binary layout, written and read (service/wal.py keeps
them in segments; service/store.py describes the whole data directory)."""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass

import numpy as np

WAL_VERSION = 4  # 2: append records end with the series' metadata (JSON); 3: state records;
# 4: column records (a columnar bulk append's appends in one record)
RECORD = struct.Struct("<II")  # payload length, CRC32 of the length bytes and the payload
PAYLOAD = struct.Struct("<BQH")  # kind, sequence number, id length
APPEND = struct.Struct("<QI")  # resulting length, number of values
META = struct.Struct("<I")  # bytes of the metadata's JSON (version 2)
BLOB = struct.Struct("<I")  # bytes of a series record (version 3)
COLUMNS = struct.Struct("<I")  # series in a column record (version 4)
KIND_APPEND, KIND_DELETE, KIND_STATE, KIND_COLUMNS = 1, 2, 3, 4
TAG_NONE, TAG_FLOAT, TAG_INT, TAG_JSON = 0, 1, 2, 3  # a column record's metadata, per series
_I64 = 1 << 63
MAX_PAYLOAD = 1 << 30


@dataclass
class Record:
    kind: int
    seq: int
    series_id: str
    length: int = 0
    values: list[float] | None = None
    meta: dict | None = None  # the series' metadata after an append (None: unchanged)
    record: bytes | None = None  # KIND_STATE: a series record (service/snapshots.py) imported



def encode(record: Record) -> bytes:
    sid = record.series_id.encode()
    payload = PAYLOAD.pack(record.kind, record.seq, len(sid)) + sid
    if record.kind == KIND_APPEND:
        values = np.asarray(record.values, dtype="<f8")
        payload += APPEND.pack(record.length, len(values)) + values.tobytes()
        meta = (b"" if record.meta is None else
                json.dumps(record.meta, separators=(",", ":"), allow_nan=False).encode())
        payload += META.pack(len(meta)) + meta
    elif record.kind == KIND_STATE:
        payload += BLOB.pack(len(record.record)) + record.record
    head = struct.pack("<I", len(payload))
    return head + struct.pack("<I", zlib.crc32(payload, zlib.crc32(head))) + payload


_META_JSON = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode  # (as json.dumps)
_LENGTH, _CRC = struct.Struct("<I"), struct.Struct("<I")
_INF = float("inf")


def _meta_columns(metas: list[dict | None]) -> bytes:
    """A column record's metadata: a tag per series (none; `{"last": x}` with x a finite float,
    or an int that fits 64 bits; anything else as JSON), then the floats, the ints, and the
    JSON list of the rest, so that decoding gives back the same dicts, types and all."""
    tags = bytearray(len(metas))
    floats, ints, other = [], [], []
    for i, meta in enumerate(metas):
        if meta is None:
            continue
        if len(meta) == 1:
            last = meta.get("last")
            kind = type(last)
            if kind is float and -_INF < last < _INF:
                tags[i] = TAG_FLOAT
                floats.append(last)
                continue
            if kind is int and -_I64 <= last < _I64:
                tags[i] = TAG_INT
                ints.append(last)
                continue
        tags[i] = TAG_JSON
        other.append(meta)
    rest = _META_JSON(other).encode() if other else b""
    return (bytes(tags) + np.asarray(floats, "<f8").tobytes() + np.asarray(ints, "<i8").tobytes()
            + META.pack(len(rest)) + rest)


def encode_appends(seq: int, ids: list[str], bounds: list[int], values: np.ndarray,
                   lengths: list[int], metas: list[dict | None]) -> bytes:
    """A columnar bulk append as one column record, its appends numbered from `seq`: what
    `encode` writes for each `Record(KIND_APPEND, seq + i, ids[i], lengths[i],
    values[bounds[i]:bounds[i + 1]], metas[i])`, held as arrays (a few array copies, not a
    record per series), and written, torn or checked as one: all of a request's appends
    replay, or none of them.

    Payload after `u8 kind | u64 first seq | u16 0`: `u32 n | n u16 id byte lengths | the ids |
    n u64 resulting lengths | n u32 value counts | the float64 values | n u8 metadata tags |
    float64 lasts | int64 lasts | u32 m | m bytes of JSON` (`_meta_columns`)."""
    joined = "".join(ids).encode()
    if len(joined) == sum(map(len, ids)):  # (ASCII ids: a character a byte)
        id_lengths = list(map(len, ids))
    else:
        id_lengths = [len(sid.encode()) for sid in ids]
    counts = np.diff(np.asarray(bounds, np.int64))
    payload = b"".join((
        PAYLOAD.pack(KIND_COLUMNS, seq, 0), COLUMNS.pack(len(ids)),
        np.asarray(id_lengths, "<u2").tobytes(), joined,
        np.asarray(lengths, "<u8").tobytes(), counts.astype("<u4").tobytes(),
        np.ascontiguousarray(values[bounds[0]:bounds[-1]], dtype="<f8").tobytes(),
        _meta_columns(metas)))
    head = _LENGTH.pack(len(payload))
    return head + _CRC.pack(zlib.crc32(payload, zlib.crc32(head))) + payload


def _decode_columns(payload: bytes, seq: int, at: int) -> list[Record]:
    """A column record's appends (`encode_appends`), as the records they stand for."""
    (n,) = COLUMNS.unpack_from(payload, at)
    at += COLUMNS.size

    def take(dtype: str, count: int) -> np.ndarray:
        nonlocal at
        out = np.frombuffer(payload, dtype=dtype, count=count, offset=at)
        at += out.nbytes
        return out

    id_lengths = take("<u2", n).tolist()
    ids, cut = [], at
    for size in id_lengths:
        ids.append(payload[cut:cut + size].decode())
        cut += size
    at = cut
    lengths = take("<u8", n).tolist()
    counts = take("<u4", n)
    values = take("<f8", int(counts.sum())).tolist()
    tags = take("u1", n)
    floats = iter(take("<f8", int((tags == TAG_FLOAT).sum())).tolist())
    ints = iter(take("<i8", int((tags == TAG_INT).sum())).tolist())
    (size,) = META.unpack_from(payload, at)
    at += META.size
    other = json.loads(payload[at:at + size].decode()) if size else []
    at += size
    if at != len(payload) or not isinstance(other, list) or \
            len(other) != int((tags == TAG_JSON).sum()) or not all(isinstance(m, dict) for m in other):
        raise ValueError("malformed column record")
    rest = iter(other)
    records, start = [], 0
    for i, (sid, count, tag) in enumerate(zip(ids, counts.tolist(), tags.tolist())):
        meta = (None if tag == TAG_NONE else {"last": next(floats)} if tag == TAG_FLOAT else
                {"last": next(ints)} if tag == TAG_INT else next(rest))
        records.append(Record(KIND_APPEND, seq + i, sid, lengths[i], values[start:start + count], meta))
        start += count
    return records


def decode_records(payload: bytes, version: int = WAL_VERSION) -> list[Record]:
    """The records one payload holds: one, or a column record's appends (version 4)."""
    if version >= 4 and payload[:1] == bytes([KIND_COLUMNS]):
        kind, seq, id_len = PAYLOAD.unpack_from(payload)
        if id_len == 0:
            return _decode_columns(payload, seq, PAYLOAD.size)
    return [_decode_payload(payload, version)]


def _decode_payload(payload: bytes, version: int = WAL_VERSION) -> Record:
    kind, seq, id_len = PAYLOAD.unpack_from(payload)
    at = PAYLOAD.size + id_len
    series_id = payload[PAYLOAD.size:at].decode()
    if kind == KIND_DELETE and at == len(payload):
        return Record(kind, seq, series_id)
    if kind == KIND_STATE and version >= 3:
        (size,) = BLOB.unpack_from(payload, at)
        at += BLOB.size
        if at + size == len(payload):
            return Record(kind, seq, series_id, record=payload[at:])
    if kind == KIND_APPEND:
        length, n = APPEND.unpack_from(payload, at)
        at += APPEND.size
        values = np.frombuffer(payload, dtype="<f8", count=n, offset=at).tolist()
        at += 8 * n
        meta = None
        if version >= 2:
            (size,) = META.unpack_from(payload, at)
            at += META.size
            if size:
                meta = json.loads(payload[at:at + size].decode())
                if not isinstance(meta, dict):
                    raise ValueError("metadata is not a JSON object")
            at += size
        if at == len(payload):
            return Record(kind, seq, series_id, length, values, meta)
    raise ValueError("malformed payload")
