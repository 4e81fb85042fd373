import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from slurm_fixture import slurm_cluster, slurm_sweep  # noqa: E402,F401


def pytest_addoption(parser):
    parser.addoption("--update-golden", action="store_true", help="rewrite golden files of rendered templates")


# `make test` runs 2 workers (pytest-xdist, --dist loadgroup): the tests that share one expensive run, and
# the SLURM tests (one cluster, throttling checks), each stay on one worker, so every run happens once.
SHARED_RUNS = {"slurm_cluster": "slurm", "trained_cell": "trained", "zero_run": "zero"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        groups = [group for name, group in SHARED_RUNS.items() if name in getattr(item, "fixturenames", ())]
        if item.get_closest_marker("slurm") is not None:
            groups.insert(0, "slurm")
        if groups:
            item.add_marker(pytest.mark.xdist_group(groups[0]))


@pytest.fixture(scope="session")
def trained_cell(tmp_path_factory):
    """One tiny LoRA cell trained for real in a fresh process (30 steps, offline wandb, credentials in its
    environment), shared by every test that only reads what a finished run leaves: (cell dir, process)."""
    from cells import SECRETS, TRAINED, explain, make_cell, train
    cell = tmp_path_factory.mktemp("trained") / "cell-a"
    proc = train(make_cell(cell, **TRAINED), WANDB_MODE="offline", **SECRETS)
    assert proc.returncode == 0, explain(proc)
    return cell, proc


@pytest.fixture(scope="session")
def zero_run(tmp_path_factory):
    """`zero_run(stage)`: the shared cell of that ZeRO stage (cells.ZERO_RUNS) trained once with 2 processes
    under torchrun, for the DeepSpeed tests and the ZeRO resume tests: (cell dir, metrics)."""
    from cells import ZERO_RUNS, explain, make_cell, metrics, torchrun
    done = {}

    def get(stage: int):
        if stage not in done:
            cell = tmp_path_factory.mktemp(f"zero{stage}") / f"zero{stage}"
            proc = torchrun(make_cell(cell, zero=stage, **ZERO_RUNS[stage]))
            assert proc.returncode == 0, explain(proc)
            assert "DeepSpeed" in proc.stdout + proc.stderr  # the engine really ran, not plain DDP
            done[stage] = cell, metrics(cell)
        return done[stage]
    return get


@pytest.fixture
def update_golden(request):
    return request.config.getoption("--update-golden")
