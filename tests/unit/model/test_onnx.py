"""The onnx backend: the network exported to ONNX and run by ONNX Runtime computes what the
PyTorch modules do (beside `Rimer._network`, through the engine, and against the original Rimer's
reference outputs), shipped graphs are current, and a stale or missing graph is never served."""

from __future__ import annotations

import fcntl
import json
import os
import shutil

import pytest
import torch

from model import checkpoint
from model.onnx_network import CHUNK, OnnxNetwork, OnnxNetworkError, export, graph_path
from model.rimer import TorchStep
from model.state import RimerState
from service.engine import Engine, Op
from service.settings import parse
from tests.conftest import DEFAULT_WEIGHTS, ORIGINAL_PTH, rel_err
from tests.helpers import TOLERANCE, as_series, series, tiny_model

pytest.importorskip("onnxruntime")
WEIGHTS = sorted(p for p in DEFAULT_WEIGHTS.parent.iterdir() if (p / "manifest.json").is_file())


@pytest.mark.parametrize("weights", WEIGHTS, ids=lambda p: p.name)
def test_every_shipped_model_has_a_current_graph(weights):
    """Built from these very weights (the sidecar's sha256), so `auto` serves onnx for each."""
    model, _ = checkpoint.load(weights)
    OnnxNetwork.for_checkpoint(model, weights)  # raises if missing or stale


def random_state(cfg, bsz: int, seed: int) -> RimerState:
    g = torch.Generator().manual_seed(seed)
    state = RimerState.zeros(cfg, bsz)
    state.wkv = torch.randn(state.wkv.shape, generator=g) * 0.2
    state.shift = torch.randn(state.shift.shape, generator=g)
    state.n_patches = torch.randint(0, 50, (bsz,), generator=g)
    return state


def test_onnx_network_matches_the_torch_network():
    """A chunk of T patches with per-series counts (0 included): outputs where valid, and the
    states each series is left with, as `_network` computes them."""
    model, _ = checkpoint.load(DEFAULT_WEIGHTS)
    runtime = OnnxNetwork.for_checkpoint(model, DEFAULT_WEIGHTS)
    cfg = model.cfg
    bsz, t = 5, 4
    state = random_state(cfg, bsz, 1)
    xn = torch.randn(bsz, t, cfg.patch_len, generator=torch.Generator().manual_seed(2))
    counts = torch.tensor([4, 0, 1, 3, 4])
    valid = torch.arange(t)[None] < counts[:, None]
    with torch.no_grad():
        want_pred, want_wkv, want_shift, want_heads = model._network_full(xn, state, valid, TorchStep)
    got_pred, got_wkv, got_shift, *heads = runtime(xn, state, valid)
    assert rel_err(got_pred[valid], want_pred[valid]) <= 1e-5
    for name, got in (heads[0] if heads else {}).items():  # a model with lag or quantile heads
        assert rel_err(got[valid], want_heads[name][valid]) <= 1e-5, name
    assert rel_err(got_wkv, want_wkv) <= 1e-5 and rel_err(got_shift, want_shift) <= 1e-5
    assert torch.equal(got_wkv[1], state.wkv[1]) and torch.equal(got_shift[1], state.shift[1])


def test_a_series_gives_the_same_bits_alone_and_in_any_batch():
    """Each series runs CHUNK patches per call while it has them, then one at a time, whatever
    the other rows: the two graphs differ in the last bits (the recurrence in two forms), so the
    schedule must not depend on the batch. Rows of uneven counts (0, fewer than CHUNK, more)
    against each row alone; and both graphs are the network (to 1e-5 of the torch modules)."""
    model, _ = checkpoint.load(DEFAULT_WEIGHTS)
    runtime = OnnxNetwork.for_checkpoint(model, DEFAULT_WEIGHTS)
    stepped = OnnxNetwork(model, {1: runtime.sessions[1]})
    t = 2 * CHUNK + 3
    state = random_state(model.cfg, 5, 7)
    xn = torch.randn(5, t, model.cfg.patch_len, generator=torch.Generator().manual_seed(8))
    counts = torch.tensor([CHUNK + 3, 0, 5, 2 * CHUNK + 3, CHUNK])
    valid = torch.arange(t)[None] < counts[:, None]
    batch = runtime(xn, state, valid)
    for b in range(5):
        alone = runtime(xn[b:b + 1, :int(counts[b])], state.select([b]), None)
        assert torch.equal(alone[1], batch[1][b:b + 1]) and torch.equal(alone[2], batch[2][b:b + 1])
        assert torch.equal(alone[0], batch[0][b:b + 1, :int(counts[b])])
    assert torch.equal(batch[1][1], state.wkv[1]) and torch.equal(batch[2][1], state.shift[1])
    with torch.no_grad():
        want = model._network(xn, state, valid, TorchStep)
    for net in (runtime, stepped):
        got = net(xn, state, valid)
        assert rel_err(got[0][valid], want[0][valid]) <= 1e-5
        assert rel_err(got[1], want[1]) <= 1e-5 and rel_err(got[2], want[2]) <= 1e-5
    # (the chunk graph did run, and differs from stepping in the last bits: hence the schedule)
    assert not torch.equal(runtime(xn, state, valid)[1], stepped(xn, state, valid)[1])


