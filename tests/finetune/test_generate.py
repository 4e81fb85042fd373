"""Generations from a trained cell (the train.py post-step and finetune/generate.py) and the report's
LLM-as-judge column, on a tiny cell trained for a few steps on a file mapped with `columns:`."""
import json
import shutil
import sys

import pytest

from cells import ROOT, make_cell, run, train

GENERATE = ROOT / "finetune" / "generate.py"
CEILING = 1800  # generous: a loaded machine must not fail these


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen")
    data = root / "qa.jsonl"
    data.write_text("".join(json.dumps({"Input": f"Name the number after {i}.", "Output": f"It is {i + 1}."}) + "\n"
                            for i in range(80)))
    prompts = root / "prompts.jsonl"
    prompts.write_text(json.dumps({"id": "a", "prompt": "Name the number after 3."}) + "\n"
                       + json.dumps({"prompt": "Name the number after 41."}) + "\n"
                       + json.dumps({"messages": [{"role": "user", "content": "Name the number after 7."}]}) + "\n")
    cell = root / "sweep" / "cell-a"
    make_cell(cell, dataset=str(data), columns="instruction=Input,output=Output", template="chatml",
              prompt="Answer briefly. {instruction}", generate_prompts=str(prompts), max_steps=3, eval_rows=8,
              num_samples=0, max_new_tokens=12)
    proc = train(cell / "cell.yaml", timeout=CEILING)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return cell, prompts


def test_training_ends_with_generations_of_the_users_prompts(trained):
    cell, _ = trained
    lines = read_jsonl(cell / "generations.jsonl")
    assert [g["id"] for g in lines] == ["a", 1, 2]
    assert lines[0]["prompt"] == "Name the number after 3."
    # Rendered as training rendered its prompts: the cell's chat template and its `prompt:`.
    assert lines[0]["rendered_prompt"].endswith(
        "<|im_start|>user\nAnswer briefly. Name the number after 3.<|im_end|>\n<|im_start|>assistant\n")
    for g in lines:
        assert (g["max_new_tokens"], g["temperature"], g["top_p"], g["do_sample"]) == (12, 0.0, 1.0, False)
        assert 0 < g["new_tokens"] <= 12 or g["stopped_at_eos"]
    assert json.loads((cell / "metrics.json").read_text())["generations"] == 3


def test_generate_cli_reloads_the_trained_cell(trained, tmp_path):
    cell, prompts = trained
    out = tmp_path / "greedy"
    proc = run([sys.executable, GENERATE, "--cell", cell, "--prompts", prompts, "--out", out], timeout=CEILING)
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = read_jsonl(out / "generations.jsonl")
    # Greedy from the saved base + adapter gives what the in-memory trained model gave.
    assert [g["response"] for g in again] == [g["response"] for g in read_jsonl(cell / "generations.jsonl")]
    sampled = tmp_path / "sampled"
    proc = run([sys.executable, GENERATE, "--cell", cell, "--prompts", prompts, "--out", sampled,
                "--temperature", "0.9", "--top-p", "0.8", "--max-new-tokens", "5", "--seed", "3"], timeout=CEILING)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for g in read_jsonl(sampled / "generations.jsonl"):
        assert (g["temperature"], g["top_p"], g["do_sample"], g["seed"], g["max_new_tokens"]) == (0.9, 0.8, True, 3, 5)
        assert g["new_tokens"] <= 5


def test_generate_reads_a_run_without_cell_yaml_from_its_resolved_config(trained, tmp_path):
    """A one-off `train.py --out` run has no cell.yaml; every run records resolved.yaml."""
    cell, prompts = trained
    copy = tmp_path / "one-off"
    shutil.copytree(cell, copy, ignore=shutil.ignore_patterns("cell.yaml", "checkpoints"))
    assert (copy / "resolved.yaml").is_file()
    proc = run([sys.executable, GENERATE, "--cell", copy, "--prompts", prompts, "--out", tmp_path / "o"],
               timeout=CEILING)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [g["response"] for g in read_jsonl(tmp_path / "o" / "generations.jsonl")] == \
        [g["response"] for g in read_jsonl(cell / "generations.jsonl")]
    (tmp_path / "empty").mkdir()
    proc = run([sys.executable, GENERATE, "--cell", tmp_path / "empty", "--prompts", prompts], timeout=CEILING)
    assert proc.returncode == 2 and "no cell.yaml or resolved.yaml at" in proc.stderr


