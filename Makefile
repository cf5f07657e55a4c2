# The README's two commands: `make demo` (the main job) and `make test` (the tests).
# Both create .venv with a Python 3.8-3.10 found by scripts/find_python.sh and
# install the package once (the stamp below makes a second run skip the install).

VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: demo test venv clean help

help:
	@echo "make demo   - run the paper's pipeline on the embedded demo data"
	@echo "make test   - run the test suite"

$(PY):
	@interp=$$(sh scripts/find_python.sh) || exit 1; \
	echo "creating $(VENV) with $$interp"; \
	"$$interp" -m venv $(VENV)

$(STAMP): $(PY) setup.py
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/wbc-nnabla demo

# -n auto: one pytest worker per core (nnabla's CPU context is single-threaded); --dist loadfile keeps a
# test module on one worker, so its module-scoped trained models are built once. (loadgroup, which could
# also keep the tiny demo run's users together, silently stops grouping on pytest 9.2: pytest-xdist#1386.)
test: $(STAMP)
	$(PY) -m pytest -n auto --dist loadfile $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
