"""The lm-evaluation-harness hook scores a really trained tiny run with real lm_eval on local tasks."""
import json
import math
import os
import sys

import pytest

from cells import explain, make_cell, run, train
from ftgrid.finetune import lm_eval_hook
from ftgrid.finetune.lm_eval_hook import LmEvalError, model_args, parse_tasks
from ftgrid.errors import ConfigError

# Choices differ per doc; `same` repeats one string, so every choice of a doc scores the same.
DOCS = [
    dict(q="one", choices=["cat", "dog", "bird"], label=0),
    dict(q="two", choices=["red", "blue", "green"], label=1),
    dict(q="three", choices=["up", "down", "left"], label=2),
    dict(q="four", choices=["sun", "moon", "star"], label=0),
    dict(q="five", choices=["hot", "cold", "warm"], label=1),
    dict(q="six", choices=["a", "b", "c"], label=0),
    dict(q="seven", choices=["yes", "no", "maybe"], label=2),
    dict(q="eight", choices=["left", "right", "back"], label=1),
]
CONTEXT = "Q: {q}\nA:"
TASK = """\
task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: {output_type}
doc_to_text: "Q: {{{{q}}}}\\nA:"
{body}
"""
TASKS = {
    "hook_mc": ("multiple_choice", 'doc_to_choice: "{{choices}}"\ndoc_to_target: label\n'
                                   "metric_list:\n  - metric: acc\n"),
    "hook_same": ("multiple_choice", 'doc_to_choice: "{{[choices[0], choices[0], choices[0]]}}"\n'
                                     "doc_to_target: label\nmetric_list:\n  - metric: acc\n"),
    # loglikelihood requests get no target_delimiter (multiple_choice ones get " "): the space is ours.
    "hook_ll": ("loglikelihood", 'doc_to_target: " {{choices[label]}}"\nmetric_list:\n  - metric: perplexity\n'),
}


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm_eval_tasks")
    data = root / "docs.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    for name, (output_type, body) in TASKS.items():
        (root / f"{name}.yaml").write_text(TASK.format(name=name, data=data, output_type=output_type, body=body))
    return root


@pytest.fixture(scope="module")
def cell(tmp_path_factory, task_dir):
    """A run that asks the entrypoint for two local lm_eval tasks after training."""
    cell = tmp_path_factory.mktemp("lm_eval_cell") / "cell"
    proc = train(make_cell(cell, max_steps=10, num_samples=0, lm_eval_tasks="hook_mc,hook_ll",
                           lm_eval_include=str(task_dir)))
    assert proc.returncode == 0, explain(proc)
    assert (cell / "adapter" / "adapter_config.json").is_file() and (cell / "base" / "config.json").is_file()
    return cell


@pytest.fixture(scope="module")
def hand(cell):
    """Per-doc log-likelihoods of each choice (continuation " <choice>", as lm_eval asks for them),
    computed here with transformers + peft: with the adapter, and with it disabled (the base alone)."""
    import torch
    import transformers
    from peft import PeftModel

    tok = transformers.AutoTokenizer.from_pretrained(cell / "adapter")
    base = transformers.AutoModelForCausalLM.from_pretrained(cell / "base", dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(cell / "adapter")).eval()

    def ll(context: str, continuation: str) -> float:
        whole = tok(context + continuation).input_ids  # lm_eval splits the joint encoding after the context
        n = len(tok(context).input_ids)
        logp = model(torch.tensor([whole])).logits.log_softmax(-1)[0]
        return sum(logp[i - 1, whole[i]].item() for i in range(n, len(whole)))

    def table():
        return [[ll(CONTEXT.format(**d), " " + c) for c in d["choices"]] for d in DOCS]

    with torch.no_grad():
        adapter = table()
        with model.disable_adapter():
            base_only = table()
    return {"adapter": adapter, "base": base_only}


def expected(lls: list[list[float]], n: int = len(DOCS)) -> dict:
    """acc of hook_mc / hook_same and perplexity of hook_ll (exp of minus the mean target log-likelihood)."""
    labels = [d["label"] for d in DOCS[:n]]
    acc = sum(max(range(len(row)), key=row.__getitem__) == y for row, y in zip(lls, labels)) / n
    return {"hook_mc": acc, "hook_same": sum(y == 0 for y in labels) / n,  # ties: argmax takes the first
            "hook_ll": math.exp(-sum(row[y] for row, y in zip(lls, labels)) / n)}


@pytest.fixture(scope="module")
def adapter_results(cell, task_dir):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("HF_DATASETS_OFFLINE", "1")
        return lm_eval_hook.evaluate(str(cell / "adapter"), base=str(cell / "base"), tasks=list(TASKS),
                                     include_path=str(task_dir), batch_size=4)


