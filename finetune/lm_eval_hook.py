"""Optional hook to the EleutherAI lm-evaluation-harness: score a finished run's saved model or adapter.

    python -m finetune.lm_eval_hook --model-dir runs/x/cell/model --tasks hellaswag,arc_easy
    python -m finetune.lm_eval_hook --model-dir runs/x/cell/adapter --base runs/x/cell/base \\
        --tasks my_task --include-path my_tasks/ --limit 100 --out lm_eval.json

A LoRA run saves `adapter/` (its base is the hub model, or `<run dir>/base/` for random-init twins); a
full fine-tune saves `model/`. Model folders are local paths; nothing is downloaded by this module.
lm_eval is imported lazily so the training entrypoint works without it (it is in the `dev` extra).
Bad input: `LmEvalError` (a ValueError); the CLI prints it as one `error:` line and exits 2.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import re
import sys
from pathlib import Path

from ftgrid import startup
from ftgrid import validate
from ftgrid.cli import CliParser
from ftgrid.errors import ConfigError, one_line
from ftgrid.schema import parse_lm_eval_tasks as parse_tasks

LM_EVAL_PIN = "lm_eval==0.4.13"


class LmEvalError(ConfigError):
    """Bad input to the hook (or lm_eval missing): one line, meant for the user."""


def model_args(model_dir: str, base: str | None, dtype: str, device: str) -> dict:
    """lm_eval's `hf` model arguments: a full model loads from `model_dir`; an adapter loads `base`
    with `peft=model_dir`. The tokenizer comes from `model_dir` when it holds one: the Trainer saves the
    tokenizer the run trained with (pad token added) beside the adapter, which a hub base lacks.

    Paths are made absolute: lm_eval asks the Hub for the "sha" of `pretrained` and `peft`, and a
    relative path such as runs/cell looks like a repo id (a network call); /abs/path is refused at once."""
    path = Path(model_dir).resolve()
    if base is None:
        return dict(pretrained=str(path), tokenizer=str(path), dtype=dtype, device=device)
    base_path = base if is_hub_id(base) else str(Path(base).resolve())
    tokenizer = path if (path / "tokenizer_config.json").is_file() else base_path
    return dict(pretrained=base_path, peft=str(path), tokenizer=str(tokenizer), dtype=dtype, device=device)


def is_hub_id(name: str) -> bool:
    """`owner/name` of a Hugging Face model (the base of a LoRA run on a hub model), not a local path."""
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", name)) and not Path(name).exists()


def check_dirs(model_dir: str, base: str | None) -> None:
    """Fail before lm_eval loads anything (indexing its built-in tasks alone takes seconds)."""
    path = Path(model_dir)
    if not path.is_dir():
        raise LmEvalError(f"model dir {model_dir} does not exist")
    is_adapter = (path / "adapter_config.json").is_file()
    if is_adapter and base is None:
        raise LmEvalError(f"{model_dir} holds a LoRA adapter: pass --base (the model it was trained on)")
    if base is not None:
        if not is_adapter:
            raise LmEvalError(f"--base given but {model_dir} holds no adapter (no adapter_config.json)")
        if not Path(base).is_dir() and not is_hub_id(base):
            raise LmEvalError(f"base dir {base} does not exist")
    elif not (path / "config.json").is_file():
        raise LmEvalError(f"{model_dir} is not a model folder (no config.json)")


def flatten(results: dict) -> dict:
    """lm_eval's `results` -> {task: {metric: value}}. Metric keys are 'metric,filter': the default
    filter's ',none' is dropped (other filters stay as 'metric,filter'); 'acc_stderr' keeps its name.
    Non-metric fields (alias, name, sample_len) have no comma and are skipped. A stderr lm_eval could
    not compute is the string 'N/A' (skipped) or NaN (None: NaN is not valid JSON)."""
    out = {}
    for task, row in results.items():
        metrics = {}
        for key, value in row.items():
            if "," not in key or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            name, _, filt = key.partition(",")
            name = name if filt == "none" else key
            metrics[name] = float(value) if math.isfinite(value) else None
        out[task] = metrics
    return out


def _lm_eval():
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
    except ImportError as e:
        raise LmEvalError(f"lm_eval is not installed: pip install {LM_EVAL_PIN} (or the project's dev extra)") from e
    return lm_eval, TaskManager


def evaluate(model_dir: str, *, tasks: list[str], base: str | None = None, include_path: str | None = None,
             limit: int | None = None, batch_size: int = 8, device: str = "cpu",
             dtype: str = "float32") -> dict:
    """Run lm_eval's `simple_evaluate` on a saved model (`model_dir`) or adapter (`model_dir` + `base`).

    Returns {task: {metric: value}} (JSON-serialisable), or {} on the non-zero ranks of a multi-process
    run (lm_eval returns None there)."""
    if not tasks:
        raise LmEvalError("no tasks given")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise LmEvalError(f"limit must be a positive integer, got {limit!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise LmEvalError(f"batch_size must be a positive integer, got {batch_size!r}")
    check_dirs(model_dir, base)
    if include_path is not None and not Path(include_path).is_dir():
        raise LmEvalError(f"include path {include_path} does not exist")
    with startup.heavy_imports():
        lm_eval, TaskManager = _lm_eval()
        # One TaskManager for both the name check and the run: building it indexes every built-in YAML.
        manager = TaskManager(include_path=include_path)
    # lm_eval's own error for an unknown name is a KeyError deep in task loading, after the model loaded.
    unknown = [t for t in tasks if t not in manager.all_tasks and not Path(t).is_file()]
    if unknown:
        hint = "" if include_path else " (local task YAMLs need --include-path)"
        raise LmEvalError(f"unknown lm_eval task(s): {', '.join(unknown)}{hint}")
    # `device` goes in model_args only: simple_evaluate(device=...) would pass it a second time.
    with no_fork_bootstrap():
        out = lm_eval.simple_evaluate(model="hf", model_args=model_args(model_dir, base, dtype, device),
                                      tasks=list(tasks), limit=limit, batch_size=batch_size, task_manager=manager,
                                      log_samples=False, bootstrap_iters=BOOTSTRAP_ITERS)
    return {} if out is None else flatten(out["results"])


# Bootstrapped stderrs (perplexity, F1, ...) resample in this process: lm_eval's default bootstrap forks a
# multiprocessing.Pool, and a fork after torch's threads started can leave a worker stuck on a lock the
# fork copied held (seen: a cell hung after training, 0 s of CPU). 1000 resamples in-process take well
# under a second per metric and give the stderr to about 2%; closed-form stderrs (acc) do not resample.
BOOTSTRAP_ITERS = 1000


@contextlib.contextmanager
def no_fork_bootstrap():
    """lm_eval's switch for in-process bootstrap (DISABLE_MULTIPROC), set for the evaluation only."""
    before = os.environ.get("DISABLE_MULTIPROC")
    os.environ["DISABLE_MULTIPROC"] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("DISABLE_MULTIPROC", None)
        else:
            os.environ["DISABLE_MULTIPROC"] = before


