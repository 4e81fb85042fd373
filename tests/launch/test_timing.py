"""launch/timing.py: FLOPs by hand, hours that scale with the data, the rendered --time and its warning."""
from pathlib import Path

import pytest

from ftgrid.launch import grid, timing
from ftgrid.launch.spec import slurm_time_minutes

PYTHIA_14B_MATMUL = 24 * (2048 * 6144 + 2048 * 2048 + 2 * 2048 * 8192) + 50304 * 2048  # blocks + lm_head


def test_pythia_14b_flops_match_a_hand_count():
    full = timing.flop_counts({"model": "pythia-1.4b", "method": "full"})
    assert full["N"] == PYTHIA_14B_MATMUL and (full["c"], full["L"], full["d"]) == (6, 24, 2048)
    assert full["trainable"] == 1_414_647_808  # FACTS: every parameter trains
    lora = timing.flop_counts({"model": "pythia-1.4b", "method": "lora", "rank": 16})
    assert lora["trainable"] == 24 * 16 * (2048 + 6144) and lora["c"] == 4  # r16 on query_key_value
    attn = 12 * 24 * 2048 * 2048
    assert timing.token_flops(**_args(full), context=2048) == 6 * PYTHIA_14B_MATMUL + attn
    assert timing.token_flops(**_args(lora), context=2048) == 4 * PYTHIA_14B_MATMUL + 6 * lora["trainable"] + attn
    # the benchmark's per-example count is the same function
    assert timing.example_flops(2048, lora) == 2048 * timing.token_flops(**_args(lora), context=2048)
    ckpt = timing.flop_counts({"model": "pythia-1.4b", "method": "lora", "grad_ckpt": True})
    assert ckpt["c"] == 6


def _args(f):
    return dict(n_matmul=f["N"], trainable=f["trainable"], c=f["c"], layers=f["L"], hidden=f["d"])


def test_hours_scale_with_epochs_and_tier():
    base = dict(model="pythia-1.4b", dataset="alpaca:medium", seq_len=512)
    one = timing.estimate(base, gpu="h100-80gb")
    two = timing.estimate(dict(base, epochs=2), gpu="h100-80gb")
    large = timing.estimate(dict(base, dataset="alpaca:large"), gpu="h100-80gb")
    # the two evaluations (before and after training) do not scale with epochs
    assert two.steps == 2 * one.steps and two.hours == pytest.approx(2 * one.hours, rel=0.05)
    assert two.hours - one.hours == pytest.approx(one.steps * one.step_s / 3600)
    assert large.steps == pytest.approx(10 * one.steps, rel=0.02)  # tiers are decades (large: less the hold-out)
    assert 9 * one.hours < large.hours < 10 * one.hours
    eight = timing.estimate(base, gpu="h100-80gb", gpus=8)
    assert eight.gpu_hours == pytest.approx(8 * eight.hours) and eight.hours < one.hours / 4


def test_unknown_dataset_size_gives_no_estimate(tmp_path):
    data = tmp_path / "mine.jsonl"
    data.write_text('{"instruction": "a", "output": "b"}\n')
    assert timing.estimate({"model": "pythia-tiny", "dataset": str(data)}, gpu="cpu") is None
    assert timing.predicted_time([None])[0] == timing.DEFAULT_TIME


def test_measured_rows_are_parsed():
    rate = timing.measured_flops(timing.RESULTS_DIR / "cpu_pythia-tiny.md")
    assert rate == pytest.approx(27_674 * 0.0008364e9)  # the fastest kit row x counted FLOPs per token


def test_time_limit_follows_the_prediction():
    est = timing.estimate(dict(model="pythia-1.4b", dataset="alpaca", seq_len=2048), gpu="h100-80gb")
    text, why = timing.predicted_time([est, None])
    assert slurm_time_minutes(text) == -(-est.hours * 60 * 1.5 // 1) + 10
    assert "longest cell" in why
    assert timing.minutes_text(3 * 24 * 60 + 61) == "3-01:01:00"
    assert timing.time_limit_minutes(1e6) == timing.TIME_CAP_MIN


def test_time_warning_text():
    est = timing.estimate(dict(model="pythia-1.4b", dataset="alpaca", seq_len=2048), gpu="h100-80gb")
    assert timing.time_warning("48:00:00", [est]) is None
    assert timing.time_warning("00:20:00", [est]) == (
        f"warning: --time 00:20:00 is below the predicted {est.hours:.2f} h of the longest cell; "
        f"raise it or leave --time out to use the prediction")


def _sbatch(out: Path) -> str:
    (job,) = out.glob("*/job.sbatch")
    return job.read_text()


def test_rendered_time_is_predicted_unless_given(tmp_path, capsys):
    common = ["--models", "pythia-1.4b", "--gpu", "h100-80gb", "--datasets", "alpaca", "--set", "seq_len=2048",
              "--dry-run"]
    assert grid.main([*common, "--out", str(tmp_path / "a")]) == 0
    text = _sbatch(tmp_path / "a")
    est = timing.estimate(dict(model="pythia-1.4b", dataset="alpaca", seq_len=2048), gpu="h100-80gb")
    assert f"#SBATCH --time={timing.predicted_time([est])[0]}\n" in text
    assert "# --time: the longest predicted cell" in text
    out = capsys.readouterr().out
    assert "hours" in out and "GPU-hours for the sweep" in out
    assert grid.main([*common, "--time", "00:20:00", "--out", str(tmp_path / "b")]) == 0
    text = _sbatch(tmp_path / "b")
    assert "#SBATCH --time=00:20:00\n" in text and "# --time:" not in text
    assert "warning: --time 00:20:00 is below the predicted" in capsys.readouterr().out


def test_submitit_timeout_matches_the_rendered_time(tmp_path):
    from ftgrid.launch import submit
    args = grid.parse_args(["--models", "pythia-tiny", "--gpu", "cpu", "--dry-run"])
    spec = grid.build_spec(args)
    cells = grid.expand(spec)
    plans = grid.plan_cells(cells, spec.resources)
    estimates = [timing.estimate(c.run, gpu=p.gpu, gpus=p.gpus) for c, p in zip(cells, plans)]
    grid.predict_time(cells, estimates, spec.resources)
    params = submit.submitit_parameters(spec.resources, "x", 0)
    assert params["timeout_min"] == slurm_time_minutes(timing.predicted_time(estimates)[0])
