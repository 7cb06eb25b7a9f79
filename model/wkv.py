"""The RWKV-7 recurrence, plainly: the reference every faster form is compared with."""

from __future__ import annotations

import torch


def wkv7_recurrent(r: torch.Tensor, w: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                   a: torch.Tensor, b: torch.Tensor, state: torch.Tensor,
                   valid: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the RWKV-7 state update over T steps.

    r, w, k, v, a, b: [B, T, H, N] (w is the log-decay, <= 0); state: [B, H, N(value), N(key)].
    valid: optional [B, T] bool; where False the state is left unchanged (that step's output
    is then meaningless). Per head:

        S_t = S_{t-1} diag(exp(w_t)) + (S_{t-1} a_t) b_t^T + v_t k_t^T,    o_t = S_t r_t

    Returns o [B, T, H, N] and the final state (a new tensor; the input is not modified).
    """
    decay = torch.exp(w)
    s = state
    outs = []
    for t in range(r.shape[1]):
        sa = torch.einsum("bhvk,bhk->bhv", s, a[:, t])
        s_new = (s * decay[:, t, :, None, :] + sa[..., None] * b[:, t, :, None, :]
                 + v[:, t, :, :, None] * k[:, t, :, None, :])
        if valid is not None:
            s_new = torch.where(valid[:, t, None, None, None], s_new, s)
        s = s_new
        outs.append(torch.einsum("bhvk,bhk->bhv", s, r[:, t]))
    return torch.stack(outs, dim=1), s


def wkv7_products(r: torch.Tensor, w: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                  a: torch.Tensor, b: torch.Tensor, state: torch.Tensor,
                  valid: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """`wkv7_recurrent`, rearranged so that fewer operators touch the whole [B, H, N, N] state
    (each such operator is a pass over memory): what the onnx backend's graphs run. Per step the
    reference makes five elementwise passes and two contractions; this makes two elementwise
    passes, one rank-2 product and two contractions of the old state:

        o_t = S_{t-1} (e^{w_t} * r_t) + (S_{t-1} a_t)(b_t . r_t) + v_t (k_t . r_t)
        S_t = S_{t-1} * e^{w_t} + [S_{t-1} a_t, v_t] [b_t; k_t]

    (o_t = S_t r_t expanded, so the new state is not read again). Same arguments and results as
    `wkv7_recurrent`, to float rounding; where `valid` is False the output is another
    meaningless value."""
    decay = torch.exp(w)
    s = state
    outs = []
    for t in range(r.shape[1]):
        sa = torch.einsum("bhvk,bhk->bhv", s, a[:, t])
        o = (torch.einsum("bhvk,bhk->bhv", s, decay[:, t] * r[:, t])
             + sa * (b[:, t] * r[:, t]).sum(-1, keepdim=True)
             + v[:, t] * (k[:, t] * r[:, t]).sum(-1, keepdim=True))
        s_new = s * decay[:, t, :, None, :] + torch.stack([sa, v[:, t]], dim=-1) @ torch.stack(
            [b[:, t], k[:, t]], dim=-2)
        if valid is not None:
            s_new = torch.where(valid[:, t, None, None, None], s_new, s)
        s = s_new
        outs.append(o)
    return torch.stack(outs, dim=1), s
