"""Grid expansion: pure, deterministic, validated (no Jinja, no SLURM, no files)."""
import dataclasses
import re

import pytest

from ftgrid.errors import ConfigError
from ftgrid.launch.spec import (Resources, SweepSpec, accumulation, cell_id, container_flags, expand, parse_hostfile,
                         resolve_alpha, sbatch_line, setup_line, validate_resources)


def test_product_of_axes_with_stable_readable_ids():
    spec = SweepSpec(models=["pythia-1.4b", "mistral-7b"], ranks=[16, 64], lrs=[1e-4, 3e-4], seeds=[0, 1])
    cells = expand(spec)
    assert len(cells) == 2 * 2 * 2 * 2
    assert len({c.id for c in cells}) == len(cells)
    again = expand(SweepSpec(models=["pythia-1.4b", "mistral-7b"], ranks=[16, 64], lrs=[1e-4, 3e-4], seeds=[0, 1]))
    assert [c.id for c in cells] == [c.id for c in again]
    first = cells[0]
    assert first.id.startswith("pythia-1.4b_lora_r16_a32_lr1e-04_wordnet-small_s0_")
    assert first.run["rank"] == 16 and first.run["alpha"] == 32.0 and first.run["name"] == first.id


def test_id_changes_with_any_setting_but_not_with_order_of_keys():
    base = expand(SweepSpec(models=["pythia-tiny"], ranks=[8]))[0]
    other = expand(SweepSpec(models=["pythia-tiny"], ranks=[8], train={"seq_len": 128}))[0]
    assert base.id != other.id
    assert base.id.rsplit("_", 1)[0] == other.id.rsplit("_", 1)[0]  # same readable part, other hash
    shuffled = dict(reversed(list(base.run.items())))
    assert cell_id({k: v for k, v in shuffled.items() if k != "name"}, Resources()) == \
        cell_id({k: v for k, v in base.run.items() if k != "name"}, Resources())


def test_alpha_as_multiple_of_rank():
    assert resolve_alpha("2r", 16) == 32.0
    assert resolve_alpha("0.5r", 64) == 32.0
    assert resolve_alpha(8, 64) == 8.0
    cells = expand(SweepSpec(ranks=[4, 8], alphas=["2r", 16]))
    assert sorted((c.run["rank"], c.run["alpha"]) for c in cells) == [(4, 8.0), (4, 16.0), (8, 16.0)]


def test_full_finetuning_collapses_rank_and_alpha():
    cells = expand(SweepSpec(methods=["full", "lora"], ranks=[4, 8]))
    full = [c for c in cells if c.run["method"] == "full"]
    assert len(full) == 1 and full[0].run["rank"] is None and full[0].run["alpha"] is None
    assert len(cells) == 3


@pytest.mark.parametrize("change, message", [
    (dict(models=["pythia-1.4bb"]), "unknown model 'pythia-1.4bb' (did you mean 'pythia-1.4b'?)"),
    (dict(ranks=[0]), "rank must be a positive integer, got 0"),
    (dict(ranks=[-4]), "rank must be a positive integer, got -4"),
    (dict(alphas=["-1"]), "alpha must be positive"),
    (dict(alphas=["xr"]), "alpha 'xr' is not a number"),
    (dict(methods=["lorra"]), "unknown method 'lorra' (did you mean 'lora'?)"),
    (dict(lrs=[0.0]), "lr must be positive, got 0.0"),
    (dict(seeds=[]), "axis 'seeds' is empty"),
    (dict(train={"seq_len": 4096}), "seq_len 4096 exceeds pythia-tiny's limit of 512"),
])
def test_bad_values_fail_with_one_clear_line(change, message):
    spec = dataclasses.replace(SweepSpec(), **change)
    with pytest.raises(ConfigError) as err:
        expand(spec)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


# --- zip, include/exclude, tasks, global batch ------------------------------------------------


def test_zipped_axes_move_together():
    cells = expand(SweepSpec(ranks=[4, 8, 16], alphas=[8, 16, 64], lrs=[1e-3, 3e-3], zip=["ranks", "alphas"]))
    assert sorted({(c.run["rank"], c.run["alpha"]) for c in cells}) == [(4, 8.0), (8, 16.0), (16, 64.0)]
    assert len(cells) == 3 * 2  # (rank, alpha) pairs x lrs, not 3 x 3 x 2


def test_several_zip_groups_and_order_of_cells():
    spec = SweepSpec(ranks=[4, 8], alphas=["2r", "4r"], lrs=[1e-3, 3e-3], seeds=[0, 1],
                     zip=[["ranks", "alphas"], ["lrs", "seeds"]])
    cells = expand(spec)
    assert [(c.run["rank"], c.run["alpha"], c.run["lr"], c.run["seed"]) for c in cells] == [
        (4, 8.0, 1e-3, 0), (4, 8.0, 3e-3, 1), (8, 32.0, 1e-3, 0), (8, 32.0, 3e-3, 1)]


