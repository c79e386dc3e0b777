# nbpool: `make up` runs it on this machine, `make test` runs the tests. Both install what they need.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed

.PHONY: install up test unit bench clean

$(INSTALLED): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --constraint constraints.txt --editable '.[test]'
	touch $@

install: $(INSTALLED)

up: install
	$(VENV)/bin/nbpool up

test: install
	$(PY) -m pytest

unit: install
	$(PY) -m pytest tests/test_units.py

clean:
	rm -rf $(VENV) .nbpool

bench: install
	$(PY) bench/run.py
