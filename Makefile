# Two commands on a fresh machine:  `make demo` (the main job end to end)  and  `make test`.
# Both create .venv with the CPU build of torch and tvreg installed editable, once, with the
# `test` and `examples` extras (the test suite runs the walkthrough's quick mode).
# `make walkthrough`: task arithmetic on a real pre-trained model (docs/walkthrough.md).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# CPU wheel of torch (an unpinned torch would pull multi-GB CUDA wheels)
TORCH  ?= torch==2.13.0

.PHONY: install demo test lint walkthrough bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[test,examples,lint]'
	@# the extras must not replace the pinned CPU torch (a CUDA build is gigabytes)
	$(BIN)/python -c "import torch, sys; sys.exit(0 if torch.__version__.split('+')[0] == '$(TORCH)'.split('==')[-1] else 'the extras replaced $(TORCH) with torch ' + torch.__version__)"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/demo.py

# two test processes (pytest-xdist): the CI machine's 2 cores; 9 min there against 16.5 in one
test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2

# ruff (lint + import order, pyproject.toml) on registry/ and cli/; mypy (check_untyped_defs) on the
# package, which mypy must see under its import name: build/typecheck/tvreg -> registry
lint: $(STAMP)
	$(BIN)/ruff check registry cli
	mkdir -p build/typecheck && ln -sfn ../../registry build/typecheck/tvreg
	cd build/typecheck && ../../$(BIN)/mypy --config-file ../../pyproject.toml -p tvreg

walkthrough: $(STAMP)
	$(BIN)/python examples/walkthrough.py

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_core.py

clean:
	rm -rf $(VENV) .demo .walkthrough .pytest_cache
