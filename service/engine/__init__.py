"""The engine: owns the loaded model and the streaming series' states; no HTTP here.

facade.py (the public calls), admission.py (what a request may do), resident.py and
slot_pool.py (the two state stores), loading.py (backend, device, weights), ops.py (requests)."""

from service.engine.facade import Engine, Journal, StateStore
from service.engine.loading import BACKENDS, appends_are_batch_invariant, resolve_backend, resolve_device
from service.engine.ops import EngineError, Op

__all__ = ["BACKENDS", "Engine", "EngineError", "Journal", "Op", "StateStore", "appends_are_batch_invariant",
           "resolve_backend", "resolve_device"]
