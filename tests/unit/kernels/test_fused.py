"""The fused block kernels (kernels/fused.py) against their PyTorch references, tiny shapes.

On the GPU when there is one, else under Triton's interpreter (TRITON_INTERPRET=1, set by kernels)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from kernels import fused
from kernels.settings import KernelSettings
from tests.conftest import rel_err

pytestmark = pytest.mark.gpu  # the Triton kernels (under TRITON_INTERPRET=1 on a CPU)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def rnd(g, *shape, scale=1.0):
    return (scale * torch.randn(*shape, generator=g)).to(DEVICE)


@pytest.mark.parametrize("n_mix", [0, 6])
def test_ln_mix_matches_reference(n_mix):
    g = torch.Generator().manual_seed(n_mix)
    bsz, t, d = 3, 4, 24  # d not a power of two: masked lanes
    h = rnd(g, bsz * t, d) + 0.5
    shift = rnd(g, bsz, 2, d)[:, 1]  # a strided view, as state.shift[:, layer]
    w, b = 1 + rnd(g, d, scale=0.2), rnd(g, d, scale=0.2)
    mix = rnd(g, n_mix, d) if n_mix else None
    got = fused.ln_mix(h, shift if n_mix else None, t, w, b, 1e-5, mix)
    want = fused.ln_mix_reference(h.double(), shift.double(), t, w.double(), b.double(), 1e-5,
                                  None if mix is None else mix.double())
    assert got.shape == (1 + n_mix, bsz * t, d) and rel_err(got, want) <= 1e-5
    # rows do not depend on the batch: series 1 alone equals series 1 inside the batch
    alone = fused.ln_mix(h[t:2 * t], shift[1:2] if n_mix else None, t, w, b, 1e-5, mix)
    assert torch.equal(alone, got[:, t:2 * t])


def test_ln_mix_keep_writes_the_shift_into_the_pool_at_flagged_slots():
    g = torch.Generator().manual_seed(7)
    bsz, d, layers = 5, 24, 3
    h = rnd(g, bsz, d) + 0.5
    shift = rnd(g, bsz, d)
    w, b, mix = 1 + rnd(g, d, scale=0.2), rnd(g, d, scale=0.2), rnd(g, 6, d)
    pool = rnd(g, 7, layers, d)  # [slots, layers, D]; one layer's view is strided
    slots = torch.tensor([4, 0, 6, 6, 2], device=DEVICE)
    flags = torch.tensor([1, 1, 0, 0, 1], device=DEVICE)  # rows 2, 3: padding on one slot
    got_pool, want_pool = pool.clone(), pool.clone()
    got = fused.ln_mix(h, shift, 1, w, b, 1e-5, mix, keep=(got_pool[:, 1], slots, flags))
    want = fused.ln_mix_reference(h, shift, 1, w, b, 1e-5, mix, keep=(want_pool[:, 1], slots, flags))
    assert rel_err(got, want) <= 1e-5 and rel_err(got_pool, want_pool) <= 1e-5
    assert torch.equal(got_pool[slots[flags > 0], 1], got[0][flags > 0])  # plane 0, exactly
    for slot in (1, 3, 5, 6):
        assert torch.equal(got_pool[slot], pool[slot])
    assert torch.equal(got_pool[:, [0, 2]], pool[:, [0, 2]])
    assert torch.equal(got, fused.ln_mix(h, shift, 1, w, b, 1e-5, mix))  # the output is unchanged


@pytest.mark.parametrize("block_m", [KernelSettings.from_env().block_m, 16])
def test_grouped_linear_matches_reference_and_is_row_invariant(block_m):
    g = torch.Generator().manual_seed(1)
    m, d = 70, 32
    x = rnd(g, 3, m, d)
    groups = [(rnd(g, 40, d, scale=0.3), rnd(g, 40), (2, 0), None),
              (rnd(g, 8, d, scale=0.3), None, (0, 0), "tanh"),
              (rnd(g, 20, 16, scale=0.3), rnd(g, 20), (1, 16), "sigmoid")]  # a narrower input slice
    pk = fused.pack_groups(groups, d, DEVICE)
    assert pk.starts == [0, 64, 128]
    res = rnd(g, m, pk.weight.shape[0])
    got = fused.grouped_linear(x, pk, residual=res, block_m=block_m)
    assert rel_err(got, fused.grouped_linear_reference(x.double(), _double(pk), res.double())) <= 1e-5
    for (w, b, (plane, col), act), start in zip(groups, pk.starts):
        y = torch.nn.functional.linear(x[plane, :, col: col + w.shape[1]].double(), w.double(),
                                       None if b is None else b.double())
        y = {None: y, "tanh": torch.tanh(y), "sigmoid": torch.sigmoid(y)}[act]
        assert rel_err(got[:, start: start + w.shape[0]], y + res[:, start: start + w.shape[0]]) <= 1e-5
    part = fused.grouped_linear(x[:, 63:66], pk, residual=res[63:66], block_m=block_m)  # across tiles
    assert torch.equal(part, got[63:66])
    one = fused.pack_groups([(rnd(g, 20, d), rnd(g, 20), (0, 0), None)], d, DEVICE)
    assert fused.grouped_linear(x[0], one, n=20).shape == (m, 20)


def test_launch_settings_come_from_the_environment(monkeypatch):
    """RIMER_LINEAR_BLOCK_M, RIMER_WKV_WARPS, RIMER_FUSE_LN and RIMER_FUSE_OUT give the step's row
    tile, the recurrence's warps and the LayerNorms' and last linears' placement, read when the
    settings are made (a runner keeps its own); other values are refused."""
    for name in ("RIMER_LINEAR_BLOCK_M", "RIMER_WKV_WARPS", "RIMER_FUSE_LN", "RIMER_FUSE_OUT", "RIMER_PDL"):
        monkeypatch.delenv(name, raising=False)

    def fields(s: KernelSettings):
        return s.block_m, s.wkv_warps, s.fuse_ln, s.fuse_out

    assert fields(KernelSettings.from_env()) == (64, 4, True, True) == fields(KernelSettings())
    for name, value in (("RIMER_LINEAR_BLOCK_M", "16"), ("RIMER_WKV_WARPS", "8"), ("RIMER_FUSE_LN", "0"),
                        ("RIMER_FUSE_OUT", "0")):
        monkeypatch.setenv(name, value)
    assert fields(KernelSettings.from_env()) == (16, 8, False, False)
    assert not KernelSettings.from_env().out_in_one and KernelSettings.from_env().out_warps == 4
    assert fields(KernelSettings.from_env({"RIMER_FUSE_OUT": "0"})) == (64, 4, True, False)
    with pytest.raises(ValueError, match="RIMER_LINEAR_BLOCK_M must be 16, 32 or 64"):
        KernelSettings.from_env({"RIMER_LINEAR_BLOCK_M": "48"})
    with pytest.raises(ValueError, match="RIMER_WKV_WARPS must be 4 or 8"):
        KernelSettings.from_env({"RIMER_WKV_WARPS": "2"})
    with pytest.raises(dataclasses.FrozenInstanceError):
        KernelSettings().block_m = 16


@pytest.mark.slow
def test_a_runner_launches_with_its_own_settings(monkeypatch):
    """Settings passed to the runner decide the launches, whatever the environment says later."""
    from bench.model_step import count_launches
    from tests.helpers import tiny_model

    model = tiny_model().to(DEVICE)
    layers = model.cfg.n_layers
    monkeypatch.setenv("RIMER_FUSE_LN", "0")  # the environment's default: seven launches per block
    assert count_launches(model, DEVICE)["triton_launches"] == 2 + 7 * layers
    chosen = KernelSettings(fuse_ln=True, fuse_out=True)
    assert count_launches(model, DEVICE, chosen)["triton_launches"] == 1 + 3 * layers


@pytest.mark.parametrize("t", [1, 4])
def test_grouped_linear_with_layer_norm_on_load_matches_ln_mix_then_the_map(t):
    """LayerNormIn: the down map reading h and normalising and token-shift mixing on load equals
    ln_mix's planes fed to the map; the LayerNorm output and the kept shift are ln_mix's too."""
    g = torch.Generator().manual_seed(t)
    bsz, d, layers = 3, 24, 2  # d not a multiple of BLOCK_K: masked lanes
    h = rnd(g, bsz * t, d) + 0.5
    shift = rnd(g, bsz, layers, d)[:, 1]  # a strided view, as state.shift[:, layer]
    w, b = 1 + rnd(g, d, scale=0.2), rnd(g, d, scale=0.2)
    mix7 = torch.cat([torch.zeros(1, d, device=DEVICE), rnd(g, 6, d)])
    groups = [(rnd(g, 40, d, scale=0.3), None, (1, 0), None), (rnd(g, 8, d, scale=0.3), None, (3, 0), "tanh"),
              (rnd(g, 20, d, scale=0.3), rnd(g, 20), (6, 0), "sigmoid")]
    pk = fused.pack_groups(groups, d, DEVICE)
    keep = None
    if t == 1:
        pool = rnd(g, 5, layers, d)
        keep = (pool.clone()[:, 0], torch.tensor([4, 0, 2], device=DEVICE),
                torch.tensor([1, 0, 1], device=DEVICE))
        keep_ref = (keep[0].clone().double(), keep[1], keep[2])
    out = torch.empty(bsz * t, d, device=DEVICE)
    ln = fused.LayerNormIn(w, b, 1e-5, shift, t, mix7, out, keep)
    got = fused.grouped_linear(h, pk, ln=ln)
    ref_out = torch.empty(bsz * t, d, dtype=torch.float64, device=DEVICE)
    want = fused.grouped_linear_reference(
        h.double(), _double(pk), ln=fused.LayerNormIn(w.double(), b.double(), 1e-5, shift.double(), t,
                                                      mix7.double(), ref_out, keep_ref if keep else None))
    assert rel_err(got, want) <= 1e-5 and rel_err(out, ref_out) <= 1e-5
    if keep is not None:
        assert rel_err(keep[0], keep_ref[0]) <= 1e-5
        assert torch.equal(keep[0][[4, 2]], out[[0, 2]])
        assert torch.equal(keep[0][[0, 1, 3]], pool[[0, 1, 3], 0])
    # a series alone gives the same bits as inside the batch
    alone = fused.grouped_linear(h[t: 2 * t], pk, ln=fused.LayerNormIn(w, b, 1e-5, shift[1:2], t, mix7))
    assert torch.equal(alone, got[t: 2 * t])
    # no mix (LayerNorm 2 before the channel mix), with a residual
    one = fused.pack_groups([(rnd(g, 20, d), rnd(g, 20), (0, 0), None)], d, DEVICE)
    res = rnd(g, bsz * t, 20)
    got = fused.grouped_linear(h, one, residual=res, n=20, ln=fused.LayerNormIn(w, b, 1e-5))
    want = fused.grouped_linear_reference(h.double(), _double(one), res.double(), n=20,
                                          ln=fused.LayerNormIn(w.double(), b.double(), 1e-5))
    assert rel_err(got, want) <= 1e-5


@pytest.mark.parametrize("with_ln", [False, True])
def test_down_up_applies_the_up_maps_in_the_same_launch(with_ln):
    """down_up: a LoRA's down block also runs its up map from registers; equals the two maps launched
    one after the other, and a series' rows keep their bits alone or in a batch."""
    g = torch.Generator().manual_seed(11)
    m, d = 5, 32
    h = rnd(g, m, d) + 0.5
    x = rnd(g, 7, m, d)
    groups = [(rnd(g, 40, d, scale=0.3), None, (1, 0), None),  # like r: no up map
              (rnd(g, 32, d, scale=0.3), None, (2, 0), "tanh"),  # LoRA downs, padded to 64 columns
              (rnd(g, 64, d, scale=0.3), None, (6, 0), "sigmoid")]
    down = fused.pack_groups([(F.pad(w, (0, 0, 0, 64 - w.shape[0])) if i else w, b, pc, act)
                              for i, (w, b, pc, act) in enumerate(groups)], d, DEVICE)
    ups = fused.pack_groups([(rnd(g, d, 64, scale=0.3), rnd(g, d), (0, down.starts[j]), None)
                             for j in (1, 2)], 64, DEVICE)
    upm = fused.UpMaps(down, ups)
    assert upm.rows.tolist() == [-1, ups.starts[0], ups.starts[1]]
    w, b = 1 + rnd(g, d, scale=0.2), rnd(g, d, scale=0.2)
    mix7 = torch.cat([torch.zeros(1, d, device=DEVICE), rnd(g, 6, d)])
    shift = rnd(g, m, d)

    def ln(rows=slice(None)):
        return fused.LayerNormIn(w, b, 1e-5, shift[rows], 1, mix7) if with_ln else None

    inp = h if with_ln else x
    a, u = fused.down_up(inp, down, upm, ln=ln())
    assert torch.equal(a, fused.grouped_linear(inp, down, ln=ln()))
    ln64 = (fused.LayerNormIn(w.double(), b.double(), 1e-5, shift.double(), 1, mix7.double()) if with_ln
            else None)
    a64 = fused.grouped_linear_reference(inp.double(), _double(down), ln=ln64)
    assert rel_err(u, fused.grouped_linear_reference(a64, _double(ups))) <= 1e-5
    assert rel_err(u, fused.grouped_linear(a, ups)) <= 1e-5
    part = inp[2:4] if with_ln else x[:, 2:4]
    a2, u2 = fused.down_up(part, down, upm, ln=ln(slice(2, 4)))
    assert torch.equal(u2, u[2:4]) and torch.equal(a2, a[2:4])


