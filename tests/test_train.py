"""The trainer: chunked (truncated-BPTT) loss equals the whole-window loss; runs, saves, resumes."""

from __future__ import annotations

import json

import torch

from model import checkpoint, train
from tests.test_model import tiny_model, walk


def test_chunked_loss_equals_whole_window_loss():
    model = tiny_model()
    x = torch.stack([walk(8 * 20, s) for s in range(3)])
    whole = train.next_patch_loss(model, x)
    for bptt in (1, 3, 7, 19):
        assert torch.allclose(train.next_patch_loss(model, x, bptt=bptt), whole, rtol=1e-5)


def test_training_runs_saves_and_resumes(tmp_path):
    args = ["--datasets", "ETTh1", "--out", str(tmp_path / "m"), "--d-model", "64",
            "--layers", "2", "--batch", "4", "--max-patches", "6", "--val-every", "2",
            "--save-every", "2", "--long-every", "2", "--long-patches", "12", "--bptt", "4",
            "--ema", "0.9"]
    train.main([*args, "--steps", "2"])
    progress = json.loads((tmp_path / "m" / "train_state" / "progress.json").read_text())
    assert progress["step"] == 2
    train.main([*args, "--steps", "4"])
    model, manifest = checkpoint.load(tmp_path / "m")
    assert manifest["training"]["steps"] == 4 and manifest["trained_on"]["datasets"] == ["ETTh1"]
    assert model.cfg.norm == "causal" and model.cfg.pos_emb == "none"


def test_rollout_loss_scores_the_same_forecast_as_inference():
    model = tiny_model()
    x = torch.stack([walk(8 * 10, s) for s in range(3)])
    context = [row[: 8 * 4] for row in x]
    state = model.append(model.init_state(context), context)
    forecast = model.forecast(state, 8 * 6).view(3, 6, 8)
    scale = torch.sqrt(state.norm[:, 1] + model.cfg.norm_eps).float()[:, None, None]
    err = ((forecast - x.view(3, 10, 8)[:, 4:]) / scale).clamp(-train.TARGET_CLIP, train.TARGET_CLIP)
    expected = (err ** 2).mean(dim=(0, 2)).mean()
    assert torch.allclose(train.rollout_loss(model, x, 4), expected, rtol=1e-5)


def test_fine_tuning_starts_from_the_given_weights(tmp_path):
    base = ["--datasets", "ETTh1", "--batch", "4", "--max-patches", "6", "--val-every", "1",
            "--threads", "1"]
    train.main([*base, "--out", str(tmp_path / "a"), "--d-model", "64", "--steps", "1"])
    start, _ = checkpoint.load(tmp_path / "a")
    train.main([*base, "--out", str(tmp_path / "b"), "--init", str(tmp_path / "a"),
                "--steps", "1", "--lr", "1e-9"])
    tuned, _ = checkpoint.load(tmp_path / "b")
    assert tuned.cfg == start.cfg  # sizes from the weights, not the flags' defaults (d256)
    for (name, a), b in zip(start.state_dict().items(), tuned.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name  # one step at lr 1e-9 barely moves them