@pytest.mark.parametrize("case,expect", [
    ("no-model", "has no trained adapter/ yet"), ("bad-line", "line 2: not JSON"),
    ("no-field", "needs a \"prompt\" text"), ("temperature", "temperature must be in"),
    ("seed", "argument --seed: must be an integer in [0, 4294967295], got '-5'"),
    ("max-new-tokens", "argument --max-new-tokens: must be an integer in [1, 1048576], got '0'"),
])
def test_generate_bad_input_is_one_line(trained, tmp_path, case, expect):
    cell, prompts = trained
    args = ["--cell", cell, "--prompts", prompts, "--out", tmp_path / "o"]
    if case == "no-model":
        make_cell(tmp_path / "untrained")
        args[1] = tmp_path / "untrained"
    elif case in ("bad-line", "no-field"):
        bad = tmp_path / "bad.jsonl"
        bad.write_text('{"prompt": "ok"}\n' + ("{oops\n" if case == "bad-line" else '{"text": "x"}\n'))
        args[3] = bad
    else:
        args += {"temperature": ["--temperature", "-1"], "seed": ["--temperature", "1", "--seed", "-5"],
                 "max-new-tokens": ["--max-new-tokens", "0"]}[case]  # 0 was taken as "the cell's default"
    proc = run([sys.executable, GENERATE, *args], timeout=CEILING)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(err) == 1 and err[0].startswith("error:") and expect in err[0], proc.stderr
    assert not (tmp_path / "o").exists()


def judge_script(tmp_path, body: str):
    script = tmp_path / "judge.py"
    script.write_text("import json, sys\n" + body)
    return f"{sys.executable} {script}"


def test_report_judge_column_is_the_mean_score_per_cell(trained, tmp_path):
    cell, _ = trained
    sweep = cell.parent
    command = judge_script(tmp_path, "for line in sys.stdin:\n"
                                     "    pair = json.loads(line)\n"
                                     "    assert set(pair) == {'cell', 'id', 'prompt', 'response'}\n"
                                     "    print(len(pair['response']))\n")
    proc = run([sys.executable, "-m", "launch.report", sweep, "--judge", command, "--no-plots"], timeout=CEILING)
    assert proc.returncode == 0, proc.stderr[-3000:]
    expected = sum(len(g["response"]) for g in read_jsonl(cell / "generations.jsonl")) / 3
    import csv
    rows = list(csv.DictReader((sweep / "results.csv").open()))
    assert float(rows[0]["judge_score"]) == pytest.approx(expected)
    assert "judge_score" in (sweep / "results.md").read_text()


@pytest.mark.parametrize("body,expect", [
    ("sys.exit('no API key')", "failed on cell cell-a (exit 1): no API key"),
    ("for line in sys.stdin:\n    print('great')\n", "printed 'great' for cell cell-a, not a number"),
    ("print(1)\n", "printed 1 line(s) for the 3 pair(s)"),
])
def test_a_failing_judge_is_one_error_line(trained, tmp_path, body, expect):
    sweep = trained[0].parent
    before = (sweep / "results.csv").read_text() if (sweep / "results.csv").exists() else None
    proc = run([sys.executable, "-m", "launch.report", sweep, "--judge", judge_script(tmp_path, body), "--no-plots"],
               timeout=CEILING)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(err) == 1 and expect in err[0], proc.stderr
    after = (sweep / "results.csv").read_text() if (sweep / "results.csv").exists() else None
    assert after == before  # nothing written


def test_judge_command_is_not_run_by_a_shell(trained, tmp_path):
    sweep = trained[0].parent
    marker = tmp_path / "pwned"
    proc = run([sys.executable, "-m", "launch.report", sweep, "--judge", f"true; touch {marker}", "--no-plots"],
               timeout=CEILING)
    assert proc.returncode == 2 and "not found" in proc.stderr and not marker.exists()
