"""Data files as users have them: empty, cut off in the middle, with very long names. One `error:` line naming
the file and the line, exit 2, and no files left in the data cache that change the next run."""
import os
import sys
import time

import pytest

from cells import explain, run
from ftgrid.data_prep import cache
from ftgrid.data_prep.catalog import DataError

GOOD = '{"instruction": "define a", "input": "", "output": "the first letter"}\n'
CASES = {
    "empty": ("", "is empty"),
    "blank": ("\n\n  \n", "is empty"),
    "cut": (GOOD * 10 + '{"instruction": "b", "outp\n' + GOOD * 10, "line 11: not valid JSON (Unterminated string"),
    "a-list-row": (GOOD * 3 + "[1, 2]\n", "line 4: a JSON list, not an object of columns"),
    "b" * 230: (GOOD + "nope\n", "line 2: not valid JSON (Expecting value, column 1)"),
}


@pytest.mark.parametrize("stem", CASES, ids=lambda s: s[:12])
def test_a_bad_file_is_one_error_line_naming_it_and_leaves_no_cache_litter(tmp_path, stem):
    text, why = CASES[stem]
    path = tmp_path / f"{stem}.jsonl"
    path.write_text(text)
    cache_dir = tmp_path / "cache"
    proc = run([sys.executable, "-m", "data_prep", "--dataset", path, "--model", "pythia-tiny", "--seq-len", "64"],
               FTGRID_DATA_CACHE=str(cache_dir))
    assert proc.returncode == 2, explain(proc)
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("error: dataset ") and why in line and len(line) < 220, line
    assert (stem if len(stem) < 40 else "bbb") + ".jsonl" in line
    assert not cache_dir.exists() or not os.listdir(cache_dir)  # nothing for the next run to trip on


def test_a_failure_of_this_run_reaches_a_rank_that_started_waiting_after_it(tmp_path):
    (tmp_path / "k.failed").write_text("DataError: rank 0 could not read it")
    with pytest.raises(DataError, match="rank 0 failed to prepare k: DataError: rank 0 could not read it"):
        cache.wait_for(tmp_path, "k", timeout=600)


def test_an_earlier_runs_failure_is_not_this_runs(tmp_path):
    failed = tmp_path / "k.failed"
    failed.write_text("DataError: yesterday's")
    old = time.time() - 24 * 3600
    os.utime(failed, (old, old))
    with pytest.raises(DataError, match="waited 0s for rank 0"):
        cache.wait_for(tmp_path, "k", timeout=0.1)


def test_the_check_fails_every_rank_before_any_lock_or_wait(tmp_path):
    def bad():
        raise DataError("dataset d: d.jsonl line 3: not valid JSON")
    for rank in (0, 1):
        with pytest.raises(DataError, match="line 3"):
            cache.get_or_build(tmp_path / "c", "k", lambda tmp: None, rank=rank, timeout=600, check=bad)
    assert not (tmp_path / "c").exists()
