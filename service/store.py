"""Durability for streaming series: a write-ahead log (WAL) of accepted appends and deletes, and
periodic snapshots of every series' state. An acknowledged append is never lost.

Files in the data directory (series ids live inside files, never in file names):

* `wal-<segment>.log`: the log, in numbered segments. A segment is a header (magic `RIMERWAL`,
  format version, segment number, CRC32 of those) followed by records, each
  `u32 payload length | u32 CRC32(length bytes + payload) | payload`, little-endian. The payload is
  `u8 kind | u64 sequence number | u16 id length | id (UTF-8)`, then for an append
  `u64 resulting length | u32 n | n float64 values` (the values appended: gaps and nulls already
  filled) `| u32 m | m bytes of JSON` (the series' metadata after the append, service/timeline.py;
  m = 0: none); for a state record (a series imported whole, PUT /series/{id}/import, format
  version 3) `u32 n | n bytes` of the series record (service/snapshots.py: a one-series snapshot,
  checked again at replay); for a column record (format version 4: a columnar bulk append's
  appends, kind 4 with an empty id, written, torn and replayed as one) the appends' ids, lengths,
  values and metadata as arrays (service/wal_records.py `encode_appends`), numbered from its sequence
  number on. Format version 1 (read, no longer written) had no metadata, 2 no state records, 3
  no column records. Sequence numbers
  run on across segments without gaps, so a missing record or segment is detected.
* `snapshot-<segment>.safetensors`: every series' state, each RimerState field stacked over the
  series; the metadata holds the ids (JSON), each series' metadata (a JSON list in the ids' order;
  format version 2, version 1 had none), STATE_VERSION, the model's name and fingerprint
  (sha256 of its config and weights digests), the last sequence number it covers, the first
  segment to replay after it, and a sha256 over the other metadata and every tensor's bytes.
  Written to a `.tmp` file, fsynced, renamed over, directory fsynced.
* `MODEL.json`: the model the directory's states belong to (name, fingerprint, STATE_VERSION),
  written once a first start has recovered and checked at every start, so another model is
  refused whether or not a snapshot was written yet (the log's appends carry no model: a
  directory that crashed before its first snapshot was replayed under any model given).
  Directories from before it get it at their next start.
* `LOCK`: an exclusive flock, so two processes never share a data directory.

A write: the engine, holding the journal's lock, writes the record (os.write: in the OS page
cache once it returns, so it survives a crash of this process) and swaps in the new state; then,
outside its locks, calls `sync`: with `--fsync always` the append is acknowledged only after an
fsync covering its record (concurrent appends share one fsync: group commit); with `--fsync
interval` a background thread fsyncs every `--fsync-interval-ms`, so a power loss (not a process
crash) may lose the appends of the last interval. A failed write or fsync breaks the log: every
later append and delete is refused with 503 until a restart recovers from the files.

A snapshot: under the engine's locks and the journal's, the states are taken (references, the
pool's rows copied on the device, spill files pinned by hard links) and the log rotated to a new
segment (the cut); outside the locks the states are streamed to the file a chunk at a time
(`StateChunks`, `write_snapshot`: the host holds one chunk, not a copy of every state); then the
older segments and snapshots are removed. Nothing is written when no record came since the last one.

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
import json
import logging
import os
import threading
import time
from pathlib import Path

from service.engine import Engine, EngineError, Op
from service.snapshots import (
    SNAPSHOT_NAME,
    STATE_VERSION,
    ModelMismatch,
    model_fingerprint,
    read_series_record,
    read_snapshot,
    snapshot_path,
    write_snapshot,
)
from service.wal import (  # noqa: F401 (HEADER_SIZE, StoreError: re-exported for callers)
    FSYNC_POLICIES,
    HEADER_SIZE,
    KIND_APPEND,
    KIND_DELETE,
    KIND_STATE,
    WAL_NAME,
    Record,
    StoreError,
    WriteAheadLog,
    _fsync_dir,
    read_segment,
    rewrite_empty,
    segment_header,
    wal_path,
)

log = logging.getLogger("rimer.store")
MODEL_FILE = "MODEL.json"


def _model_identity(engine: Engine) -> dict[str, str]:
    return {"model": engine.name, "model_fingerprint": model_fingerprint(engine),
            "state_version": str(STATE_VERSION)}


def write_model_file(directory: Path, engine: Engine) -> None:
    """`MODEL.json` naming the loaded model (atomically, 0600): once its states are recovered."""
    path = directory / MODEL_FILE
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(_model_identity(engine), indent=1) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(directory)


def check_model_file(directory: Path, engine: Engine) -> bool:
    """Check the directory's `MODEL.json` against the loaded model (ModelMismatch naming the file
    and both models); False where there is none yet (a new directory, or one from before it)."""
    path = directory / MODEL_FILE
    ours = _model_identity(engine)
    try:
        theirs = json.loads(path.read_text())
    except FileNotFoundError:
        return False
    except (OSError, ValueError) as exc:
        raise StoreError(f"{path} cannot be read ({exc}); it names the model of the directory's "
                         "states: restore it from a backup, or move the data directory aside") from exc
    if not isinstance(theirs, dict):
        raise StoreError(f"{path} is not a JSON object; restore it from a backup, or move the "
                         "data directory aside")
    if theirs.get("state_version") != ours["state_version"]:
        raise ModelMismatch(f"{path}: the directory holds states of STATE_VERSION "
                            f"{theirs.get('state_version')}, this build uses {STATE_VERSION}; "
                            "serve it with the build that wrote it, or move the data directory aside")
    if theirs.get("model_fingerprint") != ours["model_fingerprint"]:
        raise ModelMismatch(f"{path}: the directory's series belong to model "
                            f"{theirs.get('model')!r} (fingerprint "
                            f"{str(theirs.get('model_fingerprint'))[:12]}), but the service loaded "
                            f"{engine.name!r} (fingerprint {ours['model_fingerprint'][:12]}): states "
                            "of one model mean nothing to another. Serve the model it was written "
                            "with (--weights), or move the data directory aside")
    return True
REPLAY_BATCH = 4096  # most log records replayed in one engine batch


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
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)  # (its files are 0600)
        self._lock_fd = os.open(self.directory / "LOCK", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(self._lock_fd)
            raise StoreError(f"data directory {self.directory} is in use by another process "
                             f"(its LOCK file is held)") from exc
        try:
            named = check_model_file(self.directory, self.engine)
            stats = self.recover()
            if not named:  # (only once its states are this model's: a refused start names none)
                write_model_file(self.directory, self.engine)
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
        reuse = None  # the last segment, when it is only this build's header: the log's next
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
                if batched and record.kind == KIND_APPEND:
                    pending.append((path, record))
                    if len(pending) >= REPLAY_BATCH:
                        self._replay_batch(pending)
                else:
                    self._replay_batch(pending)
                    self._replay(path, record)
                seq, replayed = record.seq, replayed + 1
            self._replay_batch(pending)  # (a batch ends with its segment)
            if last and not records and cut is None and path.read_bytes() == segment_header(number):
                reuse = number
            if cut is not None:
                if segment == -1 and last:
                    path.unlink()
                elif segment == -1:
                    rewrite_empty(path, number)
                else:
                    with open(path, "r+b") as f:
                        f.truncate(cut)
                        os.fsync(f.fileno())
        remaining = [int(m[1]) for p in d.iterdir() if (m := WAL_NAME.match(p.name))]
        segment = reuse if reuse is not None else max([wal_from - 1, *remaining]) + 1
        self.wal = WriteAheadLog(d, segment, seq, self.fsync, self.metrics, reuse=reuse is not None)
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
            if record.kind == KIND_STATE:
                try:
                    series_id, state, meta, _ = read_series_record(record.record, self.engine)
                except StoreError as exc:  # (named by its file and record, as the others)
                    raise type(exc)(f"{path}: record {record.seq} (an import of series "
                                    f"{record.series_id!r}): {exc}") from exc
                if series_id != record.series_id:
                    raise StoreError(f"{path}: record {record.seq} imports {series_id!r} under "
                                     f"the id {record.series_id!r}")
                self.engine.import_series(series_id, state, meta, record.record)
                return
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
            path = snapshot_path(self.directory, segment)
            with chunks:  # streamed to the file a chunk at a time, off the locks
                write_snapshot(path, ids, chunks, self.engine, seq, segment, meta)
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
        if self.wal is not None and self.wal.broken is not None:
            return  # (no snapshot can cut a failed log: said once when it failed, and by /readyz)
        try:
            self.snapshot()
        except Exception as exc:
            # (a full or failing disk in one line; anything else with its traceback)
            log.error("snapshot failed (%s); the log keeps every change, and the next try is in "
                      "%.0f s", exc, self.snapshot_interval_s,
                      exc_info=not isinstance(exc, (OSError, EngineError)))
            if self.metrics is not None:
                self.metrics.snapshot_failures.inc()

    def log_failure(self) -> str | None:
        """Why the write-ahead log refuses every change until a restart (None: it does not)."""
        return None if self.wal is None else self.wal.broken

    def close(self, snapshot: bool = True) -> None:
        """Clean shutdown: stop the threads, write a last snapshot, close the log."""
        self._stop.set()
        for t in self._threads:
            t.join()
        if self.wal is not None:
            if snapshot and self.wal.broken is None:
                try:
                    self.snapshot()
                except Exception as exc:  # (a full disk in one line, as the periodic ones)
                    log.error("the shutdown snapshot failed (%s); the log keeps every change",
                              exc, exc_info=not isinstance(exc, OSError))
            elif snapshot:
                log.warning("no shutdown snapshot: the write-ahead log failed (%s); the next start "
                            "replays the log up to its last whole record", self.wal.broken)
            self.engine.journal = None
            self.wal.close()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1