def _double(pk):
    return fused.Groups(pk.weight.double(), None if pk.bias is None else pk.bias.double(), pk.plane,
                        pk.col, pk.act, pk.starts)


def fused_inputs(bsz, t, h, n, seed):
    g = torch.Generator().manual_seed(seed)
    d = h * n
    a = rnd(g, bsz * t, 3 * d + 5)  # r, k, v at 0, d, 2d (+ unused columns)
    u = rnd(g, bsz * t, 4 * d)  # w, a, g, vl
    offs = {"r": 0, "k": d, "v": 2 * d, "w": 0, "a": d, "g": 2 * d, "vl": 3 * d}
    v_first = rnd(g, bsz * t, d)
    prm = fused.HeadParams(0.85 + rnd(g, d, scale=0.1), 1 + rnd(g, d, scale=0.2), rnd(g, h, n, scale=0.3),
                           1 + rnd(g, d, scale=0.2), rnd(g, d, scale=0.2), n * 1e-5)
    return a, offs, u, v_first, prm


def _prm64(p):
    return fused.HeadParams(*(x.double() for x in (p.k_k, p.k_a, p.r_k, p.g_weight, p.g_bias)), p.eps)


@pytest.mark.parametrize("with_vf", [False, True])
def test_wkv7_fused_matches_reference_in_place(with_vf):
    bsz, t, h, n, layer = 3, 4, 2, 16, 1
    a, offs, u, vf, prm = fused_inputs(bsz, t, h, n, seed=3 + with_vf)
    vf = vf if with_vf else None
    g = torch.Generator().manual_seed(9)
    pool = rnd(g, 6, 2, h, n, n, scale=0.3)
    before = pool.clone()
    slots = torch.tensor([4, 1, 2], device=DEVICE)
    lengths = torch.tensor([4, 0, 2], device=DEVICE)
    vf64 = None if vf is None else vf.double()
    o_ref, s_ref = fused.wkv7_fused_reference(a.double(), offs, u.double(), vf64, _prm64(prm),
                                              before.double(),
                                              slots, layer, lengths, t)
    o = fused.wkv7_fused_step(a, offs, u, vf, prm, pool, slots, layer, lengths, t)
    valid = (torch.arange(t, device=DEVICE)[None] < lengths[:, None]).reshape(-1)
    assert rel_err(o[valid], o_ref[valid]) <= 1e-5
    assert not o[~valid].any(), "outputs past a series' length are zero"
    for i in (0, 2):
        assert rel_err(pool[slots[i], layer], s_ref[i]) <= 1e-5
    assert torch.equal(pool[1], before[1]), "length 0 leaves the state alone"
    untouched = [0, 3, 5]
    assert torch.equal(pool[untouched], before[untouched]) and torch.equal(pool[:, 0], before[:, 0])


