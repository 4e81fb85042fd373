#!/bin/bash
# Cell mistral-7b_lora_r16_a32_lr2e-04_wordnet-small_s0_217e0d of sweep golden with torchrun on 2 host(s) x 8 slot(s), rendered by launch/grid.py.
# Start it on every host at about the same time (no ssh needed), each with its node rank:
#   on gpu-a:  bash /runs/golden/mistral-7b_lora_r16_a32_lr2e-04_wordnet-small_s0_217e0d/run_torchrun.sh 0
#   on gpu-b:  bash /runs/golden/mistral-7b_lora_r16_a32_lr2e-04_wordnet-small_s0_217e0d/run_torchrun.sh 1
#   same cell, no SLURM:     /opt/venv/bin/python /opt/ftgrid/finetune/train.py --cell /runs/golden/mistral-7b_lora_r16_a32_lr2e-04_wordnet-small_s0_217e0d/cell.yaml
#   predicted peak per GPU:  24.0 GiB of 74.4 on h100-80gb (ZeRO 2, offload none: fits)
set -euo pipefail
node_rank=${1:-}
case "$node_rank" in
  0|1) ;;
  *) echo "usage: bash $0 NODE_RANK  (0..1: the host's line in the hostfile)" >&2; exit 2 ;;
esac
cd /opt/ftgrid
# Environment set-up: the sweep's `setup:` lines, verbatim (shell written by the user, not quoted).
source /opt/venv/bin/activate
head_node=gpu-a
port=44457
exec /opt/venv/bin/python -m torch.distributed.run \
  --nnodes 2 --nproc_per_node 8 --node_rank "$node_rank" \
  --master_addr "$head_node" --master_port "$port" \
  /opt/ftgrid/finetune/train.py --cell /runs/golden/mistral-7b_lora_r16_a32_lr2e-04_wordnet-small_s0_217e0d/cell.yaml
