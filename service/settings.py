"""Service configuration: flags override environment variables, which override defaults."""

from __future__ import annotations

import argparse
import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

DEFAULT_WEIGHTS = Path(__file__).resolve().parent.parent / "weights" / "rimer-general-v10"


@dataclass(frozen=True)
class Settings:
    weights: str = str(DEFAULT_WEIGHTS)
    device: str = "auto"  # cpu | cuda | auto
    backend: str = "auto"  # torch | triton | onnx | auto (see HELP)
    host: str = "127.0.0.1"
    port: int = 8000
    max_horizon: int = 2048
    max_series_per_request: int = 1024
    max_points_per_request: int = 2_000_000
    max_answer_values: int = 4_194_304  # forecast values one answer may hold (~40 MB of JSON)
    realign_forecasts: bool = True  # a forecast from inside a patch starts at the newest point
    max_gap_points: int = 10_000  # points gaps between timestamps may add to one request
    max_body_bytes: int = 64 * 1024 * 1024
    body_timeout_s: float = 60.0  # a body must arrive whole within this
    header_timeout_s: float = 10.0  # a request's line and headers must arrive within this
    max_connections: int = 2048  # open connections and requests in flight; 503 beyond
    max_series: int = 100_000  # streaming series held at once, all cache tiers together
    cache_capacity: int = 16_384  # series states on the model's device
    host_capacity: int = 16_384  # series states spilled to host memory before disk
    spill_dir: str = ""  # where states beyond both spill to; default <data-dir>/spill or a temp dir
    idle_expiry_s: float = 0.0  # delete series idle this long; 0: never
    api_keys: str = field(default="", repr=False)  # comma-separated; never shown or logged
    api_keys_file: str = ""  # one key per line
    metrics_public: bool = False  # serve /metrics without a key when keys are on
    data_dir: str = ""  # write-ahead log and snapshots; none: in memory only
    fsync: str = "always"  # always | interval
    fsync_interval_ms: int = 100
    snapshot_interval_s: float = 60.0
    torch_threads: int = 1  # CPU threads of torch's kernels; 0: torch's default
    gil_switch_us: float = 50.0  # sys.setswitchinterval, in microseconds; 0: Python's (5,000)
    access_log: bool = False  # uvicorn's line per request
    batch_window_ms: float = 2.0  # micro-batching of appends and forecasts; 0: off
    max_batch: int = 1024
    batch_max_points: int = 4096  # larger requests (values + forecast points) skip the batcher
    replica_name: str = ""  # a cluster's name for this replica: sent as X-Rimer-Replica

    @classmethod
    def env_name(cls, field: str) -> str:
        return "RIMER_" + field.upper()


