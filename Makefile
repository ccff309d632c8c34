# Quick start: `make demo` (generate with every method on the tiny checkpoints) and `make test`.
# Both create .venv on first use. TORCH selects the torch build; the default is the CPU
# wheel this project is tested with (pip never pulls a CUDA build unless you ask for one).
VENV ?= .venv
TORCH ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast lint clean reproduce sweep tables figures train-tiny eval-tiny

# `make reproduce` runs every paper-table experiment then the tables and figures; SCOPE=smoke runs
# them on the tiny checkpoints on CPU (into the ignored outputs/smoke/), TABLE=<experiment> runs one, LAUNCHER=slurm_1gpu
# sends each table to SLURM. `make sweep NAME=dyllm` runs conf/experiment/sweep_dyllm.yaml.
SCOPE ?= full
# METHOD=<preset> adds a method beside a table's own (repeat: METHOD="a b"); ARGS passes Hydra overrides.
REPRODUCE = $(PY) experiments/reproduce.py --scope $(SCOPE) $(if $(LAUNCHER),--launcher $(LAUNCHER)) \
	$(foreach m,$(METHOD),--add-method $(m)) $(ARGS)

# `make reproduce -- method=x` would only set a make variable, and the run would silently ignore it.
$(foreach k,method model task experiment sampler,$(if $(filter command line,$(origin $(k))),\
	$(error "$(k)=$($(k))" is a Hydra override, which make does not pass on: write ARGS="$(k)=$($(k))", or METHOD=<preset> to add a method to a table)))

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# The demo generates with every method on both parity checkpoints, then evaluates the tiny trained model
# (checkpoints/tiny-llada) on its three tasks under each method: Hydra -> lm-eval -> results store, and
# at the end every point re-timed interleaved (retime: median of 5 rounds, spread, paired speed-up, live
# tensor MiB per method) beside the sweep's accuracy and NFE per token.
# The tasks and methods are conf/experiment/tiny_trained.yaml's sweep; DEMO_ARGS adds Hydra overrides.
DEMO_SWEEP := outputs/demo/sweep
demo: $(STAMP)
	$(PY) -m dllm_accel.demo
	rm -rf $(DEMO_SWEEP)
	$(PY) -m dllm_accel.run --multirun experiment=tiny_trained tracking=none results_root=outputs/demo \
		hydra.sweep.dir=$(DEMO_SWEEP) $(DEMO_ARGS)
	$(PY) -m dllm_accel.retime $(DEMO_SWEEP)

# Tests run on up to 4 cores (pytest-xdist; TEST_WORKERS=0 runs them in this process): each test owns
# its temporary folders and names its own subprocesses, so workers never share state. Workers take two
# tests at a time and the heavy ones come first (conftest), so no worker is left with a long tail.
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 1); echo $$(( n > 4 ? 4 : n )))
PYTEST := $(PY) -m pytest -n $(TEST_WORKERS) --dist load --maxschedchunk 2

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PYTEST) -m "not compiled_matrix"

# Every fixture case and method preset again with compile=true (118 tests, 39 min on a shared 2-core CPU: inductor compiles each graph).
test-compiled: $(STAMP)
	$(PYTEST) -m compiled_matrix

# The fast tier: everything not marked slow, at least one test of every module (97 CPU-s measured, 1696 tests;
# the target is under 2 CPU-minutes: mark a test that costs seconds `@pytest.mark.slow`).
test-fast: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PYTEST) -m "not slow and not compiled_matrix"

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

# The tiny trained model: `make train-tiny` retrains checkpoints/tiny-llada (about 20 min on 2 CPU threads;
# same seed, threads and torch build give the same sha256), `make eval-tiny` remeasures results/tiny/.
train-tiny: $(STAMP)
	$(PY) experiments/train_tiny.py

eval-tiny: $(STAMP)
	$(PY) experiments/eval_tiny.py --margins 20

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
