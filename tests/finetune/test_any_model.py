"""Any model: a folder holding config.json (+ weights, tokenizer) or a hub id plans and trains without a
registry entry. Five families the registry does not know (qwen2, gemma, phi3, olmo, falcon), saved as tiny
random models: the planner's parameter counts equal the built model's, PEFT's adapters match the planner's
trainable count, and one LoRA cell trains end to end. Bad names are one `error:` line and exit 2."""
import json
import subprocess
import sys

import pytest

from cells import ROOT, clean_env, explain, losses, make_cell, metrics, run, train

TINY_DIMS = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 vocab_size=1040, max_position_embeddings=512)
# model_type -> what makes each family itself (GQA/MQA, wide heads, fused projections, non-parametric norms)
FAMILIES = {"qwen2": dict(num_key_value_heads=2), "gemma": dict(num_key_value_heads=1, head_dim=32),
            "phi3": dict(num_key_value_heads=2), "olmo": {}, "falcon": dict(num_kv_heads=1)}
KNOWN = {"llama": dict(num_key_value_heads=2)}  # a registry family from a folder: its curated arch facts


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """model_type -> a folder with config.json, random weights (save_pretrained) and the project's tokenizer."""
    import torch
    import transformers
    from ftgrid.registry import TINY_TOKENIZER_DIR

    tok = transformers.AutoTokenizer.from_pretrained(str(TINY_TOKENIZER_DIR))
    root = tmp_path_factory.mktemp("models")
    out = {}
    for model_type, extra in {**FAMILIES, **KNOWN}.items():
        config = transformers.AutoConfig.for_model(model_type, **TINY_DIMS, **extra, bos_token_id=tok.bos_token_id,
                                                   eos_token_id=tok.eos_token_id, pad_token_id=None)
        assert model_type not in _registry_types() or model_type in KNOWN
        torch.manual_seed(0)
        model = transformers.AutoModelForCausalLM.from_config(config)
        out[model_type] = root / f"tiny-{model_type}"
        model.save_pretrained(out[model_type])
        tok.save_pretrained(out[model_type])
    return out


def _registry_types() -> set:
    from ftgrid.registry import registry
    return {s.model_type for s in registry().values()}


def _meta_params(folder) -> int:
    """Parameters of the model transformers builds from the folder's config, on the meta device."""
    import torch
    import transformers
    config = transformers.AutoConfig.from_pretrained(folder)
    with torch.device("meta"):
        return transformers.AutoModelForCausalLM.from_config(config).num_parameters()


@pytest.mark.parametrize("model_type", sorted(FAMILIES) + sorted(KNOWN))
def test_planner_counts_equal_the_built_model(folders, model_type):
    import peft
    import transformers
    from ftgrid.launch import plan
    from ftgrid.registry import model_spec

    folder = str(folders[model_type])
    spec = model_spec(folder)
    assert (spec.kind, spec.model_type, spec.name) == ("causal", model_type, folder)
    assert not spec.is_tiny and spec.pretrained_source == folder and spec.tokenizer == folder
    full = plan.plan_cell({"model": folder, "method": "full", "seq_len": 128}, gpu="a100-80gb")
    assert full.params == full.trainable == _meta_params(folder)
    assert full.fits and full.peak_gib > 0
    real = transformers.AutoModelForCausalLM.from_pretrained(folder)
    assert real.num_parameters() == full.params
    for targets in ("preset", "all-linear"):
        lora = plan.plan_cell({"model": folder, "method": "lora", "rank": 4, "target_modules": targets,
                               "seq_len": 128}, gpu="a100-80gb")
        names = list(spec.lora_preset if targets == "preset" else spec.linear)
        adapted = peft.get_peft_model(transformers.AutoModelForCausalLM.from_pretrained(folder),
                                      peft.LoraConfig(r=4, target_modules=names, task_type="CAUSAL_LM"))
        trainable, _ = adapted.get_nb_trainable_parameters()
        assert lora.trainable == trainable, (targets, names)
    if model_type in FAMILIES:  # all-linear is PEFT's own choice: every linear layer but the LM head
        assert "lm_head" not in spec.linear and set(spec.lora_preset) <= set(spec.linear)


# Other kinds and layouts, planned from a folder holding config.json only (what a login node may have).
CONFIG_ONLY = {
    "t5": ("seq2seq", "summarization", dict(d_model=64, d_ff=128, num_layers=2, num_heads=4, d_kv=16)),
    "pegasus": ("seq2seq", "summarization", dict(d_model=64, encoder_ffn_dim=128, decoder_ffn_dim=128,
                                                 encoder_layers=2, decoder_layers=1, encoder_attention_heads=4,
                                                 decoder_attention_heads=4)),
    "bert": ("encoder", "token-classification", dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                                     num_attention_heads=4)),
    "qwen2_moe": ("causal", "sft", dict(hidden_size=64, intermediate_size=128, moe_intermediate_size=32,
                                        shared_expert_intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                        num_key_value_heads=2, num_experts=4, num_experts_per_tok=2)),
}


