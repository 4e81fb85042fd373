#!/bin/bash
# Cell mistral-7b_lora_r16_a32_lr2e-04_wordnet-small_s0_217e0d of sweep golden on 2 host(s) x 8 slot(s), rendered by launch/grid.py.
#   run it (on gpu-a, the first host):  bash /runs/golden/mistral-7b_lora_r16_a32_lr2e-04_wordnet-small_s0_217e0d/run_deepspeed.sh
#   or torchrun on every host instead:    see /runs/golden/mistral-7b_lora_r16_a32_lr2e-04_wordnet-small_s0_217e0d/run_torchrun.sh
#   same cell, no SLURM:     /opt/venv/bin/python /opt/ftgrid/finetune/train.py --cell /runs/golden/mistral-7b_lora_r16_a32_lr2e-04_wordnet-small_s0_217e0d/cell.yaml
#   predicted peak per GPU:  24.0 GiB of 74.4 on h100-80gb (ZeRO 2, offload none: fits)
# DeepSpeed's launcher starts the ranks of the other hosts with pdsh over passwordless ssh:
# both must work from gpu-a to every host, else use run_torchrun.sh on each host.
set -euo pipefail
cd /opt/ftgrid
# Environment set-up: the sweep's `setup:` lines, verbatim (shell written by the user, not quoted).
source /opt/venv/bin/activate
hostfile=/runs/golden/hosts.txt
head_node=gpu-a
port=44457
exec /opt/venv/bin/python -m deepspeed.launcher.runner --hostfile "$hostfile" --no_local_rank \
  --master_addr "$head_node" --master_port "$port" --num_nodes 2 --num_gpus 8 \
  /opt/ftgrid/finetune/train.py --cell /runs/golden/mistral-7b_lora_r16_a32_lr2e-04_wordnet-small_s0_217e0d/cell.yaml
