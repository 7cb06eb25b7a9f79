"""The two benchmarks behind issue 4's GPU figures (bench/gpu_check.sh steps 1 and 2), run here
under Triton's interpreter on their tiny smoke configurations: a GPU session is short and rare, so
a benchmark that breaks must break in CI, not there. Both record a failing case as an "error" in
their JSON and go on; these tests fail on any such entry, and check the correctness columns (the
float64 comparisons, alone = batched) that the GPU run reports beside its times."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.gpu  # the Triton kernels (under TRITON_INTERPRET=1 on a CPU)


@pytest.mark.slow
def test_model_step_smoke_runs_every_case_and_feeds_the_settings_table(tmp_path):
    from bench import model_step, step_settings

    out = tmp_path / "model_step.json"
    result = model_step.main(["--out", str(out), "--sizes", "1,3"])
    assert json.loads(out.read_text()) == result
    assert "error" not in result["launches_per_one_patch_step"]
    assert result["launches_per_one_patch_step"]["torch_ops"] == 0  # Triton launches only
    assert [c["B"] for c in result["cases"]] == [1, 3]
    for case in result["cases"]:
        assert "error" not in case, case["error"]
        assert case["err_next_patch_vs_f64"] < 1e-5 and case["err_wkv_vs_f64"] < 1e-5
        assert case["alone_equals_batched"] is True
        assert case["bound_us"] > 0 and case["state_bytes_per_series_step"] > 0
    # step 6 of gpu_check.sh reads these files into one table
    assert step_settings.main([str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "step_settings.json").read_text())
    assert [r["run"] for r in rows] == ["model_step"] and rows[0]["alone_equals_batched"] is True


@pytest.mark.slow
def test_kernels_smoke_compares_the_pool_kernel_with_float64(tmp_path):
    from bench import kernels

    out = tmp_path / "kernels.json"
    result = kernels.main(["--out", str(out)])
    assert json.loads(out.read_text()) == result
    assert result["copy_gbps"] > 0
    assert {(c["case"], c["B"], c["T"]) for c in result["cases"]} == {
        ("decode", 1, 1), ("decode", 4, 1), ("prefill", 2, 16)}
    for case in result["cases"]:
        assert case["max_rel_err_o"] < 1e-5 and case["max_rel_err_state"] < 1e-5
        assert case["kernel_us"] > 0 and case["eager_us"] > 0


def test_gpu_check_script_parses_and_names_existing_benchmarks():
    """`bash -n` on the script, and every `python -m bench.X` it runs is a module here."""
    script = ROOT / "bench" / "gpu_check.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    import re
    modules = set(re.findall(r"-m (bench\.\w+)", script.read_text()))
    assert {"bench.model_step", "bench.kernels", "bench.engine_batch", "bench.linear_tiles",
            "bench.step_settings"} <= modules
    for module in modules:
        assert (ROOT / (module.replace(".", "/") + ".py")).is_file(), module