def test_onnx_engine_matches_the_torch_engine():
    onnx = Engine.load(str(DEFAULT_WEIGHTS), "cpu", 10, "onnx")
    assert onnx.backend == "onnx"
    torch_engine = Engine.load(str(DEFAULT_WEIGHTS), "cpu", 10, "torch")
    assert torch_engine.model.network_runtime is None
    x = series(900, 3)
    for e in (onnx, torch_engine):
        e.append("a", x[:500], None)
    for k in range(500, 900, 57):  # appends that complete 0, 1 or 2 patches, with forecasts
        got = onnx.append("a", x[k:k + 57], 24)[1]
        want = torch_engine.append("a", x[k:k + 57], 24)[1]
        assert rel_err(torch.tensor(got), torch.tensor(want)) <= 1e-5
    histories = [x[:500], x[:77], x[:32]]
    got = onnx.forecast_histories(histories, 96)
    want = torch_engine.forecast_histories(histories, 96)
    assert rel_err(torch.tensor(got), torch.tensor(want)) <= 1e-5


def weights_copy(to, *leave_out: str):
    """The default weights copied to `to` (evaluation reports and `leave_out` patterns left out)."""
    shutil.copytree(DEFAULT_WEIGHTS, to, ignore=shutil.ignore_patterns("eval-*", *leave_out))
    return to


def stale_copy(tmp_path):
    """A copy of the default weights whose graphs claim to come from other weights."""
    stale = weights_copy(tmp_path / "stale")
    meta = json.loads((stale / "network.onnx.json").read_text())
    meta["source_sha256"] = "0" * 64
    (stale / "network.onnx.json").write_text(json.dumps(meta))
    return stale


def test_auto_serves_onnx_on_the_cpu_where_a_current_graph_is_shipped(tmp_path, caplog):
    assert Engine.load(str(DEFAULT_WEIGHTS), "cpu", 10, "auto").backend == "onnx"
    bare = weights_copy(tmp_path / "bare", "network*")
    assert Engine.load(str(bare), "cpu", 10, "auto").backend == "torch"
    with pytest.raises(OnnxNetworkError, match="no ONNX graph"):
        Engine.load(str(bare), "cpu", 10, "onnx")
    stale = stale_copy(tmp_path)
    assert Engine.load(str(stale), "cpu", 10, "auto").backend == "torch"  # with a warning
    assert "other weights" in caplog.text
    with pytest.raises(OnnxNetworkError, match="other weights"):
        Engine.load(str(stale), "cpu", 10, "onnx")
    assert parse(["--backend", "onnx"]).backend == "onnx"


@pytest.mark.slow
def test_export_of_a_new_checkpoint_and_a_changed_one_is_refused(tmp_path):
    model = tiny_model(seed=4)
    directory = checkpoint.save(model, tmp_path / "tiny", {"name": "tiny"})
    export(directory)
    loaded, _ = checkpoint.load(directory)
    runtime = OnnxNetwork.for_checkpoint(loaded, directory)
    state = random_state(loaded.cfg, 3, 5)
    xn = torch.randn(3, 2, loaded.cfg.patch_len)
    with torch.no_grad():
        want = model._network(xn, state, None, TorchStep)
    for g, w in zip(runtime(xn, state, None), want):
        assert rel_err(g, w) <= 1e-5
    checkpoint.save(tiny_model(seed=5), directory, {"name": "tiny"})  # new weights, old graph
    with pytest.raises(OnnxNetworkError, match="other weights"):
        OnnxNetwork.for_checkpoint(loaded, directory)


@pytest.fixture(scope="module")
def original_onnx(tmp_path_factory):
    """The original Rimer checkpoint (window normalisation, sinusoidal positions) with its graph
    exported beside a copy of it."""
    pth = tmp_path_factory.mktemp("original") / ORIGINAL_PTH.name
    shutil.copy(ORIGINAL_PTH, pth)
    export(pth)
    assert graph_path(pth).is_file()
    model, _ = checkpoint.load(pth)
    model.network_runtime = OnnxNetwork.for_checkpoint(model, pth)
    return model


