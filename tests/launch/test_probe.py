"""The OOM-boundary probe: search logic, try cells, CSV and map; a real search under a memory cap on CPU
(slow), and tries submitted as SLURM jobs (slurm)."""
from __future__ import annotations

import hashlib
import json
import math
import sys
from pathlib import Path

import pytest
import yaml

from ftgrid import schema as run_config
from ftgrid import rundir
from ftgrid.launch import plan as planner
from ftgrid.launch import plots, probe

ROOT = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------------------------------
# search


def _oracle(boundary):
    calls = []

    def fits(v):
        calls.append(v)
        return v <= boundary
    return fits, calls


@pytest.mark.parametrize("guess", [None, 1, 5, 17, 30, 64])
@pytest.mark.parametrize("boundary", [0, 1, 2, 17, 18, 33, 63, 64, 100])
def test_search_finds_the_boundary_and_tries_both_sides(boundary, guess):
    values = list(range(1, 65))
    fits, calls = _oracle(boundary)
    best, tried = probe.search(values, fits, guess)
    assert best == (None if boundary < 1 else min(boundary, 64))
    assert len(calls) == len(set(calls)), "a value was tried twice"
    assert tried == {v: v <= boundary for v in calls}
    if 1 <= boundary < 64:
        assert tried[boundary] is True and tried[boundary + 1] is False
    bound = 2 + math.ceil(math.log2(64)) if guess is None else 2 * math.ceil(math.log2(64)) + 2
    assert len(calls) <= bound


def test_search_with_a_right_guess_needs_two_tries():
    fits, calls = _oracle(42)
    assert probe.search(range(1, 65), fits, 42)[0] == 42
    assert calls == [42, 43]


def test_search_reuses_known_outcomes_and_sequence_candidates():
    fits, calls = _oracle(40)
    best, _ = probe.search(range(1, 65), fits, 42, known={1: True})
    assert best == 40 and 1 not in calls
    assert probe.candidates(128, 4096, 64)[:3] == [128, 192, 256]
    assert probe.candidates(128, 4000, 64)[-2:] == [3968, 4000]
    fits, _ = _oracle(1000)
    assert probe.search(probe.candidates(128, 4096, 64), fits)[0] == 960


# ---------------------------------------------------------------------------------------------
# the try's cell and data


def test_try_cell_is_a_valid_run_config_of_the_entrypoint(tmp_path):
    lora = probe.Setting(model="pythia-1.4b", method="lora", rank=8, targets="query_key_value;dense",
                         micro_batch=4, seq_len=1024, grad_ckpt=True)
    full = probe.Setting(model="pythia-1.4b", method="full", micro_batch=2, seq_len=512)
    data = tmp_path / "d.jsonl"
    data.write_text('{"instruction": "a", "output": "b"}\n')
    for s in (lora, full):
        cfg = run_config.from_dict(s.run_config(str(data), 3, s.try_id()))
        assert (cfg.micro_batch, cfg.seq_len, cfg.max_steps, cfg.init) == (s.micro_batch, s.seq_len, 3, "random")
        assert cfg.grad_ckpt == s.grad_ckpt
    assert run_config.from_dict(lora.run_config(str(data), 3, "x")).target_modules == ["query_key_value", "dense"]
    assert lora.try_id() == "pythia-1.4b_lora_r8_query_key_value+dense_z0x1_mb4_s1024_ckpt"


def test_synthetic_rows_fill_the_sequence_with_the_tiny_tokenizer(tmp_path):
    from transformers import AutoTokenizer
    path = probe.synthetic_dataset(tmp_path / "fixed.jsonl", rows=20, words=300)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == 20 and len({r["output"] for r in rows}) == 20
    tok = AutoTokenizer.from_pretrained(run_config.TINY_TOKENIZER_DIR)
    assert all(len(tok(r["output"])["input_ids"]) >= 300 for r in rows)


# ---------------------------------------------------------------------------------------------
# the planner's boundary


