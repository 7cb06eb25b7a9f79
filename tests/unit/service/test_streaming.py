"""Streaming equals whole: any split of a series into appends gives POST /forecast's answer."""

from __future__ import annotations

import itertools
import re

import pytest
import torch
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.app import create_app
from service.engine import Engine
from service.settings import Settings
from tests.conftest import DEFAULT_WEIGHTS, rel_err
from tests.helpers import series

_ids = itertools.count()


@pytest.fixture(scope="module")
def client():
    engine = Engine.load(str(DEFAULT_WEIGHTS), "cpu", max_series=100_000)
    with TestClient(create_app(Settings(), engine)) as c:
        yield c




def stream_then_compare(client, values: list[float], cuts: list[int], horizon: int) -> None:
    sid = f"s{next(_ids)}"
    bounds = [0, *sorted(c for c in cuts if 0 < c < len(values)), len(values)]
    for lo, hi in zip(bounds, bounds[1:]):
        if hi > lo:
            r = client.post(f"/series/{sid}/append", json={"values": values[lo:hi]})
            assert r.status_code == 200, r.text
            assert r.json()["length"] == hi
    streamed = client.get(f"/series/{sid}/forecast", params={"horizon": horizon})
    whole = client.post("/forecast", json={"series": [{"id": sid, "values": values}],
                                           "horizon": horizon})
    assert streamed.status_code == 200 and whole.status_code == 200, (streamed.text, whole.text)
    got = torch.tensor(streamed.json()["mean"])
    want = torch.tensor(whole.json()["forecasts"][0]["mean"])
    assert got.shape == (horizon,)
    assert rel_err(got, want) <= 1e-4
    client.delete(f"/series/{sid}")


@pytest.mark.parametrize("cuts", [
    [],                                   # one append
    list(range(1, 200)),                  # single points
    [31, 32, 33, 63, 65, 97],             # around patch boundaries
    [7, 50, 51, 130, 190],                # straddling several patches
])
def test_fixed_splits(client, cuts):
    stream_then_compare(client, series(200, 1), cuts, horizon=40)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(length=st.integers(32, 400), cuts=st.lists(st.integers(1, 399), max_size=12),
       horizon=st.integers(1, 100), seed=st.integers(0, 2**16))
def test_any_split(client, length, cuts, horizon, seed):
    stream_then_compare(client, series(length, seed), cuts, horizon)


def test_append_with_forecast_matches_get_forecast(client):
    values = series(150, 3)
    r = client.post("/series/x1/append", json={"values": values, "horizon": 24})
    assert r.status_code == 200
    g = client.get("/series/x1/forecast", params={"horizon": 24})
    assert r.json()["forecast"]["mean"] == g.json()["mean"]


@pytest.mark.parametrize("window_ms", [0.0, 2.0], ids=["unbatched", "batched"])
def test_a_short_position_table_is_a_422_on_either_path_and_does_not_stop_the_start(window_ms):
    """A streaming model with a sinusoidal position table of a few patches: the engine's start-up
    batch check stays inside the table, and an append past it is a 422 naming `values` whether it
    goes through the batcher or the single-append path (it was a PositionLimitError, a 500)."""
    from service.engine import EngineError, appends_are_batch_invariant
    from tests.helpers import tiny_model

    model = tiny_model(pos_emb="sinusoidal", max_positions=4, norm="causal")
    assert appends_are_batch_invariant(model) in (True, False)  # does not raise
    p = model.cfg.patch_len
    engine = Engine(model, {"name": "short-table"}, max_series=4)
    assert engine.append("direct", series(4 * p, 1), None)[0] == 4 * p  # the whole table
    with pytest.raises(EngineError) as refused:
        engine.append("direct", series(p, 2), None)
    assert (refused.value.status, refused.value.field) == (422, "values")
    # one wording for the limit, the engine's and the model's (model.config.position_limit)
    from model.rimer import PositionLimitError
    limit = f"covers 4 patches of {p} points ({4 * p} points, history and forecast together)"
    assert limit in str(refused.value), str(refused.value)
    with pytest.raises(PositionLimitError, match=re.escape(limit)):
        model.append(model.init_state([torch.zeros(5 * p)]), [torch.zeros(5 * p)])
    with TestClient(create_app(Settings(batch_window_ms=window_ms), engine)) as c:
        assert c.post("/series/s/append", json={"values": series(4 * p, 3)}).status_code == 200
        r = c.post("/series/s/append", json={"values": series(p, 4)})
        assert r.status_code == 422 and r.json()["field"] == "values", r.text
        assert c.get("/series/s").json()["length"] == 4 * p  # nothing applied
