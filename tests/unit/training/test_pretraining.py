"""The general model's training pieces: synthetic series, the protocol's naive references, the
chunked recurrence, the quantile head, the forecast flag and the pretrainer end to end (tiny)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from model import checkpoint
from model.config import RimerConfig
from model.rimer import Rimer, quantile_values
from model.state import RimerState
from model.wkv import wkv7_recurrent
from training import losses, protocol, synth

LEVELS = (0.05, 0.1, 0.5, 0.9, 0.95)


def small(**kw) -> Rimer:
    torch.manual_seed(0)
    cfg = RimerConfig(patch_len=8, d_model=32, n_layers=2, head_size=16, w_rank=8, a_rank=8, v_rank=8,
                      g_rank=8, pos_emb="none", norm="causal", norm_window=4, **kw)
    model = Rimer(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def test_synthetic_batches_are_seeded_finite_and_varied():
    a = synth.sample(64, 400, synth.generator(7))
    b = synth.sample(64, 400, synth.generator(7))
    c = synth.sample(64, 400, synth.generator(8))
    assert a.shape == (64, 400) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.isfinite(a).all()
    scale = a.std(dim=1)
    assert (scale > 0).sum() > 50  # (a few constants are meant to be there)
    assert scale.max() / scale[scale > 0].min() > 100  # scales of many orders


def test_pure_walks_are_driftless_random_walks_and_off_by_default():
    """--pure-walks: rows whose changes over 16 points vary 16 times as much as over one (a walk;
    a trend or a season would not), with no drift; at share 0 the stream is the default one."""
    assert torch.equal(synth.sample(32, 400, synth.generator(3)),
                       synth.sample(32, 400, synth.generator(3), pure_walks=0.0))
    walks = synth.sample(256, 2000, synth.generator(3), pure_walks=1.0).double()
    one = walks.diff(dim=1)
    sixteen = walks[:, 16:] - walks[:, :-16]
    ratio = (sixteen.var(dim=1) / (16 * one.var(dim=1))).median()
    assert 0.75 < ratio < 1.1, ratio
    t_drift = one.mean(dim=1) / (one.std(dim=1) / one.shape[1] ** 0.5)
    assert t_drift.abs().median() < 1.5  # a drift would put most rows' t far beyond 1
    mixed = synth.sample(256, 2000, synth.generator(3), pure_walks=0.2)
    m_one = mixed.double().diff(dim=1)
    m_ratio = ((mixed[:, 16:] - mixed[:, :-16]).double().var(dim=1) / (16 * m_one.var(dim=1)))
    assert 0.1 < ((m_ratio > 0.75) & (m_ratio < 1.1)).double().mean() < 0.6


def test_calendar_series_repeat_by_week_better_than_by_day_and_are_off_by_default():
    """--calendar: rows of a day's profile scaled by day of the week, so that on most of them the
    value a week back predicts better than the value a day back (for the row's own day length,
    which the test finds as the lag of best daily repeat among the lengths drawn from); at share
    0 the stream is the default one."""
    assert torch.equal(synth.sample(32, 400, synth.generator(4)),
                       synth.sample(32, 400, synth.generator(4), calendar=0.0))
    rows = synth.sample(128, 3000, synth.generator(4), calendar=1.0).double()
    assert torch.isfinite(rows).all()

    def lag_mse(lag: int) -> torch.Tensor:
        return ((rows[:, lag:] - rows[:, :-lag]) ** 2).mean(dim=1)

    day_lengths = [int(d) for d in synth.DAY_LENGTHS if 7 * d < 3000]
    by_day = torch.stack([lag_mse(d) for d in day_lengths], 1)
    by_week = torch.stack([lag_mse(7 * d) for d in day_lengths], 1)
    best = by_day.argmin(dim=1, keepdim=True)
    week_wins = by_week.gather(1, best) < by_day.gather(1, best)
    assert week_wins.double().mean() > 0.4, week_wins.double().mean()
    mixed = synth.sample(128, 400, synth.generator(4), calendar=0.3)
    assert 10 < (mixed != synth.sample(128, 400, synth.generator(4))).any(dim=1).sum() < 128


def test_seasonal_naive_and_repeat_last_by_hand():
    x = np.tile(np.arange(24.0), 60)  # a pure daily cycle
    task = protocol.make_task("t", x, "1h", (24.0,), max_windows=5)
    season = protocol.seasonal_naive(task)
    assert np.allclose(season, task.truth)  # a pure cycle: seasonal naive is exact
    best, scores = protocol.naive_scores(task)
    assert best == 0.0 and scores["repeat_last"][24] > 0
    last = protocol.repeat_last(task)
    assert np.allclose(last[:, 0], [h[-1] for h in task.histories])


def test_the_test_windows_lie_in_the_last_fifth_and_are_scaled_on_the_first_seven_tenths():
    x = np.arange(1000.0)
    task = protocol.make_task("t", x, "1d", (), max_windows=10)
    train = x[:700]
    first_origin = round(task.histories[0][-1] * train.std() + train.mean()) + 1
    assert first_origin == 800
    assert max(len(h) for h in task.histories) == protocol.LOOKBACK


def test_chunked_recurrence_equals_the_reference_with_gradients():
    torch.manual_seed(1)
    b, t, h, n = 2, 37, 2, 8
    r, k, v = (torch.randn(b, t, h, n, requires_grad=True) for _ in range(3))
    w = -torch.rand(b, t, h, n) * 0.6
    kk = torch.nn.functional.normalize(torch.randn(b, t, h, n), dim=-1)
    a, bb = -kk, kk * torch.rand(b, t, h, n)
    s0 = torch.randn(b, h, n, n)
    o1, s1 = losses.ChunkStep.recurrence(0, r, w, k, v, a, bb, s0, None)
    o2, s2 = wkv7_recurrent(r, w, k, v, a, bb, s0)
    assert torch.allclose(o1, o2, atol=1e-4) and torch.allclose(s1, s2, atol=1e-4)
    g1 = torch.autograd.grad(o1.square().sum(), (r, k, v))
    g2 = torch.autograd.grad(o2.square().sum(), (r, k, v))
    for x, y in zip(g1, g2):
        assert torch.allclose(x, y, rtol=1e-3, atol=1e-3)


def test_quantiles_never_cross_and_centre_on_the_mean():
    torch.manual_seed(0)
    mean = torch.randn(3, 4, 8)
    offsets = torch.randn(3, 4, len(LEVELS), 8) * 30  # (steps of softplus(-60) are zero in float32)
    q = quantile_values(mean, offsets, LEVELS)
    assert q.shape == (3, 4, len(LEVELS), 8)
    assert (q.diff(dim=-2) >= 0).all()
    assert (quantile_values(mean, offsets / 30, LEVELS).diff(dim=-2) > 0).all()
    assert torch.allclose(q[..., 2, :], mean + offsets[..., 2, :])


def test_a_model_with_quantiles_and_a_flag_keeps_its_mean_paths_and_round_trips(tmp_path):
    model = small(quantiles=LEVELS, forecast_flag=True)
    with torch.no_grad():
        model.forecast_embed.normal_()
    hist = [torch.randn(60), torch.randn(45)]
    state = model.append(model.init_state(hist), hist)
    fc = model.forecast(state, 30)
    # the flag is told to the network in a rollout (and only there)
    no_flag = model._rollout(state, 30, lambda s, p: model.advance(s, p, check_positions=False))
    assert not torch.allclose(fc, no_flag)
    # the rest of the patch the appends predicted comes from them, flag or not (tails 4 and 5)
    assert torch.equal(fc[:, :3], no_flag[:, :3])
    checkpoint.save(model, tmp_path / "w", {"name": "t"})
    again, _ = checkpoint.load(tmp_path / "w")
    assert again.cfg == model.cfg
    assert torch.equal(again.forecast(again.append(again.init_state(hist), hist), 30), fc)
    cfg = json.loads((tmp_path / "w" / "config.json").read_text())
    del cfg["quantiles"], cfg["forecast_flag"]  # an older config: no head, no flag
    assert RimerConfig.from_dict(cfg).quantiles == () and not RimerConfig.from_dict(cfg).forecast_flag


def test_training_loss_scores_quantiles_and_free_running_steps():
    model = small(quantiles=LEVELS, forecast_flag=True).train()
    x = synth.sample(4, 8 * 10, synth.generator(0))
    forced = losses.window_loss(model, x, ahead=0)
    rolled = losses.window_loss(model, x, ahead=4)
    assert torch.isfinite(forced) and torch.isfinite(rolled) and forced != rolled
    rolled.backward()
    assert model.forecast_embed.grad is not None and model.forecast_embed.grad.abs().sum() > 0
    assert model.quantile_head.weight.grad.abs().sum() > 0


def test_pinball_is_minimised_at_the_quantile():
    target = torch.randn(1, 1, 20000)
    levels = torch.tensor([0.1, 0.9])
    losses_at = []
    for shift in (-2.0, -1.2816, 0.0, 1.2816, 2.0):
        q = torch.full((1, 1, 2, 20000), shift)
        losses_at.append(losses.pinball(q, target, levels).mean(dim=(0, 1, 3)))
    by_level = torch.stack(losses_at)  # [shifts, levels]
    assert int(by_level[:, 0].argmin()) == 1 and int(by_level[:, 1].argmin()) == 3


@pytest.mark.slow
@pytest.mark.parametrize("quantiles,lag", [("0.1,0.5,0.9", ["--lag-window", "64", "--lag-match", "32",
                                                              "--lag-best", "4"]), ("", [])])
def test_pretrain_runs_end_to_end_and_writes_loadable_weights(tmp_path, quantiles, lag):
    from training import pretrain

    out = tmp_path / "run"
    manifest = pretrain.main(["--out", str(out), "--steps", "3", "--val-every", "3", "--batch", "4",
                              "--d-model", "32", "--head-size", "16", "--max-patches", "6",
                              "--long-patches", "8", "--no-package-data", "--val-windows", "1",
                              "--threads", "1", f"--quantiles={quantiles}", *lag])
    model, saved = checkpoint.load(out)
    assert model.cfg.lag_best == (4.0 if lag else 0.0) and model.cfg.lag_window == (64 if lag else 0)
    assert saved["training"]["steps"] == 3 and "corpus" in saved["trained_on"]
    assert model.cfg.quantiles == tuple(float(q) for q in quantiles.split(",") if q)
    bench = [k for src in saved["trained_on"]["corpus"].values() for k in src.get("bench", [])]
    assert "exchange/Australia" in bench
    assert manifest["metrics"]["val_log_ratio"] == saved["metrics"]["val_log_ratio"]
    state = RimerState.zeros(model.cfg, 1)
    assert state.nbytes_per_series() > 0


def test_long_term_validation_scores_the_benchmark_horizons_and_nothing_else_changes():
    """--long-term-val: the long-term datasets' validation windows reach 720 points ahead (the
    benchmark's longest horizon), where their sampling step's horizons stop at 288 for weather;
    every other series keeps its own."""
    from training import corpus
    from training.pretrain import validation_tasks

    rng = np.random.default_rng(0)

    def one(key, freq, n, val_range=None):
        return corpus.Series(key, rng.standard_normal(n).cumsum(), freq, (144.0,), "test", "test",
                             "test", role="val", val_range=val_range)

    series = [one("weather/T", "10min", 8000, (5000, 6500)), one("m4-hourly/H1", "1h", 3000)]
    plain = dict(validation_tasks(series, 4))
    long = dict(validation_tasks(series, 4, long_term_horizons=True))
    assert max(plain["weather"].horizons) < 720 and long["weather"].horizons == (96, 192, 336, 720)
    assert long["weather"].truth.shape[1] == 720
    assert long["m4-hourly"].horizons == plain["m4-hourly"].horizons
    assert np.array_equal(long["m4-hourly"].truth, plain["m4-hourly"].truth)


def test_group_weights_draw_a_group_that_much_more_often_and_bad_ones_are_refused():
    """--group-weight GROUP=W: the group's windows are drawn W times as often as an unweighted
    group's (RealWindows' draw by group); a malformed weight is refused when parsed."""
    import argparse

    from training import corpus
    from training.pretrain import RealWindows, group_weight

    rng = np.random.default_rng(0)

    def one(key, level):
        return corpus.Series(key, np.full(400, level), "1h", (24.0,), "test", "test", "test",
                             role="train")

    series = [one("a/1", 1.0), one("b/1", 2.0), one("c/1", 3.0)]
    windows = RealWindows(series, rng, 0.0, 0.0, dict([group_weight("b=4")]))
    drawn = windows._draw(6000, 64)[:, 0]
    share = {level: float(np.mean(drawn == level)) for level in (1.0, 2.0, 3.0)}
    assert share[2.0] == pytest.approx(4 / 6, abs=0.03)
    assert share[1.0] == pytest.approx(1 / 6, abs=0.03) and share[3.0] == pytest.approx(1 / 6, abs=0.03)
    for bad in ("b", "b=0", "=2", "b=x"):
        with pytest.raises(argparse.ArgumentTypeError):
            group_weight(bad)