def hook_cli(*args):
    return run([sys.executable, "-m", "finetune.lm_eval_hook", *args])


@pytest.mark.slow
def test_adapter_path_scores_the_trained_adapter(adapter_results, hand):
    r = adapter_results
    assert set(r) == set(TASKS)
    assert set(r["hook_mc"]) == {"acc", "acc_stderr"} and set(r["hook_ll"]) == {"perplexity", "perplexity_stderr"}
    assert 0.0 <= r["hook_mc"]["acc"] <= 1.0
    assert json.loads(json.dumps(r)) == r
    want, base = expected(hand["adapter"]), expected(hand["base"])
    assert r["hook_mc"]["acc"] == pytest.approx(want["hook_mc"])
    # The perplexity pins the model lm_eval ran: the base with the adapter, not the base alone.
    assert r["hook_ll"]["perplexity"] == pytest.approx(want["hook_ll"], rel=1e-4)
    assert abs(math.log(base["hook_ll"]) - math.log(want["hook_ll"])) > 1e-3, "adapter changes nothing?"


@pytest.mark.slow
def test_the_entrypoint_scores_its_saved_adapter_and_the_report_shows_it(cell, hand, tmp_path):
    m = json.loads((cell / "metrics.json").read_text())
    want = expected(hand["adapter"])
    assert set(m["lm_eval"]) == {"hook_mc", "hook_ll"}
    assert m["task_metrics"]["hook_mc/acc"] == pytest.approx(want["hook_mc"])
    assert m["task_metrics"]["hook_ll/perplexity"] == pytest.approx(want["hook_ll"], rel=1e-4)
    assert "hook_mc/acc_stderr" not in m["task_metrics"] and "acc_stderr" in m["lm_eval"]["hook_mc"]
    assert m["phase_seconds"]["lm_eval"] > 0
    report = run([sys.executable, "-m", "launch.report", cell.parent])
    assert report.returncode == 0, explain(report)
    import csv
    (row,) = list(csv.DictReader((cell.parent / "results.csv").open()))
    assert float(row["hook_mc/acc"]) == pytest.approx(want["hook_mc"], abs=1e-6)


def test_lm_eval_fields_are_validated():
    from ftgrid import schema as config
    with pytest.raises(config.ConfigError, match="lm_eval_tasks"):
        config.from_dict({"lm_eval_tasks": "a,,b"})
    with pytest.raises(config.ConfigError, match="causal language models"):
        config.from_dict({"model": "bart-tiny", "task": "summarization", "lm_eval_tasks": "hellaswag"})
    with pytest.raises(config.ConfigError, match="not a folder"):
        config.from_dict({"lm_eval_tasks": "x", "lm_eval_include": "/nonexistent/tasks"})
    with pytest.raises(config.ConfigError, match="lm_eval_limit"):
        config.from_dict({"lm_eval_limit": -1})


@pytest.mark.slow
def test_identical_choices_tie_to_the_first_so_acc_is_the_share_of_label_0(adapter_results):
    assert adapter_results["hook_same"]["acc"] == pytest.approx(3 / 8)


@pytest.mark.slow
def test_cli_scores_a_full_model_folder_with_limit_and_writes_json(cell, task_dir, hand, tmp_path):
    # The random base is a complete saved model: the full fine-tune path (pretrained= only).
    out = tmp_path / "res" / "lm_eval.json"
    proc = hook_cli("--model-dir", cell / "base", "--tasks", "hook_mc, hook_same,hook_ll",
                    "--include-path", task_dir, "--limit", "5", "--batch-size", "3", "--out", out)
    assert proc.returncode == 0, explain(proc)
    r = json.loads(out.read_text())
    want = expected(hand["base"][:5], n=5)
    assert r["hook_mc"]["acc"] == pytest.approx(want["hook_mc"])
    assert r["hook_same"]["acc"] == pytest.approx(2 / 5) == want["hook_same"]
    assert r["hook_ll"]["perplexity"] == pytest.approx(want["hook_ll"], rel=1e-4)
    # The table on stdout shows what the JSON holds.
    rows = [line.split() for line in proc.stdout.strip().splitlines()]
    assert rows[0] == ["task", "metric", "value"]
    assert {(t, m): float(v) for t, m, v in rows[1:]} == pytest.approx(
        {(t, m): v for t, ms in r.items() for m, v in ms.items()}, rel=1e-3)


