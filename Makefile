# The README's two commands: `make demo` and `make test`. Each sets itself up on a fresh machine.
VENV ?= .venv
PY := $(VENV)/bin/python
# Offline by default: no model or dataset hub here; wandb writes local runs only.
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export WANDB_MODE ?= offline
export TOKENIZERS_PARALLELISM ?= false
export TORCH_EXTENSIONS_DIR ?= $(HOME)/.cache/torch_extensions
export PYTHONUNBUFFERED = 1

DEMO_OUT ?= runs/demo

.PHONY: setup demo test test-fast study-smoke clean-demo

$(VENV)/.installed: pyproject.toml constraints.txt scripts/setup_env.sh
	bash scripts/setup_env.sh $(VENV)

setup: $(VENV)/.installed

# A 2-cell LoRA grid on the shipped WordNet instruction data, on this machine. The base, pythia-demo, is a
# small Pythia pretrained on CPython's documentation (scripts/pretrain_demo_base.py): the cells start from
# a model that knows some English and learn the task's format (eval loss 5.62 -> 4.77 / 4.75).
demo: setup
	$(PY) launch/grid.py --name demo --out $(DEMO_OUT) --models pythia-demo --ranks 4,8 --lrs 1e-2 \
	  --target-modules all-linear --executor local --gpu cpu --datasets wordnet:medium --epochs 2 \
	  --micro-batch 16 --seq-len 128

# The whole suite, including the real local SLURM and 2-process DeepSpeed tests, on TEST_WORKERS pytest
# workers (most tests wait on one single-threaded child process); the 30 slowest tests are listed at the
# end of every run, so the suite's cost stays visible.
TEST_WORKERS ?= 2
test: setup
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadgroup --durations=30 -m "not study"

test-fast: setup
	$(PY) -m pytest -q -m "not slow and not slurm"

# The compute-optimal study end to end at its smallest (pretrain, LoRA grid, report, fits): about 3 minutes.
study-smoke: setup
	$(PY) -m pytest -q -m study

clean-demo:
	rm -rf $(DEMO_OUT)
