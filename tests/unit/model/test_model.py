"""The three forms agree, the state is constant-size, and causal statistics are as documented."""

from __future__ import annotations

import math

import numpy as np
import torch

from model.state import RimerState
from tests.conftest import rel_err
from tests.helpers import TINY, tiny_model, walk


def test_causal_whole_outputs_equal_stepwise_next_patch():
    model = tiny_model()
    x = walk(8 * 12, 1)
    with torch.no_grad():
        whole = model.whole(x[None])[0].view(12, 8)
    state = model.init_state([x])
    for n in range(12):
        state = model.append(state, [x[n * 8:(n + 1) * 8]])
        assert rel_err(state.next_patch[0], whole[n]) <= 1e-5


def test_state_size_does_not_depend_on_history():
    model = tiny_model()
    sizes = set()
    for n in (8, 80, 8000):
        state = model.append(model.init_state([walk(n, 2)]), [walk(n, 2)])
        sizes.add(state.nbytes_per_series())
    assert len(sizes) == 1
    assert sizes.pop() == RimerState.zeros(TINY, 1).nbytes_per_series()


def test_forecast_leaves_state_unchanged_and_is_repeatable():
    model = tiny_model()
    x = walk(45, 3)
    state = model.append(model.init_state([x]), [x])
    before = {k: v.clone() for k, v in state.tensors().items()}
    first = model.forecast(state, 30)
    second = model.forecast(state, 30)
    for k, v in state.tensors().items():
        assert torch.equal(v, before[k]), k
    assert torch.equal(first, second) and first.shape == (1, 30)


def test_forecast_uses_model_prediction_for_the_rest_of_the_open_patch():
    """With r points of the open patch known, the forecast starts at next_patch[r:]."""
    model = tiny_model()
    x = walk(8 * 5 + 3, 4)
    state = model.append(model.init_state([x]), [x])
    out = model.forecast(state, 5)
    torch.testing.assert_close(out[0], state.next_patch[0, 3:8])
    longer = model.forecast(state, 13)
    torch.testing.assert_close(longer[0, :5], out[0])


def test_batch_with_different_lengths_equals_single_series():
    model = tiny_model()
    xs = [walk(n, 10 + n) for n in (8, 37, 64, 130)]
    batch = model.append(model.init_state(xs), xs)
    together = model.forecast(batch, 20)
    for i, x in enumerate(xs):
        alone = model.forecast(model.append(model.init_state([x]), [x]), 20)
        assert rel_err(together[i], alone[0]) <= 1e-5
        assert int(batch.length[i]) == len(x)


def test_append_of_nothing_changes_nothing():
    model = tiny_model()
    x = walk(20, 5)
    state = model.append(model.init_state([x]), [x])
    again = model.append(state, [torch.zeros(0)])
    for k, v in state.tensors().items():
        assert torch.equal(v, getattr(again, k)), k


def test_long_history_is_consumed_in_chunks_identically(monkeypatch):
    from model import rimer
    model = tiny_model()
    x = walk(8 * 50, 6)
    reference = model.append(model.init_state([x]), [x])
    monkeypatch.setattr(rimer, "MAX_CHUNK_PATCHES", 7)
    chunked = model.append(model.init_state([x]), [x])
    assert rel_err(chunked.wkv, reference.wkv) <= 1e-5
    assert rel_err(chunked.next_patch, reference.next_patch) <= 1e-5


def naive_causal_stats(x: np.ndarray, p: int, window: int) -> list[tuple[float, float]]:
    """The documented scheme written out as weights over all past points (float64)."""
    out = []
    n = len(x) // p
    for last in range(n):
        weights = np.zeros(n)
        w = 1.0
        for j in range(last, -1, -1):  # patch j's weight, newest first
            alpha = max(1.0 / (j + 1), 1.0 / window)
            weights[j] = w * alpha
            w *= 1 - alpha
        pts = np.repeat(weights[: last + 1] / p, p)
        seg = x[: (last + 1) * p]
        mean = float(np.sum(pts * seg))
        var = float(np.sum(pts * (seg - mean) ** 2))
        out.append((mean, var))
    return out


def test_causal_statistics_are_exponentially_weighted_moments_of_the_past():
    from model import normalisation
    x = walk(8 * 20, 7).double().numpy()
    patches = torch.tensor(x).view(1, 20, 8)
    stats = normalisation.causal_update(torch.zeros(1, 2, dtype=torch.float64), patches,
                                        torch.zeros(1, dtype=torch.int64),
                                        torch.ones(1, 20, dtype=torch.bool), 4)
    for n, (mean, var) in enumerate(naive_causal_stats(x, 8, 4)):
        assert math.isclose(stats[0, n, 0].item(), mean, rel_tol=1e-9, abs_tol=1e-9)
        assert math.isclose(stats[0, n, 1].item(), var, rel_tol=1e-9, abs_tol=1e-9)


def test_sinusoidal_model_refuses_positions_beyond_its_table():
    import pytest

    from model.rimer import PositionLimitError
    model = tiny_model(pos_emb="sinusoidal", max_positions=6, norm="window")
    x = walk(8 * 7, 8)
    with pytest.raises(PositionLimitError, match="covers 6 patches"):
        model.append(model.init_state([x]), [x])


