# nbpool: `make up` runs it on this machine, `make test` runs the tests. Both install what they need.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed

.PHONY: install engine image up test unit bench clean FORCE

# nbpool is installed "strict editable": a tree of links named as the package is (nbpool.*),
# which static tools (mypy) follow, unlike an import hook. A module added or removed changes
# that tree, so the list of modules is a prerequisite too.
STRICT := --config-settings editable_mode=strict
MODULES := $(shell find shared services -name '*.py' -o -name py.typed -o -path 'shared/assets/*' | sort)
$(VENV)/.modules: FORCE
	@mkdir -p $(VENV)
	@echo '$(MODULES)' | cmp -s - $@ || echo '$(MODULES)' > $@
FORCE:

$(INSTALLED): pyproject.toml constraints.txt $(VENV)/.modules
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --constraint constraints.txt --editable '.[test]' $(STRICT)
	touch $@

install: $(INSTALLED)

# A Docker engine (root on Debian: installs docker.io and starts dockerd if none answers).
engine:
	deploy/docker-engine.sh ensure

# The notebook image for the Docker runtime, rebuilt only when its inputs change.
image: install
	deploy/images/build.sh

# Sandboxes are containers: the engine is installed and started when it can be (root on
# Debian); otherwise nbpool up falls back to plain processes, with a loud warning.
up: install
	deploy/docker-engine.sh ensure --soft
	deploy/localhost-names.sh ensure --soft
	$(VENV)/bin/nbpool up

test: install
	deploy/docker-engine.sh ensure --soft
	deploy/chromium.sh ensure --soft
	deploy/prometheus.sh ensure --soft
	deploy/localhost-names.sh ensure --soft
	deploy/thebe.sh ensure --soft
	$(PY) -m pytest

unit: install
	$(PY) -m pytest tests/test_units.py

clean:
	rm -rf $(VENV) .nbpool

# The benchmark (docs/benchmarks.md); it needs the plotting and profiling extras.
bench: install
	deploy/docker-engine.sh ensure --soft
	deploy/localhost-names.sh ensure --soft
	$(PY) -m pip install --quiet --constraint constraints.txt --editable '.[test,bench]' $(STRICT)
	$(PY) bench/run.py
