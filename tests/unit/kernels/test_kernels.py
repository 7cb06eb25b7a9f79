"""The Triton RWKV-7 pool kernel against the plain recurrence (model.wkv).

Runs on the GPU when there is one, else under Triton's interpreter on the CPU (kernels sets
TRITON_INTERPRET=1 itself when CUDA is unavailable), so these tests never skip.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import kernels
from kernels import wkv7_pool_step
from model.wkv import wkv7_recurrent

pytestmark = pytest.mark.gpu  # the Triton kernels (under TRITON_INTERPRET=1 on a CPU)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = 1e-5


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """The larger of the norm-wise and the worst-element relative error."""
    actual, expected = actual.double(), expected.double()
    if expected.numel() == 0:
        return 0.0
    diff = actual - expected
    return float(max(diff.norm() / expected.norm(), diff.abs().max() / expected.abs().max()))


def make_inputs(bsz: int, t: int, h: int, n: int, seed: int) -> dict[str, torch.Tensor]:
    """Inputs in the ranges the model produces: log-decay in [-0.6, 0], a = -kk, b = kk * alpha."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=g)

    kk = F.normalize(rnd(bsz, t, h, n), dim=-1)
    alpha = torch.rand(bsz, t, h, n, generator=g)
    x = {"r": rnd(bsz, t, h, n), "w": -0.6 * torch.sigmoid(rnd(bsz, t, h, n)), "k": rnd(bsz, t, h, n),
         "v": rnd(bsz, t, h, n), "a": -kk, "b": kk * alpha}
    return {name: z.to(DEVICE) for name, z in x.items()}