@pytest.mark.parametrize("zip_, message", [
    (["ranks", "alphas"], "zip: zipped axes need equal lengths, got ranks 2, alphas 3"),
    (["ranks", "alpha"], "zip: unknown axis 'alpha' (did you mean 'alphas'?)"),
    ([["ranks", "alphas"], ["alphas", "lrs"]], "zip: axis 'alphas' is in more than one group"),
])
def test_bad_zip(zip_, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        expand(SweepSpec(ranks=[4, 8], alphas=[8, 16, 32], lrs=[1, 2], zip=zip_))


def test_exclude_rule_drops_matching_cells_only():
    spec = SweepSpec(models=["pythia-1.4b", "mixtral-8x7b"], methods=["full", "lora"],
                     exclude=[{"model": "mixtral-8x7b", "method": "full"}])
    got = sorted((c.run["model"], c.run["method"]) for c in expand(spec))
    assert got == [("mixtral-8x7b", "lora"), ("pythia-1.4b", "full"), ("pythia-1.4b", "lora")]


def test_include_rules_keep_cells_matching_any_and_values_may_be_lists():
    spec = SweepSpec(models=["pythia-160m", "pythia-410m", "pythia-1.4b"], ranks=[8, 64], lrs=["1e-4", "3e-4"],
                     include=[{"model": ["pythia-160m", "pythia-410m"], "rank": 8}, {"lr": 3e-4, "rank": 64}])
    got = sorted((c.run["model"], c.run["rank"], c.run["lr"]) for c in expand(spec))
    assert got == [("pythia-1.4b", 64, 3e-4), ("pythia-160m", 8, 1e-4), ("pythia-160m", 8, 3e-4),
                   ("pythia-160m", 64, 3e-4), ("pythia-410m", 8, 1e-4), ("pythia-410m", 8, 3e-4),
                   ("pythia-410m", 64, 3e-4)]


def test_exclude_wins_over_include_and_alpha_rules_match_given_or_resolved():
    spec = SweepSpec(ranks=[8, 16], alphas=["2r", 16], include=[{"rank": [8, 16]}], exclude=[{"alpha": 32}])
    assert sorted((c.run["rank"], c.run["alpha"]) for c in expand(spec)) == [(8, 16.0), (16, 16.0)]
    spec = dataclasses.replace(spec, exclude=[{"alpha": "2r"}])
    assert sorted((c.run["rank"], c.run["alpha"]) for c in expand(spec)) == [(8, 16.0), (16, 16.0)]


def test_rank_rules_never_match_full_fine_tuning():
    spec = SweepSpec(methods=["full", "lora"], ranks=[8, 16], exclude=[{"rank": 8}])
    assert sorted((c.run["method"], c.run["rank"]) for c in expand(spec)) == [("full", None), ("lora", 16)]


@pytest.mark.parametrize("rules, message", [
    (dict(exclude=[{"modle": "pythia-tiny"}]), "exclude rule 1: unknown key 'modle' (did you mean 'model'?)"),
    (dict(exclude=[{"model": "mixtral-8x7bb"}]), "exclude rule 1: model 'mixtral-8x7bb' is not on the models axis"),
    (dict(include=[{"rank": 32}]), "include rule 1: rank 32 is not on the ranks axis"),
    (dict(include=["model=pythia-tiny"]), "include rule 1 must be a mapping"),
    (dict(exclude=[{"model": "pythia-tiny"}]), "the include/exclude rules leave no cells"),
])
def test_bad_rules(rules, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        expand(dataclasses.replace(SweepSpec(ranks=[8]), **rules))


def test_all_unknown_names_in_one_line():
    spec = SweepSpec(models=["pythia-1.4bb", "mistral-7b"], methods=["lorra"], tasks=["sfft"])
    with pytest.raises(ConfigError) as err:
        expand(spec)
    text = str(err.value)
    assert "\n" not in text
    for part in ("unknown model 'pythia-1.4bb' (did you mean 'pythia-1.4b'?)",
                 "unknown method 'lorra' (did you mean 'lora'?)", "unknown task 'sfft' (did you mean 'sft'?)"):
        assert part in text


def test_tasks_axis_takes_the_run_configs_tasks():
    from ftgrid import schema as config
    assert set(config.TASKS) >= {"sft"}
    cells = expand(SweepSpec(tasks=list(config.TASKS)[:1]))
    assert cells[0].run["task"] == config.TASKS[0]
    if "dpo" in config.TASKS:  # finetune grows its tasks; the axis follows without a change here
        dpo = expand(SweepSpec(tasks=["sft", "dpo"]))
        assert sorted(c.run["task"] for c in dpo) == ["dpo", "sft"]
        assert "_dpo_s0_" in [c for c in dpo if c.run["task"] == "dpo"][0].id


def test_global_batch_sets_accumulation_from_micro_batch_and_world_size():
    res = Resources(nodes=2, gpus_per_node=4)
    (cell,) = expand(SweepSpec(global_batch=64, train={"micro_batch": 2}, resources=res))
    assert cell.run["grad_accum"] == 4 and cell.run["micro_batch"] * 4 * res.world_size == 64
    assert accumulation(64, 8, 1) == 8
    with pytest.raises(ConfigError, match=r"global batch 100 is not a positive multiple of micro_batch 8 x world "
                                          r"size 8 = 64"):
        accumulation(100, 8, 8)
    with pytest.raises(ConfigError, match="give grad_accum or global_batch, not both"):
        expand(SweepSpec(global_batch=64, train={"grad_accum": 2}))


def test_cell_id_ignores_queue_settings_but_not_world_size():
    base = expand(SweepSpec())[0].id
    queue = Resources(time="01:00:00", partition="x", setup=("module load a",), launcher="deepspeed")
    assert expand(SweepSpec(resources=queue))[0].id == base
    assert expand(SweepSpec(resources=Resources(gpus_per_node=2)))[0].id != base


# --- cluster-side values -------------------------------------------------------------------------


def test_extra_sbatch_lines():
    assert sbatch_line("--mail-type=END") == ("mail-type", "END")
    assert sbatch_line("mail-user=me@example.org") == ("mail-user", "me@example.org")
    assert sbatch_line("--gres-flags=enforce-binding") == ("gres-flags", "enforce-binding")
    assert sbatch_line("--overcommit") == ("overcommit", None)


@pytest.mark.parametrize("line, message", [
    ("--comment=two words", "must look like --key=value or --flag"),
    ("--comment=x\n#SBATCH --mem=1T", "must look like --key=value or --flag"),
    ("--comment=$(reboot)", "must look like --key=value or --flag"),
    ("-C a100", "must look like --key=value or --flag"),
    ("--time=01:00:00", "sets --time, which the sweep renders itself (time)"),
    ("--output=/tmp/x", "sets --output"),
])
def test_bad_sbatch_lines(line, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate_resources(Resources(sbatch=(line,)))


def test_setup_lines_are_verbatim_but_one_line_each():
    assert setup_line('source "$HOME/venv/bin/activate" && module load cuda/12') == \
        'source "$HOME/venv/bin/activate" && module load cuda/12'
    for bad in ("module load a\nmodule load b", "x\r", "a\0b"):
        with pytest.raises(ConfigError, match="holds a line break"):
            validate_resources(Resources(setup=(bad,)))


def test_container_flags():
    assert container_flags({"image": "nvcr.io/nvidia/pytorch:24.05-py3", "container-mounts": "/d:/d",
                            "mount-home": False, "writable": "true", "readonly": False}) == [
        ("--container-mounts", "/d:/d"), ("--container-image", "nvcr.io/nvidia/pytorch:24.05-py3"),
        ("--no-container-mount-home", None), ("--container-writable", None)]
    with pytest.raises(ConfigError, match=r"unknown container key 'imgae' \(did you mean 'image'\?\)"):
        container_flags({"imgae": "x"})
    with pytest.raises(ConfigError, match="container image takes one line of text"):
        container_flags({"image": "a\nb"})
    with pytest.raises(ConfigError, match="container flags need the torchrun launcher"):
        validate_resources(Resources(container={"image": "x"}, launcher="deepspeed"))


@pytest.mark.parametrize("change, message", [
    (dict(constraint="a100;reboot"), "constraint 'a100;reboot' has characters"),
    (dict(launcher="mpirun"), "unknown launcher 'mpirun'"),
])
def test_bad_resources(change, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate_resources(Resources(**change))


def test_hostfile():
    assert parse_hostfile("# cluster\nnode-1 slots=8\n\nnode-2   slots=8  # spare\n") == (("node-1", 8), ("node-2", 8))
    for text, message in [("node-1 slots=8\nnode-2 slot=8\n",
                           "hosts.txt line 2: 'node-2 slot=8' is not `HOST slots=N`"),
                          ("node-1 slots=0\n", "hosts.txt line 1: 'node-1 slots=0' is not"),
                          ("node-1 slots=8\nnode-1 slots=8\n", "line 2: host 'node-1' is listed twice"),
                          ("a slots=8\nb slots=4\n", "line 2: slots=4 differs from slots=8 of a"),
                          ("# nothing\n", "hosts.txt lists no hosts")]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            parse_hostfile(text, "hosts.txt")
