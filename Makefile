# Set-up from the repo's own files: `make demo` and `make test` create .venv at the repo root, install the package
# with its test extra, then run. Re-running skips the install unless pyproject.toml or this file changed.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The torch/torchvision builds this project is tested with (pip on these machines takes them from local disk).
TORCH := torch==2.14.1 torchvision==0.29.1

# The oldest stack deit declares (.ci/oldest.txt: the floors of pyproject.toml, pinned; torch 2.11, torchvision 0.26
# and timm 1.0.29 as a GPU image ships them) on Python 3.10, for the tests marked `smoke`: a pyenv 3.10 when there is
# one, else python3.10 on the PATH.
OLDEST := .venv-oldest
PYTHON_OLDEST ?= $(or $(firstword $(wildcard $(shell pyenv root 2> /dev/null)/versions/3.10*/bin/python3.10)),$(shell \
	python3.10 -c 'import sys; print(sys.executable)' 2> /dev/null),python3.10)

.PHONY: demo test test-oldest format bench clean

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

$(OLDEST)/.installed: pyproject.toml Makefile .ci/oldest.txt
	$(PYTHON_OLDEST) -m venv $(OLDEST)
	$(OLDEST)/bin/pip install --quiet -c .ci/oldest.txt -e '.[dev]'
	touch $@

# models, a RegNetY teacher from a state dict, short distilled runs with and without a cache, bf16, resume,
# predict, eval, export, serve and the HF layout, on the oldest stack (`make test-oldest OLDEST_TESTS=`: every test)
OLDEST_TESTS ?= -m smoke
test-oldest: $(OLDEST)/.installed
	$(OLDEST)/bin/python -c "import sys, torch, torchvision, timm, numpy; print('oldest stack: python', \
	sys.version.split()[0], '| torch', torch.__version__, '| torchvision', torchvision.__version__, '| timm', \
	timm.__version__, '| numpy', numpy.__version__)"
	$(OLDEST)/bin/python -m pytest -q $(OLDEST_TESTS)

format: $(VENV)/.installed
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(VENV)/.installed
	$(BIN)/python benchmarks/bench_models.py

clean:
	rm -rf $(VENV) $(OLDEST)
