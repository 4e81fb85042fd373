"""The shipped demo base (`pythia-demo`): a registry entry whose weights live in the kit, pretrained by
scripts/pretrain_demo_base.py; it loads by name and has really learned English prose."""
import fnmatch
import json
import tomllib

import pytest
import torch

from ftgrid import KIT_ROOT
from ftgrid import schema as config
from ftgrid.registry import model_spec

ASSET = KIT_ROOT / "finetune" / "assets" / "pythia-demo"


def test_the_entry_points_at_shipped_weights_of_its_architecture():
    spec = model_spec("pythia-demo")
    assert not spec.is_tiny and spec.hub_id is None
    assert spec.pretrained_source == str(ASSET)  # resolved against the kit: a checkout or an installed wheel
    saved = json.loads((ASSET / "config.json").read_text())
    for fact, key in spec.config_keys.items():
        assert saved[key] == getattr(spec, fact), key
    size = (ASSET / "model.safetensors").stat().st_size
    assert 1 << 20 < size < 8 << 20  # a few MB: commit-sized
    # init auto = the shipped weights; pretrained is accepted (it is refused for the random *-tiny twins)
    assert config.from_dict({"model": "pythia-demo", "init": "pretrained"}).init == "pretrained"
    patterns = tomllib.loads((KIT_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    shipped = patterns["ftgrid.finetune.assets"]
    for path in ASSET.iterdir():
        assert any(fnmatch.fnmatch(f"pythia-demo/{path.name}", p) for p in shipped), path.name


def test_the_pretraining_record_matches_the_weights():
    record = json.loads((ASSET / "pretrain.json").read_text())
    assert "finetune/train.py" in record["command"] and "--method full" in record["command"]
    assert "--init random" in record["command"] and "--seed 0" in record["command"]
    assert record["eval_loss"] < record["initial_eval_loss"] - 2  # learned far past the uniform guess


@pytest.fixture(scope="module")
def loaded():
    from ftgrid.finetune import models
    cfg = config.from_dict({"model": "pythia-demo", "method": "lora", "rank": 4})
    spec = model_spec(cfg.model)
    tokenizer = models.load_tokenizer(spec, cfg)
    return models.build_model(spec, cfg, tokenizer), tokenizer


def test_it_loads_by_name_and_predicts_english_far_better_than_chance(loaded):
    """Mean next-token loss on sentences it never saw (its pretraining text is the Python documentation):
    a random model scores about ln(1024) = 6.93 nats."""
    model, tok = loaded
    text = ["The function returns a new list that contains every item of the sequence in order.",
            "If the file does not exist, an exception is raised and the program stops."]
    batch = tok(text, return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    with torch.no_grad():
        loss = model(**batch, labels=labels).loss.item()
    assert loss < 5.0, loss
