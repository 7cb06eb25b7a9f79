"""The write-ahead log: its segments (a header, then records: service/wal_records.py), read at
start-up, and the writer with its fsync policies (group commit, or an interval). See
service/store.py for the whole data directory."""


from __future__ import annotations

import logging
import os
import re
import struct
import threading
import time
import zlib
from contextlib import contextmanager, suppress
from pathlib import Path

import numpy as np

from service.engine import EngineError
from service.wal_records import (  # noqa: F401 (the record names callers take from here too)
    APPEND,
    KIND_APPEND,
    KIND_DELETE,
    KIND_STATE,
    MAX_PAYLOAD,
    PAYLOAD,
    RECORD,
    WAL_VERSION,
    Record,
    decode_records,
    encode,
    encode_appends,
)

log = logging.getLogger("rimer.store")

MAGIC = b"RIMERWAL"
WAL_READABLE = (1, 2, 3, 4)
HEADER = struct.Struct("<8sIQ")  # magic, version, segment number; then u32 CRC32 of these
HEADER_SIZE = HEADER.size + 4
WAL_NAME = re.compile(r"^wal-(\d{16})\.log$")
FSYNC_POLICIES = ("always", "interval")


class StoreError(RuntimeError):
    """The data directory cannot be used as it is; the message names the file and what to do."""


def wal_path(directory: Path, segment: int) -> Path:
    return directory / f"wal-{segment:016d}.log"


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def segment_header(segment: int) -> bytes:
    header = HEADER.pack(MAGIC, WAL_VERSION, segment)
    return header + struct.pack("<I", zlib.crc32(header))


def rewrite_empty(path: Path, segment: int) -> None:
    """A segment whose header was torn, made a whole empty one (so that the segments' numbers
    stay consecutive for the next start)."""
    with open(path, "wb") as f:
        f.write(segment_header(segment))
        f.flush()
        os.fsync(f.fileno())


def read_segment(path: Path, last: bool) -> tuple[int, list[Record], int | None]:
    """(segment number, records, end of the good records if a torn tail should be cut off).

    Only in the last segment (`last`) may the final record be torn: incomplete, or complete but
    failing its CRC with nothing after it. Anything else that does not check is an error."""
    data = path.read_bytes()
    if len(data) < HEADER_SIZE:  # the header itself was torn (a crash or a full disk while the
        # segment was made): it holds no records, wherever it is (the sequence numbers of the
        # segments after it still show any record missing)
        log.warning("%s: an empty segment whose header was never written (%d bytes); it holds "
                    "no records", path, len(data))
        return -1, [], 0
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
            records += decode_records(data[at + RECORD.size:end], version)
        except (ValueError, struct.error, UnicodeDecodeError) as exc:
            raise StoreError(f"{path}: malformed record at byte {at} ({exc})") from exc
        at = end
    return segment, records, None


class WriteAheadLog:
    """The journal the engine writes to (service.engine.Journal)."""

    def __init__(self, directory: Path, segment: int, seq: int, fsync: str, metrics=None,
                 reuse: bool = False):
        """The log written from `segment` on: a new one, or with `reuse` that existing segment,
        still without records (a restart with nothing to replay adds no empty segment)."""
        self.directory, self.fsync_policy, self.metrics = directory, fsync, metrics
        self.lock = threading.RLock()  # a record's write and its state change
        self._sync_lock = threading.RLock()  # taken before `lock`, never after
        self.seq = self._synced = seq  # last sequence number written; last one made durable
        self.broken: str | None = None
        self.segment = segment
        self._fd = (os.open(wal_path(directory, segment), os.O_WRONLY | os.O_APPEND) if reuse
                    else self._create(segment))
        self._segment_from = seq  # the last record before this segment's first

    def _create(self, segment: int) -> int:
        """The new segment's descriptor, its header written and fsynced; or an OSError and no
        file: a segment whose header could not be written (a full disk) is removed, and one left
        by an earlier such try (shorter than a header: no records) is replaced."""
        path = wal_path(self.directory, segment)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND
        try:
            fd = os.open(path, flags, 0o600)
        except FileExistsError:
            if path.stat().st_size >= HEADER_SIZE:
                raise
            path.unlink()
            fd = os.open(path, flags, 0o600)
        try:
            data = segment_header(segment)
            if os.write(fd, data) != len(data):
                raise OSError(f"short write of {path.name}'s header")
            os.fsync(fd)
            _fsync_dir(self.directory)
        except BaseException:
            os.close(fd)
            with suppress(OSError):
                path.unlink()
            raise
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

    def write_appends(self, ids: list[str], bounds: list[int], values: np.ndarray,
                      lengths: list[int], metas: list[dict | None]) -> int:
        """The appends `write_append` would log for each series of a columnar bulk append
        (series i: `values[bounds[i]:bounds[i + 1]]`), as one column record in one write; the
        last one's ticket. A failed write refuses this and every later change, as for one record."""
        with self.lock:
            self._check()
            data = encode_appends(self.seq + 1, ids, bounds, values, lengths, metas)
            try:
                written = os.write(self._fd, data)
                if written != len(data):
                    raise OSError(f"short write ({written} of {len(data)} bytes)")
            except OSError as exc:
                self.broken = f"write: {exc}"
                log.error("write-ahead log %s: %s", wal_path(self.directory, self.segment), exc)
                self._check()
            self.seq += len(ids)
            if self.metrics is not None:
                self.metrics.wal_records.labels("append").inc(len(ids))
                self.metrics.wal_bytes.inc(len(data))
            return self.seq

    def write_delete(self, series_id: str) -> int:
        return self._write(Record(KIND_DELETE, 0, series_id), "delete")

    def write_state(self, series_id: str, record: bytes) -> int:
        """A series imported whole (PUT /series/{id}/import): its checked record."""
        return self._write(Record(KIND_STATE, 0, series_id, record=record), "import")

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
        """Close this segment (fsynced) and start the next; (the new segment, last seq before it).
        A segment still without records is kept as the next one: snapshots that keep failing
        (a full disk) left a new empty segment behind at every try."""
        with self.exclusive():
            self.flush()
            if self.seq == self._segment_from:
                return self.segment, self.seq
            # The next segment first: if it cannot be made, the log goes on in this one (closing
            # this one first left a closed descriptor that later writes reached, whatever file
            # or socket the number was reused for).
            fd = self._create(self.segment + 1)
            with suppress(OSError):  # (its records are fsynced above)
                os.close(self._fd)
            self.segment, self._fd, self._segment_from = self.segment + 1, fd, self.seq
            return self.segment, self.seq

    def close(self) -> None:
        with self.exclusive():
            if self._fd >= 0:
                if self.broken is None:
                    self.flush()
                os.close(self._fd)
                self._fd = -1
                self.broken = self.broken or "closed"
