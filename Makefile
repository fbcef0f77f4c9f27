# The two commands of the README:
#   make demo   installs normstab, obtains Fashion-MNIST, runs the main job
#   make test   installs the test extras, obtains Fashion-MNIST, runs the fast test tier
PYTHON ?= python3
PYTEST_ARGS ?=

.PHONY: demo test test-all install install-test data lint

demo: install data
	$(PYTHON) analyses/deep_linear_divergence.py

test: install-test data
	$(PYTHON) -m pytest -m "not slow and not gpu" $(PYTEST_ARGS)

test-all: install-test data
	$(PYTHON) -m pytest $(PYTEST_ARGS)

install:
	$(PYTHON) -m pip install -q -e .

install-test:
	$(PYTHON) -m pip install -q -e ".[test,dev]"

data:
	$(PYTHON) analyses/get_data.py

lint:
	$(PYTHON) -m ruff check . && $(PYTHON) -m ruff format --check .