@pytest.mark.slow
@pytest.mark.parametrize("length", [256, 2048])
def test_onnx_reproduces_the_original(original_onnx, golden, length):
    """The reference outputs of the original Rimer code, through ONNX Runtime (the positions
    input and the window statistics included)."""
    x, y = golden[f"x_{length}"], golden[f"y_{length}"]
    with torch.no_grad():
        out = original_onnx.whole(as_series(x))
    assert rel_err(out, as_series(y)) <= TOLERANCE[length]


@pytest.mark.parametrize("damage", ["sidecar not json", "sidecar a list", "graph unloadable"])
def test_an_unreadable_graph_is_refused_by_onnx_and_skipped_by_auto(tmp_path, damage):
    copy = weights_copy(tmp_path / "w")
    sidecar = copy / "network.onnx.json"
    if damage == "sidecar not json":
        sidecar.write_text('{"source_sha256": ')
    elif damage == "sidecar a list":
        sidecar.write_text("[]")
    else:  # intact hashes, bytes ONNX Runtime cannot parse (as a graph of a newer opset would be)
        graph = copy / "network.onnx"
        graph.write_bytes(b"\xff" * 64 + graph.read_bytes()[64:])
        meta = json.loads(sidecar.read_text())
        meta["graphs"]["network.onnx"]["sha256"] = checkpoint.sha256_of(graph)
        sidecar.write_text(json.dumps(meta))
    with pytest.raises(OnnxNetworkError, match="export|cannot load"):
        Engine.load(str(copy), "cpu", 10, "onnx")
    assert Engine.load(str(copy), "cpu", 10, "auto").backend == "torch"


