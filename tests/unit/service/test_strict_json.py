"""The strict parser's counts before parsing (service/strict_json.py)."""

from __future__ import annotations

import pytest

from service import strict_json
from service.errors import ServiceError


def test_keys_are_counted_through_colons_and_timestamps_do_not_count_as_keys():
    """Few colons: their count bounds the keys. Many (a bulk body's timestamps hold two each):
    the key endings are counted, whitespace before the colon included."""
    few = b'{"a": 1, "b" :2, "c"\n:3}'
    assert strict_json._count_keys(few) == 3
    stamps = b'{"values": [' + b",".join([b"1"] * 60_000) + b'], "timestamps": [' + b",".join(
        [b'"2024-01-01T00:00:00"'] * 60_000) + b"]}"
    assert stamps.count(b":") > strict_json.MAX_BODY_KEYS
    assert strict_json._count_keys(stamps) == 2
    strict_json.check_counts(stamps)  # (not refused)
    keys = b"{" + b",".join(b'"k%d"\t:1' % i for i in range(strict_json.MAX_BODY_KEYS + 1)) + b"}"
    assert len(keys) > strict_json.LARGE_BODY
    with pytest.raises(ServiceError) as refused:
        strict_json.check_counts(keys)
    assert refused.value.status == 422 and "keys" in str(refused.value)
