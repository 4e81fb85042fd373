"""Start-up of the processes that import the heavy libraries and load a model (train, generate, lm_eval).

Importing torch, transformers, peft and datasets, loading the data and building the model allocate about a
million objects that live for the whole process. Python's cyclic collector walks all of them again and again
while they are made: a quarter of a tiny cell's start (10 s -> 7 s of CPU on one core)."""
from __future__ import annotations

import contextlib
import gc


@contextlib.contextmanager
def no_gc_while_loading():
    """Cyclic garbage collection paused while libraries import and data or a model load; what was made
    is collected as usual afterwards. Nests: the collector is restored to what it was."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


_FROZEN = []


def freeze_imports() -> None:
    """Once per process, right after the heavy imports: move everything alive (the modules, classes and
    functions, and the little garbage the imports left) out of the collector's sight for good, so no
    later collection walks it again. Later calls (a second run in the same process) do nothing, so no
    run's garbage is ever frozen."""
    if not _FROZEN:
        gc.freeze()
        _FROZEN.append(True)
