"""The trainer: chunked (truncated-BPTT) loss equals the whole-window loss; runs, saves, resumes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from model import checkpoint
from model.rimer import Rimer
from tests.helpers import TINY, tiny_model, walk
from training import train


def test_chunked_loss_equals_whole_window_loss():
    model = tiny_model()
    x = torch.stack([walk(8 * 20, s) for s in range(3)])
    whole = train.next_patch_loss(model, x)
    for bptt in (1, 3, 7, 19):
        assert torch.allclose(train.next_patch_loss(model, x, bptt=bptt), whole, rtol=1e-5)


@pytest.mark.slow
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


def test_streams_carry_each_series_state_from_step_to_step():
    """k stream steps over one series score exactly what truncated BPTT scores over the window
    they walked; at the series' end the stream restarts from a zero state."""
    model = tiny_model()
    p, chunk, k = model.cfg.patch_len, 3, 4
    series = walk(p * (chunk * k + 1) + 5, 7).numpy()
    sampler = train.WindowSampler([series[:, None]], np.random.default_rng(0))
    streams = train.Streams(sampler, model, count=1, chunk=chunk)
    start = int(streams.pos[0])
    window = torch.from_numpy(series[start: start + p * (chunk * k + 1)])[None]
    if window.shape[1] < p * (chunk * k + 1):  # started too late to walk k chunks: walk fewer
        k = (window.shape[1] // p - 1) // chunk
        window = window[:, : p * (chunk * k + 1)]
    losses = [streams.loss() for _ in range(k)]
    assert int(streams.state.n_patches[0]) == chunk * k
    expected = train.next_patch_loss(model, window, bptt=chunk)
    assert torch.allclose(torch.stack(losses).mean(), expected, rtol=1e-5)
    while streams.pos[0] + streams.points <= len(series):
        streams.loss()
    streams.loss()  # past the end: a fresh start
    assert int(streams.state.n_patches[0]) == chunk


@pytest.mark.slow
def test_an_interrupted_run_resumes_to_the_same_weights(tmp_path, monkeypatch):
    """Fixed seeds and complete checkpoints (optimizer, EMA, sampler, streams): stopping after a
    save and running the same command again gives the weights of an uninterrupted run."""
    args = ["--datasets", "ETTh1", "--d-model", "64", "--layers", "1", "--batch", "4",
            "--max-patches", "6", "--val-every", "2", "--save-every", "2", "--long-every", "4",
            "--long-patches", "12", "--bptt", "4", "--stream-every", "2", "--streams", "3",
            "--ema", "0.9", "--norm-window", "8", "--threads", "1", "--steps", "5"]
    train.main([*args, "--out", str(tmp_path / "straight")])

    real_progress = train.progress

    def stop_after_first_save(step, *rest):
        if step == 3:
            raise KeyboardInterrupt
        real_progress(step, *rest)

    monkeypatch.setattr(train, "progress", stop_after_first_save)
    with pytest.raises(KeyboardInterrupt):
        train.main([*args, "--out", str(tmp_path / "resumed")])
    monkeypatch.setattr(train, "progress", real_progress)
    train.main([*args, "--out", str(tmp_path / "resumed")])
    a, _ = checkpoint.load(tmp_path / "straight")
    b, _ = checkpoint.load(tmp_path / "resumed")
    assert a.cfg.norm_window == 8
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name


@pytest.mark.slow
def test_validation_logs_each_dataset_and_selects_by_their_mean(tmp_path):
    """--val-average datasets: the selection score is the mean of the datasets' own figures (not
    the pooled one, where weather's 21 variables outweigh ETTh1's 7), and each validation is
    logged; --snapshots keeps every validated checkpoint."""
    out = tmp_path / "m"
    train.main(["--datasets", "ETTh1", "weather", "--out", str(out), "--d-model", "64",
                "--layers", "1", "--batch", "4", "--max-patches", "4", "--val-every", "1",
                "--steps", "2", "--val-average", "datasets", "--snapshots"])
    lines = [json.loads(s) for s in (out / "val_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2]
    for r in lines:
        assert set(r["by_dataset"]) == {"ETTh1", "weather"}
        assert r["score"] == pytest.approx(np.mean(list(r["by_dataset"].values())), abs=2e-6)
    _, manifest = checkpoint.load(out)
    best = min(r["score"] for r in lines)
    assert manifest["metrics"]["val_forecast_mse"] == pytest.approx(best, abs=1e-5)
    assert manifest["training"]["best_step"] == min(lines, key=lambda r: r["score"])["step"]
    assert (out / "snapshots" / "step-1" / "model.safetensors").exists()
    assert (out / "snapshots" / "step-2" / "model.safetensors").exists()


def test_forecast_val_pools_series_and_scores_each_split():
    torch.manual_seed(0)
    model = Rimer(TINY).eval()  # unperturbed: stays finite over long rollouts
    p = model.cfg.patch_len
    rng = np.random.default_rng(0)
    a = rng.normal(size=(p * 80, 1)).astype(np.float32)
    b = rng.normal(size=(p * 80, 3)).astype(np.float32) * 3
    pooled, each = train.forecast_val(model, [a, b], lookback=p * 8, horizon=200, windows=4)
    assert len(each) == 2 and each[1] > each[0]
    # horizons 96 and 192 scored; pooled weighs every series alike: one series of a, three of b
    assert pooled == pytest.approx((each[0] + 3 * each[1]) / 4, rel=1e-5)


def test_dataset_weights_set_how_often_each_dataset_is_drawn():
    a = np.zeros((500, 2), dtype=np.float32)
    b = np.ones((500, 5), dtype=np.float32)
    sampler = train.WindowSampler([a, b], np.random.default_rng(0), "datasets", [3.0, 1.0])
    share_a = float((sampler.batch(4000, 10)[:, 0] == 0).float().mean())
    assert abs(share_a - 0.75) < 0.03  # by dataset weight, not by the 2 against 5 variables
    uniform = train.WindowSampler([a, b], np.random.default_rng(0), "datasets")
    assert abs(float((uniform.batch(4000, 10)[:, 0] == 0).float().mean()) - 0.5) < 0.03


def test_dataset_weights_need_one_per_dataset(tmp_path):
    with pytest.raises(SystemExit):
        train.main(["--datasets", "ETTh1", "ETTh2", "--balance", "datasets", "--dataset-weights", "2",
                    "--out", str(tmp_path / "m"), "--steps", "1"])


def test_resuming_with_other_settings_is_refused_by_name(tmp_path, capsys):
    """A train_state left by a run with other settings (here --lr) must not be silently
    continued: the error names the flag; a longer --steps is a legitimate resume."""
    args = ["--datasets", "ETTh1", "--out", str(tmp_path / "m"), "--d-model", "64",
            "--layers", "1", "--batch", "4", "--max-patches", "4", "--val-every", "2",
            "--save-every", "2", "--threads", "1", "--steps", "2"]
    train.main(args)
    with pytest.raises(SystemExit):
        train.main([*args, "--lr", "1e-4"])
    assert "(lr)" in capsys.readouterr().err
    train.main([*args, "--steps", "3"])
    assert json.loads((tmp_path / "m" / "train_state" / "progress.json").read_text())["step"] == 3


def test_scaled_loss_is_the_error_of_the_denormalised_forecast_in_data_units():
    """--loss-units scaled scores each next-patch forecast as the benchmark does, in the data's
    units: it equals the MSE of the de-normalised forecast against the next patch, grows with
    the square of the data's scale, while the normalised loss does not change with it."""
    model = tiny_model()
    p = model.cfg.patch_len
    x = torch.stack([walk(p * 12, s) for s in range(3)])
    adv = model.whole_normalised(x)
    sd = torch.sqrt(adv.stats[..., 1:2] + model.cfg.norm_eps)
    forecast = adv.preds.double() * sd + adv.stats[..., 0:1]  # [B, T, P], data units
    want = ((forecast[:, :-1] - x.view(3, 12, p)[:, 1:].double()) ** 2).mean()
    got = train.next_patch_loss(model, x, units="scaled")
    assert torch.allclose(got.double(), want, rtol=1e-4)
    for units, power in (("scaled", 2), ("normalised", 0)):
        a = train.next_patch_loss(model, x, units=units)
        b = train.next_patch_loss(model, 3.0 * x, units=units)
        assert torch.allclose(b, a * 3.0 ** power, rtol=1e-3), units


def test_synthetic_series_join_the_training_draws(tmp_path, monkeypatch):
    """--synthetic adds that many standardised synthetic series (fixed seeds) to what training
    windows are drawn from; validation stays on the datasets."""
    split = train.synthetic_split(3, 2000)
    assert split.shape == (2000, 3) and np.allclose(split.mean(0), 0, atol=1e-5)
    assert np.allclose(split.std(0), 1, atol=1e-4) and np.array_equal(split, train.synthetic_split(3, 2000))
    assert not np.allclose(split[:, 0], split[:, 1])
    seen = []
    real_init = train.WindowSampler.__init__

    def spy(self, splits, *a, **k):
        seen.append([s.shape[1] for s in splits])
        real_init(self, splits, *a, **k)

    monkeypatch.setattr(train.WindowSampler, "__init__", spy)
    base = ["--datasets", "ETTh1", "--d-model", "64", "--layers", "1", "--batch", "4", "--max-patches", "4",
            "--val-every", "1", "--threads", "1", "--steps", "1"]
    train.main([*base, "--out", str(tmp_path / "m"), "--synthetic", "5", "--synthetic-length", "400"])
    assert seen == [[7, 5], [7]]  # train: ETTh1's 7 variables + 5 synthetic; validation: ETTh1 only
    with pytest.raises(SystemExit):  # too short for the longest training window
        train.main([*base, "--out", str(tmp_path / "n"), "--synthetic", "2", "--synthetic-length", "100"])


def test_dropout_acts_in_training_only_and_is_not_saved(tmp_path):
    """--dropout perturbs the training forward pass (two passes differ) but not eval mode, which
    matches a model without dropout bit for bit; it is not part of the saved weights."""
    model = tiny_model()
    x = torch.stack([walk(8 * 10, s) for s in range(2)])
    with torch.no_grad():
        plain = model.whole_normalised(x).preds
        model.set_dropout(0.3)
        model.train()
        first, second = model.whole_normalised(x).preds, model.whole_normalised(x).preds
        assert not torch.equal(first, plain) and not torch.equal(first, second)
        model.eval()
        assert torch.equal(model.whole_normalised(x).preds, plain)
    checkpoint.save(model, tmp_path / "m", {})
    loaded, _ = checkpoint.load(tmp_path / "m")
    assert all(block.dropout == 0.0 for block in loaded.blocks)
    with pytest.raises(ValueError):
        model.set_dropout(1.0)


def test_huber_loss_matches_squared_error_within_one_unit_and_grows_linearly_beyond():
    diff = torch.tensor([-3.0, -1.0, -0.5, 0.0, 0.25, 1.0, 2.0])
    huber = train.pointwise_error(diff, "huber")
    inside = diff.abs() <= 1
    assert torch.equal(huber[inside], diff[inside] ** 2)
    assert torch.allclose(huber[~inside], 2 * diff[~inside].abs() - 1)
    assert torch.equal(train.pointwise_error(diff, "mse"), diff ** 2)
    model = tiny_model()
    x = torch.stack([walk(8 * 12, s) for s in range(3)])
    assert train.next_patch_loss(model, x, kind="huber") <= train.next_patch_loss(model, x)


def test_a_flag_added_since_a_run_was_saved_resumes_at_its_default(tmp_path):
    """A train_state saved before --dropout/--loss existed resumes when they are left at their
    defaults, and is refused when one is changed."""
    args = ["--datasets", "ETTh1", "--out", str(tmp_path / "m"), "--d-model", "64",
            "--layers", "1", "--batch", "4", "--max-patches", "4", "--val-every", "2",
            "--save-every", "2", "--threads", "1", "--steps", "2"]
    train.main(args)
    progress_file = tmp_path / "m" / "train_state" / "progress.json"
    progress = json.loads(progress_file.read_text())
    del progress["flags"]["dropout"], progress["flags"]["loss"]
    progress_file.write_text(json.dumps(progress))
    with pytest.raises(SystemExit):
        train.main([*args, "--steps", "3", "--dropout", "0.1"])
    train.main([*args, "--steps", "3"])
    assert json.loads(progress_file.read_text())["step"] == 3
