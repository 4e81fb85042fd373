"""Grid expansion: pure, deterministic, validated (no Jinja, no SLURM, no files)."""
import dataclasses

import pytest

from finetune.config import ConfigError
from launch.spec import Resources, SweepSpec, cell_id, expand, resolve_alpha


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
