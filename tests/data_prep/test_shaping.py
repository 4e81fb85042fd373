"""Data shaping: split choice (`@SPLIT`), column mapping, chat template and prompt as run-config keys, and the
`python -m data_prep` preview of exactly what a cell trains on. Bad input is one `error:` line, exit 2."""
import json

import pytest
import yaml

from ftgrid import schema
from ftgrid.data_prep import catalog, sources
from ftgrid.data_prep.__main__ import main as data_prep_main
from ftgrid.data_prep.catalog import DataError
from ftgrid.launch import grid

SAMPLES = catalog.SAMPLES_DIR


@pytest.fixture
def io_file(tmp_path):
    path = tmp_path / "io.jsonl"
    path.write_text("".join(json.dumps({"Input": f"What follows {i}?", "Output": f"{i + 1} follows."}) + "\n"
                            for i in range(40)))
    return path


def cli(capsys, *argv):
    code = data_prep_main(["--no-cache", *map(str, argv)])
    out = capsys.readouterr()
    return code, out.out, out.err.strip().splitlines()


def one_error(code, err, expect):
    assert code == 2 and len(err) == 1 and err[0].startswith("error:") and expect in err[0], err


# --------------------------------------------------------------------------- splits


def test_split_suffix_on_hub_ids_catalogue_names_and_local_folders():
    hub = catalog.parse("hf:HuggingFaceH4/ultrachat_200k@train_gen:small")
    assert (hub.entry.source, hub.entry.split, hub.tier) == ("HuggingFaceH4/ultrachat_200k", "train_gen", "small")
    assert catalog.parse("hf:tatsu-lab/alpaca").entry.split == "train"
    named = catalog.parse("ultrachat-sample@train_gen")
    assert (named.entry.split, named.entry.eval_split) == ("train_gen", "test_sft")
    folder = catalog.parse(f"{SAMPLES / 'ultrachat'}@test_gen:10")
    rows = sources.load(folder.entry)
    import pyarrow.parquet as pq
    sizes = {s: pq.read_metadata(SAMPLES / "ultrachat" / f"{s}.parquet").num_rows for s in ("test_gen", "train_gen")}
    assert sizes["test_gen"] != sizes["train_gen"]
    assert folder.tier == 10 and len(rows) == sizes["test_gen"]
    assert len(sources.load(catalog.parse(f"{SAMPLES / 'ultrachat'}@test_gen+train_gen").entry)) == sum(sizes.values())
    assert sources.identity(folder.entry)["split"] == "test_gen"  # in the cache key


def test_a_split_that_does_not_exist_is_one_line(capsys):
    code, _, err = cli(capsys, "--dataset", f"{SAMPLES / 'ultrachat'}@train_gne")
    one_error(code, err, "no split 'train_gne'")
    assert "train_gen" in err[0]  # the splits found
    with pytest.raises(DataError, match="not a folder"):
        catalog.parse(f"{SAMPLES / 'dolly.jsonl'}@test")


# --------------------------------------------------------------------------- columns


def test_columns_map_a_file_onto_a_known_layout(capsys, io_file):
    code, _, err = cli(capsys, "--dataset", io_file)
    one_error(code, err, "no known format matches columns Input, Output")
    assert "--columns" in err[0]
    code, out, _ = cli(capsys, "--dataset", io_file, "--columns", "instruction=Input,output=Output")
    assert code == 0 and "format=alpaca" in out
    code, _, err = cli(capsys, "--dataset", io_file, "--columns", "instruction=Question,output=Output")
    one_error(code, err, "has no column 'Question'; its columns: Input, Output")
    code, _, err = cli(capsys, "--dataset", io_file, "--columns", "instruction")
    one_error(code, err, "LAYOUT=SOURCE pairs")


def test_columns_in_yaml_are_a_mapping_and_a_sweep_checks_them(tmp_path, io_file, capsys):
    cfg = schema.from_dict(yaml.safe_load(f"dataset: {io_file}\ncolumns: {{instruction: Input, output: Output}}\n"))
    assert schema.parse_columns(cfg.columns) == {"Input": "instruction", "Output": "output"}
    base = ["--models", "pythia-tiny", "--gpu", "cpu", "--datasets", str(io_file), "--dry-run"]
    assert grid.main(base + ["--out", str(tmp_path / "a")]) == 2
    assert "no known format matches" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()
    assert grid.main(base + ["--out", str(tmp_path / "b"), "--columns", "instruction=Input,output=Output"]) == 0
    (cell,) = (tmp_path / "b").glob("*/cell.yaml")
    assert yaml.safe_load(cell.read_text())["columns"] == "instruction=Input,output=Output"