def test_predicted_boundary_is_the_planners():
    s = probe.Setting(model="pythia-1.4b", method="lora", rank=16, targets="preset", seq_len=2048)
    mb = probe.predicted_boundary(s, "micro_batch")
    assert mb == planner.plan_measured({k: str(v) for k, v in s.csv_row().items()}).max_micro_batch
    assert mb >= 8  # FACTS: micro batch 8 at 2048 fits an H100
    seq = probe.predicted_boundary(s.with_value("micro_batch", 16), "seq_len")
    assert probe.predicted_fits(s.with_value("micro_batch", 16).with_value("seq_len", seq))
    assert not probe.predicted_fits(s.with_value("micro_batch", 16).with_value("seq_len", seq + 1))
    full12 = probe.Setting(model="pythia-12b", method="full", seq_len=2048)
    assert probe.predicted_boundary(full12, "micro_batch") == 0
    # with a cap: the largest micro batch whose predicted peak stays under it
    capped = probe.predicted_boundary(s, "micro_batch", cap_gib=20.0)
    assert probe.predicted_peak(s.with_value("micro_batch", capped)) <= 20.0 < \
        probe.predicted_peak(s.with_value("micro_batch", capped + 1))


# ---------------------------------------------------------------------------------------------
# a whole probe with a stand-in for the entrypoint (fast): files, CSV, map


