"""Architecture hyper-parameters of a Rimer model, validated and (de)serialisable as JSON."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

POS_EMBEDDINGS = ("sinusoidal", "none")
# Keys added after configs were first written: a config without them means the defaults (a model
# without them), so older checkpoints keep loading.
OPTIONAL_KEYS = {"quantiles": (), "forecast_flag": False, "lag_window": 0, "lag_match": 0,
                 "lag_drift": False, "lag_scale": "norm", "lag_best": 0.0}
# What the lag match's squared differences are measured against (model/lag.py lag_copy): the
# patch's normalising variance, or the smaller of it and the matched points' own variance (a
# trend inflates the normalising variance and left the match blind to the season on it).
LAG_SCALES = ("norm", "local")
NORMALISATIONS = ("window", "causal")


@dataclass(frozen=True)
class RimerConfig:
    """Everything needed to build the network; the original Rimer is the default.

    pos_emb: "sinusoidal" (the original: a fixed sin/cos table of `max_positions` patches) or
      "none" (the recurrence already knows order, and a stream never runs out of positions).
    norm: "window" (the original: mean and std over the whole input) or "causal" (running
      statistics of past points only, see model/normalisation.py).
    """

    patch_len: int = 32
    d_model: int = 512
    n_layers: int = 1
    head_size: int = 64
    w_rank: int = 64  # decay LoRA
    a_rank: int = 64  # in-context learning-rate LoRA
    v_rank: int = 32  # value-residual LoRA (layers after the first)
    g_rank: int = 128  # output gate LoRA
    pos_emb: str = "sinusoidal"
    max_positions: int = 5000
    norm: str = "window"
    norm_window: int = 64  # causal norm: statistics average over about this many recent patches
    norm_eps: float = 1e-5
    # Levels (ascending, in (0, 1)) of the quantiles a second head predicts beside the mean; ().
    quantiles: tuple[float, ...] = ()
    # The network is told which input patches are its own forecasts (a learned vector added to
    # their embedding), so a rollout can know it is extrapolating.
    forecast_flag: bool = False
    # Points of history (0: none) the lag head reads: the next patch mixes the network's output
    # with a learned weighted sum of the points 1 patch to lag_window points back (a seasonal copy
    # the network can point at, period-aligned at any period, which the recurrence alone recalls
    # poorly). The state keeps those points.
    lag_window: int = 0
    # Points each lag's match is measured over (the last ones, against the same points one lag
    # earlier); 0: one patch. Longer tells periods apart that one patch cannot (168 from 169).
    lag_match: int = 0
    # The lag head also learns, per patch, how much of the level change since each lag's match
    # its copy carries on (model/lag.py lag_copy's drift): seasonal copies that follow a trend.
    lag_drift: bool = False
    # LAG_SCALES: "local" measures the match against min(normalising variance, the last
    # lag_match points' variance).
    lag_scale: str = "norm"
    # 0: off. k > 0: the match is also measured against at most k times the best lag's mean
    # squared difference, so a series that repeats itself closely is matched sharply whatever
    # its normalising variance (model/lag.py lag_copy).
    lag_best: float = 0.0

    def __post_init__(self) -> None:
        for name in ("patch_len", "d_model", "n_layers", "head_size", "w_rank", "a_rank",
                     "v_rank", "g_rank", "max_positions", "norm_window"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"config.{name} must be a positive integer, got {value!r}")
        eps = self.norm_eps
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < 1:
            raise ValueError(f"config.norm_eps must be a number between 0 and 1, got {eps!r}")
        if self.d_model % self.head_size:
            raise ValueError(f"config.d_model ({self.d_model}) must be a multiple of "
                             f"config.head_size ({self.head_size})")
        if self.pos_emb not in POS_EMBEDDINGS:
            raise ValueError(f"config.pos_emb must be one of {POS_EMBEDDINGS}, got {self.pos_emb!r}")
        if self.norm not in NORMALISATIONS:
            raise ValueError(f"config.norm must be one of {NORMALISATIONS}, got {self.norm!r}")
        if isinstance(self.quantiles, list):  # (as JSON gives it)
            object.__setattr__(self, "quantiles", tuple(self.quantiles))
        q = self.quantiles
        if not isinstance(q, tuple) or any(isinstance(v, bool) or not isinstance(v, (int, float))
                                           or not 0 < v < 1 for v in q) or list(q) != sorted(set(q)):
            raise ValueError(f"config.quantiles must be increasing levels in (0, 1), got {q!r}")
        if isinstance(self.lag_window, bool) or not isinstance(self.lag_window, int) or (
                self.lag_window and self.lag_window < 2 * self.patch_len) or self.lag_window < 0:
            raise ValueError(f"config.lag_window must be 0 or at least two patches, got {self.lag_window!r}")
        if not isinstance(self.lag_drift, bool) or (self.lag_drift and not self.lag_window):
            raise ValueError(f"config.lag_drift must be true or false, and true only with a lag_window, "
                             f"got {self.lag_drift!r}")
        if isinstance(self.lag_match, bool) or not isinstance(self.lag_match, int) or self.lag_match < 0 \
                or self.lag_match % self.patch_len:
            raise ValueError(f"config.lag_match must be 0 or a multiple of patch_len, got {self.lag_match!r}")
        if self.lag_scale not in LAG_SCALES:
            raise ValueError(f"config.lag_scale must be one of {LAG_SCALES}, got {self.lag_scale!r}")
        if isinstance(self.lag_best, bool) or not isinstance(self.lag_best, (int, float)) \
                or not 0 <= self.lag_best < float("inf"):
            raise ValueError(f"config.lag_best must be a number, 0 or more, got {self.lag_best!r}")
        if not isinstance(self.forecast_flag, bool):
            raise ValueError(f"config.forecast_flag must be true or false, got {self.forecast_flag!r}")
        if self.pos_emb == "sinusoidal" and self.d_model % 2:
            raise ValueError("config.d_model must be even for the sinusoidal position embedding")

    @property
    def lag_match_options(self) -> dict:
        """lag_scale and lag_best as model/lag.py lag_copy's keyword arguments (its callers:
        Rimer._lag_mix and the triton pool)."""
        return {"local": self.lag_scale == "local", "best": self.lag_best}

    @property
    def n_heads(self) -> int:
        return self.d_model // self.head_size

    @property
    def history_len(self) -> int:
        """Points of history a lag model's state keeps: every lag's copy and match reachable."""
        if not self.lag_window:
            return 0
        return self.lag_window + (self.lag_match or self.patch_len) - self.patch_len

    @property
    def streamable(self) -> bool:
        """A stream can only be normalised by what it has seen so far."""
        return self.norm == "causal"

    def position_limit(self, needed: int, what: str) -> str:
        """The one message for input past a sinusoidal model's position table: `what` ("the
        input", "2000 points plus a horizon of 96") needs `needed` patches."""
        return (f"this model's sinusoidal position embedding covers {self.max_positions} patches "
                f"of {self.patch_len} points ({self.max_positions * self.patch_len} points, history "
                f"and forecast together); {what} would need {needed}")

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["quantiles"] = list(self.quantiles)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> RimerConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(data, dict):
            raise ValueError("a config is a JSON object")
        unknown = sorted(set(data) - known)
        missing = sorted(known - set(data) - set(OPTIONAL_KEYS))
        if unknown:
            raise ValueError(f"unknown config keys: {unknown}")
        if missing:  # (a default would silently change the architecture the weights are for)
            raise ValueError(f"missing config keys: {missing}")
        return cls(**{**OPTIONAL_KEYS, **data})
