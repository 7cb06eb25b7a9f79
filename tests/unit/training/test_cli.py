"""The model tools' command lines: a user's mistake is one line and exit 2, never a traceback
(a zero count divided by zero, an unknown dataset raised ValueError, a missing checkpoint
printed a CheckpointError traceback)."""

from __future__ import annotations

import pytest

from model import cli
from tests.conftest import DEFAULT_WEIGHTS
from training import evaluate, long_history, train


@pytest.mark.parametrize("tool, argv, says", [
    (train, ["--steps", "0"], "--steps: must be at least 1"),
    (train, ["--batch", "0"], "--batch: must be at least 1"),
    (train, ["--val-every", "0"], "--val-every: must be at least 1"),
    (train, ["--datasets", "BOGUS"], "invalid choice: 'BOGUS'"),
    (train, ["--min-patches", "10", "--max-patches", "5"], "at most --max-patches"),
    (train, ["--d-model", "100", "--steps", "1"], "multiple of config.head_size"),
    (evaluate, ["--weights", str(DEFAULT_WEIGHTS), "--stride", "0"], "--stride"),
    (evaluate, ["--weights", str(DEFAULT_WEIGHTS), "--lookback", "abc"], "not a whole number"),
    (evaluate, ["--weights", str(DEFAULT_WEIGHTS), "--lookback", "10"], "one patch"),
    (evaluate, ["--weights", str(DEFAULT_WEIGHTS), "--datasets", "BOGUS"], "invalid choice"),
    (long_history, ["--weights", str(DEFAULT_WEIGHTS), "--windows", "0"], "--windows"),
])
def test_bad_arguments_are_one_line(tool, argv, says, capsys, tmp_path):
    with pytest.raises(SystemExit) as info:
        tool.main([*argv, "--out", str(tmp_path / "out")] if tool is train else argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err


def test_a_missing_checkpoint_is_one_line(capsys, tmp_path):
    with pytest.raises(SystemExit) as info:
        cli.run(lambda: evaluate.main(["--weights", str(tmp_path / "nowhere")]),
                "python -m training.evaluate")
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == f"python -m training.evaluate: error: no checkpoint at {tmp_path / 'nowhere'}"
