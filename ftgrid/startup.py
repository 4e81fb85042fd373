"""Start-up of the processes that import the heavy libraries (train, generate, lm_eval scoring).

Importing torch, transformers, peft and datasets makes about half a million objects that live as long as
the process, and Python's cyclic collector walks all of them again and again while they are made, and in
every full collection after: a quarter of a tiny cell's start (9 s -> 6.5 s of CPU on one core)."""
from __future__ import annotations

import contextlib
import gc

_FROZEN = []


@contextlib.contextmanager
def heavy_imports():
    """Import the heavy libraries inside this: no cyclic collection while they import; after, once per
    process, everything alive then (the modules, classes and functions, and the little garbage the
    imports left) is frozen out of the collector's sight, so no later collection walks it again. Only
    imports and indexes belong here, never a model or data load: their garbage must stay collectable.
    Nests; the collector is restored to what it was."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
        if not _FROZEN:
            gc.freeze()
            _FROZEN.append(True)
    finally:
        if was_enabled:
            gc.enable()