# --------------------------------------------------------------------------- template and prompt


def test_preview_marks_what_is_trained_with_the_template_and_prompt(capsys, io_file):
    code, out, _ = cli(capsys, "--dataset", io_file, "--columns", "instruction=Input,output=Output",
                       "--template", "chatml", "--prompt", "Reply in words. {instruction}", "--seq-len", "128")
    assert code == 0
    preview = out.split("first training example", 1)[1].split("\n", 1)[1]
    assert preview.startswith("<|im_start|>user\nReply in words. What follows ")
    assert "<|im_start|>assistant\n\u27e6" in preview and preview.rstrip().endswith("\u27e7")
    trained = preview.split("\u27e6", 1)[1].split("\u27e7", 1)[0]
    assert " follows." in trained and "What follows" not in trained  # the prompt carries no loss


def test_summarization_prompt_replaces_the_built_in_one(capsys):
    code, out, _ = cli(capsys, "--dataset", "xsum-sample:small", "--task", "summarization", "--template", "plain",
                       "--prompt", "TL;DR of the article below.\n{document}", "--seq-len", "512")
    assert code == 0
    preview = out.split("first training example", 1)[1].split("\n", 1)[1]
    assert preview.startswith("TL;DR of the article below.\n") and "Summarize the following" not in preview
    code, _, err = cli(capsys, "--dataset", "xsum-sample:small", "--task", "summarization", "--prompt", "{doc}")
    one_error(code, err, "prompt names field {doc}")


def test_a_jinja_file_template_and_one_with_undefined_fields(capsys, tmp_path, io_file):
    good = tmp_path / "qa.jinja"
    good.write_text("{% for m in messages %}{% if m['role'] == 'user' %}Q: {{ m['content'] }}\n"
                    "{% else %}A: {{ m['content'] + eos_token }}{% endif %}{% endfor %}"
                    "{% if add_generation_prompt %}A: {% endif %}")
    code, out, _ = cli(capsys, "--dataset", io_file, "--columns", "instruction=Input,output=Output",
                       "--template", good)
    assert code == 0 and "template=file:qa.jinja" in out and "Q: What follows" in out and "A: \u27e6" in out
    bad = tmp_path / "bad.jinja"
    bad.write_text("{% for m in mesages %}{{ m.content }}{% endfor %}{{ sytem_prompt }}")
    code, _, err = cli(capsys, "--dataset", io_file, "--columns", "instruction=Input,output=Output",
                       "--template", bad)
    one_error(code, err, "uses undefined mesages, sytem_prompt")
    broken = tmp_path / "broken.jinja"
    broken.write_text("{% for m in messages %}{{ m.content }")
    code, _, err = cli(capsys, "--dataset", io_file, "--columns", "instruction=Input,output=Output",
                       "--template", broken)
    one_error(code, err, "line 1")


def test_template_and_prompt_are_run_config_keys():
    cfg = schema.from_dict({"template": "chatml", "prompt": "Be brief. {instruction}"})
    assert (cfg.template, cfg.prompt) == ("chatml", "Be brief. {instruction}")
    for bad, expect in (({"template": "chatmll"}, "did you mean 'chatml'"),
                        ({"prompt": "{document}"}, "sft data does not have"),
                        ({"task": "token-classification", "model": "roberta-tiny", "prompt": "x {instruction}"},
                         "prompt applies to"),
                        ({"prompt": "a {"}, "literal brace")):
        with pytest.raises(schema.ConfigError, match=expect):
            schema.from_dict(bad)


def test_the_preview_of_a_cell_is_that_cells_data(capsys, tmp_path, io_file):
    cell = tmp_path / "cell.yaml"
    cell.write_text(yaml.safe_dump({"dataset": str(io_file), "columns": "instruction=Input,output=Output",
                                    "template": "alpaca", "prompt": "Count on. {instruction}", "seq_len": 96}))
    code, out, _ = cli(capsys, "--cell", cell)
    assert code == 0 and "seq_len=96" in out and "template=alpaca" in out and "packed into" in out
    preview = out.split("first training example", 1)[1].split("\n", 1)[1]
    assert preview.startswith("### Instruction:\nCount on. What follows ") and "### Response:\n\u27e6" in preview
    assert preview.count("### Instruction") == 1  # a packed row is cut to its first example