def test_wkv7_fused_bit_identical_alone_or_batched_and_chained():
    bsz, t, h, n = 3, 3, 2, 16
    a, offs, u, vf, prm = fused_inputs(bsz, t, h, n, seed=5)
    g = torch.Generator().manual_seed(6)
    pool = rnd(g, 5, 1, h, n, n, scale=0.3)
    alone_pool = pool[3:4].clone()
    batch = fused.wkv7_fused_step(a, offs, u, vf, prm, pool, torch.tensor([0, 3, 4], device=DEVICE), 0,
                                  None, t)
    rows = slice(t, 2 * t)  # series 1, alone, in slot 0 of its own pool
    alone = fused.wkv7_fused_step(a[rows], offs, u[rows], vf[rows], prm, alone_pool,
                                  torch.tensor([0], device=DEVICE), 0, None, t)
    assert torch.equal(alone, batch[rows]) and torch.equal(alone_pool[0], pool[3])
    # T steps in one call equal T calls of one step
    chained_pool = rnd(torch.Generator().manual_seed(6), 5, 1, h, n, n, scale=0.3)  # the start again
    outs = [fused.wkv7_fused_step(a[t + i: t + i + 1], offs, u[t + i: t + i + 1], vf[t + i: t + i + 1], prm,
                                  chained_pool, torch.tensor([3], device=DEVICE), 0, None, 1)
            for i in range(t)]
    assert torch.equal(torch.cat(outs), batch[rows]) and torch.equal(chained_pool[3], pool[3])
