"""Durability for streaming series: a write-ahead log (WAL) of accepted appends and deletes, and
periodic snapshots of every series' state. An acknowledged append is never lost.

Files in the data directory (series ids live inside files, never in file names):

* `wal-<segment>.log`: the log, in numbered segments. A segment is a header (magic `RIMERWAL`,
  format version, segment number, CRC32 of those) followed by records, each
  `u32 payload length | u32 CRC32(length bytes + payload) | payload`, little-endian. The payload is
  `u8 kind | u64 sequence number | u16 id length | id (UTF-8)`, then for an append
  `u64 resulting length | u32 n | n float64 values` (the values appended: gaps and nulls already
  filled) `| u32 m | m bytes of JSON` (the series' metadata after the append, service/timeline.py;
  m = 0: none). Format version 1 (read, no longer written) had no metadata. Sequence numbers
  run on across segments without gaps, so a missing record or segment is detected.
* `snapshot-<segment>.safetensors`: every series' state, each RimerState field stacked over the
  series; the metadata holds the ids (JSON), each series' metadata (a JSON list in the ids' order;
  format version 2, version 1 had none), STATE_VERSION, the model's name and fingerprint
  (sha256 of its config and weights digests), the last sequence number it covers, the first
  segment to replay after it, and a sha256 over the other metadata and every tensor's bytes.
  Written to a `.tmp` file, fsynced, renamed over, directory fsynced.
* `LOCK`: an exclusive flock, so two processes never share a data directory.

A write: the engine, holding the journal's lock, writes the record (os.write: in the OS page
cache once it returns, so it survives a crash of this process) and swaps in the new state; then,
outside its locks, calls `sync`: with `--fsync always` the append is acknowledged only after an
fsync covering its record (concurrent appends share one fsync: group commit); with `--fsync
interval` a background thread fsyncs every `--fsync-interval-ms`, so a power loss (not a process
crash) may lose the appends of the last interval. A failed write or fsync breaks the log: every
later append and delete is refused with 503 until a restart recovers from the files.

A snapshot: under the engine's locks and the journal's, the states are exported and the log
rotated to a new segment (the cut); the file is written outside the locks; then the older
segments and snapshots are removed. Nothing is written when no record came since the last one.

Recovery (before the service is ready): load the latest snapshot, refusing one that is corrupt,
truncated, or from another model or state version, with an error naming the file (there is no
fallback: the log it covers is gone); then replay the segments after it through
`Engine.apply_batch` (consecutive appends in batches, when the engine is batch-invariant; else
`Engine.append` one at a time) and `Engine.delete`, checking each append's resulting length
against the record.
A torn last record of the last segment (a partial write at a crash) is dropped with a warning
and cut off the file; any other bad record is an error naming the file and offset.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import struct
import threading
import time
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from model.state import STATE_VERSION, RimerState
from service.engine import Engine, EngineError, Op

log = logging.getLogger("rimer.store")

MAGIC = b"RIMERWAL"
WAL_VERSION = 2  # 2: append records end with the series' metadata (JSON)
WAL_READABLE = (1, 2)
HEADER = struct.Struct("<8sIQ")  # magic, version, segment number; then u32 CRC32 of these
HEADER_SIZE = HEADER.size + 4
RECORD = struct.Struct("<II")  # payload length, CRC32 of the length bytes and the payload
PAYLOAD = struct.Struct("<BQH")  # kind, sequence number, id length
APPEND = struct.Struct("<QI")  # resulting length, number of values
META = struct.Struct("<I")  # bytes of the metadata's JSON (version 2)
KIND_APPEND, KIND_DELETE = 1, 2
MAX_PAYLOAD = 1 << 30
REPLAY_BATCH = 4096  # most log records replayed in one engine batch
SNAPSHOT_FORMAT, SNAPSHOT_VERSION = "rimer-snapshot", "2"  # 2: series metadata
SNAPSHOT_READABLE = ("1", "2")
WAL_NAME = re.compile(r"^wal-(\d{16})\.log$")
SNAPSHOT_NAME = re.compile(r"^snapshot-(\d{16})\.safetensors$")
FSYNC_POLICIES = ("always", "interval")


class StoreError(RuntimeError):
    """The data directory cannot be used as it is; the message names the file and what to do."""


@dataclass
class Record:
    kind: int
    seq: int
    series_id: str
    length: int = 0
    values: list[float] | None = None
    meta: dict | None = None  # the series' metadata after an append (None: unchanged)


def wal_path(directory: Path, segment: int) -> Path:
    return directory / f"wal-{segment:016d}.log"


def snapshot_path(directory: Path, segment: int) -> Path:
    return directory / f"snapshot-{segment:016d}.safetensors"


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def encode(record: Record) -> bytes:
    sid = record.series_id.encode()
    payload = PAYLOAD.pack(record.kind, record.seq, len(sid)) + sid
    if record.kind == KIND_APPEND:
        values = np.asarray(record.values, dtype="<f8")
        payload += APPEND.pack(record.length, len(values)) + values.tobytes()
        meta = (b"" if record.meta is None else
                json.dumps(record.meta, separators=(",", ":"), allow_nan=False).encode())
        payload += META.pack(len(meta)) + meta
    head = struct.pack("<I", len(payload))
    return head + struct.pack("<I", zlib.crc32(payload, zlib.crc32(head))) + payload


def _decode_payload(payload: bytes, version: int = WAL_VERSION) -> Record:
    kind, seq, id_len = PAYLOAD.unpack_from(payload)
    at = PAYLOAD.size + id_len
    series_id = payload[PAYLOAD.size:at].decode()
    if kind == KIND_DELETE and at == len(payload):
        return Record(kind, seq, series_id)
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


def read_segment(path: Path, last: bool) -> tuple[int, list[Record], int | None]:
    """(segment number, records, end of the good records if a torn tail should be cut off).

    Only in the last segment (`last`) may the final record be torn: incomplete, or complete but
    failing its CRC with nothing after it. Anything else that does not check is an error."""
    data = path.read_bytes()
    if len(data) < HEADER_SIZE:
        if last:
            return -1, [], 0  # the header itself was torn: the segment holds nothing
        raise StoreError(f"{path}: truncated header ({len(data)} bytes)")
    magic, version, segment = HEADER.unpack_from(data)
    (crc,) = struct.unpack_from("<I", data, HEADER.size)
    if magic != MAGIC or crc != zlib.crc32(data[:HEADER.size]):
        raise StoreError(f"{path}: not a Rimer write-ahead log segment (bad magic or header CRC)")
    if version not in WAL_READABLE:
        raise StoreError(f"{path}: write-ahead log format version {version}; this build reads "
                         f"versions {', '.join(map(str, WAL_READABLE))}")
    records, at = [], HEADER_SIZE
    while at < len(data):
        problem = None
        if at + RECORD.size > len(data):
            problem = "incomplete record header"
        else:
            size, crc = RECORD.unpack_from(data, at)
            end = at + RECORD.size + size
            if size > MAX_PAYLOAD or end > len(data):
                problem = f"record of {size} bytes runs past the end of the file"
            elif zlib.crc32(data[at + RECORD.size:end], zlib.crc32(data[at:at + 4])) != crc:
                problem = "CRC mismatch"
        torn = last and (problem is not None and (problem != "CRC mismatch" or end == len(data)))
        if torn:
            log.warning("%s: dropping a torn last record at byte %d (%s, %d bytes): a write cut "
                        "short by a crash, never acknowledged", path, at, problem, len(data) - at)
            return segment, records, at
        if problem is not None:
            raise StoreError(f"{path}: corrupt record at byte {at} ({problem}) with more of the log "
                             "after it; refusing to start. Restore the data directory from a "
                             "backup, or move this file aside to lose the changes it holds")
        try:
            records.append(_decode_payload(data[at + RECORD.size:end], version))
        except (ValueError, struct.error, UnicodeDecodeError) as exc:
            raise StoreError(f"{path}: malformed record at byte {at} ({exc})") from exc
        at = end
    return segment, records, None


class WriteAheadLog:
    """The journal the engine writes to (service.engine.Journal)."""

    def __init__(self, directory: Path, segment: int, seq: int, fsync: str, metrics=None):
        self.directory, self.fsync_policy, self.metrics = directory, fsync, metrics
        self.lock = threading.RLock()  # a record's write and its state change
        self._sync_lock = threading.RLock()  # taken before `lock`, never after
        self.seq = self._synced = seq  # last sequence number written; last one made durable
        self.broken: str | None = None
        self.segment, self._fd = segment, self._create(segment)

    def _create(self, segment: int) -> int:
        path = wal_path(self.directory, segment)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        header = HEADER.pack(MAGIC, WAL_VERSION, segment)
        os.write(fd, header + struct.pack("<I", zlib.crc32(header)))
        os.fsync(fd)
        _fsync_dir(self.directory)
        return fd

    @contextmanager
    def exclusive(self):
        with self._sync_lock, self.lock:
            yield

    def _check(self) -> None:
        if self.broken is not None:
            raise EngineError(503, f"the write-ahead log failed ({self.broken}); changes are "
                                   "refused until the service is restarted")

    def _write(self, record: Record, op: str) -> int:
        with self.lock:
            self._check()
            record.seq = self.seq + 1
            data = encode(record)
            try:
                written = os.write(self._fd, data)
                if written != len(data):
                    raise OSError(f"short write ({written} of {len(data)} bytes)")
            except OSError as exc:
                self.broken = f"write: {exc}"
                log.error("write-ahead log %s: %s", wal_path(self.directory, self.segment), exc)
                self._check()
            self.seq += 1
            if self.metrics is not None:
                self.metrics.wal_records.labels(op).inc()
                self.metrics.wal_bytes.inc(len(data))
            return self.seq

    def fail(self, reason: str) -> None:
        """Refuse every change from now on: the engine could not apply what the log holds, so
        only a restart (which replays it) makes the states and the log agree again."""
        with self.lock:
            self.broken = self.broken or reason
        log.error("write-ahead log %s: %s; changes are refused until the service is restarted",
                  wal_path(self.directory, self.segment), reason)

    def write_append(self, series_id: str, values: list[float], length: int,
                     meta: dict | None = None) -> int:
        return self._write(Record(KIND_APPEND, 0, series_id, length, values, meta), "append")

    def write_delete(self, series_id: str) -> int:
        return self._write(Record(KIND_DELETE, 0, series_id), "delete")

    def sync(self, ticket: int) -> None:
        """With --fsync always: return once record `ticket` is on stable storage."""
        if self.fsync_policy == "always":
            self.flush(ticket)
        else:
            self._check()

    def flush(self, ticket: int | None = None) -> None:
        with self._sync_lock:
            if ticket is not None and self._synced >= ticket:
                return  # another thread's fsync covered it
            with self.lock:
                self._check()
                target = self.seq
            if self._synced >= target:
                return
            start = time.perf_counter()
            try:
                os.fsync(self._fd)
            except OSError as exc:  # the page cache may have dropped the data: never retry
                self.broken = f"fsync: {exc}"
                log.error("write-ahead log %s: fsync failed: %s", wal_path(self.directory,
                                                                           self.segment), exc)
                self._check()
            if self.metrics is not None:
                self.metrics.wal_fsync.observe(time.perf_counter() - start)
            self._synced = target

    def rotate(self) -> tuple[int, int]:
        """Close this segment (fsynced) and start the next; (the new segment, last seq before it)."""
        with self.exclusive():
            self.flush()
            os.close(self._fd)
            self.segment += 1
            self._fd = self._create(self.segment)
            return self.segment, self.seq

    def close(self) -> None:
        with self.exclusive():
            if self._fd >= 0:
                if self.broken is None:
                    self.flush()
                os.close(self._fd)
                self._fd = -1
                self.broken = self.broken or "closed"


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


class Store:
    """The data directory of a running service: recovery, the log, snapshots."""

    def __init__(self, directory: str | Path, engine: Engine, fsync: str = "always",
                 fsync_interval_ms: int = 100, snapshot_interval_s: float = 60.0, metrics=None):
        if fsync not in FSYNC_POLICIES:
            raise ValueError(f"fsync must be one of {FSYNC_POLICIES}, got {fsync!r}")
        self.directory = Path(directory)
        self.engine, self.metrics = engine, metrics
        self.fsync, self.fsync_interval_s = fsync, fsync_interval_ms / 1000
        self.snapshot_interval_s = snapshot_interval_s
        self.wal: WriteAheadLog | None = None
        self._snapshot_lock = threading.Lock()
        self._snapshot_seq = 0  # last seq the newest snapshot covers
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock_fd = -1

    # ---- start-up ----------------------------------------------------------------------------

    def open(self) -> dict:
        """Lock the directory, recover every series into the engine, start the log and threads."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(self.directory / "LOCK", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(self._lock_fd)
            raise StoreError(f"data directory {self.directory} is in use by another process "
                             f"(its LOCK file is held)") from exc
        try:
            stats = self.recover()
        except BaseException:
            self.close(snapshot=False)
            raise
        self.engine.journal = self.wal
        if self.fsync == "interval":
            self._spawn("rimer-wal-fsync", self.fsync_interval_s, self._flush_quietly)
        if self.snapshot_interval_s > 0:
            self._spawn("rimer-snapshot", self.snapshot_interval_s, self._snapshot_quietly)
        return stats

    def recover(self) -> dict:
        start = time.perf_counter()
        d = self.directory
        for tmp in d.glob("*.tmp"):
            log.info("removing %s, a snapshot whose write did not finish", tmp)
            tmp.unlink()
        segments = sorted(int(m[1]) for p in d.iterdir() if (m := WAL_NAME.match(p.name)))
        snapshots = sorted(int(m[1]) for p in d.iterdir() if (m := SNAPSHOT_NAME.match(p.name)))
        seq, wal_from, restored = 0, 1, 0
        if snapshots:
            path = snapshot_path(d, snapshots[-1])
            ids, state, seq, wal_from, metas = read_snapshot(path, self.engine)
            try:
                self.engine.import_states(ids, state)
            except EngineError as exc:
                raise StoreError(f"snapshot {path}: {exc.message}") from exc
            self.engine.meta.update((i, m) for i, m in zip(ids, metas) if m is not None)
            restored, self._snapshot_seq = len(ids), seq
            log.info("restored %d series from %s (covers the log to record %d)", len(ids), path, seq)
        for old in [s for s in segments if s < wal_from]:
            wal_path(d, old).unlink()  # covered by the snapshot; left by a crash before removal
        live = [s for s in segments if s >= wal_from]
        if live and live != list(range(wal_from, wal_from + len(live))):
            missing = sorted(set(range(wal_from, live[-1] + 1)) - set(live))
            raise StoreError(f"data directory {d}: write-ahead log segment(s) {missing} are "
                             f"missing (expected {wal_path(d, wal_from).name} onwards)")
        replayed = 0
        # Consecutive appends are replayed as one engine batch (each series' in log order) where
        # the engine found its backend batch-invariant: the same bits as one at a time, with a
        # model call per batch instead of per completed patch (101,000 one-point appends of
        # 1,000 series: 3.64 s against 7.99 s one at a time, bench/results/recovery.json).
        batched = self.engine.batch_invariant
        pending: list[tuple[Path, Record]] = []
        for number in live:
            path = wal_path(d, number)
            last = number == live[-1]
            segment, records, cut = read_segment(path, last)
            if segment not in (number, -1):
                raise StoreError(f"{path}: its header says segment {segment}")
            for offset, record in enumerate(records):
                if record.seq != seq + 1:
                    raise StoreError(f"{path}: record {offset} has sequence number {record.seq}, "
                                     f"expected {seq + 1} (records are missing)")
                if batched and record.kind != KIND_DELETE:
                    pending.append((path, record))
                    if len(pending) >= REPLAY_BATCH:
                        self._replay_batch(pending)
                else:
                    self._replay_batch(pending)
                    self._replay(path, record)
                seq, replayed = record.seq, replayed + 1
            self._replay_batch(pending)  # (a batch ends with its segment)
            if cut is not None:
                if segment == -1:
                    path.unlink()
                else:
                    with open(path, "r+b") as f:
                        f.truncate(cut)
                        os.fsync(f.fileno())
        remaining = [int(m[1]) for p in d.iterdir() if (m := WAL_NAME.match(p.name))]
        self.wal = WriteAheadLog(d, max([wal_from - 1, *remaining]) + 1, seq, self.fsync, self.metrics)
        seconds = time.perf_counter() - start
        if self.metrics is not None:
            self.metrics.recovery_seconds.set(seconds)
            self.metrics.recovery_records.set(replayed)
        log.info("recovered %d series from the snapshot and %d log records in %.2f s; "
                 "%d series held", restored, replayed, seconds, self.engine.series_held)
        return {"restored": restored, "replayed": replayed, "seconds": seconds}

    def _replay_batch(self, records: list[tuple[Path, Record]]) -> None:
        """Appends (no deletes) in one `Engine.apply_batch` request, checked like `_replay`, and
        `records` emptied. A refused batch changed nothing: replayed one at a time, to name the
        record at fault."""
        if not records:
            return
        ops = [Op(r.series_id, r.values, None, meta=r.meta) for _, r in records]
        [result] = self.engine.apply_batch([ops])
        if isinstance(result, EngineError):
            for path, record in records:
                self._replay(path, record)
        else:
            for (path, record), (length, _) in zip(records, result):
                self._check_length(path, record, length)
        records.clear()

    def _replay(self, path: Path, record: Record) -> None:
        try:
            if record.kind == KIND_DELETE:
                try:
                    self.engine.delete(record.series_id)
                except EngineError as exc:
                    if exc.status != 404:  # a series deleted before its first append finished
                        raise
                return
            length, _ = self.engine.append(record.series_id, record.values, None, meta=record.meta)
        except EngineError as exc:
            raise StoreError(f"{path}: replaying record {record.seq} (series "
                             f"{record.series_id!r}) failed: {exc.message}") from exc
        self._check_length(path, record, length)

    @staticmethod
    def _check_length(path: Path, record: Record, length: int) -> None:
        if length != record.length:
            raise StoreError(f"{path}: replaying record {record.seq} gave series "
                             f"{record.series_id!r} {length} points; the log says {record.length}")

    # ---- while serving -----------------------------------------------------------------------

    def lag(self) -> dict[str, int]:
        """Log records written but not yet fsynced, and records since the last snapshot (what a
        crash now would replay); read without locks (gauges)."""
        wal = self.wal
        if wal is None:
            return {"unsynced": 0, "since_snapshot": 0}
        return {"unsynced": max(0, wal.seq - wal._synced),
                "since_snapshot": max(0, wal.seq - self._snapshot_seq)}

    def snapshot(self, force: bool = False) -> Path | None:
        """Write a snapshot of every series and drop the log it covers; None if nothing changed."""
        with self._snapshot_lock:
            if self.wal is None or (not force and self.wal.seq == self._snapshot_seq):
                return None
            start = time.perf_counter()
            def cut():  # no append in flight: the metadata matches the states
                return self.wal.rotate(), dict(self.engine.meta)

            ids, chunks, ((segment, seq), meta) = self.engine.export_states(cut=cut)
            state = (RimerState.cat(chunks) if chunks
                     else RimerState.zeros(self.engine.model.cfg, 0))
            path = snapshot_path(self.directory, segment)
            write_snapshot(path, ids, state, self.engine, seq, segment, meta)
            self._snapshot_seq = seq
            for p in self.directory.iterdir():
                m = WAL_NAME.match(p.name) or SNAPSHOT_NAME.match(p.name)
                if m and int(m[1]) < segment:
                    p.unlink()
            seconds = time.perf_counter() - start
            if self.metrics is not None:
                self.metrics.snapshot_seconds.observe(seconds)
            log.info("snapshot %s: %d series, log to record %d, %.2f s", path.name, len(ids), seq,
                     seconds)
            return path

    def _spawn(self, name: str, interval: float, fn) -> None:
        def loop():
            while not self._stop.wait(interval):
                fn()
        t = threading.Thread(target=loop, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def _flush_quietly(self) -> None:
        try:
            self.wal.flush()
        except EngineError:
            pass  # logged when it broke; appends report it

    def _snapshot_quietly(self) -> None:
        try:
            self.snapshot()
        except Exception:
            log.exception("snapshot failed; the log keeps every change, and the next try is in "
                          "%.0f s", self.snapshot_interval_s)
            if self.metrics is not None:
                self.metrics.snapshot_failures.inc()

    def close(self, snapshot: bool = True) -> None:
        """Clean shutdown: stop the threads, write a last snapshot, close the log."""
        self._stop.set()
        for t in self._threads:
            t.join()
        if self.wal is not None:
            if snapshot and self.wal.broken is None:
                try:
                    self.snapshot()
                except Exception:
                    log.exception("the shutdown snapshot failed; the log keeps every change")
            self.engine.journal = None
            self.wal.close()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1
