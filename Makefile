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

# Two pytest-xdist workers, each taking whole modules in collection order: the one module that
# writes full-size model files (tests/test_tiny_runs.py) is collected first, then the long ones,
# so one worker starts it at once while the other takes the rest (tests/conftest.py).
test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder

clean:
	rm -rf $(VENV) results .pytest_cache
