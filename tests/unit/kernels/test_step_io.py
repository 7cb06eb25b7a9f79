"""The one-patch pool step (`PoolRunner.step_slots`, runtime/pool.py): its prologue and epilogue
kernels (kernels/step_io.py) against their PyTorch references, and the whole fused step against
`append_slots`, the torch backend, and itself across batches and slots. Tiny shapes: on the CPU the
kernels run under Triton's interpreter."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from kernels import block_out, step_io
from kernels.settings import KernelSettings
from model.state import RimerState
from runtime.pool import PoolRunner
from tests.conftest import rel_err
from tests.helpers import tiny_model, walk

pytestmark = pytest.mark.gpu  # the Triton kernels (under TRITON_INTERPRET=1 on a CPU)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
P, D, LAYERS = 8, 32, 2


def rows(*slots: int) -> torch.Tensor:
    return torch.tensor(slots, dtype=torch.int64, device=DEVICE)


def random_pool(slots: int, seed: int, positions: int = 50) -> RimerState:
    g = torch.Generator().manual_seed(seed)
    pool = RimerState(
        wkv=None, shift=torch.randn(slots, LAYERS, D, generator=g),
        n_patches=torch.randint(0, positions - 1, (slots,), generator=g),
        tail=torch.randn(slots, P, generator=g) + 3, tail_len=torch.randint(0, P, (slots,), generator=g),
        norm=torch.stack([torch.randn(slots, generator=g, dtype=torch.float64),
                          0.5 + torch.rand(slots, generator=g, dtype=torch.float64)], 1),
        next_patch=torch.randn(slots, P, generator=g))
    pool.n_patches[0] = 0  # a fresh series: alpha = 1
    return pool.to(DEVICE)


def step_inputs(pool: RimerState, slots: torch.Tensor, counts: list[int], seed: int):
    g = torch.Generator().manual_seed(seed)
    values = (torch.randn(len(slots), 2 * P, generator=g) * 2 + 1).to(DEVICE)
    counts = torch.tensor(counts, dtype=torch.int64, device=DEVICE)
    assert bool((pool.tail_len[slots] + counts < 2 * P).all())
    return values, counts


def consts(eps=1e-5, window=4):
    return torch.tensor([eps, 1.0 / window], dtype=torch.float64, device=DEVICE)


@pytest.mark.parametrize("causal,with_pe", [(True, False), (True, True), (False, False)])
def test_prologue_matches_reference(causal, with_pe):
    g = torch.Generator().manual_seed(3)
    pool = random_pool(7, seed=1)
    pool.tail_len[torch.tensor([2, 4, 6])] = torch.tensor([0, 5, 3]).to(DEVICE)
    pool.n_patches[6] = 50  # used the whole position table: it may still fill its tail
    slots = rows(0, 2, 4, 6, 1, 5)
    # counts: a fresh series completing its patch; none; one completing with points left over;
    # one that only extends its tail; padding; the longest allowed
    tl_ = pool.tail_len[slots].tolist()
    counts = [P - tl_[0], 0, P + 2 - tl_[2], max(0, P - 1 - tl_[3]), 0, 2 * P - 1 - tl_[5]]
    values, counts = step_inputs(pool, slots, counts, seed=2)
    embed = (torch.randn(D, P, generator=g) * 0.3).to(DEVICE)
    pe = torch.randn(50, D, generator=g).to(DEVICE) if with_pe else None
    got = step_io.prologue(pool, slots, values, counts, embed, pe, consts(), causal)
    want = step_io.prologue_reference(pool, slots, values, counts, embed, pe, consts(), causal)
    assert got.done.tolist() == [1, 0, 1, 0, 0, 1]
    for name in ("tail", "tail_len", "done", "n_patches", "shift"):
        assert torch.equal(getattr(got, name), getattr(want, name)), name
    assert rel_err(got.stats, want.stats) <= 1e-13
    assert rel_err(got.h, want.h) <= 1e-5
    # a row's results do not depend on the others: row 2 alone equals row 2 in the batch
    alone = step_io.prologue(pool, slots[2:3], values[2:3], counts[2:3], embed, pe, consts(), causal)
    for name in ("h", "shift", "stats", "tail", "tail_len", "done", "n_patches"):
        assert torch.equal(getattr(alone, name), getattr(got, name)[2:3]), name


@pytest.mark.parametrize("where", ["own-launch", "in-block-out"])
def test_epilogue_matches_reference_and_writes_only_changed_rows(where):
    """The epilogue as a launch of its own, and inside the last block's launch (kernels/block_out.py,
    on that launch's output rows, which it leaves as they are without it)."""
    g = torch.Generator().manual_seed(4)
    pool = random_pool(6, seed=5)
    slots = rows(3, 0, 5, 5, 5)  # rows 3 and 4: padding naming the spare slot 5 again
    counts = rows(4, 2, 6, 0, 0)
    io = step_io.StepIO(
        h=torch.randn(5, D, generator=g).to(DEVICE), shift=torch.empty(0),
        stats=torch.stack([torch.randn(5, generator=g, dtype=torch.float64),
                           0.5 + torch.rand(5, generator=g, dtype=torch.float64)], 1).to(DEVICE),
        tail=torch.randn(5, P, generator=g).to(DEVICE), tail_len=rows(1, 5, 3, 0, 0),
        done=rows(1, 0, 1, 0, 0), n_patches=rows(7, 3, 9, 0, 0))
    head_w = (torch.randn(P, D, generator=g) * 0.3).to(DEVICE)
    head_b = torch.randn(P, generator=g).to(DEVICE)
    got, want = pool.clone(), pool.clone()
    h = io.h
    if where == "own-launch":
        step_io.epilogue(got, slots, counts, h, io, head_w, head_b, consts())
    else:
        o, h_in = torch.randn(2, 5, D, generator=g).to(DEVICE)
        weights = [(torch.randn(*shape, generator=g) * 0.2 + (1.0 if i == 3 else 0.0)).to(DEVICE)
                   for i, shape in enumerate([(D, D), (D, D), (D,), (D,), (D,)])]
        h = block_out.block_out(o, h_in, *weights, 1e-5)
        last = step_io.Epilogue(got, slots, counts, io, head_w, head_b, consts())
        assert torch.equal(block_out.block_out(o, h_in, *weights, 1e-5, last), h)
    step_io.epilogue_reference(want, slots, counts, h, io, head_w, head_b, consts())
    for name, t in want.tensors().items():
        if name != "next_patch":
            assert torch.equal(getattr(got, name), t), name
    assert rel_err(got.next_patch, want.next_patch) <= 1e-5
    untouched = rows(1, 2, 4)
    for name, t in pool.tensors().items():
        assert torch.equal(getattr(got, name)[untouched], t[untouched]), name
    # slot 0 only extended its tail: its forecast, statistics and count are as they were
    for name in ("next_patch", "norm", "n_patches", "shift"):
        assert torch.equal(getattr(got, name)[0], getattr(pool, name)[0]), name
    assert torch.equal(got.tail[0], io.tail[1]) and int(got.tail_len[0]) == 5


