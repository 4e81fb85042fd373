"""ftgrid.startup: the collector paused while the heavy entrypoints load, restored after, frozen once."""
import gc

import pytest

from ftgrid import startup


def test_the_collector_is_paused_inside_and_restored_after_even_on_error():
    assert gc.isenabled()
    with pytest.raises(RuntimeError):
        with startup.no_gc_while_loading():
            assert not gc.isenabled()
            with startup.no_gc_while_loading():  # nested: the inner one must not switch it back on
                pass
            assert not gc.isenabled()
            raise RuntimeError("setup failed")
    assert gc.isenabled()


def test_a_collector_switched_off_by_the_caller_stays_off():
    gc.disable()
    try:
        with startup.no_gc_while_loading():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_imports_are_frozen_once_per_process(monkeypatch):
    monkeypatch.setattr(startup, "_FROZEN", [])
    frozen = []
    monkeypatch.setattr(gc, "freeze", lambda: frozen.append(1))
    startup.freeze_imports()
    startup.freeze_imports()  # a second run in the same process must not freeze that run's garbage
    assert frozen == [1]
