"""ftgrid.startup: the collector paused while the heavy libraries import, restored after, frozen once."""
import gc

import pytest

from ftgrid import startup


@pytest.fixture
def freezes(monkeypatch):
    monkeypatch.setattr(startup, "_FROZEN", [])
    frozen = []
    monkeypatch.setattr(gc, "freeze", lambda: frozen.append(gc.isenabled()))
    return frozen


def test_the_collector_is_paused_inside_and_restored_after(freezes):
    assert gc.isenabled()
    with startup.heavy_imports():
        assert not gc.isenabled()
        with startup.heavy_imports():  # nested: the inner one must not switch it back on
            pass
        assert not gc.isenabled()
    assert gc.isenabled()
    assert freezes == [False]  # frozen once, while the collector was still paused


def test_a_failed_import_restores_the_collector_and_freezes_nothing(freezes):
    with pytest.raises(ImportError):
        with startup.heavy_imports():
            import ftgrid_no_such_module  # noqa: F401
    assert gc.isenabled() and freezes == []


def test_a_collector_switched_off_by_the_caller_stays_off(freezes):
    gc.disable()
    try:
        with startup.heavy_imports():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_imports_are_frozen_once_per_process(freezes):
    for _ in range(2):  # a second run in the same process must not freeze that run's garbage
        with startup.heavy_imports():
            pass
    assert freezes == [False]
