# poisonlab: `make demo` sets up and runs the default experiment; `make test` sets up and runs the tests.
PYTHON ?= python3
VENV ?= .venv
TORCH_VERSION ?= 2.13.0
TORCH_SPEC ?= torch==$(TORCH_VERSION)
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(TORCH_VERSION)
BENCH_STAMP := $(VENV)/.installed-bench-$(TORCH_VERSION)
PYTEST_JOBS ?= 2
PYTEST_ARGS ?=
DATA ?= ../shared/data

.PHONY: setup demo test bench examples clean help

help:
	@echo "make demo   - create $(VENV), install, run BadNets on the embedded digits data"
	@echo "make test   - create $(VENV), install, run the test suite"
	@echo "make bench  - trainer throughput vs ART, a plain loop, DataLoader, roofline (MNIST CNN, GTSRB small-cnn); filtering defenses vs ART; cost vs rows and width; pruning-curve cache speed-up"
	@echo "variables: PYTHON=$(PYTHON) TORCH_VERSION=$(TORCH_VERSION) DATA=$(DATA)"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first, pinned: a plain `torch` requirement would pull several GB of CUDA packages
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

setup: $(STAMP)

# the bench extra (IBM ART, pinned in pyproject.toml) on top of the test install; torch stays as installed above
$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(BIN)/python -m pip install --quiet -e ".[bench]"
	touch $(BENCH_STAMP)

demo: $(STAMP)
	$(BIN)/poisonlab run examples/digits_badnets.yaml

test: $(STAMP)
	# two workers share the two cores (one torch thread each); PYTEST_JOBS=0 runs serially
	$(BIN)/python -m pytest -n $(PYTEST_JOBS) --dist loadfile $(PYTEST_ARGS)

bench: $(BENCH_STAMP)
	$(BIN)/python bench/throughput.py --data-dir $(DATA)
	$(BIN)/python bench/filter_speed.py --data-dir $(DATA)
	$(BIN)/python bench/scaling.py --data-dir $(DATA)
	$(BIN)/python bench/pruning_curve.py
	$(BIN)/python bench/eval_memory.py
	$(BIN)/python bench/brew_cost.py

clean:
	rm -rf $(VENV) runs .pytest_cache
