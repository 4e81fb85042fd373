"""Helpers for tests that train tiny cells in fresh processes (as every launcher does)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
TRAIN_PY = ROOT / "finetune" / "train.py"

# The one ceiling on a child process: it fails a test whose process is stuck (a hang), never one that is
# merely slow on a loaded machine. Tests wait on the thing itself (the process, a file, a job state).
CEILING_S = 1800

# A tiny cell that learns visibly in a few seconds on one CPU core.
TINY = dict(model="pythia-tiny", rank=8, target_modules="all-linear", lr=3e-3, dataset="wordnet:small",
            seq_len=96, micro_batch=8, max_steps=30, eval_rows=64, logging_steps=5, warmup=0.0)


# Credentials planted in a run's environment: they must land in no file and no log.
SECRETS = {"WANDB_API_KEY": "0123456789abcdef0123456789abcdef01234567", "HF_TOKEN": "hf_ftgridPlantedSecret42",
           "HUGGING_FACE_HUB_TOKEN": "hf_ftgridPlantedSecret43"}
# The shared trained cell (conftest.py `trained_cell`): TINY's 30 steps, tracked by wandb. A key in the
# environment would mean "online"; WANDB_MODE=offline (set by the tests) wins.
TRAINED = dict(max_new_tokens=12, wandb_mode="online", wandb_group="sweep-w", wandb_project="ftgrid-test")


# The shared 2-process DeepSpeed cells (conftest.py `zero_run`), one per ZeRO stage: the DeepSpeed tests read
# them and the ZeRO resume tests take them as the uninterrupted reference.
ZERO = dict(max_steps=16, micro_batch=4, lora_dropout=0.0, logging_steps=4, num_samples=0)
ZERO_RUNS = {2: dict(ZERO, wandb_mode="offline", wandb_group="sweep-z2"),
             3: dict(ZERO, num_samples=2, max_new_tokens=8)}


def make_cell(cell_dir: Path, zero: int | None = None, offload: str = "none", **overrides) -> Path:
    """Write cell.yaml (and ds_config.json when `zero` is given) the way launch/grid.py does."""
    from ftgrid.launch import render

    cell_dir = Path(cell_dir)
    cell_dir.mkdir(parents=True, exist_ok=True)
    run = dict(TINY, name=cell_dir.name, **overrides)
    if zero is not None:
        (cell_dir / "ds_config.json").write_text(json.dumps(render.ds_config(zero, offload, pin_memory=False)))
        run["deepspeed"] = "ds_config.json"
    (cell_dir / "cell.yaml").write_text(yaml.safe_dump(run))
    return cell_dir / "cell.yaml"


def clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               WANDB_MODE="offline", TOKENIZERS_PARALLELISM="false")
    env.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "torch_extensions"))
    env.update(extra)
    return env


def run(cmd: list[str], timeout: float = CEILING_S, **env) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], cwd=ROOT, env=clean_env(**env), capture_output=True,
                          text=True, timeout=timeout)
    return proc


def train(cell_yaml: Path, *extra, timeout: float = CEILING_S, **env) -> subprocess.CompletedProcess:
    return run([sys.executable, TRAIN_PY, "--cell", cell_yaml, *extra], timeout=timeout, **env)


def torchrun_command(cell_yaml: Path, nproc: int = 2, *launcher_args) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            *launcher_args, str(TRAIN_PY), "--cell", str(cell_yaml)]


def torchrun(cell_yaml: Path, nproc: int = 2, timeout: float = CEILING_S) -> subprocess.CompletedProcess:
    return run(torchrun_command(cell_yaml, nproc), timeout=timeout)


def assert_adapter_not_empty(cell_dir: Path) -> None:
    from safetensors.torch import load_file
    weights = load_file(Path(cell_dir) / "adapter" / "adapter_model.safetensors")
    lora_b = {k: w for k, w in weights.items() if "lora_B" in k}
    assert lora_b and all(w.numel() > 0 and w.abs().sum() > 0 for w in lora_b.values()), "adapter saved empty"


def metrics(cell_dir: Path) -> dict:
    return json.loads((Path(cell_dir) / "metrics.json").read_text())


def status(cell_dir: Path) -> dict:
    return json.loads((Path(cell_dir) / "status.json").read_text())


def explain(proc: subprocess.CompletedProcess) -> str:
    return f"exit {proc.returncode}\nSTDOUT:\n{proc.stdout[-3000:]}\nSTDERR:\n{proc.stderr[-3000:]}"


def free_port() -> int:
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def deepspeed_launcher(cell_yaml: Path, nproc: int = 1, timeout: float = CEILING_S) -> subprocess.CompletedProcess:
    """The DeepSpeed launcher, as `deepspeed --num_gpus N finetune/train.py --cell ...` (CPU: gloo)."""
    launcher = Path(sys.executable).parent / "deepspeed"
    return run([sys.executable, launcher, "--num_gpus", str(nproc), "--master_port", str(free_port()),
                TRAIN_PY, "--cell", cell_yaml], timeout=timeout)


def losses(m: dict) -> list[float]:
    """The logged training losses of a run, in step order."""
    return [h["loss"] for h in m["history"] if "loss" in h]


def wandb_runs(run_dir: Path) -> list[Path]:
    return sorted((Path(run_dir) / "wandb").glob("*run-*/run-*.wandb"))


def wandb_records(path: Path):
    """Records of a wandb run file (`run-<id>.wandb`), parsed with wandb's own protobuf messages.

    The file is a LevelDB-style log: a 7-byte header (":W&B", magic, version), then 32 KiB blocks of
    chunks, each a 7-byte header (crc32, length, type: 1 full, 2 first, 3 middle, 4 last) + payload."""
    import struct
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a wandb run file"
    pos, block, buf = 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if length == 0 and kind == 0:
            break
        buf += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(buf)
            buf = b""
            yield record


def wandb_summary(records) -> tuple[dict, dict, dict]:
    """(run facts, config, summary) from a run file's records; values JSON-decoded, last one wins."""
    run, config, summary = {}, {}, {}
    for r in records:
        kind = r.WhichOneof("record_type")
        if kind == "run":
            run = {"id": r.run.run_id, "group": r.run.run_group, "tags": list(r.run.tags),
                   "name": r.run.display_name, "project": r.run.project, "job_type": r.run.job_type}
            config.update({u.key: json.loads(u.value_json) for u in r.run.config.update})
        elif kind == "config":
            config.update({u.key: json.loads(u.value_json) for u in r.config.update})
        elif kind == "summary":
            summary.update({u.key or "/".join(u.nested_key): json.loads(u.value_json) for u in r.summary.update})
    return run, config, summary
