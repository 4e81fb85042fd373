"""The package's shape: one import name, imports that follow the data flow, and the console command."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from ftgrid import KIT_ROOT, cli

# Who may import whom: the kernel (ftgrid/*.py) none of the three; data_prep only the kernel;
# finetune the kernel and data_prep; launch the kernel and data_prep (to check dataset names).
FORBIDDEN = {"ftgrid": ("ftgrid.launch", "ftgrid.finetune", "ftgrid.data_prep"),
             "data_prep": ("ftgrid.launch", "ftgrid.finetune"),
             "finetune": ("ftgrid.launch",),
             "launch": ("ftgrid.finetune",)}
TOP_LEVEL = ("launch", "finetune", "data_prep")


def imported_modules(path: Path):
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_follow_the_data_flow(package):
    files = [p for p in (KIT_ROOT / package).rglob("*.py") if "samples" not in p.parts and "assets" not in p.parts]
    assert files
    bad = [f"{p.relative_to(KIT_ROOT)} imports {m}" for p in files for m in imported_modules(p)
           if m.startswith(FORBIDDEN[package]) or m.split(".")[0] in TOP_LEVEL]
    assert not bad, bad


def test_every_console_subcommand_has_a_main():
    for name, (module, _) in cli.available_commands().items():
        mod = __import__(module, fromlist=["main"])
        assert callable(mod.main), name
    assert {"grid", "train", "plan", "probe", "report", "fit", "data", "status"} <= set(cli.available_commands())


def test_console_errors_are_one_line():
    proc = subprocess.run([sys.executable, "-m", "ftgrid", "grdi"], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "unknown command 'grdi' (did you mean 'grid'?)" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "ftgrid", "plan", "--model", "pythia-tiny", "--bogus", "1"], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("error: unrecognized arguments") and "ftgrid plan --help" in proc.stderr


def test_flags_in_snake_and_kebab_case_are_one_flag():
    p = cli.CliParser(aliases={"learning_rate": "lr"})
    p.add_argument("--micro-batch", type=int)
    p.add_argument("--lr", type=float)
    a = p.parse_args(["--micro_batch", "4", "--learning-rate=0.1"])
    assert (a.micro_batch, a.lr) == (4, 0.1)
    assert p.parse_args(["--micro-batch=8"]).micro_batch == 8