class FakeEntrypoint:
    """Answers like finetune/train.py would: OOM when micro_batch x seq_len passes a budget."""

    name = "fake"

    def __init__(self, budget_tokens: int, kind: str = "cpu_max_rss"):
        self.budget, self.kind, self.calls = budget_tokens, kind, []

    def run(self, cell_dir: Path, gpus: int) -> int:
        cfg = yaml.safe_load((cell_dir / "cell.yaml").read_text())
        assert (cell_dir / "base").is_symlink()
        tokens = cfg["micro_batch"] * cfg["seq_len"]
        self.calls.append(cfg["micro_batch"])
        if tokens > self.budget:
            rundir.write_status(cell_dir, "oom", error="RuntimeError: DefaultCPUAllocator: can't allocate memory")
            return 3
        (cell_dir / "adapter").mkdir()
        rundir.atomic_write_json(cell_dir / "metrics.json", {"peak_memory_gib": 0.5 + tokens / 1e5,
                                                             "peak_memory_kind": self.kind, "tokens_per_second": 1.0})
        rundir.write_status(cell_dir, "done")
        return 0


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_probe_run_writes_points_summary_and_map(tmp_path):
    before = _digest(planner.MEASURED_FILE)
    settings = [probe.Setting(model="pythia-tiny", method="lora", rank=8, seq_len=256, gpu="cpu"),
                probe.Setting(model="gpt2-tiny", method="full", seq_len=256, gpu="cpu")]
    fake = FakeEntrypoint(budget_tokens=256 * 21)
    p = probe.Probe(settings=settings, axis="micro_batch", values=probe.candidates(1, 64), out=tmp_path / "p",
                    runner=fake, steps=2, guess="none", echo=lambda *_: None)
    result = p.run()
    written = probe.finish(p, result)
    assert [s["best"] for s in result["searches"]] == [21, 21]
    assert (tmp_path / "p" / "oom_map.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert _digest(planner.MEASURED_FILE) == before, "a CPU probe must not touch the H100 table"
    summary = json.loads((tmp_path / "p" / "probe.json").read_text())
    tries = summary["searches"][0]["tries"]
    assert {t["micro_batch"] for t in tries} >= {21, 22}
    assert summary["searches"][0]["measured_gib_per_unit"] == pytest.approx(256 / 1e5, rel=1e-3)
    rows = probe.read_points(tmp_path / "p" / "measured_peaks.csv")
    assert len(rows) == len(fake.calls) and list(rows[0]) == list(probe.COLUMNS)
    fit21 = [r for r in rows if r["model"] == "pythia-tiny" and r["micro_batch"] == "21"]
    assert fit21[0]["oom"] == "false" and float(fit21[0]["peak_gib"]) == pytest.approx(0.5 + 21 * 256 / 1e5, abs=1e-3)
    # each try leaves its cell, status, metrics and log, not the saved model or the base link
    try_dir = tmp_path / "p" / settings[0].with_value("micro_batch", 21).try_id()
    assert (try_dir / "cell.yaml").exists() and not (try_dir / "adapter").exists()
    assert not (try_dir / "base").exists() and (tmp_path / "p" / "bases" / "pythia-tiny").is_dir()
    assert str(tmp_path / "p" / "oom_map.png") in map(str, written)


def test_gpu_points_append_to_the_measured_table_the_planner_reads(tmp_path):
    table = tmp_path / "measured_peaks.csv"
    table.write_text(planner.MEASURED_FILE.read_text())
    n_before = len(planner.measured_points(table))
    s = probe.Setting(model="pythia-410m", method="lora", rank=16, targets="all-linear", seq_len=512,
                      gpu="h100-80gb")
    fake = FakeEntrypoint(budget_tokens=512 * 6, kind="cuda_max_allocated")
    p = probe.Probe(settings=[s], axis="micro_batch", values=probe.candidates(1, 16), out=tmp_path / "p",
                    runner=fake, steps=3, guess="4", echo=lambda *_: None)
    probe.finish(p, p.run(), csv_path=str(table), draw=False)
    rows = planner.measured_points(table)
    assert len(rows) == n_before + len(fake.calls) and fake.calls[:2] == [4, 5]
    assert list(rows[0]) == list(probe.COLUMNS)
    for r in rows[n_before:]:
        plan = planner.plan_measured(r)          # every appended row is one the planner test can read
        assert plan.gpu == "h100-80gb" and r["targets"] == "all-linear"
        assert r["source"].startswith("probe ") and "torch.cuda.max_memory_allocated" in r["source"]


def test_a_cpu_peak_under_a_gpu_preset_stops_the_probe(tmp_path):
    s = probe.Setting(model="pythia-tiny", method="lora", seq_len=64, gpu="h100-80gb")
    p = probe.Probe(settings=[s], axis=None, out=tmp_path / "p", runner=FakeEntrypoint(10**6), steps=2,
                    echo=lambda *_: None)
    with pytest.raises(probe.ProbeError, match="ran on the CPU"):
        p.run()


def test_oom_map_draws_markers_and_both_boundaries():
    rows = [{"model": "pythia-tiny", "method": "lora", "rank": "16", "targets": "preset", "zero": "0", "gpus": "1",
             "micro_batch": str(mb), "seq_len": "512", "grad_ckpt": "false", "gpu": "cpu",
             "peak_gib": "" if mb > 42 else "0.9", "oom": str(mb > 42).lower(),
             "source": "probe: ..., mem cap 0.5 GiB over an import baseline of 1.45 GiB"} for mb in (1, 32, 42, 43, 64)]
    rows += [dict(r, model="pythia-1.4b", gpu="h100-80gb", seq_len="2048", source="h100",
                  oom=str(int(r["micro_batch"]) > 32).lower()) for r in rows]
    axis, mrows = probe.map_rows(rows)
    assert axis == "micro_batch" and len(mrows) == 2
    tiny = next(r for r in mrows if r["label"].startswith("pythia-tiny"))
    assert tiny["measured"] == 42 and tiny["oom"] == [43, 64] and "cap 0.5 GiB" in tiny["label"]
    big = next(r for r in mrows if r["label"].startswith("pythia-1.4b"))
    assert big["predicted"] == probe.predicted_boundary(
        probe.Setting(model="pythia-1.4b", method="lora", rank=16, seq_len=2048), "micro_batch")
    fig = plots.oom_map(mrows, axis)
    ax = fig.axes[0]
    fits, ooms = ax.collections[:2]
    assert len(fits.get_offsets()) == 3 + 2 and len(ooms.get_offsets()) == 2 + 3
    assert ax.get_xlabel().startswith("micro batch per GPU (examples)")
    assert [t.get_text() for t in ax.get_yticklabels()] == [r["label"] for r in mrows]
    styles = [line.get_linestyle() for line in ax.lines]
    assert styles.count("--") == 1 and styles.count("-") == 2  # planner's step line, two measured bars
    assert probe.guess_axis([dict(r, micro_batch="8", seq_len=str(s)) for r, s in zip(rows, range(64, 1000, 64))]) \
        == "seq_len"


def test_sbatch_command_for_a_try(tmp_path):
    r = probe.SlurmRunner(python="/py", data_limit=3 * 2**30, partition="gpu", time="00:20:00", mem="8G",
                          cpus_per_task=4, gres_gpus=2)
    cmd = r.sbatch_command(tmp_path / "t", 2, "probe-t")
    assert cmd[:3] == ["sbatch", "--wait", "--parsable"]
    assert {"--partition=gpu", "--mem=8G", "--cpus-per-task=4", "--gpus-per-node=2", "--time=00:20:00"} <= set(cmd)
    assert cmd[-2] == "--wrap" and cmd[-1].startswith(f"ulimit -d {3 * 2**20} && exec /py -m torch.distributed.run")


# ---------------------------------------------------------------------------------------------
# the CLI's input checks


@pytest.mark.parametrize("argv, message", [
    (["--model", "pythia-nope"], "unknown model"),
    (["--model", "pythia-tiny", "--method", "lorra"], "unknown method"),
    (["--model", "pythia-tiny", "--micro-batch-range", "8:2"], "LO:HI"),
    (["--model", "pythia-tiny", "--micro-batch-range", "1:4", "--seq-len-range", "64:128"], "one axis"),
    (["--model", "pythia-tiny", "--mem-cap-gib", "1"], "--gpu cpu"),
    (["--model", "pythia-tiny", "--seq-len", "4096"], "exceeds"),
    (["--model", "pythia-tiny", "--target-modules", "nope"], "no LoRA target"),
])
def test_bad_input_is_one_error_line(argv, message, capsys):
    assert probe.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


# ---------------------------------------------------------------------------------------------
# for real: a memory cap on each try's process, a tiny model whose activations dominate


@pytest.mark.slow
def test_cpu_search_finds_a_real_oom_boundary(tmp_path, capsys):
    """pythia-tiny LoRA, sequence 512, data capped 0.5 GiB over the import baseline: the boundary
    was micro batch 40-42 on the dev machine (it moves a little as the entrypoint changes). The guess
    only orders the tries (a machine where the boundary sits elsewhere costs more tries, not a
    failure); the first try is the smallest micro batch (it also tokenizes the data, cached for the
    rest)."""
    before = _digest(planner.MEASURED_FILE)
    out = tmp_path / "probe"
    code = probe.main(["--model", "pythia-tiny", "--gpu", "cpu", "--loss", "stock", "--mem-cap-gib", "0.5", "--seq-len", "512",
                       "--micro-batch-range", "1:64", "--guess", "40", "--steps", "2", "--out", str(out),
                       "--python", sys.executable])
    printed = capsys.readouterr().out
    assert code == 0, printed
    summary = json.loads((out / "probe.json").read_text())
    (search,) = summary["searches"]
    best = search["best"]
    assert best is not None and 1 < best < 64, printed
    by_mb = {t["micro_batch"]: t for t in search["tries"]}
    # both sides of the boundary really ran, each in its own process
    fit = by_mb[best]
    assert not fit["oom"] and fit["peak_gib"] > 0
    metrics = json.loads((Path(fit["run_dir"]) / "metrics.json").read_text())
    assert metrics["steps"] == 2 and metrics["tokens"] == 2 * best * 512
    over = by_mb[best + 1]
    assert over["oom"]
    status = json.loads((Path(over["run_dir"]) / "status.json").read_text())
    assert status["state"] == "oom" and "can't allocate memory" in status["error"]
    assert summary["cap_gib"] == 0.5 and 1.0 < summary["baseline_gib"] < 3.0
    assert (out / "oom_map.png").stat().st_size > 10_000
    assert _digest(planner.MEASURED_FILE) == before


# ---------------------------------------------------------------------------------------------
# each try as a SLURM job (the real local cluster)


@pytest.mark.slurm
@pytest.mark.slow
def test_tries_run_as_slurm_jobs_under_the_cap(slurm_cluster, tmp_path, capsys):
    """One try, as a SLURM job, over the boundary the CPU search above finds (micro batch ~40): the cap
    reaches the job and its OOM comes back as the row's outcome (the fitting side: the CPU search)."""
    out = tmp_path / "mb64"
    code = probe.main(["--model", "pythia-tiny", "--gpu", "cpu", "--loss", "stock", "--mem-cap-gib", "0.5", "--seq-len", "512",
                       "--micro-batch", "64", "--steps", "2", "--executor", "slurm", "--out", str(out),
                       "--mem", "3G", "--cpus-per-task", "1", "--time", "00:10:00", "--python", sys.executable])
    assert code == 0, capsys.readouterr()
    (row,) = probe.read_points(out / "measured_peaks.csv")
    assert row["oom"] == "true" and row["micro_batch"] == "64"
    (try_dir,) = [p for p in out.iterdir() if p.name.startswith("pythia-tiny")]
    assert list((try_dir / "logs").glob("slurm-*.out")), "the try did not run as a SLURM job"
    status = json.loads((try_dir / "status.json").read_text())
    assert status["state"] == "oom" and status.get("slurm_job_id"), status