def test_the_statistics_in_numpy_are_the_bits_of_the_statistics_in_torch():
    """On the CPU `causal_update` runs in NumPy; the triton backend's device runs the torch
    form. Same IEEE operations in the same order: equal bit for bit, including odd patch lengths
    (the pairwise sum's leftover) and patches that are not valid."""
    from model import normalisation
    g = torch.Generator().manual_seed(3)
    for bsz, t, p in ((1, 1, 32), (4, 6, 24), (3, 5, 7)):
        stats = torch.rand(bsz, 2, dtype=torch.float64, generator=g) * 10
        patches = torch.randn(bsz, t, p, generator=g) * 100 + 30
        before = torch.randint(0, 40, (bsz,), generator=g)
        valid = torch.rand(bsz, t, generator=g) > 0.3
        valid[0, 0] = True
        got = normalisation.causal_update(stats, patches, before, valid, 4)
        want = normalisation._causal(normalisation._Torch, stats, patches, before, valid, 4)
        assert got.dtype == torch.float64 and torch.equal(got, want)
        assert got[0, 0, 1] != stats[0, 1]  # (it did update)
        every = torch.ones(bsz, t, dtype=torch.bool)  # valid=None: every patch real
        want = normalisation._causal(normalisation._Torch, stats, patches, before, every, 4)
        assert torch.equal(normalisation.causal_update(stats, patches, before, None, 4), want)
        assert torch.equal(normalisation._causal(normalisation._Torch, stats, patches, before,
                                                 None, 4), want)


def test_the_products_form_of_the_recurrence_is_the_recurrence():
    """`wkv7_products` (the onnx graphs' form) against the reference, in float64."""
    from model.wkv import wkv7_products, wkv7_recurrent
    g = torch.Generator().manual_seed(4)
    bsz, t, h, n = 3, 5, 2, 16
    r, w, k, v, a, b = (torch.randn(bsz, t, h, n, generator=g, dtype=torch.float64) * 0.5
                        for _ in range(6))
    w = -torch.rand(bsz, t, h, n, generator=g, dtype=torch.float64)
    state = torch.randn(bsz, h, n, n, generator=g, dtype=torch.float64)
    valid = torch.rand(bsz, t, generator=g) > 0.3
    for mask in (None, valid):
        want_o, want_s = wkv7_recurrent(r, w, k, v, a, b, state, mask)
        got_o, got_s = wkv7_products(r, w, k, v, a, b, state, mask)
        keep = mask if mask is not None else torch.ones(bsz, t, dtype=torch.bool)
        assert rel_err(got_o[keep], want_o[keep]) <= 1e-12
        assert rel_err(got_s, want_s) <= 1e-12


def test_the_chunk_form_of_the_recurrence_is_the_recurrence():
    """`wkv7_chunk` (the onnx chunk graph's form) against the reference in float64, for chunk
    lengths on both sides of the powers of two its triangular inverse is built from, with this
    model's strongest decay (w = -e^-0.5 at every step: 1 / g_t is largest)."""
    from model.wkv import wkv7_chunk, wkv7_recurrent
    g = torch.Generator().manual_seed(5)
    bsz, h, n = 2, 2, 16
    for t in (1, 2, 3, 8, 16, 17):
        r, w, k, v, a, b = (torch.randn(bsz, t, h, n, generator=g, dtype=torch.float64) * 0.5
                            for _ in range(6))
        w = -math.exp(-0.5) * torch.rand(bsz, t, h, n, generator=g, dtype=torch.float64)
        w[0] = -math.exp(-0.5)
        state = torch.randn(bsz, h, n, n, generator=g, dtype=torch.float64)
        want_o, want_s = wkv7_recurrent(r, w, k, v, a, b, state)
        got_o, got_s = wkv7_chunk(r, w, k, v, a, b, state)
        assert rel_err(got_o, want_o) <= 1e-12 and rel_err(got_s, want_s) <= 1e-12, t
        got_o, got_s = wkv7_chunk(*(x.float() for x in (r, w, k, v, a, b, state)))
        assert rel_err(got_o, want_o) <= 1e-5 and rel_err(got_s, want_s) <= 1e-5, t


def test_the_batched_split_of_short_appends_equals_the_per_series_one():
    """`_Split`'s whole-batch path (no series reaching a second patch) gives the same patches,
    tails and counts as the per-series path, whatever lies in the tail buffer past its length."""
    from model.rimer import _Split

    rng, p = np.random.default_rng(0), 32
    for trial in range(200):
        b = int(rng.integers(1, 9))
        lens = torch.tensor(rng.integers(0, p, b))
        tail = torch.tensor(rng.normal(size=(b, p)), dtype=torch.float32)  # (junk past lens)
        dtype = torch.float32 if trial % 3 else torch.float64
        vals = [torch.tensor(rng.normal(size=int(rng.integers(0, 2 * p - int(lens[i])))), dtype=dtype)
                for i in range(b)]
        short, general = _Split(tail, lens, vals, p), _Split(tail, lens, vals, p, short=False)
        assert short.one is not None and general.one is None
        assert short.counts == general.counts
        for name in ("n_complete", "tail_len", "tail"):
            assert torch.equal(getattr(short, name), getattr(general, name)), (trial, name)
        got, want = list(short.chunks("cpu")), list(general.chunks("cpu"))
        assert len(got) == len(want) == (1 if max(general.counts) else 0)
        for (pa, va), (pb, vb) in zip(got, want):
            assert pa.dtype == pb.dtype and torch.equal(pa, pb)
            assert (va is None and vb is None) or torch.equal(va, vb)
