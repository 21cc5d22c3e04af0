# Two commands on a fresh machine: `make demo` and `make test`. Both create or reuse .venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch first and pinned: on a CPU machine torch==2.13.0 is the CPU build (from local disk
# where available); a bare `torch` would pull a multi-GB CUDA build.
TORCH ?= torch==2.13.0

.PHONY: demo test test-slow lint bench venv clean native-source results

venv: $(VENV)/.installed

# constraints.txt: the tested versions of every package (CI and the Docker images install these)
$(VENV)/.installed: pyproject.toml Makefile constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt "$(TORCH)"
	$(PY) -m pip install --quiet -c constraints.txt -e ".[test,bench,lint,tracking]"
	touch $@

demo: venv
	$(VENV)/bin/fedmeta simulate --out runs/demo

# two pytest workers, one test file each at a time (a module's processes and fixtures stay on one
# worker): most tests wait on processes half the time, so 2 cores finish in about 3/4 of the time
TEST_WORKERS ?= 2
test: venv
	$(PY) -m pytest -m "not gpu and not slow" -n $(TEST_WORKERS) --dist loadfile --durations=15  # the slowest tests, to keep CI under 20 min

# what CI leaves out for time (about 7 minutes on 2 cores): the four-site deployment with a site killed mid-round,
# the full-size `fedmeta bench maml --json` and a federated run trained twice for bit-identical weights
test-slow: venv
	$(PY) -m pytest -m "slow and not gpu"

# ruff (lint, and the format the code is kept in) and mypy: zero findings, as in CI
lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# after editing common/native/kernels.c: its copy for Flower app bundles (which carry no .c files)
native-source: venv
	$(PY) -m common.native.embed

# the headline benchmark as reported in docs/RESULTS.md (each scenario's recommended method and
# recipe, 3 seeds, tuned baselines, paired CIs); writes docs/results/headline.json, headline.md,
# the plots and RESULTS.md's tables. Hours on 2 cores: see RESULTS.md. docs/scripts/headline.sh
# with no variables set runs every method on every scenario.
DATA ?= ../shared/data/medmnist
# where the models and their scores go; MODELS=docs/results/models reuses the committed ones and
# only regenerates the tables, plots, per-class and case-mix files (about a minute)
MODELS ?= runs/headline
# blood's meta-learners (sweep 9, chosen on its validation hospitals): warm-started from the
# seed's supervised FedAvg model, with the start loss, at a small inner rate
BLOOD_META_RUN = shots=1 num-server-rounds=50 eval-every=50 outer-lr=0.001 outer-lr-schedule='cosine' start-loss-weight=1.0 inner-lr=0.01
# blood's supervised FedAvg baseline: 200 rounds, chosen over 100 on its validation hospitals
# (sweeps 10 and 11; held-out hospitals not evaluated while it trains, as in the sweep, whose
# models these are, bit for bit)
BLOOD_SUPERVISED_RUN = num-server-rounds=200 eval-every=100 eval-heldout=false
# new-classes' supervised FedAvg baseline: 50 rounds, chosen over 25 and 100 on the validation
# classes (sweeps 5 and 6; held-out sites not evaluated while it trains, as in the sweep)
CLASSES_SUPERVISED_RUN = num-server-rounds=50 eval-heldout=false
results: venv
	# new-hospital adds 10 shots with the settings chosen at 1 and 5; its committed 10-shot scores were made on a GPU
	SHOTS=1,5,10 TUNE_SHOTS=1,5 ACCEPT=cuda SCENARIOS=new-hospital METHODS=fomaml RUN='eval-every=100' META_RUN='shots=1' docs/scripts/headline.sh $(DATA) $(MODELS)
	SCENARIOS=new-hospital-blood METHODS=fomaml WARM_START=1 SUPERVISED_RUN="$(BLOOD_SUPERVISED_RUN)" META_RUN="$(BLOOD_META_RUN)" docs/scripts/headline.sh $(DATA) $(MODELS)
	SHOTS=1,5,10 TUNE_SHOTS=1,5 SCENARIOS=new-classes METHODS=protonet SUPERVISED_RUN="$(CLASSES_SUPERVISED_RUN)" docs/scripts/headline.sh $(DATA) $(MODELS)

bench: venv
	$(VENV)/bin/fedmeta bench maml --json

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
