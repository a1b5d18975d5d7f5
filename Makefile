# Two entry points: `make demo` and `make test`. Both create .venv on first use.
#
# torch is installed first, pinned, so that pip never resolves lvmkit's `torch>=2.1` to the newest
# release: on a CPU-only machine with a local CPU wheel that pin picks it up; on a GPU machine the
# same pin fetches PyPI's CUDA build. Override with `make TORCH_SPEC="torch==X.Y"`.
# A CPU-only machine without a local wheel gets PyTorch's small CPU build (not the multi-GB CUDA
# one) from PyTorch's own index: `make demo TORCH_INDEX=https://download.pytorch.org/whl/cpu`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint bench tutorials docs clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || \
		$(BIN)/python -m pip install $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -e ".[dev]"
	touch $(STAMP)

demo: setup
	$(BIN)/lvmkit demo

test: setup
	$(BIN)/python -m pytest
	$(MAKE) docs

# The documentation site in docs/_build/html: warnings (a broken cross-reference, a docstring
# that does not parse) are errors.
docs: setup
	OMP_NUM_THREADS=1 $(BIN)/sphinx-build -W --keep-going -q -b html docs docs/_build/html

# Re-run every tutorial at full size and store its outputs in the notebook (minutes each).
tutorials: setup
	cd tutorials && for nb in *.ipynb; do ../$(BIN)/jupyter-execute --inplace --timeout=3600 "$$nb" || exit 1; done

lint: setup
	$(BIN)/ruff check lvmkit tests benchmarks $(wildcard tutorials)

bench: setup
	$(BIN)/python benchmarks/svi_overhead.py

clean:
	rm -rf $(VENV) runs .pytest_cache docs/_build docs/api docs/tutorials