@pytest.mark.parametrize("model_type", sorted(CONFIG_ONLY))
def test_config_only_folders_plan_exactly(tmp_path, model_type):
    import torch
    import transformers
    from ftgrid.launch import plan
    from ftgrid.registry import model_spec

    kind, task, dims = CONFIG_ONLY[model_type]
    config = transformers.AutoConfig.for_model(model_type, vocab_size=1040, **dims)
    config.save_pretrained(tmp_path)
    spec = model_spec(str(tmp_path))
    assert spec.kind == kind and "classifier" not in spec.linear
    cls = {"causal": transformers.AutoModelForCausalLM, "seq2seq": transformers.AutoModelForSeq2SeqLM,
           "encoder": transformers.AutoModelForTokenClassification}[kind]
    if kind == "encoder":
        config.num_labels = 2  # the head the planner counts for token classification
    with torch.device("meta"):
        built = cls.from_config(config).num_parameters()
    for method in ("full", "lora"):
        p = plan.plan_cell({"model": str(tmp_path), "method": method, "task": task, "seq_len": 128}, gpu="a100-80gb")
        assert p.params == built and p.trainable > 0
    if model_type == "qwen2_moe":
        assert spec.experts == 4 and spec.experts_per_token == 2 and spec.zero3_leaf_modules == ("Qwen2MoeSparseMoeBlock",)


def test_lora_cell_trains_from_a_folder(tmp_path, folders):
    cell = tmp_path / "qwen2-cell"
    proc = train(make_cell(cell, model=str(folders["qwen2"]), rank=4, max_steps=3, logging_steps=1, micro_batch=4,
                           seq_len=64, eval_rows=8, num_samples=0, lr=1e-2))
    assert proc.returncode == 0, explain(proc)
    m = metrics(cell)
    assert len(losses(m)) == 3 and all(0 < x < 20 for x in losses(m)), m["history"]
    assert m["base"] == str(folders["qwen2"]) and m["lr"] == 1e-2
    assert m["total_params"] - m["trainable_params"] == _meta_params(folders["qwen2"])
    assert (cell / "adapter" / "adapter_config.json").is_file()


def test_grid_plans_folders_and_per_model_weights(tmp_path, folders):
    """A sweep mixes registry names with their own weights, folders and methods; a weights folder the
    planning machine cannot see is a warning (the compute node may), and the cell's train.py refuses it."""
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(json.dumps({"name": "anymodel", "methods": ["lora", "full"], "datasets": ["wordnet:small"],
                                 "models": [{"name": "pythia-tiny", "weights": "/compute-only/pythia"},
                                            str(folders["gemma"])]}))
    out = tmp_path / "runs"
    proc = run([sys.executable, ROOT / "launch" / "grid.py", "--config", sweep, "--out", out, "--dry-run",
                "--executor", "local", "--gpu", "a100-80gb"])
    assert proc.returncode == 0, explain(proc)
    assert "warning: weights folder /compute-only/pythia is not visible here" in proc.stdout
    cells = {p.parent.name: p for p in out.glob("*/cell.yaml")}
    assert len(cells) == 4
    import yaml
    runs = {name: yaml.safe_load(p.read_text()) for name, p in cells.items()}
    pythia = [r for r in runs.values() if r["model"] == "pythia-tiny"]
    assert {r["weights"] for r in pythia} == {"/compute-only/pythia"}
    gemma = [r for r in runs.values() if r["model"] == str(folders["gemma"])]
    assert {r["method"]: r["lr"] for r in gemma} == {"lora": 2e-4, "full": 2e-5}  # lr by method
    assert yaml.safe_load((out / "sweep.yaml").read_text())["models"][0] == {"name": "pythia-tiny",
                                                                            "weights": "/compute-only/pythia"}
    cell = next(p for name, p in cells.items() if name.startswith("pythia-tiny_lora"))
    proc = train(cell)
    assert proc.returncode == 2, explain(proc)
    assert proc.stderr.strip() == "error: weights folder /compute-only/pythia does not exist here"


BAD_NAMES = [("{tmp}/empty", "holds no config.json"), ("{tmp}/nowhere", "does not exist"),
             ("{tmp}/alien", "cannot read this architecture"),
             ("someone/no-such-model", "hf download someone/no-such-model --local-dir DIR"),
             ("pythia-1.4", "did you mean 'pythia-1.4b'")]


@pytest.fixture
def bad_names(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "alien").mkdir()
    (tmp_path / "alien" / "config.json").write_text(json.dumps({"model_type": "no-such-arch"}))
    return [(name.format(tmp=tmp_path), says) for name, says in BAD_NAMES]


def test_bad_model_names_say_what_to_do(bad_names, monkeypatch):
    from ftgrid.errors import ConfigError
    from ftgrid.registry import model_spec
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no hub here: the hub id cannot be read
    for name, says in bad_names:
        with pytest.raises(ConfigError) as err:
            model_spec(name)
        assert says in str(err.value) and "\n" not in str(err.value)


def test_bad_model_is_one_error_line_before_anything_is_written(tmp_path, bad_names):
    for cmd in ([sys.executable, "-m", "ftgrid.launch.plan", "--model", bad_names[0][0]],
                [sys.executable, ROOT / "launch" / "grid.py", "--models", bad_names[3][0], "--dry-run",
                 "--out", tmp_path / "o"]):
        proc = run(cmd)  # offline (HF_HUB_OFFLINE=1)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:"), explain(proc)
    assert not (tmp_path / "o").exists()


def test_registry_import_stays_torch_free():
    code = ("import sys; from ftgrid.registry import model_spec; from ftgrid.launch import plan; "
            "plan.plan_cell({'model': 'mistral-7b'}, gpu='a100-80gb'); model_spec('pythia-1.4b'); "
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=clean_env(), capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", explain(proc)


def test_a_name_with_a_trailing_newline_is_no_hub_id():
    from ftgrid import autospec
    assert autospec.source_kind("owner/name") == "hub"
    assert autospec.source_kind("owner/name\n") is None  # `$` would match before the newline