def table(results: dict) -> str:
    rows = [(task, metric, "n/a" if v is None else f"{v:.4f}")
            for task, metrics in results.items() for metric, v in metrics.items()]
    head = ("task", "metric", "value")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(3)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [head, *rows])


def main(argv: list[str] | None = None) -> int:
    p = CliParser(prog="python -m finetune.lm_eval_hook", description=__doc__.splitlines()[0])
    p.add_argument("--model-dir", required=True, help="saved model/ (full) or adapter/ (LoRA) folder")
    p.add_argument("--base", help="the base an adapter was trained on (local folder)")
    p.add_argument("--tasks", required=True, help="comma list of lm_eval task names")
    p.add_argument("--include-path", help="folder of extra task YAMLs")
    p.add_argument("--limit", type=validate.arg_int(1, 10**9), help="at most N docs per task")
    p.add_argument("--batch-size", type=validate.arg_int(1, 2**16), default=8)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--out", help="write the results here as JSON")
    a = p.parse_args(argv)
    try:
        # lm_eval print()s progress ("bootstrapping for stddev: ..."): keep stdout for the table alone.
        with contextlib.redirect_stdout(sys.stderr):
            results = evaluate(a.model_dir, tasks=parse_tasks(a.tasks), base=a.base, include_path=a.include_path,
                               limit=a.limit, batch_size=a.batch_size, device=a.device, dtype=a.dtype)
    except ConfigError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    print(table(results))
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
