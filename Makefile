# xattn — two commands on a fresh machine:  make study   |   make test
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export XATTN_HOME ?= $(CURDIR)/.cache
export HF_HUB_OFFLINE ?= 1
STUDY ?= runs/study
SWEEP ?= sweeps/smoke.yaml
WORKERS ?= 2
MODELS_RUN ?= runs/models
PYTEST_ARGS ?= -q

.PHONY: study test env sysdeps data models sweep bench bench-quick clean

env: $(VENV)/.installed

# The environment: a venv with the package and its test extras. torch is pinned (2.13.0) so pip takes the CPU build.
$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test]"
	@touch $@

# System packages: the speech engines of the corpora (espeak-ng; flite; festival with its English HTS and diphone voices
# and its two Italian diphone voices), sox, and chromium (the test that renders a study's report.html headless);
# installed here when run as root.
DEBS := espeak-ng flite festival festvox-us-slt-hts festvox-kallpc16k festvox-kdlpc16k festvox-italp16k festvox-itapc16k \
	chromium
sysdeps:
	@missing=$$(for p in $(DEBS); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then echo "installing $$missing"; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "missing Debian packages: run 'sudo apt-get install -y $$missing' (conda users: see environment.yml)" >&2; exit 1; fi; fi

data: env sysdeps
	$(PY) -m xattn_utils corpus --default
	$(PY) -m xattn_utils corpus --config sweeps/corpus_enit.json
	$(PY) -m xattn_utils corpus --config sweeps/corpus_hard.json

# The default study (sweeps/default.yaml): bundled Whisper tiny.en through notebooks 01-06, bundled Whisper base on
# the paper's axes (language, task, scale), and every trained grid model present (none until `make models`);
# builds the corpora it reads; resumable: finished runs under $(STUDY) are skipped. Writes $(STUDY)/report.md and
# $(STUDY)/report.html (open it in a browser: it works offline). Prints its elapsed time, environment included.
study:
	@start=$$(date +%s); $(MAKE) --no-print-directory env sysdeps \
	  && $(PY) -m xattn_utils study --out $(STUDY) --workers $(WORKERS); rc=$$?; \
	  echo "make study: $$(( ($$(date +%s) - start) / 60 )) min $$(( ($$(date +%s) - start) % 60 )) s end to end (exit $$rc)"; \
	  exit $$rc

# The offline model grid (notebooks/00_train_models.ipynb, CPU-sized budgets) into $$XATTN_HOME/models/grid.
models: env sysdeps
	@mkdir -p $(MODELS_RUN)
	$(PY) -m papermill notebooks/00_train_models.ipynb $(MODELS_RUN)/00_train_models.ipynb -p run_dir $(CURDIR)/$(MODELS_RUN) --cwd $(MODELS_RUN) --no-progress-bar

# Any sweep file: make sweep SWEEP=sweeps/default.yaml WORKERS=2
sweep: env sysdeps
	$(PY) -m xattn_utils sweep $(SWEEP) --workers $(WORKERS)

test: env sysdeps
	$(PY) -m pytest $(PYTEST_ARGS)

bench-quick: env sysdeps
	$(PY) benchmarks/bench_spes.py --quick

bench: env sysdeps
	$(PY) benchmarks/bench_spes.py

clean:
	rm -rf runs .pytest_cache
