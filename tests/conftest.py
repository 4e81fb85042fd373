import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from slurm_fixture import slurm_cluster  # noqa: E402,F401


def pytest_addoption(parser):
    parser.addoption("--update-golden", action="store_true", help="rewrite golden files of rendered templates")


@pytest.fixture
def update_golden(request):
    return request.config.getoption("--update-golden")
