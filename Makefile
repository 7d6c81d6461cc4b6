# Set-up from the repo's own files: `make demo` and `make test` create .venv at the repo root, install the package
# with its test extra, then run. Re-running skips the install unless pyproject.toml or this file changed.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The torch/torchvision builds this project is tested with (pip on these machines takes them from local disk).
TORCH := torch==2.14.1 torchvision==0.29.1

.PHONY: demo test format bench clean

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

demo: $(VENV)/.installed
	$(BIN)/deit demo --output_dir demo_output

# format and lint first: the formatter's and linter's settings are in pyproject.toml ([tool.ruff])
test: $(VENV)/.installed
	$(BIN)/ruff format --check --quiet .
	$(BIN)/ruff check --quiet .
	$(BIN)/python -m pytest -q

format: $(VENV)/.installed
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(VENV)/.installed
	$(BIN)/python benchmarks/bench_models.py

clean:
	rm -rf $(VENV)