HELP = {
    "weights": "checkpoint to serve: a directory of ours or an original Rimer .pth",
    "device": "cpu, cuda, or auto (cuda when available)",
    "backend": "torch, triton (state pool on the device, Triton kernels, CUDA graphs on a GPU), "
               "onnx (CPU: the network run by ONNX Runtime from the graph shipped beside the "
               "weights), or auto (triton on CUDA; on the CPU onnx where a graph is shipped beside the "
               "weights, else torch)",
    "host": "address to listen on",
    "port": "port to listen on",
    "max_horizon": "largest forecast horizon accepted",
    "max_series_per_request": "most series in one request",
    "max_points_per_request": "most values in one request, all series together",
    "max_answer_values": "most forecast values one answer may hold: series x horizon x (the "
                         "mean, two bounds per level, one per quantile); 413 naming horizon beyond",
    "realign_forecasts": "a series whose newest points are an unfinished patch (or whose "
                         "normalising variance is stale: over 100x its last 16 patches') is "
                         "forecast from a fresh state over its last 16 whole patches, so that "
                         "those points inform the first forecast step (lag models; about 13x "
                         "the compute of a forecast from a patch boundary, 17x for a bulk "
                         "append with a horizon); "
                         "off: from its last complete patch, the newest points informing the "
                         "forecast from its second patch on",
    "max_gap_points": "most points that filling gaps between timestamps may add to one request "
                      "(422 beyond); they count toward --max-points-per-request too",
    "max_body_bytes": "largest request body accepted (413 beyond)",
    "body_timeout_s": "seconds a request body may take to arrive whole (408 beyond)",
    "header_timeout_s": "seconds a request's line and headers may take to arrive (the connection "
                        "is answered 408 and closed beyond)",
    "max_connections": "open connections plus requests in flight (uvicorn's limit_concurrency: "
                       "503 beyond)",
    "max_series": "most streaming series held at once, in all cache tiers (409 beyond)",
    "cache_capacity": "series states kept on the model's device (the triton backend preallocates "
                      "this many); past it the least recently used spill to host memory",
    "host_capacity": "spilled states kept in host memory; past it the least recently used go to "
                     "files in --spill-dir",
    "spill_dir": "directory for spilled states (a cache, not durability: its spill files are removed "
                 "at start-up, nothing else); "
                 "default <data-dir>/spill, or a temporary directory removed at exit",
    "idle_expiry_s": "delete streaming series that no request touched for this many seconds "
                     "(logged like DELETE; checked every min(60, this/10) s); 0: never",
    "api_keys": "comma-separated API keys; when any key is set (here or in --api-keys-file), every "
                "route but /healthz and /readyz needs 'Authorization: Bearer <key>' or "
                "'X-API-Key: <key>' (prefer the env var or a file: flags show in ps)",
    "api_keys_file": "file of API keys, one per line ('#' comments and blank lines ignored)",
    "metrics_public": "serve /metrics without an API key even when keys are on",
    "data_dir": "directory for the write-ahead log and snapshots of streaming series, recovered at "
                "start-up; none: series live in memory only and are lost at exit",
    "fsync": "always (an append is acknowledged once fsynced) or interval (fsync every "
             "--fsync-interval-ms: a power loss may lose that long of acknowledged appends, a "
             "process crash loses none)",
    "fsync_interval_ms": "milliseconds between fsyncs with --fsync interval",
    "snapshot_interval_s": "seconds between snapshots of every series (also one at clean "
                           "shutdown; 0: only then); the log is cut after each",
    "torch_threads": "CPU threads for torch's kernels (0: torch's default, one per core); the "
                     "default 1 suits the small shipped models and a machine shared with the HTTP "
                     "workers; raise it for large stateless forecasts on many cores",
    "gil_switch_us": "microseconds a Python thread may hold the interpreter lock while another "
                     "waits for it (sys.setswitchinterval; 0: Python's default, 5,000): the "
                     "batcher's worker steps a bulk ingest's patches while the HTTP thread reads "
                     "the next request, and waits for the lock after each call into ONNX Runtime, "
                     "NumPy or torch (bench/RESULTS.md)",
    "access_log": "log a line per request (uvicorn's access log; the metrics count every request "
                  "either way)",
    "batch_window_ms": "milliseconds to wait for concurrent appends and forecasts of streaming "
                       "series to coalesce into one model call (waited only while requests are "
                       "concurrent); 0: off, each request calls the engine on its own",
    "max_batch": "most series operations coalesced into one batch",
    "batch_max_points": "requests of more points than this (values appended plus points "
                        "forecast) skip the micro-batcher and run on their own, so that one "
                        "large request does not hold up the batches of small ones",
    "replica_name": "this replica's name in a cluster (deploy/local.sh: its proxy upstream "
                    "address), sent with every answer as the X-Rimer-Replica header; none: no header",
}

TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")


def _bool(text: str | bool) -> bool:
    if isinstance(text, bool):
        return text
    if text.strip().lower() in TRUE:
        return True
    if text.strip().lower() in FALSE:
        return False
    raise ValueError(f"not a boolean: {text!r} (use one of {TRUE + FALSE[:-1]})")