# ---- the whole fused step -------------------------------------------------------------------------

def pool_with_history(model, slots: int, histories: dict[int, torch.Tensor],
                      settings: KernelSettings | None = None) -> RimerState:
    runner = PoolRunner(model, settings)
    pool = RimerState.zeros(model.cfg, slots, DEVICE)
    runner.append_slots(pool, rows(*histories), list(histories.values()))
    return pool


def padded(news: list[torch.Tensor], extra_rows: int = 0):
    values = torch.zeros(len(news) + extra_rows, 2 * P, device=DEVICE)
    for i, v in enumerate(news):
        values[i, : len(v)] = v
    counts = torch.tensor([len(v) for v in news] + [0] * extra_rows, dtype=torch.int64, device=DEVICE)
    return values, counts


@pytest.mark.slow
@pytest.mark.parametrize("overrides", [{}, {"pos_emb": "sinusoidal"}, {"norm": "window"}])
def test_step_matches_append_slots_and_the_torch_backend(overrides):
    """Within rounding (embed and head sum in another order than kernels.linear), not bit for bit;
    the tail, its length, the patch count and the statistics are exact."""
    model = tiny_model(**overrides).to(DEVICE)
    runner = PoolRunner(model)
    hist = {0: walk(8, 6), 1: walk(13, 7), 2: walk(19, 8), 3: walk(2, 9)}
    pool = pool_with_history(model, 6, hist)
    other, before = pool.clone(), pool.clone()
    news = [walk(3, 9), walk(3, 10), walk(12, 11), walk(6, 12)]  # tails 0, 5, 3, 2: none, 1, 1 + 7, 1 + 0
    values, counts = padded(news, extra_rows=1)
    runner.step_slots(pool, rows(0, 1, 2, 3, 5), values, counts)  # the last row: padding, spare slot
    runner.append_slots(other, rows(0, 1, 2, 3), news)
    for name, t in other.tensors().items():
        if name in ("wkv", "shift", "next_patch"):
            assert rel_err(getattr(pool, name), t) <= 1e-5, name
        else:
            assert torch.equal(getattr(pool, name), t), name
    state = model.init_state(list(hist.values()))
    if model.cfg.norm == "window":
        state.norm = before.norm[:4].clone()
    state = model.append(model.append(state, list(hist.values())), news)
    for name in ("next_patch", "shift", "wkv"):
        assert rel_err(getattr(pool, name)[:4], getattr(state, name)) <= 1e-4, name