def make_pool(slots: int, layers: int, h: int, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (0.3 * torch.randn(slots, layers, h, n, n, generator=g)).to(DEVICE)


def reference(x: dict, state: torch.Tensor, lengths: torch.Tensor, dtype=torch.float64):
    t = x["r"].shape[1]
    valid = torch.arange(t, device=DEVICE)[None] < lengths[:, None].to(DEVICE)
    args = [x[name].to(dtype) for name in "rwkvab"]
    o, s = wkv7_recurrent(*args, state.to(dtype), valid)
    return o, s, valid


def step(x: dict, pool: torch.Tensor, slots, layer: int, lengths) -> torch.Tensor:
    slots = torch.as_tensor(slots, dtype=torch.int64, device=DEVICE)
    lengths = None if lengths is None else torch.as_tensor(lengths, device=DEVICE)
    return wkv7_pool_step(*(x[name] for name in "rwkvab"), pool, slots, layer, lengths)


@pytest.mark.parametrize("n", [16, 64])
def test_matches_reference_in_place(n, monkeypatch):
    bsz, t, h, layers, n_slots, layer = 3, 5, 2, 2, 6, 1
    x = make_inputs(bsz, t, h, n, seed=n)
    pool = make_pool(n_slots, layers, h, n, seed=n + 1)
    before = pool.clone()
    slots = torch.tensor([4, 1, 2])
    lengths = torch.tensor([5, 0, 3])

    o_ref, s_ref, valid = reference(x, before[slots, layer], lengths)
    # the output is allocated uninitialised: poison it, so that every element must be written
    with monkeypatch.context() as m:
        m.setattr(torch, "empty_like", lambda like: torch.full_like(like, float("nan")))
        o = step(x, pool, slots, layer, lengths)

    assert o.shape == (bsz, t, h, n) and o.dtype == torch.float32 and not o.isnan().any()
    assert rel_err(o[valid], o_ref[valid]) < TOL
    for i in (0, 2):  # the series that ran, full and partial
        assert rel_err(pool[slots[i], layer], s_ref[i]) < TOL
    assert torch.equal(pool[1, layer], before[1, layer]), "length 0 must leave the state untouched"
    assert not o[~valid].any(), "outputs past a series' length are zero"
    others = [s for s in range(n_slots) if s not in slots.tolist()]
    assert torch.equal(pool[others], before[others]), "slots not named must be untouched"
    assert torch.equal(pool[:, 1 - layer], before[:, 1 - layer]), "the other layer must be untouched"


def test_matches_float32_reference_and_decode_chain():
    """Decode (T = 1) applied step by step equals one call over all steps, and the fp32 reference."""
    bsz, t, h, n = 2, 4, 2, 32
    x = make_inputs(bsz, t, h, n, seed=7)
    pool = make_pool(3, 1, h, n, seed=8)
    slots = [2, 0]
    o_ref, s_ref, _ = reference(x, pool[slots, 0], torch.tensor([t, t]), dtype=torch.float32)

    whole = pool.clone()
    o_whole = step(x, whole, slots, 0, None)
    chained = pool.clone()
    o_chain = torch.cat([step({k: z[:, i:i + 1] for k, z in x.items()}, chained, slots, 0, [1, 1])
                         for i in range(t)], dim=1)

    assert rel_err(o_whole, o_ref) < TOL
    assert rel_err(whole[slots, 0], s_ref) < TOL
    assert torch.equal(o_chain, o_whole)
    assert torch.equal(chained, whole)


def test_long_sequence_stays_accurate():
    bsz, t, h, n = 2, 48, 1, 16
    x = make_inputs(bsz, t, h, n, seed=11)
    pool = make_pool(2, 1, h, n, seed=12)
    lengths = torch.tensor([48, 31])
    o_ref, s_ref, valid = reference(x, pool[[1, 0], 0], lengths)
    o = step(x, pool, [1, 0], 0, lengths)
    assert rel_err(o[valid], o_ref[valid]) < TOL
    assert rel_err(pool[[1, 0], 0], s_ref) < TOL


def test_bit_identical_alone_or_batched_in_any_slot():
    """A series' outputs and new state do not depend on its batch, its slot or the padding."""
    h, n, layers = 2, 16, 2
    mine = make_inputs(1, 5, h, n, seed=21)
    state = make_pool(1, 1, h, n, seed=22)[0, 0]

    alone_pool = torch.zeros(1, layers, h, n, n, device=DEVICE)
    alone_pool[0, 1] = state
    o_alone = step(mine, alone_pool, [0], 1, [5])

    # In a batch of three padded to T = 7, as the middle series, in slot 5 of a bigger pool.
    others = make_inputs(3, 7, h, n, seed=23)
    batch = {name: z.clone() for name, z in others.items()}
    for name in batch:
        batch[name][1, :5] = mine[name][0]
    pool = make_pool(6, layers, h, n, seed=24)
    pool[5, 1] = state
    o_batch = step(batch, pool, [3, 5, 0], 1, [7, 5, 2])

    assert torch.equal(o_batch[1, :5], o_alone[0])
    assert torch.equal(pool[5, 1], alone_pool[0, 1])


@pytest.mark.parametrize("block_v,num_warps", [(32, 2), (64, 2), (16, 1)])
def test_other_launch_configurations_match_reference(block_v, num_warps):
    """The configurations the benchmark sweeps are correct too (only the pinned one is served)."""
    bsz, t, h, n = 3, 2, 2, 64
    x = make_inputs(bsz, t, h, n, seed=31)
    pool = make_pool(4, 2, h, n, seed=32)
    slots = torch.tensor([2, 0, 3], device=DEVICE)
    lengths = torch.tensor([2, 0, 1], device=DEVICE)
    o_ref, s_ref, valid = reference(x, pool[slots, 1], lengths)
    mine = pool.clone()
    o = wkv7_pool_step(*(x[name] for name in "rwkvab"), mine, slots, 1, lengths, block_v=block_v,
                       num_warps=num_warps)
    assert rel_err(o[valid], o_ref[valid]) < TOL
    assert rel_err(mine[slots[[0, 2]], 1], s_ref[[0, 2]]) < TOL
    assert not o[1].any() and torch.equal(mine[0], pool[0]), "a length-0 series is left alone"
    assert torch.equal(mine[1], pool[1]) and torch.equal(mine[:, 0], pool[:, 0])


def test_lengths_clamped_to_steps():
    x = make_inputs(1, 3, 1, 16, seed=31)
    a = make_pool(1, 1, 1, 16, seed=32)
    b = a.clone()
    oa = step(x, a, [0], 0, [100])
    ob = step(x, b, [0], 0, None)
    assert torch.equal(oa, ob) and torch.equal(a, b)


def test_rejects_bad_arguments():
    x = make_inputs(2, 1, 1, 16, seed=41)
    pool = make_pool(2, 1, 1, 16, seed=42)
    with pytest.raises(ValueError):
        step({**x, "k": x["k"][:, :, :, :8]}, pool, [0, 1], 0, None)
    with pytest.raises(TypeError):
        step({**x, "v": x["v"].double()}, pool, [0, 1], 0, None)
    with pytest.raises(ValueError):
        step(x, pool[..., :8], [0, 1], 0, None)
    with pytest.raises(IndexError):
        step(x, pool, [0, 1], 1, None)
    with pytest.raises(ValueError):
        step(x, pool, [0], 0, None)


def test_interpreter_only_without_cuda():
    import os
    if not torch.cuda.is_available():
        assert os.environ.get("TRITON_INTERPRET") == "1"
    assert kernels.BLOCK_V >= 1 and kernels.NUM_WARPS >= 1


def test_programmatic_dependent_launch_only_where_supported():
    """PDL (inline PTX) is never used under the interpreter or before sm_90; on sm_90+ it is on
    unless the settings turn it off (RIMER_PDL=0), and the launch keyword goes with the kernels' flag."""
    import os

    from kernels import pdl
    from kernels.settings import KernelSettings
    supported = (torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET", "0") != "1"
                 and torch.cuda.get_device_capability() >= (9, 0))
    assert pdl.supported() == supported
    assert KernelSettings().pdl_on == supported and not KernelSettings(pdl=False).pdl_on
    assert KernelSettings.from_env({"RIMER_PDL": "0"}).pdl is False
    for settings in (KernelSettings(), KernelSettings(pdl=False)):
        on = settings.pdl_on
        assert settings.launch == ({"PDL": True, "launch_pdl": True} if on else {"PDL": False})


@pytest.mark.slow
def test_linear_tiles_benchmark_checks_row_bits(tmp_path):
    """bench.linear_tiles runs here (interpreter smoke) and reports the bit checks a tile change
    would need; on the CPU every tile gives every row the pinned one-row call's bits."""
    import json

    from bench import linear_tiles
    out = tmp_path / "lt.json"
    result = linear_tiles.main(["--out", str(out)])
    assert json.loads(out.read_text())["cases"] == result["cases"]
    assert {c["K"] for c in result["cases"]} == {64, 128}
    assert all(c["rows_equal_across_tiles"] and c["row0_equals_one_row_call"] for c in result["cases"])
