"""The planner against the meta-device trace over registry models (no GPU needed).

    python benchmarks/trace_sweep.py [--models pythia-1.4b,mistral-7b] [--seq-lens 512,2048] [--quick]

--quick: pythia-410m and mistral-7b (one multi-head, one grouped-query model) at 1024 tokens, a few minutes.

For every causal registry model (tiny twins excluded) x {LoRA preset, LoRA all-linear, full} x
{packed, unpacked} x {gradient checkpointing off, on} x seq_len, traces one training step with
launch.trace and plans the same cell with launch.plan (zero 0, stock loss, one H100), and prints
planner activations+logits against the trace's activation peak, then max and mean |error| per group
(the rows of issue 19's table). Micro batch 1: both sides are linear in it.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

from ftgrid.launch import plan, trace
from ftgrid.registry import registry

VARIANTS = {"lora": ("lora", "preset"), "all-linear": ("lora", "all-linear"), "full": ("full", None)}


def cells(models, seq_lens, variants=tuple(VARIANTS), packs=(False, True), ckpts=(False, True)):
    for model in models:
        for variant in variants:
            for packing in packs:
                for ckpt in ckpts:
                    for seq in seq_lens:
                        yield model, variant, packing, ckpt, seq


def compare(model, variant, packing, ckpt, seq, micro_batch=1) -> dict:
    method, targets = VARIANTS[variant]
    seq = min(seq, registry()[model].max_seq_len)
    t = trace.trace_step(model, method, micro_batch, seq, packing=packing, grad_ckpt=ckpt,
                         targets=targets or "preset")
    run = {"model": model, "method": method, "micro_batch": micro_batch, "seq_len": seq, "grad_ckpt": ckpt,
           "chunked_loss": False, "packing": "bfd" if packing else "none"}
    if targets:
        run["target_modules"] = targets
    p = plan.plan_cell(run, gpu="h100-80gb")
    planned = p.activation_gib
    return {"model": model, "variant": variant, "packing": packing, "ckpt": ckpt, "seq": seq,
            "trace_gib": t.activation_peak_gib, "plan_gib": round(planned, 4),
            "error": planned / t.activation_peak_gib - 1}


def group(row) -> str:
    if row["ckpt"]:
        return "gradient checkpointing"
    if row["packing"]:
        gqa = registry()[row["model"]].kv_heads not in (None, registry()[row["model"]].heads)
        return "packed, grouped-query" if gqa else "packed, multi-head"
    return {"all-linear": "all-linear LoRA", "lora": "LoRA preset", "full": "full"}[row["variant"]]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    causal = [n for n, s in registry().items() if s.kind == "causal" and not s.is_tiny]
    ap.add_argument("--models", default=",".join(causal))
    ap.add_argument("--seq-lens", default="512,2048")
    ap.add_argument("--quick", action="store_true", help="two models at one length")
    args = ap.parse_args(argv)
    if args.quick:
        args.models, args.seq_lens = "pythia-410m,mistral-7b", "1024"
    rows = []
    start = time.perf_counter()
    for cell in cells(args.models.split(","), [int(s) for s in args.seq_lens.split(",")]):
        row = compare(*cell)
        rows.append(row)
        print(f"{row['model']:<14}{row['variant']:<11}{'packed' if row['packing'] else 'rows':<7}"
              f"{'ckpt' if row['ckpt'] else '':<5}{row['seq']:>5}  trace {row['trace_gib']:8.3f}  "
              f"plan {row['plan_gib']:8.3f}  {row['error']:+.1%}", flush=True)
    print(f"\n{len(rows)} cells in {time.perf_counter() - start:.0f} s\n")
    print(f"| group | cells | max abs error | mean abs error |\n|---|---|---|---|")
    for name in sorted({group(r) for r in rows}):
        errs = [abs(r["error"]) for r in rows if group(r) == name]
        print(f"| {name} | {len(errs)} | {max(errs):.1%} | {statistics.mean(errs):.1%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