# (fuse_ln, fuse_out) of kernels.settings.KernelSettings: three, four or seven launches per block
PLACEMENTS = {"out-in-one": (True, True), "ln-in-linear": (True, False), "ln-launches": (False, False)}


def placed(name: str) -> KernelSettings:
    """The environment's launch settings (a GPU run may pin the row tile) with a placement."""
    fuse_ln, fuse_out = PLACEMENTS[name]
    return dataclasses.replace(KernelSettings.from_env(), fuse_ln=fuse_ln, fuse_out=fuse_out)


@pytest.fixture(params=list(PLACEMENTS))
def placement(request) -> KernelSettings:
    """Every placement of the block's LayerNorms and last two linears."""
    return placed(request.param)


@pytest.mark.slow
def test_step_bit_identical_alone_or_batched_in_any_slot(placement):
    """The fused step's promise: a series' state does not depend on its batch, slot or neighbours."""
    model = tiny_model().to(DEVICE)
    runner = PoolRunner(model, placement)
    x, a, b = walk(21, 1), walk(30, 2), walk(9, 3)
    alone = pool_with_history(model, 2, {0: x}, placement)
    batch = pool_with_history(model, 8, {6: a, 2: x, 0: b}, placement)
    for news in ([walk(2, 4), walk(5, 5), walk(1, 6)],  # x extends its tail (5 -> 7), a completes
                 [walk(8, 7), walk(1, 8), walk(13, 9)]):  # x completes a patch with 7 left over
        v1, c1 = padded(news[:1])
        runner.step_slots(alone, rows(0), v1, c1)
        vb, cb = padded([news[1], news[0], news[2]], extra_rows=2)
        runner.step_slots(batch, rows(6, 2, 0, 7, 7), vb, cb)  # two padding rows on spare slot 7
        for name, t in alone.tensors().items():
            assert torch.equal(getattr(batch, name)[2], t[0]), name
    assert int(alone.tail_len[0]) == (21 + 2 + 8) % P


def test_rows_without_points_change_nothing():
    model = tiny_model().to(DEVICE)
    runner = PoolRunner(model)
    pool = pool_with_history(model, 4, {0: walk(13, 1), 1: walk(20, 2)})
    before = pool.clone()
    values, counts = padded([walk(4, 3)], extra_rows=3)
    values[1:] = 7.0  # values beyond a row's count are ignored
    runner.step_slots(pool, rows(1, 0, 3, 3), values, counts)  # slot 0 named with count 0
    for name, t in before.tensors().items():
        assert torch.equal(getattr(pool, name)[[0, 2, 3]], t[[0, 2, 3]]), name
    assert int(pool.n_patches[1]) == 3 and int(pool.tail_len[1]) == 0


@pytest.mark.slow
def test_layer_norms_in_the_linears_agree_with_their_own_launches():
    """Every placement of the block's LayerNorms gives the same step to rounding: o_proj and the
    channel mix in one launch, with the epilogue in the last one, 1 + 3 launches per block; in two,
    2 + 4 (the LoRA up maps run in the down map's launch either way); the LayerNorms and up maps as
    launches of their own, 2 + 7."""
    from bench.model_step import count_launches

    model = tiny_model().to(DEVICE)
    hist = {0: walk(21, 1), 1: walk(30, 2)}
    news = [walk(6, 3), walk(9, 4)]
    states, launches = {}, {}
    for name in PLACEMENTS:
        settings = placed(name)
        pool = pool_with_history(model, 3, hist, settings)
        values, counts = padded(news)
        PoolRunner(model, settings).step_slots(pool, rows(0, 1), values, counts)
        states[name] = pool
        launches[name] = count_launches(model, DEVICE, settings)["triton_launches"]
    for name, t in states["ln-launches"].tensors().items():
        assert rel_err(getattr(states["ln-in-linear"], name), t) <= 1e-5, name
        if DEVICE == "cpu" and name != "next_patch":  # block_out sums as the two linears it
            # replaces: the same bits (the head, run in the last block_out, sums in another order)
            assert torch.equal(getattr(states["out-in-one"], name), getattr(states["ln-in-linear"], name))
        assert rel_err(getattr(states["out-in-one"], name), t) <= 1e-5, name
    layers = model.cfg.n_layers
    assert launches == {"out-in-one": 1 + 3 * layers, "ln-in-linear": 2 + 4 * layers,
                        "ln-launches": 2 + 7 * layers}
