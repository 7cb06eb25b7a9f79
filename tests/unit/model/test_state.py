"""RimerState's own rules: which appends only extend the tail, the tail copy itself, and which
states a forecast may run from, each against what the network's path does."""

from __future__ import annotations

import pytest
import torch

from model.rimer import PositionLimitError
from model.state import BatchRow, RimerState
from tests.helpers import tiny_model, walk

P = 8  # tests.test_model.TINY's patch


def streamed(model, lengths):
    xs = [walk(n, 10 + n) for n in lengths]
    return model.append(model.init_state(xs), xs)


def test_without_wkv_shares_everything_but_the_matrices():
    state = streamed(tiny_model(), [3, 17])
    small = state.without_wkv()
    assert small.wkv is None and state.wkv is not None
    for name, t in small.tensors().items():
        assert t is getattr(state, name), name


def test_a_batch_row_reads_as_its_row_and_makes_its_views_only_when_read():
    """`BatchRow(batch, b)` is row b of the batch: every field a view of the batch's row (the
    same storage, nothing copied), made on first read; a field set on the row stays as set."""
    batch = streamed(tiny_model(), [3, 17, 40])
    row = BatchRow(batch, 1)
    assert "wkv" not in row.__dict__  # nothing made yet
    split = {name: t.split(1)[1] for name, t in batch.tensors().items()}
    assert set(row.tensors()) == set(split)
    for name, t in split.items():
        got = getattr(row, name)
        assert torch.equal(got, t) and got.data_ptr() == t.data_ptr() and got.shape == t.shape, name
    assert int(row.length[0]) == 17 and row.batch == 1
    assert torch.equal(RimerState.cat([row]).wkv, batch.wkv[1:2])
    other = BatchRow(batch, 2)
    other.tail = torch.zeros_like(batch.tail[:1])
    assert torch.equal(other.tail, torch.zeros_like(batch.tail[:1]))
    assert torch.equal(other.norm, batch.norm[2:3])  # (the others still from the batch)


def test_completes_patch_is_where_the_tail_reaches_a_patch():
    state = streamed(tiny_model(), [3, 17, 16])  # tails 3, 1, 0
    assert state.completes_patch([4, 6, 7]).tolist() == [False, False, False]
    assert state.completes_patch([5, 7, 8]).tolist() == [True, True, True]
    assert state.completes_patch(torch.tensor([0, 30, 0])).tolist() == [False, True, False]


def test_extend_tail_gives_the_bits_of_the_network_path():
    model = tiny_model()
    state = streamed(model, [3, 17, 16, 0])
    values = [walk(4, 1), walk(6, 2), torch.tensor([]), walk(7, 3)]  # tails 3, 1, 0, 0
    got = state.extend_tail(values)
    want = model.append(state, values)
    for name, t in want.tensors().items():
        assert torch.equal(getattr(got, name), t), name
    assert torch.equal(state.tail_len, torch.tensor([3, 1, 0, 0]))  # the input is unchanged
    with pytest.raises(ValueError, match="completes a patch"):
        state.extend_tail([walk(5, 4), walk(1, 5), walk(1, 6), walk(1, 7)])
    with pytest.raises(ValueError, match="value lists"):
        state.extend_tail(values[:2])


def test_forecastable_agrees_with_forecast():
    model = tiny_model(pos_emb="sinusoidal", max_positions=6)
    state = streamed(model, [3, 8, 37, 45])  # 0, 1, 4 and 5 patches; tails 3, 0, 5, 5
    for horizon in (1, 3, 4, 11, 12, 20):
        ok = state.forecastable(horizon, model.cfg).tolist()
        for b, allowed in enumerate(ok):
            row = state.select([b])
            try:
                model.forecast(row, horizon)
                ran = True
            except (ValueError, PositionLimitError):
                ran = False
            assert ran == allowed, (b, horizon)
    plain_model = tiny_model()  # no position table: only the first patch is needed
    plain = streamed(plain_model, [3, 8])
    assert plain.forecastable(10_000, plain_model.cfg).tolist() == [False, True]
    with pytest.raises(ValueError):
        plain.forecastable(0, plain_model.cfg)


def test_a_pool_row_gathered_without_matrices_extends_its_tail():
    model = tiny_model()
    pool = RimerState.zeros(model.cfg, 3)
    pool.write_(torch.tensor([1]), streamed(model, [13]))
    row = pool.select([1], wkv=False).extend_tail([walk(2, 9)])
    assert row.wkv is None and int(row.tail_len[0]) == 7
