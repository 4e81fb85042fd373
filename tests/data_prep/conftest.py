"""Shared fixtures of the data_prep tests: the project's tiny tokenizer and a private cache dir."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOKENIZER_DIR = ROOT / "finetune" / "assets" / "tokenizer-tiny"

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session", autouse=True)
def _quiet_datasets():
    import datasets

    datasets.disable_progress_bars()


@pytest.fixture(scope="session")
def tiny_tok():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(TOKENIZER_DIR))


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A fresh cache dir for this test (also as $FTGRID_DATA_CACHE, for code that reads the default)."""
    path = tmp_path / "cache"
    monkeypatch.setenv("FTGRID_DATA_CACHE", str(path))
    return path
