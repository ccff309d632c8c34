# Quick start: `make demo` (generate with every method on the tiny checkpoints) and `make test`.
# Both create .venv on first use. TORCH selects the torch build; the default is the CPU
# wheel this project is tested with (pip never pulls a CUDA build unless you ask for one).
VENV ?= .venv
TORCH ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test lint clean reproduce sweep tables figures

# `make reproduce` runs every paper-table experiment then the tables and figures; SCOPE=smoke runs
# them on the tiny checkpoints on CPU (results/smoke/), TABLE=<experiment> runs one, LAUNCHER=slurm_1gpu
# sends each table to SLURM. `make sweep NAME=dyllm` runs conf/experiment/sweep_dyllm.yaml.
SCOPE ?= full
REPRODUCE = $(PY) experiments/reproduce.py --scope $(SCOPE) $(if $(LAUNCHER),--launcher $(LAUNCHER))

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# The demo's second half is a real evaluation: Hydra -> lm-eval -> results store, one table at the end.
DEMO_METHODS ?= vanilla,fast_dllm,dllm_cache,sparse_dllm,dyllm,combined_sparse_dllm_threshold,combined_dyllm_dual

demo: $(STAMP)
	$(PY) -m dllm_accel.demo
	$(PY) -m dllm_accel.run --multirun experiment=demo_tiny task=gsm8k,humaneval \
	    method=$(DEMO_METHODS) tracking=none results_root=outputs/demo

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check .

reproduce: $(STAMP)
	$(REPRODUCE) $(if $(TABLE),--table $(TABLE))

sweep: $(STAMP)
	@test -n "$(NAME)" || { echo "usage: make sweep NAME=<x> (conf/experiment/sweep_<x>.yaml)"; exit 2; }
	$(REPRODUCE) --experiment sweep_$(NAME)

tables: $(STAMP)
	$(REPRODUCE) --only tables

figures: $(STAMP)
	$(REPRODUCE) --only figures

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
