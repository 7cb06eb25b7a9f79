"""bench/http.py runs end to end (--quick, tiny durations): two real servers, every case in the
JSON with positive throughput and ordered percentiles."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT


@pytest.mark.slow
def test_bench_http_quick(tmp_path):
    out = tmp_path / "http.json"
    proc = subprocess.run(
        [sys.executable, "bench/http.py", "--quick", "--seconds", "0.3", "--warmup", "0.1",
         "--bulk-series", "100", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "share this machine's" in proc.stdout  # the client-on-the-same-machine caveat
    result = json.loads(out.read_text())

    cases = {(r["case"], r["concurrency"], r["batch_window_ms"] > 0): r for r in result["cases"]}
    expected = {("single", 1, True), ("single", 16, True), ("single", 64, True),
                ("bulk", 1, True), ("columnar", 1, True), ("forecast", 1, True),
                ("single", 64, False)}
    assert set(cases) == expected
    for key, r in cases.items():
        assert r["requests"] > 0 and r["requests_per_s"] > 0, key
        assert r["points_per_s"] == pytest.approx(r["requests_per_s"] * r["points_per_request"]), key
        assert 0 < r["p50_ms"] <= r["p99_ms"] <= r["max_ms"], key
    assert cases[("bulk", 1, True)]["points_per_request"] == 100
    assert cases[("columnar", 1, True)]["points_per_request"] == 100
    [forms] = result["bulk_forms"]  # the two forms of one workload side by side, in one run
    assert forms["ratio"] == pytest.approx(cases[("columnar", 1, True)]["points_per_s"]
                                           / cases[("bulk", 1, True)]["points_per_s"])
    assert "columnar" in proc.stdout and "per item" in proc.stdout
    assert cases[("forecast", 1, True)]["endpoint"] == "POST /forecast"
    assert cases[("forecast", 1, True)]["server_mean_ms"] > 0  # the server saw those requests
    assert cases[("single", 64, True)].get("mean_requests_per_batch", 0) >= 1
    assert "mean_requests_per_batch" not in cases[("single", 64, False)]

    batching = result["batching"]
    assert batching["concurrency"] == 64 and batching["ratio"] > 0
    assert batching["ratio"] == pytest.approx(cases[("single", 64, True)]["requests_per_s"]
                                              / cases[("single", 64, False)]["requests_per_s"])
    assert result["machine"]["cpu_count"] >= 1 and result["server"]["torch_threads"] >= 1
    assert result["machine"]["probe_ms_at_start"] > 0 and result["machine"]["probe_ms_at_end"] > 0
    assert "machine probe" in proc.stdout
    assert result["settings"]["quick"] is True
    assert [run["args"][run["args"].index("--batch-window-ms") + 1] for run in
            result["server"]["runs"]] == ["2.0", "0.0"]
