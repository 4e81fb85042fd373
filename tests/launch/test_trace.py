"""The meta-device trace (launch/trace.py) and the planner checked against it, on real transformers and
PEFT models of registry shapes (no GPU, no weights). The full sweep is benchmarks/trace_sweep.py."""
from __future__ import annotations

import json

import pytest

from ftgrid.execution import ZERO3_LOSS_REASON, execution
from ftgrid.launch import plan, trace
from ftgrid.registry import model_spec

# A representative subset that runs in about two minutes on two loaded cores: each family, each
# method, packed (multi-head and grouped-query) and unpacked rows, checkpointing on and off.
CELLS = [
    ("pythia-1.4b", "lora", "preset", False, False, 2048),
    ("pythia-1.4b", "lora", "all-linear", False, False, 512),
    ("pythia-1.4b", "full", None, False, False, 2048),
    ("pythia-1.4b", "lora", "preset", True, False, 512),
    ("mistral-7b", "lora", "preset", True, False, 512),
    ("mistral-7b", "lora", "preset", False, True, 512),
    ("gpt2-medium", "lora", "preset", True, False, 512),
    ("llama-2-7b", "lora", "preset", True, False, 2048),
    ("gpt2-medium", "lora", "h.22.attn.c_attn", False, False, 512),   # one adapted layer: 22 keep nothing
    ("pythia-1.4b", "full", None, True, False, 2048),       # the output projection reads the kept attention output
    ("mistral-7b", "lora", "all-linear", False, True, 512),  # the peak in the recompute, at the widest adapter
]


@pytest.mark.parametrize("model,method,targets,packed,ckpt,seq", CELLS,
                         ids=[f"{m}-{t or 'full'}-{'packed' if p else 'rows'}{'-ckpt' if c else ''}-{s}"
                              for m, _, t, p, c, s in CELLS])
def test_planner_activations_within_3_percent_of_the_trace(model, method, targets, packed, ckpt, seq):
    traced = trace.trace_step(model, method, 2, seq, packing=packed, grad_ckpt=ckpt, targets=targets or "preset")
    run = {"model": model, "method": method, "micro_batch": 2, "seq_len": seq, "grad_ckpt": ckpt,
           "chunked_loss": False, "packing": "bfd" if packed else "none"}
    if targets:
        run["target_modules"] = targets
    planned = plan.plan_cell(run, gpu="h100-80gb").activation_gib
    assert planned == pytest.approx(traced.activation_peak_gib, rel=0.03), (planned, traced)


def test_packed_rows_keep_a_bias_and_expanded_kv_that_unpacked_rows_do_not():
    rows = trace.trace_step("mistral-7b", "lora", 1, 1024)
    packed = trace.trace_step("mistral-7b", "lora", 1, 1024, packing=True)
    bias = 32 * 2 * 1024**2 / 2**30                         # 2·s² bytes per layer and row
    assert "_scaled_dot_product_efficient_attention" in packed.peak_parts
    assert "_scaled_dot_product_flash_attention" in rows.peak_parts
    assert packed.peak_parts["masked_fill"] == pytest.approx(bias, rel=0.01)
    assert packed.activation_peak_gib - rows.activation_peak_gib > bias   # plus repeat_kv's copies


def test_checkpointing_peaks_at_the_loss_backward():
    traced = trace.trace_step("pythia-410m", "lora", 2, 1024, grad_ckpt=True)
    assert traced.peak_op == "_log_softmax_backward_data"


def test_cli_json_and_bad_input(capsys):
    assert trace.main(["--model", "pythia-70m", "--seq-len", "128", "--method", "qlora", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["activation_peak_gib"] > out["forward_saved_gib"] > 0
    assert any("bitsandbytes" in note for note in out["notes"])
    assert trace.main(["--model", "bart-large", "--seq-len", "128"]) == 2
    assert capsys.readouterr().err.startswith("error: the trace follows causal LMs only")


def test_one_decision_for_loss_and_attention():
    spec = model_spec("llama-2-7b")
    assert execution(spec, task="sft", packing="bfd", chunked_loss=True, zero=2).loss == "chunked"
    z3 = execution(spec, task="sft", packing="none", chunked_loss=True, zero=3)
    assert (z3.loss, z3.loss_reason, z3.attention) == ("stock", ZERO3_LOSS_REASON, "flash")
    packed = execution(model_spec("mistral-7b"), task="sft", packing="bfd", chunked_loss=True, zero=0)
    assert packed.attention_bias and packed.expand_kv
    # the planner counts the stock loss's logits where ZeRO-3 makes the entrypoint fall back to it
    run = {"model": "llama-2-7b", "method": "full", "micro_batch": 8, "seq_len": 4096, "packing": "none"}
    p3 = plan.plan_cell(run, gpu="a100-80gb", gpus=8, zero=3)
    p2 = plan.plan_cell(run, gpu="a100-80gb", gpus=8, zero=2)
    assert p3.breakdown["logits"] == pytest.approx(11.7, abs=0.1) and p2.breakdown["logits"] < 0.5
    assert any(ZERO3_LOSS_REASON in note for note in p3.notes)
