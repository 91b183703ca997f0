# `make test` and `make demo` build .venv from nothing: torch first (the local CPU wheel),
# then kvcore, its three first-party plugins, the test tools and the transformers extra
# (transformers pinned to the release the tests were written against; the extra asks >= 5.20).
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.kvcore-installed
PLUGINS := plugins/fp8 plugins/quark plugins/compressed_tensors

.PHONY: test demo bench lint clean

$(STAMP): pyproject.toml $(addsuffix /pyproject.toml,$(PLUGINS))
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test,transformers]" transformers==5.24.0 $(addprefix -e ,$(PLUGINS))
	touch $@

test: $(STAMP)
	$(PY) -m ruff check kvcore plugins tests examples
	$(PY) -m pytest -q

demo: $(STAMP)
	$(VENV)/bin/kvcore demo

bench: $(STAMP)
	$(PY) benchmarks/run.py
	$(PY) benchmarks/accuracy.py

lint: $(STAMP)
	$(PY) -m ruff check kvcore plugins tests examples

clean:
	rm -rf $(VENV) build dist *.egg-info plugins/*/*.egg-info plugins/*/build
