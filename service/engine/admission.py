"""The rules of what a request may do, as pure functions of the model's config and the series'
lengths: testable without a model, and checked before any state changes, so a refused request
changes nothing."""

from __future__ import annotations

import math
from collections.abc import Mapping

from model.config import RimerConfig
from service.engine.ops import EngineError, Op, full, unknown


def check_forecastable(cfg: RimerConfig, length: int, horizon: int, field: str) -> None:
    """A forecast needs one complete patch and (sinusoidal models) enough positions."""
    if length < cfg.patch_len:
        raise EngineError(422, f"a forecast needs at least {cfg.patch_len} points "
                               f"(one patch); the series has {length}", field)
    if cfg.pos_emb == "sinusoidal":
        rollout = math.ceil((horizon + length % cfg.patch_len) / cfg.patch_len) - 1
        needed = length // cfg.patch_len + rollout
        if needed > cfg.max_positions:
            raise EngineError(422, cfg.position_limit(
                needed, f"{length} points plus a horizon of {horizon}"), field)


def positions_end(cfg: RimerConfig) -> float:
    """The shortest length past the sinusoidal position table (infinity without one)."""
    return (cfg.max_positions + 1) * cfg.patch_len if cfg.pos_emb == "sinusoidal" else math.inf


def check_positions(cfg: RimerConfig, length: int, field: str) -> None:
    if length >= positions_end(cfg):
        raise EngineError(422, cfg.position_limit(
            length // cfg.patch_len, f"a series of {length} points"), field)


def require_streamable(cfg: RimerConfig, name: str) -> None:
    if not cfg.streamable:
        raise EngineError(409, f"model {name!r} uses window normalisation, which needs the whole "
                               "history at once; streaming series need a model with causal "
                               "normalisation. Use POST /forecast instead.")


def tail_only(cfg: RimerConfig, before: int, after: int) -> bool:
    """No patch completes between these lengths: the append is a copy into the tail."""
    return before // cfg.patch_len == after // cfg.patch_len


def plan(cfg: RimerConfig, max_series: int, requests: list[list[Op]], lengths: Mapping[str, int],
         held: int) -> dict[int, EngineError]:
    """Check every request against the lengths its predecessors in the batch leave (nothing
    changes here); the refused ones, by index. Sets each accepted op's `length`. `lengths`: of
    the series held now (one missing from it is not held); `held`: how many there are."""
    length_of = lengths.get
    sim: dict[str, int | None] = {}
    errors: dict[int, EngineError] = {}
    end = positions_end(cfg)
    for r, ops in enumerate(requests):
        local: dict[str, int | None] = {}
        created = 0
        try:
            for op in ops:
                sid = op.series_id
                cur = local[sid] if sid in local else sim[sid] if sid in sim else length_of(sid)
                if op.values is None:  # forecast only
                    if cur is None:
                        raise unknown(sid, op.field("id"))
                    check_forecastable(cfg, cur, op.horizon, op.field("horizon"))
                    op.length = cur
                    continue
                if cur is None:
                    if held + created >= max_series:
                        raise full(max_series, op.field("id"))
                    created, cur = created + 1, 0
                new = cur + len(op.values)
                if op.horizon is not None:
                    check_forecastable(cfg, new, op.horizon, op.field("horizon"))
                if new >= end:
                    check_positions(cfg, new, op.field("values"))
                local[sid] = op.length = new
        except EngineError as exc:
            errors[r] = exc.with_traceback(None)  # (no frame kept: no cycle through the batch)
            continue
        sim.update(local)
        held += created
    return errors