@pytest.mark.parametrize("args, message", [
    (["--model-dir", "{tmp}/nope", "--tasks", "x"], "error: model dir {tmp}/nope does not exist"),
    (["--model-dir", "{tmp}/adapter", "--tasks", "x"],
     "error: {tmp}/adapter holds a LoRA adapter: pass --base (the model it was trained on)"),
    (["--model-dir", "{tmp}/model", "--tasks", "a,,b"], "error: empty task name in 'a,,b'"),
    (["--model-dir", "{tmp}/model", "--tasks", ""], "error: no tasks given"),
    (["--model-dir", "{tmp}/model", "--tasks", "x", "--limit", "0"], "error: argument --limit: must be an integer in [1, 1000000000], got '0' (see python -m finetune.lm_eval_hook --help)"),
    (["--tasks", "x"], "error: the following arguments are required: --model-dir (see python -m finetune.lm_eval_hook --help)"),
])
def test_cli_bad_input_exits_2_with_one_line(tmp_path, args, message):
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    proc = hook_cli(*[a.format(tmp=tmp_path) for a in args])
    assert proc.returncode == 2 and proc.stderr.strip() == message.format(tmp=tmp_path), explain(proc)
    assert proc.stdout == ""


@pytest.mark.slow  # lm_eval indexes its ~15k built-in task YAMLs first
def test_cli_unknown_task_exits_2_before_loading_the_model(tmp_path, task_dir):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")  # not loadable: the task check must come first
    proc = hook_cli("--model-dir", tmp_path / "model", "--tasks", "hook_mc,no_such_task",
                    "--include-path", task_dir)
    assert proc.returncode == 2, explain(proc)
    assert proc.stderr.strip() == "error: unknown lm_eval task(s): no_such_task" and proc.stdout == ""


def test_parse_tasks():
    assert parse_tasks("") == [] and parse_tasks("  ") == []
    assert parse_tasks("hellaswag") == ["hellaswag"]
    assert parse_tasks(" arc_easy, hellaswag ,mmlu ") == ["arc_easy", "hellaswag", "mmlu"]
    for bad in ("a,,b", "a,", ",a", " , "):
        with pytest.raises(ConfigError, match="empty task name"):
            parse_tasks(bad)


def test_model_args_adapter_loads_base_with_peft_and_the_runs_tokenizer(tmp_path):
    tmp_path = tmp_path.resolve()
    (tmp_path / "adapter").mkdir()
    (tmp_path / "base").mkdir()
    args = model_args(str(tmp_path / "adapter"), str(tmp_path / "base"), "float32", "cpu")
    assert args == dict(pretrained=str(tmp_path / "base"), peft=str(tmp_path / "adapter"),
                        tokenizer=str(tmp_path / "base"), dtype="float32", device="cpu")
    (tmp_path / "adapter" / "tokenizer_config.json").write_text("{}")  # the Trainer saved the run's tokenizer
    assert model_args(str(tmp_path / "adapter"), str(tmp_path / "base"), "bfloat16", "cuda")["tokenizer"] == \
        str(tmp_path / "adapter")


def test_model_args_full_model_paths_are_absolute(tmp_path, monkeypatch):
    # A relative path like runs/x/model is a valid-looking Hub repo id: lm_eval would ask the Hub for it.
    monkeypatch.chdir(tmp_path)
    args = model_args("runs/x/model", None, "float32", "cpu")
    path = str(tmp_path.resolve() / "runs" / "x" / "model")
    assert args == dict(pretrained=path, tokenizer=path, dtype="float32", device="cpu")


def test_missing_lm_eval_is_one_error_line(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    code = ("import sys; sys.modules['lm_eval'] = None  # what an uninstalled package looks like to import\n"
            "from finetune.lm_eval_hook import main; sys.exit(main(sys.argv[1:]))")
    proc = run([sys.executable, "-c", code, "--model-dir", tmp_path / "model", "--tasks", "x"])
    assert proc.returncode == 2, explain(proc)
    assert proc.stderr.strip() == \
        "error: lm_eval is not installed: pip install lm_eval==0.4.13 (or the project's dev extra)"


FORKS = {"watching": False, "seen": 0}


def _count_fork():
    FORKS["seen"] += FORKS["watching"]


@pytest.mark.slow
def test_scoring_never_forks_after_torch_threads_started(cell, task_dir, monkeypatch):
    """lm_eval bootstraps a perplexity's stderr in a fork-based Pool by default; a fork after torch's threads
    started hung a cell for good. The hook resamples in this process: the stderr is there, no fork happened."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    os.register_at_fork(before=_count_fork)
    FORKS.update(watching=True, seen=0)
    try:
        r = lm_eval_hook.evaluate(str(cell / "adapter"), base=str(cell / "base"), tasks=["hook_ll"],
                                  include_path=str(task_dir), batch_size=4)
    finally:
        FORKS["watching"] = False
    assert FORKS["seen"] == 0
    assert r["hook_ll"]["perplexity_stderr"] is not None and r["hook_ll"]["perplexity_stderr"] > 0
    assert "DISABLE_MULTIPROC" not in os.environ  # set for the evaluation only
