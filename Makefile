# `make demo` and `make test` are each self-sufficient on a fresh machine:
# they create .venv, install the pinned CPU PyTorch and the package, then run.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Every install goes through constraints.txt so nothing can swap the pinned torch.
PIP    := $(BIN)/python -m pip install -c constraints.txt

.PHONY: setup demo test lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) torch==2.13.0
	$(PIP) -e ".[dev]"
	touch $(STAMP)

demo: setup
	$(BIN)/lmforge pretrain --out runs/demo --config configs/gpt-tiny.yaml

# Every test run is linted first, the import layers (pyproject.toml [tool.importlinter]) included.
test: lint
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -n auto --dist loadgroup -q

lint: setup
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/lint-imports

bench: setup
	$(BIN)/python bench/train_throughput.py
	$(BIN)/python bench/prepare_throughput.py

clean:
	rm -rf runs .pytest_cache .ruff_cache
