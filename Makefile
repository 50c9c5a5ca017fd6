# groundup — two commands matter: `make demo` and `make test`. Both install first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed

.PHONY: install demo test bench docs clean

install: $(STAMP)

# Idempotent: reinstalls only when pyproject.toml or constraints.txt change.
$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "groundup needs Python >= 3.11, found " + sys.version.split()[0]'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: install
	$(PY) -m groundup demo $(DEMO_ARGS)

test: install
	$(PY) -m pytest -q $(TEST_ARGS)

bench: install
	$(PY) benchmarks/tokenizer.py
	$(PY) benchmarks/train_throughput.py
	$(PY) benchmarks/generate.py
	$(PY) benchmarks/engines.py

# docs/labs/*.md and their plots, regenerated from the committed docs/labs/results/*.json (no training).
docs: install
	$(PY) -m groundup.labs.docs

clean:
	rm -rf $(VENV) runs .cache build src/*.egg-info
