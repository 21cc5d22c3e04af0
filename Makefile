# Two commands on a fresh machine: `make demo` and `make test`. Both create or reuse .venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch first and pinned: on a CPU machine torch==2.13.0 is the CPU build (from local disk
# where available); a bare `torch` would pull a multi-GB CUDA build.
TORCH ?= torch==2.13.0

.PHONY: demo test test-slow bench venv clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[test,bench]"
	touch $@

demo: venv
	$(VENV)/bin/fedmeta simulate --out runs/demo

test: venv
	$(PY) -m pytest -m "not gpu and not slow"

# what CI leaves out for time (about 5 minutes on 2 cores): the four-site deployment with a site killed mid-round
test-slow: venv
	$(PY) -m pytest -m "slow and not gpu"

bench: venv
	$(VENV)/bin/fedmeta bench maml --json

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
