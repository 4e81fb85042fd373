"""Two real processes: rank 1 waits (no collective) for the cache that rank 0 builds, then loads it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cells import CEILING_S

WORKER = Path(__file__).with_name("rank_worker.py")


@pytest.mark.slow
def test_rank1_waits_for_rank0_cache_and_does_not_tokenize(tmp_path):
    cache = tmp_path / "cache"
    procs = []
    for rank in (1, 0):  # rank 1 first: it must find nothing and wait
        env = dict(os.environ, LOCAL_RANK=str(rank), RANK=str(rank), WORLD_SIZE="2", FTGRID_DATA_CACHE=str(cache),
                   HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
        procs.append(subprocess.Popen([sys.executable, str(WORKER), str(tmp_path)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    deadline = time.time() + CEILING_S
    for p in procs:
        out, _ = p.communicate(timeout=max(1, deadline - time.time()))
        assert p.returncode == 0, out[-3000:]
    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    assert r0["calls"] > 0 and not r0["from_cache"]            # rank 0 tokenized and built the entry
    assert r1["cache_existed_at_start"] is False               # rank 1 started before the cache existed ...
    assert r1["calls"] == 0 and r1["from_cache"]               # ... waited, and never tokenized
    assert r1["seconds"] > 0.5                                 # it really waited for rank 0
    assert r1["digest"] == r0["digest"] and r1["rows"] == r0["rows"] == 1200
    assert r1["cache_path"] == r0["cache_path"]
    assert not list(cache.glob("*.tmp-*")) and not list(cache.glob("*.failed"))
