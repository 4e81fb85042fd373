"""One rank of the 2-process cache test (run by test_ranks.py as a separate process).

    LOCAL_RANK=r python tests/data_prep/rank_worker.py OUT_DIR

Rank 1 announces that it is about to wait (OUT_DIR/rank1.waiting), then calls prepare(), which must
poll for rank 0's cache entry. Rank 0 starts only after that announcement, so rank 1 really waits.
Each writes OUT_DIR/rank<r>.json: tokenizer calls, from_cache, seconds spent, a digest of the data.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main(out: Path) -> None:
    import datasets
    from transformers import AutoTokenizer

    from ftgrid.data_prep.prepare import prepare

    datasets.disable_progress_bars()
    rank = int(os.environ["LOCAL_RANK"])
    tok = AutoTokenizer.from_pretrained(str(Path(__file__).resolve().parents[2] / "finetune/assets/tokenizer-tiny"))
    calls = {"n": 0}
    real_call = type(tok).__call__

    def counted(self, *a, **k):  # every tokenization goes through __call__ in data_prep
        calls["n"] += 1
        return real_call(self, *a, **k)

    type(tok).__call__ = counted
    cache = Path(os.environ["FTGRID_DATA_CACHE"])
    if rank == 1:
        existed = any(p.is_dir() and "." not in p.name for p in cache.glob("*")) if cache.exists() else False
        (out / "rank1.waiting").write_text("1")
    else:
        deadline = time.time() + 120
        while not (out / "rank1.waiting").exists():
            if time.time() > deadline:
                raise SystemExit("rank 1 never started")
            time.sleep(0.05)
        time.sleep(0.5)  # rank 1 is now polling for the done marker
        existed = None
    t0 = time.time()
    prep = prepare("wordnet:medium", task="sft", tokenizer=tok, seq_len=128)
    seconds = time.time() - t0
    digest = hashlib.sha256(json.dumps(list(prep.train["input_ids"])).encode()).hexdigest()
    (out / f"rank{rank}.json").write_text(json.dumps({
        "rank": rank, "calls": calls["n"], "from_cache": prep.stats.from_cache, "seconds": seconds,
        "cache_existed_at_start": existed, "digest": digest, "rows": len(prep.train),
        "cache_path": str(prep.cache_path)}))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
