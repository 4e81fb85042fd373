"""Shared set-up of the property-based suite: example counts, and a tally of outcomes per command that
benchmarks/fuzz_long.py reads (FTGRID_FUZZ_REPORT=path writes it as JSON at the end of the session)."""
from __future__ import annotations

import json
import os
from collections import Counter

import pytest
from hypothesis import HealthCheck, settings

# CI: a few dozen examples per property (the suite stays under 3 minutes on a loaded 2-core machine);
# FTGRID_FUZZ_EXAMPLES raises it (benchmarks/fuzz_long.py: 10,000+ in all).
settings.register_profile("ci", max_examples=int(os.environ.get("FTGRID_FUZZ_EXAMPLES", "40")), deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
                          derandomize=os.environ.get("FTGRID_FUZZ_RANDOM") is None, print_blob=True)
settings.load_profile("ci")

TALLY: Counter = Counter()


@pytest.fixture(scope="session", autouse=True)
def fuzz_report():
    yield TALLY
    path = os.environ.get("FTGRID_FUZZ_REPORT")
    if path:
        with open(path, "w") as fh:
            json.dump({" ".join(k): v for k, v in sorted(TALLY.items())}, fh, indent=1)