def parse(argv: list[str] | None = None) -> Settings:
    """Settings from flags (`--max-horizon`), then env (`RIMER_MAX_HORIZON`), then defaults."""
    ap = argparse.ArgumentParser(prog="python -m service", description="Rimer forecasting service")
    values = {}
    for f in fields(Settings):
        env = Settings.env_name(f.name)
        default = os.environ.get(env, f.default)
        flag = "--" + f.name.replace("_", "-")
        shown = "none" if f.default == "" else f.default
        if isinstance(f.default, bool):
            try:
                default = _bool(default)
            except ValueError as exc:
                ap.error(f"{env}: {exc}")
            ap.add_argument(flag, action=argparse.BooleanOptionalAction, default=default,
                            help=f"{HELP[f.name]} (env {env}=1|0, default {'on' if f.default else 'off'})")
        else:
            ap.add_argument(flag, type=type(f.default), default=default,
                            help=f"{HELP[f.name]} (env {env}, default {shown})")
    args = ap.parse_args(argv)
    for f in fields(Settings):
        values[f.name] = type(f.default)(getattr(args, f.name))
        if isinstance(values[f.name], float) and not math.isfinite(values[f.name]):
            # (a NaN timeout passed every range check below, then broke each connection)
            ap.error(f"--{f.name.replace('_', '-')} must be a finite number, "
                     f"got {getattr(args, f.name)!r}")
    if values["device"] not in ("cpu", "cuda", "auto"):
        ap.error("--device must be cpu, cuda or auto")
    if values["backend"] not in ("torch", "triton", "onnx", "auto"):
        ap.error("--backend must be torch, triton, onnx or auto")
    for name in ("max_series", "cache_capacity", "max_horizon", "max_series_per_request",
                 "max_points_per_request", "max_answer_values", "max_body_bytes"):
        if values[name] < 1:  # (0 would leave a server that refuses every request)
            ap.error(f"--{name.replace('_', '-')} must be at least 1")
    if not 0 <= values["port"] <= 65535:
        ap.error(f"--port must be 0 (any free port) to 65535, got {values['port']}")
    if values["torch_threads"] < 0:
        ap.error("--torch-threads must be 0 (torch's default) or more")
    if values["gil_switch_us"] < 0:
        ap.error("--gil-switch-us must be 0 (Python's default) or more")
    if values["api_keys"].strip():
        from service.auth import split_keys
        if not split_keys(values["api_keys"]):
            ap.error("--api-keys holds no keys (leave it empty to serve without keys)")
    if values["host_capacity"] < 0 or values["idle_expiry_s"] < 0:
        ap.error("--host-capacity and --idle-expiry-s must be 0 or more")
    if values["body_timeout_s"] <= 0 or values["header_timeout_s"] <= 0:
        ap.error("--body-timeout-s and --header-timeout-s must be positive")
    if values["max_connections"] < 1:
        ap.error("--max-connections must be at least 1")
    if values["max_gap_points"] < 0:
        ap.error("--max-gap-points must be 0 (gaps refused) or more")
    if values["fsync"] not in ("always", "interval"):
        ap.error("--fsync must be always or interval")
    if values["fsync_interval_ms"] <= 0:
        ap.error("--fsync-interval-ms must be positive")
    if values["snapshot_interval_s"] < 0:
        ap.error("--snapshot-interval-s must be 0 (only at shutdown) or more")
    if values["batch_window_ms"] < 0:
        ap.error("--batch-window-ms must be 0 (off) or more")
    if values["max_batch"] < 1:
        ap.error("--max-batch must be at least 1")
    if values["batch_max_points"] < 0:
        ap.error("--batch-max-points must be 0 (every append on its own) or more")
    if values["api_keys_file"]:
        from service.auth import read_keys_file
        try:
            if not read_keys_file(values["api_keys_file"]):
                ap.error(f"--api-keys-file {values['api_keys_file']} holds no keys")
        except OSError as exc:
            ap.error(f"--api-keys-file: cannot read it ({exc.strerror})")
    return Settings(**values)
