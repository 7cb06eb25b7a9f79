"""The lag and quantile heads: a model with them keeps every guarantee of one without (streamed
equals whole, batch invariance, the pool and ONNX paths equal the reference, spilled states come
back whole), and the heads do what they say (the lag head can copy a season exactly)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model import calibration, checkpoint
from model.lag import (
    centred,
    fft_size,
    lag_copy,
    lag_level,
    lag_level_direct,
    lag_match,
    lag_match_direct,
    lag_sum,
    lag_sum_direct,
)
from model.realign import REALIGN_PATCHES
from model.state import RimerState
from runtime.pool import PoolRunner
from service.engine import Engine
from tests.conftest import rel_err
from tests.helpers import DEVICE, LEVELS, MANIFEST, P, head_model, walk


def test_lag_copy_points_at_one_period_back():
    """With all the weight on lag k, the next patch is the points k back: seasonal naive."""
    period = 2 * P + 3  # (not a multiple of the patch)
    x = torch.sin(torch.arange(6 * P) * 2 * torch.pi / period)
    history, patches = x[: 3 * P][None], x[3 * P: 5 * P].view(1, 2, P)
    logits = torch.full((1, 2, 3 * P - P + 1), -1e9)
    logits[..., period - P] = 0.0  # lag P + j = period
    copy, usable = lag_copy(history, patches, torch.tensor([3]), logits, torch.zeros(1, 2),
                            torch.ones(1, 2))
    want = torch.stack([x[3 * P + (n + 1) * P - period + torch.arange(P)] for n in range(2)])[None]
    assert usable.all() and torch.allclose(copy, want, atol=1e-6)


def test_drift_carries_a_trend_on():
    """All the weight on one lag of a ramp plus a season: with drift 1 the copy is the truth (the
    level change since the lag's match added back), with drift 0 it is the seasonal naive
    forecast, short by the slope times the lag; a drift in between moves it in proportion."""
    period, slope = 2 * P + 3, 0.25
    t = torch.arange(6 * P, dtype=torch.float64)
    x = (slope * t + torch.sin(t * 2 * torch.pi / period)).float()
    history, patches = x[: 3 * P][None], x[3 * P: 5 * P].view(1, 2, P)
    logits = torch.full((1, 2, 3 * P - P + 1), -1e9)
    logits[..., period - P] = 0.0
    args = (history, patches, torch.tensor([3]), logits, torch.zeros(1, 2), torch.ones(1, 2))
    truth = torch.stack([x[3 * P + (n + 1) * P + torch.arange(P)] for n in range(2)])[None]
    for grad in (False, True):  # the NumPy serving form and the torch form
        with torch.set_grad_enabled(grad):
            carried, _ = lag_copy(*args, torch.ones(1, 2))
            plain, _ = lag_copy(*args, torch.zeros(1, 2))
            half, _ = lag_copy(*args, torch.full((1, 2), 0.5))
        assert (carried - truth).abs().max() < 1e-4
        assert torch.allclose(truth - plain, torch.full_like(plain, slope * period), atol=1e-4)
        assert torch.allclose(half, (carried + plain) / 2, atol=1e-4)


@pytest.mark.parametrize("level", [0.0, 1e5])
def test_lag_level_equals_its_direct_form(level):
    g = torch.Generator().manual_seed(8)
    m, n_lags = 2 * P, 5 * P + 1
    windows = (torch.randn(3, 4, n_lags - 1 + P + m, generator=g).cumsum(-1) + level).double()
    x, centre = centred(windows, m)
    want = lag_level_direct(windows, m, n_lags)
    assert (lag_level(x, m, n_lags) + centre - want).abs().max() <= 1e-9 * (1 + abs(level))


def test_matching_finds_the_period_without_learning():
    """Flat logits and a sharp match: the weight goes to the lags where the series repeats."""
    period = 2 * P + 3
    t = torch.arange(6 * P) * 2 * torch.pi / period
    x = torch.sin(t) + 0.3 * torch.sin(2 * t + 1)  # (a shape of its own, repeating every period)
    history, patches = x[: 3 * P][None], x[3 * P: 4 * P].view(1, 1, P)
    copy, _ = lag_copy(history, patches, torch.tensor([3]), torch.zeros(1, 1, 2 * P + 1),
                       torch.full((1, 1), 50.0), x[: 4 * P].var()[None, None])
    truth = x[4 * P: 5 * P]
    assert (copy[0, 0] - truth).abs().max() < 0.05


def test_lags_before_the_first_point_are_never_read():
    """A state's history before the series' first point is padding: whatever it holds, only the
    lags whose match stays inside the series are read (none in its first patch)."""
    first, second = torch.randn(P), torch.randn(1, 1, P)
    logits, sharp, var = torch.zeros(1, 1, 2 * P + 1), torch.ones(1, 1), torch.ones(1, 1)
    for junk in (0.0, 1e6):
        history = torch.cat([torch.full((2 * P,), junk), first])[None]
        copy, usable = lag_copy(history, second, torch.tensor([1]), logits, sharp, var)
        assert usable.all() and torch.equal(copy[0, 0], second[0, 0])  # lag P: the patch before
    _, usable = lag_copy(torch.zeros(1, 3 * P), first.view(1, 1, P), torch.tensor([0]), logits, sharp, var)
    assert not usable.any()


@pytest.mark.parametrize("level", [0.0, 1e5])
def test_lag_match_and_sum_equal_their_direct_forms(level):
    """The FFT forms of the lag head's two correlations against the plain strided ones, on
    float32 random walks near zero and far from it (centred first, as lag_copy does, so that
    the expanded square does not cancel), with and without a shared spectrum."""
    g = torch.Generator().manual_seed(3)
    m, n_lags, p = 2 * P, 5 * P + 1, P
    windows = (torch.randn(3, 4, n_lags - 1 + p + m, generator=g).cumsum(-1) + level).double()
    x, _ = centred(windows, m)
    spectrum = torch.fft.rfft(x, fft_size(x.shape[-1]))
    want = lag_match_direct(windows, m, n_lags)
    for match in (lag_match(x, m, n_lags), lag_match(x, m, n_lags, spectrum)):
        assert match.shape == want.shape == (3, 4, n_lags)
        assert (match - want).abs().max() <= 1e-9 * want.abs().max()
    weights = torch.softmax(torch.randn(3, 4, n_lags, generator=g, dtype=torch.float64), -1)
    want = lag_sum_direct(x, weights, m, p)
    for got in (lag_sum(x, weights, m, p), lag_sum(x, weights, m, p, spectrum)):
        assert got.shape == (3, 4, p) and (got - want).abs().max() <= 1e-9 * want.abs().max()


def test_fft_size_is_the_smallest_smooth_length():
    """fft_size(n): the first 2^a 3^b 5^c at or after n (found here by counting up)."""
    for n in range(1, 1100):
        assert fft_size(n) == next(k for k in range(n, 2 * n + 1) if _smooth(k))


def _smooth(k: int) -> bool:
    for f in (2, 3, 5):
        while k % f == 0:
            k //= f
    return k == 1


@pytest.mark.parametrize("level", [0.0, 1e5])
@pytest.mark.parametrize("drift,local,best", [(False, False, 0.0), (True, False, 0.0),
                                             (True, True, 0.0), (True, False, 12.0)])
@pytest.mark.parametrize("long", [False, True])
def test_serving_form_of_the_lag_copy_equals_the_torch_form(level, drift, local, best, long):
    """lag_copy on the CPU without gradients runs its arithmetic in NumPy (model/lag.py
    `_serving_tail`); with gradients, in torch. The same copies and usable flags, including
    series too short for any lag and chunks of many patches; and a batch whose every series
    reaches every lag (the serving form's shortcut)."""
    g = torch.Generator().manual_seed(6)
    n_lags, m, bsz, t = 4 * P + 1, 2 * P, 5, 3
    history = torch.randn(bsz, n_lags - 1 + m, generator=g).cumsum(-1) + level
    patches = torch.randn(bsz, t, P, generator=g).cumsum(-1) + level
    before = torch.tensor([40, 41, 42, 45, 80] if long else [0, 1, 2, 5, 40])
    args = (history, patches, before, torch.randn(bsz, t, n_lags, generator=g),
            torch.rand(bsz, t, generator=g) * 5, torch.rand(bsz, t, generator=g) + 0.5,
            torch.randn(bsz, t, generator=g) if drift else None, local, best)
    with torch.no_grad():
        served, served_ok = lag_copy(*args)
    with torch.enable_grad():
        trained, trained_ok = lag_copy(*args)
    assert torch.equal(served_ok, trained_ok) and served_ok.any()
    assert bool(served_ok.all()) == long
    assert served.dtype == trained.dtype == torch.float32
    scale = (patches - patches.mean()).abs().max()
    assert (served - trained).abs().max() <= 1e-5 * scale + 1e-6 * abs(level)


def test_a_local_or_best_scale_finds_the_season_on_a_trend():
    """lag_scale "local", or lag_best 12: a weekly pattern (swing 50) on a trend of 0.3 a step, whose variance
    the trend inflates 20 times: measured against it, the match term is small and the copy
    follows the logits (here: one patch back, out of phase, 37 off); against the matched points'
    own variance, or 12 times the best lag's mean squared difference, the copy follows the
    season."""
    p = 32  # (the shipped models' patch)
    t = torch.arange(40 * p + p, dtype=torch.float64)
    x = (200 + 0.3 * t + 5 * torch.tensor([0, 2, 3, 3, 4, 10, 8.0])[t.long() % 7]).float()
    n_lags, m = 8 * p + 1, 4 * p
    hist_len = n_lags - 1 + m
    history, patch = x[None, 30 * p - hist_len: 30 * p], x[None, None, 30 * p: 31 * p]
    truth = x[31 * p: 32 * p]  # (the copy forecasts the patch after `patch`)
    logits = torch.zeros(1, 1, n_lags)
    logits[..., 0] = 6.0  # (a learned preference for one patch back: lag P)
    var = x[: 31 * p].double().var().float().reshape(1, 1)  # (the trend's variance, mostly)
    assert var > 15 * x[31 * p - m: 31 * p].double().var()
    args = (history, patch, torch.tensor([30]), logits, torch.full((1, 1), 5.0), var,
            torch.ones(1, 1))
    blind, _ = lag_copy(*args, local=False)
    seen, _ = lag_copy(*args, local=True)
    assert (seen[0, 0] - truth).abs().max() < 2.0
    assert (blind[0, 0] - truth).abs().max() > 10 * (seen[0, 0] - truth).abs().max()


def test_a_best_scale_copies_a_close_repeat_the_normalising_variance_hides():
    """lag_best: a series that repeats itself every 45 points, noise 0.1, its normalising
    variance inflated (a level shift long ago, say: 100 times its own); the logits prefer one
    patch back. Against the normalising variance the match cannot overrule them; against 12
    times the best lag's mean squared difference, the copy is the repeat, within the noise."""
    p = 32
    g = torch.Generator().manual_seed(3)
    t = torch.arange(40 * p, dtype=torch.float64)
    x = (torch.sin(2 * torch.pi * t / 45) + torch.sin(6 * torch.pi * t / 45) ** 3
         + 0.1 * torch.randn(len(t), generator=g, dtype=torch.float64)).float()
    n_lags, m = 8 * p + 1, 4 * p
    hist_len = n_lags - 1 + m
    history, patch = x[None, 30 * p - hist_len: 30 * p], x[None, None, 30 * p: 31 * p]
    truth = x[31 * p: 32 * p]
    logits = torch.zeros(1, 1, n_lags)
    logits[..., 0] = 6.0  # (one patch back)
    var = torch.full((1, 1), 100.0 * float(x.double().var()))
    args = (history, patch, torch.tensor([30]), logits, torch.full((1, 1), 5.0), var)
    blind, _ = lag_copy(*args)
    seen, _ = lag_copy(*args, best=12.0)
    assert (seen[0, 0] - truth).abs().max() < 0.5
    assert (blind[0, 0] - truth).abs().max() > 2 * (seen[0, 0] - truth).abs().max()


def test_lag_correlations_have_the_direct_forms_gradients():
    """Training backpropagates through the lag head's weights (and, in rollouts, its points)."""
    g = torch.Generator().manual_seed(4)
    m, n_lags, p = 4, 6, 2
    windows = torch.randn(2, 1, n_lags - 1 + p + m, generator=g, dtype=torch.float64,
                          requires_grad=True)
    weights = torch.rand(2, 1, n_lags, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda w: lag_match(w, m, n_lags), (windows,))
    assert torch.autograd.gradcheck(lambda w, a: lag_sum(w, a, m, p), (windows, weights))
    for fast, direct, args in ((lag_match, lag_match_direct, (windows,)),
                               (lag_sum, lag_sum_direct, (windows, weights))):
        extra = (m, n_lags) if fast is lag_match else (m, p)
        grads = torch.autograd.grad(fast(*args, *extra).sum(), args)
        want = torch.autograd.grad(direct(*args, *extra).sum(), args)
        assert all(torch.allclose(a, b, atol=1e-9) for a, b in zip(grads, want))


@pytest.mark.parametrize("drift,scale,best", [(False, "norm", 0.0), (True, "norm", 0.0),
                                             (True, "local", 0.0), (True, "norm", 12.0)])
def test_streamed_equals_whole_and_alone_equals_batched(drift, scale, best):
    model = head_model(drift=drift, scale=scale, best=best)
    xs = [walk(n, n) for n in (8 * P, 8 * P, 8 * P)]
    whole = model.whole(torch.stack(xs))
    state = model.init_state([x[:0] for x in xs])
    at = 0
    for n in (3, 13, 1, 2 * P + 5, 7, 8 * P - 2 * P - 29):
        state = model.append(state, [x[at: at + n] for x in xs])
        at += n
    assert at == 8 * P
    assert torch.allclose(state.next_patch, whole[:, -P:], atol=1e-4)
    alone = model.append(model.init_state([xs[1]]), [xs[1]])
    batched = model.append(model.init_state(xs), xs)
    for f, t in alone.tensors().items():
        assert torch.allclose(t.double(), getattr(batched, f)[1:2].double(), atol=1e-5), f
    mean, q = model.forecast(batched, 3 * P + 1, quantiles=True)
    assert q.shape == (3, len(LEVELS), 3 * P + 1)
    assert (q.diff(dim=1) >= 0).all()
    assert torch.equal(model.forecast(batched, 3 * P + 1), mean)


@pytest.mark.slow
@pytest.mark.parametrize("drift,scale,best", [(False, "norm", 0.0), (True, "norm", 0.0),
                                             (True, "local", 0.0), (True, "norm", 12.0)])
def test_pool_paths_match_the_reference(drift, scale, best):
    model = head_model(drift=drift, scale=scale, best=best).to(DEVICE)
    runner = PoolRunner(model)
    xs = [walk(n, n).to(DEVICE) for n in (2 * P + 3, 5 * P + 1, 4 * P)]
    reference = model.append(model.init_state(xs), xs)
    pool = RimerState.zeros(model.cfg, 8, DEVICE)
    slots = torch.tensor([5, 1, 3], device=DEVICE)
    runner.append_slots(pool, slots, xs)
    for f, t in reference.tensors().items():
        if f != "wkv":
            assert rel_err(pool.select(slots).tensors()[f], t) < 1e-5, f
    # one more step through the fused one-patch step: two rows complete a patch, one does not
    new = [walk(k, 7 + k).to(DEVICE) for k in (P - 3, 2, P - 2)]
    counts = torch.tensor([len(v) for v in new], device=DEVICE)
    values = torch.zeros(3, 2 * P, device=DEVICE)
    for b, v in enumerate(new):
        values[b, : len(v)] = v
    runner.step_slots(pool, slots, values, counts)
    reference = model.append(reference, new)
    for f, t in reference.tensors().items():
        if f != "wkv":
            assert rel_err(pool.select(slots).tensors()[f], t) < 1e-5, f
    mean, q = runner.forecast_slots(pool, slots, 2 * P, torch.tensor([6, 7, 0], device=DEVICE),
                                   quantiles=True)
    want_mean, want_q = model.forecast(reference, 2 * P, quantiles=True)
    assert rel_err(mean, want_mean) < 1e-4 and rel_err(q, want_q) < 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("drift", [False, True])
def test_onnx_graphs_output_the_heads(tmp_path, drift):
    from model import checkpoint
    from model.onnx_network import OnnxNetwork, export

    model = head_model(drift=drift)
    checkpoint.save(model, tmp_path / "w", {"name": "heads"})
    export(tmp_path / "w")
    xs = [walk(n, n) for n in (3 * P + 2, 20 * P + 5)]  # (the second runs chunks of 16 patches)
    want = model.forecast(model.append(model.init_state(xs), xs), 2 * P, quantiles=True)
    model.network_runtime = OnnxNetwork.for_checkpoint(model, tmp_path / "w")
    got = model.forecast(model.append(model.init_state(xs), xs), 2 * P, quantiles=True)
    for a, b in zip(got, want):
        assert rel_err(a, b) < 1e-4


def test_spilled_states_come_back_with_their_heads(tmp_path):
    model = head_model()
    every = Engine(model, MANIFEST, 20, backend="torch")
    bounded = Engine(model, MANIFEST, 20, backend="torch", capacity=1, host_capacity=1,
                     spill_dir=str(tmp_path))
    for e in (every, bounded):
        for i in range(4):
            e.append(f"s{i}", walk(3 * P + i, i).tolist(), None)
    for i in range(4):
        assert every.forecast_series(f"s{i}", 2 * P) == bounded.forecast_series(f"s{i}", 2 * P)


def test_a_restart_gives_the_same_intervals_bit_for_bit(tmp_path):
    """Calibration and the heads' fields are part of the state: recovered from a snapshot and
    the log exactly as they were (files 0600, like the rest of the data directory)."""
    import random

    from service import distribution
    from service.store import Store

    def opened(engine):
        store = Store(tmp_path, engine, snapshot_interval_s=0)
        store.open()
        return store

    model = head_model()
    first = Engine(model, MANIFEST, 20, backend="torch")
    store = opened(first)
    rng = random.Random(0)
    for i in range(30):
        first.append(f"s{i % 3}", walk(rng.randint(1, 2 * P), i).tolist(), None)
        if i == 14:
            store.snapshot()
    before = {f"s{i}": first.forecast_series(f"s{i}", 2 * P) for i in range(3)}
    store.close()
    again = Engine(model, MANIFEST, 20, backend="torch")
    store = opened(again)
    for sid, (length, fc) in before.items():
        got_length, got = again.forecast_series(sid, 2 * P)
        assert got_length == length and got == fc
        assert (got.quantiles == fc.quantiles).all() and (got.calib == fc.calib).all()
        assert distribution.intervals(got, [80, 95]) == distribution.intervals(fc, [80, 95])
    store.close()
    for path in tmp_path.iterdir():
        if path.is_file():
            assert path.stat().st_mode & 0o777 == 0o600, path.name


def test_the_horizon_spread_widens_the_quantiles_of_later_patches_only():
    model = head_model()
    xs = [walk(5 * P, 3)]  # whole patches: the first forecast patch is the state's
    state = model.append(model.init_state(xs), xs)
    mean, q = model.forecast(state, 3 * P, quantiles=True)
    with torch.no_grad():
        model.horizon_spread.copy_(torch.tensor([1.0, 2.0, 3.0] + [3.0] * (len(model.horizon_spread) - 3)))
    mean2, q2 = model.forecast(state, 3 * P, quantiles=True)
    assert torch.equal(mean, mean2)
    dev, dev2 = q - mean[:, None], q2 - mean2[:, None]
    assert torch.allclose(dev2[..., :P], dev[..., :P])
    assert torch.allclose(dev2[..., P: 2 * P], 2 * dev[..., P: 2 * P], atol=1e-5)
    assert torch.allclose(dev2[..., 2 * P:], 3 * dev[..., 2 * P:], atol=1e-5)


def test_the_horizon_carry_joins_each_patch_to_the_spread_the_last_one_reached():
    """widen_by_horizon against its formula written out point by point: the first patch as
    predicted; later ones sign(d) sqrt((s d)^2 + c D_prev^2) with c = carry (1 - d_1^2 / d_P^2)
    per quantile; carry 0 is the spread alone; levels stay in order."""
    torch.manual_seed(0)
    b, levels, p, k = 3, 5, 4, 3
    mean = torch.randn(b, p * k, dtype=torch.float64)
    grow = torch.linspace(0.5, 2.0, p, dtype=torch.float64).repeat(k)  # each patch restarts narrow
    z = torch.linspace(-1.5, 1.5, levels, dtype=torch.float64) + 0.1  # (no offset exactly 0)
    q = mean[:, None] + z[None, :, None] * grow * (1 + torch.rand(b, 1, 1, dtype=torch.float64))
    spread = torch.tensor([1.0, 1.5, 2.0], dtype=torch.float64)
    alone = calibration.widen_by_horizon(mean, q, p, spread, 0.0)
    d = q - mean[:, None]
    want = d.clone()
    want[..., p:2 * p] *= 1.5
    want[..., 2 * p:] *= 2.0
    assert torch.allclose(alone - mean[:, None], want)
    got = calibration.widen_by_horizon(mean, q, p, spread, 0.8) - mean[:, None]
    share = 0.8 * (1 - d[..., 0] ** 2 / d[..., p - 1] ** 2)  # [B, Q]
    expect = d[..., :p].clone()
    for j in range(1, k):
        here = spread[j] * d[..., j * p:(j + 1) * p]
        prev = expect[..., -1:]
        joined = torch.sign(here) * torch.sqrt(here ** 2 + share[..., None] * prev ** 2)
        expect = torch.cat([expect, joined], -1)
    assert torch.allclose(got, expect)
    width = got[:, -1] - got[:, 0]
    assert bool((width[:, p] > alone[:, -1, p] - alone[:, 0, p]).all())  # the boundary fell less
    assert bool((got[:, 1:] >= got[:, :-1]).all())


def test_a_model_with_a_carry_forecasts_with_it_and_saves_it(tmp_path):
    model = head_model()
    xs = [walk(5 * P, 3)]
    state = model.append(model.init_state(xs), xs)
    mean, q = model.forecast(state, 3 * P, quantiles=True)
    with torch.no_grad():
        model.horizon_carry.fill_(0.5)
    mean2, q2 = model.forecast(state, 3 * P, quantiles=True)
    assert torch.equal(mean, mean2) and torch.equal(q[..., :P], q2[..., :P])
    assert not torch.allclose(q[..., P:], q2[..., P:])
    checkpoint.save(model, tmp_path / "m", {"name": "m"})
    again, _ = checkpoint.load(tmp_path / "m")
    assert float(again.horizon_carry) == 0.5
    assert torch.equal(again.forecast(again.append(again.init_state(xs), xs), 3 * P, quantiles=True)[1], q2)


def test_a_forecast_from_inside_a_patch_starts_afresh_at_the_newest_point():
    """A lag model keeps the last points of complete patches: a series whose newest points are
    an unfinished patch is forecast from a fresh state over its last whole patches ending at its
    newest point (as many points as its complete patches hold, at most history_len), quantiles
    too; one whose newest point ends a patch from its own state. Rows of a batch are each their
    own (`merge_rows`), and the triton pool's forecast is the same (runtime.pool)."""
    model = head_model(drift=True)
    cfg = model.cfg
    lengths = (5 * P + 3, 40 * P + 7, 3 * P, 2 * P + 1)
    xs = [walk(n, 10 + n) for n in lengths]
    state = model.append(model.init_state(xs), xs)
    mean, q = model.forecast(state, 2 * P, quantiles=True)
    def rollout(s):  # (the state's own rollout: the forecast before realigning)
        return model._rollout(s, 2 * P, lambda s, patch: model.advance(
            s, patch, None, check_positions=False, forecast=True, quantiles=True), True)

    assert model.realigns
    for b, (n, x) in enumerate(zip(lengths, xs)):
        alone = model.append(model.init_state([x]), [x])
        if n % P:
            keep = min(n // P, REALIGN_PATCHES, cfg.history_len // P) * P  # (the tiny model
            # keeps fewer points than 16 patches: history_len)
            window = [x[n - keep:]]
            assert rel_err(mean[b], rollout(alone)[0][0]) > 1e-3, n  # (it changed)
            alone = model.append(model.init_state(window), window)
        want_mean, want_q = rollout(alone)
        assert rel_err(mean[b], want_mean[0]) < 1e-5 and rel_err(q[b], want_q[0]) < 1e-5, n
    pool = RimerState.zeros(cfg, 8, DEVICE)
    runner = PoolRunner(model)
    slots = torch.tensor([0, 1, 2, 3], device=DEVICE)
    pool.write_(slots, model.init_state(xs))
    runner.append_slots(pool, slots, [x.to(DEVICE) for x in xs])
    got_mean, got_q = runner.forecast_slots(pool, slots, 2 * P, torch.tensor([4, 5, 6, 7], device=DEVICE),
                                            quantiles=True)
    assert rel_err(got_mean.cpu(), mean) < 1e-4 and rel_err(got_q.cpu(), q) < 1e-4


def test_a_realigned_forecast_reads_at_most_sixteen_patches():
    """A model that keeps more than 16 patches of points starts a forecast from inside a patch
    over the last 16 (the benchmarks' lookback: one call of the onnx chunk graph)."""
    from tests.helpers import tiny_model

    model = tiny_model(lag_window=20 * P, lag_match=P)
    assert model.cfg.history_len == 20 * P
    x = walk(30 * P + 5, 21)
    state = model.append(model.init_state([x]), [x])
    (window,) = model.realigned_windows(state)
    assert torch.equal(window, x[-REALIGN_PATCHES * P:])
    fresh = model.append(model.init_state([window]), [window])
    assert torch.equal(model.forecast(state, 2 * P), model.forecast(fresh, 2 * P))


def test_a_state_whose_statistics_are_stale_is_forecast_afresh():
    """After a series' scale drops by orders of magnitude, its causal variance (each patch 1/16
    for ever) stays far above its recent points' for hundreds of patches: such a state, even on
    a patch boundary, is forecast from a fresh state over its last whole patches, like one
    inside a patch. A series whose scale holds is not."""
    from model.realign import STALE_VARIANCE

    model = head_model(drift=True)
    cfg = model.cfg
    rng = np.random.default_rng(7)
    steady = torch.tensor(np.cumsum(rng.standard_normal(40 * P)) + 5, dtype=torch.float32)
    dropped = torch.cat([torch.tensor(1e4 * rng.standard_normal(20 * P), dtype=torch.float32),
                         torch.tensor(1 + 0.01 * rng.standard_normal(20 * P), dtype=torch.float32)])
    xs = [steady, dropped]
    state = model.append(model.init_state(xs), xs)
    assert (state.tail_len == 0).all()
    assert model.realign_mask(state).tolist() == [False, True]
    assert float(state.norm[1, 1]) > STALE_VARIANCE * float(dropped[-cfg.history_len:].double().var())
    got = model.forecast(state, 2 * P)
    window = [dropped[-min(REALIGN_PATCHES, cfg.history_len // P) * P:]]
    fresh = model.append(model.init_state(window), window)
    assert rel_err(got[1], model.forecast(fresh, 2 * P)[0]) < 1e-5
    own = model.forecast(state.select([0]), 2 * P)
    assert rel_err(got[0], own[0]) < 1e-5
    pool = RimerState.zeros(cfg, 4, DEVICE)
    runner = PoolRunner(model)
    slots = torch.tensor([0, 1], device=DEVICE)
    pool.write_(slots, model.init_state(xs))
    runner.append_slots(pool, slots, [x.to(DEVICE) for x in xs])
    pooled = runner.forecast_slots(pool, slots, 2 * P, torch.tensor([2, 3], device=DEVICE))
    assert rel_err(pooled.cpu(), got) < 1e-4
