"""Instance normalisation of series, in the two schemes a Rimer config can name.

window (the original's): one mean and one population std over the whole input window, eps 1e-5.
  It needs the whole window in advance, so it cannot be streamed.

causal (ours): per patch n, an exponentially weighted mean and variance of all points up to the
  end of patch n, updated once per complete patch:

      alpha_n = max(1 / (n + 1), 1 / norm_window)          # running average first, then EMA
      mean_n  = mean_{n-1} + alpha_n (m_n - mean_{n-1})
      var_n   = (1 - alpha_n) var_{n-1} + alpha_n v_n + alpha_n (1 - alpha_n) (m_n - mean_{n-1})^2

  where m_n and v_n are patch n's own mean and population variance (the exact variance of the
  weighted mixture, so no E[x^2] - E[x]^2 cancellation). Patch n is normalised with
  (mean_n, sqrt(var_n + eps)), and the model's output at patch n (the forecast of patch n + 1)
  is de-normalised with the same pair. Everything depends only on points up to the end of
  patch n, so a stream and the same series sent whole get the same numbers; statistics are
  float64 and updated patch by patch in the same order on both paths.
"""

from __future__ import annotations

import numpy as np
import torch


def window_stats(values: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Mean and population variance of the first `lengths[b]` points of each row -> [B, 2] f64."""
    x = values.double()
    mask = torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None]
    n = lengths.clamp(min=1).double()
    mean = (x * mask).sum(1) / n
    var = (((x - mean[:, None]) * mask) ** 2).sum(1) / n
    return torch.stack([mean, var], dim=1)


class _Torch:
    """The few array functions the statistics need, for torch tensors (any device)."""

    f64 = staticmethod(lambda x: x.double())
    where = staticmethod(torch.where)
    maximum = staticmethod(lambda x, lo: x.clamp(min=lo))
    cat = staticmethod(lambda xs: torch.cat(xs, dim=-1))
    empty = staticmethod(lambda shape, like: torch.empty(shape, dtype=torch.float64, device=like.device))


class _NumPy:
    """The same for NumPy arrays: on the CPU the statistics run in NumPy, whose operators cost
    about a microsecond where torch's cost five to ten; a patch's statistics are some fifty of
    them, so for one series they took longer in torch than the network itself. The same IEEE
    float64 operations in the same order: the same bits as torch (tests/unit/model/test_model.py)."""

    f64 = staticmethod(lambda x: x.astype(np.float64))
    where = staticmethod(np.where)
    maximum = staticmethod(np.maximum)
    cat = staticmethod(lambda xs: np.concatenate(xs, axis=-1))
    empty = staticmethod(lambda shape, like: np.empty(shape, dtype=np.float64))


def causal_update(stats: torch.Tensor, patches: torch.Tensor, n_before: torch.Tensor,
                  valid: torch.Tensor, norm_window: int) -> torch.Tensor:
    """Statistics after each patch of a chunk.

    stats [B, 2] f64 before the chunk; patches [B, T, P]; n_before [B] patches seen before the
    chunk; valid [B, T] which patches are real, or None: all. Returns [B, T, 2]: the statistics
    to normalise patch t with (for invalid patches, the last valid statistics, unchanged).
    Computed in NumPy for CPU tensors (see `_NumPy`), in torch on other devices.
    """
    if patches.device.type == "cpu":
        return torch.from_numpy(_causal(_NumPy, stats.numpy(), patches.detach().numpy(),
                                        n_before.numpy(), None if valid is None else valid.numpy(),
                                        norm_window))
    return _causal(_Torch, stats, patches, n_before, valid, norm_window)


def _causal(xp, stats, patches, n_before, valid, norm_window: int):
    x = xp.f64(patches)
    p = x.shape[-1]
    m = _tree_sum(x, xp) / p
    v = _tree_sum((x - m[..., None]) ** 2, xp) / p
    floor = 1.0 / norm_window
    out = xp.empty((*m.shape, 2), m)
    mean, var = stats[:, 0], stats[:, 1]
    for t in range(m.shape[1]):
        alpha = xp.maximum(1.0 / xp.f64(n_before + t + 1), floor)
        diff = m[:, t] - mean
        new_mean = mean + alpha * diff
        new_var = (1 - alpha) * var + alpha * v[:, t] + alpha * (1 - alpha) * diff * diff
        if valid is None:
            mean, var = new_mean, new_var
        else:
            mean = xp.where(valid[:, t], new_mean, mean)
            var = xp.where(valid[:, t], new_var, var)
        out[:, t, 0] = mean
        out[:, t, 1] = var
    return out


def _tree_sum(x, xp=_Torch):
    """Sum over the last axis by pairwise elementwise adds: the same order for every row whatever
    the batch (library reductions pick their order by shape, so a series' statistics could change
    in the last bit with its batch's size, and the triton backend promises bit-identical results)."""
    while x.shape[-1] > 1:
        half = x.shape[-1] // 2
        pair = x[..., :half] + x[..., half: 2 * half]
        x = xp.cat([pair, x[..., 2 * half:]]) if x.shape[-1] % 2 else pair
    return x[..., 0]


def scale(var: torch.Tensor, eps: float) -> torch.Tensor:
    return torch.sqrt(var + eps)
