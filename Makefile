# llm-chargeback: every target sets up what it needs (venv, pip packages, Debian packages).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEB_PACKAGES := prometheus prometheus-alertmanager victoria-metrics
STAMP := $(VENV)/.installed

.PHONY: demo test test-real bench bench-peers lint fmt dashboards generate deps venv clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,demo]'
	@touch $(STAMP)

venv: $(STAMP)

# Debian packages (Prometheus, promtool, Alertmanager, amtool, VictoriaMetrics; faketime for the
# moved-clock tests; redis-server for the limit store tests; headless Chromium for the statements'
# screenshot test), installed only when missing.
deps:
	@missing=""; \
	command -v prometheus >/dev/null || missing="$$missing prometheus"; \
	command -v prometheus-alertmanager >/dev/null || command -v alertmanager >/dev/null || missing="$$missing prometheus-alertmanager"; \
	command -v victoria-metrics >/dev/null || missing="$$missing victoria-metrics"; \
	command -v faketime >/dev/null || missing="$$missing faketime"; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	fi

demo: deps venv
	$(VENV)/bin/chargeback demo

LINT_PATHS := exporter tests bench dashboards rules deploy build_hooks.py

test: deps venv
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)
	$(PY) dashboards/build.py --check
	$(PY) -m exporter.metrics_doc --check
	$(PY) -m pytest -q -p no:cacheprovider

bench: deps venv
	$(PY) bench/run_all.py --out docs/performance.md

# Optional, not part of `make bench` or `make test`: LiteLLM's proxy (from PyPI, into its own venv) and
# this proxy side by side in front of the same simulator; replaces its section of docs/performance.md.
# LITELLM_VERSION: the newest release whose `proxy` extra installed (see INSTALL_NOTE in bench_peers.py).
PEERS_VENV := .venv-peers
LITELLM_VERSION := 1.108.7
bench-peers: venv
	@test -x $(PEERS_VENV)/bin/python || $(PYTHON) -m venv $(PEERS_VENV)
	@$(PEERS_VENV)/bin/python -c "import importlib.metadata as m, sys; sys.exit(m.version('litellm') != '$(LITELLM_VERSION)')" 2>/dev/null || \
	  $(PEERS_VENV)/bin/python -m pip install -q 'litellm[proxy]==$(LITELLM_VERSION)'
	$(PY) bench/bench_peers.py --litellm $(PEERS_VENV)/bin/litellm --out docs/performance.md

# Conformance suite against a real llama.cpp server (llama-cpp-python). Compiling it takes 20+ minutes
# on 2 cores, so the wheel is built once into WHEEL_CACHE (outside the repo) and reused; pip takes it
# from there instead of building the sdist again. Results (estimate errors) go to REAL_RESULTS.
WHEEL_CACHE ?= /var/cache/llm-chargeback/wheels
LLAMA_CPP_PYTHON := 0.3.36
REAL_RESULTS ?= real-results.json
test-real: deps venv
	@command -v cmake >/dev/null && command -v g++ >/dev/null || { \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends cmake build-essential; }
	@mkdir -p $(WHEEL_CACHE)
	@ls $(WHEEL_CACHE)/llama_cpp_python-$(LLAMA_CPP_PYTHON)-*.whl >/dev/null 2>&1 || { \
	  echo "building llama-cpp-python $(LLAMA_CPP_PYTHON) into $(WHEEL_CACHE) (takes a while)"; \
	  nice -n 10 env CMAKE_BUILD_PARALLEL_LEVEL=2 \
	    CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF" \
	    $(PY) -m pip wheel --no-deps -w $(WHEEL_CACHE) llama-cpp-python==$(LLAMA_CPP_PYTHON); }
	$(PY) -m pip install -q --find-links $(WHEEL_CACHE) -e '.[test,demo,real]'
	CHARGEBACK_REAL_RESULTS=$(REAL_RESULTS) $(PY) -m pytest -q -s -p no:cacheprovider tests/test_real_llamacpp.py

lint: venv
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)

# Apply the formatter and the linter's safe fixes in place.
fmt: venv
	$(VENV)/bin/ruff format $(LINT_PATHS)
	$(VENV)/bin/ruff check --fix $(LINT_PATHS)

dashboards: venv
	$(PY) dashboards/build.py

# Regenerate every generated artefact: rule files, the Kubernetes PrometheusRule, dashboards, the
# metric tables of docs/metrics.md.
generate: venv
	$(PY) rules/generate.py
	$(PY) -m exporter.metrics_doc
	$(PY) deploy/kubernetes/generate_prometheusrule.py
	$(PY) dashboards/build.py
	$(PY) -m exporter.cli alertmanager-config --config.file deploy/chargeback.example.yaml \
		--base deploy/prometheus/alertmanager.base.yml --output deploy/prometheus/alertmanager.yml

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