@pytest.mark.slow
def test_the_server_refuses_bad_configuration_in_one_line(tmp_path):
    """A mistake in the flags is one line on stderr and exit 2, not a traceback from the app's
    startup."""
    import subprocess
    import sys

    from tests.conftest import ROOT
    stale = stale_copy(tmp_path)
    (tmp_path / "file").write_text("a file, not a directory")
    no_norm = tmp_path / "no-norm"
    shutil.copytree(DEFAULT_WEIGHTS, no_norm)
    cfg = json.loads((no_norm / "config.json").read_text())
    del cfg["norm"]
    (no_norm / "config.json").write_text(json.dumps(cfg))
    (tmp_path / "held").mkdir()
    lock = os.open(tmp_path / "held" / "LOCK", os.O_RDWR | os.O_CREAT)
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another server's, as far as it can tell
    for args, says in ((["--weights", str(tmp_path / "nowhere")], "no checkpoint at"),
                       (["--weights", str(stale), "--backend", "onnx"], "other weights"),
                       (["--data-dir", str(tmp_path / "file" / "data")], "--data-dir: cannot use"),
                       (["--spill-dir", str(tmp_path / "file")], "--spill-dir: cannot use"),
                       (["--data-dir", str(tmp_path / "d"), "--spill-dir", str(tmp_path / "d")],
                        "must not be --data-dir"),
                       # Found loading or recovering, after the flags passed:
                       (["--weights", str(no_norm)], "missing config keys"),
                       (["--data-dir", str(tmp_path / "held")], "LOCK file is held")):
        run = subprocess.run([sys.executable, "-m", "service", "--device", "cpu", "--port", "1",
                              *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert run.returncode == 2, run.stderr
        assert says in run.stderr and "Traceback" not in run.stderr
        assert run.stderr.strip().count("\n") == 0  # one line
    os.close(lock)


@pytest.mark.slow
def test_onnx_results_do_not_depend_on_the_batch():
    """On the onnx backend a series' forecast is the same bit for bit alone or in a batch of any
    size (ONNX Runtime's CPU matrix products sum each row in one order whatever the rows; the
    statistics are batch-invariant by construction). The torch backend differs in the last bits
    (about 4e-5 at horizon 2048 here), which a long rollout can amplify."""
    e = Engine.load(str(DEFAULT_WEIGHTS), "cpu", 100, "onnx")
    xs = [series(100 + 53 * i, i) for i in range(40)]
    xs[7] = series(1500, 99)  # alone: CHUNK patches per call; beside shorter ones: one at a time
    alone = e.forecast_histories([xs[7]], 200)[0]
    for n in (8, 9, 17, 40):
        assert e.forecast_histories(xs[:n], 200)[7] == alone
    single = Engine.load(str(DEFAULT_WEIGHTS), "cpu", 100, "onnx")
    batched = Engine.load(str(DEFAULT_WEIGHTS), "cpu", 100, "onnx")
    pos = [0] * 20
    for k in (1, 33, 70, 5, 32, 31, 64):  # uneven pieces, patches completing
        ops = []
        for i in range(20):
            piece = xs[i][pos[i]:pos[i] + k + i % 3]
            pos[i] += len(piece)
            if piece:
                ops.append(Op(f"s{i}", piece))
        batched.apply_batch([ops])
        single.append("s3", next(op.values for op in ops if op.series_id == "s3"), None)
    got = batched.apply_batch([[Op(f"s{i}", None, 96) for i in range(20)]])[0][3][1]
    assert got == single.forecast_series("s3", 96)[1]


class _BatchDependent:
    """A model whose results change in the last bits with the batch size (as torch's CPU matrix
    products may): what `appends_are_batch_invariant` must catch."""

    def __init__(self, model):
        self.model, self.cfg, self.head = model, model.cfg, model.head

    def append(self, state, values):
        out = self.model.append(state, values)
        out.norm = out.norm * (1 + 1e-15 * len(values))
        return out


def test_journaled_appends_are_batched_only_where_batching_keeps_the_bits(tmp_path):
    """With a write-ahead log, an onnx engine computes the series of a batch that complete a
    patch in one model call (its start-up check found ONNX Runtime batch-invariant here), and
    replaying the log one append at a time rebuilds the same states, bit for bit: forecasts after
    recovery equal those before. A model whose bits depend on the batch fails the check."""
    from service.engine import appends_are_batch_invariant
    from service.store import Store

    e = Engine.load(str(DEFAULT_WEIGHTS), "cpu", 100, "onnx")
    assert e.batch_invariant
    assert not appends_are_batch_invariant(_BatchDependent(e.model))
    calls = []
    runtime = e.model.network_runtime
    e.model.network_runtime = lambda *a: calls.append(a[0].shape[0]) or runtime(*a)
    store = Store(tmp_path, e, snapshot_interval_s=0)
    store.open()
    xs = [series(300 + 7 * i, i) for i in range(12)]
    pos = [0] * 12
    for k in (40, 1, 31, 64, 2, 33):  # uneven pieces, several series completing patches
        ops = []
        for i in range(12):
            piece = xs[i][pos[i]:pos[i] + k + i % 5]
            pos[i] += len(piece)
            ops.append(Op(f"s{i}", piece))
        assert not any(isinstance(r, Exception) for r in e.apply_batch([ops]))
    assert max(calls) > 1  # batched calls, not one series at a time
    ids = [f"s{i}" for i in range(12)]
    before = {i: e.forecast_series(i, 48) for i in ids}
    store.close(snapshot=False)  # as after a crash: everything from the log
    again = Engine.load(str(DEFAULT_WEIGHTS), "cpu", 100, "onnx")
    replay_calls = []
    runtime2 = again.model.network_runtime
    again.model.network_runtime = lambda *a: replay_calls.append(a[0].shape[0]) or runtime2(*a)
    store2 = Store(tmp_path, again, snapshot_interval_s=0)
    assert store2.open()["replayed"] == 6 * 12
    assert max(replay_calls) > 1  # the log replayed in batches too
    again.model.network_runtime = runtime2
    assert {i: again.forecast_series(i, 48) for i in ids} == before
    store2.close(snapshot=False)


def test_batched_replay_names_the_record_at_fault(tmp_path):
    """Replayed in batches, a record that does not add up, or one the engine refuses, is still
    reported by its own sequence number, and the server does not start on it."""
    from service.store import Store, StoreError

    def log_of(directory, extra=None):
        e = Engine.load(str(DEFAULT_WEIGHTS), "cpu", 100, "onnx")
        store = Store(directory, e, snapshot_interval_s=0)
        store.open()
        for i in range(8):  # records 1..8, one per series
            e.append(f"s{i}", series(40 + i, i), None)
        if extra:
            extra(e)
        store.close(snapshot=False)

    log_of(tmp_path / "a", lambda e: e.journal.write_append("s2", [1.0], 999))  # record 9
    with pytest.raises(StoreError, match=r"replaying record 9 gave series 's2' 43 points; the "
                                         r"log says 999"):
        Store(tmp_path / "a", Engine.load(str(DEFAULT_WEIGHTS), "cpu", 100, "onnx"),
              snapshot_interval_s=0).open()
    log_of(tmp_path / "b")
    small = Engine.load(str(DEFAULT_WEIGHTS), "cpu", 5, "onnx")  # holds 5 series, the log has 8
    with pytest.raises(StoreError, match=r"replaying record 6 \(series 's5'\) failed: the "
                                         r"service holds its maximum of 5"):
        Store(tmp_path / "b", small, snapshot_interval_s=0).open()
