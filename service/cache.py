"""The lower tiers of the state cache: host memory, then disk.

The engine keeps at most `--cache-capacity` states on the model's device (the triton backend's
slot pool, or the torch backend's resident states). When it needs room it hands the least recently
used state down here: into host memory, an LRU of at most `--host-capacity` states, whose oldest
state moves on to a file in the spill directory. A series' next request takes its state back up
(`take`), from whichever tier holds it.

The spill directory is a cache, not durability (the write-ahead log and snapshots are): it is
emptied when the engine starts. A file is named by the SHA-256 of the series id (ids never reach
a path, and a 128-character id's name stays far under the file system's 255 bytes; the id is
kept in the file and checked on reading) and holds the state's tensors in safetensors with a
CRC32 of their bytes; a file that fails its check is reported (`SpillError`), never used; a
write the disk refuses is a `SpillError` too, and the state stays where it was. Files are read
whole and parsed from bytes (`safe_open` leaks on every read in safetensors 0.8). A snapshot
pins spilled states (`pin`): the host tier's state, or a hard link to its file, read after the
locks are let go.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import re
import struct
import threading
import zlib
from collections import OrderedDict
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_bytes
from safetensors.torch import save_file

from model.state import STATE_VERSION, RimerState

log = logging.getLogger("rimer.cache")


# A spill file's name: the SHA-256 of its series id in hex, and its temporary while written
# (and the hex of the id itself, which earlier versions named them by: removed at start too).
SPILL_FILE = re.compile(r"^(?:[0-9a-f]{2})+\.(?:safetensors|tmp)$")
PIN_FILE = re.compile(r"^\d+\.safetensors$")  # a snapshot's link to a spill file (`pin`)


class SpillError(Exception):
    """A state could not be written to the spill directory, or read back intact."""


def _crc(tensors: dict[str, torch.Tensor]) -> int:
    crc = 0
    for name in sorted(tensors):
        crc = zlib.crc32(tensors[name].contiguous().view(torch.uint8).numpy().tobytes(), crc)
    return crc


def _metadata(data: bytes) -> dict[str, str]:
    """The `__metadata__` of safetensors bytes (ValueError if the header does not parse)."""
    if len(data) < 8:
        raise ValueError("truncated")
    (size,) = struct.unpack_from("<Q", data)
    if size > len(data) - 8:
        raise ValueError("truncated header")
    meta = json.loads(data[8:8 + size]).get("__metadata__") or {}
    if not isinstance(meta, dict):
        raise ValueError("malformed metadata")
    return meta


class SpillTiers:
    """Host-memory LRU of states over a directory of state files; thread-safe."""

    def __init__(self, host_capacity: int, directory: str | Path):
        self.host_capacity = host_capacity
        self.directory = Path(directory)
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)  # (its files are 0600)
        for stale in self.directory.iterdir():  # states from a previous run: recovery rebuilds
            if SPILL_FILE.match(stale.name) and stale.is_file():  # ours only: nothing else
                stale.unlink()
        # Hard links to disk-tier files a snapshot is reading (`pin`): a file's content never
        # changes in place (a write replaces it, a take unlinks it), so a link is a consistent
        # copy that costs no memory. Made when first needed; ours left from a previous run: removed.
        self.pins = self.directory / ".rimer-snapshot-pins"
        if self.pins.is_dir():
            for stale in self.pins.iterdir():
                if PIN_FILE.match(stale.name) and stale.is_file():
                    stale.unlink()
        self._pin_names = itertools.count()
        self.host: OrderedDict[str, RimerState] = OrderedDict()
        self.disk: set[str] = set()
        self.lock = threading.Lock()
        self.spills = {"host": 0, "disk": 0}  # states handed down to each tier
        self.loads = {"host": 0, "disk": 0}  # states taken back up from each tier

    def __len__(self) -> int:
        return len(self.host) + len(self.disk)

    def __contains__(self, series_id: str) -> bool:
        return series_id in self.host or series_id in self.disk

    def _path(self, series_id: str) -> Path:
        return self.directory / (hashlib.sha256(series_id.encode()).hexdigest() + ".safetensors")

    def put(self, series_id: str, state: RimerState) -> None:
        """Hold one series' state (batch of one, any device: moved to the host)."""
        with self.lock:
            self.host[series_id] = state.to("cpu")
            self.host.move_to_end(series_id)
            try:
                while len(self.host) > self.host_capacity:
                    oldest, old_state = next(iter(self.host.items()))
                    self._write(oldest, old_state)  # (dropped from the host only once written)
                    del self.host[oldest]
            except BaseException as exc:  # the disk refused: this put did not happen, nothing is lost
                self.host.pop(series_id, None)
                if isinstance(exc, (OSError, SafetensorError)):  # (safetensors' own I/O errors
                    # too; an OSError's reason, not the spill directory's path)
                    why = exc.strerror or type(exc).__name__ if isinstance(exc, OSError) else exc
                    raise SpillError(f"the spill directory refused a state: {why}") from exc
                raise
            self.spills["host"] += 1

    def _write(self, series_id: str, state: RimerState) -> None:
        tensors = {k: v.contiguous() for k, v in state.tensors().items()}
        path = self._path(series_id)
        tmp = path.with_suffix(".tmp")
        try:
            save_file(tensors, str(tmp), metadata={"state_version": str(STATE_VERSION),
                                                   "crc32": str(_crc(tensors)), "id": series_id})
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)  # (a half-written file: nothing of it is kept)
            raise
        self.disk.add(series_id)
        self.spills["disk"] += 1

    def _read(self, series_id: str, path: Path | None = None) -> RimerState:
        path = self._path(series_id) if path is None else path
        try:
            # The bytes read whole and parsed by `safetensors.torch.load`, not `safe_open`:
            # safetensors 0.8's `safe_open(...).get_tensor` leaks memory on every call (Python
            # objects and native memory, about 1 kB a read: RSS grew ~12 MB a minute under
            # spilling, issue 26; tests/unit/service/test_soak.py holds the read to a bound).
            data = path.read_bytes()
            meta = _metadata(data)
            tensors = load_bytes(data)
        except (OSError, SafetensorError, ValueError) as exc:
            raise SpillError(f"spilled state of {series_id!r} unreadable ({path}): {exc}") from exc
        if (meta.get("id") != series_id or meta.get("state_version") != str(STATE_VERSION)
                or meta.get("crc32") != str(_crc(tensors))):
            raise SpillError(f"spilled state of {series_id!r} fails its check ({path})")
        # Fresh allocations: tensors in the file's buffer may be unaligned, and CPU kernels may
        # round differently on unaligned memory (the state must give the same bits as before).
        return RimerState(**{k: v.clone() for k, v in tensors.items()})

    def peek(self, series_id: str) -> RimerState:
        """The state on the host, left where it is (snapshots)."""
        with self.lock:
            if series_id in self.host:
                return self.host[series_id]
            return self._read(series_id)

    def pin(self, ids: list[str]) -> list[RimerState | Path]:
        """Per id, what a snapshot reads its state from later, outside every lock, cheaply now:
        the host tier's state itself (never changed in place) or a hard link to its file (read
        by `read_pinned`, removed by `unpin`). Where the file system refuses a link, the state
        is read now."""
        out: list[RimerState | Path] = []
        with self.lock:
            try:
                if any(i not in self.host for i in ids):
                    self.pins.mkdir(mode=0o700, exist_ok=True)
                for series_id in ids:
                    if series_id in self.host:
                        out.append(self.host[series_id])
                        continue
                    link = self.pins / f"{next(self._pin_names)}.safetensors"
                    try:
                        os.link(self._path(series_id), link)
                    except OSError:
                        out.append(self._read(series_id))
                    else:
                        out.append(link)
            except BaseException:
                self.unpin(out)
                raise
        return out

    def read_pinned(self, series_id: str, pinned: RimerState | Path) -> RimerState:
        return self._read(series_id, pinned) if isinstance(pinned, Path) else pinned

    @staticmethod
    def unpin(pinned: list[RimerState | Path]) -> None:
        for p in pinned:
            if isinstance(p, Path):
                p.unlink(missing_ok=True)

    def take(self, series_id: str) -> RimerState:
        """The state on the host, no longer held here (it is going back to the device)."""
        with self.lock:
            if series_id in self.host:
                self.loads["host"] += 1
                return self.host.pop(series_id)
            state = self._read(series_id)
            self.disk.discard(series_id)
            self._path(series_id).unlink(missing_ok=True)
            self.loads["disk"] += 1
            return state

    def drop(self, series_id: str) -> None:
        with self.lock:
            if self.host.pop(series_id, None) is None and series_id in self.disk:
                self.disk.discard(series_id)
                self._path(series_id).unlink(missing_ok=True)

    def ids(self) -> list[str]:
        with self.lock:
            return list(self.host) + sorted(self.disk)

    def tier_sizes(self) -> dict[str, int]:
        return {"host": len(self.host), "disk": len(self.disk)}


class IdleExpiry:
    """A thread deleting series idle for `max_idle_s` (Engine.expire_idle), checking every
    min(60, max_idle_s / 10) seconds."""

    def __init__(self, engine, max_idle_s: float):
        self.engine, self.max_idle_s = engine, max_idle_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rimer-expiry", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        period = min(60.0, self.max_idle_s / 10)
        while not self._stop.wait(period):
            try:
                expired = self.engine.expire_idle(self.max_idle_s)
            except Exception:  # noqa: BLE001 - keep expiring; the next round retries
                log.exception("idle expiry failed")
                continue
            if expired:
                log.info("expired %d idle series", len(expired))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
