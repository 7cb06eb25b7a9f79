"""The write-ahead log's column record (format version 4, service/wal_records.py `encode_appends`): a
columnar bulk append's appends in one record that reads back as the very records the per-item
form logs (ids, lengths, values, metadata and its types), is torn as a whole, and leaves older
segments readable."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest

from service import wal
from service.wal import KIND_APPEND, Record, encode, encode_appends, read_segment

IDS = ["a", "sensor-07", "zürich/ß", "x" * 300, "b"]
RUNS = [[1.5], [2.0, -3.25, 4.0], [], [5e-300, 1e300], [7.0]]
METAS = [{"last": 1.5}, {"last": 4}, None,
         {"last": "2024-01-01T00:00:00Z", "freq": 3600, "tz": "Europe/Zürich"}, {"last": 2 ** 70}]


def segment_of(path, version, records: bytes) -> None:
    header = wal.HEADER.pack(wal.MAGIC, version, 1)
    path.write_bytes(header + struct.pack("<I", zlib.crc32(header)) + records)


def expected(seq: int) -> list[Record]:
    return [Record(KIND_APPEND, seq + i, sid, 10 + i, run, meta)
            for i, (sid, run, meta) in enumerate(zip(IDS, RUNS, METAS))]


def column_record(seq: int) -> bytes:
    bounds = np.cumsum([0] + [len(r) for r in RUNS]).tolist()
    values = np.array([x for r in RUNS for x in r])
    return encode_appends(seq, IDS, bounds, values, [10 + i for i in range(len(IDS))], METAS)


def test_a_column_record_reads_back_as_the_per_item_records(tmp_path):
    segment_of(tmp_path / "wal.log", wal.WAL_VERSION, column_record(7))
    _, records, cut = read_segment(tmp_path / "wal.log", True)
    assert cut is None and records == expected(7)
    kinds = [(type(r.meta["last"]) if r.meta else None) for r in records]
    assert kinds == [float, int, None, str, int]  # (an int stays an int, as JSON keeps it)
    per_item = b"".join(encode(r) for r in expected(7))
    assert len(column_record(7)) < len(per_item)


def test_a_torn_column_record_drops_all_its_appends(tmp_path, caplog):
    first = encode(Record(KIND_APPEND, 1, "a", 1, [0.5], {"last": 0.5}))
    data = first + column_record(2)
    segment_of(tmp_path / "wal.log", wal.WAL_VERSION, data[:-3])
    _, records, cut = read_segment(tmp_path / "wal.log", True)
    assert [r.seq for r in records] == [1] and cut == wal.HEADER_SIZE + len(first)
    segment_of(tmp_path / "mid.log", wal.WAL_VERSION, data[:-3] + first)  # not the last: an error
    with pytest.raises(wal.StoreError, match="corrupt record"):
        read_segment(tmp_path / "mid.log", False)


def test_a_column_record_is_refused_in_an_older_segment(tmp_path):
    segment_of(tmp_path / "v3.log", 3, b"".join(encode(r) for r in expected(1)))
    assert read_segment(tmp_path / "v3.log", False)[1] == expected(1)  # older segments still read
    segment_of(tmp_path / "bad.log", 3, column_record(1))
    with pytest.raises(wal.StoreError, match="malformed record"):
        read_segment(tmp_path / "bad.log", False)


def test_a_malformed_column_record_is_an_error(tmp_path):
    good = column_record(1)
    payload = bytearray(good[8:])
    payload[wal.PAYLOAD.size] += 1  # one series more than the arrays hold
    head = struct.pack("<I", len(payload))
    bad = head + struct.pack("<I", zlib.crc32(bytes(payload), zlib.crc32(head))) + bytes(payload)
    segment_of(tmp_path / "wal.log", wal.WAL_VERSION, bad)
    with pytest.raises(wal.StoreError, match="malformed record"):
        read_segment(tmp_path / "wal.log", False)
