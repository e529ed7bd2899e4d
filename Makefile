# Two commands do all set-up on a fresh machine with Python 3.10+:
#   make demo   the main job: train_vunet.py, train_xunet.py, evaluate.py on synthetic data
#   make test   the test suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test install clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) train_vunet.py --preset quick --name demo_vunet --overwrite
	$(PY) train_xunet.py --preset quick --name demo_xunet --overwrite
	$(PY) evaluate.py weights/demo_vunet weights/demo_xunet --out results/demo

# Two pytest-xdist workers: the tests that write full-size model files run one after another
# on one of them, each other module goes whole to either (tests/conftest.py); under 3 minutes
# and 1 GB of temporary files on two cores.
test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -n 2

clean:
	rm -rf $(VENV) results .pytest_cache
