"""bench.step_settings: the side-by-side table of gpu_check's whole-step runs."""

from __future__ import annotations

import json
import math

from bench import step_settings


def test_rows_carry_each_runs_settings_and_headline_figures(tmp_path, capsys):
    run = {"model": "m", "pdl": True, "linear_block_m": 16, "fuse_ln": True, "fuse_out": False,
           "wkv_warps": 8, "launches_per_one_patch_step": {"total": 10},
           "single_append": {"events_us_per_replay": 27.5},
           "cases": [{"B": 1, "alone_equals_batched": True},
                     {"B": 32768, "triton_graph_us": 2000.0, "fraction_of_state_bound": 0.6,
                      "alone_equals_batched": True}]}
    (tmp_path / "model_step-linear-block-m-16.json").write_text(json.dumps(run))
    (tmp_path / "model_step.json").write_text(json.dumps({**run, "cases": [
        {"B": 1, "alone_equals_batched": False}]}))
    (tmp_path / "model_step-cut.json").write_text('{"cases": [')  # a run cut off mid-write
    assert step_settings.main([str(tmp_path)]) == 0
    rows = {r["run"]: r for r in json.loads((tmp_path / "step_settings.json").read_text())}
    assert set(rows) == {"model_step", "model_step-linear-block-m-16"}
    r = rows["model_step-linear-block-m-16"]
    assert (r["linear_block_m"], r["fuse_out"], r["wkv_warps"], r["launches"]) == (16, False, 8, 10)
    assert r["single_append_us"] == 27.5 and r["of_bound_32768"] == 0.6 and r["step_us_32768"] == 2000.0
    assert math.isnan(r["step_us_4096"]) and r["alone_equals_batched"] is True
    assert rows["model_step"]["alone_equals_batched"] is False
    assert "model_step-cut.json: unreadable" in capsys.readouterr().out


def test_an_empty_folder_is_an_error(tmp_path):
    assert step_settings.main([str(tmp_path)]) == 1
